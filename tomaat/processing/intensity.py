"""Intensity steps: a model only works on the intensity statistics it was trained on."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from .pipeline import Step


class Cast(Step):
    """Change the pixel type (e.g. float32 before arithmetic, uint8 before sending labels)."""

    def __init__(self, pixel_type=sitk.sitkFloat32, **kwargs):
        super().__init__(**kwargs)
        self.pixel_type = pixel_type

    def apply(self, image):
        return sitk.Cast(image, self.pixel_type)


def _rebuilt(array: np.ndarray, like: sitk.Image) -> sitk.Image:
    out = sitk.GetImageFromArray(array.astype(np.float32), isVector=like.GetNumberOfComponentsPerPixel() > 1)
    out.CopyInformation(like)
    return out


class ZScore(Step):
    """Zero mean, unit variance; `nonzero=True` ignores background (zero) voxels, as for skull-stripped MRI."""

    def __init__(self, nonzero: bool = False, eps: float = 1e-8, **kwargs):
        super().__init__(**kwargs)
        self.nonzero = nonzero
        self.eps = eps

    def apply(self, image):
        array = sitk.GetArrayFromImage(image).astype(np.float32)
        values = array[array != 0] if self.nonzero else array
        if values.size == 0:
            return _rebuilt(array, image)
        return _rebuilt((array - values.mean()) / (values.std() + self.eps), image)


class ClipPercentiles(Step):
    """Clip to percentiles: robust to the few extreme voxels (metal, air) that would dominate a rescale."""

    def __init__(self, lower: float = 0.5, upper: float = 99.5, **kwargs):
        super().__init__(**kwargs)
        self.lower, self.upper = lower, upper

    def apply(self, image):
        array = sitk.GetArrayFromImage(image).astype(np.float32)
        lo, hi = np.percentile(array, [self.lower, self.upper])
        return _rebuilt(np.clip(array, lo, hi), image)


class Rescale(Step):
    """Linearly map [min, max] of the image (or a fixed `source` window, e.g. CT HU) to `target`."""

    def __init__(self, target=(0.0, 1.0), source=None, clip: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.target, self.source, self.clip = target, source, clip

    def apply(self, image):
        array = sitk.GetArrayFromImage(image).astype(np.float32)
        lo, hi = self.source if self.source is not None else (float(array.min()), float(array.max()))
        scaled = (array - lo) / max(hi - lo, 1e-12)
        if self.clip:
            scaled = np.clip(scaled, 0.0, 1.0)
        a, b = self.target
        return _rebuilt(a + scaled * (b - a), image)
