"""The prediction server's HTTP routes, as docs/protocol.md names them.

Routes only move bytes and call the service: no parsing of volumes, no app
code, nothing slow, because they run on the reactor thread.
"""

from __future__ import annotations

import functools
import logging
import secrets
from contextlib import closing
from functools import partial

from klein import Klein
from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from werkzeug.exceptions import MethodNotAllowed, NotFound

from ..access.identity import ADMIN, METRICS, PREDICT, Identity, Refused, anyone
from ..errors import ServiceError
from ..net.web import json_reply
from ..protocol import stored_volumes
from ..protocol.answers import delayed_items, error_items
from . import page, rendering
from .audit_trail import Trail
from .form import read_fields
from .rendering import JSON_TYPE, Answer, Outcome
from .sending import send
from .timings import Timings
from .volume_store import short

log = logging.getLogger("tomaat.server")

RESPONSES_BODY = 4096  # a request_id form is a few hundred bytes: a larger one is never parsed
NO_STORE = "this server keeps no volumes (its volume_ttl is 0); send the volume with each prediction"


def _wants_async(request) -> bool:
    prefer = request.getHeader(b"Prefer") or b""
    return b"respond-async" in prefer.lower()


def _refuse(request, message: str, retry_after: bytes):
    """A 503 before the body is read: the client may try again after a while."""
    request.content.close()
    request.setHeader(b"Retry-After", retry_after)
    return json_reply(request, error_items(message), 503)


def _page_headers(request) -> None:
    """The browser page's security headers (page.py): a path echoed in a 404 is never sniffed as HTML nor run."""
    for header, value in page.HEADERS.items():
        request.setHeader(header, value)


def _take_body(request) -> tuple:
    """(body, Content-Type, timings): the worker owns the body from here. Twisted would close it when an
    asynchronous answer finishes, while the worker is still reading it."""
    body, request.content = request.content, None
    timings = request.timings = Timings(receive=(request.received_at or request.headers_at) - request.headers_at)
    return body, (request.getHeader(b"Content-Type") or b"").decode("latin-1"), timings


INFO = "info"  # /interface and /info: open unless the service's open_info is off, then `predict`
AUDIT_DOWN = "this server records every request in its audit log, which cannot be written now; try again later"


def _where(request) -> str:
    return f"{request.method.decode('latin-1')} {request.path.decode('latin-1')[:100]}"


def guarded(scope: str):
    """A route for identities allowed `scope` (tomaat/access): the gate decides before the route runs, and
    the request's identity is `request.identity` from then on."""

    def decorate(route):
        @functools.wraps(route)
        def guarded_route(self, request, *args, **kwargs):
            return self._through_gate(scope, route, request, args, kwargs)

        return guarded_route

    return decorate


class PredictionRoutes:
    app = Klein()

    def __init__(self, service):
        self.service = service

    # ---- the gate: identity, audit, fair shares -----------------------------------------------------------

    def _through_gate(self, scope: str, route, request, args, kwargs):
        scope = self.service.scope_of(scope)
        if scope is None:  # open: an identity only for owning things, never checked
            request.identity = anyone()
            return route(self, request, *args, **kwargs)
        recorder = self.service.recorder
        if recorder is not None and recorder.refusing:
            return _refuse(request, AUDIT_DOWN, b"30")
        identified = defer.ensureDeferred(self.service.access.identify(request, scope))
        identified.addCallbacks(partial(self._allowed, route, request, args, kwargs), partial(self._refused, request))
        return identified

    def _allowed(self, route, request, args, kwargs, identity: Identity):
        request.identity = identity
        answered = defer.maybeDeferred(route, self, request, *args, **kwargs)
        return answered.addCallback(self._recorded, request)

    def _refused(self, request, failure):
        failure.trap(Refused)
        refusal = failure.value
        if request.content is not None:
            request.content.close()
        for header, value in refusal.headers.items():
            request.setHeader(header, value)
        log.info("%s %d: %s", _where(request), refusal.status, refusal.message)
        body = json_reply(request, error_items(refusal.message), refusal.status)
        return self._recorded(body, request)

    def _record(self, request, status: int, **extra) -> dict:
        identity = getattr(request, "identity", None)
        record = {
            "identity": identity.name if identity is not None else None,
            "method": identity.method if identity is not None else None,
            "address": getattr(request.getClientAddress(), "host", ""),
            "route": _where(request),
            "status": status,
        }
        timings = getattr(request, "timings", None)
        if timings:
            record["stages"] = {stage: round(seconds, 6) for stage, seconds in timings.items()}
        trail = getattr(request, "trail", None)
        if trail is not None:
            record.update(inputs=trail.inputs, outputs=trail.outputs)
        record.update(getattr(request, "audit_extra", {}), **extra)
        return record

    def _recorded(self, body, request):
        """A small answer, once its record is written: a 503 instead when the log is required and cannot be."""
        recorder = self.service.recorder
        if recorder is None or getattr(request, "recorded", False):
            return body
        request.recorded = True
        written = recorder.record(self._record(request, request.code))

        def answer(ok: bool):
            if ok or not recorder.required:
                return body
            request.setHeader(b"Retry-After", b"30")
            return json_reply(request, error_items(AUDIT_DOWN), 503)

        return written.addCallback(answer)

    def _share(self, request):
        """The key of the identity's fair share, taken; or the 429 refusing it."""
        identity = request.identity
        key = identity.owner or f"address:{getattr(request.getClientAddress(), 'host', '')}"
        cap = self.service.share_cap()
        if self.service.shares.take(key, cap):
            return key, None
        request.content.close()
        request.setHeader(b"Retry-After", b"5")
        message = (
            f"{identity.name if identity.method != 'open' else 'this address'} has {cap} requests in flight or "
            "waiting, the most one identity may have here; send more when one is answered"
        )
        log.info("%s 429: %s", _where(request), message)
        return None, self._recorded(json_reply(request, error_items(message), 429), request)

    def _released(self, result, key: str):
        self.service.shares.give(key)
        return result

    @app.route("/interface", methods=["GET"])
    @guarded(INFO)
    def interface(self, request):
        return json_reply(request, [e.to_dict() for e in self.service.input_interface])

    @app.route("/info", methods=["GET"])
    @guarded(INFO)
    def info(self, request):
        return json_reply(request, self.service.info())

    @app.route("/health", methods=["GET"])
    def health(self, request):
        return json_reply(request, self.service.health())

    @app.route("/metrics", methods=["GET"])
    @guarded(METRICS)
    def metrics(self, request):
        request.setHeader(b"Content-Type", self.service.metrics.content_type.encode("ascii"))
        return self.service.metrics.render()

    @app.route("/announcePoint", methods=["GET"])
    @guarded(ADMIN)
    def announce_point(self, request):
        return json_reply(request, {"announced_at": self.service.announced_at})

    @app.route("/app", methods=["GET"])
    def page_root(self, request):
        request.setResponseCode(301)
        request.setHeader(b"Location", b"app/")
        return b""

    @app.route("/app/", methods=["GET"], defaults={"name": ""})
    @app.route("/app/<string:name>", methods=["GET"])
    @app.route("/app/dcm2niix/<string:part>", methods=["GET"])
    def page_file(self, request, name="", part=None):
        name = name if part is None else f"dcm2niix/{part}"
        _page_headers(request)  # on every answer under /app/, a 404 included
        found = page.file(name)
        if found is None:
            return json_reply(request, error_items(f"no such page file: {name[:100]}"), 404)
        content, content_type = found
        request.setHeader(b"Content-Type", content_type.encode("ascii"))
        return content

    def _busy(self, request):
        """The 503 for a full queue, or None."""
        worker = self.service.worker
        if worker.full:
            message = f"the server is busy ({worker.queued} requests are waiting); try again shortly"
            return _refuse(request, message, b"5")
        return None

    @app.route("/predict", methods=["POST"])
    @guarded(PREDICT)
    def predict(self, request):
        busy = self._busy(request)
        if busy is not None:
            return busy
        prefer_async = _wants_async(request)
        delayed = prefer_async or self.service.delayed_responses
        if delayed and self.service.delayed.full:
            held = self.service.delayed.max_count
            message = f"the server holds {held} uncollected delayed results; collect yours, or try again later"
            return _refuse(request, message, b"30")
        key, refused = self._share(request)
        if refused is not None:
            return refused
        body, content_type, timings = _take_body(request)
        run, owner, trail = self.service.prediction.run, request.identity.owner, self._trail(request)

        def prediction(watch) -> Outcome:
            with closing(body):
                return Outcome(200, run(body, content_type, timings, watch, owner, trail))

        if delayed:  # the outcome is kept as it is: whoever collects it says how it is rendered
            worked = self.service.worker.submit("POST /predict", timings, prediction)
            worked.addBoth(self._released, key)
            request_id = secrets.token_hex(16)
            request.audit_extra = {"request_id": request_id}
            if self.service.recorder is not None:  # the work's own record, when it ends: its outputs are known then
                worked.addCallback(self._record_delayed, request)
            self.service.delayed.track(worked, owner, request_id)
            if prefer_async:
                request.setHeader(b"Preference-Applied", b"respond-async")
            return json_reply(request, delayed_items(request_id), 202 if prefer_async else 200)
        render = partial(rendering.render, encoding=rendering.encoding_for(request.getHeader(b"Accept")))
        answer = self.service.worker.submit("POST /predict", timings, prediction, finish=render)
        answer.addBoth(self._released, key)
        return answer.addCallback(self._send, request)

    def _trail(self, request) -> Trail | None:
        if self.service.recorder is None:
            return None
        request.trail = Trail()
        return request.trail

    def _record_delayed(self, outcome: Outcome, request):
        """The work's record, written before its result can be collected (whose collection is recorded too)."""
        written = self.service.recorder.record(self._record(request, outcome.status, delayed=True))
        return written.addCallback(lambda _: outcome)
        return outcome

    def _send(self, answer: Answer, request):
        """Send a rendered answer once its audit record is written, timing the `send` stage; Klein then finishes
        the request. With a required audit log that cannot be written, the answer is a 503 instead."""
        recorder = self.service.recorder
        if recorder is None or getattr(request, "recorded", False):
            return self._send_now(answer, request)
        request.recorded = True
        written = recorder.record(self._record(request, answer.status))

        def send_it(ok: bool):
            if ok or not recorder.required:
                return self._send_now(answer, request)
            request.setHeader(b"Retry-After", b"30")
            return self._send_now(rendering.error(503, AUDIT_DOWN), request)

        return written.addCallback(send_it)

    def _send_now(self, answer: Answer, request):
        request.setResponseCode(answer.status)
        request.setHeader(b"Content-Type", answer.content_type.encode("latin-1"))
        if answer.content_type != JSON_TYPE:
            request.setHeader(b"Vary", b"Accept")
        sent = send(request, answer.body)
        return sent.addCallback(lambda seconds: self.service.metrics.observe_stage("send", seconds)).addCallback(
            lambda _: b""
        )

    # ---- stored volumes ----------------------------------------------------------------------------

    @app.route("/volumes", methods=["POST"])
    @guarded(PREDICT)
    def store_volume(self, request):
        if not self.service.volumes.enabled:
            request.content.close()
            return json_reply(request, error_items(NO_STORE), 404)
        busy = self._busy(request)
        if busy is not None:
            return busy
        key, refused = self._share(request)
        if refused is not None:
            return refused
        body, content_type, timings = _take_body(request)
        volumes, trail = self.service.volumes, self._trail(request)

        def upload(watch) -> Outcome:
            with closing(body):
                return Outcome(201, volumes.receive(body, content_type, timings, watch, trail))

        then = partial(self._stored, owner=request.identity.owner)
        stored = self.service.worker.submit("POST /volumes", timings, upload, then=then, count=False)
        stored.addBoth(self._released, key)
        return stored.addCallback(self._send, request)

    def _stored(self, outcome: Outcome, owner: str = "") -> Answer:
        """On the reactor, whether or not the client is still there: a decoded upload kept, or an error rendered."""
        if outcome.status != 201:
            return rendering.render(outcome)
        try:
            volume_id, size = self.service.volumes.put(outcome.items, owner)
        except ServiceError as error:
            return rendering.error(error.status, error.message)
        ttl = self.service.volumes.describe()["ttl"]
        return rendering.json_answer({"volume_id": volume_id, "expires_in": ttl, "bytes": size}, 201)

    @app.route("/volumes/<string:volume_id>", methods=["DELETE"])
    @guarded(PREDICT)
    def delete_volume(self, request, volume_id):
        request.content.close()
        if not self.service.volumes.enabled:
            return json_reply(request, error_items(NO_STORE), 404)
        owner = request.identity.owner
        if not stored_volumes.is_volume_id(volume_id) or not self.service.volumes.delete(volume_id, owner):
            if stored_volumes.is_volume_id(volume_id):
                self.service.log.info("DELETE /volumes/%s 404", short(volume_id))
            return json_reply(request, error_items(stored_volumes.unknown(volume_id)), 404)
        request.setResponseCode(204)
        return b""

    @app.route("/responses", methods=["POST"])
    @guarded(PREDICT)
    def responses(self, request):
        if request.content.seek(0, 2) > RESPONSES_BODY:
            request.content.close()
            message = f"the body is larger than {RESPONSES_BODY} bytes; /responses takes one field, request_id"
            return json_reply(request, error_items(message), 413)
        request.content.seek(0)
        content_type = (request.getHeader(b"Content-Type") or b"").decode("latin-1")
        fields = deferToThreadPool(self.service.reactor, self.service.pool, read_fields, request.content, content_type)
        return fields.addCallback(self._collect, request).addErrback(self._form_error, request)

    def _collect(self, fields, request):
        request_id = bytes(fields.get("request_id", b"")).decode("latin-1").strip()
        request.audit_extra = {"request_id": request_id[:64]}
        if not request_id:
            return json_reply(
                request, error_items("missing field 'request_id' (the id a DelayedResponse gave you)"), 400
            )
        try:
            outcome = self.service.delayed.collect(request_id, request.identity.owner)
        except KeyError:
            message = f"unknown request_id {request_id[:64]!r}: it was never issued, was already collected, or expired"
            return json_reply(request, error_items(message), 404)
        if outcome is None:
            return json_reply(request, delayed_items(request_id))
        # rendered now, as this request asks, on a worker thread: the items may be hundreds of megabytes
        encoding = rendering.encoding_for(request.getHeader(b"Accept"))
        rendered = deferToThreadPool(self.service.reactor, self.service.pool, rendering.render, outcome, encoding)
        return rendered.addCallback(self._send, request)

    def _form_error(self, failure, request):
        failure.trap(ServiceError)
        return json_reply(request, error_items(failure.value.message), failure.value.status)

    @app.handle_errors(NotFound, MethodNotAllowed)
    def no_route(self, request, failure):
        if request.path.startswith(b"/app/"):  # the page's: its headers go on every answer under /app/
            _page_headers(request)
        return json_reply(request, error_items(f"no such endpoint: {_where(request)}"), failure.value.code)
