"""The GPU lock, taken in turns by identity: a fair share of the accelerator, not only of the threads.

Every prediction's inference waits for the one GPU. With a first-come lock, an identity holding several
requests in flight (as many as its fair share allows, shares.py) puts another identity's single request
behind all of them at the lock. Here a freed lock goes to the waiting identity served least recently, so a
newcomer waits for at most the inference in progress. Within one identity, requests keep their order.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections import deque

# The identity a worker thread's request belongs to (tomaat/access: Identity.owner), set around its prediction.
OWNER: contextvars.ContextVar[str] = contextvars.ContextVar("tomaat_owner", default="")


@contextlib.contextmanager
def owned_by(owner: str):
    token = OWNER.set(owner)
    try:
        yield
    finally:
        OWNER.reset(token)


class FairLock:
    def __init__(self):
        self._condition = threading.Condition()
        self._held = False
        self._waiting: dict[str, deque] = {}
        self._served: dict[str, int] = {}  # identity -> the turn it last held the lock in
        self._turn = 0

    def _next(self):
        owner = min(self._waiting, key=lambda waiting: self._served.get(waiting, 0))
        return self._waiting[owner][0]

    def acquire(self) -> None:
        owner, ticket = OWNER.get(), object()
        with self._condition:
            queue = self._waiting.setdefault(owner, deque())
            queue.append(ticket)
            while self._held or self._next() is not ticket:
                self._condition.wait()
            queue.popleft()
            if not queue:
                del self._waiting[owner]
            self._held = True
            self._turn += 1
            self._served[owner] = self._turn
            if len(self._served) > 10_000:  # identities seen long ago: forgetting them only helps them
                for stale in sorted(self._served, key=self._served.__getitem__)[:5_000]:
                    del self._served[stale]

    def release(self) -> None:
        with self._condition:
            self._held = False
            self._condition.notify_all()

    def locked(self) -> bool:
        return self._held

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()
