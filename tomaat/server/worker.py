"""Runs a request's work on the thread pool, counting what waits and what runs, under the service's time limit.

The work is a callable the route composes (a prediction, a volume to store); it returns an `Outcome`
(rendering.py), and a RequestError it raises becomes one, as does an unexpected failure (a 500, the
traceback in the log). `finish`, when given, turns the outcome into what the route sends, still on the
worker (rendering a large answer is no work for the reactor). The time limit is kept here, on the
reactor, because the worker thread running the app cannot be interrupted: past the limit the client gets
a 504 and the thread's late result is dropped (`then` still sees it, see submit).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool

from ..errors import ServiceError
from .rendering import Outcome
from .timings import Timings, Watch

log = logging.getLogger("tomaat.server")


class Worker:
    def __init__(self, reactor, pool, app_timeout: float = 0.0, max_queue: int = 0):
        self.reactor = reactor
        self.pool = pool
        self.app_timeout = float(app_timeout or 0)  # 0: no limit
        self.max_queue = int(max_queue or 0)  # 0: no limit
        self._lock = threading.Lock()
        self.queued = 0
        self.in_flight = 0
        self.unanswered = 0  # submitted and not yet answered (reactor thread only): what shutdown waits for
        self.observers: list = []  # called with (status, timings) after each counted request, on the worker thread

    def _count(self, queued: int, in_flight: int) -> None:
        with self._lock:
            self.queued += queued
            self.in_flight += in_flight

    @property
    def full(self) -> bool:
        return bool(self.max_queue) and self.queued >= self.max_queue

    @property
    def busy(self) -> bool:
        return bool(self.unanswered or self.in_flight or self.queued)

    def _work(self, label: str, timings: Timings, work, finish, count: bool, watch: Watch):
        self._count(-1, +1)
        start = time.perf_counter()
        try:
            outcome = work(watch)
        except ServiceError as error:
            outcome = Outcome.error(error.status, error.message)
        except Exception:
            log.exception("%s failed unexpectedly", label)
            outcome = Outcome.error(500, "internal server error; the details are in the server log")
        finally:
            self._count(0, -1)
        result = outcome
        if finish is not None:
            with timings.stage("encode"):
                result = finish(outcome)
        total = timings.get("receive", 0.0) + time.perf_counter() - start
        log.info("%s %d %.1fms %s", label, outcome.status, total * 1000, timings.summary())
        if count:
            for observe in self.observers:
                observe(outcome.status, timings)
        return result

    def _timeout(self, label: str) -> Outcome:
        log.error(
            "%s: the app ran past app_timeout (%g s); answered 504, its thread runs on until the current step ends",
            label,
            self.app_timeout,
        )
        message = (
            f"the service did not finish within its time limit of {self.app_timeout:g} s; "
            "try a smaller input or ask the service's operator"
        )
        return Outcome.error(504, message)

    def submit(
        self,
        label: str,
        timings: Timings,
        work: Callable[[Watch], Outcome],
        finish: Callable[[Outcome], object] | None = None,
        then: Callable | None = None,
        count: bool = True,
    ) -> Deferred:
        """A Deferred firing with finish(outcome) (the outcome itself without finish), or with finish of a 504
        outcome once the app runs past the time limit.

        `then(result)`, on the reactor, sees every result the work gives, even one that comes after the client
        was answered 504 or went away, and returns the result to send: what the reactor must do with a finished
        payload (storing a volume) is never skipped. count=False keeps the work out of the observers' counts
        (uploads are not predictions).
        """
        self._count(+1, 0)
        self.unanswered += 1
        answer: Deferred = Deferred()
        timer: list = []

        def expire():
            watch.expired = True
            timed_out = self._timeout(label)
            answer.callback(finish(timed_out) if finish is not None else timed_out)

        def arm():  # on the reactor, when the app's first step begins
            if self.app_timeout and not answer.called:
                timer.append(self.reactor.callLater(self.app_timeout, expire))

        def finished(result):
            if timer and timer[0].active():
                timer[0].cancel()
            if not answer.called:
                answer.callback(result)

        def answered(result):
            self.unanswered -= 1
            return result

        watch = Watch(lambda: self.reactor.callFromThread(arm))
        answer.addBoth(answered)
        done = deferToThreadPool(self.reactor, self.pool, self._work, label, timings, work, finish, count, watch)
        if then is not None:
            done.addCallback(then)
        done.addCallbacks(finished, lambda failure: None if answer.called else answer.errback(failure))
        return answer
