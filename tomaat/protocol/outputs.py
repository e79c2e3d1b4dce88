"""Output items: from the values an app leaves in `data` to the v1 JSON list, and back.

Each output type writes and reads its own content (elements.py). Writing
raises TypeError for a value of the wrong kind: that is the app's fault, and
the server turns it into a 500 that names the field.
"""

from __future__ import annotations

from ..files.limits import Allowance
from .codecs import OUTPUTS


def output_item(element, content) -> dict:
    """An answer item: its type, its content (raw inside a server: rendering.py writes it for the wire), its label."""
    return {"type": element.output_type, "content": content, "label": element.label}


def decode_item(item: dict, allowance: Allowance | None = None):
    """The Python value of one answer item, the inverse of writing one (used by clients and tests)."""
    kind, content = str(item.get("type")), item.get("content")
    if kind not in OUTPUTS or not isinstance(content, str):
        return content
    return OUTPUTS[kind].read(kind, content, allowance or Allowance())
