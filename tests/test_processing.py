"""The processing steps: geometry round trips land on the input's exact grid; label steps do what they say."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import assert_same_grid

from tomaat.processing import (
    Argmax,
    Cast,
    ClipPercentiles,
    Compose,
    CropOrPad,
    CropToMultiple,
    FillHoles,
    FromNumpy,
    LabelToMesh,
    LargestComponent,
    PadToMultiple,
    Reorient,
    Resample,
    Rescale,
    Restore,
    Threshold,
    ToNumpy,
    ZScore,
)

PERMUTATIONS = list(itertools.permutations(range(3)))


def random_direction(rng, oblique: bool) -> np.ndarray:
    """A signed permutation, optionally times a small rotation, so no axis is where the defaults put it."""
    matrix = np.zeros((3, 3))
    for row, column in enumerate(PERMUTATIONS[rng.integers(1, 6)]):
        matrix[row, column] = rng.choice([-1.0, 1.0])
    if oblique:
        angle = rng.uniform(0.05, 0.3)
        c, s = np.cos(angle), np.sin(angle)
        matrix = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ matrix
    return matrix


def random_labels(rng, size) -> sitk.Image:
    """Blocks of three labels in a random grid; the voxel values are what must come back."""
    array = np.zeros(size[::-1], dtype=np.uint8)
    for label in (1, 2, 3):
        lo = [rng.integers(0, n - 3) for n in array.shape]
        hi = [rng.integers(a + 2, n + 1) for a, n in zip(lo, array.shape, strict=True)]
        array[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = label
    image = sitk.GetImageFromArray(array)
    return image


@pytest.mark.parametrize("seed", range(6))
def test_round_trip_lands_on_the_input_grid_with_the_same_voxels(seed):
    rng = np.random.default_rng(seed)
    size = tuple(int(n) for n in rng.integers(7, 20, size=3))
    image = random_labels(rng, size)
    spacing = rng.uniform(0.4, 3.0, size=3)
    image.SetSpacing(spacing)
    image.SetOrigin(rng.uniform(-200, 200, size=3))
    image.SetDirection(random_direction(rng, oblique=bool(seed % 2)).ravel())
    # a target spacing that divides the reoriented spacing, so nearest-neighbour both ways is lossless
    reoriented_spacing = sitk.DICOMOrient(image, "LPS").GetSpacing()
    target = [s / k for s, k in zip(reoriented_spacing, rng.integers(1, 4, size=3), strict=True)]

    pre = Compose(Reorient(), Resample(target, sitk.sitkNearestNeighbor), PadToMultiple(8), ToNumpy(channels="first"))
    data = pre({"images": image})
    assert data["images"].GetSize() != image.GetSize()
    assert all(n % 8 == 0 for n in data["images"].GetSize())
    assert data["array"].shape == (1, 1) + data["images"].GetSize()[::-1]
    data["prediction"] = data["array"].copy()  # identity inference
    post = Compose(FromNumpy("prediction", "labels", channels="first"), Cast(sitk.sitkUInt8, key="labels"))
    data = Restore("labels")(post(data))

    result = data["labels"]
    assert result.GetSize() == image.GetSize()
    assert_same_grid(result, image, 1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result), sitk.GetArrayFromImage(image))


@pytest.mark.parametrize("seed", range(3))
def test_any_spacing_round_trip_keeps_the_grid_and_nearly_all_voxels(seed):
    rng = np.random.default_rng(100 + seed)
    image = sitk.Cast(random_labels(rng, (24, 20, 16)) > 0, sitk.sitkFloat32)
    image.SetSpacing(rng.uniform(0.5, 2.5, size=3))
    image.SetOrigin(rng.uniform(-50, 50, size=3))
    image.SetDirection(random_direction(rng, oblique=True).ravel())
    steps = Compose(Reorient(), Resample(rng.uniform(0.3, 0.7, size=3)), CropOrPad((40, 40, 40)), PadToMultiple(16))
    data = Restore("images", out="back", interpolator=sitk.sitkLinear)(steps({"images": image, "original": image}))
    assert_same_grid(data["back"], image, 1e-6)
    agree = (sitk.GetArrayFromImage(data["back"]) >= 0.5) == (sitk.GetArrayFromImage(image) >= 0.5)
    assert agree.mean() > 0.9  # CropOrPad may cut some of the volume off; what is left must agree


def test_crop_to_multiple_and_back():
    image = sitk.GetImageFromArray(np.arange(9 * 10 * 11, dtype=np.float32).reshape(9, 10, 11))
    image.SetOrigin((3, 4, 5))
    data = CropToMultiple(4)({"images": image})
    assert data["images"].GetSize() == (8, 8, 8)
    back = Restore("images")(data)["images"]
    assert_same_grid(back, image)
    inner = sitk.GetArrayFromImage(back)[0:8, 1:9, 1:9]
    np.testing.assert_array_equal(inner, sitk.GetArrayFromImage(image)[0:8, 1:9, 1:9])


def test_intensity_steps():
    rng = np.random.default_rng(0)
    array = rng.normal(100, 20, size=(10, 11, 12)).astype(np.float32)
    array[0, 0, 0] = 10_000
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1, 2, 3))
    z = ZScore()({"images": image})["images"]
    assert abs(sitk.GetArrayFromImage(z).mean()) < 1e-4 and abs(sitk.GetArrayFromImage(z).std() - 1) < 1e-3
    assert z.GetSpacing() == (1, 2, 3)
    clipped = sitk.GetArrayFromImage(ClipPercentiles(1, 99)({"images": image})["images"])
    assert clipped.max() < 200
    scaled = sitk.GetArrayFromImage(Rescale((-1, 1), source=(0, 200))({"images": image})["images"])
    assert scaled.min() >= -1 and scaled.max() == 1


def test_numpy_layouts():
    image = sitk.GetImageFromArray(np.zeros((4, 5, 6), dtype=np.float32))
    assert ToNumpy(channels="last")({"images": image})["array"].shape == (1, 4, 5, 6, 1)
    assert ToNumpy(channels="first", batch=False)({"images": image})["array"].shape == (1, 4, 5, 6)
    assert ToNumpy(channels=None, batch=False)({"images": image})["array"].shape == (4, 5, 6)
    probabilities = np.random.default_rng(1).random((1, 4, 5, 6, 3)).astype(np.float32)
    data = FromNumpy("p", reference="images")({"images": image, "p": probabilities})
    assert data["p"].GetNumberOfComponentsPerPixel() == 3
    labels = Argmax(key="p", out="labels")(data)["labels"]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(labels), probabilities[0].argmax(-1))
    assert Argmax(axis=1)({"images": np.moveaxis(probabilities, -1, 1)})["images"].shape == (1, 4, 5, 6)


def test_threshold_largest_component_fill_holes_and_mesh():
    array = np.zeros((20, 20, 20), dtype=np.float32)
    array[2:12, 2:12, 2:12] = 0.9
    array[6, 6, 6] = 0.1  # a hole
    array[15:17, 15:17, 15:17] = 0.8  # speckle
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.5, 0.5, 2.0))
    image.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, 1))
    steps = Compose(Threshold(0.5, key="images", out="labels"), LargestComponent(key="labels"), FillHoles(key="labels"))
    labels = steps({"images": image})["labels"]
    result = sitk.GetArrayFromImage(labels)
    assert result.sum() == 1000 and result[6, 6, 6] == 1 and result[16, 16, 16] == 0
    assert labels.GetDirection() == image.GetDirection()

    text = LabelToMesh()({"labels": labels})["mesh"]
    assert text.startswith("# vtk DataFile Version 3.0\n")
    lines = text.splitlines()
    count = int(lines[4].split()[1])
    points = np.array([[float(v) for v in line.split()] for line in lines[5 : 5 + count]])
    # the cube spans x index 1.5..11.5 (half a voxel out), i.e. physical y = -x * 0.5 after the direction
    corner_lo = labels.TransformContinuousIndexToPhysicalPoint((1.5, 1.5, 1.5))
    corner_hi = labels.TransformContinuousIndexToPhysicalPoint((11.5, 11.5, 11.5))
    np.testing.assert_allclose(points.min(0), np.minimum(corner_lo, corner_hi), atol=1e-3)
    np.testing.assert_allclose(points.max(0), np.maximum(corner_lo, corner_hi), atol=1e-3)
