"""TLS trust on first use: remembered per host:port, pinned ahead with a fingerprint, a changed certificate refused."""

from __future__ import annotations

import json
import logging

import pytest
import pytest_twisted
from client_support import one_line_error, run_cli
from test_server_all_types import EverythingApp

from tomaat.client import AsyncClient, CertificateChanged
from tomaat.server.service import TomaatService


@pytest_twisted.ensureDeferred
async def test_first_use_then_pinning_then_a_changed_certificate(serve, tmp_path, caplog):
    # started by hand: it is stopped mid-test to free its port for a server with another certificate
    first = TomaatService(
        app=EverythingApp(), tls=True, state_dir=str(tmp_path / "first"), port=0, interface="127.0.0.1"
    )
    await first.listen()
    port = first.port.getHost().port
    netloc = f"127.0.0.1:{port}"
    known = tmp_path / "known_hosts.json"

    with caplog.at_level(logging.WARNING, logger="tomaat.client"):
        info = await AsyncClient(first.url, known_hosts=str(known)).info()
    assert f"trusting {netloc} on first use, certificate fingerprint {first.fingerprint}" in caplog.text
    assert info.metadata["tls_fingerprint"] == first.fingerprint
    assert json.loads(known.read_text()) == {netloc: first.fingerprint}  # remembered on first use
    assert (await AsyncClient(first.url, known_hosts=str(known)).info()).protocol == 2  # and trusted after

    with pytest.raises(CertificateChanged, match="not the pinned"):
        await AsyncClient(first.url, known_hosts=str(tmp_path / "other.json"), fingerprint="00" * 32).info()
    pinned = AsyncClient(first.url, known_hosts=str(tmp_path / "other.json"), fingerprint=first.fingerprint.lower())
    assert (await pinned.info()).protocol == 2

    await first.stop()
    second = await serve(EverythingApp(), tls=True, state_dir=str(tmp_path / "second"), port=port)
    assert second.fingerprint != first.fingerprint
    with pytest.raises(CertificateChanged) as caught:
        await AsyncClient(second.url, known_hosts=str(known)).info()
    message = str(caught.value)
    assert f"remembered {first.fingerprint}, now {second.fingerprint}" in message and netloc in message
    assert json.loads(known.read_text()) == {netloc: first.fingerprint}  # not overwritten

    insecure = AsyncClient(second.url, known_hosts=str(known), insecure=True)
    assert (await insecure.info()).protocol == 2
    assert json.loads(known.read_text()) == {netloc: first.fingerprint}  # --insecure remembers nothing

    # the command line: the same refusal in one line, then --trust with the new fingerprint
    (tmp_path / "tomaat").mkdir()
    (tmp_path / "tomaat" / "known_hosts.json").write_text(known.read_text())
    refused = await run_cli(["interface", second.url], tmp_path)
    assert refused.returncode == 1
    line = one_line_error(refused)
    assert first.fingerprint in line and second.fingerprint in line
    trusted = await run_cli(["interface", second.url, "--trust", second.fingerprint], tmp_path)
    assert trusted.returncode == 0, trusted.stderr
    assert f"TLS fingerprint: {second.fingerprint}" in trusted.stdout
    assert json.loads((tmp_path / "tomaat" / "known_hosts.json").read_text()) == {netloc: second.fingerprint}
