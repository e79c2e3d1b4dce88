"""How one request's values reach the app, and its outputs come back: chosen once per request, at the edge.

Two things vary between requests and apps, and nothing else on the request path knows of them:

- the app's data contract: ours (SimpleITK images, floats, bools, LPS points) or upstream TOMAAT's (one-item
  lists, volumes and transforms as paths to files we write, text as sent; upstream.py);
- the client's conventions: TOMAAT-Slicer's (slicer.py: its points are RAS, and an empty Fiducials answer
  must reach it as a PlainText) or everyone else's.

`conventions_for` picks the one object that handles both for a request; the prediction (prediction.py) calls it and goes on in
a straight line: decoded inputs -> `to_app` -> steps -> `from_app` per output -> item -> `item`.
"""

from __future__ import annotations

from ..protocol import fiducials
from ..protocol.elements import Fiducials
from . import slicer, upstream
from .app import UPSTREAM


class Conventions:
    """Ours, for a client other than Slicer: values pass as decoded and as the app left them."""

    needs_files = False  # whether to_app writes files into a scratch folder (upstream's volumes and transforms)

    def to_app(self, inputs, decoded: dict, fields: dict, folder: str | None) -> dict:
        return decoded

    def from_app(self, element, value):
        return value

    def item(self, item: dict) -> dict:
        return item


class SlicerConventions(Conventions):
    """Ours, for TOMAAT-Slicer: its RAS points become LPS for the app and go back as RAS; no empty Fiducials."""

    def to_app(self, inputs, decoded: dict, fields: dict, folder: str | None) -> dict:
        points = {e.destination for e in inputs if isinstance(e, Fiducials)}
        return {key: fiducials.ras_lps(value) if key in points else value for key, value in decoded.items()}

    def from_app(self, element, value):
        return fiducials.ras_lps(value) if isinstance(element, Fiducials) else value

    def item(self, item: dict) -> dict:
        return slicer.safe_item(item)


class UpstreamConventions(Conventions):
    """Upstream TOMAAT's contract: what its parse_request gave and its make_response read (points as sent)."""

    def __init__(self, inputs, for_slicer: bool):
        self.needs_files = upstream.needs_files(inputs)
        self.for_slicer = for_slicer

    def to_app(self, inputs, decoded: dict, fields: dict, folder: str | None) -> dict:
        return upstream.to_app(inputs, decoded, fields, folder)

    def from_app(self, element, value):
        return upstream.output_value(element, value)

    def item(self, item: dict) -> dict:
        return slicer.safe_item(item) if self.for_slicer else item


_OURS, _SLICER = Conventions(), SlicerConventions()


def conventions_for(app, inputs, fields: dict) -> Conventions:
    """The conventions of one request to this app, from its form fields (Slicer marks its requests)."""
    for_slicer = slicer.sent_by_slicer(fields)
    if app.data_contract == UPSTREAM:
        return UpstreamConventions(inputs, for_slicer)
    return _SLICER if for_slicer else _OURS
