"""One prediction, start to finish, on a worker thread: fields -> data -> app's steps -> output items.

The app's steps run where a steps object says (steps.py: this process, under the GPU lock for
inference; ray_steps.py: Ray Serve replicas); parsing, decoding and encoding stay here.
"""

from __future__ import annotations

import contextlib
import logging
import time

from ..body import Budget
from ..errors import AppFailure, AppTimeout
from ..files.limits import Allowance, Limits
from ..files.scratch import scratch_folder
from ..protocol import fiducials
from ..protocol.elements import AmbiguousGrid, Fiducials
from ..protocol.inputs import decode_fields
from ..protocol.outputs import encode_item
from . import slicer, upstream
from .app import UPSTREAM
from .form import read_fields
from .steps import local_steps
from .volume_store import take_fields

log = logging.getLogger("tomaat.server")

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


def grid_of(element, volumes: dict):
    """The input volume whose grid a NumPy LabelVolume takes: the one it names, or the only one."""
    named = getattr(element, "grid", "")
    if named:
        return volumes[named]
    if len(volumes) > 1:
        return AmbiguousGrid(element.field, tuple(volumes))
    return next(iter(volumes.values()), None)


class Pipeline:
    def __init__(self, app, inputs, outputs, steps=None, max_fields=256, limits=None, decoded=None, stored=None):
        self.app = app
        self.inputs = inputs
        self.outputs = outputs
        self.steps = steps or local_steps(app)
        self.max_fields = int(max_fields)
        self.limits = limits or Limits()
        self.decoded = decoded or Budget(0)
        self.stored = stored  # the service's stored volumes (volume_store.py), which a volume field may name
        self.upstream = app.data_contract == UPSTREAM

    def _output(self, element, value, from_slicer: bool):
        if self.upstream:
            return upstream.output_value(element, value)
        if from_slicer and isinstance(element, Fiducials):
            return fiducials.ras_lps(value)
        return value

    def _encode(self, data: dict, volumes: dict, from_slicer: bool, raw: bool = False) -> list[dict]:
        items = []
        for element in self.outputs:
            if element.field not in data:
                log.error("the app left no %r in data for its %s output", element.field, element.output_type)
                raise AppFailure(f"the service produced no '{element.field}' output")
            try:
                reference = grid_of(element, volumes)
                item = encode_item(element, self._output(element, data[element.field], from_slicer), reference, raw)
                items.append(slicer.safe_item(item) if from_slicer else item)
            except (TypeError, ValueError, RuntimeError) as error:
                log.error("output %r (%s) could not be encoded: %s", element.field, element.output_type, error)
                raise AppFailure(
                    f"the service produced an invalid '{element.field}' output ({element.output_type})"
                ) from None
        return items

    def run(
        self, body, content_type: str | None, timings: Timings, watch: Watch | None = None, raw: bool = False
    ) -> list[dict]:
        """The output items for a request body; raw: contents before base64 (bytes), for a binary answer."""
        allowance = Allowance(self.limits, self.decoded)
        try:
            return self._run(body, content_type, timings, watch or Watch(), allowance, raw)
        finally:
            allowance.release()

    def _app_data(self, fields: dict, timings: Timings, allowance: Allowance, folder: str | None) -> tuple[dict, dict]:
        """The inputs as the app's contract has them: ours (LPS points), or upstream's lists and files."""
        with timings.stage("decode"):
            data = decode_fields(self.inputs, fields, allowance, take_fields(self.stored, self.inputs, fields))
            if self.upstream:
                return data, upstream.to_app(self.inputs, data, fields, folder)
            if slicer.sent_by_slicer(fields):
                points = {e.destination for e in self.inputs if isinstance(e, Fiducials)}
                return data, {key: fiducials.ras_lps(v) if key in points else v for key, v in data.items()}
            return data, data

    def _run(self, body, content_type, timings: Timings, watch: Watch, allowance: Allowance, raw: bool) -> list[dict]:
        with timings.stage("parse"):
            fields = read_fields(body, content_type, self.max_fields)
        return self.run_fields(fields, timings, watch, allowance, raw)

    def run_fields(
        self, fields: dict, timings: Timings, watch: Watch, allowance: Allowance, raw: bool = False
    ) -> list[dict]:
        """From the request's form fields on: what `tomaat check` runs without a server."""
        from_slicer = slicer.sent_by_slicer(fields)
        files = self.upstream and upstream.needs_files(self.inputs)
        with scratch_folder() if files else contextlib.nullcontext() as folder:
            decoded, data = self._app_data(fields, timings, allowance, folder)
            del fields
            volumes = {e.destination: decoded[e.destination] for e in self.inputs if e.wire_type == "volume"}
            del decoded
            return self._steps(data, volumes, from_slicer, timings, watch, raw)

    def _steps(
        self, data: dict, volumes: dict, from_slicer: bool, timings: Timings, watch: Watch, raw: bool = False
    ) -> list[dict]:
        data = self.steps(data, timings, watch)
        with timings.stage("encode"):
            return self._encode(data, volumes, from_slicer, raw)
