"""Shared by the registry and announcer tests: databases, running registries, HTTP calls, log capture.

Holds no tests. PostgreSQL cases need TOMAAT_TEST_POSTGRES_URL (see
scripts/postgres.sh); each test gets a schema of its own there, so tests never
see each other's rows and need no cleanup order.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from queue import Empty, Queue
from urllib.parse import urlsplit, urlunsplit

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.logger import formatEvent, globalLogPublisher
from twisted.web.client import Agent, HTTPConnectionPool

from tomaat.registry import RegistryService, store
from tomaat.registry.keys import generate_key, hash_key

POSTGRES_URL = os.environ.get("TOMAAT_TEST_POSTGRES_URL", "")
needs_postgres = pytest.mark.skipif(
    not POSTGRES_URL, reason="TOMAAT_TEST_POSTGRES_URL is unset (export it from scripts/postgres.sh)"
)
BACKENDS = [pytest.param("sqlite", id="sqlite"), pytest.param("postgresql", id="postgresql", marks=needs_postgres)]


def _with_search_path(url: str, schema: str) -> str:
    parts = urlsplit(url)
    option = f"options=-csearch_path%3D{schema}"
    return urlunsplit(parts._replace(query=f"{parts.query}&{option}" if parts.query else option))


@contextmanager
def database(kind: str, folder):
    """A fresh, empty registry database of the given kind; yields what --db takes."""
    if kind == "sqlite":
        yield str(folder / "registry.sqlite3")
        return
    import psycopg

    schema = f"test_{secrets.token_hex(6)}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as connection:
        connection.execute(f"CREATE SCHEMA {schema}")
    try:
        yield _with_search_path(POSTGRES_URL, schema)
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as connection:
            connection.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=BACKENDS)
def db(request, tmp_path):
    with database(request.param, tmp_path) as target:
        yield target


def make_key(target: str, owner: str = "test lab") -> tuple[str, str]:
    """(key, key id), issued the way `keys create` does."""
    opened = store.SyncStore(target)
    opened.run(store.create_schema)
    key = generate_key()
    return key, opened.run(store.add_key, hash_key(key), owner, time.time())


def dump_database(target: str) -> str:
    """Everything the database holds, as text: for SQLite the raw file bytes, for PostgreSQL every row."""
    database = store.Database(target)
    if not database.postgresql:
        return b"".join(
            open(os.path.join(os.path.dirname(database.path), name), "rb").read()
            for name in os.listdir(os.path.dirname(database.path))
            if name.startswith(os.path.basename(database.path))
        ).decode("latin-1")
    connection = database.connect()
    try:
        rows = []
        for table in ("registry_meta", "registry_keys", "registry_services"):
            rows.extend(connection.execute(f"SELECT * FROM {table}").fetchall())
        return repr(rows)
    finally:
        connection.close()


def assert_no_key_material(key: str, text: str, where: str) -> None:
    """No prefix of 6 or more characters of the key, in either case (a longer one contains the 6-character one)."""
    for variant in (key.lower(), key.upper()):
        assert variant[:6] not in text, f"a prefix of the API key appears in {where}"


def payload(key: str, **changes) -> dict:
    body = {
        "api_key": key,
        "prediction_url": "http://127.0.0.1:9000/predict",
        "interface_url": "http://127.0.0.1:9000/interface",
        "name": "Prostate segmentation",
        "modality": "MRI",
        "anatomy": "Prostate",
        "task": "Segmentation",
        "description": "A test service",
    }
    body.update(changes)
    return body


# ---- in-process registries and HTTP ------------------------------------------------------------


async def start_registry(target: str, **options) -> RegistryService:
    options = {"db": target, "port": 0, "interface": "127.0.0.1", "tls": False, **options}
    service = RegistryService(reactor=reactor, **options)
    await service.listen()
    return service


@pytest_twisted.async_yield_fixture
async def registry(db):
    service = await start_registry(db)
    yield service
    await service.stop()


def http_client() -> treq.client.HTTPClient:
    # not persistent: a registry stopped by a test leaves no idle connection behind
    return treq.client.HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))


async def call(method: str, url: str, body=None, headers=None):
    """(status, headers, bytes); body may be a dict (sent as JSON), bytes, or an IBodyProducer."""
    data = json.dumps(body).encode() if isinstance(body, dict | list) else body
    response = await http_client().request(method, url, data=data, headers=headers)
    return response.code, response.headers, await response.content()


async def post(url: str, body) -> tuple[int, dict]:
    code, _, raw = await call("POST", url, body)
    return code, json.loads(raw)


async def get_json(url: str):
    code, _, raw = await call("GET", url)
    assert code == 200, raw
    return json.loads(raw)


async def eventually(check, timeout: float = 10.0, interval: float = 0.02):
    """Poll `check` (sync or async) until it returns something truthy, failing past the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if hasattr(result, "__await__"):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition still false after {timeout} s: {getattr(check, '__name__', check)}")
        await deferLater(reactor, interval, lambda: None)


# ---- logs ----------------------------------------------------------------------------------------


class CapturedLogs:
    """Every record of the standard logging module and every Twisted log event, as text."""

    def __init__(self):
        self.lines: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, event) -> None:  # a Twisted log observer
        text = formatEvent(event) or ""
        failure = event.get("log_failure")
        if failure is not None:
            text += "\n" + failure.getTraceback()
        with self.lock:
            self.lines.append(text)

    @property
    def text(self) -> str:
        with self.lock:
            return "\n".join(self.lines)


class _Handler(logging.Handler):
    def __init__(self, captured: CapturedLogs):
        super().__init__(logging.DEBUG)
        self.captured = captured
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record) -> None:
        text = self.format(record)
        with self.captured.lock:
            self.captured.lines.append(text)


@pytest.fixture
def logs():
    captured = CapturedLogs()
    handler = _Handler(captured)
    root = logging.getLogger()
    previous = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(handler)
    globalLogPublisher.addObserver(captured)
    try:
        yield captured
    finally:
        globalLogPublisher.removeObserver(captured)
        root.removeHandler(handler)
        root.setLevel(previous)


# ---- registry daemons in processes of their own ----------------------------------------------------


class Daemon:
    """`tomaat-registry serve` in a subprocess; its output is kept for leak checks."""

    SERVING = re.compile(r"registry serving on (\S+)")

    def __init__(self, *args: str, wait: bool = True):
        command = [
            sys.executable,
            "-m",
            "tomaat.registry.cli",
            "serve",
            "--port",
            "0",
            "--listen-address",
            "127.0.0.1",
            *args,
        ]
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: list[str] = []
        self._queue: Queue = Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.url = None
        if wait:
            self.wait_until_serving()

    def wait_until_serving(self, timeout: float = 30.0) -> str:
        self.url = self._wait_for(self.SERVING, timeout).group(1)
        return self.url

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)
            self._queue.put(line)
        self._queue.put(None)

    def _wait_for(self, pattern, timeout: float):
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.01, deadline - time.monotonic()))
            except Empty:
                line = ""
            if line is None:
                raise AssertionError("the registry exited before serving:\n" + self.output)
            match = pattern.search(line or "")
            if match:
                return match
            if time.monotonic() > deadline:
                raise AssertionError(f"the registry was not serving after {timeout} s:\n" + self.output)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def stop(self, timeout: float = 15.0) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError("the registry did not stop on SIGTERM:\n" + self.output) from None
