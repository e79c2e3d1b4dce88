"""Twisted web plumbing shared by the prediction server and the registry.

Requests are not parsed on the reactor (bodies are read in worker threads),
each request remembers when its headers arrived so the receive stage can be
timed, and every answer, 404s included, carries the CORS headers.
"""

from __future__ import annotations

import json
import time

from twisted.web import resource, server

from .body import BodyBuffer, Budget
from .protocol.errors import error_items

SMALL_BODY = 1 << 20  # bodies below this are never refused for the budget: a /responses form, say

CORS_HEADERS = {
    b"Access-Control-Allow-Origin": b"*",
    b"Access-Control-Allow-Methods": b"GET, POST, OPTIONS",
    b"Access-Control-Allow-Headers": b"*",
    b"Access-Control-Max-Age": b"86400",
}


class TimedRequest(server.Request):
    """Times the body's arrival and refuses a body over the site's limit before reading it.

    The channel's idle timeout resets on every byte, so a client trickling a
    byte a second would hold a connection and its buffers for ever; the
    receive deadline, from the request's first line to its last body byte,
    drops it with a 408.

    A body that does not fit in the site's budget of bodies held at once is
    read and dropped, and answered 503 once it has arrived: clients such as
    requests read no answer before their upload ends, so hanging up early
    would show them a broken connection instead of the reason.
    """

    def __init__(self, *args, **kwargs):
        kwargs["parsePOSTFormSubmission"] = False
        super().__init__(*args, **kwargs)
        self.headers_at = time.perf_counter()
        self.received_at = None
        self._body_bytes = 0
        self._refused = False
        self._dropping = False
        self._deadline = None
        limit = getattr(getattr(self.channel, "site", None), "receive_timeout", None)
        if limit:
            self._deadline = self.channel.callLater(limit, self._too_slow, limit)

    def _cancel_deadline(self):
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _too_slow(self, limit):
        self._deadline = None
        message = f"the request did not arrive within {limit:g} seconds; the connection is closed"
        self._refuse(b"408 Request Timeout", self.channel.site.refusal(message))

    def connectionLost(self, reason):
        self._cancel_deadline()
        super().connectionLost(reason)

    def gotLength(self, length):
        self.headers_at = time.perf_counter()
        if length is not None and length > self.channel.site.max_body_bytes:
            super().gotLength(0)
            self._refuse_too_large()
        elif length and length >= SMALL_BODY and not self.channel.site.budget.take(length):
            super().gotLength(0)
            self._dropping = True
        elif length:
            self.content = BodyBuffer(length, self.channel.site.budget if length >= SMALL_BODY else None)
        else:
            super().gotLength(length)

    def handleContentChunk(self, data):
        if self._refused:
            return
        self._body_bytes += len(data)
        if self._body_bytes > self.channel.site.max_body_bytes:  # chunked uploads have no length up front
            self._refuse_too_large()
            return
        if not self._dropping:
            super().handleContentChunk(data)

    def _refuse_too_large(self):
        self._refuse(b"413 Request Entity Too Large", self.channel.site.too_large(self.channel.site.max_body_bytes))

    def _refuse(self, status: bytes, answer, retry_after: int | None = None):
        """Answer before the request is complete, which Twisted's Request cannot do, and hang up."""
        self._refused = True
        self._cancel_deadline()
        body = json.dumps(answer)
        head = [b"HTTP/1.1 " + status, b"Content-Type: application/json", b"Connection: close"]
        if retry_after is not None:
            head.append(b"Retry-After: %d" % retry_after)
        head += [name + b": " + value for name, value in CORS_HEADERS.items()]
        head.append(b"Content-Length: %d" % len(body))
        self.channel.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body.encode("utf-8"))
        self.channel.loseConnection()

    def requestReceived(self, command, path, version):
        self._cancel_deadline()
        self.received_at = time.perf_counter()
        if self._dropping:
            message = "the server is receiving too many large uploads at once; try again shortly"
            self._refuse(b"503 Service Unavailable", self.channel.site.refusal(message), retry_after=5)
            return
        super().requestReceived(command, path, version)


class CorsResource(resource.Resource):
    isLeaf = True

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def render(self, request):
        for name, value in CORS_HEADERS.items():
            request.setHeader(name, value)
        if request.method == b"OPTIONS":
            request.setResponseCode(204)
            return b""
        return self.inner.render(request)


class QuietSite(server.Site):
    """Our services log one line per request themselves, with timings; Twisted's access log is off."""

    requestFactory = TimedRequest
    max_body_bytes = 2 * 1024**3
    receive_timeout = 900.0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.budget = Budget(0)  # no limit unless the service sets one

    @staticmethod
    def refusal(message: str):
        """The JSON of an early answer (408, 503) in the service's protocol."""
        return error_items(message)

    @staticmethod
    def too_large(limit: int):
        """The JSON answer to an oversized body; each service answers in its own protocol's shape."""
        return error_items(f"the request body is larger than this server accepts ({limit} bytes)")

    def log(self, request):
        pass


def make_site(
    klein_resource, max_body_bytes: int | None = None, too_large=None, refusal=None, budget: Budget | None = None
) -> server.Site:
    """refusal(message) shapes other early answers (408, 503) in the service's protocol."""
    site = QuietSite(CorsResource(klein_resource))
    if refusal is not None:
        site.refusal = refusal
    if budget is not None:
        site.budget = budget
    if max_body_bytes is not None:
        site.max_body_bytes = max_body_bytes
    if too_large is not None:
        site.too_large = too_large
    return site
