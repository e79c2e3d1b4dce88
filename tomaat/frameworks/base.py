"""What the TensorFlow and PyTorch adapters share: whole-volume or sliding-window prediction, and the step."""

from __future__ import annotations

import numpy as np

from ..processing.pipeline import Step
from .sliding import sliding_window


class Model:
    """A loaded network with one `predict(array)` that takes and returns the framework's own layout.

    Subclasses load once (at app construction, i.e. server start) and implement
    `_run(batch)` on a channels-first NumPy batch. `window=None` runs whole
    volumes; with a window, volumes larger along any axis go through sliding windows.
    """

    channels_last = False

    def __init__(self, window=None, overlap: float = 0.5, batch_size: int = 1, blend: str = "gaussian"):
        self.window = tuple(window) if window is not None else None
        self.overlap, self.batch_size, self.blend = overlap, batch_size, blend

    def _run(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def predict(self, array: np.ndarray) -> np.ndarray:
        """(B, *spatial, C) for channels-last frameworks, (B, C, *spatial) otherwise; same layout back."""
        array = np.asarray(array, dtype=np.float32)
        first = np.moveaxis(array, -1, 1) if self.channels_last else array
        spatial = first.shape[2:]
        if self.window is None or tuple(spatial) == self.window:
            out = self._run(first)
        else:
            out = np.stack(
                [
                    sliding_window(item, self.window, self._run, self.overlap, self.batch_size, self.blend)
                    for item in first
                ]
            )
        return np.moveaxis(out, 1, -1) if self.channels_last else out


class Predict(Step):
    """The inference step: the only part of a request that holds the server's GPU lock."""

    def __init__(self, model: Model, key: str = "array", out: str = "prediction"):
        super().__init__(key, out)
        self.model = model

    def apply(self, array):
        return self.model.predict(array)
