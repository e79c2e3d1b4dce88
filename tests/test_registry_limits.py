"""The registry under hostile traffic: failed-authentication rate limiting and services per key."""

from __future__ import annotations

import pytest_twisted
from test_registry_support import call, make_key, payload, post, start_registry

BAD_KEY = "f" * 64


@pytest_twisted.ensureDeferred
async def test_repeated_bad_keys_get_429_with_retry_after_then_recover(tmp_path):
    now = [1000.0]
    target = str(tmp_path / "registry.sqlite3")
    key, _ = make_key(target)
    registry = await start_registry(target, clock=lambda: now[0], auth_failures=3, auth_window=60)
    try:
        for _ in range(3):
            code, answer = await post(registry.url + "/announce", payload(BAD_KEY))
            assert code == 401
        code, headers, raw = await call("POST", registry.url + "/announce", payload(key))
        assert code == 429, raw
        assert headers.getRawHeaders("Retry-After") == ["60"]
        assert b"too many requests with unknown or revoked keys" in raw
        code, _, _ = await call("POST", registry.url + "/withdraw", payload(key))
        assert code == 429
        now[0] += 61
        code, answer = await post(registry.url + "/announce", payload(key))
        assert code == 200, answer
    finally:
        await registry.stop()


@pytest_twisted.ensureDeferred
async def test_a_key_may_hold_only_so_many_services(tmp_path):
    target = str(tmp_path / "registry.sqlite3")
    key, _ = make_key(target)
    registry = await start_registry(target, max_services_per_key=2)
    try:
        for port in (1, 2):
            code, _ = await post(registry.url + "/announce", payload(key, prediction_url=f"http://h:{port}/predict"))
            assert code == 200
        code, answer = await post(registry.url + "/announce", payload(key, prediction_url="http://h:3/predict"))
        assert code == 403
        assert "already announces 2 services" in answer["error"]
        code, _ = await post(registry.url + "/announce", payload(key, prediction_url="http://h:2/predict"))
        assert code == 200  # renewing one it holds is always allowed
    finally:
        await registry.stop()
