"""Results kept for clients that asked for a delayed response, handed out once.

Lives on the reactor thread only, so it needs no locks. Ids are random and
unguessable: a result is as private as the request that produced it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from ..protocol.answers import error_items


@dataclass
class _Entry:
    done: bool = False
    status: int = 200
    body: list = field(default_factory=list)
    timer: object = None
    size: int = 0


def _size(body) -> int:
    """The bytes an answer holds: JSON bytes, or output items whose contents (raw bytes or text) are the bulk."""
    if isinstance(body, bytes | bytearray):
        return len(body)
    return sum(len(item.get("content") or "") for item in body if isinstance(item, dict))


class DelayedResults:
    """At most max_count results at once (503 for one more) and max_bytes of kept answers.

    A finished answer that would take the kept bytes past max_bytes is replaced by an error
    the client collects instead (507), so 300 uncollected results cannot hold the memory they
    would for a whole TTL.
    """

    def __init__(self, clock, ttl: float = 3600.0, max_count: int = 0, max_bytes: int = 0):
        self.clock = clock
        self.ttl = ttl
        self.max_count, self.max_bytes = int(max_count), int(max_bytes)
        self.held_bytes = 0
        self._entries: dict[str, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def full(self) -> bool:
        """No room for one more result: the caller answers 503 before starting the work."""
        return bool(self.max_count) and len(self._entries) >= self.max_count

    def track(self, deferred) -> str:
        """Start keeping the outcome of deferred, which fires with an Answer (worker.py) whose body is
        the unencoded payload: output items, encoded when collected as the collector asks (JSON or binary)."""
        request_id = secrets.token_hex(16)
        entry = self._entries[request_id] = _Entry()

        def finished(outcome):
            entry.status, entry.body = outcome.status, outcome.body
            size = _size(entry.body)
            if self.max_bytes and self.held_bytes + size > self.max_bytes:
                entry.status, size = 507, 0
                entry.body = error_items(
                    "the result was too large to keep until collected (the server's delayed results are full); "
                    "ask again without a delayed response"
                )
            entry.size, entry.done = size, True
            if request_id in self._entries:
                self.held_bytes += size
                entry.timer = self.clock.callLater(self.ttl, self._drop, request_id)

        deferred.addCallback(finished)
        return request_id

    def _drop(self, request_id: str) -> None:
        entry = self._entries.pop(request_id, None)
        if entry is not None:
            self.held_bytes -= entry.size

    def collect(self, request_id: str):
        """(status, body) once done, None while running; KeyError for unknown, expired or collected ids.

        body is output items (or an error's) to encode, or JSON bytes already encoded (a 504)."""
        entry = self._entries[request_id]
        if not entry.done:
            return None
        self._drop(request_id)
        if entry.timer is not None and entry.timer.active():
            entry.timer.cancel()
        return entry.status, entry.body

    def clear(self) -> None:
        for entry in self._entries.values():
            if entry.timer is not None and entry.timer.active():
                entry.timer.cancel()
        self._entries.clear()
        self.held_bytes = 0
