"""From the bytes of one form field to the value an app finds in `data[destination]`."""

from __future__ import annotations

import math

from ..errors import RequestError
from ..files.limits import Allowance
from . import fiducials, transforms
from .elements import Checkbox, Fiducials, RadioButton, Slider, Transform, Volume
from .volumes import read_image

CHECKBOX_TRUE = frozenset({"true", "1", "yes", "on"})
CHECKBOX_FALSE = frozenset({"false", "0", "no", "off"})


def _text(raw: bytes, where: str) -> str:
    try:
        return bytes(raw).decode("utf-8").strip()
    except UnicodeDecodeError:
        raise RequestError(f"{where}: expected UTF-8 text") from None


def _slider(element: Slider, raw: bytes, where: str) -> float:
    text = _text(raw, where)
    expected = f"a number between {element.minimum} and {element.maximum}"
    try:
        value = float(text)
    except ValueError:
        raise RequestError(f"{where}: {text[:40]!r} is not a number; expected {expected}") from None
    if not math.isfinite(value) or not element.minimum <= value <= element.maximum:
        raise RequestError(f"{where}: {text[:40]} is out of range; expected {expected}")
    return value


def _checkbox(raw: bytes, where: str) -> bool:
    text = _text(raw, where).lower()
    if text in CHECKBOX_TRUE:
        return True
    if text in CHECKBOX_FALSE or not text:  # an empty field, as some forms send an unticked box
        return False
    raise RequestError(f"{where}: {text[:40]!r} is not a checkbox value; expected True or False")


def _radio(element: RadioButton, raw: bytes, where: str) -> str:
    text = _text(raw, where)
    if text not in element.options:
        raise RequestError(
            f"{where}: {text[:60]!r} is not one of the options; expected one of: {', '.join(element.options)}"
        )
    return text


def decode_field(element, raw: bytes, allowance: Allowance | None = None):
    where = f"field '{element.destination}' ({element.wire_type})"
    allowance = allowance or Allowance()
    if isinstance(element, Volume):
        return read_image(raw, where, allowance)
    if isinstance(element, Slider):
        return _slider(element, raw, where)
    if isinstance(element, Checkbox):
        return _checkbox(raw, where)
    if isinstance(element, RadioButton):
        return _radio(element, raw, where)
    if isinstance(element, Fiducials):
        return fiducials.parse(_text(raw, where), where, allowance.limits.max_points)
    if isinstance(element, Transform):
        return transforms.parse(raw, where, allowance)
    raise RequestError(f"{where}: unsupported element type")


def decode_fields(interface, fields: dict[str, bytes], allowance: Allowance | None = None) -> dict:
    """All declared inputs, cheap ones first so a bad slider is reported before a large volume is decoded.

    Each decoded input is charged to the allowance, which the caller releases when the request ends.
    """
    allowance = allowance or Allowance()
    missing = [e.destination for e in interface if e.destination not in fields]
    if missing:
        expected = ", ".join(f"'{e.destination}' ({e.wire_type})" for e in interface)
        raise RequestError(f"missing field(s) {', '.join(repr(m) for m in missing)}; this service expects {expected}")
    order = sorted(interface, key=lambda e: isinstance(e, (Volume, Transform)))
    return {e.destination: decode_field(e, fields[e.destination], allowance) for e in order}
