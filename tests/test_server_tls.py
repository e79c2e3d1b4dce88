"""HTTPS by default: a self-signed certificate made once, kept, and announced by its v1 fingerprint."""

from __future__ import annotations

import re
import ssl

import pytest_twisted
from clients import call, slicer_post
from conftest import v1_base64
from twisted.internet.threads import deferToThread

from examples.threshold import ThresholdApp
from tomaat.tls import fingerprint

V1_FINGERPRINT = re.compile(r"^([0-9A-F]{2}:){31}[0-9A-F]{2}$")


@pytest_twisted.ensureDeferred
async def test_self_signed_certificate_is_served_kept_and_fingerprinted(serve, tmp_path, phantom):
    service = await serve(ThresholdApp(), tls=True, state_dir=str(tmp_path))
    assert service.url.startswith("https://")
    port = service.port.getHost().port
    served = await deferToThread(ssl.get_server_certificate, ("127.0.0.1", port))
    info = (await call("GET", service.url + "/info", verify=False)).json()
    assert V1_FINGERPRINT.match(info["tls_fingerprint"])
    assert info["tls_fingerprint"] == fingerprint(served.encode("ascii"))
    assert (tmp_path / "tls-key.pem").stat().st_mode & 0o077 == 0

    response = await slicer_post(service.url + "/predict", {"images": v1_base64(phantom), "threshold": "250"})
    assert response.status_code == 200

    again = await serve(ThresholdApp(), tls=True, state_dir=str(tmp_path))
    assert again.fingerprint == service.fingerprint
