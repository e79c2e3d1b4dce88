"""Crossing between SimpleITK images (with geometry) and framework tensors (without).

Geometry does not travel with an array, so `FromNumpy` always takes it from a
reference image in the dict: the grid the array was made on.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from .pipeline import Step, read


class ToNumpy(Step):
    """Image (z, y, x[, c]) to an array with a channel axis first or last (or none) and optionally a batch axis."""

    def __init__(self, key="images", out="array", channels: str | None = "last", batch: bool = True, dtype=np.float32):
        super().__init__(key, out)
        if channels not in ("first", "last", None):
            raise ValueError("channels must be 'first', 'last' or None")
        self.channels, self.batch, self.dtype = channels, batch, dtype

    def apply(self, image):
        array = sitk.GetArrayFromImage(image).astype(self.dtype)
        vector = image.GetNumberOfComponentsPerPixel() > 1
        if self.channels == "last" and not vector:
            array = array[..., None]
        elif self.channels == "first":
            array = np.moveaxis(array, -1, 0) if vector else array[None]
        return array[None] if self.batch else array


class FromNumpy(Step):
    """Array back to an image on the grid of `reference`; several channels become a vector image."""

    def __init__(
        self, key="prediction", out=None, reference="images", channels: str | None = "last", batch: bool = True
    ):
        super().__init__(key, out)
        self.reference, self.channels, self.batch = reference, channels, batch

    def __call__(self, data):
        data[self.out] = to_image(
            read(data, self.key, self), read(data, self.reference, self), self.channels, self.batch
        )
        return data


def to_image(array, reference: sitk.Image, channels: str | None = "last", batch: bool = True) -> sitk.Image:
    array = np.asarray(array)
    if batch:
        if array.shape[0] != 1:
            raise ValueError(f"expected a batch of one, got {array.shape[0]}")
        array = array[0]
    if channels == "first":
        array = np.moveaxis(array, 0, -1)
    if channels is not None and array.shape[-1] == 1:
        array = array[..., 0]
    vector = channels is not None and array.ndim == reference.GetDimension() + 1
    if array.dtype == np.float16:
        array = array.astype(np.float32)
    image = sitk.GetImageFromArray(array, isVector=vector)
    if image.GetSize() != reference.GetSize():
        raise ValueError(f"array of image size {image.GetSize()} does not fit the reference {reference.GetSize()}")
    image.CopyInformation(reference)
    return image
