"""Transforms on the wire: `kind\\n<base64 file>` in requests, base64 files in answers.

A displacement field (`nii.gz`) becomes a SimpleITK DisplacementFieldTransform
so that an app receives a usable transform whatever kind the client chose; it
is an image, so it is checked, charged and decoded as volumes are. Transform
files are read by ITK in a confined decoder (files/confined.py), after our own
checks: the HDF5 walk (files/hdf5.py) and the MATLAB matrix sizes, so that a few
bytes declaring 2^30 rows are refused before any reader allocates them.
"""

from __future__ import annotations

import struct

import SimpleITK as sitk

from ..errors import RequestError, TooLarge
from ..files import confined, hdf5
from ..files.limits import Allowance
from ..files.scratch import write_then_bytes
from .volumes import decode_base64, read_image

KINDS = {
    "nii.gz": "a displacement field image",
    "h5": "an ITK B-spline transform file",
    "mat": "an ITK linear transform file",
}
EXPECTED = "'KIND\\n<base64 file>' with KIND one of nii.gz, h5, mat"
_MATLAB_BYTES = {0: 8, 1: 4, 2: 4, 3: 2, 4: 2, 5: 1}  # MATLAB v4 precision digit P of type MOPT


def matlab_parameters(data: bytes, where: str, limit: int) -> int:
    """The numbers a MATLAB v4 file (ITK's .mat transforms) declares, refused past `limit` or past its end."""
    at, total = 0, 0
    while at < len(data):
        if len(data) - at < 20:
            raise RequestError(f"{where}: the mat data is truncated; expected {KINDS['mat']}")
        for order in "<>":
            kind, rows, columns, imaginary, name = struct.unpack(order + "5i", data[at : at + 20])
            if 0 <= kind < 10000 and (kind // 1000 == (order == ">")):
                break
        else:
            raise RequestError(f"{where}: the mat data is not {KINDS['mat']}")
        precision = _MATLAB_BYTES.get(kind // 10 % 10)
        if precision is None or min(rows, columns, name) < 0 or imaginary not in (0, 1):
            raise RequestError(f"{where}: the mat data is not {KINDS['mat']}")
        total += rows * columns
        if total > limit:
            raise TooLarge(f"{where}: the transform declares more than the {limit} parameters this server accepts")
        at += 20 + name + rows * columns * precision * (1 + imaginary)
        if at > len(data):
            raise RequestError(f"{where}: the mat data is shorter than its matrices; expected {KINDS['mat']}")
    return total


def parse(text: bytes, where: str = "transform", allowance: Allowance | None = None) -> sitk.Transform:
    allowance = allowance or Allowance()
    head, sep, payload = bytes(text).partition(b"\n")
    kind = head.strip().decode("ascii", "replace")
    if not sep or kind not in KINDS:
        raise RequestError(f"{where}: unknown transform kind {kind[:20]!r}; expected {EXPECTED}")
    if kind == "nii.gz":
        field = read_image(payload, where, allowance)
        if field.GetNumberOfComponentsPerPixel() != field.GetDimension():
            raise RequestError(
                f"{where}: a displacement field needs {field.GetDimension()} components per voxel, "
                f"got {field.GetNumberOfComponentsPerPixel()}"
            )
        return sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    data = decode_base64(payload, where)
    limit = allowance.limits.max_transform_parameters
    if hdf5.superblock_offset(data) is None:
        if kind == "h5":
            raise RequestError(f"{where}: the h5 data is not {KINDS[kind]}")
        matlab_parameters(data, where, limit)
    hdf5.check(data, where, kind, KINDS[kind])  # either kind: ITK reads HDF5 bytes whatever the name
    try:
        transform = confined.read_transform(data, "." + kind, limit, allowance.decoders)
    except confined.DecodeFailed as failure:
        if failure.reason == "too many parameters":
            raise TooLarge(f"{where}: the transform has more than the {limit} parameters this server accepts") from None
        raise RequestError(f"{where}: the {kind} data is not {KINDS[kind]}") from None
    allowance.charge(8 * transform.GetNumberOfParameters(), where)
    return transform


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
