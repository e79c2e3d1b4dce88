"""The registry under hostile traffic: failed-authentication rate limiting and services per key."""

from __future__ import annotations

import pytest_twisted
import test_registry_support as support
from test_registry_support import call, make_key, payload, post, start_registry

BAD_KEY = "f" * 64
db = support.db  # SQLite, and PostgreSQL where scripts/postgres.sh runs


@pytest_twisted.ensureDeferred
async def test_repeated_bad_keys_get_429_but_a_valid_key_never_does(db):
    """Behind one proxy every service shares an address: the bad keys of one must not expire the others."""
    now = [1000.0]
    key, _ = make_key(db)
    registry = await start_registry(db, clock=lambda: now[0], auth_failures=3, auth_window=60)
    try:
        for _ in range(3):
            code, answer = await post(registry.url + "/announce", payload(BAD_KEY))
            assert code == 401
        code, headers, raw = await call("POST", registry.url + "/announce", payload(BAD_KEY))
        assert code == 429, raw
        assert headers.getRawHeaders("Retry-After") == ["60"]
        assert b"too many requests with unknown or revoked keys" in raw
        code, answer = await post(registry.url + "/announce", payload(key))
        assert code == 200, answer
        code, _, _ = await call("POST", registry.url + "/withdraw", payload(key))
        assert code == 200
        now[0] += 61
        code, answer = await post(registry.url + "/announce", payload(BAD_KEY))
        assert code == 401, answer
    finally:
        await registry.stop()


@pytest_twisted.ensureDeferred
async def test_failed_authentications_are_counted_across_registry_processes(db):
    """Two registries on one database (as several processes behind a load balancer) share one count."""
    now = [1000.0]
    first = await start_registry(db, clock=lambda: now[0], auth_failures=4, auth_window=60)
    second = await start_registry(db, clock=lambda: now[0], auth_failures=4, auth_window=60)
    try:
        for registry in (first, second, first, second):
            code, _ = await post(registry.url + "/announce", payload(BAD_KEY))
            assert code == 401
        for registry in (first, second):
            code, _ = await post(registry.url + "/announce", payload(BAD_KEY))
            assert code == 429
    finally:
        await first.stop()
        await second.stop()


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
