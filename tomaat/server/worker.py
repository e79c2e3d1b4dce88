"""Hands each prediction to the thread pool and turns its outcome into (status, JSON bytes).

JSON encoding happens on the worker too: a result list can hold hundreds of
megabytes of base64, which the reactor thread must not spend time on.
"""

from __future__ import annotations

import json
import logging
import threading
import time

from twisted.internet.threads import deferToThreadPool

from ..protocol.errors import RequestError, error_items
from .pipeline import Timings

log = logging.getLogger("tomaat.server")


def to_json(value) -> bytes:
    return json.dumps(value).encode("utf-8")


class Worker:
    def __init__(self, reactor, pool, pipeline):
        self.reactor = reactor
        self.pool = pool
        self.pipeline = pipeline
        self._lock = threading.Lock()
        self.queued = 0
        self.in_flight = 0
        self.observers = []  # called with (status, timings) after each request, on the worker thread

    def _count(self, queued: int, in_flight: int) -> None:
        with self._lock:
            self.queued += queued
            self.in_flight += in_flight

    def _work(self, body, content_type, timings: Timings, label: str) -> tuple[int, bytes]:
        self._count(-1, +1)
        start = time.perf_counter()
        try:
            status, payload = 200, self.pipeline.run(body, content_type, timings)
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

    def submit(self, body, content_type: str | None, timings: Timings, label: str):
        """A Deferred firing with (status, body bytes); body is closed when the work ends."""
        self._count(+1, 0)
        return deferToThreadPool(self.reactor, self.pool, self._work, body, content_type, timings, label)
