"""Interface elements, as researchers declare them: each type is one class that holds every rule about the
declaration and what a user may give it.

An element knows its v1 dict (`to_dict` / `to_output_dict`, `from_dict`, `check`), the value a client starts from
(`default`), and what it accepts (`accepts`, `value`). How its values are read and written on the wire is its
codec's (codecs.py, one per type), kept apart so that declaring an interface (`import tomaat`) loads no image
library. `Input` and `Output` say what an element is; Fiducials is both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import RequestError
from .text import CONTROL

# TOMAAT-Slicer saves each result as a file named from the output's label (LabelVolume: label +
# "_result.mha") and finds it again with slicer.util.getNode, which reads *, ? and [ ] as a pattern.
NOT_IN_FILE_LABELS = '/\\:*?[]"<>|'
MAX_FILE_LABEL = 128
CHECKBOX_TRUE = frozenset({"true", "1", "yes", "on"})
CHECKBOX_FALSE = frozenset({"false", "0", "no", "off"})
POINTS = "points as 'x,y,z;x,y,z;...' with three numbers per point"  # what a Fiducials input accepts


class InterfaceError(ValueError):
    """An interface declaration that no client could use; raised at start, never per request."""


def check_file_label(label: str, what: str) -> None:
    """Refuse a label that cannot be part of a file name on Windows, macOS and Linux, or that Slicer's lookup
    treats as a pattern."""
    if not isinstance(label, str):
        raise InterfaceError(f"{what}: label must be a string, got {type(label).__name__}")
    bad = sorted({c for c in label if c in NOT_IN_FILE_LABELS} | set(CONTROL.findall(label)))
    if bad:
        shown = " ".join(repr(c) for c in bad)
        raise InterfaceError(
            f"{what}: label {label!r} has {shown}; clients such as TOMAAT-Slicer make file names from labels, "
            f"so a label may not contain {' '.join(NOT_IN_FILE_LABELS)} or control characters"
        )
    if len(label) > MAX_FILE_LABEL:
        raise InterfaceError(
            f"{what}: label is {len(label)} characters long; at most {MAX_FILE_LABEL}, as it becomes a file name"
        )


def text_of(raw, where: str) -> str:
    """A text form field's value, stripped; a field that is not UTF-8 is refused naming it."""
    if isinstance(raw, str):
        return raw.strip()
    try:
        return bytes(raw).decode("utf-8").strip()
    except UnicodeDecodeError:
        raise RequestError(f"{where}: expected UTF-8 text") from None


def _get(spec: dict[str, Any], key: str) -> Any:
    """A key of a v1 dict, None when absent: check() then names what is missing."""
    return spec.get(key)


# ---- inputs --------------------------------------------------------------------------------------


class Input:
    """What an input element is: something a client fills in and the app finds in `data[destination]`."""

    destination: str
    wire_type: ClassVar[str] = ""
    heavy: ClassVar[bool] = False  # decoded after the cheap fields, so a bad slider is reported first

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.wire_type, "destination": self.destination}

    def check(self) -> None:
        if not isinstance(self.destination, str) or not self.destination:
            raise InterfaceError(f"{self.wire_type} element needs a non-empty 'destination' name")

    def where(self, server: bool = True) -> str:
        """How a message names this element: as a form field on the server, by name on the client."""
        return f"{'field ' if server else ''}'{self.destination}' ({self.wire_type})"

    @property
    def default(self):
        """TOMAAT-Slicer's starting value for the widget, or None where the user must give one."""
        return None

    def accepts(self) -> str:
        return "a file"

    def value(self, given, where: str):
        """The checked value of what a client or a user gave: one rule for both sides."""
        return given


@dataclass(frozen=True)
class InputElement(Input):
    destination: str

    @classmethod
    def from_dict(cls, spec: dict[str, Any]):
        return cls(_get(spec, "destination"))


@dataclass(frozen=True)
class Volume(InputElement):
    wire_type: ClassVar[str] = "volume"
    heavy: ClassVar[bool] = True

    def accepts(self) -> str:
        return "an MHA, NIfTI or NRRD image"


@dataclass(frozen=True)
class Slider(InputElement):
    minimum: float = 0.0
    maximum: float = 1.0
    wire_type: ClassVar[str] = "slider"

    @classmethod
    def from_dict(cls, spec: dict[str, Any]):
        return cls(_get(spec, "destination"), _get(spec, "minimum"), _get(spec, "maximum"))

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "minimum": self.minimum, "maximum": self.maximum}

    def check(self) -> None:
        super().check()
        for key in ("minimum", "maximum"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InterfaceError(f"slider '{self.destination}': {key} must be a finite number, got {value!r}")
        if self.minimum > self.maximum:
            raise InterfaceError(
                f"slider '{self.destination}': minimum {self.minimum} is greater than maximum {self.maximum}"
            )

    @property
    def default(self) -> float:
        return (self.minimum + self.maximum) / 2

    def accepts(self) -> str:
        return f"a number between {self.minimum:g} and {self.maximum:g}"

    def value(self, given, where: str) -> float:
        shown = given[:40] if isinstance(given, str) else given
        try:
            if isinstance(given, bool):
                raise ValueError
            number = float(given)
        except (TypeError, ValueError):
            raise RequestError(f"{where}: {shown!r} is not a number; expected {self.accepts()}") from None
        if not math.isfinite(number) or not self.minimum <= number <= self.maximum:
            raise RequestError(f"{where}: {shown} is out of range; expected {self.accepts()}")
        return number


@dataclass(frozen=True)
class Checkbox(InputElement):
    text: str = ""
    wire_type: ClassVar[str] = "checkbox"

    @classmethod
    def from_dict(cls, spec: dict[str, Any]):
        return cls(_get(spec, "destination"), spec.get("text", ""))

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "text": self.text}

    @property
    def default(self) -> bool:
        return False

    def accepts(self) -> str:
        return "True or False"

    def value(self, given, where: str) -> bool:
        if isinstance(given, bool):
            return given
        text = str(given).strip().lower()
        if text in CHECKBOX_TRUE:
            return True
        if text in CHECKBOX_FALSE or not text:  # an empty field, as some forms send an unticked box
            return False
        raise RequestError(f"{where}: {text[:40]!r} is not a checkbox value; expected {self.accepts()}")


@dataclass(frozen=True)
class RadioButton(InputElement):
    text: str = ""
    options: tuple[str, ...] = field(default_factory=tuple)
    wire_type: ClassVar[str] = "radiobutton"

    def __post_init__(self) -> None:
        # Lists are natural to write; a tuple keeps the element hashable and immutable.
        object.__setattr__(self, "options", tuple(self.options))

    @classmethod
    def from_dict(cls, spec: dict[str, Any]):
        options = _get(spec, "options") or ()
        if isinstance(options, str):
            raise InterfaceError(f"radiobutton '{spec.get('destination')}': options must be a list of strings")
        return cls(_get(spec, "destination"), spec.get("text", ""), tuple(options))

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "text": self.text, "options": list(self.options)}

    def check(self) -> None:
        super().check()
        if not self.options:
            raise InterfaceError(f"radiobutton '{self.destination}' needs at least one option")
        if not all(isinstance(o, str) and o for o in self.options):
            raise InterfaceError(f"radiobutton '{self.destination}': options must be non-empty strings")
        if len(set(self.options)) != len(self.options):
            raise InterfaceError(f"radiobutton '{self.destination}' lists an option twice")

    @property
    def default(self) -> str:
        return self.options[0]

    def accepts(self) -> str:
        return f"one of: {', '.join(self.options)}"

    def value(self, given, where: str) -> str:
        text = str(given).strip()
        if text not in self.options:
            raise RequestError(f"{where}: {text[:60]!r} is not one of the options; expected {self.accepts()}")
        return text


@dataclass(frozen=True)
class Transform(InputElement):
    wire_type: ClassVar[str] = "transform"
    heavy: ClassVar[bool] = True

    def accepts(self) -> str:
        return "'KIND\\n<base64 file>' with KIND one of nii.gz, h5, mat"


# ---- outputs -------------------------------------------------------------------------------------


class Output:
    """What an output element is: something the app leaves in `data[field]` and the client gets back."""

    field: str
    label: str
    output_type: ClassVar[str] = ""
    names_files: ClassVar[bool] = True  # whether clients make a file name from the label
    default_name: ClassVar[str] = "output"  # what a client calls the output when the server names none
    suffix: ClassVar[str] = ""  # the file a client saves it as

    def to_output_dict(self) -> dict[str, Any]:
        out = {"type": self.output_type, "field": self.field}
        if self.label:
            out["label"] = self.label
        return out

    def check(self) -> None:
        if not isinstance(self.field, str) or not self.field:
            raise InterfaceError(f"{self.output_type} output needs a non-empty 'field' name")
        if self.names_files:
            check_file_label(self.label, f"{self.output_type} output '{self.field}'")


@dataclass(frozen=True)
class OutputElement(Output):
    field: str
    label: str = ""

    @classmethod
    def from_dict(cls, spec: dict[str, Any]):
        return cls(_get(spec, "field"), spec.get("label", "") or "")


@dataclass(frozen=True)
class AmbiguousGrid:
    """Stands for the reference grid of a LabelVolume that names none while the service has several volumes."""

    field: str
    volumes: tuple

    def problem(self) -> str:
        names = ", ".join(repr(v) for v in self.volumes)
        return (
            f"a NumPy LabelVolume '{self.field}' cannot tell which input volume's grid to take ({names}): "
            f"declare LabelVolume({self.field!r}, grid=...) with one of them, or return a SimpleITK image"
        )


# DICOM's coded concepts for a segment nobody described: valid SEG, and what most viewers show as "tissue".
ANATOMICAL_STRUCTURE = ("91723000", "SCT", "Anatomical Structure")
TISSUE = ("85756007", "SCT", "Tissue")


def _code(raw, what: str) -> tuple[str, str, str]:
    """A (code value, coding scheme, meaning) triple, as DICOM's SH, SH and LO strings hold them."""
    if isinstance(raw, dict):
        raw = (raw.get("code"), raw.get("scheme"), raw.get("meaning"))
    if not isinstance(raw, (tuple, list)) or len(raw) != 3 or not all(isinstance(v, str) and v for v in raw):
        raise InterfaceError(f"{what}: expected (code value, coding scheme, meaning), three non-empty strings")
    for value, limit in zip(raw, (16, 16, 64), strict=True):
        if len(value) > limit or "\\" in value or CONTROL.search(value):
            raise InterfaceError(f"{what}: {value!r} must be at most {limit} characters, with no backslash or control")
    return (raw[0], raw[1], raw[2])


@dataclass(frozen=True)
class Segment:
    """What one label value means: its name and DICOM codes, for clients that write DICOM SEG (docs/pacs.md).

    `category` and `type` are (code value, coding scheme designator, code meaning), e.g.
    ("10200004", "SCT", "Liver"); the defaults say only "an anatomical structure, tissue".
    """

    value: int
    name: str
    category: tuple[str, str, str] = ANATOMICAL_STRUCTURE
    type: tuple[str, str, str] = TISSUE

    def check(self, where: str) -> Segment:
        if isinstance(self.value, bool) or not isinstance(self.value, int) or not 1 <= self.value <= 65535:
            raise InterfaceError(f"{where}: segment value {self.value!r} must be a label value from 1 to 65535")
        what = f"{where}, segment {self.value}"
        if not isinstance(self.name, str) or not self.name.strip() or len(self.name) > 64:
            raise InterfaceError(f"{what}: name must be 1 to 64 characters (DICOM's SegmentLabel)")
        if "\\" in self.name or CONTROL.search(self.name):
            raise InterfaceError(f"{what}: name {self.name!r} may not hold a backslash or control characters")
        return Segment(
            self.value, self.name, _code(self.category, f"{what} category"), _code(self.type, f"{what} type")
        )

    def to_dict(self) -> dict[str, Any]:
        def code(triple):
            return dict(zip(("code", "scheme", "meaning"), triple, strict=True))

        return {"value": self.value, "name": self.name, "category": code(self.category), "type": code(self.type)}

    @classmethod
    def from_dict(cls, spec, where: str) -> Segment:
        if not isinstance(spec, dict):
            raise InterfaceError(f"{where}: a segment must be an object with 'value' and 'name'")
        value: Any = spec.get("value")  # checked by check(), like every other field
        name: Any = spec.get("name")
        return cls(value, name, spec.get("category", ANATOMICAL_STRUCTURE), spec.get("type", TISSUE)).check(where)


def _segments(raw, where: str) -> tuple[Segment, ...]:
    """{value: name or Segment} or a sequence of Segments or their dicts, checked, by value."""
    if isinstance(raw, dict):
        raw = [v if isinstance(v, Segment) else Segment(k, v) for k, v in raw.items()]
    if not isinstance(raw, (list, tuple)):
        raise InterfaceError(f"{where}: segments must be a {{value: name}} dict or a list of Segment")
    made = [s.check(where) if isinstance(s, Segment) else Segment.from_dict(s, where) for s in raw]
    values = [s.value for s in made]
    if len(set(values)) != len(values):
        raise InterfaceError(f"{where}: a label value is described twice in segments")
    return tuple(sorted(made, key=lambda s: s.value))


@dataclass(frozen=True)
class LabelVolume(OutputElement):
    """`grid`: the input volume whose grid a NumPy array takes, needed when the service has several.

    `segments`: what the label values mean, `{1: "liver", 2: "tumour"}` or `Segment`s with codes; clients
    name the segments of a DICOM SEG from them, and number the others "label N".
    """

    grid: str = ""
    segments: Any = ()
    output_type: ClassVar[str] = "LabelVolume"
    default_name: ClassVar[str] = "labels"
    suffix: ClassVar[str] = "nii.gz"

    def __post_init__(self):
        object.__setattr__(self, "segments", _segments(self.segments, f"LabelVolume output '{self.field}'"))

    @classmethod
    def from_dict(cls, spec: dict[str, Any]):
        return cls(
            _get(spec, "field"), spec.get("label", "") or "", spec.get("grid", "") or "", spec.get("segments", ())
        )

    def to_output_dict(self) -> dict[str, Any]:
        out = super().to_output_dict()
        if self.grid:
            out["grid"] = self.grid
        if self.segments:
            out["segments"] = [segment.to_dict() for segment in self.segments]
        return out


@dataclass(frozen=True)
class VTKMesh(OutputElement):
    output_type: ClassVar[str] = "VTKMesh"
    default_name: ClassVar[str] = "mesh"
    suffix: ClassVar[str] = "vtk"


@dataclass(frozen=True)
class PlainText(OutputElement):
    output_type: ClassVar[str] = "PlainText"
    names_files: ClassVar[bool] = False  # Slicer shows the label as a message box's title
    default_name: ClassVar[str] = "text"
    suffix: ClassVar[str] = "txt"


@dataclass(frozen=True)
class TransformGrid(OutputElement):
    output_type: ClassVar[str] = "TransformGrid"
    default_name: ClassVar[str] = "displacement"
    suffix: ClassVar[str] = "nii.gz"


@dataclass(frozen=True)
class _TransformFile(OutputElement):
    """A transform sent as an ITK transform file of the suffix's kind."""


@dataclass(frozen=True)
class TransformBSpline(_TransformFile):
    output_type: ClassVar[str] = "TransformBSpline"
    default_name: ClassVar[str] = "bspline"
    suffix: ClassVar[str] = "h5"


@dataclass(frozen=True)
class TransformLinear(_TransformFile):
    output_type: ClassVar[str] = "TransformLinear"
    default_name: ClassVar[str] = "linear"
    suffix: ClassVar[str] = "mat"


# ---- both ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fiducials(Input, Output):
    """Points: an input and an output type in v1, and so both here."""

    name: str
    label: str = ""
    wire_type: ClassVar[str] = "fiducials"
    output_type: ClassVar[str] = "Fiducials"
    heavy: ClassVar[bool] = False
    default_name: ClassVar[str] = "fiducials"
    suffix: ClassVar[str] = "fcsv"
    default: ClassVar[None] = None  # points are the user's to give

    @classmethod
    def from_dict(cls, spec: dict[str, Any]):
        return cls(_get(spec, "destination") or _get(spec, "field"), spec.get("label", "") or "")

    @property
    def destination(self) -> str:  # type: ignore[override]  # one name, read as an input's and an output's
        return self.name

    @property
    def field(self) -> str:  # type: ignore[override]
        return self.name

    def check(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InterfaceError("fiducials element needs a non-empty name")
        check_file_label(self.label, f"Fiducials '{self.name}'")

    def accepts(self) -> str:
        return POINTS


INPUT_TYPES: dict[str, Any] = {
    cls.wire_type: cls for cls in (Volume, Slider, Checkbox, RadioButton, Fiducials, Transform)
}
OUTPUT_TYPES: dict[str, Any] = {
    cls.output_type: cls
    for cls in (LabelVolume, VTKMesh, PlainText, Fiducials, TransformGrid, TransformBSpline, TransformLinear)
}


def _from_dict(spec: dict[str, Any], types: dict[str, Any], what: str):
    cls = types.get(_get(spec, "type"))
    if cls is None:
        raise InterfaceError(f"unknown {what} {spec.get('type')!r}; expected one of {', '.join(sorted(types))}")
    return cls.from_dict(spec)


def input_interface(elements) -> tuple:
    """Normalise objects or v1 dicts into checked input elements, refusing what a client could not fill."""
    result = []
    seen = set()
    for item in elements or ():
        element = _from_dict(item, INPUT_TYPES, "input element type") if isinstance(item, dict) else item
        if not isinstance(element, Input):
            raise InterfaceError(f"not an input element: {item!r}")
        element.check()
        if element.destination in seen:
            raise InterfaceError(f"two input elements share the destination '{element.destination}'")
        seen.add(element.destination)
        result.append(element)
    return tuple(result)


def check_grids(inputs, outputs) -> None:
    """Each LabelVolume's `grid` must name a volume input."""
    volumes = [e.destination for e in inputs if e.wire_type == "volume"]
    for element in outputs:
        grid = getattr(element, "grid", "")
        if grid and grid not in volumes:
            raise InterfaceError(
                f"LabelVolume '{element.field}': grid {grid!r} is not a volume input; expected one of: "
                f"{', '.join(volumes) or 'none (the service has no volume input)'}"
            )


def output_interface(elements) -> tuple:
    """Normalise objects or v1 dicts into checked output elements."""
    result = []
    seen = set()
    for item in elements or ():
        element = _from_dict(item, OUTPUT_TYPES, "output type") if isinstance(item, dict) else item
        if not isinstance(element, Output):
            raise InterfaceError(f"not an output element: {item!r}")
        element.check()
        key = (element.output_type, element.field)
        if key in seen:
            raise InterfaceError(f"output '{element.field}' of type {element.output_type} is declared twice")
        seen.add(key)
        result.append(element)
    return tuple(result)
