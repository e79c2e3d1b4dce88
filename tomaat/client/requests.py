"""A request checked against the server's element interface before anything is sent.

Every problem is found here, on the client, with a message that names the
element and lists what it accepts: a user should not upload a 500 MB volume to
learn that a slider was out of range. Defaults follow TOMAAT-Slicer (slider
midpoint, first option, checkbox off), and the request says which were filled
so nobody mistakes a default for a choice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..protocol import b64
from ..protocol import fiducials as wire_fiducials
from ..protocol.elements import Checkbox, Fiducials, RadioButton, Slider, Transform, Volume
from ..protocol.inputs import CHECKBOX_FALSE, CHECKBOX_TRUE
from .errors import ValidationError
from .inputs import FIDUCIALS_HELP, IMAGE_HELP, TRANSFORM_HELP, VolumeFile, load_fiducials, load_transform


def describe(element) -> str:
    """One element as a user reads it: its name, its type and what it accepts."""
    name = f"'{element.destination}'"
    if isinstance(element, Slider):
        return f"{name} (slider, a number from {element.minimum:g} to {element.maximum:g})"
    if isinstance(element, Checkbox):
        return f"{name} (checkbox, true or false)"
    if isinstance(element, RadioButton):
        return f"{name} (radiobutton, one of: {', '.join(element.options)})"
    if isinstance(element, Volume):
        return f"{name} (volume, {IMAGE_HELP})"
    if isinstance(element, Fiducials):
        return f"{name} (fiducials, {FIDUCIALS_HELP})"
    if isinstance(element, Transform):
        return f"{name} (transform, {TRANSFORM_HELP})"
    return f"{name} ({element.wire_type})"


def default(element):
    """TOMAAT-Slicer's starting value for a widget, or None where the user must give one."""
    if isinstance(element, Slider):
        return element.default
    if isinstance(element, Checkbox):
        return False
    if isinstance(element, RadioButton):
        return element.options[0]
    return None


def _slider(element: Slider, value) -> float:
    where = f"'{element.destination}' (slider)"
    expected = f"a number from {element.minimum:g} to {element.maximum:g}"
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValidationError(f"{where}: {value!r} is not a number; expected {expected}") from None
    if isinstance(value, bool) or not math.isfinite(number) or not element.minimum <= number <= element.maximum:
        raise ValidationError(f"{where}: {value!r} is out of range; expected {expected}")
    return number


def _checkbox(element: Checkbox, value) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in CHECKBOX_TRUE:
        return True
    if text in CHECKBOX_FALSE:
        return False
    raise ValidationError(
        f"'{element.destination}' (checkbox): {value!r} is not a checkbox value; expected true or false"
    )


def _radio(element: RadioButton, value) -> str:
    text = str(value).strip()
    if text not in element.options:
        raise ValidationError(
            f"'{element.destination}' (radiobutton): {text!r} is not an option; expected one of: "
            f"{', '.join(element.options)}"
        )
    return text


@dataclass
class PreparedRequest:
    """Inputs loaded and checked; `filled` lists the defaults chosen for the user as (name, value)."""

    interface: tuple
    values: dict = field(default_factory=dict)
    filled: list = field(default_factory=list)

    def fields(self, protocol: int) -> list[tuple[str, str | None, bytes]]:
        """(name, file name or None for a text field, bytes) in interface order.

        v2 servers take a volume as a binary file part with the file's own
        bytes; v1 servers only read base64 MHA text, as TOMAAT-Slicer sends.
        """
        parts = []
        for element in self.interface:
            name, value = element.destination, self.values[element.destination]
            if isinstance(element, Volume):
                if protocol >= 2:
                    data, fmt = value.native()
                    parts.append((name, f"{name}.{fmt}", data))
                else:
                    parts.append((name, None, b64.encode_lines(value.mha())))
            elif isinstance(element, Fiducials):
                parts.append((name, None, wire_fiducials.format_points(value).encode("ascii")))
            elif isinstance(element, Checkbox):
                parts.append((name, None, b"True" if value else b"False"))
            elif isinstance(element, Slider):
                parts.append((name, None, repr(float(value)).encode("ascii")))
            else:  # radio buttons and transform text
                parts.append((name, None, str(value).encode("utf-8")))
        return parts


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
    for element in sorted(interface, key=lambda e: isinstance(e, (Volume, Transform, Fiducials))):
        name, value = element.destination, request.values[element.destination]
        where = f"'{name}' ({element.wire_type})"
        if isinstance(element, Slider):
            request.values[name] = _slider(element, value)
        elif isinstance(element, Checkbox):
            request.values[name] = _checkbox(element, value)
        elif isinstance(element, RadioButton):
            request.values[name] = _radio(element, value)
        elif isinstance(element, Fiducials):
            request.values[name] = load_fiducials(value, where)
        elif isinstance(element, Transform):
            request.values[name] = load_transform(value, where)
        elif isinstance(element, Volume):
            request.values[name] = VolumeFile(value, where)
    return request
