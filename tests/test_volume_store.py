"""Stored volumes: uploaded once (POST /volumes), used by several predictions, expired, deleted, budgeted."""

from __future__ import annotations

import io
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import pytest_twisted
import requests
import SimpleITK as sitk
from clients import call, collect_when_done, slicer_post, wait_for
from conftest import assert_same_grid, image_bytes, make_phantom, v1_base64
from requests_toolbelt import MultipartEncoder
from scratch_checks import private_tempdir, scratch_dirs  # noqa: F401 (an autouse fixture)
from test_cli_serve import ROOT, free_port, wait_until_up
from test_server_limits import Blocking
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock

from examples.threshold import ThresholdApp
from tomaat import LabelVolume, PlainText, Slider, TomaatApp, Volume
from tomaat.errors import RequestError, ServerBusy
from tomaat.net.body import Budget
from tomaat.protocol.outputs import decode_item
from tomaat.server.service import TomaatService
from tomaat.server.timings import Timings
from tomaat.server.volume_store import StoredVolumes

PHANTOM_BYTES = 14 * 12 * 10 * 4  # make_phantom(): float32
GiB = 1024**3


async def store(url: str, image: sitk.Image, suffix: str = ".mha", **kwargs):
    files = {"volume": ("scan" + suffix, image_bytes(image, suffix), "application/octet-stream")}
    return await call("POST", url + "/volumes", files=files, **kwargs)


async def stored_id(url: str, image: sitk.Image, suffix: str = ".mha") -> str:
    response = await store(url, image, suffix)
    assert response.status_code == 201, response.text
    return response.json()["volume_id"]


async def predict(url: str, volume_id: str, threshold: str = "250", headers=None):
    fields = {"images": f"volume_id:{volume_id}", "threshold": threshold}
    return await slicer_post(url + "/predict", fields, headers=headers)


def labels_of(response) -> sitk.Image:
    assert response.status_code == 200, response.text
    return decode_item(response.json()[0])


@pytest.mark.parametrize("suffix", [".mha", ".nii.gz", ".nrrd"])
@pytest_twisted.ensureDeferred
async def test_one_stored_volume_serves_predictions_with_different_settings(serve, suffix):
    phantom = make_phantom()
    service = await serve(ThresholdApp())
    response = await store(service.url, phantom, suffix)
    assert response.status_code == 201, response.text
    answer = response.json()
    assert set(answer) == {"volume_id", "expires_in", "bytes"}
    assert re.fullmatch(r"[0-9a-f]{32}", answer["volume_id"])
    assert answer["expires_in"] == 600 and answer["bytes"] == PHANTOM_BYTES
    voxels = sitk.GetArrayFromImage(phantom)
    tolerance = 1e-5 if suffix == ".nii.gz" else 1e-6  # NIfTI keeps the direction in float32
    for threshold in ("250", "700", "250"):
        labels = labels_of(await predict(service.url, answer["volume_id"], threshold))
        assert_same_grid(labels, phantom, tolerance)
        expected = (voxels >= float(threshold)).astype(np.uint8)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(labels), expected)
    assert (voxels >= 250).sum() == 141 and (voxels >= 700).sum() == 1  # the two settings differ
    assert len(service.volumes) == 1


class Meddling(TomaatApp):
    """Reports its image as it got it, then changes it in every way SimpleITK allows."""

    input_interface = [Volume("images"), Slider("threshold", 0, 1000)]
    output_interface = [LabelVolume("labels"), PlainText("seen")]

    def inference(self, data):
        image = data["images"]
        view = sitk.GetArrayViewFromImage(image)
        data["seen"] = f"{image.GetOrigin()} {float(view.sum())} {image.GetPixel(4, 3, 2)}"
        with pytest.raises(ValueError):
            view[0, 0, 0] = 1  # a NumPy view is read-only
        labels = sitk.GetImageFromArray((view >= data["threshold"]).astype(np.uint8))
        labels.CopyInformation(image)  # before the changes: a NumPy answer would take the changed grid
        data["labels"] = labels
        image.SetOrigin((0.0, 0.0, 0.0))
        image.SetSpacing((9.0, 9.0, 9.0))
        image.SetPixel(4, 3, 2, -1.0)
        image[0, 0, 0] = 77.0
        image += 1000
        data["images"] = image
        return data


@pytest_twisted.ensureDeferred
async def test_an_app_changing_its_image_in_place_leaves_the_stored_volume_alone(serve, phantom):
    service = await serve(Meddling())
    volume_id = await stored_id(service.url, phantom)
    untouched = f"{phantom.GetOrigin()} {float(sitk.GetArrayViewFromImage(phantom).sum())} {phantom.GetPixel(4, 3, 2)}"
    for _ in range(3):
        response = await predict(service.url, volume_id)
        assert response.status_code == 200, response.text
        assert response.json()[1]["content"] == untouched
        assert_same_grid(decode_item(response.json()[0]), phantom)
    kept = service.volumes._entries[volume_id].image
    assert_same_grid(kept, phantom)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(kept), sitk.GetArrayViewFromImage(phantom))


@pytest_twisted.ensureDeferred
async def test_a_stored_volume_expires_and_is_then_unknown(serve, phantom):
    service = await serve(ThresholdApp(), volume_ttl=0.3)
    response = await store(service.url, phantom)
    assert response.json()["expires_in"] == 0.3
    volume_id = response.json()["volume_id"]
    assert service.prediction.decoded.used == PHANTOM_BYTES  # held in the decoded inputs' budget
    await wait_for(lambda: len(service.volumes) == 0, timeout=5, what="the volume to expire")
    late = await predict(service.url, volume_id)
    assert late.status_code == 404
    assert late.json() == [
        {
            "type": "PlainText",
            "label": "Error!",
            "content": f"field 'images' (volume): unknown volume_id '{volume_id}': it was never stored, has expired "
            "or was deleted",
        }
    ]
    assert service.prediction.decoded.used == 0 and service.volumes.held_bytes == 0
    assert (await call("GET", service.url + "/health")).json()["stored_volumes"] == 0


def _upload_body(image: sitk.Image) -> tuple[io.BytesIO, str]:
    encoder = MultipartEncoder(fields={"volume": ("scan.mha", image_bytes(image, ".mha"), "application/octet-stream")})
    return io.BytesIO(encoder.to_string()), encoder.content_type


def test_the_time_to_live_restarts_at_each_use():
    """On a driven clock: used at 9 s of a 10 s life, a volume lives until 10 s after that use."""
    clock, budget = Clock(), Budget(0)
    volumes = StoredVolumes(clock, ttl=10, shared=budget)
    volume_id, size = volumes.put(volumes.receive(*_upload_body(make_phantom()), Timings()))
    assert size == PHANTOM_BYTES == budget.used == volumes.held_bytes
    clock.advance(9)
    volumes.take(volume_id, "field 'images' (volume)")
    clock.advance(9)  # 18 s after it was stored
    assert len(volumes) == 1
    volumes.take(volume_id, "field 'images' (volume)")
    clock.advance(9.99)
    assert len(volumes) == 1
    clock.advance(0.02)
    assert len(volumes) == 0 and budget.used == 0 and volumes.held_bytes == 0
    with pytest.raises(RequestError) as caught:
        volumes.take(volume_id, "field 'images' (volume)")
    assert caught.value.status == 404 and volume_id in caught.value.message
    assert clock.getDelayedCalls() == []  # no timer left behind


def test_a_take_is_a_copy_on_write_copy():
    volumes = StoredVolumes(Clock(), ttl=10)
    volume_id, _ = volumes.put(volumes.receive(*_upload_body(make_phantom()), Timings()))
    first, second = volumes.take(volume_id, "x"), volumes.take(volume_id, "x")
    first.SetPixel(0, 0, 0, 5.0)
    assert second.GetPixel(0, 0, 0) == 0.0 == volumes._entries[volume_id].image.GetPixel(0, 0, 0)


@pytest_twisted.ensureDeferred
async def test_delete_removes_a_stored_volume(serve, phantom):
    service = await serve(ThresholdApp())
    volume_id = await stored_id(service.url, phantom)
    other = await stored_id(service.url, phantom)
    deleted = await call("DELETE", f"{service.url}/volumes/{volume_id}")
    assert deleted.status_code == 204 and deleted.content == b""
    assert (await predict(service.url, volume_id)).status_code == 404
    unknown = [
        {
            "type": "PlainText",
            "label": "Error!",
            "content": f"unknown volume_id '{volume_id}': it was never stored, has expired or was deleted",
        }
    ]
    again = await call("DELETE", f"{service.url}/volumes/{volume_id}")
    assert again.status_code == 404 and again.json() == unknown
    for malformed in (other.upper(), "..%20etc", other + "0"):
        refused = await call("DELETE", f"{service.url}/volumes/{malformed}")
        assert refused.status_code == 404
        assert refused.json()[0]["content"] == (
            "unknown volume_id (a malformed volume_id): it was never stored, has expired or was deleted"
        )
    assert (await call("DELETE", f"{service.url}/volumes/..%2F{other}")).status_code == 404  # no such endpoint
    assert (await predict(service.url, other)).status_code == 200  # the other one is still there
    assert service.volumes.held_bytes == PHANTOM_BYTES == service.prediction.decoded.used
    assert (await call("GET", service.url + "/volumes")).status_code == 405  # never listed
    assert (await call("GET", f"{service.url}/volumes/{other}")).status_code == 405  # never read back


@pytest_twisted.ensureDeferred
async def test_a_volume_past_the_budget_gets_507_until_room_is_made(serve, phantom):
    service = await serve(ThresholdApp(), max_stored_bytes=PHANTOM_BYTES * 3 // 2)
    first = await stored_id(service.url, phantom)
    refused = await store(service.url, phantom)
    assert refused.status_code == 507
    [item] = refused.json()
    assert item["label"] == "Error!" and "max_stored_bytes" in item["content"]
    assert f"takes {PHANTOM_BYTES} bytes" in item["content"]
    assert service.volumes.held_bytes == PHANTOM_BYTES == service.prediction.decoded.used  # the refused one holds none
    assert (await call("DELETE", f"{service.url}/volumes/{first}")).status_code == 204
    assert service.prediction.decoded.used == 0
    second = await stored_id(service.url, phantom)
    assert (await predict(service.url, second)).status_code == 200

    counted = await serve(ThresholdApp(), max_stored_volumes=2)
    await stored_id(counted.url, phantom)
    await stored_id(counted.url, phantom)
    refused = await store(counted.url, phantom)
    assert refused.status_code == 507 and "max_stored_volumes" in refused.json()[0]["content"]


@pytest_twisted.ensureDeferred
async def test_stored_volumes_take_from_the_decoded_inputs_budget(serve, phantom):
    """A stored volume is a decoded input kept for longer: while it is held, requests have that much less room."""
    service = await serve(ThresholdApp(), max_decoded_total=PHANTOM_BYTES * 3 // 2)
    volume_id = await stored_id(service.url, phantom)
    upload = await slicer_post(service.url + "/predict", {"images": v1_base64(phantom), "threshold": "250"})
    assert upload.status_code == 503 and "decoding as much as it can hold" in upload.json()[0]["content"]
    assert (await predict(service.url, volume_id)).status_code == 200  # taking it costs nothing more
    assert (await store(service.url, phantom)).status_code == 503
    await call("DELETE", f"{service.url}/volumes/{volume_id}")
    upload = await slicer_post(service.url + "/predict", {"images": v1_base64(phantom), "threshold": "250"})
    assert upload.status_code == 200


@pytest_twisted.ensureDeferred
async def test_uploads_are_checked_as_predict_volumes_are(serve, phantom):
    service = await serve(ThresholdApp(), max_voxels=1000)
    too_large = await store(service.url, phantom)
    assert too_large.status_code == 413 and "field 'volume' (volume)" in too_large.json()[0]["content"]
    service = await serve(ThresholdApp())
    garbage = await call("POST", service.url + "/volumes", files={"volume": ("x.mha", b"\x00garbage" * 50)})
    assert garbage.status_code == 415 and "field 'volume' (volume)" in garbage.json()[0]["content"]
    missing = await call("POST", service.url + "/volumes", files={"images": ("x.mha", image_bytes(phantom, ".mha"))})
    assert missing.status_code == 400 and "missing field 'volume'" in missing.json()[0]["content"]
    as_base64 = await call("POST", service.url + "/volumes", data={"volume": v1_base64(phantom)})  # urlencoded v1 text
    assert as_base64.status_code == 201 and as_base64.json()["bytes"] == PHANTOM_BYTES
    reference = await call("POST", service.url + "/volumes", data={"volume": "volume_id:" + "0" * 32})
    assert reference.status_code == 400
    assert len(service.volumes) == 1 and service.volumes.held_bytes == PHANTOM_BYTES == service.prediction.decoded.used


@pytest_twisted.ensureDeferred
async def test_an_unknown_id_in_predict_is_404_naming_the_field_and_the_id(serve, phantom):
    service = await serve(ThresholdApp())
    volume_id = secrets.token_hex(16)
    response = await predict(service.url, volume_id)
    assert response.status_code == 404
    content = response.json()[0]["content"]
    assert content.startswith("field 'images' (volume): unknown volume_id") and f"'{volume_id}'" in content
    delayed = await predict(service.url, volume_id, headers={"Prefer": "respond-async", "Accept": "multipart/mixed"})
    collected = await collect_when_done(service.url, delayed.json()[0]["request_id"], {"Accept": "multipart/mixed"})
    assert collected.status_code == 404 and collected.json()[0]["content"] == content


@pytest.mark.parametrize("value", ["volume_id:abc", "volume_id:" + "A" * 32, "volume_id:" + "0" * 33, "volume_id:"])
@pytest_twisted.ensureDeferred
async def test_a_malformed_id_in_predict_is_400(serve, value):
    service = await serve(ThresholdApp())
    response = await slicer_post(service.url + "/predict", {"images": value, "threshold": "1"})
    assert response.status_code == 400
    content = response.json()[0]["content"]
    assert content.startswith("field 'images' (volume): a malformed volume_id") and "32 lowercase hex" in content


@pytest_twisted.ensureDeferred
async def test_a_stored_volume_gives_binary_answers_and_async_ones(serve, phantom):
    from tomaat.protocol.binary_answers import decode, json_items

    service = await serve(ThresholdApp())
    volume_id = await stored_id(service.url, phantom)
    response = await predict(service.url, volume_id, headers={"Accept": "multipart/mixed"})
    parts = decode(response.content, response.headers["Content-Type"])
    assert_same_grid(decode_item(json_items(parts)[0]), phantom)
    delayed = await predict(service.url, volume_id, headers={"Prefer": "respond-async"})
    assert delayed.status_code == 202
    collected = await collect_when_done(service.url, delayed.json()[0]["request_id"])
    assert_same_grid(labels_of(collected), phantom)


@pytest_twisted.ensureDeferred
async def test_a_volume_deleted_while_a_prediction_uses_it_still_serves_that_prediction(serve, phantom):
    app = Blocking()
    service = await serve(app)
    volume_id = await stored_id(service.url, phantom)
    try:
        running = ensureDeferred(predict(service.url, volume_id))
        await wait_for(lambda: service.worker.in_flight == 1, what="the prediction on its thread")
        assert (await call("DELETE", f"{service.url}/volumes/{volume_id}")).status_code == 204
    finally:
        app.release.set()
    assert_same_grid(labels_of(await running), phantom)


@pytest_twisted.ensureDeferred
async def test_info_health_and_metrics_report_the_store(serve, phantom):
    service = await serve(ThresholdApp())
    info = (await call("GET", service.url + "/info")).json()
    assert info["volume_store"] == {"ttl": 600, "max_bytes": 2 * GiB}
    assert info["binary_answers"] is True
    assert (await call("GET", service.url + "/health")).json()["stored_volumes"] == 0
    await stored_id(service.url, phantom)
    await stored_id(service.url, phantom)
    assert (await call("GET", service.url + "/health")).json()["stored_volumes"] == 2
    metrics = (await call("GET", service.url + "/metrics")).text
    assert f"tomaat_stored_volume_bytes {2 * PHANTOM_BYTES}.0" in metrics
    assert "tomaat_stored_volumes 2.0" in metrics

    off = await serve(ThresholdApp(), volume_ttl=0)
    info = (await call("GET", off.url + "/info")).json()
    assert info["volume_store"] is None and info["binary_answers"] is True
    refused = await store(off.url, phantom)
    assert refused.status_code == 404 and "keeps no volumes" in refused.json()[0]["content"]
    assert (await call("DELETE", f"{off.url}/volumes/{'0' * 32}")).status_code == 404
    response = await predict(off.url, "0" * 32)
    assert response.status_code == 404 and "volume_ttl is 0" in response.json()[0]["content"]
    assert "tomaat_stored_volume_bytes" not in (await call("GET", off.url + "/metrics")).text


@pytest_twisted.ensureDeferred
async def test_nothing_reaches_the_disk_and_shutdown_drops_every_volume(phantom):
    service = TomaatService(app=ThresholdApp(), tls=False, port=0, interface="127.0.0.1")
    await service.listen()
    try:
        ids = [await stored_id(service.url, phantom, suffix) for suffix in (".mha", ".nii.gz", ".nrrd")]
        assert os.listdir(tempfile.gettempdir()) == [] and scratch_dirs() == set()
        for volume_id in ids:
            assert (await predict(service.url, volume_id)).status_code == 200
        assert os.listdir(tempfile.gettempdir()) == []
        assert service.volumes.held_bytes == 3 * PHANTOM_BYTES
    finally:
        await service.stop()
    assert len(service.volumes) == 0 and service.volumes.held_bytes == 0 and service.prediction.decoded.used == 0
    with pytest.raises(ServerBusy) as caught:  # the service's state, not the request's fault
        service.volumes.put(service.volumes.receive(*_upload_body(phantom), Timings()))
    assert caught.value.status == 503 and service.prediction.decoded.used == 0


def test_tomaat_serve_takes_the_store_options(tmp_path):
    port = free_port()
    command = [sys.executable, "-m", "tomaat", "serve", "examples/threshold.py", "--port", str(port), "--no-tls",
               "--listen-address", "127.0.0.1", "--volume-ttl", "30", "--max-stored-bytes", "1000", "--max-stored-volumes", "3"]  # fmt: skip
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(url, process)
        assert requests.get(url + "/info", timeout=5).json()["volume_store"] == {"ttl": 30, "max_bytes": 1000}
        files = {"volume": ("scan.mha", image_bytes(make_phantom(), ".mha"))}
        refused = requests.post(url + "/volumes", files=files, timeout=10)
        assert refused.status_code == 507 and "max_stored_bytes of 1000" in refused.json()[0]["content"]
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0]
    assert process.returncode == 0, output
    assert "POST /volumes 507" in output


@pytest_twisted.ensureDeferred
async def test_ids_are_never_logged_whole(serve, phantom, caplog):
    caplog.set_level("INFO", logger="tomaat")
    service = await serve(ThresholdApp())
    volume_id = await stored_id(service.url, phantom)
    assert (await predict(service.url, volume_id)).status_code == 200
    assert (await call("DELETE", f"{service.url}/volumes/{volume_id}")).status_code == 204
    assert (await call("DELETE", f"{service.url}/volumes/{volume_id}")).status_code == 404
    assert (await predict(service.url, volume_id)).status_code == 404
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert volume_id[:8] + "..." in logged and "POST /volumes 201" in logged
    assert volume_id not in logged
