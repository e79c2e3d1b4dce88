"""Transforms on the wire: `kind\\n<base64 file>` in requests, base64 files in answers.

A displacement field (`nii.gz`) becomes a SimpleITK DisplacementFieldTransform
so that an app receives a usable transform whatever kind the client chose.
"""

from __future__ import annotations

import SimpleITK as sitk

from . import hdf5
from .errors import RequestError
from .scratch import write_then_bytes, write_then_read
from .volumes import decode_base64, read_image

KINDS = {
    "nii.gz": "a displacement field image",
    "h5": "an ITK B-spline transform file",
    "mat": "an ITK linear transform file",
}
EXPECTED = "'KIND\\n<base64 file>' with KIND one of nii.gz, h5, mat"


def parse(text: bytes, where: str = "transform") -> sitk.Transform:
    kind, sep, payload = bytes(text).partition(b"\n")
    kind = kind.strip().decode("ascii", "replace")
    if not sep or kind not in KINDS:
        raise RequestError(f"{where}: unknown transform kind {kind[:20]!r}; expected {EXPECTED}")
    if kind == "nii.gz":
        field = read_image(payload, where)
        if field.GetNumberOfComponentsPerPixel() != field.GetDimension():
            raise RequestError(
                f"{where}: a displacement field needs {field.GetDimension()} components per voxel, "
                f"got {field.GetNumberOfComponentsPerPixel()}"
            )
        return sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    data = decode_base64(payload, where)
    hdf5.check(data, where, kind, KINDS[kind])  # either kind: ITK reads HDF5 bytes whatever the name
    try:
        return write_then_read("." + kind, data, sitk.ReadTransform)
    except RuntimeError:
        raise RequestError(f"{where}: the {kind} data is not {KINDS[kind]}") from None


def displacement_field(value) -> sitk.Image:
    if isinstance(value, sitk.DisplacementFieldTransform):
        return value.GetDisplacementField()
    if isinstance(value, sitk.Image) and value.GetNumberOfComponentsPerPixel() == value.GetDimension():
        return value
    raise TypeError("a TransformGrid needs a DisplacementFieldTransform or a vector image with one component per axis")


def transform_file(value, kind: str) -> bytes:
    if not isinstance(value, sitk.Transform):
        raise TypeError(f"a {kind} transform output needs a SimpleITK transform, got {type(value).__name__}")
    return write_then_bytes("." + kind, lambda path: sitk.WriteTransform(value, path))
