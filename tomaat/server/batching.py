"""Dynamic batching: concurrent requests' inference run together, as NVIDIA Triton's dynamic batcher does.

A GPU runs a batch of four volumes in about the time of one, so while the model is busy the requests
that arrive wait in a queue, and the moment it frees they all go in together (up to `max_batch`).
Forming batches only when the model frees, and not on a timer, is what keeps batches full under
staggered load: a batcher that closes a batch when its wait ends, while the previous batch still
runs, sends batches of one. The wait (`max_delay_ms`) exists only for an idle model: it is worth a
few milliseconds of a lone request's latency to let a second request catch up, and never more.

The worker threads are the callers: each blocks in `Batcher.run` until its own result is back.
One dispatcher thread forms and runs the batches, so batches never overlap; it exists only while
requests wait or run (a new one is started by the next request), so there is nothing to stop at
shutdown and no thread is left behind by a service that stopped.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import threading
import time
from collections import deque
from collections.abc import Callable

log = logging.getLogger("tomaat.server")


class Expired(Exception):
    """The request's time limit passed while it waited, so it was left out of every batch."""


class _Slot:
    """One waiting request: its item in, its result (or the batch's failure) out."""

    __slots__ = ("item", "expired", "arrived", "queued", "done", "result", "error", "started", "ended", "size")

    def __init__(self, item, expired, arrived: float):
        self.item = item
        self.expired = expired
        self.arrived = arrived  # on the batcher's clock, for the delay
        self.queued = time.perf_counter()  # for the request's timings
        self.done = threading.Event()
        self.result = None
        self.error: BaseException | None = None
        self.started: float | None = None
        self.ended: float | None = None
        self.size = 0


class Batcher:
    """Runs `run_batch(items) -> results` for up to `max_batch` concurrent callers of `run(item)` at a time.

    - A batch is formed when the model is free (the previous batch is done and `lock` is acquired):
      the requests waiting at that moment, oldest first, up to `max_batch`.
    - A free model with fewer than `max_batch` waiting waits until the oldest waiting request has
      waited `max_delay_ms` since it arrived, or until `max_batch` wait, whichever is first. A request
      that already waited that long for a busy model goes at once; with 0 nothing is ever delayed.
    - A request whose `expired()` is true when a batch is formed is left out and its `run` raises Expired.
    - If `run_batch` raises, or returns a list of another length, each request of that batch is run again
      alone, so only a request that fails on its own raises (a copy of) its error: one client's volume of
      another shape, or values the model chokes on, cannot fail the other clients' requests batched with it.
      Each attempt gets shallow copies of the items, so what a failed batch wrote into them is not seen again.
    - `lock` (the GPU lock) is held around each batch; `on_batch(size)` is told each batch's size.
    """

    def __init__(
        self,
        run_batch: Callable[[list], list],
        max_batch: int,
        max_delay_ms: float = 0.0,
        lock=None,
        *,
        clock: Callable[[], float] = time.monotonic,
        name: str = "tomaat-batcher",
    ):
        if int(max_batch) < 1 or not max_delay_ms >= 0:
            raise ValueError(f"max_batch {max_batch!r} must be at least 1 and max_delay_ms {max_delay_ms!r} at least 0")
        self.run_batch = run_batch
        self.max_batch = int(max_batch)
        self.max_delay = float(max_delay_ms) / 1000.0
        self.lock = lock if lock is not None else contextlib.nullcontext()
        self.clock = clock
        self.name = name
        self.on_batch: Callable[[int], None] | None = None
        self._cond = threading.Condition()
        self._queue: deque[_Slot] = deque()
        self._dispatching = False

    @property
    def waiting(self) -> int:
        """Requests queued for a batch that has not started."""
        with self._cond:
            return len(self._queue)

    def wake(self) -> None:
        """Make the dispatcher look at its clock again (for a test that moves a clock of its own)."""
        with self._cond:
            self._cond.notify_all()

    def run(self, item, timings=None, expired: Callable[[], bool] | None = None):
        """`item`'s result, once the batch it went into has run; on the calling thread's request timings
        (a timings.Timings): `lock_wait` until its batch started, `inference` for the batch, `batch` its size."""
        slot = _Slot(item, expired, self.clock())
        with self._cond:
            self._queue.append(slot)
            if self._dispatching:
                self._cond.notify_all()
            else:
                self._dispatching = True
                threading.Thread(target=self._dispatch, name=self.name, daemon=True).start()
        slot.done.wait()
        if timings is not None:
            started = slot.started if slot.started is not None else slot.ended
            timings["lock_wait"] = timings.get("lock_wait", 0.0) + started - slot.queued
            if slot.size:
                timings["inference"] = timings.get("inference", 0.0) + slot.ended - started
                timings.batch = slot.size
        if slot.error is not None:
            raise _own_copy(slot.error)
        return slot.result

    def _dispatch(self) -> None:
        batch: list[_Slot] = []
        try:
            while True:
                with self._cond:
                    if not self._wait_for_company():
                        self._dispatching = False
                        return
                with self.lock:  # the model is free: the batch is whoever waits now
                    with self._cond:
                        batch = self._take()
                    started = time.perf_counter()
                    outcomes = self._run(batch) if batch else []
                    ended = time.perf_counter()
                self._deliver(batch, outcomes, started, ended)
                batch = []
        except BaseException as error:  # never leave a caller waiting on a dispatcher that is gone
            log.exception("the batcher stopped unexpectedly; its waiting requests fail")
            with self._cond:
                stranded, self._queue = batch + list(self._queue), deque()
                self._dispatching = False
            now = time.perf_counter()
            for slot in stranded:
                if not slot.done.is_set():
                    slot.error, slot.ended = error, now
                    slot.done.set()
            raise

    def _wait_for_company(self) -> bool:
        """Under the condition: wait, as long as the delay allows, for a full batch; False when none waits."""
        while True:
            self._drop_expired()
            if not self._queue:
                return False
            if len(self._queue) >= self.max_batch:
                return True
            remaining = self._queue[0].arrived + self.max_delay - self.clock()
            if remaining <= 0:
                return True
            self._cond.wait(remaining)

    def _drop_expired(self) -> None:
        gone = [slot for slot in self._queue if slot.expired is not None and slot.expired()]
        if not gone:
            return
        self._queue = deque(slot for slot in self._queue if slot not in gone)
        now = time.perf_counter()
        for slot in gone:
            slot.error, slot.ended = Expired("the request's time limit passed while it waited for a batch"), now
            slot.done.set()

    def _take(self) -> list[_Slot]:
        self._drop_expired()
        return [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]

    def _attempt(self, batch: list[_Slot]) -> tuple[list, BaseException | None]:
        try:
            results = self.run_batch([copy.copy(slot.item) for slot in batch])
            if not isinstance(results, (list, tuple)) or len(results) != len(batch):
                raise ValueError(f"a batch of {len(batch)} items gave {_described(results)}")
            return list(results), None
        except Exception as error:
            return [None] * len(batch), error

    def _run(self, batch: list[_Slot]) -> list[tuple[object, BaseException | None]]:
        """(result, error) for each request: the batch's, or, when the batch failed, each request's alone."""
        results, error = self._attempt(batch)
        if error is None or len(batch) == 1:
            return [(result, error) for result in results]
        log.warning("a batch of %d requests failed; each is run again alone, so only its culprit fails", len(batch))
        alone = [self._attempt([slot]) for slot in batch]
        return [(results[0], error) for results, error in alone]

    def _deliver(self, batch: list[_Slot], outcomes: list, started: float, ended: float) -> None:
        for slot, (result, error) in zip(batch, outcomes, strict=True):
            slot.result, slot.error = result, error
            slot.started, slot.ended, slot.size = started, ended, len(batch)
            slot.done.set()
        if batch and self.on_batch is not None:
            try:
                self.on_batch(len(batch))
            except Exception:
                log.exception("recording a batch's size failed")


def _described(results) -> str:
    if isinstance(results, (list, tuple)):
        return f"{len(results)} results"
    return f"a {type(results).__name__} instead of a list"


def _own_copy(error: BaseException) -> BaseException:
    """The batch's error for one of its requests: each thread raises its own, so tracebacks do not mix."""
    try:
        return copy.copy(error)
    except Exception:
        return error
