"""HTTPS in large pieces (issue 25): every byte arrives both ways, in few writes, and TLS's guarantees still hold."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import ssl
import subprocess
import sys

import numpy as np
import pytest
import pytest_twisted
import SimpleITK as sitk
from clients import call
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.web import resource

from examples.threshold import ThresholdApp
from tomaat.client import AsyncClient
from tomaat.config import ListenConfig
from tomaat.net.body import body_bytes
from tomaat.net.bulk_tls import SEND_SIZE, BulkTLSProtocol
from tomaat.net.daemon import server_endpoint
from tomaat.net.http_client import HttpClient
from tomaat.net.tls import fingerprint as pem_fingerprint
from tomaat.net.trust import pin_fingerprint
from tomaat.net.web import QuietSite

MIB = 1 << 20


class Echo(resource.Resource):
    """Answers the body it was sent, with its digest and what the server saw of the connection."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.socket_writes: list[int] = []

    def render_POST(self, request):
        body = bytes(body_bytes(request.content))
        tls = request.channel.transport
        tcp = tls.transport
        sent = tcp.write

        def counted(data):
            self.socket_writes.append(len(data))
            sent(data)

        tcp.write = counted  # what goes to the socket from here on: the answer
        request.setHeader(b"X-Digest", hashlib.sha256(body).hexdigest().encode("ascii"))
        request.setHeader(b"X-Secure", b"yes" if request.isSecure() else b"no")
        request.setHeader(b"X-Layer", type(tls).__name__.encode("ascii"))
        return body


@pytest.fixture
def echo_server(tmp_path):
    """An Echo site behind the endpoint a service listens on (daemon.server_endpoint), over HTTPS."""
    config = ListenConfig(port=0, listen_address="127.0.0.1", tls=True, state_dir=str(tmp_path / "state"))
    endpoint, fingerprint = server_endpoint(reactor, config)
    echo = Echo()
    port = pytest_twisted.blockon(endpoint.listen(QuietSite(echo)))
    yield f"https://127.0.0.1:{port.getHost().port}", fingerprint, echo, port.getHost().port
    pytest_twisted.blockon(port.stopListening())


@pytest_twisted.ensureDeferred
async def test_a_large_upload_and_answer_arrive_whole_with_a_foreign_client(echo_server):
    url, fingerprint, echo, port = echo_server
    served = await deferToThread(ssl.get_server_certificate, ("127.0.0.1", port))
    assert pem_fingerprint(served.encode("ascii")) == fingerprint  # what TOMAAT-Slicer and our client pin
    body = os.urandom(8 * MIB + 12345)  # not a multiple of a record, nor of a write
    answer = await call("POST", url, data=body)
    assert answer.status_code == 200
    assert answer.headers["X-Digest"] == hashlib.sha256(body).hexdigest()  # the upload arrived whole
    assert answer.content == body  # and the answer too
    assert answer.headers["X-Secure"] == "yes"  # request.isSecure(), as under listenSSL
    assert answer.headers["X-Layer"] == BulkTLSProtocol.__name__
    # 8 MiB went to the socket in large pieces, not one 16 KiB record at a time (530 writes)
    assert sum(echo.socket_writes) > len(body)
    assert len(echo.socket_writes) <= len(body) // SEND_SIZE + 4, echo.socket_writes[:10]


@pytest_twisted.ensureDeferred
async def test_our_client_sends_and_receives_large_bodies_over_the_bulk_layer(echo_server):
    url, fingerprint, echo, _ = echo_server
    client = HttpClient(reactor, pin_fingerprint(fingerprint))
    try:
        body = os.urandom(5 * MIB + 7)
        status, answer = await client.request("POST", url, data=body, timeout=60)
        assert status == 200 and answer == body
        # the pin holds on this layer too: another fingerprint fails the handshake
        stranger = HttpClient(reactor, pin_fingerprint("00" * 32))
        with pytest.raises(Exception) as refused:
            await stranger.request("POST", url, data=b"x", timeout=30)
        assert "certificate" in repr(refused.value).lower() or "SSL" in repr(refused.value)
    finally:
        await client.close()


def _handshake(port: int, context: ssl.SSLContext) -> tuple[str, str]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw) as tls:
            name, version, _ = tls.cipher()
            return name, version


def _client_context(lowest: ssl.TLSVersion, highest: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version, context.maximum_version = lowest, highest
    context.set_ciphers("ALL:@SECLEVEL=0")  # a client able to speak TLS 1.0 and 1.1 if the server would
    return context


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")  # deprecated: what is refused
@pytest_twisted.ensureDeferred
async def test_aes_gcm_is_chosen_and_tls_below_1_2_is_refused(echo_server):
    _, _, _, port = echo_server
    # a client offering OpenSSL's default order (AES-256 first) gets AES-128-GCM: the server's order decides
    assert await deferToThread(_handshake, port, _default_client()) == (
        "TLS_AES_128_GCM_SHA256",
        "TLSv1.3",
    )
    name, version = await deferToThread(
        _handshake, port, _client_context(ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2)
    )
    assert version == "TLSv1.2" and "GCM" in name and name.startswith("ECDHE")
    for old in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        with pytest.raises(ssl.SSLError) as refused:
            await deferToThread(_handshake, port, _client_context(old, old))
        # the server's alert, not a client unable to try: the same client speaks TLS 1.2 above
        assert "TLSV1_ALERT_PROTOCOL_VERSION" in str(refused.value)


def _default_client() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@pytest_twisted.ensureDeferred
async def test_a_volume_through_our_client_over_https_keeps_its_geometry(serve, tmp_path):
    service = await serve(ThresholdApp(), tls=True, state_dir=str(tmp_path / "state"))
    array = np.random.default_rng(3).normal(400, 200, (96, 80, 72)).astype(np.float32)  # 2 MiB
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.7, 0.8, 1.9))
    image.SetOrigin((-12.5, 30.0, 7.25))
    image.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    path = str(tmp_path / "volume.mha")
    sitk.WriteImage(image, path)
    with open(path, "rb") as handle:
        data = handle.read()
    client = AsyncClient(service.url, fingerprint=service.fingerprint, known_hosts=str(tmp_path / "known.json"))
    try:
        # from its file (read as it is sent) and from its bytes (sent from where they lie, uncopied)
        results = [await client.predict({"images": volume, "threshold": 500.0}) for volume in (path, data)]
    finally:
        await client.close()
    for result in results:
        label = result.outputs[0].value
        assert label.GetSize() == image.GetSize()
        np.testing.assert_allclose(label.GetOrigin(), image.GetOrigin())
        np.testing.assert_allclose(label.GetSpacing(), image.GetSpacing())
        np.testing.assert_allclose(label.GetDirection(), image.GetDirection())
        assert int(sitk.GetArrayViewFromImage(label).astype(bool).sum()) == int((array >= 500.0).sum())


def test_the_latency_benchmark_prints_https_beside_the_http_floor():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.latency", "--quick", "--tls"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().endswith("OK"), done.stdout
    for scheme in ("http", "https"):
        assert f"float32 (0 MiB), {scheme}, median of 2 runs" in done.stdout
    for row in ("(a) ours, HTTPS", "(a) ours, HTTP", "(a') ours from a file, HTTPS", "(c) floor, HTTPS"):
        assert re.search(rf"^{re.escape(row)}\s+[0-9.]+\s+[0-9.]+", done.stdout, re.M), row
