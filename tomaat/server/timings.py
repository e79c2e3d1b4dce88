"""One request's bookkeeping on its way through the server: how long each stage took, and whether its time is up.

Kept apart from the prediction itself because the worker, the steps backends (local, batched, Ray) and the
metrics all read it.
"""

from __future__ import annotations

import contextlib
import time

from ..errors import AppTimeout

STAGES = (
    "receive",
    "parse",
    "decode",
    "ray_put",
    "preprocess",
    "lock_wait",
    "inference",
    "postprocess",
    "ray",
    "encode",
)


class Timings(dict):
    batch = 0  # the size of the batch a batched app's inference ran in (batching.py); 0: not batched

    @contextlib.contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self[name] = self.get(name, 0.0) + time.perf_counter() - start

    def summary(self) -> str:
        summary = " ".join(f"{name}={self[name] * 1000:.1f}ms" for name in STAGES if name in self)
        return f"{summary} batch={self.batch}" if self.batch else summary


class Watch:
    """Links a running request to the time limit kept on the reactor (worker.py).

    A Python thread cannot be stopped, so a request past its limit is answered
    504 at once and its thread only learns of it between app steps, where it
    stops instead of running the remaining steps.
    """

    def __init__(self, on_app_start=None):
        self.on_app_start = on_app_start
        self.expired = False

    def app_started(self) -> None:
        if self.on_app_start is not None:
            self.on_app_start()

    def check(self, step: str) -> None:
        if self.expired:
            raise AppTimeout(f"the service ran past its time limit (stopped after {step})")
