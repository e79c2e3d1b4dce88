"""The prediction server's HTTP routes, as PROTOCOL.md names them.

Routes only move bytes and call the service: no parsing of volumes, no app
code, nothing slow, because they run on the reactor thread.
"""

from __future__ import annotations

import json

from klein import Klein
from twisted.internet.threads import deferToThreadPool
from werkzeug.exceptions import MethodNotAllowed, NotFound

from ..errors import RequestError
from ..protocol import stored_volumes
from ..protocol.answers import delayed_items, error_items
from ..protocol.binary_answers import wants_binary
from . import page
from .form import read_fields
from .pipeline import Timings
from .sending import send
from .volume_store import short
from .worker import BINARY, JSON, JSON_TYPE, KEEP, Answer, encode_answer, to_json

RESPONSES_BODY = 4096  # a request_id form is a few hundred bytes: a larger one is never parsed


def _json(request, value, status: int = 200) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    return value if isinstance(value, bytes) else json.dumps(value).encode("utf-8")


def _wants_async(request) -> bool:
    prefer = request.getHeader(b"Prefer") or b""
    return b"respond-async" in prefer.lower()


def _form(request) -> str:
    """How a successful answer is encoded for this request: binary when its Accept asks for multipart/mixed."""
    return BINARY if wants_binary(request.getHeader(b"Accept")) else JSON


NO_STORE = "this server keeps no volumes (its volume_ttl is 0); send the volume with each prediction"


class PredictionRoutes:
    app = Klein()

    def __init__(self, service):
        self.service = service

    @app.route("/interface", methods=["GET"])
    def interface(self, request):
        return _json(request, [e.to_dict() for e in self.service.input_interface])

    @app.route("/info", methods=["GET"])
    def info(self, request):
        return _json(request, self.service.info())

    @app.route("/health", methods=["GET"])
    def health(self, request):
        return _json(request, self.service.health())

    @app.route("/metrics", methods=["GET"])
    def metrics(self, request):
        request.setHeader(b"Content-Type", self.service.metrics.content_type.encode("ascii"))
        return self.service.metrics.render()

    @app.route("/announcePoint", methods=["GET"])
    def announce_point(self, request):
        return _json(request, {"announced_at": self.service.announced_at})

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
        found = page.file(name)
        if found is None:
            return _json(request, error_items(f"no such page file: {name[:100]}"), 404)
        content, content_type = found
        request.setHeader(b"Content-Type", content_type.encode("ascii"))
        for header, value in page.HEADERS.items():
            request.setHeader(header, value)
        return content

    @app.route("/predict", methods=["POST"])
    def predict(self, request):
        if self.service.worker.full:
            request.content.close()
            request.setHeader(b"Retry-After", b"5")
            message = f"the server is busy ({self.service.worker.queued} requests are waiting); try again shortly"
            return _json(request, error_items(message), 503)
        prefer_async = _wants_async(request)
        if (prefer_async or self.service.delayed_responses) and self.service.delayed.full:
            request.content.close()
            request.setHeader(b"Retry-After", b"30")
            held = self.service.delayed.max_count
            message = f"the server holds {held} uncollected delayed results; collect yours, or try again later"
            return _json(request, error_items(message), 503)
        # The worker owns the body from here: Twisted would close it when an
        # async answer finishes, while the worker is still reading it.
        body, request.content = request.content, None
        timings = Timings(receive=(request.received_at or request.headers_at) - request.headers_at)
        content_type = (request.getHeader(b"Content-Type") or b"").decode("latin-1")
        delayed = prefer_async or self.service.delayed_responses
        # a delayed result is kept unencoded: whoever collects it says how it is encoded
        form = KEEP if delayed else _form(request)
        outcome = self.service.worker.submit(body, content_type, timings, "POST /predict", form)
        if delayed:
            request_id = self.service.delayed.track(outcome)
            if prefer_async:
                request.setHeader(b"Preference-Applied", b"respond-async")
            return _json(request, delayed_items(request_id), 202 if prefer_async else 200)
        return outcome.addCallback(self._answer, request)

    def _answer(self, answer: Answer, request):
        """Send an encoded answer, timing the `send` stage; Klein then finishes the request."""
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
            return _json(request, error_items(NO_STORE), 404)
        if self.service.worker.full:
            request.content.close()
            request.setHeader(b"Retry-After", b"5")
            message = f"the server is busy ({self.service.worker.queued} requests are waiting); try again shortly"
            return _json(request, error_items(message), 503)
        body, request.content = request.content, None
        timings = Timings(receive=(request.received_at or request.headers_at) - request.headers_at)
        content_type = (request.getHeader(b"Content-Type") or b"").decode("latin-1")
        volumes = self.service.volumes
        outcome = self.service.worker.submit(
            body, content_type, timings, "POST /volumes", KEEP, run=volumes.receive, success=201, then=self._stored,
            count=False,
        )  # fmt: skip
        return outcome.addCallback(self._answer, request)

    def _stored(self, answer: Answer) -> Answer:
        """On the reactor, whether or not the client is still there: a decoded upload kept, or an error encoded."""
        if answer.status != 201:
            return Answer(answer.status, to_json(answer.body))
        try:
            volume_id, size = self.service.volumes.put(answer.body)
        except RequestError as error:
            return Answer(error.status, to_json(error_items(error.message)))
        ttl = self.service.volumes.describe()["ttl"]
        return Answer(201, to_json({"volume_id": volume_id, "expires_in": ttl, "bytes": size}))

    @app.route("/volumes/<string:volume_id>", methods=["DELETE"])
    def delete_volume(self, request, volume_id):
        request.content.close()
        if not self.service.volumes.enabled:
            return _json(request, error_items(NO_STORE), 404)
        if not stored_volumes.is_volume_id(volume_id) or not self.service.volumes.delete(volume_id):
            if stored_volumes.is_volume_id(volume_id):
                self.service.log.info("DELETE /volumes/%s 404", short(volume_id))
            return _json(request, error_items(stored_volumes.unknown(volume_id)), 404)
        request.setResponseCode(204)
        return b""

    @app.route("/responses", methods=["POST"])
    def responses(self, request):
        if request.content.seek(0, 2) > RESPONSES_BODY:
            request.content.close()
            message = f"the body is larger than {RESPONSES_BODY} bytes; /responses takes one field, request_id"
            return _json(request, error_items(message), 413)
        request.content.seek(0)
        content_type = (request.getHeader(b"Content-Type") or b"").decode("latin-1")
        fields = deferToThreadPool(self.service.reactor, self.service.pool, read_fields, request.content, content_type)
        return fields.addCallback(self._collect, request).addErrback(self._form_error, request)

    def _collect(self, fields, request):
        request_id = bytes(fields.get("request_id", b"")).decode("latin-1").strip()
        if not request_id:
            return _json(request, error_items("missing field 'request_id' (the id a DelayedResponse gave you)"), 400)
        try:
            result = self.service.delayed.collect(request_id)
        except KeyError:
            message = f"unknown request_id {request_id[:64]!r}: it was never issued, was already collected, or expired"
            return _json(request, error_items(message), 404)
        if result is None:
            return _json(request, delayed_items(request_id))
        status, payload = result
        if isinstance(payload, (bytes, bytearray)):  # encoded already: a 504
            return self._answer(Answer(status, payload), request)
        # encoded now, as this request asks, on a worker thread: the items may be hundreds of megabytes
        encoded = deferToThreadPool(
            self.service.reactor, self.service.pool, encode_answer, status, payload, _form(request)
        )
        return encoded.addCallback(self._answer, request)

    def _form_error(self, failure, request):
        failure.trap(RequestError)
        return _json(request, error_items(failure.value.message), failure.value.status)

    @app.handle_errors(NotFound, MethodNotAllowed)
    def no_route(self, request, failure):
        where = f"{request.method.decode('latin-1')} {request.path.decode('latin-1')[:100]}"
        return _json(request, error_items(f"no such endpoint: {where}"), failure.value.code)
