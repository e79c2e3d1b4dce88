"""One prediction, start to finish, on a worker thread: fields -> data -> app -> output items.

Only inference runs under the GPU lock, so while one request holds the GPU
the others parse, preprocess, postprocess and encode in parallel.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager

import SimpleITK as sitk

from ..protocol.errors import AppFailure
from ..protocol.inputs import decode_fields
from ..protocol.outputs import encode_item
from .form import read_fields

log = logging.getLogger("tomaat.server")

# One per process: every service in the process shares the accelerator.
GPU_LOCK = threading.Lock()

STAGES = ("receive", "parse", "decode", "preprocess", "lock_wait", "inference", "postprocess", "encode")


class Timings(dict):
    @contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self[name] = self.get(name, 0.0) + time.perf_counter() - start

    def summary(self) -> str:
        return " ".join(f"{name}={self[name] * 1000:.1f}ms" for name in STAGES if name in self)


class Pipeline:
    def __init__(self, app, inputs, outputs, gpu_lock=None):
        self.app = app
        self.inputs = inputs
        self.outputs = outputs
        self.gpu_lock = gpu_lock or GPU_LOCK

    def _app_step(self, step: str, data: dict) -> dict:
        try:
            result = getattr(self.app, "run_" + step)(data)
        except Exception:
            log.exception("the app's %s step failed", step)
            raise AppFailure(f"the service failed during {step}; the error is in the server log") from None
        if not isinstance(result, dict):
            log.error("the app's %s step returned %s instead of the data dict", step, type(result).__name__)
            raise AppFailure(f"the service failed during {step}: it did not return the data dict")
        return result

    def _encode(self, data: dict, reference) -> list[dict]:
        items = []
        for element in self.outputs:
            if element.field not in data:
                log.error("the app left no %r in data for its %s output", element.field, element.output_type)
                raise AppFailure(f"the service produced no '{element.field}' output")
            try:
                items.append(encode_item(element, data[element.field], reference))
            except (TypeError, ValueError, RuntimeError) as error:
                log.error("output %r (%s) could not be encoded: %s", element.field, element.output_type, error)
                raise AppFailure(
                    f"the service produced an invalid '{element.field}' output ({element.output_type})"
                ) from None
        return items

    def run(self, body, content_type: str | None, timings: Timings) -> list[dict]:
        with timings.stage("parse"):
            fields = read_fields(body, content_type)
        with timings.stage("decode"):
            data = decode_fields(self.inputs, fields)
        del fields
        reference = next((v for v in data.values() if isinstance(v, sitk.Image)), None)
        with timings.stage("preprocess"):
            data = self._app_step("preprocess", data)
        with timings.stage("lock_wait"):
            self.gpu_lock.acquire()
        try:
            with timings.stage("inference"):
                data = self._app_step("inference", data)
        finally:
            self.gpu_lock.release()
        with timings.stage("postprocess"):
            data = self._app_step("postprocess", data)
        with timings.stage("encode"):
            return self._encode(data, reference)
