"""A MONAI bundle served as MONAI runs it: `tomaat serve --bundle BUNDLE_FOLDER`.

The bundle's own `configs/inference.json` (or .yaml) does the work through MONAI's workflow API
(`ConfigWorkflow`): its preprocessing, network and weights, inferer and postprocessing, in the
order and with the collation and decollation of the `SupervisedEvaluator` that `monai.bundle run`
drives, so that a served answer is what the bundle's authors get at home. Its `metadata.json`
becomes the service's description, model metadata and the label names of its LabelVolume.

The decoded input reaches MONAI as a NIfTI file in the request's own scratch folder, read by the
bundle's own `LoadImaged` (whatever reader and options it names), rather than as an array with a
hand-made affine: MONAI then sees exactly what it sees from a researcher's file, and the bundle
runs unchanged. Geometry stays exact because nothing is rebuilt from MONAI's affines: `Invertd`
returns the prediction on the voxel grid `LoadImaged` read (refused otherwise), and the labels take
the client's decoded grid (size, spacing, origin, direction) as they are.

The bundle's `SaveImaged` steps are dropped: the answer goes back over the wire, not into the
bundle's `output_dir`. Loading a bundle runs its config (classes named by `_target_`, `$` Python
expressions): only serve bundles you trust (docs/security.md).
"""

from __future__ import annotations

import json
import math
import os
from types import SimpleNamespace
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..errors import RequestError
from ..files.scratch import scratch_folder
from ..protocol.elements import LabelVolume, Volume
from ..protocol.metadata import TEXT
from ..protocol.registry import LIMITS
from ..protocol.text import CONTROL, CONTROL_EXCEPT_LINES
from ..server.app import TomaatApp
from .trusted_files import refuse_untrusted

EXTRA = "pip install 'tomaat[monai]'"
CONFIGS = ("inference.json", "inference.yaml", "inference.yml")
NEEDED = ("network_def", "inferer", "preprocessing")  # config ids the served path runs (MONAI's property ids)
IMAGE, PRED = "image", "pred"  # the keys MONAI's evaluator hands the network and stores its output under
_PRIVATE = "_monai_bundle"  # the request's MONAI data between the steps


def _monai() -> SimpleNamespace:
    """MONAI's bundle and engine parts, imported only when a bundle is served."""
    try:
        import torch
        from monai.bundle import ConfigWorkflow
        from monai.data import list_data_collate
        from monai.engines.utils import engine_apply_transform
        from monai.transforms import Compose, Decollated, SaveImage, SaveImaged
    except ImportError as error:
        raise ImportError(
            f"serving a MONAI bundle needs MONAI and PyTorch ({error.name} is missing): {EXTRA}"
        ) from None
    return SimpleNamespace(
        torch=torch,
        ConfigWorkflow=ConfigWorkflow,
        collate=list_data_collate,
        apply=engine_apply_transform,
        Compose=Compose,
        Decollated=Decollated,
        savers=(SaveImage, SaveImaged),
    )


def bundle_app(folder) -> TomaatApp:
    """The app serving the MONAI bundle in `folder`; nothing of the bundle runs until the server calls setup()."""
    _monai()
    root = os.path.abspath(os.fspath(folder))
    refuse_untrusted(root)
    configs = os.path.join(root, "configs")
    config = next((os.path.join(configs, n) for n in CONFIGS if os.path.isfile(os.path.join(configs, n))), None)
    if config is None:
        raise ValueError(
            f"{root} is not a MONAI bundle: no configs/inference.json (or .yaml); expected a bundle folder"
        )
    meta_file = os.path.join(configs, "metadata.json")
    metadata = _read_json(meta_file, "the bundle's metadata")
    weights = os.path.join(root, "models", "model.pt")
    if not os.path.isfile(weights):
        raise ValueError(f"the bundle at {root} has no models/model.pt; expected its weights there")
    return BundleApp(root, config, meta_file, metadata)


def _read_json(path: str, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except FileNotFoundError:
        raise ValueError(f"{what} is missing: expected {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{what} at {path} is not readable JSON: {error}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what} at {path} is a JSON {type(value).__name__}; expected an object")
    return value


def _text(value, limit: int, lines: bool = False) -> str:
    """A metadata value as our fields take it: text, one line unless allowed, cut to the field's limit."""
    if isinstance(value, (list, tuple)):
        value = "\n".join(str(v) for v in value) if lines else "; ".join(str(v) for v in value)
    text = "" if value is None else str(value)
    text = CONTROL_EXCEPT_LINES.sub(" ", text) if lines else CONTROL.sub(" ", " ".join(text.split()))
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _inputs(metadata: dict, where: str) -> tuple[list[Volume], int]:
    """One Volume per input channel the metadata declares (each channel its own file, as LoadImaged stacks them)."""
    formats = metadata.get("network_data_format") or {}
    declared = formats.get("inputs") or {IMAGE: {"num_channels": 1}}
    if not isinstance(declared, dict) or set(declared) != {IMAGE}:
        raise ValueError(
            f"{where}: network_data_format.inputs declares {sorted(declared) if isinstance(declared, dict) else declared}"
            f"; expected one input named {IMAGE!r} (the key MONAI's evaluator hands the network)"
        )
    spec = declared[IMAGE] if isinstance(declared[IMAGE], dict) else {}
    channels = spec.get("num_channels", 1)
    if isinstance(channels, bool) or not isinstance(channels, int) or not 1 <= channels <= 16:
        raise ValueError(f"{where}: inputs.image.num_channels is {channels!r}; expected a whole number from 1 to 16")
    if channels == 1:
        return [Volume(IMAGE)], 1
    return [Volume(f"image_{i}") for i in range(channels)], channels  # in channel_def's order


def _segments(metadata: dict) -> dict[int, str]:
    """The label names: a segmentation's output channels, whose index argmax makes the label value."""
    outputs = (metadata.get("network_data_format") or {}).get("outputs") or {}
    spec = outputs.get(PRED) if isinstance(outputs, dict) else None
    if (
        not isinstance(spec, dict)
        or spec.get("format") != "segmentation"
        or not isinstance(spec.get("channel_def"), dict)
    ):
        return {}
    segments = {}
    for key, name in spec["channel_def"].items():
        value = int(key) if str(key).isdigit() else 0
        name = CONTROL.sub(" ", str(name).replace("\\", "/")).strip()[:64]
        if 1 <= value <= 65535 and name:
            segments[value] = name
    return segments


class BundleApp(TomaatApp):
    """The bundle's inference config, split into our three steps: MONAI's preprocessing (CPU), the network under
    the GPU lock, MONAI's postprocessing; then the labels onto the client's grid."""

    gpu = True

    def __init__(self, root: str, config: str, meta_file: str, metadata: dict):
        super().__init__()
        self.root, self.config, self.meta_file = root, config, meta_file
        where = f"the bundle at {root}"
        inputs, self.channels = _inputs(metadata, where)
        formats = metadata.get("network_data_format") or {}
        image_spec = (formats.get("inputs") or {}).get(IMAGE) or {}
        self.name = _text(metadata.get("name") or os.path.basename(root), LIMITS["name"]) or "MONAI bundle"
        self.modality = _text(image_spec.get("modality", ""), LIMITS["modality"])
        self.task = _text(metadata.get("task", "segmentation"), LIMITS["task"])
        self.description = _text(metadata.get("description", ""), LIMITS["description"], lines=True)
        self.version = _text(metadata.get("version", ""), TEXT["version"]) or "1"
        self.licence = _text(metadata.get("license") or metadata.get("copyright", ""), TEXT["licence"])
        self.citation = _text(metadata.get("references", ""), TEXT["citation"], lines=True)
        self.intended_use = _text(metadata.get("intended_use", ""), TEXT["intended_use"], lines=True)
        self.input_interface = inputs
        self.output_interface = [
            LabelVolume("labels", self.task or "segmentation", inputs[0].destination, _segments(metadata))
        ]
        self._loaded: dict[str, Any] | None = None
        workflow = self._workflow()  # reads the config only: a missing part is refused before the server starts
        missing = [key for key in NEEDED if key not in workflow.parser]
        if missing:
            raise ValueError(f"{where}: {os.path.basename(config)} has no {', '.join(missing)}; expected MONAI's "
                             f"inference properties {', '.join(NEEDED)}")  # fmt: skip

    def _workflow(self):
        try:  # logging_file=False: the bundle's logging.conf would reconfigure the server's own logging
            return _monai().ConfigWorkflow(
                config_file=self.config, meta_file=self.meta_file, logging_file=False, workflow_type="inference"
            )
        except Exception as error:  # a config MONAI cannot read (JSON, YAML, a missing file): one line, not a trace
            what = " ".join(str(error).split()) or type(error).__name__
            raise ValueError(f"the bundle at {self.root}: {os.path.basename(self.config)}: {what}") from None

    def setup(self, device_name: str) -> None:
        """Instantiate the bundle's parts on the server's device and load its weights (weights_only: no pickle code)."""
        monai = _monai()
        torch = monai.torch
        if device_name == "auto":
            device_name = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(device_name)
        workflow = self._workflow()
        workflow.parser["bundle_root"] = self.root  # set even where the config leaves them out
        workflow.parser["device"] = device
        workflow.initialize()  # the bundle's own "initialize" expressions (e.g. set_determinism)
        parser = workflow.parser
        network = parser.get_parsed_content("network_def").to(device)
        checkpoint = torch.load(os.path.join(self.root, "models", "model.pt"), map_location=device, weights_only=True)
        if isinstance(checkpoint, dict) and "model" in checkpoint and isinstance(checkpoint["model"], dict):
            checkpoint = checkpoint["model"]  # as CheckpointLoader's {"model": network} takes it
        network.load_state_dict(checkpoint)
        network.eval()
        post = parser.get_parsed_content("postprocessing") if "postprocessing" in parser else None
        amp = bool(parser.get_parsed_content("evaluator#amp")) if "evaluator#amp" in parser else False
        self._loaded = {
            "monai": monai,
            "device": device,
            "network": network,
            "preprocessing": parser.get_parsed_content("preprocessing"),
            "inferer": parser.get_parsed_content("inferer"),
            "postprocessing": _without(post, monai.savers, monai.Compose) if post is not None else None,
            "amp": amp and device.type == "cuda",  # the evaluator's autocast is CUDA's; a no-op elsewhere
        }

    def _parts(self) -> dict:
        if self._loaded is None:
            raise RuntimeError("the bundle is not loaded: the server calls setup(device) before the first request")
        return self._loaded

    def preprocess(self, data: dict) -> dict:
        """The bundle's preprocessing, from NIfTI files of the decoded inputs that live only for its LoadImaged."""
        parts = self._parts()
        first = data[self.input_interface[0].destination]
        for element in self.input_interface[1:]:
            if not _same_grid(data[element.destination], first):
                raise RequestError(
                    f"volume '{element.destination}' is not on the grid of '{self.input_interface[0].destination}'; "
                    "expected the bundle's input channels on one grid (size, spacing, origin, direction)",
                    field=element.destination,
                )
        with scratch_folder() as folder:
            paths = []
            for index, element in enumerate(self.input_interface):
                path = os.path.join(folder, f"input{index}.nii.gz")
                sitk.WriteImage(data[element.destination], path, True, 1)
                paths.append(path)
            item = parts["preprocessing"]({IMAGE: paths[0] if self.channels == 1 else paths})
        data[_PRIVATE] = item
        return data

    def inference(self, data: dict) -> dict:
        """The evaluator's iteration: a batch of one (MONAI's collation), on the device, in eval mode, no gradients."""
        parts = self._parts()
        torch = parts["monai"].torch
        batch = parts["monai"].collate([data.pop(_PRIVATE)])
        inputs = batch[IMAGE].to(parts["device"])
        with torch.no_grad():
            if parts["amp"]:
                with torch.autocast("cuda"):
                    pred = parts["inferer"](inputs, parts["network"])
            else:
                pred = parts["inferer"](inputs, parts["network"])
        data[_PRIVATE] = (batch, {IMAGE: inputs, "label": None, PRED: pred})
        return data

    def postprocess(self, data: dict) -> dict:
        """The bundle's postprocessing on the decollated item, as the evaluator runs it; then labels on the client's grid."""
        parts = self._parts()
        batch, output = data.pop(_PRIVATE)
        decollate = parts["monai"].Decollated(keys=None, detach=True)
        item_batch, item_output = decollate(batch)[0], decollate(output)[0]
        if parts["postprocessing"] is not None:
            item_batch, item_output = parts["monai"].apply(item_batch, item_output, parts["postprocessing"])
        grid = data[self.input_interface[0].destination]
        loaded = getattr(item_batch.get(IMAGE), "meta", {}).get("original_affine")  # the affine LoadImaged read
        data["labels"] = _labels(item_output[PRED], grid, loaded)
        return data


def _same_grid(one: sitk.Image, other: sitk.Image) -> bool:
    return one.GetSize() == other.GetSize() and all(
        np.allclose(getattr(one, f"Get{what}")(), getattr(other, f"Get{what}")(), atol=1e-6)
        for what in ("Spacing", "Origin", "Direction")
    )


def _without(transform, savers: tuple, Compose):
    """The postprocessing with its file-writing steps (SaveImage/SaveImaged) taken out, nested Composes too."""
    if isinstance(transform, Compose):
        transform.transforms = [_without(t, savers, Compose) for t in transform.transforms if not isinstance(t, savers)]
    return transform


def _labels(pred, grid: sitk.Image, loaded=None) -> sitk.Image:
    """The bundle's label map as a SimpleITK image with the client's geometry; refused if it is not on that grid.

    Its shape alone does not tell: an input already on the bundle's spacing keeps its shape through
    Orientationd's flips, so where MONAI kept the affines, the prediction's must be the one LoadImaged read.
    """
    array = pred.detach().cpu().numpy() if hasattr(pred, "detach") else np.asarray(pred)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    size = tuple(grid.GetSize())
    affine = getattr(pred, "affine", None)
    moved = (
        affine is not None
        and loaded is not None
        and not np.allclose(np.asarray(affine.cpu() if hasattr(affine, "cpu") else affine, dtype=float),
                            np.asarray(loaded.cpu() if hasattr(loaded, "cpu") else loaded, dtype=float), atol=1e-3)
    )  # fmt: skip
    if array.shape != size or moved:
        raise RuntimeError(
            f"the bundle's postprocessing left {PRED!r} of shape {array.shape}{' with another affine' if moved else ''}, "
            f"not on the input's grid of size {size}; "
            "expected a label map of one channel, put back by Invertd"
        )
    if array.size and not (np.all(np.isfinite(array)) and np.all(array == np.round(array))):
        raise RuntimeError(f"the bundle's {PRED!r} holds values that are not whole numbers; expected a label map")
    low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
    if low < 0 or high > 65535 or math.isnan(high):
        raise RuntimeError(f"the bundle's {PRED!r} holds labels from {low:g} to {high:g}; expected 0 to 65535")
    labels = sitk.GetImageFromArray(
        np.ascontiguousarray(array.transpose(2, 1, 0)).astype(np.uint8 if high < 256 else np.uint16)
    )
    labels.CopyInformation(grid)
    return labels
