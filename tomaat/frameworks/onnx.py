"""ONNX adapter: a `.onnx` file through onnxruntime, on CUDA when the server's device is a GPU and it can.

onnxruntime picks its hardware by execution provider, chosen when the session is
made, so the session is made in `setup(device)` (the app's setup passes the
device the server picked), not when the app is built.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import numpy as np

from .base import Model
from .trusted_files import refuse_untrusted

log = logging.getLogger("tomaat.server")

_CUDA, _CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise ImportError("ONNX models need onnxruntime: pip install 'tomaat[onnx]'") from None
    return onnxruntime


class OnnxModel(Model):
    """An ONNX network (a path, or the model's bytes) behind the shared `predict` API, channels first.

    The session is made at `setup(device)`: "cuda" or "cuda:N" runs on the CUDA execution provider
    when this onnxruntime has it (onnxruntime-gpu), "auto" uses it when present, anything else (or a
    missing provider, logged) runs on the CPU; `providers=` overrides the choice. A model used before
    any setup gets "auto". As with `torch.export`, fixed input dimensions drive the sliding window
    (the spatial ones are the window) and a fixed batch is filled with zero windows. The network's
    first input takes the batch; `output` names (or numbers) the output returned.
    """

    channels_last = False

    def __init__(
        self,
        model,
        window=None,
        overlap: float = 0.5,
        batch_size: int = 1,
        blend: str = "gaussian",
        providers=None,
        device: str | None = None,
        output: str | int = 0,
        threads: int | None = None,
    ):
        self._ort = _onnxruntime()
        if isinstance(model, (bytes, bytearray)):
            self._source = bytes(model)
        else:
            self._source = os.fspath(model)
            refuse_untrusted(self._source)
        self._providers, self._output, self._threads = providers, output, threads
        self._window_given, self._batch_given = window, batch_size
        self._lock = threading.Lock()
        self.session: Any = None
        self.device: str | None = None
        self.fixed_batch: int | None = None
        super().__init__(window, overlap, batch_size, blend)
        if device is not None:
            self.setup(device)

    def setup(self, device: str = "auto") -> None:
        """Make the session for `device`: call from the app's setup(device)."""
        ort = self._ort
        with self._lock:
            providers = self._providers or _providers_for(device, ort.get_available_providers())
            options = ort.SessionOptions()
            if self._threads:
                options.intra_op_num_threads = self._threads
            if isinstance(self._source, str):
                refuse_untrusted(self._source)  # again: the file may have moved since the app was built
            session = ort.InferenceSession(self._source, sess_options=options, providers=providers)
            inputs = session.get_inputs()
            if len(inputs) != 1:
                raise ValueError(f"the ONNX model takes {len(inputs)} inputs; OnnxModel feeds it one volume batch")
            shape = tuple(dim if isinstance(dim, int) else None for dim in inputs[0].shape)
            if len(shape) < 3:
                raise ValueError(f"the ONNX model's input has shape {shape}; expected (batch, channels, *spatial)")
            from .pytorch import _window  # the same rule as exported programs; pytorch.py imports torch lazily

            self.window = _window(self._window_given, shape[2:])
            self.window = tuple(self.window) if self.window is not None else None
            self.fixed_batch = shape[0]
            self.batch_size = shape[0] or self._batch_given
            self._input = inputs[0].name
            self._dtype = _NUMPY_TYPES.get(inputs[0].type, np.float32)
            names = [each.name for each in session.get_outputs()]
            if isinstance(self._output, int):
                self._output_name = names[self._output]
            elif self._output in names:
                self._output_name = self._output
            else:
                raise ValueError(f"the ONNX model has no output {self._output!r}; its outputs are {names}")
            self.device = "cuda" if session.get_providers()[0] == _CUDA else "cpu"
            self.session = session

    def _ready(self) -> None:
        if self.session is None:
            self.setup("auto")

    def predict(self, array: np.ndarray) -> np.ndarray:
        self._ready()  # the window may come from the model
        return super().predict(array)

    def predict_many(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        self._ready()
        return super().predict_many(arrays)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        self._ready()
        size = self.fixed_batch or len(batch)
        outputs = []
        for first in range(0, len(batch), size):
            part = batch[first : first + size]
            short = size - len(part)
            if short:
                part = np.concatenate([part, np.zeros((short,) + part.shape[1:], dtype=part.dtype)])
            feed = {self._input: np.ascontiguousarray(part, dtype=self._dtype)}
            [out] = self.session.run([self._output_name], feed)
            outputs.append(np.asarray(out, dtype=np.float32)[: size - short])
        return outputs[0] if len(outputs) == 1 else np.concatenate(outputs)


def _providers_for(device: str | None, available: list[str]) -> list:
    """onnxruntime's providers for the server's device setting; the CPU is always the last resort."""
    device = "auto" if device is None else str(device)
    if device == "auto":
        return [_CUDA, _CPU] if _CUDA in available else [_CPU]
    if device == "cuda" or device.startswith("cuda:"):
        if _CUDA not in available:
            log.warning("device %s asked for, but this onnxruntime has no CUDA provider: running on the CPU", device)
            return [_CPU]
        index = int(device.partition(":")[2] or 0)
        return [(_CUDA, {"device_id": index}), _CPU]
    return [_CPU]
