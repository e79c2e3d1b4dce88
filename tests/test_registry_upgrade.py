"""A registry database made by the previous release (schema version 1) is upgraded in place, on SQLite and PostgreSQL."""

from __future__ import annotations

import time

import pytest
import pytest_twisted
import test_registry_support as support
from test_registry_support import get_json, payload, post, start_registry
from twisted.internet import defer

from tomaat.protocol import metadata
from tomaat.registry import store
from tomaat.registry.keys import generate_key, hash_key, service_id

db = support.db  # SQLite, and PostgreSQL where scripts/postgres.sh runs

# The tables exactly as the release before the model metadata created them (and its registries still use).
V1_SCHEMA = [
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
    announced DOUBLE PRECISION NOT NULL,
    UNIQUE (key_id, prediction_url)
)""",
    "CREATE INDEX registry_services_announced ON registry_services (announced)",
    "INSERT INTO registry_meta (name, value) VALUES ('schema_version', '1')",
]
V1_FIELDS = ("prediction_url", "interface_url", "name", "modality", "anatomy", "task", "description")
MODEL = {
    "version": "3.0",
    "licence": "CC-BY-4.0",
    "accuracy": [{"metric": "Dice", "value": 0.91, "dataset": "in-house test set"}],
}


def old_database(target: str) -> str:
    """A version 1 database holding one key and one live service, written as the old registry wrote them; the key."""
    key, key_id = generate_key(), "0123456789ab"
    old = payload(key)
    statements = [
        *((sql, ()) for sql in V1_SCHEMA),
        (
            "INSERT INTO registry_keys (id, key_hash, owner, created) VALUES (?, ?, ?, ?)",
            (key_id, hash_key(key), "lab", 1.0),
        ),
        (
            f"INSERT INTO registry_services (sid, key_id, {', '.join(V1_FIELDS)}, announced)"
            f" VALUES (?, ?, {', '.join('?' for _ in V1_FIELDS)}, ?)",
            (service_id(key_id, old["prediction_url"]), key_id, *(old[name] for name in V1_FIELDS), time.time()),
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
    return key


def schema_version(target: str) -> int:
    return int(store.SyncStore(target).run(lambda tx: tx.one("SELECT value FROM registry_meta")[0]))


@pytest_twisted.ensureDeferred
async def test_an_old_database_is_upgraded_in_place_and_keeps_its_services(db):
    key = old_database(db)
    assert schema_version(db) == 1
    registry = await start_registry(db)
    try:
        assert schema_version(db) == store.SCHEMA_VERSION == 3
        [entry] = await get_json(registry.url + "/discover")
        assert {name: entry[name] for name in V1_FIELDS} == {name: payload(key)[name] for name in V1_FIELDS}
        assert {name: entry[name] for name in metadata.FIELDS} == metadata.empty()  # the old row states none
        # the old key announces the same service again, now with metadata: one service, same SID
        code, answer = await post(registry.url + "/announce", payload(key, **MODEL))
        assert (code, answer["SID"]) == (200, entry["SID"])
    finally:
        await registry.stop()
    registry = await start_registry(db)  # upgraded already: starting again changes nothing
    try:
        assert schema_version(db) == 3
        [entry] = await get_json(registry.url + "/discover")
        assert {name: entry[name] for name in MODEL} == MODEL
    finally:
        await registry.stop()


def test_the_upgrade_brings_the_limits_along(db):
    """The added columns carry the same CHECK constraints as a fresh database's, for rows past validation."""
    key = old_database(db)
    opened = store.SyncStore(db)
    opened.run(store.create_schema)
    fields = {name: payload(key)[name] for name in V1_FIELDS}
    with pytest.raises(Exception, match="(?i)check"):
        opened.run(store.announce, hash_key(key), {**fields, "licence": "x" * 201}, time.time())
    assert opened.run(store.announce, hash_key(key), {**fields, "licence": "x" * 200}, time.time())
    [service] = opened.run(store.live_services, 0.0)
    assert service["licence"] == "x" * 200 and service["accuracy"] == []


@pytest_twisted.ensureDeferred
async def test_registries_started_together_on_an_old_database_upgrade_it_once(db):
    old_database(db)
    started = await defer.gatherResults(
        [defer.Deferred.fromCoroutine(start_registry(db)) for _ in range(3)], consumeErrors=True
    )
    try:
        assert schema_version(db) == 3
        for registry in started:
            assert len(await get_json(registry.url + "/discover")) == 1
    finally:
        for registry in started:
            await registry.stop()


def test_a_database_from_a_newer_registry_is_refused(db):
    opened = store.SyncStore(db)
    opened.run(store.create_schema)
    opened.run(lambda tx: tx.execute("UPDATE registry_meta SET value = '4' WHERE name = 'schema_version'"))
    with pytest.raises(RuntimeError, match="schema version 4, newer than this tomaat's"):
        opened.run(store.create_schema)
