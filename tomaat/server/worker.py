"""Hands each prediction to the thread pool and turns its outcome into (status, JSON bytes).

JSON encoding happens on the worker too: a result list can hold hundreds of
megabytes of base64, which the reactor thread must not spend time on. The
time limit is kept here, on the reactor, because the worker thread running
the app cannot be interrupted: past the limit the client is answered 504 and
the thread's late result is dropped.
"""

from __future__ import annotations

import json
import logging
import threading
import time

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool

from ..errors import RequestError
from ..protocol.answers import error_items
from .pipeline import Timings, Watch

log = logging.getLogger("tomaat.server")


def to_json(value) -> bytes:
    return json.dumps(value).encode("utf-8")


class Worker:
    def __init__(self, reactor, pool, pipeline, app_timeout: float = 0.0, max_queue: int = 0):
        self.reactor = reactor
        self.pool = pool
        self.pipeline = pipeline
        self.app_timeout = float(app_timeout or 0)  # 0: no limit
        self.max_queue = int(max_queue or 0)  # 0: no limit
        self._lock = threading.Lock()
        self.queued = 0
        self.in_flight = 0
        self.unanswered = 0  # submitted and not yet answered (reactor thread only): what shutdown waits for
        self.observers = []  # called with (status, timings) after each request, on the worker thread

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

    def _work(self, body, content_type, timings: Timings, label: str, watch: Watch) -> tuple[int, bytes]:
        self._count(-1, +1)
        start = time.perf_counter()
        try:
            status, payload = 200, self.pipeline.run(body, content_type, timings, watch)
        except RequestError as error:
            status, payload = error.status, error_items(error.message)
        except Exception:
            log.exception("%s failed unexpectedly", label)
            status, payload = 500, error_items("internal server error; the details are in the server log")
        finally:
            body.close()
            self._count(0, -1)
        with timings.stage("encode"):
            encoded = to_json(payload)
        total = timings.get("receive", 0.0) + time.perf_counter() - start
        log.info("%s %d %.1fms %s", label, status, total * 1000, timings.summary())
        for observe in self.observers:
            observe(status, timings)
        return status, encoded

    def _timeout_answer(self, label: str) -> tuple[int, bytes]:
        log.error(
            "%s: the app ran past app_timeout (%g s); answered 504, its thread runs on until the current step ends",
            label,
            self.app_timeout,
        )
        message = (
            f"the service did not finish within its time limit of {self.app_timeout:g} s; "
            "try a smaller input or ask the service's operator"
        )
        return 504, to_json(error_items(message))

    def submit(self, body, content_type: str | None, timings: Timings, label: str):
        """A Deferred firing with (status, body bytes); body is closed when the work ends."""
        self._count(+1, 0)
        self.unanswered += 1
        answer, timer = Deferred(), []

        def expire():
            watch.expired = True
            answer.callback(self._timeout_answer(label))

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
        work = deferToThreadPool(self.reactor, self.pool, self._work, body, content_type, timings, label, watch)
        work.addCallbacks(finished, lambda failure: None if answer.called else answer.errback(failure))
        return answer
