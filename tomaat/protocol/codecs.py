"""How each element type's values travel: one codec per type, kept apart from the declarations (elements.py).

An input's codec reads its form field into the value an app finds in `data[destination]` (`read`), writes a
client's value as a form field (`write`), and checks what a user gave (`value`). An output's codec writes an app's
value as the item's raw content (`write`: a file's bytes, or the text itself for PlainText and Fiducials; the
server's renderer and binary answers write it for the wire) and reads a JSON item's content back (`read`).

Declaring an interface (`import tomaat`) loads the declarations only; this module loads the image, transform,
mesh and points code, and is imported by what reads and writes values: the server and the client.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from . import b64, fiducials, transforms
from .elements import AmbiguousGrid, text_of
from .volumes import read_image, write_image

# ---- inputs --------------------------------------------------------------------------------------


class InputCodec:
    """A text field: read and checked by the element's own rule, written as its text."""

    def value(self, element, given, where: str):
        """The checked value of what a client or a user gave: one rule for both sides."""
        return element.value(given, where)

    def read(self, element, raw, where: str, allowance=None):
        """The value an app finds in `data[destination]`, from the bytes of the form field."""
        return self.value(element, text_of(raw, where), where)

    def write(self, element, value, protocol: int) -> tuple[str | None, bytes]:
        """(file name or None for a text field, bytes) of the form field for a checked value."""
        return None, str(value).encode("utf-8")


class VolumeInput(InputCodec):
    def read(self, element, raw, where: str, allowance=None):
        return read_image(raw, where, allowance)

    def write(self, element, value, protocol: int) -> tuple[str | None, bytes]:
        """value: anything with native() and mha() (the client's VolumeFile). v2 servers take the file's own
        bytes as a binary part; v1 servers only read base64 MHA text, as TOMAAT-Slicer sends."""
        if protocol >= 2:
            data, fmt = value.native()
            return f"{element.destination}.{fmt}", data
        return None, b64.encode_lines(value.mha())


class SliderInput(InputCodec):
    def write(self, element, value, protocol: int) -> tuple[str | None, bytes]:
        return None, repr(float(value)).encode("ascii")


class CheckboxInput(InputCodec):
    def write(self, element, value, protocol: int) -> tuple[str | None, bytes]:
        return None, b"True" if value else b"False"  # as TOMAAT-Slicer sends str(bool)


class TransformInput(InputCodec):
    def read(self, element, raw, where: str, allowance=None):
        return transforms.parse(raw, where, allowance)


class FiducialsInput(InputCodec):
    def value(self, element, given, where: str):
        return fiducials.parse(given, where)

    def read(self, element, raw, where: str, allowance=None):
        limit = allowance.limits.max_points if allowance is not None else fiducials.MAX_POINTS
        return fiducials.parse(text_of(raw, where), where, limit)

    def write(self, element, value, protocol: int) -> tuple[str | None, bytes]:
        return None, FIDUCIALS.write(element, value).encode("ascii")


INPUTS: dict[str, InputCodec] = {
    "volume": VolumeInput(),
    "slider": SliderInput(),
    "checkbox": CheckboxInput(),
    "radiobutton": InputCodec(),
    "fiducials": FiducialsInput(),
    "transform": TransformInput(),
}


def input_codec(element) -> InputCodec:
    return INPUTS[element.wire_type]


# ---- outputs -------------------------------------------------------------------------------------


def label_image(value, reference):
    """An image for a LabelVolume; a NumPy array takes the input's grid when its shape matches."""
    if isinstance(value, sitk.Image):
        return value
    if isinstance(value, np.ndarray):
        if isinstance(reference, AmbiguousGrid):
            raise TypeError(reference.problem())
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


class OutputCodec:
    """Text as it is (PlainText): what an app leaves, as text; read back as the text."""

    def write(self, element, value, reference=None) -> bytes | str:
        """The item's raw content for the app's value; TypeError for a value of the wrong kind (the app's fault)."""
        if isinstance(value, bytes):
            return value.decode("utf-8", "replace")
        return str(value)

    def read(self, output_type: str, content: str, allowance=None):
        """The Python value of a JSON item's content (base64 text for files): for clients and tests."""
        return content


class LabelVolumeOutput(OutputCodec):
    def write(self, element, value, reference=None) -> bytes:
        return write_image(label_image(value, reference), "mha")

    def read(self, output_type: str, content: str, allowance=None):
        return read_image(content.encode("ascii", "replace"), output_type, allowance)


class VTKMeshOutput(OutputCodec):
    def write(self, element, value, reference=None) -> bytes:
        if _is_polydata(value):
            value = polydata_text(value)
        if isinstance(value, str):
            value = value.encode("utf-8")
        if not isinstance(value, (bytes, bytearray)):
            raise TypeError(f"a VTKMesh needs a vtkPolyData, or legacy VTK text or bytes, got {type(value).__name__}")
        if not bytes(value[:64]).lstrip().startswith(b"# vtk DataFile"):
            raise TypeError("a VTKMesh needs a legacy VTK file (starting with '# vtk DataFile Version')")
        return bytes(value)

    def read(self, output_type: str, content: str, allowance=None):
        return b64.decode(content)


class TransformGridOutput(OutputCodec):
    def write(self, element, value, reference=None) -> bytes:
        return write_image(transforms.displacement_field(value), "nii.gz")

    def read(self, output_type: str, content: str, allowance=None):
        return read_image(content.encode("ascii", "replace"), output_type, allowance)


class TransformFileOutput(OutputCodec):
    """A transform sent as an ITK transform file of its kind (h5, mat)."""

    def __init__(self, suffix: str):
        self.suffix = suffix

    def write(self, element, value, reference=None) -> bytes:
        return transforms.transform_file(value, self.suffix)

    def read(self, output_type: str, content: str, allowance=None):
        return transforms.parse(f"{self.suffix}\n{content}".encode("ascii", "replace"), output_type, allowance)


class FiducialsOutput(OutputCodec):
    def write(self, element, value, reference=None) -> str:
        try:
            return fiducials.format_points(value)
        except ValueError as error:
            raise TypeError(str(error)) from None

    def read(self, output_type: str, content: str, allowance=None):
        limit = allowance.limits.max_points if allowance is not None else fiducials.MAX_POINTS
        return fiducials.parse(content, output_type, limit)


FIDUCIALS = FiducialsOutput()
OUTPUTS: dict[str, OutputCodec] = {
    "LabelVolume": LabelVolumeOutput(),
    "VTKMesh": VTKMeshOutput(),
    "PlainText": OutputCodec(),
    "Fiducials": FIDUCIALS,
    "TransformGrid": TransformGridOutput(),
    "TransformBSpline": TransformFileOutput("h5"),
    "TransformLinear": TransformFileOutput("mat"),
}


def output_codec(element) -> OutputCodec:
    """The codec of an output element; a type declared without one is the app's failure, named (a 500)."""
    codec = OUTPUTS.get(element.output_type)
    if codec is None:
        raise NotImplementedError(f"no codec writes {element.output_type} outputs")
    return codec
