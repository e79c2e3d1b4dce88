"""The registry's tables, in SQLite (one file, one process) or PostgreSQL (several processes, one registry).

Every operation is a function of one transaction, so it runs the same way in
the daemon (twisted.enterprise.adbapi's threads: no database call on the
reactor) and in the operator's command line (a direct connection), and a
failure anywhere inside it leaves no half-written row. The SQL is the subset
both databases speak (upserts with ON CONFLICT, CHECK constraints); the few
differences live in Database.

Stored: a SHA-256 of each key, the key's owner, kind and times, and the announced
fields, which are public anyway. Never a key, never an image.
"""

from __future__ import annotations

import importlib.util
import json
import os
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

from ..protocol import metadata
from ..protocol.registry import LIMITS
from .announcement import OWNER_LIMIT
from .keys import new_key_id, same_hash, service_id

# 2: the model metadata columns (added in place to a version 1 database, see _UPGRADES)
# 3: the services' access methods, and the keys' kind: a new version, not columns added quietly, because a
#    registry that predates kinds would let a read-only key announce; it refuses a version 3 database instead
SCHEMA_VERSION = 3
_SCHEMA_LOCK = 7_243_101  # PostgreSQL advisory lock id: serialises schema creation across registry processes
ACCESS = "access"
_STORED = (*LIMITS, *metadata.FIELDS, ACCESS)  # the announced fields, one column each
_SERVICE_COLUMNS = ("sid", "key_id", *_STORED, "announced")
# the accuracy list is kept as JSON text: the longest that MAX_RESULTS results of the longest texts
# (each character escaped) and numbers encode to, with room to spare for the punctuation
ACCURACY_LIMIT = metadata.MAX_RESULTS * (2 * sum(metadata.RESULT_TEXT.values()) + 100) + 2
# the access methods as JSON text, NULL for an open service; every method once is under 50 characters
ACCESS_LIMIT = 100
# what a key may do: ANNOUNCE keys announce, withdraw and read a private registry; READ_ONLY keys only read it
ANNOUNCE, READ_ONLY = "announce", "read-only"
KINDS = (ANNOUNCE, READ_ONLY)


def _text(name: str, limit: int, default: str | None = None) -> str:
    default = "" if default is None else f" DEFAULT '{default}'"
    return f"{name} TEXT NOT NULL{default} CHECK (length({name}) <= {limit})"


def _metadata_columns() -> list[str]:
    """With defaults, so rows written before the upgrade, or by a registry that predates it, read as "states none"."""
    columns = [_text(name, limit, "") for name, limit in metadata.TEXT.items()]
    return [*columns, _text(metadata.ACCURACY, ACCURACY_LIMIT, "[]")]


def _access_column() -> str:
    return f"{ACCESS} TEXT CHECK ({ACCESS} IS NULL OR length({ACCESS}) <= {ACCESS_LIMIT})"


def _kind_column() -> str:
    """With a default, so the keys issued before kinds existed stay what they were: keys that announce."""
    return f"kind TEXT NOT NULL DEFAULT '{ANNOUNCE}' CHECK (kind IN ({', '.join(repr(kind) for kind in KINDS)}))"


# from version N to N + 1, run in create_schema's transaction
_UPGRADES = {
    1: [f"ALTER TABLE registry_services ADD COLUMN {column}" for column in _metadata_columns()],
    2: [
        f"ALTER TABLE registry_services ADD COLUMN {_access_column()}",
        f"ALTER TABLE registry_keys ADD COLUMN {_kind_column()}",
    ],
}


def _schema() -> list[str]:
    service_fields = ",\n    ".join(
        [*(_text(name, limit) for name, limit in LIMITS.items()), *_metadata_columns(), _access_column()]
    )
    return [
        "CREATE TABLE IF NOT EXISTS registry_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
        f"""CREATE TABLE IF NOT EXISTS registry_keys (
    id TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL UNIQUE CHECK (length(key_hash) = 64),
    {_text("owner", OWNER_LIMIT)},
    created DOUBLE PRECISION NOT NULL,
    last_used DOUBLE PRECISION,
    revoked DOUBLE PRECISION,
    {_kind_column()}
)""",
        f"""CREATE TABLE IF NOT EXISTS registry_services (
    sid TEXT PRIMARY KEY,
    key_id TEXT NOT NULL REFERENCES registry_keys (id),
    {service_fields},
    announced DOUBLE PRECISION NOT NULL,
    UNIQUE (key_id, prediction_url)
)""",
        "CREATE INDEX IF NOT EXISTS registry_services_announced ON registry_services (announced)",
        # failed authentications, shared by every registry process on the database (added in place: no new version)
        """CREATE TABLE IF NOT EXISTS registry_auth_failures (
    address TEXT NOT NULL CHECK (length(address) <= 100),
    at DOUBLE PRECISION NOT NULL
)""",
        "CREATE INDEX IF NOT EXISTS registry_auth_failures_address ON registry_auth_failures (address, at)",
    ]


class Database:
    """Where the registry lives: a file path (SQLite) or a postgresql:// URL, and how its SQL differs."""

    def __init__(self, target: str):
        target = str(target)
        self.url: str | None  # the postgresql:// URL, or
        self.path: str | None  # the SQLite file
        scheme = target.split("://", 1)[0].lower() if "://" in target else ""
        if scheme in ("postgresql", "postgres"):
            if importlib.util.find_spec("psycopg") is None:  # an extra: SQLite registries install no driver
                raise ValueError(f"{scheme}:// needs the PostgreSQL driver: pip install 'tomaat[postgres]'")
            self.kind, self.url, self.path = "postgresql", target, None
        elif scheme in ("", "sqlite"):
            path = urlsplit(target).path if scheme else target
            if not path or path == ":memory:":
                raise ValueError(f"{target!r} names no database file; expected a file path for SQLite")
            self.kind, self.url, self.path = "sqlite", None, os.path.abspath(os.path.expanduser(path))
        else:
            raise ValueError(
                f"unsupported database {scheme}://...; expected a file path (SQLite) "
                "or postgresql://user:password@host:port/database"
            )

    @property
    def postgresql(self) -> bool:
        return self.kind == "postgresql"

    def describe(self) -> str:
        """For logs and messages: the URL without its password."""
        if self.url is None:
            return f"SQLite {self.path}"
        parts = urlsplit(self.url)
        netloc = parts.netloc
        if parts.password is not None:
            user, host = netloc.rsplit("@", 1)
            netloc = f"{user.split(':', 1)[0]}:***@{host}"
        return "PostgreSQL " + urlunsplit((parts.scheme, netloc, parts.path, "", ""))

    def _connect_args(self) -> tuple[str, tuple, dict]:
        if self.path is None:
            return "psycopg", (self.url,), {"connect_timeout": 10, "application_name": "tomaat-registry"}
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        # isolation_level=None: transactions are begun explicitly (Tx.begin), so reads and writes share one
        return "sqlite3", (self.path,), {"timeout": 30, "isolation_level": None, "check_same_thread": False}

    def _prepare(self, connection) -> None:
        if not self.postgresql:
            connection.execute("PRAGMA foreign_keys = ON")

    def connect(self):
        import importlib

        module, args, kwargs = self._connect_args()
        connection = importlib.import_module(module).connect(*args, **kwargs)
        self._prepare(connection)
        return connection

    def pool(self, reactor):
        from twisted.enterprise import adbapi

        module, args, kwargs = self._connect_args()
        # SQLite allows one writer at a time: one connection avoids "database is locked" between our own threads.
        size = {"cp_min": 1, "cp_max": 4} if self.postgresql else {"cp_min": 1, "cp_max": 1}
        return adbapi.ConnectionPool(
            module, *args, cp_reactor=reactor, cp_reconnect=True, cp_openfun=self._prepare, **size, **kwargs
        )


class Tx:
    """One transaction's cursor, speaking `?` placeholders whatever the database."""

    def __init__(self, database: Database, cursor):
        self.database = database
        self.cursor = cursor

    def begin(self, write: bool = False) -> None:
        # psycopg opens a transaction by itself; SQLite needs it asked for, IMMEDIATE taking the
        # write lock at once so that a read followed by a write cannot interleave with another writer.
        if not self.database.postgresql:
            self.cursor.execute("BEGIN IMMEDIATE" if write else "BEGIN")

    def execute(self, sql: str, params: tuple = ()):
        if self.database.postgresql:
            sql = sql.replace("?", "%s")
        self.cursor.execute(sql, params)
        return self.cursor

    def one(self, sql: str, params: tuple = ()):
        return self.execute(sql, params).fetchone()

    def all(self, sql: str, params: tuple = ()) -> list:
        return self.execute(sql, params).fetchall()

    @property
    def for_update(self) -> str:
        return " FOR UPDATE" if self.database.postgresql else ""


# ---- the operations: each is one transaction --------------------------------------------------


def create_schema(tx: Tx) -> int:
    """Create what is missing and upgrade an older schema in place; refuses one a newer registry has changed.

    The upgrade runs in the same transaction, under the same lock: registries starting together on
    one old database upgrade it once, and a failed upgrade leaves it as it was.
    """
    if tx.database.postgresql:
        tx.execute(f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK})")
    else:
        tx.begin(write=True)
    for statement in _schema():
        tx.execute(statement)
    tx.execute(
        "INSERT INTO registry_meta (name, value) VALUES ('schema_version', ?) ON CONFLICT (name) DO NOTHING",
        (str(SCHEMA_VERSION),),
    )
    version = int(tx.one("SELECT value FROM registry_meta WHERE name = 'schema_version'")[0])
    if version > SCHEMA_VERSION:
        raise RuntimeError(
            f"the database has registry schema version {version}, newer than this tomaat's ({SCHEMA_VERSION}): "
            "upgrade tomaat before serving from it"
        )
    if version < SCHEMA_VERSION:
        for step in range(version, SCHEMA_VERSION):
            for statement in _UPGRADES[step]:
                tx.execute(statement)
        tx.execute("UPDATE registry_meta SET value = ? WHERE name = 'schema_version'", (str(SCHEMA_VERSION),))
        version = SCHEMA_VERSION
    return version


def add_key(tx: Tx, key_hash: str, owner: str, now: float, kind: str = ANNOUNCE) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown key kind {kind!r}; expected one of {', '.join(KINDS)}")
    tx.begin(write=True)
    key_id = new_key_id()
    tx.execute(
        "INSERT INTO registry_keys (id, key_hash, owner, created, kind) VALUES (?, ?, ?, ?, ?)",
        (key_id, key_hash, owner, now, kind),
    )
    return key_id


def list_keys(tx: Tx) -> list[dict]:
    tx.begin()
    rows = tx.all(
        "SELECT k.id, k.owner, k.kind, k.created, k.last_used, k.revoked,"
        " (SELECT COUNT(*) FROM registry_services s WHERE s.key_id = k.id)"
        " FROM registry_keys k ORDER BY k.created, k.id"
    )
    names = ("id", "owner", "kind", "created", "last_used", "revoked", "services")
    return [dict(zip(names, row, strict=True)) for row in rows]


class ReadOnlyKey(Exception):
    """A read-only key asked to change what the registry lists."""

    def __init__(self, key_id: str):
        super().__init__(f"key {key_id} is read-only: it may read this registry but not announce or withdraw")
        self.key_id = key_id


def _active_key(tx: Tx, key_hash: str, *, announcing: bool = True) -> str | None:
    """The id of the live key with this hash, or None; ReadOnlyKey when announcing with a read-only one."""
    row = tx.one(
        "SELECT id, key_hash, kind FROM registry_keys WHERE key_hash = ? AND revoked IS NULL" + tx.for_update,
        (key_hash,),
    )
    if row is None or not same_hash(row[1], key_hash):
        return None
    if announcing and row[2] != ANNOUNCE:
        raise ReadOnlyKey(row[0])
    return row[0]


def reader(tx: Tx, key_hash: str, now: float) -> str | None:
    """The id of the live key (of any kind) with this hash, its use recorded; None for an unknown or revoked key."""
    tx.begin(write=True)
    key_id = _active_key(tx, key_hash, announcing=False)
    if key_id is not None:
        tx.execute("UPDATE registry_keys SET last_used = ? WHERE id = ?", (now, key_id))
    return key_id


def revoke_key(tx: Tx, now: float, *, key_id: str | None = None, key_hash: str | None = None) -> dict | None:
    """Revoke by public id or by the key's hash; its services go in the same transaction."""
    tx.begin(write=True)
    column, value = ("key_hash", key_hash) if key_hash else ("id", key_id)
    row = tx.one(f"SELECT id, key_hash, owner, revoked FROM registry_keys WHERE {column} = ?" + tx.for_update, (value,))
    if row is None or (key_hash and not same_hash(row[1], key_hash)):
        return None
    found_id, _, owner, revoked = row
    if revoked is None:
        tx.execute("UPDATE registry_keys SET revoked = ? WHERE id = ?", (now, found_id))
    removed = tx.execute("DELETE FROM registry_services WHERE key_id = ?", (found_id,)).rowcount
    return {"id": found_id, "owner": owner, "already_revoked": revoked is not None, "services_removed": removed}


class TooManyServices(Exception):
    """The key already announces as many live services as the registry allows one key."""

    def __init__(self, limit: int):
        super().__init__(f"this key already announces {limit} services, the most one key may")
        self.limit = limit


def announce(tx: Tx, key_hash: str, fields: dict, now: float, max_services: int = 0, since: float = 0.0) -> str | None:
    """Insert or refresh the service (key, prediction_url); its SID, or None for an unknown or revoked key
    (ReadOnlyKey for a read-only one).

    With max_services, a key already announcing that many other services live after `since`
    gets TooManyServices, so one leaked key cannot fill the registry.
    """
    tx.begin(write=True)
    key_id = _active_key(tx, key_hash)
    if key_id is None:
        return None
    if max_services:
        others = tx.one(
            "SELECT COUNT(*) FROM registry_services WHERE key_id = ? AND prediction_url <> ? AND announced > ?",
            (key_id, fields["prediction_url"], since),
        )[0]
        if int(others) >= max_services:
            raise TooManyServices(max_services)
    tx.execute("UPDATE registry_keys SET last_used = ? WHERE id = ?", (now, key_id))
    sid = service_id(key_id, fields["prediction_url"])
    updates = ", ".join(f"{name} = excluded.{name}" for name in (*_STORED, "announced") if name != "prediction_url")
    tx.execute(
        f"INSERT INTO registry_services ({', '.join(_SERVICE_COLUMNS)})"
        f" VALUES ({', '.join('?' for _ in _SERVICE_COLUMNS)})"
        f" ON CONFLICT (key_id, prediction_url) DO UPDATE SET {updates}",
        (sid, key_id, *_encoded(fields), now),
    )
    return sid


def _encoded(fields: dict) -> list:
    """The announced fields as columns; metadata not announced is stored empty (an announcement replaces it all)."""
    model = {**metadata.empty(), **{name: fields[name] for name in metadata.FIELDS if name in fields}}
    model[metadata.ACCURACY] = json.dumps(model[metadata.ACCURACY], ensure_ascii=False)
    access = json.dumps(fields[ACCESS]) if fields.get(ACCESS) else None
    return [*(fields[name] for name in LIMITS), *(model[name] for name in metadata.FIELDS), access]


def withdraw(tx: Tx, key_hash: str, prediction_url: str, now: float) -> bool | None:
    """True when removed, False when this key had no such service, None for an unknown or revoked key
    (ReadOnlyKey for a read-only one)."""
    tx.begin(write=True)
    key_id = _active_key(tx, key_hash)
    if key_id is None:
        return None
    tx.execute("UPDATE registry_keys SET last_used = ? WHERE id = ?", (now, key_id))
    removed = tx.execute(
        "DELETE FROM registry_services WHERE key_id = ? AND prediction_url = ?", (key_id, prediction_url)
    ).rowcount
    return removed > 0


_LIVE = " FROM registry_services s JOIN registry_keys k ON k.id = s.key_id WHERE k.revoked IS NULL AND s.announced > ?"


def live_services(tx: Tx, since: float) -> list[dict]:
    """Services announced after `since` by keys still valid (revocation hides them even before the delete)."""
    tx.begin()
    names = ("sid", *_STORED, "announced")
    rows = tx.all(f"SELECT {', '.join('s.' + name for name in names)}" + _LIVE, (since,))
    services = [dict(zip(names, row, strict=True)) for row in rows]
    for service in services:
        service[metadata.ACCURACY] = json.loads(service[metadata.ACCURACY])
        service[ACCESS] = json.loads(service[ACCESS]) if service[ACCESS] else []
    return services


def count_live(tx: Tx, since: float) -> int:
    tx.begin()
    return int(tx.one("SELECT COUNT(*)" + _LIVE, (since,))[0])


def purge(tx: Tx, before: float) -> int:
    """Forget expired announcements; SIDs are derived, so a service that comes back keeps its SID."""
    tx.begin(write=True)
    return tx.execute("DELETE FROM registry_services WHERE announced <= ?", (before,)).rowcount


def failed_authentication(tx: Tx, address: str, now: float, limit: int, window: float) -> float:
    """Record one failed authentication from address; the seconds it must wait, 0 while it is under the limit.

    Only failures are counted, and only here, after the key was looked up: a valid key is never
    throttled, whoever shares its address (every service behind one TLS proxy does). Once an
    address is at the limit its further failures are not recorded, so a flood adds no rows.
    """
    if not limit:
        return 0.0
    tx.begin(write=True)
    tx.execute("DELETE FROM registry_auth_failures WHERE at <= ?", (now - window,))
    count, oldest = tx.one(
        "SELECT COUNT(*), MIN(at) FROM registry_auth_failures WHERE address = ? AND at > ?", (address, now - window)
    )
    if int(count) >= limit:
        return max(1.0, float(oldest) + window - now)
    tx.execute("INSERT INTO registry_auth_failures (address, at) VALUES (?, ?)", (address[:100], now))
    return 0.0


# ---- running them -------------------------------------------------------------------------------


class SyncStore:
    """For the operator's command line: a connection per call, no reactor."""

    def __init__(self, target: str):
        self.database = Database(target)

    @contextmanager
    def _transaction(self):
        connection = self.database.connect()
        try:
            yield Tx(self.database, connection.cursor())
            connection.commit()
        except BaseException:
            connection.rollback()
            raise
        finally:
            connection.close()

    def run(self, operation, *args, **kwargs):
        with self._transaction() as tx:
            return operation(tx, *args, **kwargs)


class AsyncStore:
    """For the daemon: operations run in adbapi's threads; each call answers a Deferred."""

    def __init__(self, target: str, reactor):
        self.database = Database(target)
        self.pool = self.database.pool(reactor)

    def run(self, operation, *args, **kwargs):
        return self.pool.runInteraction(lambda cursor: operation(Tx(self.database, cursor), *args, **kwargs))

    def close(self) -> None:
        self.pool.close()
