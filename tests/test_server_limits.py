"""Limits against heavy and hostile traffic: image size from headers, gzip bombs, queue, form fields, slow clients."""

from __future__ import annotations

import resource
import threading

import pytest
import pytest_twisted
from clients import slicer_post, wait_for
from conftest import v1_base64
from hostile import gzip_bomb, huge_mha, huge_nifti, huge_nrrd, raw_exchange
from requests_toolbelt import MultipartEncoder
from twisted.internet.threads import deferToThread

from examples.threshold import ThresholdApp
from tomaat.server.runners import GPU_LOCK


def _post_file(url: str, name: str, filename: str, data: bytes, threshold: str = "100"):
    import requests

    def send():
        encoder = MultipartEncoder(fields={name: (filename, data, "application/octet-stream"), "threshold": threshold})
        return requests.post(url, data=encoder, headers={"Content-Type": encoder.content_type})

    return deferToThread(send)


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize(
    "make, filename",
    [(huge_mha, "huge.mha"), (huge_nrrd, "huge.nrrd"), (huge_nifti, "huge.nii")],
    ids=["mha", "nrrd", "nifti"],
)
@pytest_twisted.ensureDeferred
async def test_a_header_claiming_too_many_voxels_is_refused_before_allocation(
    serve, phantom, leftovers, make, filename
):
    service = await serve(ThresholdApp())
    data = make()
    peak = _rss_mib()
    response = await _post_file(service.url + "/predict", "images", filename, data)
    assert response.status_code == 413
    content = response.json()[0]["content"]
    assert "field 'images'" in content and "1073741824" in content
    assert _rss_mib() < peak + 200  # the claimed image would be terabytes
    good = await slicer_post(service.url + "/predict", {"images": v1_base64(phantom), "threshold": "100"})
    assert good.status_code == 200
    assert leftovers() == []


@pytest_twisted.ensureDeferred
async def test_max_voxels_is_configurable(serve, phantom):
    service = await serve(ThresholdApp(), max_voxels=1000)
    response = await slicer_post(service.url + "/predict", {"images": v1_base64(phantom), "threshold": "100"})
    assert response.status_code == 413
    assert "1680 voxels" in response.json()[0]["content"] and "at most 1000" in response.json()[0]["content"]
    assert service.info()["max_voxels"] == 1000


@pytest_twisted.ensureDeferred
async def test_a_gzip_bomb_as_nii_gz_is_refused_by_its_stream_length(serve, phantom, leftovers):
    service = await serve(ThresholdApp())
    bomb = gzip_bomb()
    peak = _rss_mib()
    response = await _post_file(service.url + "/predict", "images", "bomb.nii.gz", bomb)
    assert response.status_code == 413
    assert "decompresses to more than" in response.json()[0]["content"]
    assert _rss_mib() < peak + 100  # the bomb inflates to 512 MiB
    good = await slicer_post(service.url + "/predict", {"images": v1_base64(phantom), "threshold": "100"})
    assert good.status_code == 200
    assert leftovers() == []


class Blocking(ThresholdApp):
    """Holds its worker thread (and the GPU lock) in inference until released."""

    def __init__(self):
        super().__init__()
        self.release = threading.Event()

    def inference(self, data):
        self.release.wait(20)
        return super().inference(data)


@pytest_twisted.ensureDeferred
async def test_a_full_queue_answers_503_with_retry_after(serve, phantom):
    app = Blocking()
    service = await serve(app, threads=1, max_queue=1)
    fields = {"images": v1_base64(phantom), "threshold": "100"}
    try:
        first = slicer_post(service.url + "/predict", fields)
        await wait_for(lambda: service.worker.in_flight == 1, what="the first request on the thread")
        second = slicer_post(service.url + "/predict", fields)
        await wait_for(lambda: service.worker.queued == 1, what="the second request queued")
        refused = await slicer_post(service.url + "/predict", fields)
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "5"
        assert "busy" in refused.json()[0]["content"]
    finally:
        app.release.set()
    assert (await first).status_code == 200
    assert (await second).status_code == 200
    assert not GPU_LOCK.locked()


@pytest_twisted.ensureDeferred
async def test_max_fields_is_configurable(serve, phantom):
    service = await serve(ThresholdApp(), max_fields=3)
    fields = {"images": v1_base64(phantom), "threshold": "100", "a": "1", "b": "2"}
    response = await slicer_post(service.url + "/predict", fields)
    assert response.status_code == 413
    assert "too many form fields (more than 3)" in response.json()[0]["content"]


@pytest_twisted.ensureDeferred
async def test_a_trickling_client_is_dropped_with_408(serve):
    service = await serve(ThresholdApp(), receive_timeout=1.0)
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
    head += b"Content-Length: 100000\r\n\r\n"
    answer = await deferToThread(raw_exchange, service.port.getHost().port, head, trickle=True)
    assert answer.startswith(b"HTTP/1.1 408")
    assert b"did not arrive within 1 seconds" in answer


@pytest_twisted.ensureDeferred
async def test_a_silent_connection_is_closed_after_the_idle_timeout(serve):
    service = await serve(ThresholdApp(), idle_timeout=0.5)
    answer = await deferToThread(raw_exchange, service.port.getHost().port, b"", limit=5.0)
    assert answer == b""  # closed without a word: there was no request to answer
