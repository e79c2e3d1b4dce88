"""From the form fields of a request to the values an app finds in `data[destination]`.

Each element type's codec reads its field (codecs.py); this module only orders the
work and names what is missing.
"""

from __future__ import annotations

from ..errors import RequestError
from ..files.limits import Allowance
from .codecs import input_codec


def decode_fields(
    interface, fields: dict[str, bytes], allowance: Allowance | None = None, given: dict | None = None
) -> dict:
    """All declared inputs, cheap ones first so a bad slider is reported before a large volume is decoded.

    Each decoded input is charged to the allowance, which the caller releases when the request ends.
    `given` holds values already at hand for some fields (a stored volume a field names), used as they are.
    """
    given = given or {}
    allowance = allowance or Allowance()
    missing = [e.destination for e in interface if e.destination not in fields]
    if missing:
        expected = ", ".join(f"'{e.destination}' ({e.wire_type})" for e in interface)
        raise RequestError(f"missing field(s) {', '.join(repr(m) for m in missing)}; this service expects {expected}")
    order = sorted(interface, key=lambda e: e.heavy)
    decoded = {}
    for e in order:
        if e.destination in given:
            decoded[e.destination] = given[e.destination]
        else:
            decoded[e.destination] = input_codec(e).read(e, fields[e.destination], e.where(), allowance)
    return decoded
