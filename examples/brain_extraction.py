"""A real pretrained network: deepbet's brain extraction of T1-weighted MRI, served through the TorchScript adapter.

`pip install 'tomaat[brain]'`, then `tomaat serve examples/brain_extraction.py --port 9000 --no-tls`.

deepbet (Fisch et al. 2024, MIT licence) ships two trained TorchScript networks inside its
wheel: one finds the head's bounding box on a 128^3 copy of the scan, the other segments the
brain on that box resampled to 256^3. Its `run_bet` works on the scan in nibabel's closest
canonical orientation (RAS), so `Reorient("RAS")` gives the same voxels without
interpolation and `Restore` takes the mask back onto the client's grid. The steps between
the two networks are deepbet's own functions (normalisation, bounding box, largest component,
hole filling), in the order `BrainExtraction.run_model` calls them, so the served mask equals
`run_bet`'s voxel for voxel (tests/test_brain_extraction.py). Runs on the CPU, or on the GPU
the server's device names.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from tomaat import LabelVolume, PlainText, TomaatApp, Volume
from tomaat.frameworks.pytorch import TorchModel
from tomaat.processing import Cast, Compose, Reorient, Restore, ToNumpy

SMALL, SHAPE, MARGIN = (128, 128, 128), (256, 256, 256), 0.1  # deepbet's run_model defaults
THRESHOLD, DILATE = 0.5, 0  # run_bet's defaults


def _deepbet():
    try:
        import deepbet.bet
        import deepbet.utils
    except ImportError:
        raise ImportError("brain extraction needs deepbet: pip install 'tomaat[brain]'") from None
    return deepbet


def brain_mask(x: np.ndarray, bbox_model: TorchModel, model: TorchModel, threshold=THRESHOLD, n_dilate=DILATE):
    """deepbet's run_model and postprocess on a canonical (RAS, x-y-z) float32 array, the networks run by TorchModel."""
    import torch
    import torch.nn.functional as F

    deepbet = _deepbet()
    utils = deepbet.utils
    bet = deepbet.bet.BrainExtraction.__new__(deepbet.bet.BrainExtraction)  # its methods, not its loading
    device = model.device
    x = torch.nan_to_num(torch.from_numpy(x).to(device))
    mask = torch.zeros_like(x)
    x_small = F.interpolate(x[None, None], SMALL, mode="nearest-exact")[0, 0]
    low, high = x_small.quantile(0.005), x_small.quantile(0.995)
    small = bbox_model.predict(utils.normalize(x_small, low, high)[None, None].cpu().numpy())[0, 1]
    small = utils.keep_largest_connected_component((small > 0.5).astype(np.float32))
    bbox = bet.get_bbox_with_margin(torch.from_numpy(small).to(device), mask.shape, MARGIN)
    x = F.interpolate(x[bbox][None, None], SHAPE, mode="nearest-exact")[0, 0]
    brain = model.predict(utils.normalize(x, low, high)[None, None].cpu().numpy())[0, 1]
    brain = torch.from_numpy(brain).to(device)
    mask[bbox] = F.interpolate(brain[None, None], mask[bbox].shape, mode="nearest-exact")[0, 0]
    bet.bbox = bbox
    return bet.postprocess(mask.cpu().numpy() > threshold, n_dilate)


class BrainExtractionApp(TomaatApp):
    name = "Brain extraction (deepbet)"
    modality = "MRI T1"
    anatomy = "brain"
    task = "segmentation"
    description = "deepbet's two TorchScript networks: bounding box, then brain mask; on the input's grid."
    version = "deepbet 1.0.2"
    licence = "MIT (deepbet and its weights)"
    citation = "Fisch L et al. deepbet: Fast brain extraction of T1-weighted MRI using CNNs. Comput Biol Med 2024."
    intended_use = "Brain masks of T1-weighted head MRI for research."
    disclaimer = "Research use only: not for clinical judgement."
    input_interface = [Volume("images")]
    output_interface = [LabelVolume("labels", "Brain mask", segments={1: "brain"}), PlainText("volume")]
    preprocess = Compose(Cast(sitk.sitkFloat32), Reorient("RAS"), ToNumpy(channels=None, batch=False))

    def __init__(self):
        super().__init__()
        models = _deepbet().utils.DATA_PATH + "/models"
        self.bbox_model = TorchModel(models + "/bbox_model.pt")  # read at setup, onto the server's device
        self.model = TorchModel(models + "/model.pt")

    def setup(self, device: str) -> None:
        self.bbox_model.setup(device)
        self.model.setup(device)

    def inference(self, data):
        x = np.ascontiguousarray(data["array"].transpose(2, 1, 0))  # SimpleITK's z-y-x to nibabel's x-y-z
        data["mask"] = brain_mask(x, self.bbox_model, self.model)
        return data

    def postprocess(self, data):
        mask = sitk.GetImageFromArray(data.pop("mask").transpose(2, 1, 0).astype(np.uint8))
        mask.CopyInformation(data["images"])  # the RAS grid the array came from
        data["mask"] = mask
        data = Restore("mask", "labels")(data)
        voxels = int(sitk.GetArrayViewFromImage(data["labels"]).sum())
        millilitres = voxels * float(np.prod(data["labels"].GetSpacing())) / 1000.0
        data["volume"] = f"brain: {millilitres:.1f} ml ({voxels} voxels)"
        return data


def synthetic_head(path, size=(96, 112, 84), spacing=(2.0, 1.7, 2.3), origin=(96.5, -101.0, -88.0)):
    """A T1-like head to try the app without data (tests, `--quick` benchmark): written to `path` as NIfTI.

    Upright in the world on an oblique grid whose axes are permuted and flipped (as a sagittal
    acquisition): returns the image and its brain (grey matter and inside) as a z-y-x boolean array.
    """
    rotation = np.asarray(sitk.VersorTransform((0.2, 0.3, 1.0), 0.25).GetMatrix()).reshape(3, 3)
    axes = np.array([[0, 0, 1], [1, 0, 0], [0, -1, 0]], dtype=float)  # voxel axes along z, x and -y
    image = sitk.Image(list(size), sitk.sitkInt16)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(tuple((axes @ rotation).ravel()))
    k, j, i = np.mgrid[: size[2], : size[1], : size[0]]
    steps = np.stack([i, j, k], -1).reshape(-1, 3) * np.asarray(spacing)
    points = steps @ np.asarray(image.GetDirection()).reshape(3, 3).T + np.asarray(origin)
    points = (points - points.mean(0)).reshape(size[2], size[1], size[0], 3)

    def inside(radii, centre=(0, 0, 0)):
        return (((points - np.asarray(centre)) / np.asarray(radii)) ** 2).sum(-1) <= 1

    t1 = np.zeros(points.shape[:3], np.float32)
    brain = inside((64, 83, 72), (0, 0, 4))
    for radii, centre, value in (
        ((78, 98, 88), (0, 0, 0), 160),  # scalp
        ((72, 92, 82), (0, 0, 0), 25),  # skull
        ((67, 86, 76), (0, 0, 0), 45),  # CSF
        ((64, 83, 72), (0, 0, 4), 85),  # grey matter
        ((52, 70, 58), (0, 0, 6), 125),  # white matter
        ((8, 20, 12), (6, 0, 10), 40),  # ventricles
        ((8, 20, 12), (-6, 0, 10), 40),
    ):
        t1[inside(radii, centre)] = value
    t1 += np.random.default_rng(4).normal(scale=4, size=t1.shape)
    head = sitk.GetImageFromArray(np.clip(t1, 0, None).astype(np.int16))
    head.CopyInformation(image)
    sitk.WriteImage(head, str(path))  # uncompressed: deepbet skips files under 100 KB as broken
    return head, brain


app = BrainExtractionApp()
