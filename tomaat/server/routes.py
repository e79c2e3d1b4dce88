"""The prediction server's HTTP routes, as docs/protocol.md names them.

Routes only move bytes and call the service: no parsing of volumes, no app
code, nothing slow, because they run on the reactor thread.
"""

from __future__ import annotations

from contextlib import closing
from functools import partial

from klein import Klein
from twisted.internet.threads import deferToThreadPool
from werkzeug.exceptions import MethodNotAllowed, NotFound

from ..errors import ServiceError
from ..net.web import json_reply
from ..protocol import stored_volumes
from ..protocol.answers import delayed_items, error_items
from . import page, rendering
from .form import read_fields
from .rendering import JSON_TYPE, Answer, Outcome
from .sending import send
from .timings import Timings
from .volume_store import short

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
    timings = Timings(receive=(request.received_at or request.headers_at) - request.headers_at)
    return body, (request.getHeader(b"Content-Type") or b"").decode("latin-1"), timings


class PredictionRoutes:
    app = Klein()

    def __init__(self, service):
        self.service = service

    @app.route("/interface", methods=["GET"])
    def interface(self, request):
        return json_reply(request, [e.to_dict() for e in self.service.input_interface])

    @app.route("/info", methods=["GET"])
    def info(self, request):
        return json_reply(request, self.service.info())

    @app.route("/health", methods=["GET"])
    def health(self, request):
        return json_reply(request, self.service.health())

    @app.route("/metrics", methods=["GET"])
    def metrics(self, request):
        request.setHeader(b"Content-Type", self.service.metrics.content_type.encode("ascii"))
        return self.service.metrics.render()

    @app.route("/announcePoint", methods=["GET"])
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
        body, content_type, timings = _take_body(request)
        run = self.service.prediction.run

        def prediction(watch) -> Outcome:
            with closing(body):
                return Outcome(200, run(body, content_type, timings, watch))

        if delayed:  # the outcome is kept as it is: whoever collects it says how it is rendered
            request_id = self.service.delayed.track(self.service.worker.submit("POST /predict", timings, prediction))
            if prefer_async:
                request.setHeader(b"Preference-Applied", b"respond-async")
            return json_reply(request, delayed_items(request_id), 202 if prefer_async else 200)
        render = partial(rendering.render, encoding=rendering.encoding_for(request.getHeader(b"Accept")))
        answer = self.service.worker.submit("POST /predict", timings, prediction, finish=render)
        return answer.addCallback(self._send, request)

    def _send(self, answer: Answer, request):
        """Send a rendered answer, timing the `send` stage; Klein then finishes the request."""
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
    def store_volume(self, request):
        if not self.service.volumes.enabled:
            request.content.close()
            return json_reply(request, error_items(NO_STORE), 404)
        busy = self._busy(request)
        if busy is not None:
            return busy
        body, content_type, timings = _take_body(request)
        volumes = self.service.volumes

        def upload(watch) -> Outcome:
            with closing(body):
                return Outcome(201, volumes.receive(body, content_type, timings, watch))

        stored = self.service.worker.submit("POST /volumes", timings, upload, then=self._stored, count=False)
        return stored.addCallback(self._send, request)

    def _stored(self, outcome: Outcome) -> Answer:
        """On the reactor, whether or not the client is still there: a decoded upload kept, or an error rendered."""
        if outcome.status != 201:
            return rendering.render(outcome)
        try:
            volume_id, size = self.service.volumes.put(outcome.items)
        except ServiceError as error:
            return rendering.error(error.status, error.message)
        ttl = self.service.volumes.describe()["ttl"]
        return rendering.json_answer({"volume_id": volume_id, "expires_in": ttl, "bytes": size}, 201)

    @app.route("/volumes/<string:volume_id>", methods=["DELETE"])
    def delete_volume(self, request, volume_id):
        request.content.close()
        if not self.service.volumes.enabled:
            return json_reply(request, error_items(NO_STORE), 404)
        if not stored_volumes.is_volume_id(volume_id) or not self.service.volumes.delete(volume_id):
            if stored_volumes.is_volume_id(volume_id):
                self.service.log.info("DELETE /volumes/%s 404", short(volume_id))
            return json_reply(request, error_items(stored_volumes.unknown(volume_id)), 404)
        request.setResponseCode(204)
        return b""

    @app.route("/responses", methods=["POST"])
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
        if not request_id:
            return json_reply(
                request, error_items("missing field 'request_id' (the id a DelayedResponse gave you)"), 400
            )
        try:
            outcome = self.service.delayed.collect(request_id)
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
        where = f"{request.method.decode('latin-1')} {request.path.decode('latin-1')[:100]}"
        return json_reply(request, error_items(f"no such endpoint: {where}"), failure.value.code)
