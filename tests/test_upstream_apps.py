"""Apps written for upstream TOMAAT, in the style of its examples, run unchanged as `python app.py`.

Each app below is written here in the manner of upstream's `tomaat/examples/simple_*.py` (config
dict, v1 interface dicts, three functions, `TomaatService(...).run()` at the end of the file),
with only the edit a newer NumPy forces (`np.float` -> `float`), and an `interface` key so tests listen
on loopback only (upstream listened on every address). Each runs in its own process, on
HTTPS with its self-signed certificate, and gets a request built as TOMAAT-Slicer builds it.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import requests
import SimpleITK as sitk
import urllib3
from conftest import assert_same_grid, image_bytes, make_phantom
from requests_toolbelt import MultipartEncoder
from test_cli_serve import free_port

from tomaat.protocol import fiducials
from tomaat.protocol.outputs import decode_item

urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)

HEADER = """
import sys, os
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(os.path.dirname(__file__)))))

from tomaat.server import TomaatService, TomaatApp

import SimpleITK as sitk
import numpy as np

config = {{
    "name": "{name}",
    "modality": "Example Modality",
    "task": "Example Task",
    "anatomy": "Example Anatomy",
    "description": "Example Description",
    "port": {port},
    "interface": "127.0.0.1",
    "announce": False,
    "api_key": "",
}}
"""

FOOTER = """
my_app = TomaatApp(preprocess, inference, postprocess)

my_service = TomaatService(config, my_app, iface_in, iface_out)

my_service.run()
"""

APPS = {
    "simple_img": """
iface_in = [{'type': 'volume', 'destination': 'images'}]
iface_out = [{'type': 'LabelVolume', 'field': 'images', 'label': 'test'}]

def preprocess(input):
    return {'images': [sitk.ReadImage(input['images'][0])]}

def inference(data):
    itk_image = data['images'][0]
    image_data = sitk.GetArrayFromImage(itk_image)
    threshold = np.mean(image_data)
    return {'image_data': image_data >= threshold, 'image_old': itk_image}

def postprocess(output):
    image_new = sitk.GetImageFromArray(output['image_data'].astype(float))
    image_new.CopyInformation(output['image_old'])
    return {'images': [image_new]}
""",
    "simple_fids": """
iface_in = [{'type': 'fiducials', 'destination': 'fids'}]
iface_out = [{'type': 'Fiducials', 'field': 'fids'}]

def preprocess(data_in):
    return {'fids': [data_in['fids'][0]]}

def inference(data):
    return {'fids_neg': data['fids'][0] * -1.0}

def postprocess(output):
    return {'fids': [output['fids_neg'].astype(float)]}
""",
    "simple_trf": """
iface_in = [{'type': 'transform', 'destination': 'trf'}]
iface_out = [{'type': 'TransformGrid', 'field': 'trf'}]

def preprocess(data_in):
    return {'trf': [sitk.ReadImage(data_in['trf'][0])]}

def inference(data):
    itk_trf = data['trf'][0]
    trf_data = sitk.GetArrayFromImage(itk_trf)
    trf_data *= -1.0
    return {'trf_data': trf_data, 'trf_old': itk_trf}

def postprocess(output):
    trf_new = sitk.GetImageFromArray(output['trf_data'].astype(float))
    trf_new.CopyInformation(output['trf_old'])
    return {'trf': [trf_new]}
""",
    "simple_text": """
iface_in = [{'type': 'checkbox', 'destination': 'checkbox', 'text': 'checkbox test'}]
iface_out = [{'type': 'PlainText', 'field': 'demotext'}]

def preprocess(data_in):
    return data_in

def inference(data):
    return data

def postprocess(output):
    return {'demotext': ["This is a demo text..."]}
""",
    "simple_mesh": """
import vtk

iface_in = [{'type': 'checkbox', 'destination': 'checkbox', 'text': 'checkbox test'}]
iface_out = [{'type': 'VTKMesh', 'field': 'mesh', 'text': 'monkey'}]

def preprocess(data_in):
    return {"mesh_path": os.path.join(os.path.dirname(__file__), "monkey.stl")}

def inference(data):
    reader = vtk.vtkSTLReader()
    reader.SetFileName(data['mesh_path'])
    reader.Update()
    return {'mesh_vtk': reader.GetOutput()}

def postprocess(output):
    return {'mesh': [output['mesh_vtk']]}
""",
}


def write_app(folder, name: str, port: int) -> str:
    path = folder / f"{name}.py"
    source = textwrap.dedent(HEADER).format(name=name, port=port) + textwrap.dedent(APPS[name]) + FOOTER
    path.write_text(source)
    return str(path)


class Running:
    """An app started as upstream documents it, `python app.py`, with its own HOME and TMPDIR."""

    def __init__(self, command: list[str], folder):
        self.tmp = folder / "tmp"
        self.tmp.mkdir(exist_ok=True)
        env = {**os.environ, "HOME": str(folder), "TMPDIR": str(self.tmp)}
        self.process = subprocess.Popen(
            command, cwd=str(folder), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.output = ""

    def wait_until_up(self, url: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the app exited: {self.process.stdout.read()}")
            try:
                if requests.get(url + "/interface", timeout=1, verify=False).status_code == 200:
                    return
            except requests.ConnectionError:
                time.sleep(0.05)
        raise AssertionError(f"{url} did not come up within {timeout}s")

    def scratch_left(self) -> list[str]:
        """Folders in TMPDIR other than the decoders' own, which live as long as the process."""
        return sorted(name for name in os.listdir(self.tmp) if "-decoder-" not in name)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.output, _ = self.process.communicate(timeout=30)


@pytest.fixture
def run_upstream(tmp_path):
    started = []

    def start(name: str) -> tuple[Running, str]:
        port = free_port()
        running = Running([sys.executable, write_app(tmp_path, name, port)], tmp_path)
        started.append(running)
        url = f"https://127.0.0.1:{port}"
        running.wait_until_up(url)
        return running, url

    yield start
    for running in started:
        if running.process.poll() is None:
            running.stop()


def slicer_request(url: str, fields: dict) -> list[dict]:
    """As TOMAAT-Slicer posts: a MultipartEncoder form, the volume as its saved MHA file, module_version added."""
    encoder = MultipartEncoder({**fields, "module_version": "Slicer-v2"})
    response = requests.post(
        url + "/predict", data=encoder, headers={"Content-Type": encoder.content_type}, verify=False, timeout=60
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_simple_img_labels_voxels_at_or_above_the_mean_on_the_input_grid(run_upstream):
    running, url = run_upstream("simple_img")
    image = make_phantom()
    mha = image_bytes(image, ".mha")
    [item] = slicer_request(url, {"images": ("filename", mha, "text/plain")})
    assert item["type"] == "LabelVolume" and item["label"] == "test"
    label = decode_item(item)
    assert_same_grid(label, image)
    array = sitk.GetArrayFromImage(image)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(label), (array >= array.mean()).astype(float))
    assert running.scratch_left() == []  # the temporary MHA the app read is gone with the request
    running.stop()
    assert "serving on https://" in running.output and "upstream TOMAAT's data" in running.output


def test_simple_fids_negates_every_point_as_sent(run_upstream):
    _, url = run_upstream("simple_fids")
    points = np.array([[1.5, -2.0, 3.25], [10.0, 20.0, -30.0], [0.125, 0.0, 7.0]])
    [item] = slicer_request(url, {"fids": fiducials.format_points(points)})
    assert item["type"] == "Fiducials"
    np.testing.assert_array_equal(fiducials.parse(item["content"]), -points)  # all points, in Slicer's frame


def test_simple_trf_negates_a_displacement_field(run_upstream, tmp_path):
    running, url = run_upstream("simple_trf")
    field_array = np.random.default_rng(3).normal(size=(5, 6, 7, 3))
    field = sitk.GetImageFromArray(field_array, isVector=True)
    field.SetOrigin((4.0, -3.0, 12.5))
    field.SetSpacing((1.5, 2.0, 0.75))
    field.SetDirection((0, 0, 1, 1, 0, 0, 0, 1, 0))
    sent = "nii.gz\n" + base64.b64encode(image_bytes(field, ".nii.gz")).decode("ascii")
    [item] = slicer_request(url, {"trf": sent})
    assert item["type"] == "TransformGrid"
    result = decode_item(item)
    assert_same_grid(result, field, tol=1e-5)
    np.testing.assert_allclose(sitk.GetArrayFromImage(result), -field_array, atol=1e-6)
    assert running.scratch_left() == []


def test_simple_text_answers_the_plain_text(run_upstream):
    _, url = run_upstream("simple_text")
    assert slicer_request(url, {"checkbox": "True"}) == [
        {"type": "PlainText", "content": "This is a demo text...", "label": ""}
    ]


def test_simple_mesh_returns_the_vtk_polydata_as_a_legacy_mesh(run_upstream, tmp_path):
    vtk = pytest.importorskip("vtk")
    sphere = vtk.vtkSphereSource()
    sphere.SetThetaResolution(12)
    sphere.SetPhiResolution(9)
    writer = vtk.vtkSTLWriter()
    writer.SetInputConnection(sphere.GetOutputPort())
    writer.SetFileName(str(tmp_path / "monkey.stl"))
    writer.Write()
    _, url = run_upstream("simple_mesh")
    [item] = slicer_request(url, {"checkbox": "False"})
    assert item["type"] == "VTKMesh"
    text = decode_item(item).decode("ascii")
    assert text.startswith("# vtk DataFile Version 4.2\n") and "ASCII\nDATASET POLYDATA\n" in text
    reader = vtk.vtkSTLReader()
    reader.SetFileName(str(tmp_path / "monkey.stl"))
    reader.Update()
    expected = reader.GetOutput()
    assert f"POINTS {expected.GetNumberOfPoints()} float" in text
    assert f"POLYGONS {expected.GetNumberOfCells()} " in text


def test_tomaat_serve_serves_an_upstream_file_with_its_own_options(tmp_path):
    """The file ends with `my_service.run()`; `tomaat serve` imports it without blocking and applies --port."""
    port = free_port()
    path = write_app(tmp_path, "simple_text", 1)  # the file's own port is never used
    running = Running(
        [sys.executable, "-m", "tomaat", "serve", path, "--port", str(port), "--listen-address", "127.0.0.1"], tmp_path
    )
    try:
        running.wait_until_up(f"https://127.0.0.1:{port}")
        answer = slicer_request(f"https://127.0.0.1:{port}", {"checkbox": "True"})
        assert answer[0]["content"] == "This is a demo text..."
    finally:
        running.stop()
    assert running.process.returncode == 0, running.output
