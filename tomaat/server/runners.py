"""Where the app's three steps run: in this process (here), or in Ray Serve replicas (ray_runner.py).

The prediction (prediction.py) decodes a request into the app's `data`, hands it to a runner, and
encodes what comes back; a runner runs preprocess, inference and postprocess and says how long
each took. `LocalRunner` holds the GPU lock around inference only, so while one request holds the GPU
the others preprocess and postprocess in parallel. An app with `max_batch > 1` gets `BatchedRunner`
instead: the same, except that concurrent requests' inference is run in batches (batching.py).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Protocol

from ..errors import AppFailure, AppTimeout, RequestError
from .app import batch_settings
from .batching import Batcher, Expired
from .gpu_lock import FairLock

log = logging.getLogger("tomaat.server")

# One per process: every service in the process shares the accelerator, taken in turns by identity.
GPU_LOCK = FairLock()


class Runner(Protocol):
    """What the prediction and the service need of wherever the app's steps run (LocalRunner, BatchedRunner, RayRunner).

    `setup` runs once, before the port opens, off the reactor; calls then come from worker threads, any number at
    once; `close` once, at shutdown. `describe` is read on the reactor, so it must not wait on anything.
    """

    max_batch: int  # the most requests one inference call takes here (1: none batched in this process)
    batcher: Batcher | None  # the batcher whose batches the metrics count, when this process batches

    def setup(self, device: str) -> None: ...

    def __call__(self, data: dict, timings, watch) -> dict:
        """The app's preprocess, inference and postprocess on one request's data; the data they leave."""
        ...

    def describe(self) -> dict:
        """For /health and /info: where the steps run, and how."""
        ...

    def close(self) -> None: ...


def app_step(app, step: str, data: dict) -> dict:
    """One of the app's steps; its failure is the app's, logged here and told to the client without details,
    except a RequestError the app raises on purpose to tell the client what is wrong with its input (a 4xx)."""
    try:
        result = getattr(app, "run_" + step)(data)
    except RequestError:
        raise
    except Exception:
        log.exception("the app's %s step failed", step)
        raise AppFailure(f"the service failed during {step}; the error is in the server log") from None
    if not isinstance(result, dict):
        log.error("the app's %s step returned %s instead of the data dict", step, type(result).__name__)
        raise AppFailure(f"the service failed during {step}: it did not return the data dict")
    return result


def app_batch_step(app, items: list[dict]) -> list[dict]:
    """The app's inference on a batch; any failure is the whole batch's, logged once, each request told as
    the unbatched step would tell it (app_step)."""
    try:
        results = app.run_inference_batch(items)
    except Exception:
        log.exception("the app's inference step failed on a batch of %d requests", len(items))
        raise AppFailure("the service failed during inference; the error is in the server log") from None
    if not isinstance(results, (list, tuple)) or len(results) != len(items):
        got = f"{len(results)} results" if isinstance(results, (list, tuple)) else type(results).__name__
        log.error("the app's inference_batch returned %s for a batch of %d requests", got, len(items))
        raise AppFailure("the service failed during inference; the error is in the server log")
    for result in results:
        if not isinstance(result, dict):
            log.error("the app's inference_batch returned a %s instead of a data dict", type(result).__name__)
            raise AppFailure("the service failed during inference: it did not return the data dict")
    return list(results)


class LocalRunner:
    """The app's steps on the calling worker thread; inference under the GPU lock, one request at a time."""

    max_batch = 1
    batcher: Batcher | None = None

    def __init__(self, app, gpu_lock=None):
        self.app = app
        # an app that says it needs no GPU runs its inference without the lock, alongside other requests
        self.gpu_lock = (gpu_lock or GPU_LOCK) if getattr(app, "gpu", True) else contextlib.nullcontext()

    def inference(self, data: dict, timings, watch=None) -> dict:
        with timings.stage("lock_wait"):
            self.gpu_lock.__enter__()
        try:
            with timings.stage("inference"):
                return app_step(self.app, "inference", data)
        finally:
            self.gpu_lock.__exit__(None, None, None)

    def __call__(self, data: dict, timings, watch) -> dict:
        watch.app_started()
        with timings.stage("preprocess"):
            data = app_step(self.app, "preprocess", data)
        watch.check("preprocess")
        data = self.inference(data, timings, watch)
        watch.check("inference")
        with timings.stage("postprocess"):
            data = app_step(self.app, "postprocess", data)
        watch.check("postprocess")
        return data

    def setup(self, device: str) -> None:
        """The app's setup() (weights onto the device), once, before the port opens."""
        self.app.setup(device)

    def describe(self) -> dict:
        """What /health and /info say about where the steps run."""
        return {"engine": "local"}

    def close(self) -> None:
        pass


def local_runner(app, gpu_lock=None) -> LocalRunner:
    """The runner for an app run in this process (by the service, or in a Ray Serve replica):
    batched when the app asks for batches (max_batch > 1), else one request at a time as always."""
    max_batch, _ = batch_settings(app)
    return BatchedRunner(app, gpu_lock) if max_batch > 1 else LocalRunner(app, gpu_lock)


class BatchedRunner(LocalRunner):
    """LocalRunner whose inference goes through a Batcher: concurrent requests share the model's passes.

    Preprocess and postprocess still run on each request's own thread, in parallel; batches run one
    at a time under the same GPU lock as unbatched apps, so services in one process still share the GPU.
    """

    def __init__(self, app, gpu_lock=None):
        super().__init__(app, gpu_lock)
        self.max_batch, self.max_delay_ms = batch_settings(app)
        self._batcher = Batcher(
            lambda items: app_batch_step(app, items), self.max_batch, self.max_delay_ms, self.gpu_lock
        )
        self.batcher = self._batcher

    def inference(self, data: dict, timings, watch=None) -> dict:
        expired = (lambda: watch.expired) if watch is not None else None
        try:
            return self._batcher.run(data, timings, expired)
        except Expired:
            if watch is not None:
                watch.check("preprocess")
            raise AppTimeout("the service ran past its time limit (stopped before inference)") from None

    def describe(self) -> dict:
        return {"engine": "local", "max_batch": self.max_batch, "max_delay_ms": self.max_delay_ms}
