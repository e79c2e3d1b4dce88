"""The prediction server over real HTTP on real ports: v1 as TOMAAT-Slicer speaks it, v2 binary parts."""

from __future__ import annotations

import base64
import re
import socket

import numpy as np
import pytest
import pytest_twisted
import SimpleITK as sitk
from clients import call, slicer_post
from conftest import assert_same_grid, image_bytes, v1_base64
from twisted.internet.threads import deferToThread

from examples.threshold import ThresholdApp
from tomaat.protocol.outputs import decode_item

EXPECTED_VOXELS = 4 * 5 * 7 + 1  # the block at 500 and the single voxel at 900


def check_threshold_answer(items, phantom):
    assert [item["type"] for item in items] == ["LabelVolume", "PlainText"]
    labels = decode_item(items[0])
    assert_same_grid(labels, phantom)
    expected = (sitk.GetArrayFromImage(phantom) >= 250).astype(np.uint8)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(labels), expected)
    assert expected.sum() == EXPECTED_VOXELS
    millilitres = EXPECTED_VOXELS * 0.5 * 1.25 * 2.0 / 1000
    assert items[1]["content"] == f"{EXPECTED_VOXELS} voxels at or above 250: {millilitres:.3f} ml"
    assert items[1]["label"] == "Summary"


@pytest_twisted.ensureDeferred
async def test_v1_request_as_slicer_sends_it(serve, phantom, leftovers):
    service = await serve(ThresholdApp())
    fields = {"images": v1_base64(phantom), "threshold": "250", "module_version": "1.0"}
    response = await slicer_post(service.url + "/predict", fields)
    assert response.status_code == 200
    check_threshold_answer(response.json(), phantom)
    assert leftovers() == []


@pytest.mark.parametrize("suffix", [".mha", ".nii.gz", ".nii", ".nrrd"])
@pytest_twisted.ensureDeferred
async def test_v2_binary_volume_parts(serve, phantom, leftovers, suffix):
    service = await serve(ThresholdApp())
    raw = image_bytes(phantom, suffix)
    files = {"images": ("phantom" + suffix, raw, "application/octet-stream"), "threshold": (None, "250")}
    response = await call("POST", service.url + "/predict", files=files)
    assert response.status_code == 200, response.text
    items = response.json()
    # NIfTI keeps geometry in float32
    tolerance = 1e-5 if suffix.startswith(".nii") else 1e-6
    assert_same_grid(decode_item(items[0]), phantom, tolerance)
    assert sitk.GetArrayFromImage(decode_item(items[0])).sum() == EXPECTED_VOXELS
    assert leftovers() == []


@pytest_twisted.ensureDeferred
async def test_raw_volume_in_a_plain_field_is_not_mangled(serve, phantom):
    """Old clients sent the raw file bytes as an ordinary field; binary must survive the form parser."""
    service = await serve(ThresholdApp())
    raw = image_bytes(phantom, ".nii.gz")
    response = await call("POST", service.url + "/predict", files={"images": (None, raw), "threshold": (None, "250")})
    assert response.status_code == 200, response.text


@pytest_twisted.ensureDeferred
async def test_metadata_routes_and_cors(serve):
    service = await serve(ThresholdApp())
    interface = (await call("GET", service.url + "/interface")).json()
    assert interface == [
        {"type": "volume", "destination": "images"},
        {"type": "slider", "destination": "threshold", "minimum": 0, "maximum": 1000},
    ]
    info = (await call("GET", service.url + "/info")).json()
    assert info["protocol"] == 2 and info["name"] == "Threshold" and info["input_interface"] == interface
    assert info["output_interface"][0] == {"type": "LabelVolume", "field": "labels", "label": "Threshold mask"}
    assert info["max_upload_bytes"] > 0
    health = await call("GET", service.url + "/health")
    assert health.json()["status"] == "ok" and health.json()["in_flight"] == 0
    assert (await call("GET", service.url + "/announcePoint")).json() == {"announced_at": ""}
    await call("POST", service.url + "/predict", data={"threshold": "1"})  # a 400, counted
    metrics = (await call("GET", service.url + "/metrics")).text
    assert 'tomaat_predictions_total{status="400"} 1.0' in metrics
    assert 'tomaat_stage_seconds_count{stage="parse"} 1.0' in metrics
    assert 'tomaat_stage_seconds_count{stage="send"} 1.0' in metrics
    assert "tomaat_in_flight_requests 0.0" in metrics
    for response in (
        health,
        await call("GET", service.url + "/nowhere"),
        await call("OPTIONS", service.url + "/predict"),
    ):
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert "Access-Control-Allow-Methods" in response.headers
        assert response.headers["Access-Control-Allow-Headers"] == "*, Authorization"
        assert "Access-Control-Max-Age" in response.headers
    missing = await call("GET", service.url + "/nowhere")
    assert missing.status_code == 404 and missing.json()[0]["label"] == "Error!"


def _bad_requests(phantom):
    good = v1_base64(phantom)
    truncated = good.replace("\n", "")[:-3]
    return {
        "missing volume": ({"threshold": "250"}, 400, "images"),
        "slider not a number": ({"images": good, "threshold": "high"}, 400, "threshold"),
        "slider out of range": ({"images": good, "threshold": "5000"}, 400, "between 0 and 1000"),
        "unreadable volume": (
            {"images": base64.encodebytes(b"not an image at all" * 40).decode(), "threshold": "1"},
            415,
            "images",
        ),
        "truncated base64": ({"images": truncated, "threshold": "250"}, 415, "truncated"),
        "truncated image": (
            {"images": base64.encodebytes(image_bytes(phantom, ".mha")[:-300]).decode(), "threshold": "2"},
            415,
            "images",
        ),
    }


BAD = [
    "missing volume",
    "slider not a number",
    "slider out of range",
    "unreadable volume",
    "truncated base64",
    "truncated image",
]


@pytest.mark.parametrize("case", BAD)
@pytest_twisted.ensureDeferred
async def test_bad_input_gets_a_clear_error_and_the_server_keeps_serving(serve, phantom, leftovers, case):
    service = await serve(ThresholdApp())
    fields, status, mentioned = _bad_requests(phantom)[case]
    response = await slicer_post(service.url + "/predict", fields)
    assert response.status_code == status
    [item] = response.json()
    assert item["type"] == "PlainText" and item["label"] == "Error!"
    assert mentioned in item["content"]
    assert "Traceback" not in item["content"] and "/" not in re.sub(r"\.nii/\.nii\.gz", "", item["content"])
    good = await slicer_post(service.url + "/predict", {"images": v1_base64(phantom), "threshold": "250"})
    assert good.status_code == 200
    check_threshold_answer(good.json(), phantom)
    assert leftovers() == []


@pytest_twisted.ensureDeferred
async def test_malformed_multipart_body(serve):
    service = await serve(ThresholdApp())
    body = b'--xyz\r\nContent-Disposition: form-data; name="threshold"\r\n\r\n250\r\n'  # never closed
    response = await call(
        "POST", service.url + "/predict", data=body, headers={"Content-Type": "multipart/form-data; boundary=xyz"}
    )
    assert response.status_code == 400
    assert "multipart" in response.json()[0]["content"]


@pytest_twisted.ensureDeferred
async def test_a_body_over_the_limit_is_refused_before_it_is_read(serve, phantom):
    service = await serve(ThresholdApp(), max_body_bytes=4096)
    assert (await call("GET", service.url + "/info")).json()["max_upload_bytes"] == 4096

    def claim_a_huge_body():
        with socket.create_connection(("127.0.0.1", service.port.getHost().port), timeout=10) as sock:
            sock.sendall(
                b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000000000\r\n\r\n"
            )
            return sock.recv(65536)

    answer = await deferToThread(claim_a_huge_body)
    assert answer.startswith(b"HTTP/1.1 413")
    assert b"larger than this server accepts (4096 bytes)" in answer
    assert (
        await slicer_post(service.url + "/predict", {"images": v1_base64(phantom), "threshold": "250"})
    ).status_code == 413
    small = sitk.Image(4, 4, 4, sitk.sitkUInt8)
    response = await call(
        "POST",
        service.url + "/predict",
        files={"images": ("a.nii.gz", image_bytes(small, ".nii.gz")), "threshold": (None, "1")},
    )
    assert response.status_code == 200


@pytest_twisted.ensureDeferred
async def test_decoders_are_ready_before_the_port_opens(serve, phantom):
    service = await serve(ThresholdApp(), decoders=2, threads=4)
    ready = service.decoders.decoders
    assert len(ready) == 2 and all(decoder.process.poll() is None for decoder in ready)
    files = {"images": ("scan.nii.gz", image_bytes(phantom, ".nii.gz"), "application/octet-stream")}
    answer = await call("POST", service.url + "/predict", files=files, data={"threshold": "250"})
    assert answer.status_code == 200
    assert {decoder.pid for decoder in service.decoders.decoders} == {decoder.pid for decoder in ready}  # none new
