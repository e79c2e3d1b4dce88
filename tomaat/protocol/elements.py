"""Interface elements: the typed objects researchers declare and the v1 dicts clients read.

Servers and clients both build their view of an interface from here, so a
change to the wire format of an element happens in exactly one place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .text import CONTROL

# TOMAAT-Slicer saves each result as a file named from the output's label (LabelVolume: label +
# "_result.mha") and finds it again with slicer.util.getNode, which reads *, ? and [ ] as a pattern.
NOT_IN_FILE_LABELS = '/\\:*?[]"<>|'
MAX_FILE_LABEL = 128


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


@dataclass(frozen=True)
class InputElement:
    destination: str
    wire_type: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.wire_type, "destination": self.destination}

    def check(self) -> None:
        if not isinstance(self.destination, str) or not self.destination:
            raise InterfaceError(f"{self.wire_type} element needs a non-empty 'destination' name")


@dataclass(frozen=True)
class OutputElement:
    field: str
    label: str = ""
    output_type: ClassVar[str] = ""

    def to_output_dict(self) -> dict[str, Any]:
        out = {"type": self.output_type, "field": self.field}
        if self.label:
            out["label"] = self.label
        return out

    names_files: ClassVar[bool] = True  # whether clients make a file name from the label

    def check(self) -> None:
        if not isinstance(self.field, str) or not self.field:
            raise InterfaceError(f"{self.output_type} output needs a non-empty 'field' name")
        if self.names_files:
            check_file_label(self.label, f"{self.output_type} output '{self.field}'")


@dataclass(frozen=True)
class Volume(InputElement):
    wire_type: ClassVar[str] = "volume"


@dataclass(frozen=True)
class Slider(InputElement):
    minimum: float = 0.0
    maximum: float = 1.0
    wire_type: ClassVar[str] = "slider"

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


@dataclass(frozen=True)
class Checkbox(InputElement):
    text: str = ""
    wire_type: ClassVar[str] = "checkbox"

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "text": self.text}


@dataclass(frozen=True)
class RadioButton(InputElement):
    text: str = ""
    options: tuple[str, ...] = field(default_factory=tuple)
    wire_type: ClassVar[str] = "radiobutton"

    def __post_init__(self) -> None:
        # Lists are natural to write; a tuple keeps the element hashable and immutable.
        object.__setattr__(self, "options", tuple(self.options))

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


@dataclass(frozen=True)
class Transform(InputElement):
    wire_type: ClassVar[str] = "transform"


@dataclass(frozen=True)
class Fiducials:
    """Points; the one element that is both an input and an output type in v1."""

    name: str
    label: str = ""
    wire_type: ClassVar[str] = "fiducials"
    output_type: ClassVar[str] = "Fiducials"

    @property
    def destination(self) -> str:
        return self.name

    @property
    def field(self) -> str:
        return self.name

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.wire_type, "destination": self.name}

    def to_output_dict(self) -> dict[str, Any]:
        out = {"type": self.output_type, "field": self.name}
        if self.label:
            out["label"] = self.label
        return out

    def check(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InterfaceError("fiducials element needs a non-empty name")
        check_file_label(self.label, f"Fiducials '{self.name}'")


@dataclass(frozen=True)
class LabelVolume(OutputElement):
    output_type: ClassVar[str] = "LabelVolume"


@dataclass(frozen=True)
class VTKMesh(OutputElement):
    output_type: ClassVar[str] = "VTKMesh"


@dataclass(frozen=True)
class PlainText(OutputElement):
    output_type: ClassVar[str] = "PlainText"
    names_files: ClassVar[bool] = False  # Slicer shows the label as a message box's title


@dataclass(frozen=True)
class TransformGrid(OutputElement):
    output_type: ClassVar[str] = "TransformGrid"


@dataclass(frozen=True)
class TransformBSpline(OutputElement):
    output_type: ClassVar[str] = "TransformBSpline"


@dataclass(frozen=True)
class TransformLinear(OutputElement):
    output_type: ClassVar[str] = "TransformLinear"


INPUT_TYPES: dict[str, type] = {
    cls.wire_type: cls for cls in (Volume, Slider, Checkbox, RadioButton, Fiducials, Transform)
}
OUTPUT_TYPES: dict[str, type] = {
    cls.output_type: cls
    for cls in (LabelVolume, VTKMesh, PlainText, Fiducials, TransformGrid, TransformBSpline, TransformLinear)
}


def _input_from_dict(spec: dict[str, Any]):
    kind = spec.get("type")
    cls = INPUT_TYPES.get(kind)
    if cls is None:
        raise InterfaceError(f"unknown input element type {kind!r}; expected one of {', '.join(sorted(INPUT_TYPES))}")
    dest = spec.get("destination")
    if cls is Slider:
        return Slider(dest, spec.get("minimum"), spec.get("maximum"))
    if cls is Checkbox:
        return Checkbox(dest, spec.get("text", ""))
    if cls is RadioButton:
        options = spec.get("options") or ()
        if isinstance(options, str):
            raise InterfaceError(f"radiobutton '{dest}': options must be a list of strings")
        return RadioButton(dest, spec.get("text", ""), tuple(options))
    return cls(dest)


def _output_from_dict(spec: dict[str, Any]):
    kind = spec.get("type")
    cls = OUTPUT_TYPES.get(kind)
    if cls is None:
        raise InterfaceError(f"unknown output type {kind!r}; expected one of {', '.join(sorted(OUTPUT_TYPES))}")
    return cls(spec.get("field"), spec.get("label", "") or "")


def input_interface(elements) -> tuple:
    """Normalise objects or v1 dicts into checked input elements, refusing what a client could not fill."""
    result = []
    seen = set()
    for item in elements or ():
        element = _input_from_dict(item) if isinstance(item, dict) else item
        if not hasattr(element, "to_dict") or not hasattr(element, "destination"):
            raise InterfaceError(f"not an input element: {item!r}")
        element.check()
        if element.destination in seen:
            raise InterfaceError(f"two input elements share the destination '{element.destination}'")
        seen.add(element.destination)
        result.append(element)
    return tuple(result)


def output_interface(elements) -> tuple:
    """Normalise objects or v1 dicts into checked output elements."""
    result = []
    seen = set()
    for item in elements or ():
        element = _output_from_dict(item) if isinstance(item, dict) else item
        if not hasattr(element, "to_output_dict"):
            raise InterfaceError(f"not an output element: {item!r}")
        element.check()
        key = (element.output_type, element.field)
        if key in seen:
            raise InterfaceError(f"output '{element.field}' of type {element.output_type} is declared twice")
        seen.add(key)
        result.append(element)
    return tuple(result)
