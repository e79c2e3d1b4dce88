"""examples/brain_extraction.py through a real server: the same brain mask as deepbet's own `run_bet`, voxel for voxel.

The head is generated (`synthetic_head` in the example: scalp, skull, CSF, grey and white
matter, ventricles; T1-like intensities) on an oblique grid whose axes are also permuted and flipped (a sagittal-like
acquisition), with unequal spacings and a far origin, and written as NIfTI by SimpleITK;
deepbet reads that file with nibabel, the server with its own decoder.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import pytest_twisted
import SimpleITK as sitk
from conftest import assert_same_grid

pytest.importorskip("torch")
pytest.importorskip("deepbet")

from tomaat.client import AsyncClient  # noqa: E402

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "brain_extraction.py")


def load_example():
    spec = importlib.util.spec_from_file_location("brain_extraction_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest_twisted.ensureDeferred
async def test_the_served_mask_is_run_bets_mask(serve, tmp_path):
    from deepbet import run_bet

    path = tmp_path / "head.nii"
    example = load_example()
    head, brain = example.synthetic_head(path)
    assert sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(head.GetDirection()) == "PIL"
    service = await serve(example.app, device="cpu")
    assert example.app.model.device.type == "cpu" and example.app.model.model is not None  # loaded at setup
    client = AsyncClient(service.url + "/predict", known_hosts=str(tmp_path / "kh.json"))
    result = await client.predict({"images": str(path)})

    run_bet([str(path)], mask_paths=[str(tmp_path / "mask.nii.gz")], no_gpu=True, skip_broken=False)
    expected = sitk.ReadImage(str(tmp_path / "mask.nii.gz"))
    served = result["labels"]
    assert_same_grid(served, head, 1e-5)  # NIfTI keeps geometry in float32
    assert_same_grid(expected, head, 1e-5)
    mask = sitk.GetArrayFromImage(served)
    np.testing.assert_array_equal(mask, sitk.GetArrayFromImage(expected))
    overlap = 2 * (mask.astype(bool) & brain).sum() / (mask.sum() + brain.sum())
    assert overlap > 0.9  # deepbet does find the generated brain: the comparison is not of two empty masks
    millilitres = mask.sum() * np.prod(head.GetSpacing()) / 1000
    assert result["volume"] == f"brain: {millilitres:.1f} ml ({mask.sum()} voxels)"


def test_a_missing_deepbet_is_named_with_its_extra(monkeypatch):
    import sys

    example = load_example()
    monkeypatch.setitem(sys.modules, "deepbet", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "deepbet.bet", None)
    with pytest.raises(ImportError, match=r"^brain extraction needs deepbet: pip install 'tomaat\[brain\]'$"):
        example.BrainExtractionApp()
