"""Upstream TOMAAT's `tomaat.extras` names, each refused at import with the tomaat step that replaces it.

Upstream's steps work on one-item lists of paths and arrays, in its own data
layout; copying them would keep two ways of doing each thing. An app that
imports one fails when it starts, not on its first request, and the message
names what to use instead (docs/writing-an-app.md, "Porting from upstream TOMAAT").
"""

from __future__ import annotations

_P = "tomaat.processing."
REPLACEMENTS = {
    "TransformChain": _P + "Compose",
    "FromITKFormatFilenameToSITK": "nothing: with contract='rich' volumes arrive as SimpleITK images",
    "FromSITKUint8ToSITKFloat32": _P + "Cast",
    "FromSITKFloat32ToSITKUint8": _P + "Cast",
    "FromSITKOriginalIntensitiesToRescaledIntensities": _P + "Rescale",
    "FromSITKRescaledIntensitiesToOriginalIntensities": _P + "Rescale",
    "FromSITKOriginalResolutionToStandardResolution": _P + "Resample",
    "FromSITKStandardResolutionToOriginalResolution": _P + "Restore",
    "FromSITKToNumpy": _P + "ToNumpy",
    "FromNumpyToSITK": _P + "FromNumpy",
    "FromNumpyOriginalSizeToStandardSize": _P + "CropOrPad",
    "FromNumpyStandardSizeToOriginalSize": _P + "Restore",
    "FromListToNumpy5DArray": _P + "ToNumpy (it adds the batch and channel axes)",
    "FromNumpy5DArrayToList": _P + "FromNumpy",
    "FromLabelVolumeToVTKMesh": _P + "LabelToMesh",
    "ThresholdNumpy": _P + "Threshold",
}


def refusal(module: str, name: str, instead: str | None) -> Exception:
    """ImportError naming our replacement for a known upstream name; AttributeError for any other name, so
    that hasattr() and Python's own look-ups behave as usual."""
    if instead is None:
        return AttributeError(f"module {module!r} has no attribute {name!r}")
    return ImportError(
        f"{module}.{name} is upstream TOMAAT's and tomaat does not provide it; use {instead} "
        "(docs/writing-an-app.md, 'Porting from upstream TOMAAT')"
    )


def __getattr__(name: str):
    raise refusal(__name__, name, REPLACEMENTS.get(name))
