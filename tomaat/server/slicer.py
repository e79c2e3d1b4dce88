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

import numpy as np

MARKER = "module_version"
_FLIP = np.array([-1.0, -1.0, 1.0])  # RAS <-> LPS: the same sign change both ways


def sent_by_slicer(fields: dict) -> bool:
    return MARKER in fields


def flip_points(points) -> np.ndarray:
    """RAS points in LPS, or LPS points in RAS."""
    array = np.asarray(points, dtype=float)
    if array.size == 0:
        return array.reshape(0, 3)
    if array.ndim != 2 or array.shape[1] != 3:
        raise ValueError(f"fiducials must be an (N, 3) array of points, got shape {array.shape}")
    return array * _FLIP


def safe_item(item: dict) -> dict:
    """An answer item Slicer can read: a Fiducials item with no points becomes a PlainText that says so."""
    if item["type"] == "Fiducials" and not item["content"]:
        return {"type": "PlainText", "content": "no points were found", "label": item["label"] or "Fiducials"}
    return item
