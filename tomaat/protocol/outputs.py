"""Output items: from the values an app leaves in `data` to the v1 JSON list, and back.

Each output type writes and reads its own content (elements.py). Writing
raises TypeError for a value of the wrong kind: that is the app's fault, and
the server turns it into a 500 that names the field.
"""

from __future__ import annotations

from ..files.limits import Allowance
from .elements import OUTPUT_TYPES


def encode_item(element, value, reference=None, raw: bool = False) -> dict:
    """The answer item for an app's value; raw: its content before base64 (bytes), for binary answers."""
    content = element.write_raw(value, reference) if raw else element.write_item(value, reference)
    return {"type": element.output_type, "content": content, "label": element.label}


def decode_item(item: dict, allowance: Allowance | None = None):
    """The Python value of one answer item, the inverse of encode_item (used by clients and tests)."""
    kind = OUTPUT_TYPES.get(str(item.get("type")))
    if kind is None:
        return item.get("content")
    return kind.read_item(item.get("content"), allowance or Allowance())
