"""What a prediction server writes to its audit log (tomaat/access/audit.py keeps the chain).

A record says who asked for what and what was answered, so that a result can be traced to its request and a
request to its sender, with nothing that identifies a patient: each input is its SHA-256, size and decoded
grid, each output its SHA-256; never names, pixels, or any credential.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time

from twisted.internet.defer import DeferredList
from twisted.internet.threads import deferToThreadPool

log = logging.getLogger("tomaat.server")


def _digest(content) -> str:
    if isinstance(content, str):
        content = content.encode("utf-8")
    elif not isinstance(content, (bytes, bytearray, memoryview)):
        content = json.dumps(content, sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(content).hexdigest()


def _grid(value) -> dict:
    """Shape and spacing of a decoded input, for the images that have them."""
    if hasattr(value, "GetSize"):
        return {"shape": list(value.GetSize()), "spacing": [round(s, 6) for s in value.GetSpacing()]}
    shape = getattr(value, "shape", None)
    return {"shape": list(shape)} if shape is not None else {}


class Trail:
    """One request's data, as its audit record shows it; filled on the worker thread as the request goes."""

    def __init__(self):
        self.inputs: dict[str, dict] = {}
        self.outputs: list[dict] = []

    def received(self, fields: dict) -> None:
        for name, value in fields.items():
            self.inputs[name] = {"sha256": _digest(value), "bytes": len(value)}

    def decoded(self, values: dict) -> None:
        for name, value in values.items():
            self.inputs.setdefault(name, {}).update(_grid(value))

    def answered(self, items: list[dict]) -> None:
        self.outputs = [{"type": item.get("type"), "sha256": _digest(item.get("content", ""))} for item in items]


RETRY = 1.0  # seconds between requests let through to try a failing log again


class Recorder:
    """Appends records from worker threads. Once a record fails to be written, `failure` says why and (when the
    log is required) requests are refused with 503 at once, except one a second, which is served if its record
    can be written: so the service comes back by itself when the disk does, without wasting work meanwhile."""

    def __init__(self, audit_log, required: bool, reactor, pool, service: dict):
        self.log = audit_log
        self.required = required
        self.reactor = reactor
        self.pool = pool
        self.service = service  # name and version, in every record
        self.failure: str | None = None
        self.failed_at = 0.0
        self._lock = threading.Lock()
        self._pending: set = set()  # records on their way to the log (reactor thread only)

    @property
    def refusing(self) -> bool:
        """Whether to refuse a request now, before any work (on the reactor)."""
        if self.failure is None or not self.required:
            return False
        if time.monotonic() - self.failed_at < RETRY:
            return True
        self.failed_at = time.monotonic()  # this one tries the log again
        return False

    def write(self, record: dict) -> bool:
        """On a worker thread: True once the record is written as the fsync policy says."""
        from ..access.audit import AuditError

        record = {**record, "service": self.service}
        try:
            self.log.append(record)
        except AuditError as error:
            with self._lock:
                if self.failure is None:
                    log.error("the audit log cannot be written: %s", error)
                self.failure, self.failed_at = str(error), time.monotonic()
            return False
        if self.failure is not None:
            log.warning("the audit log is written again")
            self.failure = None
        return True

    def record(self, record: dict):
        """From the reactor: a Deferred firing with write()'s answer."""
        written = deferToThreadPool(self.reactor, self.pool, self.write, record)
        self._pending.add(written)

        def done(result):
            self._pending.discard(written)
            return result

        return written.addBoth(done)

    def drain(self):
        """A Deferred firing once every record asked for so far is written (the service awaits it at stop)."""
        return DeferredList(list(self._pending), consumeErrors=True)
