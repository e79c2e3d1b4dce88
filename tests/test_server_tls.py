"""HTTPS by default: a self-signed certificate made once, kept, and announced by its v1 fingerprint."""

from __future__ import annotations

import os
import re
import ssl

import pytest_twisted
from clients import call, slicer_post
from conftest import v1_base64
from test_cli_serve import free_port
from twisted.internet.threads import deferToThread

from examples.threshold import ThresholdApp
from tomaat.net import tls
from tomaat.net.tls import fingerprint
from tomaat.server.service import TomaatService

V1_FINGERPRINT = re.compile(r"^([0-9A-F]{2}:){31}[0-9A-F]{2}$")


@pytest_twisted.ensureDeferred
async def test_self_signed_certificate_is_served_kept_per_port_and_fingerprinted(serve, tmp_path, phantom):
    port = free_port()
    first = TomaatService(app=ThresholdApp(), tls=True, state_dir=str(tmp_path), port=port, interface="127.0.0.1")
    await first.listen()
    try:
        assert first.url.startswith("https://")
        served = await deferToThread(ssl.get_server_certificate, ("127.0.0.1", port))
        info = (await call("GET", first.url + "/info", verify=False)).json()
        assert V1_FINGERPRINT.match(info["tls_fingerprint"])
        assert info["tls_fingerprint"] == fingerprint(served.encode("ascii"))
        assert (tmp_path / f"tls-key-{port}.pem").stat().st_mode & 0o077 == 0

        response = await slicer_post(first.url + "/predict", {"images": v1_base64(phantom), "threshold": "250"})
        assert response.status_code == 200

        # TOMAAT-Slicer trusts one host and port per fingerprint: another service gets its own certificate
        other = await serve(ThresholdApp(), tls=True, state_dir=str(tmp_path), port=free_port())
        assert other.fingerprint != first.fingerprint
    finally:
        await first.stop()
    again = await serve(ThresholdApp(), tls=True, state_dir=str(tmp_path), port=port)
    assert again.fingerprint == first.fingerprint  # kept for its port across restarts


def test_the_certificate_older_versions_shared_goes_to_the_first_port_started(tmp_path):
    shared_cert, shared_key = tls.ensure_certificate(str(tmp_path))  # as older versions kept it, for every port
    before = tls.file_fingerprint(shared_cert)
    cert, _ = tls.ensure_certificate(str(tmp_path), port=9000)
    assert tls.file_fingerprint(cert) == before  # the service users pinned most likely keeps its fingerprint
    assert not os.path.exists(shared_cert) and not os.path.exists(shared_key)
    other, _ = tls.ensure_certificate(str(tmp_path), port=9001)
    assert tls.file_fingerprint(other) != before


@pytest_twisted.ensureDeferred
async def test_a_random_port_gets_a_fresh_certificate_and_writes_none(serve, tmp_path):
    one = await serve(ThresholdApp(), tls=True, state_dir=str(tmp_path / "state"))
    two = await serve(ThresholdApp(), tls=True, state_dir=str(tmp_path / "state"))
    assert one.fingerprint != two.fingerprint
    assert not (tmp_path / "state").exists()
