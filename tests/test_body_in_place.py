"""Request bodies received in place, and their multipart delimiters found as they arrive (issue 25).

A connection receiving a body of known length reads the socket (or decrypts TLS records) straight into the
body's map; every other byte takes Twisted's way. The body is watched for its multipart delimiter as it
arrives, and the form is split from what was found. Both must change nothing a client can see: the same
fields, the same labels on the same grid, the same answers to pipelined requests and to bodies cut anywhere.
"""

from __future__ import annotations

import io
import json
import random
import socket
import ssl

import numpy as np
import pytest
import pytest_twisted
import SimpleITK as sitk
from conftest import assert_same_grid
from twisted.internet.threads import deferToThread

from examples.threshold import ThresholdApp
from tomaat.client import AsyncClient
from tomaat.net import body as body_module
from tomaat.net.body import BodyBuffer, Budget
from tomaat.net.web import GuardedChannel
from tomaat.protocol.volumes import write_image
from tomaat.server.form import delimiter_of, read_fields

BOUNDARY = "a1b2c3"


def _all(data: bytes, needle: bytes) -> list[int]:
    found, at = [], data.find(needle)
    while at >= 0:
        found.append(at)
        at = data.find(needle, at + 1)
    return found


def _form(fields: list[tuple[str, bytes]], boundary: str = BOUNDARY) -> bytes:
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value + b"\r\n"
        for name, value in fields
    ]
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


def _received(data: bytes, pieces: list[int], watch: bytes | None) -> BodyBuffer:
    """A body as a connection receives it: in the given piece sizes, half of them written, half in place."""
    body = BodyBuffer(len(data), Budget(0), watch)
    at, turn = 0, 0
    sizes = iter(pieces)
    while at < len(data):
        size = min(next(sizes, 1 << 16), len(data) - at)
        if turn % 2:
            with body.room(size) as room:
                room[:] = data[at : at + size]
            body.advance(size)
        else:
            body.write(data[at : at + size])
        at, turn = at + size, turn + 1
    body.finish()
    return body


@pytest.mark.parametrize("boundary", [BOUNDARY, "--", "a", "\r\n--"])
def test_every_delimiter_is_found_as_the_body_arrives_however_it_is_cut(boundary):
    """Delimiters split across pieces, overlapping ones (a boundary of dashes), pieces of one byte."""
    rng = random.Random(7)
    delimiter = b"\r\n--" + boundary.encode()
    value = bytearray(rng.randbytes(300_000))
    for at in rng.sample(range(len(value) - 20), 40):  # the delimiter, and near misses, inside the data
        value[at : at + len(delimiter) - rng.randint(0, 1)] = delimiter[: len(delimiter) - rng.randint(0, 1)]
    data = _form([("images", bytes(value)), ("threshold", b"300")], boundary)
    for pieces in ([1] * 3000 + [7, 13] * 500, [len(delimiter) - 1] * 5000, [rng.randint(1, 9000) for _ in range(400)]):
        body = _received(data, pieces, delimiter)
        try:
            assert body.found == _all(data, delimiter)
        finally:
            body.close()


def test_a_form_split_from_what_was_found_is_the_form_split_by_searching():
    rng = random.Random(3)
    data = _form([("images", rng.randbytes(200_000)), ("threshold", b"300"), ("empty", b"")])
    content_type = f"multipart/form-data; boundary={BOUNDARY}"
    body = _received(data, [rng.randint(1, 5000) for _ in range(200)], delimiter_of(content_type))
    try:
        assert body.found  # it was watched
        watched = {name: bytes(value) for name, value in read_fields(body, content_type).items()}
        assert watched == {name: bytes(value) for name, value in read_fields(io.BytesIO(data), content_type).items()}
        assert watched["threshold"] == b"300" and watched["empty"] == b""
    finally:
        body.close()


def test_a_body_of_delimiters_stops_being_watched_and_is_split_by_searching(monkeypatch):
    """Offsets are not kept without end: past FOUND_MOST the parser searches, and says the same."""
    monkeypatch.setattr(body_module, "FOUND_MOST", 10)
    content_type = f"multipart/form-data; boundary={BOUNDARY}"
    data = _form([(f"f{index}", b"x") for index in range(30)])
    body = _received(data, [100] * 100, delimiter_of(content_type))
    try:
        assert body.found is None
        assert len(read_fields(body, content_type)) == 30
    finally:
        body.close()


def test_only_a_multipart_form_is_watched():
    assert delimiter_of(b"multipart/form-data; boundary=xyz") == b"\r\n--xyz"
    assert delimiter_of("multipart/form-data") is None  # no boundary: the parser refuses it, as before
    assert delimiter_of(b"application/x-www-form-urlencoded") is None and delimiter_of(None) is None


def _volume() -> sitk.Image:
    """12 MiB of float32 on a rotated, offset, anisotropic grid: a body in huge pages, received in place."""
    array = np.random.default_rng(11).normal(300, 200, (48, 256, 256)).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.6, 0.7, 2.0))
    image.SetOrigin((-40.0, 22.5, -7.0))
    image.SetDirection((0, -1, 0, 1, 0, 0, 0, 0, 1))
    return image


@pytest.fixture
def in_place(monkeypatch):
    """The body bytes each connection received in place."""
    counted: list[int] = []
    real = GuardedChannel.body_received

    def body_received(self, count):
        counted.append(count)
        real(self, count)

    monkeypatch.setattr(GuardedChannel, "body_received", body_received)
    return counted


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
async def test_a_large_volume_is_received_in_place_and_labelled_exactly(serve, tmp_path, tls, in_place):
    service = await serve(ThresholdApp(), tls=tls, state_dir=str(tmp_path / "state"))
    client = AsyncClient(service.url, known_hosts=str(tmp_path / "kh.json"), insecure=tls)
    image = _volume()
    result = await client.predict({"images": image, "threshold": 300})
    labels = result["labels"]
    assert_same_grid(labels, image)
    expected = (sitk.GetArrayViewFromImage(image) >= 300).astype(np.uint8)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(labels), expected)
    volume = image.GetNumberOfPixels() * 4
    assert sum(in_place) > 0.9 * volume, f"{sum(in_place)} of {volume} bytes received in place"


def _request(port: int, body: bytes, boundary: str = BOUNDARY) -> bytes:
    return (
        f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def _answers(sock, count: int) -> list[tuple[int, bytes]]:
    """(status, body) of `count` answers read off one connection (Content-Length framed, as the server sends)."""
    data, answers = b"", []
    while len(answers) < count:
        head_end = data.find(b"\r\n\r\n")
        if head_end >= 0:
            head = data[:head_end].decode("latin-1")
            length = int(
                next(line.split(":")[1] for line in head.split("\r\n") if line.lower().startswith("content-length"))
            )
            if len(data) >= head_end + 4 + length:
                answers.append((int(head.split()[1]), data[head_end + 4 : head_end + 4 + length]))
                data = data[head_end + 4 + length :]
                continue
        chunk = sock.recv(1 << 16)
        assert chunk, f"the server closed the connection after {len(answers)} answers"
        data += chunk
    return answers


def _pipelined(port: int, tls: bool, pieces: list[int]) -> list[tuple[int, bytes]]:
    """Two requests on one connection, written in the given piece sizes: the second's first bytes arrive with
    the first's last ones, as a pipelining client sends them."""
    rng = np.random.default_rng(5)
    image = sitk.GetImageFromArray(rng.normal(300, 200, (4, 5, 6)).astype(np.float32))
    first = _form([("images", write_image(image, "mha", compress=False)), ("threshold", b"300")])
    second = _form([("images", write_image(image, "mha", compress=False)), ("threshold", b"900")], "zz")
    stream = _request(port, first) + _request(port, second, "zz")
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock = raw
    if tls:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        sock = context.wrap_socket(raw)
    with sock:
        at = 0
        for size in pieces:
            sock.sendall(stream[at : at + size])
            at += size
        sock.sendall(stream[at:])
        return _answers(sock, 2)


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
async def test_pipelined_requests_cut_anywhere_each_get_their_own_answer(serve, tmp_path, tls):
    """Which bytes go in place depends on how the reads fall (a read that takes headers and body together
    goes Twisted's way): the answers must not."""
    service = await serve(ThresholdApp(), tls=tls, state_dir=str(tmp_path / "state"))
    port = service.port.getHost().port
    for pieces in ([1] * 400, [3, 250, 1, 1, 90] * 10, [100_000]):
        answers = await deferToThread(_pipelined, port, tls, pieces)
        assert [status for status, _ in answers] == [200, 200], answers
        first, second = (_summary(body) for _, body in answers)
        assert "at or above 300:" in first and "at or above 900:" in second


def _summary(body: bytes) -> str:
    return next(item["content"] for item in json.loads(body) if item["type"] == "PlainText")
