"""nnU-Net v2 results folders served as they are: `tomaat serve --nnunet RESULTS_FOLDER`.

A trained nnU-Net folder (plans.json, dataset.json, fold_*/checkpoint_final.pth) carries its own
preprocessing (cropping, normalisation, resampling to the planned spacing) and its own resampling
back; re-implementing them would drift from what the model was trained with. So the steps call
nnunetv2's own functions, split where the server wants them split: `preprocess` runs nnU-Net's
preprocessor (CPU), `inference` nnUNetPredictor's sliding window over the folds (under the GPU
lock), `postprocess` nnU-Net's conversion of the logits back to the input's grid. This is what
`nnUNetPredictor.predict_from_files` does with a file, minus the file: the image's array and
properties are built from the SimpleITK image exactly as nnU-Net's SimpleITKIO reader builds them.

Inputs: one Volume per channel of dataset.json's `channel_names`, in channel order, each field the
channel's name in lower case with runs of other characters than a-z and 0-9 turned into "_" ("T1"
-> "t1", "T2 FLAIR" -> "t2_flair"; "channel_N" where that leaves nothing or repeats a name). All
channels must share size and spacing, as nnU-Net's reader requires. Output: one LabelVolume,
"labels", whose segments are dataset.json's `labels` (region-based models: the regions, numbered
by `regions_class_order`, as nnU-Net writes them).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..errors import RequestError
from ..protocol.elements import LabelVolume, Segment, Volume
from ..server.app import TomaatApp
from .trusted_files import refuse_untrusted

NNUNET_CITATION = (
    "Isensee F, Jaeger PF, Kohl SAA, Petersen J, Maier-Hein KH. nnU-Net: a self-configuring method for deep "
    "learning-based biomedical image segmentation. Nature Methods 18, 203-211 (2021)"
)
OUTPUT = "labels"


def _nnunetv2():
    try:
        import nnunetv2  # noqa: F401
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    except ImportError:
        raise ImportError("nnU-Net models need nnunetv2: pip install 'tomaat[nnunet]'") from None
    return PlansManager


def _read_json(folder: str, name: str) -> dict:
    path = os.path.join(folder, name)
    try:
        with open(path, encoding="utf-8") as handle:
            content = json.load(handle)
    except FileNotFoundError:
        raise ValueError(f"{folder} is not an nnU-Net results folder: no {name} (expected plans.json, "
                         "dataset.json and fold_*/checkpoint_final.pth)") from None  # fmt: skip
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); expected nnU-Net's {name}") from None
    if not isinstance(content, dict):
        raise ValueError(f"{path} holds a {type(content).__name__}; expected nnU-Net's {name}, a JSON object")
    return content


def _checkpoint_name(checkpoint: str | None) -> str:
    name = checkpoint or "checkpoint_final.pth"
    if os.path.basename(name) != name or name in (".", ".."):
        raise ValueError(f"--checkpoint {name!r} is a path; expected a file name in the fold folders, e.g. "
                         "checkpoint_best.pth")  # fmt: skip
    return name


def _folds(folder: str, folds: str | None, checkpoint: str) -> list[int | str]:
    """The folds to ensemble: those asked for, else every fold_N holding the checkpoint, else fold_all."""
    trained = sorted(
        int(entry.name[5:])
        for entry in os.scandir(folder)
        if entry.is_dir() and re.fullmatch(r"fold_\d+", entry.name) and os.path.isfile(os.path.join(entry, checkpoint))
    )
    has_all = os.path.isfile(os.path.join(folder, "fold_all", checkpoint))
    if folds is None or not str(folds).strip():
        if trained:
            return list(trained)
        if has_all:
            return ["all"]
        raise ValueError(
            f"no fold of {folder} holds {checkpoint}; expected fold_N/{checkpoint} or fold_all/{checkpoint}"
        )
    chosen: list[int | str] = []
    for part in str(folds).split(","):
        part = part.strip()
        if part == "all":
            fold: int | str = "all"
        elif part.isdigit():
            fold = int(part)
        else:
            raise ValueError(f"--folds {folds!r}: {part!r} is not a fold; expected numbers or 'all', e.g. 0,1,2")
        if not os.path.isfile(os.path.join(folder, f"fold_{fold}", checkpoint)):
            have = ", ".join([str(n) for n in trained] + (["all"] if has_all else [])) or "none"
            raise ValueError(f"fold {fold} of {folder} has no {checkpoint}; folds with it: {have}")
        if fold not in chosen:
            chosen.append(fold)
    return chosen


def field_names(channel_names: dict) -> list[str]:
    """The Volume fields for dataset.json's channel_names, in channel order (see the module's docstring)."""
    try:
        order = sorted(channel_names.items(), key=lambda item: int(item[0]))
    except (TypeError, ValueError):
        raise ValueError(f"dataset.json's channel_names {channel_names!r}: expected {{'0': 'CT', ...}}") from None
    if [int(key) for key, _ in order] != list(range(len(order))) or not order:
        raise ValueError(f"dataset.json's channel_names numbers {[k for k, _ in order]}; expected 0, 1, ... in turn")
    fields: list[str] = []
    for index, (_, name) in enumerate(order):
        field = re.sub(r"[^0-9a-z]+", "_", str(name).lower()).strip("_")
        fields.append(field if field and field not in fields and field != OUTPUT else f"channel_{index}")
    return fields


def _segment_name(name: str) -> str:
    """dataset.json's label name as a DICOM SegmentLabel holds it: no backslash or control, at most 64."""
    name = re.sub(r"[\\\x00-\x1f\x7f]", " ", str(name)).strip() or "label"
    return name[:64]


def segments(dataset: dict, label_manager) -> list[Segment]:
    """What the label values nnU-Net writes mean, named as dataset.json's `labels` names them."""
    labels = dataset.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise ValueError("dataset.json has no labels; expected {'background': 0, 'name': 1, ...}")
    if label_manager.has_regions:
        names = [name for name in labels if name not in ("background", "ignore")]
        values = list(label_manager.regions_class_order)
        if len(names) != len(values):
            raise ValueError(f"dataset.json names {len(names)} regions but regions_class_order has {len(values)}")
        pairs: Iterable[tuple[Any, Any]] = zip(values, names, strict=True)
    else:
        pairs = ((value, name) for name, value in labels.items() if name != "ignore" and value != 0)
    return [Segment(int(value), _segment_name(name)) for value, name in pairs]


class NNUNetApp(TomaatApp):
    """A trained nnU-Net v2 folder as an app; the weights load in setup(device), onto the server's device."""

    task = "segmentation"

    def __init__(self, folder: str, folds: list, checkpoint: str, dataset: dict, plans: dict, label_manager):
        super().__init__()
        self.folder, self.folds, self.checkpoint = folder, folds, checkpoint
        self.dataset, self.plans = dataset, plans
        channels = dataset.get("channel_names") or dataset.get("modality") or {}  # "modality": older dataset.json
        self.fields = field_names(channels)
        self.input_interface = [Volume(field) for field in self.fields]
        self.output_interface = [LabelVolume(OUTPUT, "Segmentation", segments=segments(dataset, label_manager))]
        name = str(dataset.get("name") or plans.get("dataset_name") or os.path.basename(folder))
        self.name = f"nnU-Net {name}"[:100]
        self.modality = ", ".join(str(channels[key]) for key in sorted(channels, key=int))[:100]
        self.description = str(dataset.get("description") or "An nnU-Net v2 model, run by nnU-Net's own code")[:500]
        self.version = str(dataset.get("release") or "1")[:100]
        self.licence = str(dataset.get("licence") or dataset.get("license") or "")[:200]
        reference = str(dataset.get("reference") or "")
        self.citation = (NNUNET_CITATION + (f". Data: {reference}" if reference else ""))[:1000]
        self.predictor = None

    def setup(self, device: str) -> None:
        import torch
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        if device in (None, "", "auto"):
            device = "cuda" if torch.cuda.is_available() else "cpu"
        where = torch.device(device)
        refuse_untrusted(self.folder)  # again: the checkpoints are pickles, read now
        predictor = nnUNetPredictor(
            tile_step_size=0.5,  # nnUNetv2_predict's defaults
            use_gaussian=True,
            use_mirroring=True,
            perform_everything_on_device=where.type == "cuda",
            device=where,
            verbose=False,
            allow_tqdm=False,
        )
        try:
            predictor.initialize_from_trained_model_folder(self.folder, tuple(self.folds), self.checkpoint)
        except Exception as error:  # a pickle, imports by name: anything can fail; the server's log has the rest
            text = " ".join(str(error).split())[:300]
            hint = ""
            if "torchvision" in text:  # see docs/deep-learning.md: nnU-Net's trainer search imports timm
                hint = "; nnU-Net imports its trainer classes to find the checkpoint's, needing a torchvision built for this torch"
            raise RuntimeError(
                f"nnU-Net could not load the model in {self.folder} ({type(error).__name__}: {text}){hint}"
            ) from error
        if predictor.configuration_manager.previous_stage_name is not None:
            raise ValueError(
                f"{self.folder} is a cascade stage: it needs the low-resolution stage's segmentation as input; "
                "serve a 3d_fullres, 3d_lowres or 2d folder"
            )
        self.predictor = predictor

    def _loaded(self):
        if self.predictor is None:
            self.setup("auto")  # called directly (a notebook, a test) without a server
        return self.predictor

    def preprocess(self, data: dict) -> dict:
        """nnU-Net's SimpleITKIO reading, from images instead of files, then its preprocessor."""
        import torch

        predictor = self._loaded()
        images = [data[field] for field in self.fields]
        first = images[0]
        for field, image in zip(self.fields, images, strict=True):
            if image.GetNumberOfComponentsPerPixel() != 1 or image.GetDimension() != 3:
                raise RequestError(f"field '{field}' is not a 3D scalar volume; expected one channel per field")
            if image.GetSize() != first.GetSize() or not np.allclose(image.GetSpacing(), first.GetSpacing()):
                raise RequestError(
                    f"field '{field}' has size {image.GetSize()} and spacing {image.GetSpacing()}, field "
                    f"'{self.fields[0]}' {first.GetSize()} and {first.GetSpacing()}; expected all channels on one grid"
                )
        array = np.vstack([sitk.GetArrayFromImage(image)[None] for image in images], dtype=np.float32, casting="unsafe")
        properties = {
            "sitk_stuff": {
                "spacing": first.GetSpacing(),
                "origin": first.GetOrigin(),
                "direction": first.GetDirection(),
            },
            "spacing": list(np.abs(list(first.GetSpacing())[::-1])),
        }
        preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)
        array, _, properties = preprocessor.run_case_npy(
            array, None, properties, predictor.plans_manager, predictor.configuration_manager, predictor.dataset_json
        )
        data["nnunet_input"] = torch.from_numpy(array).to(dtype=torch.float32, memory_format=torch.contiguous_format)
        data["nnunet_properties"] = properties
        return data

    def inference(self, data: dict) -> dict:
        predictor = self._loaded()
        data["nnunet_logits"] = predictor.predict_logits_from_preprocessed_data(data.pop("nnunet_input")).cpu().numpy()
        return data

    def postprocess(self, data: dict) -> dict:
        """nnU-Net's resampling of the logits back to the input's grid, and its writer's label type and geometry."""
        from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

        predictor = self._loaded()
        properties = data.pop("nnunet_properties")
        labels = convert_predicted_logits_to_segmentation_with_correct_shape(
            data.pop("nnunet_logits"),
            predictor.plans_manager,
            predictor.configuration_manager,
            predictor.label_manager,
            properties,
            return_probabilities=False,
        )
        image = sitk.GetImageFromArray(labels.astype(np.uint8 if np.max(labels) < 255 else np.uint16, copy=False))
        geometry = properties["sitk_stuff"]
        image.SetSpacing(geometry["spacing"])
        image.SetOrigin(geometry["origin"])
        image.SetDirection(geometry["direction"])
        data[OUTPUT] = image
        return data


def nnunet_app(folder, folds: str | None = None, checkpoint: str | None = None) -> NNUNetApp:
    """The app serving a trained nnU-Net v2 results folder; the weights load when the server calls setup()."""
    PlansManager = _nnunetv2()
    folder = os.path.abspath(os.fspath(folder))
    if not os.path.isdir(folder):
        raise ValueError(f"{folder} is not a folder; expected an nnU-Net results folder")
    refuse_untrusted(folder)
    dataset, plans = _read_json(folder, "dataset.json"), _read_json(folder, "plans.json")
    checkpoint = _checkpoint_name(checkpoint)
    chosen = _folds(folder, folds, checkpoint)
    try:
        plans_manager = PlansManager(plans)
        reader = plans_manager.image_reader_writer_class
        label_manager = plans_manager.get_label_manager(dataset)
    except (KeyError, TypeError, ValueError, AssertionError, RuntimeError) as error:
        raise ValueError(f"{folder}: plans.json or dataset.json is not nnU-Net v2's ({type(error).__name__}: "
                         f"{error})") from None  # fmt: skip
    if reader.__name__ != "SimpleITKIO":
        raise ValueError(
            f"{folder} was planned with nnU-Net's {reader.__name__} image reader; served volumes are read as its "
            "SimpleITKIO reads them (NIfTI, NRRD, MHA), so only SimpleITKIO models are served"
        )
    return NNUNetApp(folder, chosen, checkpoint, dataset, plans, label_manager)
