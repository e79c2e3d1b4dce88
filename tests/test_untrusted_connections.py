"""Connections and bodies an attacker can hold cheaply: the budget counts what arrived, deadlines run from connect."""

from __future__ import annotations

import contextlib
import socket
import time

import pytest_twisted
from clients import call, slicer_post, wait_for
from hostile import raw_exchange
from test_server_budget import MIB, _large_fields
from twisted.internet.threads import deferToThread

from examples.threshold import ThresholdApp

HEAD = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"


@contextlib.contextmanager
def _idle_uploads(port: int, count: int, announced: int):
    """Connections that announce `announced` bytes, send one, and wait."""
    socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(count)]
    try:
        for sock in socks:
            sock.sendall(HEAD + b"Content-Length: %d\r\n\r\nx" % announced)
        yield socks
    finally:
        for sock in socks:
            sock.close()


@pytest_twisted.ensureDeferred
async def test_announced_but_unsent_bytes_do_not_block_other_uploads(serve):
    service = await serve(ThresholdApp(), max_pending_bytes=64 * MIB)
    with _idle_uploads(service.port.getHost().port, 2, 60 * MIB):  # small sends: they fit the socket buffers
        await wait_for(lambda: len(service.port.factory.connections) == 2, what="both idle uploads connected")
        response = await slicer_post(service.url + "/predict", _large_fields())
        assert response.status_code == 200, response.text[:200]
        assert service.budget.used < 4 * MIB  # two bytes held, not 120 MiB
    await wait_for(lambda: service.budget.used == 0, what="the budget to be given back")


@pytest_twisted.ensureDeferred
async def test_chunked_bodies_are_counted_against_the_budget(serve):
    service = await serve(ThresholdApp(), max_pending_bytes=8 * MIB)
    head = HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
    piece = b"x" * MIB
    with socket.create_connection(("127.0.0.1", service.port.getHost().port), timeout=10) as held:
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(6))
        await deferToThread(held.sendall, head + chunks)  # and not the last chunk: the body stays open
        await wait_for(lambda: service.budget.used >= 6 * MIB, what="the chunked body's bytes charged")
        metrics = (await call("GET", service.url + "/metrics")).text
        assert "tomaat_pending_body_bytes 0.0" not in metrics
        refused = await slicer_post(service.url + "/predict", _large_fields())
        assert refused.status_code == 503 and "too many large uploads" in refused.json()[0]["content"]
    await wait_for(lambda: service.budget.used == 0, what="the budget to be given back")
    assert (await slicer_post(service.url + "/predict", _large_fields())).status_code == 200


@pytest_twisted.ensureDeferred
async def test_a_request_line_sent_a_byte_at_a_time_is_cut_off(serve):
    service = await serve(ThresholdApp(), receive_timeout=1.0, idle_timeout=30)
    started = time.monotonic()
    answer = await deferToThread(raw_exchange, service.port.getHost().port, b"GET /hea", trickle=True, limit=10)
    assert time.monotonic() - started < 5  # closed at the 1 s deadline, not after the idle timeout of 30 s
    assert answer == b""


@pytest_twisted.ensureDeferred
async def test_health_answers_while_idle_connections_fill_the_caps(serve):
    service = await serve(ThresholdApp(), max_connections=20, max_connections_per_address=10)
    port = service.port.getHost().port
    socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(30)]
    try:
        await wait_for(lambda: len(service.port.factory.connections) <= 10, what="the oldest idle ones closed")
        for _ in range(3):
            health = await call("GET", service.url + "/health")
            assert health.status_code == 200 and health.json()["status"] == "ok"
        assert len(service.port.factory.connections) <= 10
    finally:
        for sock in socks:
            sock.close()
    assert (await slicer_post(service.url + "/predict", _large_fields())).status_code == 200


@pytest_twisted.ensureDeferred
async def test_a_peer_trickling_its_answer_is_cut_off_when_the_callers_deadline_passes():
    """The client, the announcer and the PACS loop read answers through one reader (net/http_client.py). A peer
    that sends a byte a second would keep a connection open after the caller gave up; it is closed instead."""
    import threading

    from twisted.internet import defer, reactor

    from tomaat.net.http_client import HttpClient

    listener = socket.create_server(("127.0.0.1", 0))
    closed_after: list[float] = []

    def trickle():
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\nContent-Type: application/json\r\n\r\n")
            began = time.monotonic()
            try:
                while time.monotonic() - began < 20:
                    conn.sendall(b" ")
                    time.sleep(0.1)
            except OSError:  # the client closed the connection
                closed_after.append(time.monotonic() - began)

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    client = HttpClient(reactor)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/info"
    started = time.monotonic()
    try:
        await client.get(url, timeout=1.0, limit=1 << 20)
        raise AssertionError("a trickling answer was read whole")
    except defer.TimeoutError:
        pass
    assert time.monotonic() - started < 3
    await deferToThread(thread.join, 10)
    listener.close()
    assert closed_after and closed_after[0] < 3, closed_after  # not left sending for its 20 s
