"""Sliding-window inference: models are trained on patches, volumes are bigger than GPU memory allows.

Windows overlap and are blended with a Gaussian weight, so each voxel's result
comes mostly from windows where it sat near the centre, away from the zero
padding a convolution sees at a window's edge.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np


def positions(size: int, window: int, overlap: float) -> list[int]:
    """Window starts covering [0, size): evenly spread, first at 0, last flush with the end."""
    if size <= window:
        return [0]
    stride = max(1, int(window * (1.0 - overlap)))
    count = math.ceil((size - window) / stride) + 1
    return sorted({int(round(i * (size - window) / (count - 1))) for i in range(count)})


def gaussian_weight(window, sigma_fraction: float = 0.125) -> np.ndarray:
    axes = []
    for n in window:
        centre, sigma = (n - 1) / 2.0, max(n * sigma_fraction, 1e-3)
        # floor each axis, not the product: a floored product would weigh a window's corner like its centre
        axes.append(np.maximum(np.exp(-0.5 * ((np.arange(n) - centre) / sigma) ** 2), 1e-8))
    weight = axes[0]
    for axis in axes[1:]:
        weight = np.multiply.outer(weight, axis)
    return (weight / weight.max()).astype(np.float32)


def sliding_window(
    volume: np.ndarray,
    window,
    predict: Callable[[np.ndarray], np.ndarray],
    overlap: float = 0.5,
    batch_size: int = 1,
    blend: str = "gaussian",
    pad_value: float = 0.0,
) -> np.ndarray:
    """Predict a channels-first volume (C, *spatial) window by window; returns (K, *spatial).

    `predict` takes a batch (B, C, *window) and returns (B, K, *window). A volume
    smaller than the window along an axis is padded with `pad_value` and the result cropped back.
    """
    spatial = volume.shape[1:]
    window = tuple(int(w) for w in window)
    padded_shape = tuple(max(n, w) for n, w in zip(spatial, window, strict=True))
    if padded_shape != spatial:
        pads = [(0, 0)] + [(0, p - n) for n, p in zip(spatial, padded_shape, strict=True)]
        volume = np.pad(volume, pads, constant_values=pad_value)
    weight = gaussian_weight(window) if blend == "gaussian" else np.ones(window, dtype=np.float32)
    starts = list(itertools.product(*(positions(n, w, overlap) for n, w in zip(padded_shape, window, strict=True))))
    total = None
    norm = np.zeros(padded_shape, dtype=np.float32)
    for first in range(0, len(starts), batch_size):
        group = starts[first : first + batch_size]
        slices = [tuple(slice(s, s + w) for s, w in zip(start, window, strict=True)) for start in group]
        batch = np.stack([volume[(slice(None),) + region] for region in slices])
        outputs = np.asarray(predict(batch), dtype=np.float32)
        if total is None:
            total = np.zeros((outputs.shape[1],) + padded_shape, dtype=np.float32)
        for output, region in zip(outputs, slices, strict=True):
            total[(slice(None),) + region] += output * weight
            norm[region] += weight
    result = total / norm
    return result[(slice(None),) + tuple(slice(0, n) for n in spatial)]
