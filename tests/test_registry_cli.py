"""The operator's command line, and `tomaat-registry serve` as real processes: restarts, two daemons, TLS."""

from __future__ import annotations

import json
import re
import sys

import pytest
import requests
import test_registry_support as support
from click.testing import CliRunner
from test_cli_serve import free_port
from test_registry_support import BACKENDS, Daemon, assert_no_key_material, database, dump_database, payload

from tomaat.net import tls
from tomaat.registry import cli

db = support.db  # a fixture shared with the other registry tests


def run(*args, input=None):
    return CliRunner().invoke(cli.main, list(args), input=input)


def create(db: str, owner: str = "Lab X <x@example.org>") -> tuple[str, str]:
    """(key, key id) as an operator gets them."""
    result = run("keys", "create", "--owner", owner, "--db", db)
    assert result.exit_code == 0, result.output
    key = result.stdout.strip()
    key_id = re.search(r"Created key ([0-9a-f]{12})", result.stderr).group(1)
    return key, key_id


def listing(db: str) -> list[dict]:
    result = run("keys", "list", "--json", "--db", db)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_keys_create_prints_the_key_once_and_stores_only_its_hash(db):
    key, key_id = create(db)
    assert re.fullmatch(r"[0-9a-f]{64}", key)
    other, _ = create(db, "Lab Y")
    assert other != key
    table = run("keys", "list", "--db", db)
    assert table.exit_code == 0
    assert key_id in table.stdout and "Lab X <x@example.org>" in table.stdout and "never" in table.stdout
    [first, second] = listing(db)
    assert (first["id"], first["owner"], first["revoked"], first["last_used"]) == (
        key_id,
        "Lab X <x@example.org>",
        None,
        None,
    )
    assert second["owner"] == "Lab Y"
    for secret in (key, other):
        assert_no_key_material(secret, table.output + json.dumps(listing(db)), "keys list")
        assert_no_key_material(secret, dump_database(db), "the database")


def test_keys_revoke_by_id_by_key_and_from_stdin(db):
    key_a, id_a = create(db, "a")
    key_b, id_b = create(db, "b")
    key_c, id_c = create(db, "c")
    result = run("keys", "revoke", id_a, "--db", db)
    assert result.exit_code == 0 and f"Revoked key {id_a} (a)" in result.stdout
    result = run("keys", "revoke", key_b.upper(), "--db", db)
    assert result.exit_code == 0 and f"Revoked key {id_b} (b)" in result.stdout
    result = run("keys", "revoke", "-", "--db", db, input=key_c + "\n")
    assert result.exit_code == 0 and f"Revoked key {id_c} (c)" in result.stdout
    assert all(entry["revoked"] is not None for entry in listing(db))
    assert "revoked 20" in run("keys", "list", "--db", db).stdout
    again = run("keys", "revoke", id_a, "--db", db)
    assert again.exit_code == 0 and "already revoked" in again.stdout
    for secret in (key_b, key_c):
        assert_no_key_material(secret, result.output + again.output, "revoke's output")


def test_operator_mistakes_get_clear_messages(db):
    create(db)
    unknown = run("keys", "revoke", "0123456789ab", "--db", db)
    assert unknown.exit_code == 1 and "no key with id 0123456789ab" in unknown.output
    malformed = run("keys", "revoke", "not-an-id", "--db", db)
    assert malformed.exit_code == 2 and "12 hexadecimal characters" in malformed.output
    empty_owner = run("keys", "create", "--owner", "  ", "--db", db)
    assert empty_owner.exit_code == 2 and "the owner is empty" in empty_owner.output
    assert len(listing(db)) == 1


def test_unsupported_or_unreachable_databases():
    result = run("keys", "list", "--db", "mysql://user@host/db")
    assert result.exit_code == 2 and "unsupported database mysql://" in result.output
    # a closed port, and a password that must not show in the message
    result = run("keys", "list", "--db", "postgresql://someone:hunter22@127.0.0.1:1/nothing")
    assert result.exit_code == 1 and "PostgreSQL postgresql://someone:***@127.0.0.1:1/nothing" in result.output
    assert "hunter22" not in result.output


def _discover(daemon: Daemon, **kwargs) -> list[dict]:
    response = requests.get(daemon.url + "/discover", timeout=10, **kwargs)
    assert response.status_code == 200
    return response.json()


@pytest.mark.parametrize("kind", [pytest.param(*b.values, marks=b.marks, id=b.id) for b in BACKENDS])
def test_a_restarted_daemon_keeps_announcements(kind, tmp_path):
    with database(kind, tmp_path) as target:
        key, _ = create(target)
        first = Daemon("--no-tls", "--db", target)
        try:
            answer = requests.post(first.url + "/announce", json=payload(key), timeout=10).json()
            assert answer["status"] == 0
        finally:
            assert first.stop() == 0
        second = Daemon("--no-tls", "--db", target)
        try:
            assert [s["SID"] for s in _discover(second)] == [answer["SID"]]
        finally:
            second.stop()
        for daemon in (first, second):
            assert_no_key_material(key, daemon.output, "the daemon's log")
        assert "registry serving on http://127.0.0.1:" in first.output


@support.needs_postgres
def test_two_daemons_serve_one_postgresql_registry(tmp_path):
    with database("postgresql", tmp_path) as target:
        # started together on a database without tables: both create the schema at once
        one, two = Daemon("--no-tls", "--db", target, wait=False), Daemon("--no-tls", "--db", target, wait=False)
        try:
            one.wait_until_serving()
            two.wait_until_serving()
            key, key_id = create(target)
            answer = requests.post(one.url + "/announce", json=payload(key), timeout=10).json()
            assert answer["status"] == 0
            assert [s["SID"] for s in _discover(two)] == [answer["SID"]]
            # re-announced through the other one: still one service, same SID
            again = requests.post(two.url + "/announce", json=payload(key, name="renamed"), timeout=10).json()
            assert again["SID"] == answer["SID"]
            assert [s["name"] for s in _discover(one)] == ["renamed"]
            assert run("keys", "revoke", key_id, "--db", target).exit_code == 0
            assert _discover(one) == [] and _discover(two) == []
        finally:
            one.stop()
            two.stop()
        for daemon in (one, two):
            assert_no_key_material(key, daemon.output, "the daemon's log")


def test_the_daemon_serves_tls_with_a_self_signed_certificate(tmp_path):
    target = str(tmp_path / "registry.sqlite3")
    key, _ = create(target)
    state = tmp_path / "state"
    port = free_port()  # a kept certificate belongs to a port (port 0 gets a fresh one each start)
    daemon = Daemon("--db", target, "--state-dir", str(state), "--port", str(port))
    try:
        assert daemon.url.startswith("https://")
        url = daemon.url.replace("127.0.0.1", "localhost")  # the certificate names localhost
        [cert] = [str(path) for path in state.glob("tls-cert-*.pem")]  # one certificate per port
        answer = requests.post(url + "/announce", json=payload(key), timeout=10, verify=cert).json()
        assert answer["status"] == 0
        assert len(requests.get(url + "/discover", timeout=10, verify=cert).json()) == 1
    finally:
        daemon.stop()
    printed = re.search(r"fingerprint \(SHA-256\): ([0-9A-F:]{95})", daemon.output).group(1)
    assert printed == tls.file_fingerprint(cert) and cert.endswith(f"tls-cert-{port}.pem")
    assert "TOMAAT-Slicer checks a registry's certificate against the system's certificate authorities" in daemon.output


def test_the_daemon_refuses_to_start_on_a_bad_database(tmp_path):
    result = run("serve", "--db", "mysql://x@y/z", "--no-tls")
    assert result.exit_code == 2 and "unsupported database" in result.output


def test_postgresql_without_its_driver_says_which_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as on an install without tomaat[postgres]
    result = run("keys", "list", "--db", "postgresql://user:pw@127.0.0.1:5/db")
    assert result.exit_code == 2
    assert "postgresql:// needs the PostgreSQL driver: pip install 'tomaat[postgres]'" in result.output
