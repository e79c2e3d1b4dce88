"""Where the app's three steps run: in this process (here), or in Ray Serve replicas (ray_steps.py).

The pipeline (pipeline.py) decodes a request into the app's `data`, hands it to a steps object, and
encodes what comes back; a steps object runs preprocess, inference and postprocess and says how long
each took. `LocalSteps` holds the GPU lock around inference only, so while one request holds the GPU
the others preprocess and postprocess in parallel.
"""

from __future__ import annotations

import contextlib
import logging
import threading

from ..errors import AppFailure

log = logging.getLogger("tomaat.server")

# One per process: every service in the process shares the accelerator.
GPU_LOCK = threading.Lock()


def app_step(app, step: str, data: dict) -> dict:
    """One of the app's steps; its failure is the app's, logged here and told to the client without details."""
    try:
        result = getattr(app, "run_" + step)(data)
    except Exception:
        log.exception("the app's %s step failed", step)
        raise AppFailure(f"the service failed during {step}; the error is in the server log") from None
    if not isinstance(result, dict):
        log.error("the app's %s step returned %s instead of the data dict", step, type(result).__name__)
        raise AppFailure(f"the service failed during {step}: it did not return the data dict")
    return result


class LocalSteps:
    """The app's steps on the calling worker thread; inference under the GPU lock, one request at a time."""

    def __init__(self, app, gpu_lock=None):
        self.app = app
        # an app that says it needs no GPU runs its inference without the lock, alongside other requests
        self.gpu_lock = (gpu_lock or GPU_LOCK) if getattr(app, "gpu", True) else contextlib.nullcontext()

    def inference(self, data: dict, timings) -> dict:
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
        data = self.inference(data, timings)
        watch.check("inference")
        with timings.stage("postprocess"):
            data = app_step(self.app, "postprocess", data)
        watch.check("postprocess")
        return data

    def describe(self) -> dict:
        """What /health and /info say about where the steps run."""
        return {"engine": "local"}
