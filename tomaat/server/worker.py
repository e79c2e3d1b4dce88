"""Hands each prediction to the thread pool and turns its outcome into an Answer: status, body, Content-Type.

Encoding happens on the worker too, as JSON or, for a client that asked for it, as a binary
answer (protocol/binary_answers.py): a result list can hold hundreds of megabytes, which the
reactor thread must not spend time on. The time limit is kept here, on the reactor, because the
worker thread running the app cannot be interrupted: past the limit the client is answered 504
and the thread's late result is dropped.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool

from ..errors import RequestError
from ..protocol import b64, binary_answers
from ..protocol.answers import error_items
from .pipeline import Timings, Watch

log = logging.getLogger("tomaat.server")

JSON_TYPE = "application/json"
# How a worker hands back a successful payload: JSON bytes (v1, and every error), a binary answer's pieces,
# or the payload itself, unencoded, for the reactor to keep (delayed results) or to finish (stored volumes).
JSON, BINARY, KEEP = "json", "binary", "keep"


@dataclass
class Answer:
    status: int
    body: Any  # bytes, or a binary answer's pieces (list of bytes); the payload itself when kept (KEEP)
    content_type: str = JSON_TYPE


def to_json(value) -> bytes:
    return json.dumps(value).encode("utf-8")


def json_items(items):
    """Items as JSON carries them: raw contents (bytes, from a pipeline run for a binary answer) as base64 text."""
    if not isinstance(items, list) or not any(isinstance(item, dict) and _raw(item) for item in items):
        return items
    return [{**item, "content": b64.encode(item["content"])} if _raw(item) else item for item in items]


def _raw(item: dict) -> bool:
    return isinstance(item.get("content"), (bytes, bytearray, memoryview))


def encode_answer(status: int, payload, form: str = JSON) -> Answer:
    """The answer for a payload: a binary answer when asked for and the request succeeded; JSON otherwise,
    errors always. On a worker thread: the payload may be hundreds of megabytes."""
    if form == BINARY and status == 200:
        try:
            pieces, content_type = binary_answers.encode(payload)
        except (TypeError, ValueError):  # an output type no part header can name: the app's, not the client's
            log.exception("the answer could not be encoded as multipart/mixed")
            message = "the service's answer could not be sent as a binary answer; ask without Accept: multipart/mixed"
            return Answer(500, to_json(error_items(message)))
        return Answer(status, pieces, content_type)
    return Answer(status, to_json(json_items(payload)))


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

    def _work(self, body, content_type, timings: Timings, label: str, watch: Watch, job) -> Answer:
        self._count(-1, +1)
        start = time.perf_counter()
        run, form, success, count = job
        try:
            status = success
            if run is None:
                payload = self.pipeline.run(body, content_type, timings, watch, raw=form != JSON)
            else:
                payload = run(body, content_type, timings, watch)
        except RequestError as error:
            status, payload = error.status, error_items(error.message)
        except Exception:
            log.exception("%s failed unexpectedly", label)
            status, payload = 500, error_items("internal server error; the details are in the server log")
        finally:
            body.close()
            self._count(0, -1)
        if form == KEEP:
            answer = Answer(status, payload)
        else:
            with timings.stage("encode"):
                answer = encode_answer(status, payload, form)
        total = timings.get("receive", 0.0) + time.perf_counter() - start
        log.info("%s %d %.1fms %s", label, status, total * 1000, timings.summary())
        if count:
            for observe in self.observers:
                observe(status, timings)
        return answer

    def _timeout_answer(self, label: str) -> Answer:
        log.error(
            "%s: the app ran past app_timeout (%g s); answered 504, its thread runs on until the current step ends",
            label,
            self.app_timeout,
        )
        message = (
            f"the service did not finish within its time limit of {self.app_timeout:g} s; "
            "try a smaller input or ask the service's operator"
        )
        return Answer(504, to_json(error_items(message)))

    def submit(
        self,
        body,
        content_type: str | None,
        timings: Timings,
        label: str,
        form: str = JSON,
        *,
        run=None,
        success: int = 200,
        then=None,
        count: bool = True,
    ):
        """A Deferred firing with an Answer; body is closed when the work ends.

        By default the work is a prediction (the pipeline), its payload encoded as `form` says. `run`,
        called as run(body, content_type, timings, watch) on the worker, does other work instead, answered
        `success` when it raises no RequestError. `then(answer)`, on the reactor, sees every answer the
        work gives, even one that comes after the client was answered 504 or went away, and returns the
        answer to send: what the reactor must do with a finished payload (storing a volume) is never
        skipped. count=False keeps the work out of the observers' counts (uploads are not predictions).
        """
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
        job = (run, form, success, count)
        work = deferToThreadPool(self.reactor, self.pool, self._work, body, content_type, timings, label, watch, job)
        if then is not None:
            work.addCallback(then)
        work.addCallbacks(finished, lambda failure: None if answer.called else answer.errback(failure))
        return answer
