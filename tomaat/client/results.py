"""A prediction's answer as typed Python values, and how each kind is saved where other tools open it.

Label volumes keep their geometry (NIfTI by default, as most viewers read it);
fiducials go to Slicer's .fcsv and to JSON; transforms stay in the ITK files
the server sent (.h5, .mat) or a displacement-field .nii.gz; meshes as .vtk.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import SimpleITK as sitk

from ..errors import RequestError
from ..files.limits import Allowance, Limits
from ..protocol import b64
from ..protocol.codecs import OUTPUTS
from ..protocol.elements import OUTPUT_TYPES
from ..protocol.volumes import EXPECTED, FORMATS, decode_base64, read_image, sniff_format
from .errors import ServerError

if TYPE_CHECKING:
    from .requests import PreparedRequest


@dataclass
class Output:
    """One answer item: `value` is a SimpleITK image, str, (N, 3) array, SimpleITK transform or mesh bytes."""

    name: str
    type: str
    label: str
    value: Any  # its type follows `type`, as above
    raw: str | None = None  # a transform file as base64 text, as sent in JSON, so it is saved byte for byte


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._")


class Result:
    """The outputs of one prediction, in the order the server declared them."""

    request: PreparedRequest  # what was sent, set by the client call that made this result

    def __init__(self, outputs: list[Output]):
        self.outputs = outputs

    @classmethod
    def from_items(cls, items: list, output_interface=None, limits: Limits | None = None) -> Result:
        """Decode the answer's items; names come from the v2 output interface, else from each item's type.

        An item's `content` is the JSON answer's text (base64 for files) or, from a binary
        answer (from_parts), the raw bytes: both are decoded by decode_content, with the same
        checks. An answer is as untrusted as an upload: it is decoded by the server's own
        hardened readers, confined, and all its items together are charged to one allowance.
        """
        fields = [getattr(e, "field", None) for e in output_interface or ()]
        outputs, used = [], set()
        allowance = Allowance(limits or Limits())
        for index, item in enumerate(items):
            kind = item.get("type")
            if kind not in OUTPUT_TYPES:
                raise ServerError(f"the server answered an item of unknown type {str(kind)[:40]!r}")
            content, label = item.get("content"), item.get("label", "")
            binary = isinstance(content, (bytes, bytearray, memoryview))
            if not (binary or isinstance(content, str)) or not isinstance(label, str):
                raise ServerError(f"the server's {kind} output is malformed: its content and label must be text")
            try:
                data = content if binary else content_bytes(kind, content)
                value = decode_content(kind, data, allowance)
            except RequestError as error:
                raise ServerError(f"the server's {kind} output could not be read: {error.message}") from None
            except (TypeError, ValueError, RuntimeError, UnicodeError) as error:
                raise ServerError(f"the server's {kind} output could not be read ({type(error).__name__})") from None
            fallback = OUTPUT_TYPES[kind].default_name
            field = fields[index] if index < len(fields) and len(items) == len(fields) else None
            name = field or fallback
            base, number = _slug(name) or fallback, 2
            name = base
            while name in used:
                name, number = f"{base}_{number}", number + 1
            used.add(name)
            raw = (b64.encode(data) if binary else content) if kind in _AS_SENT else None
            outputs.append(Output(name, kind, label or "", value, raw))
        return cls(outputs)

    @classmethod
    def from_parts(cls, parts: list, output_interface=None, limits: Limits | None = None) -> Result:
        """Decode a binary answer's parts, (type, label, bytes) as binary_answers.decode gives them."""
        items = [{"type": kind, "label": label, "content": data} for kind, label, data in parts]
        return cls.from_items(items, output_interface, limits)

    def __iter__(self):
        return iter(self.outputs)

    def __len__(self) -> int:
        return len(self.outputs)

    def __getitem__(self, name: str):
        for output in self.outputs:
            if output.name == name:
                return output.value
        raise KeyError(f"no output {name!r}; this result has {', '.join(o.name for o in self.outputs)}")

    def of_type(self, kind: str) -> list[Output]:
        return [o for o in self.outputs if o.type == kind]

    @property
    def texts(self) -> list[Output]:
        return self.of_type("PlainText")

    def save(self, directory: str, volume_format: str = "nii.gz") -> list[tuple[str, str]]:
        """Write every output into directory; returns (path, what) for each file written."""
        if volume_format not in FORMATS:
            raise ValueError(f"unknown volume format {volume_format!r}; expected one of {', '.join(FORMATS)}")
        os.makedirs(directory, exist_ok=True)
        written = []
        for output in self.outputs:
            for path, what in _SAVERS[output.type](output, os.path.join(directory, output.name), volume_format):
                written.append((path, what))
        return written


TEXT_TYPES = ("PlainText", "Fiducials")  # items whose JSON content is text; the others' is a base64 file
IMAGE_TYPES = ("LabelVolume", "TransformGrid")


def content_bytes(kind: str, content: str) -> bytes:
    """The bytes a JSON item's content stands for: its base64 decoded, or its text as UTF-8."""
    if kind in TEXT_TYPES:
        return content.encode("utf-8", "surrogatepass")  # a lone surrogate JSON allows comes back as it was
    return decode_base64(content, kind)


def decode_content(kind: str, data, allowance: Allowance):
    """The value of one output of type kind from its bytes, whichever answer carried them (JSON or binary).

    Images are read by the server's own readers (MHA by our parser, NIfTI and NRRD confined), each
    exactly as long as its header says; transforms by the checked, confined transform reader;
    points with the points limit; all of it charged to the answer's allowance.
    """
    if kind in IMAGE_TYPES:
        if sniff_format(data) is None:
            raise RequestError(f"{kind}: the data is not an image file; expected {EXPECTED}")
        return read_image(bytes(data), kind, allowance)
    if kind == "VTKMesh":
        return bytes(data)
    if kind in TEXT_TYPES:
        text = bytes(data).decode("utf-8", "surrogatepass")
        return text if kind == "PlainText" else OUTPUTS[kind].read(kind, text, allowance)
    return OUTPUTS[kind].read(kind, b64.encode(data), allowance)  # the transform reader takes base64 text


def _geometry(image: sitk.Image) -> str:
    size = "x".join(map(str, image.GetSize()))
    spacing = "x".join(f"{s:g}" for s in image.GetSpacing())
    return f"{size} voxels of {spacing} mm"


def _save_volume(output: Output, base: str, fmt: str):
    path = f"{base}.{fmt}"
    sitk.WriteImage(output.value, path, True)
    yield path, f"label volume, {_geometry(output.value)}"


def _suffix(output: Output) -> str:
    return OUTPUT_TYPES[output.type].suffix


def _save_text(output: Output, base: str, fmt: str):
    path = f"{base}.{_suffix(output)}"
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(output.value if output.value.endswith("\n") else output.value + "\n")
    yield path, "text"


def _save_mesh(output: Output, base: str, fmt: str):
    path = f"{base}.{_suffix(output)}"
    with open(path, "wb") as handle:
        handle.write(output.value)
    yield path, "mesh (legacy VTK)"


def write_fcsv(points: np.ndarray, path: str, label: str = "F") -> None:
    """Slicer's markups CSV in LPS, the coordinate system the wire format uses (Slicer converts on load)."""
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("# Markups fiducial file version = 4.11\n# CoordinateSystem = LPS\n")
        handle.write("# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n")
        for index, (x, y, z) in enumerate(np.asarray(points, dtype=float).reshape(-1, 3), start=1):
            handle.write(f"{index},{x!r},{y!r},{z!r},0,0,0,1,1,1,0,{label}-{index},,\n")


def _save_fiducials(output: Output, base: str, fmt: str):
    points = np.asarray(output.value, dtype=float).reshape(-1, 3)
    write_fcsv(points, f"{base}.fcsv", _slug(output.label) or "F")
    yield f"{base}.fcsv", f"{len(points)} fiducial(s), Slicer markups (LPS)"
    with open(f"{base}.json", "w", encoding="utf-8") as handle:
        json.dump({"coordinateSystem": "LPS", "points": points.tolist()}, handle, indent=2)
    yield f"{base}.json", f"{len(points)} fiducial(s), JSON (LPS)"


def _save_grid(output: Output, base: str, fmt: str):
    path = f"{base}.{_suffix(output)}"
    sitk.WriteImage(output.value, path, True)
    yield path, f"displacement field, {_geometry(output.value)}"


def _save_transform_file(what: str):
    """The ITK file byte for byte as the server sent it."""

    def save(output: Output, base: str, fmt: str):
        path = f"{base}.{_suffix(output)}"
        with open(path, "wb") as handle:
            handle.write(b64.decode(output.raw))
        yield path, what

    return save


_SAVERS = {
    "LabelVolume": _save_volume,
    "PlainText": _save_text,
    "VTKMesh": _save_mesh,
    "Fiducials": _save_fiducials,
    "TransformGrid": _save_grid,
    "TransformBSpline": _save_transform_file("B-spline transform (ITK .h5)"),
    "TransformLinear": _save_transform_file("linear transform (ITK .mat)"),
}
_AS_SENT = ("TransformBSpline", "TransformLinear")
