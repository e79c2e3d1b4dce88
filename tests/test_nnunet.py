"""A trained nnU-Net v2 folder served as it is: the answer equals nnU-Net's own predict_from_files, voxel for voxel.

The model is tests/nnunet_model/, trained here by tests/make_nnunet_model.py with nnU-Net's own planning,
preprocessing and trainer. The input is two channels on a rotated, offset, anisotropic grid unlike any the
model was trained on, so nnU-Net resamples on the way in and back out.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys

import numpy as np
import pytest
import pytest_twisted
import SimpleITK as sitk
from conftest import assert_same_grid
from test_cli_serve import free_port, wait_until_up
from twisted.internet.threads import deferToThread

pytest.importorskip("nnunetv2")

from make_nnunet_model import case, rotation  # noqa: E402

from tomaat.client import AsyncClient  # noqa: E402
from tomaat.client.errors import ClientError  # noqa: E402
from tomaat.frameworks.nnunet import field_names, nnunet_app  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "tests", "nnunet_model")
SPACING = (0.7, 1.1, 3.1)  # the model was planned at about (0.89, 0.81, 2.49)
ORIGIN = (-41.5, 17.25, 93.0)
DIRECTION = rotation((0.3, -0.4, 0.6))


@pytest.fixture(scope="module")
def channels(tmp_path_factory) -> dict[str, str]:
    """The two channels as files, on a grid of their own."""
    folder = tmp_path_factory.mktemp("nnunet-case")
    images, _ = case(np.random.default_rng(2026), 0)
    paths = {}
    for name, image in zip(("t1", "flair"), images, strict=True):
        image.SetSpacing(SPACING)
        image.SetOrigin(ORIGIN)
        image.SetDirection(DIRECTION)
        paths[name] = str(folder / f"case_{name}.nii.gz")
        sitk.WriteImage(image, paths[name])
    return paths


@pytest.fixture(scope="module")
def reference(channels, tmp_path_factory) -> sitk.Image:
    """nnU-Net's own answer for the same files: nnUNetPredictor.predict_from_files, as nnUNetv2_predict runs it."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    out = tmp_path_factory.mktemp("nnunet-reference")
    predictor = nnUNetPredictor(device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(MODEL, (0,), "checkpoint_final.pth")
    predictor.predict_from_files(
        [[channels["t1"], channels["flair"]]],
        [str(out / "case")],
        num_processes_preprocessing=1,
        num_processes_segmentation_export=1,
    )
    return sitk.ReadImage(str(out / "case.nii.gz"))


def assert_same_as_nnunet(labels: sitk.Image, reference: sitk.Image, channels: dict) -> None:
    assert_same_grid(labels, reference, 0.0)
    given = sitk.ReadImage(channels["t1"])
    assert_same_grid(labels, given, 1e-6)
    assert not np.allclose(given.GetDirection(), np.eye(3).ravel(), atol=0.1)
    served, expected = sitk.GetArrayFromImage(labels), sitk.GetArrayFromImage(reference)
    assert set(np.unique(expected)) == {0, 1, 2}, "the tiny model should find both labels"
    np.testing.assert_array_equal(served, expected)


@pytest_twisted.ensureDeferred
async def test_served_folder_equals_nnunet_predict_from_files(serve, tmp_path, channels, reference, caplog):
    service = await serve(nnunet_app(MODEL))
    client = AsyncClient(service.url, known_hosts=str(tmp_path / "kh.json"))
    info = await client.info()
    assert [element.destination for element in info.inputs] == ["t1", "flair"]
    [output] = info.outputs
    assert [(s.value, s.name) for s in output.segments] == [(1, "core"), (2, "rim")]
    assert info.metadata["name"] == "nnU-Net Tiny nnU-Net test model"
    assert info.model["licence"] == "CC0-1.0"
    assert info.model["version"] == "1.0"

    result = await client.predict({"t1": channels["t1"], "flair": channels["flair"]})
    assert_same_as_nnunet(result["labels"], reference, channels)

    small = sitk.RegionOfInterest(sitk.ReadImage(channels["flair"]), (20, 20, 10))
    path = str(tmp_path / "small.nii.gz")
    sitk.WriteImage(small, path)
    with pytest.raises(ClientError) as refused:  # the app's RequestError: a 400 with its message
        await client.predict({"t1": channels["t1"], "flair": path})
    assert refused.value.status == 400
    assert "field 'flair' has size (20, 20, 10)" in str(refused.value)
    assert "expected all channels on one grid" in str(refused.value)


@pytest_twisted.ensureDeferred
async def test_tomaat_serve_nnunet_command(tmp_path, channels, reference):
    port = free_port()
    command = [sys.executable, "-m", "tomaat", "serve", "--nnunet", MODEL, "--folds", "0"]
    command += ["--port", str(port), "--no-tls", "--listen-address", "127.0.0.1"]
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        await deferToThread(wait_until_up, url, process, 90.0)
        client = AsyncClient(url, known_hosts=str(tmp_path / "kh.json"), result_timeout=120)
        result = await client.predict({"t1": channels["t1"], "flair": channels["flair"]})
        assert_same_as_nnunet(result["labels"], reference, channels)
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output


def test_command_refuses_a_fold_that_was_not_trained(tmp_path):
    command = [sys.executable, "-m", "tomaat", "serve", "--nnunet", MODEL, "--folds", "0,3", "--no-tls"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "fold 3 of" in done.stderr and "has no checkpoint_final.pth; folds with it: 0" in done.stderr
    assert "Traceback" not in done.stderr


def copy_model(tmp_path) -> str:
    folder = tmp_path / "model"
    shutil.copytree(MODEL, folder)
    return str(folder)


def test_folders_refused_with_one_line(tmp_path):
    folder = copy_model(tmp_path)
    with pytest.raises(ValueError, match=r"^--checkpoint '\.\./x\.pth' is a path"):
        nnunet_app(folder, checkpoint="../x.pth")
    with pytest.raises(ValueError, match="^fold 1 of .* has no checkpoint_best.pth; folds with it: none"):
        nnunet_app(folder, folds="1", checkpoint="checkpoint_best.pth")
    with pytest.raises(ValueError, match=r"^--folds 'zero': 'zero' is not a fold"):
        nnunet_app(folder, folds="zero")
    os.chmod(os.path.join(folder, "fold_0"), 0o777)
    with pytest.raises(ValueError, match="^refusing to load the model at .*fold_0 is writable by other users"):
        nnunet_app(folder)
    os.chmod(os.path.join(folder, "fold_0"), stat.S_IRWXU)
    os.remove(os.path.join(folder, "dataset.json"))
    with pytest.raises(ValueError, match="is not an nnU-Net results folder: no dataset.json"):
        nnunet_app(folder)


def test_default_folds_and_fold_all(tmp_path):
    folder = copy_model(tmp_path)
    assert nnunet_app(folder).folds == [0]
    os.rename(os.path.join(folder, "fold_0"), os.path.join(folder, "fold_all"))
    assert nnunet_app(folder).folds == ["all"]  # nnU-Net's own auto-detection skips fold_all


def test_field_names_from_channel_names():
    assert field_names({"1": "T2 FLAIR", "0": "T1"}) == ["t1", "t2_flair"]
    assert field_names({"0": "CT", "1": "ct", "2": "***", "3": "labels"}) == [
        "ct",
        "channel_1",
        "channel_2",
        "channel_3",
    ]
    with pytest.raises(ValueError, match="expected 0, 1, ... in turn"):
        field_names({"0": "T1", "2": "T2"})


def test_region_based_labels_become_segments_numbered_as_nnunet_writes_them():
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    from tomaat.frameworks.nnunet import segments

    dataset = {"labels": {"background": 0, "whole tumour": [1, 2, 3], "core": [2, 3], "enhancing": 3}}
    dataset["regions_class_order"] = [1, 2, 3]
    manager = LabelManager(dataset["labels"], dataset["regions_class_order"])
    assert [(s.value, s.name) for s in segments(dataset, manager)] == [
        (1, "whole tumour"),
        (2, "core"),
        (3, "enhancing"),
    ]
    plain = {"labels": {"background": 0, "liver": 1, "ignore": 2}}
    assert [(s.value, s.name) for s in segments(plain, LabelManager(plain["labels"], None))] == [(1, "liver")]


def test_missing_nnunetv2_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "nnunetv2", None)  # `import nnunetv2` raises ImportError, as when absent
    with pytest.raises(ImportError, match=r"^nnU-Net models need nnunetv2: pip install 'tomaat\[nnunet\]'$"):
        nnunet_app(MODEL)
