"""`tomaat discover / interface / predict` as subprocesses against servers on real ports."""

from __future__ import annotations

import json

import numpy as np
import pytest_twisted
import SimpleITK as sitk
import treq
from client_support import one_line_error, run_cli, write_dicom_series
from conftest import assert_same_grid, make_phantom
from test_registry_support import make_key, start_registry
from test_server_all_types import MESH, EverythingApp, affine_field

from tomaat import LabelVolume, TomaatApp, Volume
from tomaat.client import AsyncClient


class FailingApp(TomaatApp):
    input_interface = [Volume("images")]
    output_interface = [LabelVolume("labels")]

    def inference(self, data):
        raise RuntimeError("a bug in the model code")


@pytest_twisted.ensureDeferred
async def test_predict_every_type_from_a_dicom_series(serve, tmp_path):
    phantom = make_phantom(pixel=np.int16)
    write_dicom_series(phantom, tmp_path / "dicom")
    (tmp_path / "seeds.json").write_text(json.dumps([[1.5, 2, 3], [-4, 5.25, 6]]))
    sitk.WriteTransform(affine_field(), str(tmp_path / "moving.mat"))
    service = await serve(EverythingApp())
    out = tmp_path / "out"
    result = await run_cli(
        ["predict", service.url + "/predict", "--input", f"images={tmp_path / 'dicom'}"]
        + ["--input", f"seeds={tmp_path / 'seeds.json'}", "--input", f"moving={tmp_path / 'moving.mat'}"]
        + ["--set", "level=0.5", "--set", "units=mm", "--out", str(out)],
        tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "default used for 'invert': False" in result.stdout
    assert "Report: level=0.5 invert=False units=mm moving=AffineTransform" in result.stdout
    assert f"wrote 9 file(s) to {out}" in result.stdout
    for name in ("labels.nii.gz", "labels.dcm", "mesh.vtk", "report.txt", "seeds_out.fcsv", "seeds_out.json"):
        assert (out / name).exists() and f"{out / name}" in result.stdout
    labels = sitk.ReadImage(str(out / "labels.nii.gz"))
    assert_same_grid(labels, phantom, 1e-4)  # size, spacing, origin and (rotated) direction of the input
    np.testing.assert_array_equal(sitk.GetArrayFromImage(labels), sitk.GetArrayFromImage(phantom) > 100)
    assert (out / "mesh.vtk").read_text() == MESH
    np.testing.assert_allclose(
        sitk.ReadTransform(str(out / "affine.mat")).GetParameters(), affine_field().GetParameters()
    )
    assert isinstance(sitk.ReadTransform(str(out / "bspline.h5")), sitk.Transform)
    assert "CoordinateSystem = LPS" in (out / "seeds_out.fcsv").read_text()
    # The labels also as a DICOM SEG on the series, whose frames refer to the slices they were cut from.
    import highdicom
    import pydicom

    seg = highdicom.seg.Segmentation.from_dataset(pydicom.dcmread(out / "labels.dcm"))
    slices = {pydicom.dcmread(path).SOPInstanceUID for path in (tmp_path / "dicom").iterdir()}
    referenced = {
        frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        for frame in seg.PerFrameFunctionalGroupsSequence
    }
    assert referenced <= slices and len(referenced) == int((sitk.GetArrayFromImage(labels) > 0).any(axis=(1, 2)).sum())
    assert seg.SegmentSequence[0].SegmentLabel == "label 1"


@pytest_twisted.ensureDeferred
async def test_async_and_format_options(serve, tmp_path, phantom):
    sitk.WriteImage(phantom, str(tmp_path / "p.nrrd"))
    service = await serve(EverythingApp())
    result = await run_cli(
        ["predict", service.url, "--input", f"images={tmp_path / 'p.nrrd'}", "--input", "seeds=1,2,3"]
        + ["--input", f"moving={tmp_path / 'p.nrrd'}", "--async", "--format", "mha", "--out", str(tmp_path / "o")],
        tmp_path,
    )
    # p.nrrd as a transform: a scalar image is no displacement field, refused before upload
    assert result.returncode == 2
    assert "'moving' (transform)" in one_line_error(result) and "displacement" in result.stderr
    sitk.WriteTransform(affine_field(), str(tmp_path / "m.txt"))
    result = await run_cli(
        ["predict", service.url, "--input", f"images={tmp_path / 'p.nrrd'}", "--input", "seeds=1,2,3"]
        + ["--input", f"moving={tmp_path / 'm.txt'}", "--async", "--format", "mha", "--out", str(tmp_path / "o")],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert_same_grid(sitk.ReadImage(str(tmp_path / "o" / "labels.mha")), phantom)
    status = await treq.get(service.url + "/metrics")
    assert 'tomaat_predictions_total{status="200"} 1.0' in (await status.text())


@pytest_twisted.ensureDeferred
async def test_interface_is_readable(serve, tmp_path):
    service = await serve(EverythingApp())
    result = await run_cli(["interface", service.url], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "'level' (slider, a number between -1 and 1) [default 0]" in result.stdout
    assert "'units' (radiobutton, one of: mm, voxels) [default mm]" in result.stdout
    assert "'labels' LabelVolume" in result.stdout


@pytest_twisted.ensureDeferred
async def test_errors_are_one_line_and_validation_sends_nothing(serve, tmp_path, phantom):
    sitk.WriteImage(phantom, str(tmp_path / "p.nii.gz"))
    service = await serve(EverythingApp())
    sitk.WriteTransform(affine_field(), str(tmp_path / "m.mat"))
    common = ["--input", f"images={tmp_path / 'p.nii.gz'}", "--input", "seeds=", "--out", str(tmp_path / "o")]
    common += ["--input", f"moving={tmp_path / 'm.mat'}"]
    bad = await run_cli(["predict", service.url, *common, "--set", "level=7"], tmp_path)
    assert bad.returncode == 2
    line = one_line_error(bad)
    assert "'level' (slider)" in line and "between -1 and 1" in line
    unknown = await run_cli(["predict", service.url, *common, "--set", "colour=red"], tmp_path)
    assert unknown.returncode == 2 and "'colour'" in one_line_error(unknown) and "'invert' (checkbox" in unknown.stderr
    client = AsyncClient(service.url)
    status, body = await client._request("GET", "/metrics", "metrics")
    assert "tomaat_predictions_total{" not in body.decode()  # nothing was uploaded

    refused = await run_cli(["predict", "http://127.0.0.1:1", *common], tmp_path)
    assert refused.returncode == 1 and "could not connect to http://127.0.0.1:1" in one_line_error(refused)

    failing = await serve(FailingApp())
    failed = await run_cli(
        ["predict", failing.url, "--input", f"images={tmp_path / 'p.nii.gz'}", "--out", str(tmp_path / "o2")], tmp_path
    )
    assert failed.returncode == 3
    assert "the service failed during inference" in one_line_error(failed)


@pytest_twisted.ensureDeferred
async def test_discover_groups_and_filters(tmp_path):
    db = str(tmp_path / "registry.sqlite3")
    key, _ = make_key(db)
    registry = await start_registry(db)
    try:
        for name, modality, anatomy in (("Prostate seg", "MRI", "prostate"), ("Liver seg", "CT", "liver")):
            body = {
                "api_key": key,
                "prediction_url": f"http://{name.split()[0].lower()}:9000/predict",
                "interface_url": f"http://{name.split()[0].lower()}:9000/interface",
                "name": name,
                "modality": modality,
                "anatomy": anatomy,
                "task": "segmentation",
                "description": "",
            }
            response = await treq.post(registry.url + "/announce", json=body)
            assert response.code == 200, await response.text()
        table = await run_cli(["discover", registry.url], tmp_path)
        assert table.returncode == 0, table.stderr
        lines = table.stdout.splitlines()
        assert (
            lines[0] == "CT / liver / segmentation"
            and "Liver seg" in lines[1]
            and "http://liver:9000/predict" in lines[1]
        )
        assert lines[2] == "MRI / prostate / segmentation" and "Prostate seg" in lines[3]
        filtered = await run_cli(["discover", registry.url, "--modality", "mri", "--json"], tmp_path)
        services = json.loads(filtered.stdout)
        assert [s["name"] for s in services] == ["Prostate seg"]
    finally:
        await registry.stop()
