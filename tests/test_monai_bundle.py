"""A MONAI bundle served as it is (`tomaat serve --bundle`) answers what MONAI's own run of the bundle writes.

The bundle is tests/monai_bundle (made by tests/make_monai_bundle.py with `monai.bundle.init_bundle`).
The reference is `monai.bundle.run` on the same NIfTI file, its SupervisedEvaluator and SaveImaged
writing the labels; the served labels must equal them voxel for voxel, on the client's grid
(rotated direction, offset origin, anisotropic spacing).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import pytest_twisted
import SimpleITK as sitk
from conftest import assert_same_grid

pytest.importorskip("monai")
pytest.importorskip("torch")

from tomaat.client import AsyncClient  # noqa: E402
from tomaat.frameworks.monai_bundle import bundle_app  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BUNDLE = os.path.join(HERE, "monai_bundle")


def rotation(x: float, z: float) -> np.ndarray:
    cx, sx, cz, sz = np.cos(x), np.sin(x), np.cos(z), np.sin(z)
    return np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]]) @ np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])


def make_case(rng, size, spacing, origin, direction) -> sitk.Image:
    """A noisy bright sphere (core and rim, in mm) on an oblique, anisotropic, offset grid."""
    index = np.stack(np.meshgrid(*[np.arange(n) for n in size[::-1]], indexing="ij")).astype(np.float64)
    centre = np.array(size[::-1]) / 2
    scale = np.array(spacing[::-1])[:, None, None, None]
    distance = np.sqrt((((index - centre[:, None, None, None]) * scale) ** 2).sum(0))
    array = np.where(distance < 7.5, 900.0, np.where(distance < 12, 500.0, 100.0)) + rng.normal(0, 30, distance.shape)
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(tuple(np.asarray(direction, dtype=float).ravel()))
    return image


CASES = (
    ((44, 38, 20), (1.1, 0.8, 2.3), (-30.5, 12.25, 40.0), rotation(0.3, 0.5)),
    ((30, 40, 36), (2.0, 0.7, 1.3), (115.0, -80.5, -7.75), np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]])),
)


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> list[tuple[str, sitk.Image]]:
    """NIfTI files (as a researcher has them) and MONAI's own labels for each, from `monai.bundle.run`."""
    pytest.importorskip("ignite")  # the bundle's SupervisedEvaluator and CheckpointLoader are ignite's
    from monai.bundle import run

    rng = np.random.default_rng(2026)
    made = []
    for number, case in enumerate(CASES):
        folder = tmp_path_factory.mktemp(f"case{number}")
        os.mkdir(folder / "in")
        path = str(folder / "in" / "case.nii.gz")
        sitk.WriteImage(make_case(rng, *case), path)
        run(
            config_file=os.path.join(BUNDLE, "configs", "inference.json"),
            meta_file=os.path.join(BUNDLE, "configs", "metadata.json"),
            logging_file=False,
            bundle_root=BUNDLE,
            dataset_dir=str(folder / "in"),
            output_dir=str(folder / "out"),
        )
        [written] = glob.glob(str(folder / "out" / "*.nii.gz"))
        made.append((path, sitk.ReadImage(written)))
    return made


def assert_same_labels(served: sitk.Image, path: str, expected: sitk.Image) -> None:
    """Voxel for voxel what MONAI wrote, on the grid of the file sent (the one MONAI read)."""
    sent = sitk.ReadImage(path)
    assert_same_grid(served, sent, 1e-9)  # the decoded input's grid, as it is
    assert_same_grid(expected, sent, 1e-4)  # MONAI's SaveImage writes it back through a float32 NIfTI affine
    labels = sitk.GetArrayFromImage(served)
    np.testing.assert_array_equal(labels, sitk.GetArrayFromImage(expected).astype(labels.dtype))
    counts = np.bincount(labels.ravel(), minlength=3)
    assert counts[1] > 50 and counts[2] > 50, counts  # both labels found: a real answer, not all background


@pytest_twisted.ensureDeferred
async def test_served_bundle_equals_monai_run(serve, cases, tmp_path, leftovers):
    app = bundle_app(BUNDLE)
    service = await serve(app)
    client = AsyncClient(service.url + "/predict", known_hosts=str(tmp_path / "kh.json"))
    info = await client.info()
    model = info.model
    assert (model["version"], model["licence"]) == ("0.1.0", "Apache-2.0")
    assert model["intended_use"].startswith("Testing only")
    assert info.metadata["modality"] == "MR" and info.metadata["name"] == "Sphere core and rim (test bundle)"
    [output] = info.outputs
    assert {s.value: s.name for s in output.segments} == {1: "sphere core", 2: "sphere rim"}
    for path, expected in cases:
        result = await client.predict({"image": path})
        assert_same_labels(result["labels"], path, expected)
    assert leftovers() == []  # the NIfTI handed to LoadImaged lived only in the request's scratch folder


@pytest_twisted.ensureDeferred
async def test_tomaat_serve_bundle_command(cases, tmp_path):
    from test_cli_serve import free_port, wait_until_up
    from twisted.internet.threads import deferToThread

    port = free_port()
    command = [sys.executable, "-m", "tomaat", "serve", "--bundle", BUNDLE, "--port", str(port), "--no-tls"]
    process = subprocess.Popen(
        [*command, "--listen-address", "127.0.0.1"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    try:
        url = f"http://127.0.0.1:{port}"
        await deferToThread(wait_until_up, url, process, 90)  # torch and MONAI load slowly on a busy machine
        path, expected = cases[0]
        client = AsyncClient(url + "/predict", known_hosts=str(tmp_path / "kh.json"))
        assert_same_labels((await client.predict({"image": path}))["labels"], path, expected)
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert "Sphere core and rim (test bundle) serving on http://127.0.0.1" in output
    assert [name for name in os.listdir(tmp_path) if name.startswith("tomaat-")] == []  # no scratch folder left


def copy_bundle(tmp_path, change=None) -> str:
    folder = tmp_path / "bundle"
    shutil.copytree(BUNDLE, folder)
    if change is not None:
        config = folder / "configs" / "inference.json"
        content = json.loads(config.read_text())
        change(content)
        config.write_text(json.dumps(content))
    return str(folder)


def test_metadata_json_becomes_the_description_and_segments():
    app = bundle_app(BUNDLE)
    assert (app.name, app.modality, app.version, app.licence) == (
        "Sphere core and rim (test bundle)",
        "MR",
        "0.1.0",
        "Apache-2.0",
    )
    assert app.citation.startswith("Cardoso et al., MONAI") and app.intended_use.startswith("Testing only")
    assert [e.destination for e in app.input_interface] == ["image"]
    [output] = app.output_interface
    assert (output.field, output.grid) == ("labels", "image")
    assert {s.value: s.name for s in output.segments} == {1: "sphere core", 2: "sphere rim"}  # channel 0: background


def test_a_folder_that_is_not_a_bundle_is_refused_in_one_line(tmp_path):
    with pytest.raises(ValueError, match=r"is not a MONAI bundle: no configs/inference.json") as error:
        bundle_app(tmp_path)
    assert "\n" not in str(error.value)


def test_a_config_monai_cannot_read_is_refused_in_one_line(tmp_path):
    folder = copy_bundle(tmp_path)
    with open(os.path.join(folder, "configs", "inference.json"), "w") as handle:
        handle.write('{"network_def": ')
    with pytest.raises(ValueError, match=r"the bundle at .*: inference.json: Expecting value") as error:
        bundle_app(folder)
    assert "\n" not in str(error.value)


def test_a_bundle_others_can_write_is_refused(tmp_path):
    folder = copy_bundle(tmp_path)
    os.chmod(os.path.join(folder, "models"), 0o777)
    with pytest.raises(ValueError, match=r"writable by other users") as error:
        bundle_app(folder)
    assert os.path.join(folder, "models") in str(error.value)


def test_a_config_without_a_network_is_refused_before_serving(tmp_path):
    folder = copy_bundle(tmp_path, lambda config: config.pop("network_def"))
    with pytest.raises(ValueError, match=r"inference.json has no network_def; expected MONAI's inference properties"):
        bundle_app(folder)


def test_postprocessing_without_invertd_is_an_app_failure_not_a_wrong_grid(tmp_path):
    def drop_invertd(config):
        steps = config["postprocessing"]["transforms"]
        config["postprocessing"]["transforms"] = [s for s in steps if s["_target_"] != "Invertd"]

    app = bundle_app(copy_bundle(tmp_path, drop_invertd))
    app.setup("cpu")
    with pytest.raises(RuntimeError, match=r"not on the input's grid of size \(44, 38, 20\); expected .* by Invertd"):
        app({"image": make_case(np.random.default_rng(1), *CASES[0])})
    # on the bundle's own spacing the shape survives, but Orientationd flipped the LPS axes to RAS
    same_shape = make_case(np.random.default_rng(1), (36, 36, 30), (1.5, 1.5, 1.5), (4.0, -8.0, 12.0), np.eye(3))
    with pytest.raises(RuntimeError, match=r"of shape \(36, 36, 30\) with another affine, not on the input's grid"):
        app({"image": same_shape})
    assert not os.path.exists(os.path.join(tmp_path, "bundle", "eval"))  # its SaveImaged was taken out
