"""PyTorch adapter: the same API as the Keras one, on CUDA when available, under torch.inference_mode."""

from __future__ import annotations

import os

import numpy as np

from .base import Model


class TorchModel(Model):
    """A `torch.nn.Module` or a TorchScript file; channels-first volumes in and out.

    `half=True` runs in float16 on CUDA (half the memory, tensor cores); on the CPU
    it is ignored, because float16 3D convolutions there are slow or missing.
    """

    channels_last = False

    def __init__(
        self,
        model,
        window=None,
        overlap: float = 0.5,
        batch_size: int = 1,
        blend: str = "gaussian",
        half: bool = False,
        device: str | None = None,
    ):
        super().__init__(window, overlap, batch_size, blend)
        import torch

        self._torch = torch
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if isinstance(model, (str, os.PathLike)):
            model = torch.jit.load(os.fspath(model), map_location=self.device)
        self.half = half and self.device.type == "cuda"
        self.dtype = torch.float16 if self.half else torch.float32
        self.model = model.to(self.device, self.dtype).eval()

    def _run(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            tensor = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device, self.dtype)
            return self.model(tensor).float().cpu().numpy()
