"""PyTorch adapter: the same API as the Keras one, on CUDA when available, under torch.inference_mode."""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np

from .base import Model
from .trusted_files import refuse_untrusted


class TorchModel(Model):
    """A `torch.nn.Module`, an exported program (`torch.export`, a `.pt2` file) or a TorchScript file.

    `half=True` runs in float16 on CUDA (half the memory, tensor cores); on the CPU
    it is ignored, because float16 3D convolutions there are slow or missing.

    The model goes onto its device at `setup(device)`, which an app's own `setup`
    calls with the device the server picked ("auto", "cpu", "cuda:1"); a TorchScript
    file is read only then, straight onto that device. `device=` places it at
    construction instead, and a model used before any setup goes to "auto" (CUDA
    when available). Files are refused from places other users can write
    (`trusted_files`): loading TorchScript runs the code inside it.

    An exported program is PyTorch's successor to TorchScript (torch 2.13 warns on
    `torch.jit.load`). It runs only the shapes it was exported for, so those
    shapes drive the sliding window: fixed spatial dimensions are the window
    (given or checked), and a fixed batch size is filled with zeros when the
    last windows do not make a whole batch. Export in `eval()` mode: an
    exported program keeps the mode it was traced in. Its weights are read at
    construction (on the CPU, to learn those shapes) and moved at setup.
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
        import torch

        self._torch = torch
        self._half = half
        self._lock = threading.Lock()
        self._placed = False
        self._choose(device)  # until setup: what "auto" would pick, so `half` reads as it will be
        self.model: Any = None
        self._script: str | None = None
        self._program: Any = None
        self._module: Any = None
        if isinstance(model, (str, os.PathLike)):
            path = os.fspath(model)
            refuse_untrusted(path)
            if path.endswith(".pt2"):
                model = torch.export.load(path)
            else:
                self._script = path
        self.fixed_batch: int | None = None
        if isinstance(model, torch.export.ExportedProgram):
            batch, spatial = _input_shape(model)
            window = _window(window, spatial)
            if batch is not None:
                self.fixed_batch = batch_size = batch
            self._program = model
        elif self._script is None:
            self._module = model
        super().__init__(window, overlap, batch_size, blend)
        if device is not None:
            self.setup(device)

    def _choose(self, device: str | None) -> None:
        torch = self._torch
        if device in (None, "auto"):  # "auto": the service's default device setting (TomaatApp.setup)
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.half = self._half and self.device.type == "cuda"
        self.dtype = torch.float16 if self.half else torch.float32

    def setup(self, device: str = "auto") -> None:
        """Put the model on `device` (read a TorchScript file onto it): call from the app's setup(device)."""
        torch = self._torch
        with self._lock:
            self._choose(device)
            if self._program is not None:
                program = self._program
                if self.device.type != "cpu":
                    from torch.export.passes import move_to_device_pass  # a submodule `import torch` does not load

                    program = move_to_device_pass(program, self.device)
                self.model = program.module().to(self.dtype)  # an exported module has no train/eval switch
            elif self._script is not None:
                refuse_untrusted(self._script)  # again: the file may have moved since the app was built
                self.model = torch.jit.load(self._script, map_location=self.device).to(self.dtype).eval()
            else:
                self.model = self._module.to(self.device, self.dtype).eval()
            self._placed = True

    def _run(self, batch: np.ndarray) -> np.ndarray:
        if not self._placed:
            self.setup("auto")
        torch = self._torch
        size = self.fixed_batch or len(batch)
        outputs = []
        with torch.inference_mode():
            for first in range(0, len(batch), size):
                part = batch[first : first + size]
                short = size - len(part)
                if short:
                    part = np.concatenate([part, np.zeros((short,) + part.shape[1:], dtype=part.dtype)])
                tensor = torch.from_numpy(np.ascontiguousarray(part)).to(self.device, self.dtype)
                outputs.append(self.model(tensor).float().cpu().numpy()[: size - short])
        return outputs[0] if len(outputs) == 1 else np.concatenate(outputs)


def _input_shape(program) -> tuple[int | None, tuple[int | None, ...]]:
    """(batch, spatial) of an exported program's one tensor input; None where a dimension was exported dynamic."""
    names = program.graph_signature.user_inputs
    if len(names) != 1:
        raise ValueError(f"the exported model takes {len(names)} inputs; TorchModel feeds it one volume batch")
    [node] = [node for node in program.graph.nodes if node.op == "placeholder" and node.name == names[0]]
    shape = tuple(dim if isinstance(dim, int) else None for dim in node.meta["val"].shape)
    if len(shape) < 3:
        raise ValueError(f"the exported model's input has shape {shape}; expected (batch, channels, *spatial)")
    return shape[0], shape[2:]


def _window(window, spatial: tuple[int | None, ...]):
    """The sliding window for an exported program: its fixed spatial shape, which a given window must equal."""
    if all(dim is None for dim in spatial):
        return window
    if None in spatial:
        raise ValueError(
            f"the exported model fixes some spatial dimensions and not others {spatial}; "
            "export with all spatial dimensions fixed (the window) or all dynamic"
        )
    if window is not None and tuple(window) != spatial:
        raise ValueError(f"window {tuple(window)} differs from the exported model's input size {spatial}")
    return spatial


UPSTREAM_NAMES = {"Prediction": "tomaat.frameworks.pytorch.TorchModel with tomaat.frameworks.Predict"}


def __getattr__(name: str):
    from ..extras import refusal

    raise refusal(__name__, name, UPSTREAM_NAMES.get(name))
