"""TOMAAT: volumetric medical image analysis as a network service."""

from .protocol.elements import (
    Checkbox,
    Fiducials,
    LabelVolume,
    PlainText,
    RadioButton,
    Slider,
    Transform,
    TransformBSpline,
    TransformGrid,
    TransformLinear,
    Volume,
    VTKMesh,
)
from .server import TomaatApp, TomaatService

__version__ = "0.1.0"

__all__ = [
    "Checkbox",
    "Fiducials",
    "LabelVolume",
    "PlainText",
    "RadioButton",
    "Slider",
    "TomaatApp",
    "TomaatService",
    "Transform",
    "TransformBSpline",
    "TransformGrid",
    "TransformLinear",
    "Volume",
    "VTKMesh",
]
