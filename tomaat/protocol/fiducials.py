"""Fiducial points as v1 text, `x,y,z;x,y,z;...` in physical coordinates."""

from __future__ import annotations

import math

import numpy as np

from ..errors import RequestError, TooLarge
from .elements import POINTS

MAX_POINTS = 100_000  # the server's default max_points
EXPECTED = POINTS


def parse(text: str, where: str = "fiducials", max_points: int = MAX_POINTS) -> np.ndarray:
    """The (N, 3) points, refused past max_points before any is parsed (6 MB of text was +276 MB as floats)."""
    if text.count(";") >= max_points:
        count = len([c for c in text.split(";", max_points + 1) if c.strip()])
        if count > max_points:
            raise TooLarge(f"{where}: more than the {max_points} points this server accepts; expected {EXPECTED}")
    points = []
    for index, chunk in enumerate(c for c in text.strip().split(";") if c.strip()):
        parts = chunk.split(",")
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise RequestError(
                f"{where}: point {index + 1} ({chunk.strip()!r}) is not numeric; expected {EXPECTED}"
            ) from None
        if len(values) != 3:
            raise RequestError(f"{where}: point {index + 1} has {len(values)} coordinates; expected {EXPECTED}")
        if not all(math.isfinite(v) for v in values):
            raise RequestError(f"{where}: point {index + 1} has a non-finite coordinate; expected {EXPECTED}")
        points.append(values)
    return np.asarray(points, dtype=float).reshape(-1, 3)


def format_points(points) -> str:
    array = np.asarray(points, dtype=float)
    if array.size == 0:
        return ""
    if array.ndim != 2 or array.shape[1] != 3:
        raise ValueError(f"fiducials must be an (N, 3) array of points, got shape {array.shape}")
    return ";".join(",".join(repr(float(v)) for v in row) for row in array)


_RAS_LPS = np.array([-1.0, -1.0, 1.0])  # the same sign change both ways


def ras_lps(points) -> np.ndarray:
    """RAS points (3D Slicer's world) in LPS (ITK's, and the wire format's), or LPS points in RAS."""
    array = np.asarray(points, dtype=float)
    if array.size == 0:
        return array.reshape(0, 3)
    if array.ndim != 2 or array.shape[1] != 3:
        raise ValueError(f"fiducials must be an (N, 3) array of points, got shape {array.shape}")
    return array * _RAS_LPS
