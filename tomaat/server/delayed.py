"""Results kept for clients that asked for a delayed response, handed out once.

Lives on the reactor thread only, so it needs no locks. Ids are random and
unguessable: a result is as private as the request that produced it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field


@dataclass
class _Entry:
    done: bool = False
    status: int = 200
    body: list = field(default_factory=list)
    timer: object = None


class DelayedResults:
    def __init__(self, clock, ttl: float = 3600.0):
        self.clock = clock
        self.ttl = ttl
        self._entries: dict[str, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def track(self, deferred) -> str:
        """Start keeping the outcome of deferred, which fires with (status, body)."""
        request_id = secrets.token_hex(16)
        entry = self._entries[request_id] = _Entry()

        def finished(outcome):
            entry.status, entry.body = outcome
            entry.done = True
            if request_id in self._entries:
                entry.timer = self.clock.callLater(self.ttl, self._entries.pop, request_id, None)

        deferred.addCallback(finished)
        return request_id

    def collect(self, request_id: str):
        """(status, body) once done, None while running; KeyError for unknown, expired or collected ids."""
        entry = self._entries[request_id]
        if not entry.done:
            return None
        del self._entries[request_id]
        if entry.timer is not None and entry.timer.active():
            entry.timer.cancel()
        return entry.status, entry.body

    def clear(self) -> None:
        for entry in self._entries.values():
            if entry.timer is not None and entry.timer.active():
                entry.timer.cancel()
        self._entries.clear()
