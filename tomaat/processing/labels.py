"""From network output to a clean label map: threshold or argmax, then morphology that fixes typical errors."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from .pipeline import Step


def _as_array(value) -> tuple[np.ndarray, sitk.Image | None]:
    if isinstance(value, sitk.Image):
        return sitk.GetArrayFromImage(value), value
    return np.asarray(value), None


def _back(array: np.ndarray, like: sitk.Image | None):
    if like is None:
        return array
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(like)
    return image


class Threshold(Step):
    """Probability (or intensity) at or above `threshold` becomes `label`; images stay images, arrays arrays."""

    def __init__(self, threshold: float = 0.5, label: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.threshold, self.label = threshold, label

    def apply(self, value):
        array, like = _as_array(value)
        return _back(np.where(array >= self.threshold, self.label, 0).astype(np.uint8), like)


class Argmax(Step):
    """Class index of the largest channel: the last axis of a vector image, `axis` of an array."""

    def __init__(self, axis: int = -1, **kwargs):
        super().__init__(**kwargs)
        self.axis = axis

    def apply(self, value):
        array, like = _as_array(value)
        axis = -1 if like is not None else self.axis
        return _back(np.argmax(array, axis=axis).astype(np.uint8), like)


def _labels_in(image: sitk.Image, labels) -> list[int]:
    if labels is not None:
        return list(labels)
    return [int(v) for v in np.unique(sitk.GetArrayViewFromImage(image)) if v != 0]


class LargestComponent(Step):
    """Keep each label's largest connected component: a segmented organ is one piece, speckle is noise."""

    def __init__(self, labels=None, fully_connected: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.labels, self.fully_connected = labels, fully_connected

    def apply(self, image):
        out = sitk.Image(image.GetSize(), image.GetPixelID())
        out.CopyInformation(image)
        for label in _labels_in(image, self.labels):
            components = sitk.ConnectedComponent(image == label, self.fully_connected)
            largest = sitk.RelabelComponent(components, sortByObjectSize=True) == 1
            out = out + sitk.Cast(largest, image.GetPixelID()) * label
        return out


class FillHoles(Step):
    """Fill each label's enclosed holes: organs are solid, a hole is a missed voxel."""

    def __init__(self, labels=None, fully_connected: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.labels, self.fully_connected = labels, fully_connected

    def apply(self, image):
        out = image
        for label in _labels_in(image, self.labels):
            filled = sitk.BinaryFillhole(image == label, self.fully_connected, 1)
            out = sitk.Mask(out, filled == 0, outsideValue=label)
        return out
