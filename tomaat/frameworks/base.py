"""What the TensorFlow and PyTorch adapters share: whole-volume or sliding-window prediction, and the step."""

from __future__ import annotations

import numpy as np

from ..processing.pipeline import Step, read
from .sliding import sliding_window, sliding_windows


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

    def predict_many(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """`predict` of each array (several requests' volumes), sharing forward passes between them.

        Whole volumes of the same shape go through the network as one batch (so the app's max_batch
        bounds its size); windowed volumes of any sizes have their windows pooled into batches of
        `batch_size`. Each result is what `predict` gives that array alone, up to the rounding of a
        different batch size.
        """
        firsts = []
        for array in arrays:
            array = np.asarray(array, dtype=np.float32)
            firsts.append(np.moveaxis(array, -1, 1) if self.channels_last else array)
        outs: list = [None] * len(firsts)
        whole: dict[tuple, list[int]] = {}
        windowed = []
        for index, first in enumerate(firsts):
            if self.window is None or tuple(first.shape[2:]) == self.window:
                whole.setdefault(first.shape[1:], []).append(index)
            else:
                windowed.append(index)
        for indexes in whole.values():
            out = self._run(np.concatenate([firsts[index] for index in indexes]))
            ends = np.cumsum([len(firsts[index]) for index in indexes])
            for index, part in zip(indexes, np.split(out, ends[:-1]), strict=True):
                outs[index] = part
        if windowed:
            volumes = [item for index in windowed for item in firsts[index]]
            results = iter(sliding_windows(volumes, self.window, self._run, self.overlap, self.batch_size, self.blend))
            for index in windowed:
                outs[index] = np.stack([next(results) for _ in firsts[index]])
        return [np.moveaxis(out, 1, -1) if self.channels_last else out for out in outs]


class Predict(Step):
    """The inference step: the only part of a request that holds the server's GPU lock.

    An app whose `inference` is a Predict batches by setting `max_batch`: TomaatApp's default
    `inference_batch` hands the batch to `Predict.inference_batch`, one `predict_many` for all.
    """

    def __init__(self, model: Model, key: str = "array", out: str = "prediction"):
        super().__init__(key, out)
        self.model = model

    def apply(self, array):
        return self.model.predict(array)

    def inference_batch(self, items: list[dict]) -> list[dict]:
        """Several requests' data: their arrays through the model together, each prediction into its own dict."""
        arrays = [read(item, self.key, self) for item in items]
        for item, prediction in zip(items, self.model.predict_many(arrays), strict=True):
            item[self.out] = prediction
        return items
