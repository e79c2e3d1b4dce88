"""The server-side announcer against a real registry on a real port: announcing, renewing, outages, shutdown."""

from __future__ import annotations

import pytest
import pytest_twisted
import test_registry_support as support
from test_registry_support import assert_no_key_material, eventually, get_json, make_key, start_registry
from twisted.internet import protocol, reactor

from tomaat.net import tls
from tomaat.net.trust import pin_fingerprint, trust_certificate
from tomaat.server.announcer import Announcer, backoff_delay, registry_base

logs = support.logs  # a fixture shared with the registry tests

PAYLOAD = {
    "prediction_url": "http://127.0.0.1:9000/predict",
    "interface_url": "http://127.0.0.1:9000/interface",
    "name": "Announced service",
    "modality": "MRI",
    "anatomy": "Prostate",
    "task": "Segmentation",
    "description": "announced by the test",
}


@pytest.fixture
def sqlite_db(tmp_path):
    return str(tmp_path / "registry.sqlite3")


def announcer(url: str, key: str, **options) -> Announcer:
    options = {"period": 30.0, "first_retry": 0.05, "request_timeout": 5.0, "stop_timeout": 2.0, **options}
    return Announcer(reactor, url, key, PAYLOAD, **options)


async def discovered(registry) -> list[dict]:
    return await get_json(registry.url + "/discover")


@pytest_twisted.ensureDeferred
async def test_announces_renews_and_withdraws(sqlite_db, logs):
    key, _ = make_key(sqlite_db)
    registry = await start_registry(sqlite_db)
    service = announcer(registry.url, key, period=0.2)
    try:
        assert service.announced_at == ""
        service.start()
        [entry] = await eventually(lambda: discovered(registry))
        assert service.announced_at == registry.url and service.sid == entry["SID"]
        assert entry["name"] == PAYLOAD["name"] and entry["api_key"] == ""

        async def renewed():
            [later] = await discovered(registry)
            return later["creation_time"] > entry["creation_time"] and later["SID"] == entry["SID"]

        await eventually(renewed)
        assert service.announcements >= 2 and service.failures == 0
        assert await service.stop() is True
        assert service.announced_at == ""
        assert await discovered(registry) == []
    finally:
        await service.stop()
        await registry.stop()
    assert_no_key_material(key, logs.text + repr(service), "the logs")


@pytest_twisted.ensureDeferred
async def test_keeps_retrying_while_the_registry_is_down(sqlite_db, logs):
    key, _ = make_key(sqlite_db)
    registry = await start_registry(sqlite_db)
    port = registry.port.getHost().port
    url = registry.url
    await registry.stop()
    service = announcer(url, key, period=0.5)
    registry = None
    try:
        service.start()
        await eventually(lambda: service.failures >= 3)
        assert service.announced_at == ""
        assert f"to {url} failed" in logs.text and "could not reach the registry: ConnectionRefusedError" in logs.text
        registry = await start_registry(sqlite_db, port=port)
        await eventually(lambda: service.announced_at == url)
        assert len(await discovered(registry)) == 1
        assert service.failures == 0
    finally:
        await service.stop()
        if registry is not None:
            await registry.stop()
    assert_no_key_material(key, logs.text, "the logs")


@pytest_twisted.ensureDeferred
async def test_a_refused_key_is_logged_and_retried_without_crashing(sqlite_db, logs):
    make_key(sqlite_db)
    registry = await start_registry(sqlite_db)
    wrong = make_key(str(sqlite_db) + ".other")[0]  # a real key, of another registry
    service = announcer(registry.url, wrong, period=0.3)
    try:
        service.start()
        await eventually(lambda: service.failures >= 3)
        assert service.announced_at == "" and await discovered(registry) == []
        assert "the registry refused (HTTP 401)" in logs.text
        assert "unknown or revoked api_key" in logs.text
    finally:
        assert await service.stop() is False  # the registry does not know the key: nothing withdrawn
        await registry.stop()
    assert_no_key_material(wrong, logs.text, "the logs")


class _Silent(protocol.Protocol):
    """Accepts connections and never answers: a registry hanging mid-request."""


@pytest_twisted.ensureDeferred
async def test_stop_gives_up_on_a_silent_registry_within_its_timeout(logs):
    factory = protocol.Factory.forProtocol(_Silent)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    url = f"http://127.0.0.1:{port.getHost().port}"
    key = "ab" * 32
    service = announcer(url, key, stop_timeout=0.3, request_timeout=0.3, period=1.0)
    try:
        service.start()
        await eventually(lambda: service.failures >= 1)
        started = reactor.seconds()
        assert await service.stop() is False
        # at most one stop_timeout for the pending announcement, one for the withdrawal
        assert reactor.seconds() - started < 2.0
        assert "could not withdraw" in logs.text and "no answer within 0.3 s" in logs.text
    finally:
        await port.stopListening()
    assert_no_key_material(key, logs.text, "the logs")


@pytest_twisted.ensureDeferred
async def test_https_registry_by_pinned_fingerprint_or_trusted_certificate(sqlite_db, tmp_path, logs):
    key, _ = make_key(sqlite_db)
    cert, private = tls.ensure_certificate(str(tmp_path / "state"))
    registry = await start_registry(sqlite_db, tls=True, cert=cert, key=private)
    assert registry.url.startswith("https://")
    pinned = announcer(registry.url, key, tls=pin_fingerprint(registry.fingerprint))
    by_file = announcer(registry.url.replace("127.0.0.1", "localhost"), key, tls=trust_certificate(cert))
    stranger = announcer(registry.url, key, tls=pin_fingerprint("00" * 32))
    try:
        for each in (pinned, by_file, stranger):
            each.start()
        await eventually(lambda: pinned.announced_at and by_file.announced_at and stranger.failures >= 2)
        assert stranger.announced_at == ""
        assert "the TLS handshake failed" in logs.text
        assert pinned.sid == by_file.sid  # one key, one prediction_url: one service
    finally:
        for each in (pinned, by_file, stranger):
            await each.stop()
        await registry.stop()
    assert_no_key_material(key, logs.text, "the logs")


def test_backoff_doubles_and_is_capped_at_the_period():
    delays = [backoff_delay(n, 5.0, 1600.0) for n in range(1, 12)]
    assert 4.0 <= delays[0] <= 5.0 and 8.0 <= delays[1] <= 10.0
    assert all(delay <= 1600.0 for delay in delays)
    assert delays[-1] >= 1600.0 * 0.8


def test_configuration_mistakes_are_caught_early():
    assert registry_base("https://registry:8001/announce/") == "https://registry:8001"
    assert registry_base("http://registry:8001") == "http://registry:8001"
    with pytest.raises(ValueError, match="not an http"):
        registry_base("registry:8001")
    with pytest.raises(ValueError, match="lacks modality"):
        Announcer(reactor, "http://r:8001", "k", {k: v for k, v in PAYLOAD.items() if k != "modality"})
    with pytest.raises(ValueError, match="not a SHA-256 fingerprint"):
        pin_fingerprint("AB:CD")
