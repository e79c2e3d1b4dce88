"""The budget of body bytes held at once: uploads past it get a 503 once they arrive, and every path gives back."""

from __future__ import annotations

import socket

import pytest_twisted
from clients import call, slicer_post, wait_for
from conftest import make_phantom, v1_base64
from test_server_limits import Blocking
from twisted.internet.threads import deferToThread

MIB = 2**20


def _large_fields() -> dict:
    fields = {"images": v1_base64(make_phantom(size=(100, 100, 50))), "threshold": "100"}
    assert 2 * MIB < len(fields["images"]) < 3 * MIB
    return fields


@pytest_twisted.ensureDeferred
async def test_an_upload_past_the_budget_gets_503_after_it_arrives(serve):
    app = Blocking()
    service = await serve(app, threads=2, max_pending_bytes=4 * MIB)
    fields = _large_fields()
    try:
        first = slicer_post(service.url + "/predict", fields)
        await wait_for(lambda: service.worker.in_flight == 1, what="the first request on the thread")
        held = service.budget.used
        assert held > 2 * MIB
        refused = await slicer_post(service.url + "/predict", fields)  # requests reads no answer mid-upload
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "5"
        assert "too many large uploads at once" in refused.json()[0]["content"]
        assert service.budget.used == held  # the refused body was dropped, not kept
        small = await call("POST", service.url + "/predict", files={"threshold": (None, "1")})
        assert small.status_code == 400  # parsed on the free thread: small bodies are never refused for the budget
        assert "images" in small.json()[0]["content"]
    finally:
        app.release.set()
    assert (await first).status_code == 200
    await wait_for(lambda: service.budget.used == 0, what="the budget to be given back")
    metrics = (await call("GET", service.url + "/metrics")).text
    assert "tomaat_pending_body_bytes 0.0" in metrics
    assert (await slicer_post(service.url + "/predict", fields)).status_code == 200


def _hang_up_mid_upload(port: int) -> None:
    head = (
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        b"Content-Length: %d\r\n\r\n" % (3 * MIB)
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head + b"x" * MIB)


@pytest_twisted.ensureDeferred
async def test_a_client_hanging_up_mid_upload_gives_its_share_back(serve):
    service = await serve(Blocking(), max_pending_bytes=8 * MIB)
    await deferToThread(_hang_up_mid_upload, service.port.getHost().port)
    await wait_for(lambda: service.budget.used == 0, what="the budget to be given back")


@pytest_twisted.ensureDeferred
async def test_a_body_larger_than_the_whole_budget_is_413_and_info_says_so(serve):
    service = await serve(Blocking(), max_pending_bytes=2 * MIB)
    info = (await call("GET", service.url + "/info")).json()
    assert info["max_upload_bytes"] == 2 * MIB
    refused = await slicer_post(service.url + "/predict", _large_fields())
    assert refused.status_code == 413
    assert service.budget.used == 0
