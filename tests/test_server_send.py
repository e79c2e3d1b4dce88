"""The answer is streamed through a producer: the send stage is timed, and a client leaving mid-answer costs nothing."""

from __future__ import annotations

import socket

import pytest_twisted
from clients import call
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher

from tomaat import PlainText, Slider, TomaatApp

TEXT_BYTES = 6 * 2**20  # several of the sender's 1 MiB chunks


class BigTextApp(TomaatApp):
    input_interface = [Slider("size", 0, 1)]
    output_interface = [PlainText("text")]

    def inference(self, data):
        data["text"] = "x" * TEXT_BYTES
        return data


def _send_count(metrics: str) -> float:
    for line in metrics.splitlines():
        if line.startswith('tomaat_stage_seconds_count{stage="send"}'):
            return float(line.split()[-1])
    return 0.0


@pytest_twisted.ensureDeferred
async def test_large_answer_arrives_whole_and_send_is_timed(serve):
    service = await serve(BigTextApp())
    response = await call("POST", service.url + "/predict", files={"size": (None, "0.5")})
    assert response.status_code == 200
    assert int(response.headers["Content-Length"]) == len(response.content)
    assert response.json()[0]["content"] == "x" * TEXT_BYTES
    metrics = (await call("GET", service.url + "/metrics")).text
    assert _send_count(metrics) == 1.0


def _leave_mid_answer(port: int) -> bytes:
    """Ask for a prediction, read the status line and a little of the body, then hang up."""
    body = b'--b\r\nContent-Disposition: form-data; name="size"\r\n\r\n0.5\r\n--b--\r\n'
    head = (
        f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode("ascii")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(head + body)
        first = sock.recv(4096)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # reset
    return first


@pytest_twisted.ensureDeferred
async def test_client_leaving_mid_answer_leaves_the_server_serving(serve):
    service = await serve(BigTextApp())
    failures = []
    observer = lambda event: failures.append(event) if "log_failure" in event else None  # noqa: E731
    globalLogPublisher.addObserver(observer)
    try:
        first = await deferToThread(_leave_mid_answer, service.port.getHost().port)
        assert first.startswith(b"HTTP/1.1 200")
        response = await call("POST", service.url + "/predict", files={"size": (None, "0.5")})
    finally:
        globalLogPublisher.removeObserver(observer)
    assert failures == []  # the abandoned answer logged no unhandled error
    assert response.status_code == 200 and len(response.json()[0]["content"]) == TEXT_BYTES
    metrics = (await call("GET", service.url + "/metrics")).text
    assert _send_count(metrics) == 1.0  # only the answer that was taken whole
    assert 'tomaat_predictions_total{status="200"} 2.0' in metrics
