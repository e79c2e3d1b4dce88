"""The registry's side of access control: services announce how clients must prove themselves, and a private
registry shows its list only to holders of a registry key. Real registries on real ports, SQLite and PostgreSQL."""

from __future__ import annotations

import json
import re
import time

import pytest
import pytest_twisted
import requests
import test_registry_support as support
from click.testing import CliRunner
from test_registry_support import (
    BACKENDS,
    Daemon,
    assert_no_key_material,
    call,
    get_json,
    make_key,
    payload,
    post,
)
from test_registry_support import start_registry as start

from tomaat.access import identity
from tomaat.protocol import registry as wire
from tomaat.registry import cli, store
from tomaat.registry.keys import generate_key, hash_key, service_id

db = support.db  # SQLite, and PostgreSQL where scripts/postgres.sh runs
registry = support.registry
logs = support.logs

CHALLENGE = 'Bearer realm="tomaat-registry"'
INVALID = CHALLENGE + ', error="invalid_token"'


def announced(key: str, access=None, **changes) -> dict:
    """An announcement as the server's own code builds it (protocol/registry.py), sent with key."""
    service = {name: payload(key)[name] for name in wire.TEXT_FIELDS}
    fields = wire.announcement_body("http://127.0.0.1:9000", service, {"licence": "MIT"}, access=access)
    return {**wire.announce_body(key, fields), **changes}


def create_key(db: str, *options: str, owner: str = "reader lab") -> tuple[str, str, str]:
    """(key, key id, what `keys create` wrote to stderr), issued by the operator's command line."""
    result = CliRunner().invoke(cli.main, ["keys", "create", "--owner", owner, *options, "--db", db])
    assert result.exit_code == 0, result.output
    key_id = re.search(r"Created key ([0-9a-f]{12})", result.stderr).group(1)
    return result.stdout.strip(), key_id, result.stderr


async def read(url: str, key: str | None = None, authorization: str | None = None):
    """(status, headers, body) of a GET, with `Authorization: Bearer key` or the given header."""
    if key is not None:
        authorization = f"Bearer {key}"
    headers = {b"Authorization": [authorization.encode("latin-1")]} if authorization is not None else None
    return await call("GET", url, headers=headers)


def refusal(code: int, headers, raw: bytes) -> tuple[int, str, str]:
    """(status, challenge, error) of a 401, after checking it has the registry's answer shape."""
    answer = json.loads(raw)
    assert answer["status"] == 1 and code == 401, (code, raw)
    [challenge] = headers.getRawHeaders("www-authenticate")
    return code, challenge, answer["error"]


# ---- access announced ----------------------------------------------------------------------------


def test_the_methods_are_the_ones_identities_are_proved_with():
    assert wire.ACCESS_METHODS == identity.METHODS


def test_an_open_service_announces_what_it_did_before():
    service = {name: payload("")[name] for name in wire.TEXT_FIELDS}
    before = wire.announcement_body("http://h:9000", service, {"licence": "MIT"})
    for access in (None, []):
        assert wire.announcement_body("http://h:9000", service, {"licence": "MIT"}, access=access) == before
    assert "access" not in before
    with_access = wire.announcement_body("http://h:9000", service, None, access=("token", "oidc"))
    assert with_access["access"] == ["token", "oidc"]


@pytest_twisted.ensureDeferred
async def test_access_is_announced_stored_discovered_and_shown(registry, db):
    key, _ = make_key(db)
    code, answer = await post(registry.url + "/announce", announced(key, access=["token", "oidc"]))
    assert (code, answer["status"]) == (200, 0), answer
    open_one = announced(key, prediction_url="http://open:9000/predict", interface_url="http://open:9000/interface")
    assert (await post(registry.url + "/announce", open_one))[0] == 200
    found = {entry["prediction_url"]: entry for entry in await get_json(registry.url + "/discover")}
    assert found["http://127.0.0.1:9000/predict"]["access"] == ["token", "oidc"]
    assert "access" not in found["http://open:9000/predict"]  # an open service's entry is as before
    assert found["http://127.0.0.1:9000/predict"]["licence"] == "MIT"
    # what the client reads back
    parsed = {entry["prediction_url"]: entry for entry in wire.parse_discover(list(found.values()))}
    assert parsed["http://127.0.0.1:9000/predict"]["access"] == ["token", "oidc"]
    assert "access" not in parsed["http://open:9000/predict"]
    code, _, page = await call("GET", registry.url + "/")
    assert code == 200 and page.decode().count("access: token, oidc") == 1
    [row] = store.SyncStore(db).run(lambda tx: tx.all("SELECT access FROM registry_services WHERE access IS NOT NULL"))
    assert json.loads(row[0]) == ["token", "oidc"]
    # an announcement is the service's whole state: announced again without access, it is open again
    assert (await post(registry.url + "/announce", announced(key, access=None)))[0] == 200
    assert all("access" not in entry for entry in await get_json(registry.url + "/discover"))
    assert "access:" not in (await call("GET", registry.url + "/"))[2].decode()


@pytest.mark.parametrize(
    "value, expected",
    [
        ("token", "invalid access: a JSON str; expected a list of the access methods"),
        ({"token": True}, "invalid access: a JSON dict"),
        (["token", "password"], "invalid access: 'password' is not an access method"),
        ([1], "invalid access: a JSON int is not an access method"),
        (["Token"], "'Token' is not an access method"),
        (["token", "token"], "invalid access: a method is named twice"),
        (["certificate", "oidc", "token", "network", "token"], "invalid access: 5 methods"),
    ],
)
@pytest.mark.parametrize("db", BACKENDS[:1], indirect=True)
@pytest_twisted.ensureDeferred
async def test_a_bad_access_value_is_refused_naming_the_field(registry, db, value, expected):
    key, _ = make_key(db)
    code, answer = await post(registry.url + "/announce", {**announced(key), "access": value})
    assert (code, answer["status"]) == (400, 1), answer
    assert expected in answer["error"] and "among certificate, oidc, token, network" in answer["error"]
    assert await get_json(registry.url + "/discover") == []


@pytest.mark.parametrize("db", BACKENDS[:1], indirect=True)
@pytest_twisted.ensureDeferred
async def test_null_and_empty_access_are_an_open_service(registry, db):
    key, _ = make_key(db)
    for value in (None, []):
        code, answer = await post(registry.url + "/announce", {**announced(key), "access": value})
        assert code == 200, answer
        [entry] = await get_json(registry.url + "/discover")
        assert "access" not in entry


def test_a_client_keeps_only_known_methods_of_an_untrusted_entry():
    entries = [
        {"name": "a", "access": ["token", "magic", 3, "token", "oidc"]},
        {"name": "b", "access": "token"},
        {"name": "c", "access": ["magic"]},
    ]
    a, b, c = wire.parse_discover(entries)
    assert a["access"] == ["token", "oidc"]
    assert "access" not in b and "access" not in c


# ---- private registries ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_private_registry_reads_only_to_live_keys(db, logs):
    announcer, _ = make_key(db, "announcing lab")
    reader, reader_id, created = create_key(db, "--read-only")
    assert "(read-only)" in created
    service = await start(db, private=True)
    try:
        url = service.url
        code, answer = await post(url + "/announce", announced(announcer, access=["token"]))
        assert code == 200, answer  # announcing is unchanged: the key is in the body
        # no key: 401 with the challenge, in the registry's answer shape, for the list and the page
        for path in ("/discover", "/"):
            code, challenge, error = refusal(*await read(url + path))
            assert challenge == CHALLENGE
            assert "this registry is private" in error and "Authorization: Bearer KEY" in error
        # /health stays open, and says a key is needed
        health = await get_json(url + "/health")
        assert health["status"] == "ok" and health["private"] is True and health["services"] == 1
        # a read-only key reads the list and the page
        code, headers, raw = await read(url + "/discover", reader)
        assert code == 200, raw
        [entry] = json.loads(raw)
        assert entry["access"] == ["token"] and entry["api_key"] == ""
        assert headers.getRawHeaders("cache-control") == ["no-store"]
        code, headers, page = await read(url + "/", reader.upper())  # keys are case-insensitive hex
        assert code == 200 and b"access: token" in page
        assert headers.getRawHeaders("content-type") == ["text/html; charset=utf-8"]
        # ... and the filters still apply
        code, _, raw = await read(url + "/discover?modality=CT", reader)
        assert (code, json.loads(raw)) == (200, [])
        # but cannot announce or withdraw, and is told why
        code, answer = await post(url + "/announce", announced(reader, prediction_url="http://r:1/predict"))
        assert code == 403 and answer["status"] == 1
        assert f"key {reader_id} is read-only" in answer["error"] and "not announce" in answer["error"]
        withdrawal = {"api_key": reader, "prediction_url": "http://127.0.0.1:9000/predict"}
        code, answer = await post(url + "/withdraw", withdrawal)
        assert code == 403 and "read-only" in answer["error"]
        # an ordinary key does both
        code, _, raw = await read(url + "/discover", announcer)
        assert code == 200 and len(json.loads(raw)) == 1
        # unknown keys, and headers that hold no key, are refused with invalid_token
        for header in (f"Bearer {generate_key()}", "Basic dXNlcjpwYXNz", "Bearer", f"Bearer {reader[:20]}"):
            code, challenge, error = refusal(*await read(url + "/discover", authorization=header))
            assert challenge == INVALID, header
            assert "registry key" in error
        # revoked: 401 at once
        revoked = CliRunner().invoke(cli.main, ["keys", "revoke", reader_id, "--db", db])
        assert revoked.exit_code == 0, revoked.output
        code, challenge, error = refusal(*await read(url + "/discover", reader))
        assert challenge == INVALID and "unknown or revoked registry key" in error
        answers = json.dumps(await get_json(url + "/health"))
    finally:
        await service.stop()
    # keys list shows the kind, and the reads were recorded as the reader key's use
    listed = CliRunner().invoke(cli.main, ["keys", "list", "--json", "--db", db])
    kinds = {entry["id"]: (entry["kind"], entry["last_used"]) for entry in json.loads(listed.stdout)}
    assert kinds[reader_id][0] == "read-only" and kinds[reader_id][1] is not None
    assert sorted(kind for kind, _ in kinds.values()) == ["announce", "read-only"]
    table = CliRunner().invoke(cli.main, ["keys", "list", "--db", db]).stdout
    assert "KIND" in table and "read-only" in table and "announce" in table
    for secret in (announcer, reader):
        assert_no_key_material(secret, logs.text, "the logs")
        assert_no_key_material(secret, answers + table + listed.stdout, "answers and keys list")
    assert "GET /discover from 127.0.0.1 refused: unknown or revoked registry key" in logs.text


@pytest_twisted.ensureDeferred
async def test_wrong_keys_are_throttled_but_a_live_key_never_is(db):
    now = [1000.0]
    reader, _, _ = create_key(db, "--read-only")
    service = await start(db, private=True, clock=lambda: now[0], auth_failures=3, auth_window=60)
    try:
        for _ in range(5):  # a visit without a key is not a guess: never counted
            assert (await read(service.url + "/discover"))[0] == 401
        for _ in range(3):
            assert (await read(service.url + "/discover", generate_key()))[0] == 401
        code, headers, raw = await read(service.url + "/", generate_key())
        assert code == 429 and json.loads(raw)["status"] == 1, raw
        assert headers.getRawHeaders("retry-after") == ["60"]
        assert b"too many requests with unknown or revoked keys" in raw
        # the announcement throttle is the same count
        assert (await post(service.url + "/announce", payload(generate_key())))[0] == 429
        assert (await read(service.url + "/discover", reader))[0] == 200
        now[0] += 61
        assert (await read(service.url + "/discover", generate_key()))[0] == 401
    finally:
        await service.stop()


@pytest.mark.parametrize("db", BACKENDS[:1], indirect=True)
@pytest_twisted.ensureDeferred
async def test_an_open_registry_ignores_authorization(registry, db):
    key, _ = make_key(db)
    await post(registry.url + "/announce", announced(key))
    for header in (None, f"Bearer {generate_key()}", "Basic x"):
        code, headers, raw = await read(registry.url + "/discover", authorization=header)
        assert code == 200 and len(json.loads(raw)) == 1
        assert headers.getRawHeaders("www-authenticate") is None
    assert (await get_json(registry.url + "/health"))["private"] is False


@pytest.mark.parametrize("db", BACKENDS[:1], indirect=True)
def test_serve_private_from_the_command_line(db):
    reader, _, _ = create_key(db, "--read-only")
    daemon = Daemon("--db", db, "--no-tls", "--private")
    try:
        assert "private" in daemon.output
        answer = requests.get(daemon.url + "/discover", timeout=10)
        assert answer.status_code == 401 and answer.headers["WWW-Authenticate"] == CHALLENGE
        assert answer.json()["status"] == 1
        answer = requests.get(daemon.url + "/discover", headers={"Authorization": f"Bearer {reader}"}, timeout=10)
        assert (answer.status_code, answer.json()) == (200, [])
        assert requests.get(daemon.url + "/health", timeout=10).status_code == 200
    finally:
        assert daemon.stop() == 0
    assert_no_key_material(reader, daemon.output, "the daemon's output")


# ---- upgrading ------------------------------------------------------------------------------------

# The tables exactly as the release before access control created them (schema version 2).
V2_SCHEMA = [
    "CREATE TABLE registry_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE registry_keys (
    id TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL UNIQUE CHECK (length(key_hash) = 64),
    owner TEXT NOT NULL CHECK (length(owner) <= 200),
    created DOUBLE PRECISION NOT NULL,
    last_used DOUBLE PRECISION,
    revoked DOUBLE PRECISION
)""",
    """CREATE TABLE registry_services (
    sid TEXT PRIMARY KEY,
    key_id TEXT NOT NULL REFERENCES registry_keys (id),
    prediction_url TEXT NOT NULL CHECK (length(prediction_url) <= 2048),
    interface_url TEXT NOT NULL CHECK (length(interface_url) <= 2048),
    name TEXT NOT NULL CHECK (length(name) <= 200),
    modality TEXT NOT NULL CHECK (length(modality) <= 100),
    anatomy TEXT NOT NULL CHECK (length(anatomy) <= 100),
    task TEXT NOT NULL CHECK (length(task) <= 100),
    description TEXT NOT NULL CHECK (length(description) <= 4000),
    version TEXT NOT NULL DEFAULT '' CHECK (length(version) <= 100),
    licence TEXT NOT NULL DEFAULT '' CHECK (length(licence) <= 200),
    citation TEXT NOT NULL DEFAULT '' CHECK (length(citation) <= 1000),
    intended_use TEXT NOT NULL DEFAULT '' CHECK (length(intended_use) <= 2000),
    disclaimer TEXT NOT NULL DEFAULT '' CHECK (length(disclaimer) <= 1000),
    accuracy TEXT NOT NULL DEFAULT '[]' CHECK (length(accuracy) <= 14002),
    announced DOUBLE PRECISION NOT NULL,
    UNIQUE (key_id, prediction_url)
)""",
    "CREATE INDEX registry_services_announced ON registry_services (announced)",
    """CREATE TABLE registry_auth_failures (
    address TEXT NOT NULL CHECK (length(address) <= 100),
    at DOUBLE PRECISION NOT NULL
)""",
    "CREATE INDEX registry_auth_failures_address ON registry_auth_failures (address, at)",
    "INSERT INTO registry_meta (name, value) VALUES ('schema_version', '2')",
]
V2_FIELDS = (*wire.ANNOUNCED, "licence")


def version_2_database(target: str) -> tuple[str, str]:
    """A version 2 database holding one key and one live service, as the previous release wrote them."""
    key, key_id = generate_key(), "0123456789ab"
    old = {**payload(key), "licence": "CC-BY-4.0"}
    statements = [
        *((sql, ()) for sql in V2_SCHEMA),
        (
            "INSERT INTO registry_keys (id, key_hash, owner, created) VALUES (?, ?, ?, ?)",
            (key_id, hash_key(key), "lab", 1.0),
        ),
        (
            f"INSERT INTO registry_services (sid, key_id, {', '.join(V2_FIELDS)}, announced)"
            f" VALUES (?, ?, {', '.join('?' for _ in V2_FIELDS)}, ?)",
            (service_id(key_id, old["prediction_url"]), key_id, *(old[name] for name in V2_FIELDS), time.time()),
        ),
    ]
    database = store.Database(target)
    connection = database.connect()
    try:
        tx = store.Tx(database, connection.cursor())
        tx.begin(write=True)
        for sql, params in statements:
            tx.execute(sql, params)
        connection.commit()
    finally:
        connection.close()
    return key, key_id


def schema_version(target: str) -> int:
    return int(store.SyncStore(target).run(lambda tx: tx.one("SELECT value FROM registry_meta")[0]))


@pytest_twisted.ensureDeferred
async def test_a_version_2_database_gains_access_and_kinds_and_keeps_its_rows(db):
    key, key_id = version_2_database(db)
    service = await start(db, private=True)
    try:
        assert schema_version(db) == store.SCHEMA_VERSION == 3
        # the old key is an ordinary one: it reads the private list and announces
        code, _, raw = await read(service.url + "/discover", key)
        assert code == 200, raw
        [entry] = json.loads(raw)
        assert entry["SID"] == service_id(key_id, payload(key)["prediction_url"])
        assert (entry["name"], entry["licence"]) == (payload(key)["name"], "CC-BY-4.0")
        assert "access" not in entry  # the old row is an open service
        code, answer = await post(service.url + "/announce", announced(key, access=["certificate", "network"]))
        assert (code, answer["SID"]) == (200, entry["SID"])
    finally:
        await service.stop()
    [listed] = store.SyncStore(db).run(store.list_keys)
    assert (listed["id"], listed["kind"], listed["owner"]) == (key_id, "announce", "lab")
    service = await start(db)  # upgraded already: starting again changes nothing
    try:
        assert schema_version(db) == 3
        [entry] = await get_json(service.url + "/discover")
        assert entry["access"] == ["certificate", "network"]
    finally:
        await service.stop()


def test_the_upgraded_columns_keep_their_limits(db):
    key, _ = version_2_database(db)
    opened = store.SyncStore(db)
    opened.run(store.create_schema)
    fields = {name: payload(key)[name] for name in wire.ANNOUNCED}
    with pytest.raises(Exception, match="(?i)check"):
        opened.run(store.announce, hash_key(key), {**fields, "access": ["token"] * 30}, time.time())
    with pytest.raises(ValueError, match="unknown key kind 'admin'; expected one of announce, read-only"):
        opened.run(store.add_key, hash_key(generate_key()), "x", time.time(), "admin")
    with pytest.raises(Exception, match="(?i)check"):  # past the code's check, the column's own
        opened.run(
            lambda tx: tx.execute(
                "INSERT INTO registry_keys (id, key_hash, owner, created, kind) VALUES (?, ?, ?, ?, ?)",
                ("ba9876543210", "0" * 64, "x", 1.0, "admin"),
            )
        )
    assert opened.run(store.announce, hash_key(key), {**fields, "access": ["oidc"]}, time.time())
    [service] = opened.run(store.live_services, 0.0)
    assert service["access"] == ["oidc"]


@pytest_twisted.ensureDeferred
async def test_tomaat_discover_reads_a_private_registry_with_a_read_only_key(db, tmp_path):
    """The whole way: a real private registry, `tomaat discover` as a user runs it, the key from a file."""
    from client_support import run_cli

    announcer, _ = make_key(db, "announcing lab")
    reader, _reader_id, _created = create_key(db, "--read-only")
    service = await start(db, private=True)
    try:
        code, answer = await post(service.url + "/announce", announced(announcer, access=["oidc", "token"]))
        assert code == 200, answer
        key_file = tmp_path / "registry-key"
        key_file.write_text(reader + "\n")
        key_file.chmod(0o600)
        listed = await run_cli(["discover", service.url, "--token-file", str(key_file)], tmp_path)
        assert listed.returncode == 0, listed.stderr
        assert "access: oidc, token" in listed.stdout
        assert reader not in listed.stdout + listed.stderr
        refused = await run_cli(["discover", service.url], tmp_path)
        assert refused.returncode != 0 and "private" in refused.stderr
        assert "Traceback" not in refused.stderr
    finally:
        await service.stop()
