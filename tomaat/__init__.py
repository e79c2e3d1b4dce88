"""TOMAAT: volumetric medical image analysis as a network service.

The interface elements load with the package; `TomaatApp` and `TomaatService`
load when first used (tomaat/lazy.py says why), so `import tomaat` stays light.
"""

from .lazy import exports
from .protocol.elements import (
    Checkbox,
    Fiducials,
    LabelVolume,
    PlainText,
    RadioButton,
    Segment,
    Slider,
    Transform,
    TransformBSpline,
    TransformGrid,
    TransformLinear,
    Volume,
    VTKMesh,
)

# The one version source: pyproject.toml reads it (tool.setuptools.dynamic) without importing tomaat.
__version__ = "0.2.0"

__all__ = [
    "Checkbox",
    "Fiducials",
    "LabelVolume",
    "PlainText",
    "RadioButton",
    "Segment",
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

__getattr__, __dir__ = exports(__name__, globals(), {"TomaatApp": ".server.app", "TomaatService": ".server.service"})
del exports
