"""Output items: from the values an app leaves in `data` to the v1 JSON list, and back.

The encoders raise TypeError for a value of the wrong kind: that is the app's
fault, and the server turns it into a 500 that names the field.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..files.limits import Allowance
from . import b64, fiducials, transforms
from .volumes import read_image, write_image


def _b64(data: bytes) -> str:
    return b64.encode(data)


def label_image(value, reference: sitk.Image | None) -> sitk.Image:
    """An image for a LabelVolume; a NumPy array takes the input's grid when its shape matches."""
    if isinstance(value, sitk.Image):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype == bool:
            value = value.astype(np.uint8)
        image = sitk.GetImageFromArray(value)
        if reference is not None:
            if image.GetSize() != reference.GetSize():
                raise TypeError(
                    f"a LabelVolume array of shape {value.shape} does not match the input volume "
                    f"(shape {tuple(reversed(reference.GetSize()))}); return a SimpleITK image with its own geometry"
                )
            image.CopyInformation(reference)
        return image
    raise TypeError(f"a LabelVolume needs a SimpleITK image or a NumPy array, got {type(value).__name__}")


def _is_polydata(value) -> bool:
    is_a = getattr(value, "IsA", None)
    return callable(is_a) and bool(is_a("vtkPolyData"))


def polydata_text(polydata) -> bytes:
    """A VTK vtkPolyData as legacy ASCII, version 4.2: what upstream's apps returned, in a format every Slicer reads.

    VTK is imported only here, when an app hands over a VTK object, so it stays an optional extra.
    """
    from vtkmodules.vtkIOLegacy import vtkPolyDataWriter

    writer = vtkPolyDataWriter()
    writer.SetInputData(polydata)
    writer.SetFileTypeToASCII()
    writer.SetFileVersion(writer.VTK_LEGACY_READER_VERSION_4_2)
    writer.WriteToOutputStringOn()
    if not writer.Write():
        raise ValueError("VTK could not write the vtkPolyData")
    return writer.GetOutputStdString().encode("utf-8")


def _mesh(value) -> str:
    if _is_polydata(value):
        value = polydata_text(value)
    if isinstance(value, str):
        value = value.encode("utf-8")
    if not isinstance(value, (bytes, bytearray)):
        raise TypeError(f"a VTKMesh needs a vtkPolyData, or legacy VTK text or bytes, got {type(value).__name__}")
    if not bytes(value[:64]).lstrip().startswith(b"# vtk DataFile"):
        raise TypeError("a VTKMesh needs a legacy VTK file (starting with '# vtk DataFile Version')")
    return _b64(bytes(value))


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def encode_item(element, value, reference: sitk.Image | None = None) -> dict:
    kind = element.output_type
    if kind == "LabelVolume":
        content = _b64(write_image(label_image(value, reference), "mha"))
    elif kind == "VTKMesh":
        content = _mesh(value)
    elif kind == "PlainText":
        content = _text(value)
    elif kind == "Fiducials":
        try:
            content = fiducials.format_points(value)
        except ValueError as error:
            raise TypeError(str(error)) from None
    elif kind == "TransformGrid":
        content = _b64(write_image(transforms.displacement_field(value), "nii.gz"))
    elif kind == "TransformBSpline":
        content = _b64(transforms.transform_file(value, "h5"))
    elif kind == "TransformLinear":
        content = _b64(transforms.transform_file(value, "mat"))
    else:  # output_interface() refuses unknown types at start
        raise TypeError(f"unknown output type {kind}")
    return {"type": kind, "content": content, "label": element.label}


def decode_item(item: dict, allowance: Allowance | None = None):
    """The Python value of one answer item, the inverse of encode_item (used by clients and tests)."""
    allowance = allowance or Allowance()
    kind, content = item.get("type"), item.get("content")
    if kind == "LabelVolume" or kind == "TransformGrid":
        return read_image(content.encode("ascii", "replace"), kind, allowance)
    if kind == "VTKMesh":
        return b64.decode(content)
    if kind == "Fiducials":
        return fiducials.parse(content, kind, allowance.limits.max_points)
    if kind in ("TransformBSpline", "TransformLinear"):
        suffix = "h5" if kind == "TransformBSpline" else "mat"
        return transforms.parse(f"{suffix}\n{content}".encode("ascii", "replace"), kind, allowance)
    return content
