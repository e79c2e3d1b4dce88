"""Label map to a surface mesh in legacy VTK text, the format the VTKMesh output sends.

Points are in physical (LPS) millimetres, computed through the image's full
direction matrix, so the mesh overlays the volume it came from in any viewer.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from .pipeline import Step


def marching_cubes(image: sitk.Image, level: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (physical mm, x y z) and triangles of the `level` isosurface of `image`."""
    try:
        from skimage.measure import marching_cubes as skimage_marching_cubes
    except ImportError as error:  # pragma: no cover - depends on the install
        raise ImportError("label-to-mesh needs scikit-image: pip install 'tomaat[mesh]'") from error
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    # pad so surfaces touching the border are closed
    array = np.pad(array, 1)
    if array.max() < level or array.min() >= level:
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
    verts, faces, _, _ = skimage_marching_cubes(array, level=level)
    index = verts[:, ::-1] - 1.0  # (z, y, x) with padding -> continuous (x, y, z) index
    direction = np.array(image.GetDirection()).reshape(3, 3)
    points = np.asarray(image.GetOrigin()) + (index * np.asarray(image.GetSpacing())) @ direction.T
    if np.linalg.det(direction) < 0:  # keep normals pointing outwards after a mirroring direction
        faces = faces[:, ::-1]
    return points, faces


def to_vtk(points: np.ndarray, triangles: np.ndarray, title: str = "tomaat mesh") -> str:
    """Legacy VTK POLYDATA text; the title says LPS, the convention Slicer reads from it."""
    lines = ["# vtk DataFile Version 3.0", f"{title} SPACE=LPS", "ASCII", "DATASET POLYDATA"]
    lines.append(f"POINTS {len(points)} float")
    lines.extend(f"{x:.6g} {y:.6g} {z:.6g}" for x, y, z in points)
    lines.append(f"POLYGONS {len(triangles)} {4 * len(triangles)}")
    lines.extend(f"3 {a} {b} {c}" for a, b, c in triangles)
    return "\n".join(lines) + "\n"


def label_to_vtk(image: sitk.Image, label: int | None = None, smoothing: float = 0.0) -> str:
    """The surface of one label (or of all nonzero voxels) as VTK text; `smoothing` is a Gaussian sigma in mm."""
    mask = sitk.Cast(image == label if label is not None else image != 0, sitk.sitkFloat32)
    if smoothing > 0:
        mask = sitk.SmoothingRecursiveGaussian(mask, smoothing)
    return to_vtk(*marching_cubes(mask, 0.5))


class LabelToMesh(Step):
    """Step form of `label_to_vtk`: reads a label image, writes VTK text for a VTKMesh output."""

    def __init__(self, key="labels", out="mesh", label: int | None = None, smoothing: float = 0.0):
        super().__init__(key, out)
        self.label, self.smoothing = label, smoothing

    def apply(self, image):
        return label_to_vtk(image, self.label, self.smoothing)
