"""Synthetic training and test volumes: an ellipsoid "organ" to segment, a brighter decoy not to.

Geometry is random on purpose (anisotropic spacing, oblique direction, far
origin), noise and a smooth multiplicative bias field make a plain threshold
fail, and a random global gain makes intensity normalisation necessary. The
truth is decided at voxel centres in physical space, so it is exact on any grid.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

FIELD_OF_VIEW_MM = 96.0


def random_rotation(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _inside(points: np.ndarray, centre, radii, rotation) -> np.ndarray:
    local = (points - centre) @ rotation
    return ((local / radii) ** 2).sum(-1) <= 1.0


def make_phantom(rng, spacing=None, direction=None) -> tuple[sitk.Image, sitk.Image]:
    """(image, truth label map) on the same random grid."""
    spacing = np.asarray(spacing if spacing is not None else rng.uniform(1.0, 3.0, size=3))
    size = np.maximum(np.round(FIELD_OF_VIEW_MM / spacing).astype(int), 8)
    direction = np.asarray(direction if direction is not None else random_rotation(rng)).reshape(3, 3)
    origin = rng.uniform(-150, 150, size=3)

    index = np.stack(np.meshgrid(*(np.arange(n) for n in size[::-1]), indexing="ij"), -1)[..., ::-1]  # (z,y,x,[i,j,k])
    points = origin + (index * spacing) @ direction.T
    centre_of_view = origin + direction @ ((size - 1) * spacing / 2)

    organ_centre = centre_of_view + rng.uniform(-18, 18, size=3)
    organ = _inside(points, organ_centre, rng.uniform(12, 26, size=3), random_rotation(rng))
    decoy_centre = organ_centre + random_rotation(rng)[0] * rng.uniform(30, 38)
    decoy = _inside(points, decoy_centre, rng.uniform(6, 12, size=3), random_rotation(rng))
    organ &= ~decoy

    image = np.full(organ.shape, 100.0)
    image[organ] = 150.0
    image[decoy] = 210.0
    relative = (points - centre_of_view) / FIELD_OF_VIEW_MM
    bias = 1.0 + relative @ rng.uniform(-0.25, 0.25, size=3) + 0.1 * np.cos(3 * relative @ rng.normal(size=3))
    image = image * bias * rng.uniform(0.5, 2.0) + rng.normal(0, 12.0, size=image.shape)

    result = []
    for array in (image.astype(np.float32), organ.astype(np.uint8)):
        volume = sitk.GetImageFromArray(array)
        volume.SetSpacing(spacing.tolist())
        volume.SetOrigin(origin.tolist())
        volume.SetDirection(direction.ravel().tolist())
        result.append(volume)
    return result[0], result[1]


def dice(a: sitk.Image, b: sitk.Image) -> float:
    x, y = sitk.GetArrayViewFromImage(a) > 0, sitk.GetArrayViewFromImage(b) > 0
    return float(2.0 * (x & y).sum() / max(x.sum() + y.sum(), 1))
