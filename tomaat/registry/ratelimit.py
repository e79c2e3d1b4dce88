"""Failed-authentication counting per client address, so keys cannot be guessed at network speed.

A 256-bit key cannot be brute-forced anyway; the limit is there so that a
misconfigured or hostile client hammering with bad keys costs the database
nothing and shows up in the log once, not a million times. State lives in
memory on the reactor thread: it is per process, and a restart forgets it.
"""

from __future__ import annotations

import math
from collections import deque


class FailureLimiter:
    def __init__(self, clock, limit: int = 10, window: float = 60.0):
        self.clock = clock
        self.limit = int(limit)  # 0: no limit
        self.window = float(window)
        self._failures: dict[str, deque] = {}

    def _recent(self, address: str) -> deque | None:
        times = self._failures.get(address)
        if times is None:
            return None
        cutoff = self.clock() - self.window
        while times and times[0] <= cutoff:
            times.popleft()
        if not times:
            del self._failures[address]
            return None
        return times

    def retry_after(self, address: str) -> int:
        """Seconds until address may try again; 0 when it may now."""
        times = self._recent(address)
        if not self.limit or times is None or len(times) < self.limit:
            return 0
        return max(1, math.ceil(times[0] + self.window - self.clock()))

    def failed(self, address: str) -> None:
        if not self.limit:
            return
        times = self._recent(address)
        if times is None:
            times = self._failures[address] = deque(maxlen=self.limit)
        times.append(self.clock())
        if len(self._failures) > 100_000:  # a flood from many addresses must not grow memory without bound
            self._failures.pop(next(iter(self._failures)))
