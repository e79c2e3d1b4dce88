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
    return sliding_windows([volume], window, predict, overlap, batch_size, blend, pad_value)[0]


class _Blend:
    """One volume's windows and the weighted sums its results build up."""

    def __init__(self, volume: np.ndarray, window: tuple, overlap: float, pad_value: float):
        self.spatial = volume.shape[1:]
        self.padded_shape = tuple(max(n, w) for n, w in zip(self.spatial, window, strict=True))
        if self.padded_shape != self.spatial:
            pads = [(0, 0)] + [(0, p - n) for n, p in zip(self.spatial, self.padded_shape, strict=True)]
            volume = np.pad(volume, pads, constant_values=pad_value)
        self.volume = volume
        starts = itertools.product(*(positions(n, w, overlap) for n, w in zip(self.padded_shape, window, strict=True)))
        self.regions = [tuple(slice(s, s + w) for s, w in zip(start, window, strict=True)) for start in starts]
        self.total: np.ndarray | None = None
        self.norm = np.zeros(self.padded_shape, dtype=np.float32)

    def add(self, output: np.ndarray, region: tuple, weight: np.ndarray) -> None:
        if self.total is None:
            self.total = np.zeros((output.shape[0],) + self.padded_shape, dtype=np.float32)
        self.total[(slice(None),) + region] += output * weight
        self.norm[region] += weight

    def result(self) -> np.ndarray:
        assert self.total is not None
        result = self.total / self.norm
        return result[(slice(None),) + tuple(slice(0, n) for n in self.spatial)]


def sliding_windows(
    volumes: list[np.ndarray],
    window,
    predict: Callable[[np.ndarray], np.ndarray],
    overlap: float = 0.5,
    batch_size: int = 1,
    blend: str = "gaussian",
    pad_value: float = 0.0,
) -> list[np.ndarray]:
    """`sliding_window` of several volumes (of any sizes) whose windows share forward passes.

    The windows of all volumes, in order, are cut into batches of `batch_size`, so a batch of
    requests fills the model's batches where one small volume alone would leave them part empty;
    each volume's windows are blended in the same order as on its own.
    """
    window = tuple(int(w) for w in window)
    weight = gaussian_weight(window) if blend == "gaussian" else np.ones(window, dtype=np.float32)
    blends = [_Blend(volume, window, overlap, pad_value) for volume in volumes]
    windows = [(each, region) for each in blends for region in each.regions]
    for first in range(0, len(windows), batch_size):
        group = windows[first : first + batch_size]
        batch = np.stack([each.volume[(slice(None),) + region] for each, region in group])
        outputs = np.asarray(predict(batch), dtype=np.float32)
        for output, (each, region) in zip(outputs, group, strict=True):
            each.add(output, region, weight)
    return [each.result() for each in blends]
