"""The committed U-Net served over HTTP: Dice on held-out phantoms with anisotropic spacing and an oblique grid."""

from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np
import pytest
import pytest_twisted
from conftest import assert_same_grid

pytest.importorskip("keras")

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "unet3d")
sys.path.insert(0, EXAMPLE)

from phantoms import dice, make_phantom, random_rotation  # noqa: E402

from tomaat.client import AsyncClient  # noqa: E402


def load_app_module():
    spec = importlib.util.spec_from_file_location("unet3d_app", os.path.join(EXAMPLE, "app.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def app_module():
    return load_app_module()


@pytest_twisted.ensureDeferred
async def test_served_unet_segments_held_out_phantoms(app_module, serve, tmp_path):
    service = await serve(app_module.app)
    client = AsyncClient(service.url + "/predict", known_hosts=str(tmp_path / "kh.json"))
    rng = np.random.default_rng(777)
    for spacing in ((0.9, 1.6, 3.0), (2.5, 1.2, 1.0), (1.5, 2.8, 1.1)):
        direction = random_rotation(rng)
        assert not np.allclose(direction, np.eye(3), atol=0.1)
        image, truth = make_phantom(rng, spacing=spacing, direction=direction)
        path = tmp_path / "phantom.nii.gz"
        import SimpleITK as sitk

        sitk.WriteImage(image, str(path))
        result = await client.predict({"images": str(path)})
        labels = result["labels"]
        assert_same_grid(labels, image, 1e-4)  # NIfTI stores geometry in float32
        assert dice(labels, truth) >= 0.90
        assert result["summary"].startswith("organ volume")


def test_pytorch_twin_gives_the_same_output(app_module):
    pytest.importorskip("torch")
    import keras
    from model import keras_to_torch

    from tomaat.frameworks.pytorch import TorchModel
    from tomaat.frameworks.tensorflow import KerasModel

    keras_model = keras.models.load_model(app_module.KERAS_MODEL, compile=False)
    array = np.random.default_rng(3).normal(size=(1, 24, 20, 16, 1)).astype(np.float32)
    from_keras = KerasModel(keras_model).predict(array)
    from_torch = TorchModel(keras_to_torch(keras_model)).predict(np.moveaxis(array, -1, 1))
    np.testing.assert_allclose(np.moveaxis(from_torch, 1, -1), from_keras, atol=1e-4)
