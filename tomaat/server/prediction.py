"""One prediction, start to finish, on a worker thread: fields -> data -> app's steps -> output items.

docs/architecture.md walks a volume through it. The app's steps run where its runner says (runners.py: this process, under the GPU lock for
inference; ray_runner.py: Ray Serve replicas); parsing, decoding and encoding stay here.
"""

from __future__ import annotations

import contextlib
import logging

from ..errors import AppFailure
from ..files.limits import Allowance, Limits
from ..files.scratch import scratch_folder
from ..net.body import Budget
from ..protocol.codecs import output_codec
from ..protocol.elements import AmbiguousGrid
from ..protocol.inputs import decode_fields
from ..protocol.outputs import output_item
from .conventions import conventions_for
from .form import read_fields
from .gpu_lock import owned_by
from .timings import Timings, Watch
from .volume_store import take_fields

log = logging.getLogger("tomaat.server")


def grid_of(element, volumes: dict):
    """The input volume whose grid a NumPy LabelVolume takes: the one it names, or the only one."""
    named = getattr(element, "grid", "")
    if named:
        return volumes[named]
    if len(volumes) > 1:
        return AmbiguousGrid(element.field, tuple(volumes))
    return next(iter(volumes.values()), None)


class Prediction:
    """One prediction as a line: body -> fields -> decoded inputs -> the app's data (as the request's conventions
    have it) -> steps -> output items, with raw contents. How the items are written on the wire is not decided
    here (rendering.py), nor where the steps run (runners.py)."""

    def __init__(
        self, app, inputs, outputs, runner, max_fields: int, limits: Limits, decoded: Budget, stored=None, decoders=None
    ):
        self.app = app
        self.inputs = inputs
        self.outputs = outputs
        self.runner = runner
        self.max_fields = int(max_fields)
        self.limits = limits
        self.decoded = decoded  # the service's budget of decoded input bytes
        self.stored = stored  # the service's stored volumes (volume_store.py), which a volume field may name
        self.decoders = decoders  # the service's decoder processes (files/confined.py; None: the process's)

    def run(
        self, body, content_type: str | None, timings: Timings, watch: Watch, owner: str = "", trail=None
    ) -> list[dict]:
        """The output items for a request body. `owner`: the identity whose stored volumes the request may name;
        `trail`: the audit record's notes (audit_trail.py), when the service keeps an audit log."""
        allowance = Allowance(self.limits, self.decoded, self.decoders)
        try:
            with timings.stage("parse"):
                fields = read_fields(body, content_type, self.max_fields)
            if trail is not None:
                trail.received(fields)
            with owned_by(owner):  # the GPU lock's turns (gpu_lock.py)
                items = self.run_fields(fields, timings, watch, allowance, owner, trail)
            if trail is not None:
                trail.answered(items)
            return items
        finally:
            allowance.release()

    def run_fields(
        self, fields: dict, timings: Timings, watch: Watch, allowance: Allowance, owner: str = "", trail=None
    ) -> list[dict]:
        """From the request's form fields on: what `tomaat check` runs without a server."""
        conventions = conventions_for(self.app, self.inputs, fields)
        with scratch_folder() if conventions.needs_files else contextlib.nullcontext() as folder:
            with timings.stage("decode"):
                given = take_fields(self.stored, self.inputs, fields, owner)
                decoded = decode_fields(self.inputs, fields, allowance, given)
                if trail is not None:
                    trail.decoded(decoded)
                data = conventions.to_app(self.inputs, decoded, fields, folder)
            del fields
            volumes = {e.destination: decoded[e.destination] for e in self.inputs if e.wire_type == "volume"}
            del decoded
            data = self.runner(data, timings, watch)
            with timings.stage("encode"):
                return [conventions.item(self._item(element, data, volumes, conventions)) for element in self.outputs]

    def _item(self, element, data: dict, volumes: dict, conventions) -> dict:
        """One output's item, its content raw; a value the output cannot take is the app's failure (500)."""
        if element.field not in data:
            log.error("the app left no %r in data for its %s output", element.field, element.output_type)
            raise AppFailure(f"the service produced no '{element.field}' output")
        try:
            value = conventions.from_app(element, data[element.field])
            return output_item(element, output_codec(element).write(element, value, grid_of(element, volumes)))
        except (TypeError, ValueError, RuntimeError) as error:
            log.error("output %r (%s) could not be encoded: %s", element.field, element.output_type, error)
            raise AppFailure(
                f"the service produced an invalid '{element.field}' output ({element.output_type})"
            ) from None
