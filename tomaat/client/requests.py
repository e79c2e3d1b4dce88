"""A request checked against the server's element interface before anything is sent.

Every problem is found here, on the client, with a message that names the
element and lists what it accepts: a user should not upload a 500 MB volume to
learn that a slider was out of range. Defaults follow TOMAAT-Slicer (slider
midpoint, first option, checkbox off), and the request says which were filled
so nobody mistakes a default for a choice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import RequestError
from ..protocol.codecs import input_codec
from .errors import ValidationError
from .inputs import LOADERS


def describe(element) -> str:
    """One element as a user reads it: its name, its type and what it accepts."""
    loader = LOADERS.get(element.wire_type)
    accepts = loader.help if loader else element.accepts()
    return f"'{element.destination}' ({element.wire_type}, {accepts})"


def default(element):
    """TOMAAT-Slicer's starting value for a widget, or None where the user must give one."""
    return element.default


def _checked(element, value):
    """The value to send: files and points loaded by the client, the rest by the element's own rule."""
    where = element.where(server=False)
    loader = LOADERS.get(element.wire_type)
    if loader:
        return loader.load(value, where)
    try:
        return input_codec(element).value(element, value, where)
    except RequestError as error:
        raise ValidationError(error.message) from None


@dataclass
class PreparedRequest:
    """Inputs loaded and checked; `filled` lists the defaults chosen for the user as (name, value)."""

    interface: tuple
    values: dict = field(default_factory=dict)
    filled: list = field(default_factory=list)

    def fields(self, protocol: int, parts: dict | None = None) -> list[tuple[str, str | None, object]]:
        """(name, file name or None for a text field, bytes or inputs.FileData) in interface order.

        `parts` holds what a field carries instead of its own encoding: a v2 volume's upload as
        (file name, bytes or FileData), or a stored volume's reference as (None, b"volume_id:...").
        """
        parts = parts or {}
        return [
            (e.destination, *parts[e.destination])
            if e.destination in parts
            else (e.destination, *input_codec(e).write(e, self.values[e.destination], protocol))
            for e in self.interface
        ]

    def volumes(self) -> list[str]:
        """The names of the volume inputs, in interface order."""
        return [e.destination for e in self.interface if e.wire_type == "volume"]


def prepare(interface, given: dict) -> PreparedRequest:
    """Check `given` (name -> value) against the input elements, load files, fill defaults."""
    names = [e.destination for e in interface]
    accepts = "; ".join(describe(e) for e in interface)
    unknown = [name for name in given if name not in names]
    if unknown:
        raise ValidationError(f"this service has no input {', '.join(repr(n) for n in unknown)}; it accepts: {accepts}")
    request = PreparedRequest(tuple(interface))
    missing = []
    for element in interface:
        name = element.destination
        if name not in given or given[name] is None:
            value = default(element)
            if value is None:
                missing.append(element)
                continue
            request.filled.append((name, value))
            request.values[name] = value
            continue
        request.values[name] = given[name]
    if missing:
        raise ValidationError(f"missing input {'; '.join(describe(e) for e in missing)}")
    # cheap checks first, so a bad slider is reported before a large volume is read
    for element in sorted(interface, key=lambda e: e.wire_type in LOADERS):
        request.values[element.destination] = _checked(element, request.values[element.destination])
    return request
