"""Fair shares: a cap on the requests one identity has in flight and queued.

The worker's queue is first come, first served; without a cap, one identity sending 32 requests at once puts
everyone else's behind all 32. With it, the 33rd-best-behaved client waits for at most the cap's worth of
another identity's work. Counted on the reactor thread only, so no lock.
"""

from __future__ import annotations

from collections import Counter


class Shares:
    def __init__(self):
        self._held: Counter[str] = Counter()

    def take(self, key: str, cap: int) -> bool:
        """A place for one more request of `key`, or False when it holds `cap` (0: no cap)."""
        if cap and self._held[key] >= cap:
            return False
        self._held[key] += 1
        return True

    def give(self, key: str) -> None:
        self._held[key] -= 1
        if self._held[key] <= 0:
            del self._held[key]

    def held(self, key: str) -> int:
        return self._held[key]
