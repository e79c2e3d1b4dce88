"""Easy ways for a researcher to break an app, each now either working or refused with a message that says why."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import pytest_twisted
import SimpleITK as sitk
from clients import slicer_post
from conftest import assert_same_grid, make_phantom, v1_base64
from twisted.internet.defer import gatherResults

from tomaat import LabelVolume, PlainText, TomaatApp, TomaatService, Volume
from tomaat.processing import Compose, Resample, ToNumpy
from tomaat.protocol.elements import InterfaceError
from tomaat.protocol.outputs import decode_item
from tomaat.server.check import phantom

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- setup(): weights load once, at start, on the device the server chose ---------------------------


class Weighted(TomaatApp):
    input_interface = [Volume("images")]
    output_interface = [PlainText("weights")]

    def __init__(self, fail: bool = False):
        super().__init__()
        self.calls, self.fail = [], fail

    def setup(self, device):
        self.calls.append((device, threading.current_thread() is threading.main_thread()))
        if self.fail:
            raise FileNotFoundError("/models/heart.pt")
        self.weights = f"loaded on {device}"

    def inference(self, data):
        data["weights"] = self.weights
        return data


@pytest_twisted.ensureDeferred
async def test_setup_runs_once_at_start_off_the_reactor_thread_with_the_chosen_device(serve, phantom):
    app = Weighted()
    service = await serve(app, device="cuda:1")
    assert app.calls == [("cuda:1", False)]  # before any request, on a worker thread
    for _ in range(2):
        response = await slicer_post(service.url + "/predict", {"images": v1_base64(phantom)})
        assert response.json()[0]["content"] == "loaded on cuda:1"
    assert len(app.calls) == 1


@pytest_twisted.ensureDeferred
async def test_a_failing_setup_stops_the_start_with_its_reason(caplog):
    service = TomaatService(app=Weighted(fail=True), tls=False, port=0, interface="127.0.0.1")
    with caplog.at_level(logging.ERROR, logger="tomaat.server"):
        with pytest.raises(RuntimeError, match=r"the app's setup failed \(FileNotFoundError: /models/heart.pt\)"):
            await service.listen()
    assert service.port is None  # nothing listens
    assert "Traceback" in caplog.text


# ---- keys: a step pointed at a key the data does not have says so ----------------------------------


class Misnamed(TomaatApp):
    input_interface = [Volume("image")]  # not the steps' default 'images'
    output_interface = [PlainText("shape")]

    def __init__(self, key=None):
        super().__init__()
        steps = (Resample((2, 2, 2)), ToNumpy()) if key is None else (Resample((2, 2, 2), key=key), ToNumpy(key=key))
        self.runner = Compose(*steps)

    def preprocess(self, data):
        return self.runner(data)

    def inference(self, data):
        data["shape"] = str(data["array"].shape)
        return data


@pytest_twisted.ensureDeferred
async def test_a_step_reading_a_missing_key_names_it_and_the_fix(serve, phantom, caplog):
    service = await serve(Misnamed())
    with caplog.at_level(logging.ERROR, logger="tomaat.server"):
        response = await slicer_post(service.url + "/predict", {"image": v1_base64(phantom)})
    assert response.status_code == 500
    assert "Resample reads data['images'], which is not there (data holds 'image')" in caplog.text
    assert "Resample(..., key='image')" in caplog.text

    fixed = await serve(Misnamed(key="image"))
    response = await slicer_post(fixed.url + "/predict", {"image": v1_base64(phantom)})
    assert response.status_code == 200 and response.json()[0]["content"].startswith("(1, ")


# ---- the GPU lock is for inference that needs it ------------------------------------------------


class Meeting(TomaatApp):
    """Two requests' inference must be inside at once to pass the barrier."""

    input_interface = [Volume("images")]
    output_interface = [PlainText("met")]

    def __init__(self, gpu: bool):
        super().__init__()
        self.gpu = gpu
        self.barrier = threading.Barrier(2, timeout=3)

    def inference(self, data):
        try:
            self.barrier.wait()
            data["met"] = "together"
        except threading.BrokenBarrierError:
            data["met"] = "alone"
        return data


@pytest.mark.parametrize(("gpu", "expected"), [(False, ["together", "together"]), (True, ["alone", "alone"])])
@pytest_twisted.ensureDeferred
async def test_inference_without_the_gpu_skips_the_lock(serve, phantom, gpu, expected):
    service = await serve(Meeting(gpu))
    fields = {"images": v1_base64(phantom)}
    answers = await gatherResults([slicer_post(service.url + "/predict", fields) for _ in range(2)])
    assert sorted(a.json()[0]["content"] for a in answers) == expected


# ---- a NumPy label with two input volumes names the grid it takes -----------------------------------


class TwoVolumes(TomaatApp):
    input_interface = [Volume("t1"), Volume("t2")]

    def __init__(self, outputs):
        super().__init__()
        self.output_interface = outputs

    def inference(self, data):
        data["labels"] = sitk.GetArrayFromImage(data["t2"]) > 100
        return data


def second_volume() -> sitk.Image:
    image = make_phantom()
    image.SetOrigin((3.0, -7.5, 20.0))
    image.SetDirection((1, 0, 0, 0, 0, 1, 0, -1, 0))
    return image


@pytest_twisted.ensureDeferred
async def test_a_numpy_label_with_two_volumes_takes_the_grid_it_names(serve, caplog):
    fields = {"t1": v1_base64(make_phantom()), "t2": v1_base64(second_volume())}
    unnamed = await serve(TwoVolumes([LabelVolume("labels")]))
    with caplog.at_level(logging.ERROR, logger="tomaat.server"):
        response = await slicer_post(unnamed.url + "/predict", fields)
    assert response.status_code == 500
    assert "cannot tell which input volume's grid to take ('t1', 't2')" in caplog.text

    named = await serve(TwoVolumes([LabelVolume("labels", grid="t2")]))
    response = await slicer_post(named.url + "/predict", fields)
    assert response.status_code == 200
    assert_same_grid(decode_item(response.json()[0]), second_volume())


def test_a_grid_that_is_not_a_volume_input_is_refused_at_start():
    with pytest.raises(InterfaceError, match=r"grid 't3' is not a volume input; expected one of: t1, t2"):
        TomaatService(app=TwoVolumes([LabelVolume("labels", grid="t3")]))
    assert LabelVolume("labels", grid="t2").to_output_dict() == {"type": "LabelVolume", "field": "labels", "grid": "t2"}


# ---- tomaat check --------------------------------------------------------------------------------

OFF_GRID = """
import SimpleITK as sitk
from tomaat import LabelVolume, TomaatApp, Volume

class OffGrid(TomaatApp):
    input_interface = [Volume("images")]
    output_interface = [LabelVolume("labels")]

    def inference(self, data):
        data["labels"] = sitk.Image(data["images"].GetSize(), sitk.sitkUInt8)  # default geometry: wrong
        return data
"""

MISNAMED = """
from tomaat import PlainText, TomaatApp, Volume
from tomaat.processing import Resample

class Misnamed(TomaatApp):
    input_interface = [Volume("image")]
    output_interface = [PlainText("text")]
    preprocess = Resample((2, 2, 2))
"""


def run_check(target: str):
    return subprocess.run(
        [sys.executable, "-m", "tomaat", "check", target], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_check_passes_a_good_app_and_shows_its_outputs():
    result = run_check("examples/threshold.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "output 'labels': LabelVolume: on the input's grid" in result.stdout
    assert result.stdout.rstrip().endswith("check passed")


@pytest.mark.parametrize(
    ("source", "reported"),
    [
        (MISNAMED, "FAILED (500): the service failed during preprocess"),
        (OFF_GRID, "output 'labels': LabelVolume: NOT on the input's grid"),
    ],
)
def test_check_reports_what_would_fail(tmp_path, source, reported):
    path = tmp_path / "app.py"
    path.write_text(textwrap.dedent(source))
    result = run_check(str(path))
    assert result.returncode == 1
    assert reported in result.stdout and result.stdout.rstrip().endswith("check FAILED")
    if source is MISNAMED:
        assert "Resample reads data['images']" in result.stderr  # the traceback, for the researcher


def test_the_phantom_is_not_on_a_default_grid():
    image = phantom()
    assert image.GetDirection() != (1, 0, 0, 0, 1, 0, 0, 0, 1) and any(image.GetOrigin())
    assert np.unique(sitk.GetArrayViewFromImage(image)).size == 3  # air, body, organ
