"""The client library (AsyncClient) against our server on a real port: every input and output type, delays, checks."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import pytest_twisted
import SimpleITK as sitk
from client_support import write_dicom_series
from conftest import assert_same_grid, make_phantom
from test_server_all_types import MESH, EverythingApp, affine_field
from twisted.internet.threads import deferToThread

from tomaat.client import AsyncClient, InputFileError, ValidationError
from tomaat.client.requests import prepare
from tomaat.protocol.elements import Checkbox, RadioButton, Slider


def write_inputs(folder, phantom) -> dict:
    """Files of every input kind, as a user would have them on disk."""
    (folder / "seeds.fcsv").write_text(
        "# Markups fiducial file version = 4.11\n# CoordinateSystem = RAS\n"
        "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n"
        "1,-1.5,-2,3,0,0,0,1,1,1,0,F-1,,\n2,4,-5.25,6,0,0,0,1,1,1,0,F-2,,\n"
    )
    sitk.WriteTransform(affine_field(), str(folder / "moving.mat"))
    write_dicom_series(phantom, folder / "dicom")
    return {"images": str(folder / "dicom"), "seeds": str(folder / "seeds.fcsv"), "moving": str(folder / "moving.mat")}


async def metrics_predictions(client: AsyncClient) -> str:
    status, body = await client._request("GET", "/metrics", "reading /metrics")
    return "\n".join(line for line in body.decode().splitlines() if line.startswith("tomaat_predictions_total{"))


@pytest_twisted.ensureDeferred
async def test_every_type_through_the_library(serve, tmp_path, leftovers):
    phantom = make_phantom(pixel=np.int16)
    service = await serve(EverythingApp())
    client = AsyncClient(service.url + "/predict", known_hosts=str(tmp_path / "kh.json"))
    inputs = write_inputs(tmp_path, phantom)
    sent = []
    result = await client.predict(
        {**inputs, "level": "0.25", "units": "voxels"}, progress=lambda done, total: sent.append((done, total))
    )
    assert sent and sent[-1][0] == sent[-1][1]
    assert result.request.filled == [("invert", False)]
    assert [o.name for o in result] == ["labels", "mesh", "report", "seeds_out", "field", "bspline", "affine"]

    labels = result["labels"]
    assert_same_grid(labels, phantom, 1e-4)  # a DICOM series in, the phantom's grid out
    np.testing.assert_array_equal(sitk.GetArrayFromImage(labels), sitk.GetArrayFromImage(phantom) > 100)
    assert result["mesh"].decode() == MESH
    assert result["report"] == "level=0.25 invert=False units=voxels moving=AffineTransform"
    # the .fcsv was RAS: sent as LPS (x and y negated), echoed back plus one
    np.testing.assert_allclose(result["seeds_out"], [[2.5, 3, 4], [-3, 6.25, 7]])
    assert result["field"].GetNumberOfComponentsPerPixel() == 3
    assert isinstance(result["bspline"], sitk.BSplineTransform)
    np.testing.assert_allclose(result["affine"].GetParameters(), affine_field().GetParameters())

    written = dict(result.save(str(tmp_path / "out")))
    names = sorted(p.rsplit("/", 1)[1] for p in written)
    assert names == sorted(
        ["labels.nii.gz", "mesh.vtk", "report.txt", "seeds_out.fcsv", "seeds_out.json", "field.nii.gz"]
        + ["bspline.h5", "affine.mat"]
    )
    saved = sitk.ReadImage(str(tmp_path / "out" / "labels.nii.gz"))
    assert_same_grid(saved, phantom, 1e-4)
    assert isinstance(sitk.ReadTransform(str(tmp_path / "out" / "bspline.h5")), sitk.Transform)
    with open(tmp_path / "out" / "seeds_out.json") as handle:
        np.testing.assert_allclose(json.load(handle)["points"], [[2.5, 3, 4], [-3, 6.25, 7]])
    assert leftovers() == []


@pytest.mark.parametrize("kind", ["list", "json", "csv", "h5", "displacement"])
@pytest_twisted.ensureDeferred
async def test_other_fiducial_and_transform_sources(serve, tmp_path, phantom, kind):
    service = await serve(EverythingApp())
    client = AsyncClient(service.url, known_hosts=str(tmp_path / "kh.json"))
    points = [[1.5, 2, 3], [-4, 5.25, 6]]
    seeds, moving, expected = points, affine_field(), "AffineTransform"
    if kind == "json":
        (tmp_path / "p.json").write_text(json.dumps(points))
        seeds = str(tmp_path / "p.json")
    elif kind == "csv":
        (tmp_path / "p.csv").write_text("x,y,z\n1.5,2,3\n-4,5.25,6\n")
        seeds = str(tmp_path / "p.csv")
    elif kind == "h5":
        sitk.WriteTransform(sitk.BSplineTransformInitializer(phantom, [2, 2, 2]), str(tmp_path / "b.h5"))
        moving, expected = str(tmp_path / "b.h5"), "BSplineTransform"
    elif kind == "displacement":
        field = sitk.Image(phantom.GetSize(), sitk.sitkVectorFloat32, 3)
        field.CopyInformation(phantom)
        sitk.WriteImage(field, str(tmp_path / "d.nrrd"))
        moving, expected = str(tmp_path / "d.nrrd"), "DisplacementFieldTransform"
    result = await client.predict({"images": phantom, "seeds": seeds, "moving": moving})
    assert result["report"].endswith(f"moving={expected}")
    np.testing.assert_allclose(result["seeds_out"], np.asarray(points) + 1)


@pytest.mark.parametrize(
    "given, mentioned",
    [
        ({"bogus": 1}, ["'bogus'", "'images' (volume", "'level' (slider, a number between -1 and 1)"]),
        ({"level": 5}, ["'level' (slider)", "between -1 and 1"]),
        ({"units": "inches"}, ["'units' (radiobutton)", "mm, voxels"]),
        ({"invert": "maybe"}, ["'invert' (checkbox)", "True or False"]),
        ({"images": None}, ["missing input 'images' (volume"]),
        ({"seeds": "1,2"}, ["'seeds'", "three numbers"]),
        ({"images": "/nonexistent.nii.gz"}, ["no such file", "/nonexistent.nii.gz"]),
    ],
)
@pytest_twisted.ensureDeferred
async def test_validation_errors_before_any_upload(serve, tmp_path, phantom, given, mentioned):
    service = await serve(EverythingApp())
    client = AsyncClient(service.url, known_hosts=str(tmp_path / "kh.json"))
    inputs = {"images": phantom, "seeds": [[1, 2, 3]], "moving": affine_field(), **given}
    with pytest.raises((ValidationError, InputFileError)) as caught:
        await client.predict(inputs)
    for text in mentioned:
        assert text in str(caught.value)
    assert await metrics_predictions(client) == ""  # the server never saw a prediction request


def test_defaults_are_those_of_slicer():
    interface = (Slider("s", 10, 20), Checkbox("c"), RadioButton("r", "", ("b", "a")))
    request = prepare(interface, {})
    assert request.values == {"s": 15.0, "c": False, "r": "b"}
    assert request.filled == [("s", 15.0), ("c", False), ("r", "b")]


@pytest.mark.parametrize("how", ["prefer-async", "server-delayed"])
@pytest_twisted.ensureDeferred
async def test_delayed_results_are_polled(serve, tmp_path, phantom, how):
    service = await serve(EverythingApp(), delayed_responses=how == "server-delayed")
    client = AsyncClient(service.url, known_hosts=str(tmp_path / "kh.json"))
    inputs = {"images": phantom, "seeds": [[1, 2, 3]], "moving": affine_field()}
    result = await client.predict(inputs, prefer_async=how == "prefer-async")
    assert_same_grid(result["labels"], phantom)
    assert (await client.health())["delayed_results"] == 0  # collected, and so deleted


@pytest_twisted.ensureDeferred
async def test_blocking_facade_in_a_script(serve, tmp_path, phantom):
    """Client and discover as a script uses them (crochet runs the reactor in a thread of that process)."""
    from client_support import ROOT

    sitk.WriteImage(phantom, str(tmp_path / "p.mha"))
    sitk.WriteTransform(affine_field(), str(tmp_path / "m.mat"))
    service = await serve(EverythingApp())
    script = (
        "import sys\n"
        "from tomaat.client import Client, ValidationError\n"
        "client = Client(sys.argv[1])\n"
        "print(client.info().metadata['protocol'], [e.destination for e in client.interface()])\n"
        "result = client.predict(images=sys.argv[2], seeds=[[1, 2, 3]], moving=sys.argv[3], invert=True)\n"
        "print(client.filled, result['report'], result['labels'].GetSize())\n"
        "print(len(result.save(sys.argv[4])))\n"
        "try:\n"
        "    client.predict(images=sys.argv[2], seeds=[], moving=sys.argv[3], level=3)\n"
        "except ValidationError as error:\n"
        "    print('refused:', error)\n"
    )
    args = [service.url, str(tmp_path / "p.mha"), str(tmp_path / "m.mat"), str(tmp_path / "out")]
    done = await deferToThread(
        subprocess.run, [sys.executable, "-c", script, *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "2 ['images', 'level', 'invert', 'units', 'seeds', 'moving']"
    assert (
        lines[1]
        == "[('level', 0.0), ('units', 'mm')] level=0.0 invert=True units=mm moving=AffineTransform (14, 12, 10)"
    )
    assert lines[2] == "8"
    assert lines[3].startswith("refused: 'level' (slider): 3 is out of range")


@pytest_twisted.ensureDeferred
async def test_a_request_over_the_servers_limit_is_not_sent(serve, tmp_path, phantom):
    service = await serve(EverythingApp(), max_body_bytes=200)
    client = AsyncClient(service.url, known_hosts=str(tmp_path / "kh.json"))
    with pytest.raises(ValidationError, match="accepts at most 200 bytes"):
        await client.predict({"images": phantom, "seeds": [[1, 2, 3]], "moving": affine_field()})
    assert await metrics_predictions(client) == ""


@pytest_twisted.ensureDeferred
async def test_inputs_are_read_and_results_decoded_off_the_reactor_thread(serve, tmp_path, phantom, monkeypatch):
    """A client in an asynchronous program must not stall its other connections while it reads or decodes volumes."""
    from twisted.python.threadable import isInIOThread

    from tomaat.client import async_client
    from tomaat.client.results import Result

    on_reactor = {}
    real_prepare, real_from_items = async_client.prepare, Result.from_items.__func__

    def prepare(*args):
        on_reactor["prepare"] = isInIOThread()
        return real_prepare(*args)

    def from_items(cls, *args):
        on_reactor["from_items"] = isInIOThread()
        return real_from_items(cls, *args)

    monkeypatch.setattr(async_client, "prepare", prepare)
    monkeypatch.setattr(Result, "from_items", classmethod(from_items))
    service = await serve(EverythingApp())
    client = AsyncClient(service.url, known_hosts=str(tmp_path / "kh.json"))
    result = await client.predict({"images": phantom, "seeds": [[1, 2, 3]], "moving": affine_field()})
    assert_same_grid(result["labels"], phantom)
    assert on_reactor == {"prepare": False, "from_items": False}
