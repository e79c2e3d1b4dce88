"""The classical brain-mask example on a generated head (brain, CSF gap, bright scalp), served over HTTP."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import pytest_twisted
import SimpleITK as sitk
from conftest import assert_same_grid

from tomaat.client import AsyncClient

pytest.importorskip("skimage")

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "brain_mask.py")


def head_phantom() -> tuple[sitk.Image, float]:
    """An ellipsoid brain in a shell of scalp, on a 2 x 2 x 3 mm oblique grid; returns the brain's true ml."""
    size, spacing = np.array([60, 64, 40]), np.array([2.0, 2.0, 3.0])
    z, y, x = np.meshgrid(
        *(np.arange(n) * s - n * s / 2 for n, s in zip(size[::-1], spacing[::-1], strict=True)), indexing="ij"
    )
    radius = np.sqrt((x / 45) ** 2 + (y / 52) ** 2 + (z / 38) ** 2)
    array = np.zeros(radius.shape, dtype=np.float32)
    array[radius <= 1.0] = 90.0
    array[(radius > 1.12) & (radius <= 1.3)] = 160.0  # scalp, separated from the brain by dark CSF
    array += np.random.default_rng(0).normal(0, 5, size=array.shape).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing.tolist())
    image.SetOrigin((90.0, -110.0, 40.0))
    image.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, 1))
    return image, 4 / 3 * np.pi * 45 * 52 * 38 / 1000


@pytest_twisted.ensureDeferred
async def test_brain_mask_served(serve, tmp_path):
    spec = importlib.util.spec_from_file_location("brain_mask_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    image, true_ml = head_phantom()
    path = tmp_path / "head.mha"
    sitk.WriteImage(image, str(path))
    service = await serve(module.app)
    client = AsyncClient(service.url + "/predict", known_hosts=str(tmp_path / "kh.json"))
    result = await client.predict({"images": str(path), "erosion_mm": "4"})
    labels = result["labels"]
    assert_same_grid(labels, image)
    millilitres = sitk.GetArrayFromImage(labels).sum() * 12 / 1000
    assert abs(millilitres - true_ml) / true_ml < 0.1
    assert f"{millilitres:.1f} ml" in result["volume"]
    mesh = result["surface"].decode()
    assert mesh.startswith("# vtk DataFile Version 3.0") and "POLYGONS" in mesh
