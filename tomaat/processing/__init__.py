"""Pre- and post-processing steps for apps that serve trained models.

Compose them into an app's steps; geometry steps record how to undo
themselves in the data dict, and `Restore` puts outputs back on the exact grid
the client sent::

    pre = Compose(Reorient(), Resample((2, 2, 2)), ZScore(), PadToMultiple(8), ToNumpy())
    post = Compose(FromNumpy("prediction", "probabilities"), Restore("probabilities"), Threshold(key="probabilities", out="labels"))
"""

from .arrays import FromNumpy, ToNumpy, to_image
from .geometry import CropOrPad, CropToMultiple, PadToMultiple, Reorient, Resample
from .intensity import Cast, ClipPercentiles, Rescale, ZScore
from .labels import Argmax, FillHoles, LargestComponent, Threshold
from .mesh import LabelToMesh, label_to_vtk, marching_cubes, to_vtk
from .pipeline import UNDO, Compose, GeometryStep, Grid, Lambda, Restore, Step

__all__ = [
    "UNDO",
    "Argmax",
    "Cast",
    "ClipPercentiles",
    "Compose",
    "CropOrPad",
    "CropToMultiple",
    "FillHoles",
    "FromNumpy",
    "GeometryStep",
    "Grid",
    "LabelToMesh",
    "Lambda",
    "LargestComponent",
    "PadToMultiple",
    "Reorient",
    "Resample",
    "Rescale",
    "Restore",
    "Step",
    "Threshold",
    "ToNumpy",
    "ZScore",
    "label_to_vtk",
    "marching_cubes",
    "to_image",
    "to_vtk",
]
