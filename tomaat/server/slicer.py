"""What a request from TOMAAT-Slicer needs that other clients' requests do not.

TOMAAT-Slicer adds a `module_version` field to every request; no other client
does, so that field is how the server knows it. Two things differ for it:

- Slicer sends fiducials in its RAS world coordinates, while the volumes it
  saves as MHA are in LPS, as ITK and every app of ours work. Apps of our
  contract get the points in LPS, and their Fiducials outputs go back in RAS.
  Upstream-style apps get the points as sent, as upstream gave them.
- Slicer parses a Fiducials answer as `x,y,z;...` without a guard: an empty
  one raises and loses every later output. It gets a PlainText item instead.
"""

from __future__ import annotations

MARKER = "module_version"


def sent_by_slicer(fields: dict) -> bool:
    return MARKER in fields


def safe_item(item: dict) -> dict:
    """An answer item Slicer can read: a Fiducials item with no points becomes a PlainText that says so."""
    if item["type"] == "Fiducials" and not item["content"]:
        return {"type": "PlainText", "content": "no points were found", "label": item["label"] or "Fiducials"}
    return item
