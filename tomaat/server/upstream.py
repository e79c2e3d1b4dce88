"""Upstream TOMAAT's data contract, for apps written for it: one-item lists, paths to files, text as sent.

Upstream's `parse_request` gave a volume or a transform as `[path]` to a
temporary file, a slider as `[float]`, a checkbox or radio button as `[str]`
as the client sent it, and fiducials as `[array (N, 3)]`; `make_response` read
every output as `data[field][0]`. These functions map our decoded inputs onto
that and back, so the app's code runs unchanged.

The files are ones we write from the decoded, checked image or transform,
never the client's bytes: whatever the app reads them with (usually
`sitk.ReadImage`, which guesses the format) sees only a file of ours. They live
in the request's scratch folder, which the prediction removes after the answer.
"""

from __future__ import annotations

import os

import SimpleITK as sitk

from ..protocol.transforms import displacement_field
from ..protocol.volumes import write_image


def _volume_file(image, raw, stem: str) -> str:
    path = stem + ".mha"
    with open(path, "wb") as handle:
        handle.write(write_image(image, "mha", compress=False))
    return path


def _transform_file(transform: sitk.Transform, raw, stem: str) -> str:
    """A displacement field as an image, as upstream's clients sent it; any other transform as ITK HDF5."""
    if isinstance(transform, sitk.DisplacementFieldTransform):
        path = stem + ".nii.gz"
        sitk.WriteImage(displacement_field(transform), path, True)
    else:
        path = stem + ".h5"
        sitk.WriteTransform(transform, path)
    return path


def _as_sent(value, raw, stem: str) -> str:
    return bytes(raw).decode("utf-8")


# What upstream put in the one-item list, by input type: (value, raw field, file stem) -> item.
SHAPES = {
    "volume": _volume_file,
    "transform": _transform_file,
    "slider": lambda value, raw, stem: float(value),
    "checkbox": _as_sent,
    "radiobutton": _as_sent,
    "fiducials": lambda value, raw, stem: value,
}
FILES = ("volume", "transform")


def needs_files(inputs) -> bool:
    return any(element.wire_type in FILES for element in inputs)


def to_app(inputs, data: dict, fields: dict, folder: str | None) -> dict:
    """The data dict upstream handed its apps, from our decoded inputs and the raw fields (for text as sent)."""
    result = {}
    for index, element in enumerate(inputs):
        name = element.destination
        stem = os.path.join(folder or "", f"input{index}")
        result[name] = [SHAPES[element.wire_type](data[name], fields[name], stem)]
    return result


def output_value(element, value):
    """The value upstream's make_response encoded: `data[field][0]`."""
    if not isinstance(value, (list, tuple)) or not value:
        raise TypeError(
            f"an upstream-style app leaves each output as a one-item list, data[{element.field!r}] = [value], "
            f"got {type(value).__name__}"
        )
    return value[0]
