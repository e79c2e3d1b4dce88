"""Results kept for clients that asked for a delayed response, handed out once.

Lives on the reactor thread only, so it needs no locks. Ids are random and
unguessable: a result is as private as the request that produced it.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

from twisted.internet.base import DelayedCall

from .rendering import Outcome


@dataclass
class _Entry:
    outcome: Outcome | None = None  # None while the work runs
    timer: DelayedCall | None = None
    size: int = 0
    owner: str = ""  # the identity that asked (tomaat/access): another one is told the id is unknown


def _size(outcome: Outcome) -> int:
    """The bytes an outcome holds: its items' contents (raw bytes or text) are the bulk."""
    return sum(len(item.get("content") or "") for item in outcome.items if isinstance(item, dict))


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

    def track(self, deferred, owner: str = "", request_id: str = "") -> str:
        """Start keeping what deferred fires with: an Outcome (worker.py), rendered when collected, as the
        collecting request asks (JSON or binary)."""
        request_id = request_id or secrets.token_hex(16)
        entry = self._entries[request_id] = _Entry(owner=owner)

        def finished(outcome: Outcome):
            size = _size(outcome)
            if self.max_bytes and self.held_bytes + size > self.max_bytes:
                size, outcome = (
                    0,
                    Outcome.error(
                        507,
                        "the result was too large to keep until collected (the server's delayed results are full); "
                        "ask again without a delayed response",
                    ),
                )
            entry.outcome, entry.size = outcome, size
            if request_id in self._entries:
                self.held_bytes += size
                entry.timer = self.clock.callLater(self.ttl, self._drop, request_id)

        deferred.addCallback(finished)
        return request_id

    def _drop(self, request_id: str) -> None:
        entry = self._entries.pop(request_id, None)
        if entry is not None:
            self.held_bytes -= entry.size

    def collect(self, request_id: str, owner: str = "") -> Outcome | None:
        """The outcome once done, None while running; KeyError for unknown, expired or collected ids, and for
        another identity's, so that nobody learns that an id they were not given exists."""
        entry = self._entries[request_id]
        if not hmac.compare_digest(entry.owner, owner):
            raise KeyError(request_id)
        if entry.outcome is None:
            return None
        self._drop(request_id)
        if entry.timer is not None and entry.timer.active():
            entry.timer.cancel()
        return entry.outcome

    def clear(self) -> None:
        for entry in self._entries.values():
            if entry.timer is not None and entry.timer.active():
                entry.timer.cancel()
        self._entries.clear()
        self.held_bytes = 0
