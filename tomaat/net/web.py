"""Twisted web plumbing shared by the prediction server and the registry.

Requests are not parsed on the reactor (bodies are read in worker threads),
each request remembers when its headers arrived so the receive stage can be
timed, and every answer, 404s included, carries the CORS headers.
"""

from __future__ import annotations

import io
import json
import time
from functools import partial

from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web import http, resource, server

from ..protocol.answers import error_items
from .body import BodyBuffer, Budget, OverBudget

READ_SIZE = 1 << 18  # bytes a connection reads of its socket at once

CORS_HEADERS = {
    b"Access-Control-Allow-Origin": b"*",
    b"Access-Control-Allow-Methods": b"GET, POST, OPTIONS",
    b"Access-Control-Allow-Headers": b"*, Authorization",  # the wildcard never covers Authorization (Fetch)
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

    channel: GuardedChannel  # QuietSite makes only these

    def __init__(self, *args, **kwargs):
        kwargs["parsePOSTFormSubmission"] = False
        super().__init__(*args, **kwargs)
        self.headers_at = time.perf_counter()
        self.received_at = None
        self._body_bytes = 0
        self._refused = False
        self._dropping = False

    def _too_slow(self, limit):
        message = f"the request did not arrive within {limit:g} seconds; the connection is closed"
        self._refuse(b"408 Request Timeout", self.channel.site.refusal(message))

    def gotLength(self, length):
        self.headers_at = time.perf_counter()
        if length is not None and length > self.channel.site.max_body_bytes:
            super().gotLength(0)
            self._refuse_too_large()
        elif self._refused_early():
            super().gotLength(0)
        else:  # charged to the budget by the bytes that arrive, chunked bodies too
            site = self.channel.site
            self.content = BodyBuffer(length, site.budget, site.watch_for(self) if site.watch_for else None)

    def handleContentChunk(self, data):
        if self._refused:
            return
        self._body_bytes += len(data)
        if self._body_bytes > self.channel.site.max_body_bytes:  # chunked uploads have no length up front
            self._refuse_too_large()
            return
        if self._dropping:
            return
        assert self.content is not None  # gotLength() made it before the first body byte
        try:
            self.content.write(data)
        except OverBudget:
            self.content.close()  # the bytes so far are given back and dropped; the answer is 503 once all arrived
            self.content = io.BytesIO()
            self._dropping = True

    def body_room(self, most: int) -> memoryview | None:
        """Room in the body for bytes a transport receives in place (GuardedChannel.body_room)."""
        if self._refused or self._dropping or not isinstance(self.content, BodyBuffer):
            return None
        return self.content.room(most)

    def body_received(self, count: int) -> None:
        """What handleContentChunk does for bytes that were received into the room (the length was checked)."""
        assert isinstance(self.content, BodyBuffer)
        self._body_bytes += count
        self.content.advance(count)

    def _refused_early(self) -> bool:
        """A request refused on its headers (the site's early_refusal: no identity for the route) before its
        body is received: an anonymous client cannot make the server take in gigabytes to answer 401."""
        early = self.channel.site.early_refusal
        method, path = getattr(self.channel, "_command", None), getattr(self.channel, "_path", None)
        if early is None or method is None or path is None:
            return False
        refusal = early(self, method, path)
        if refusal is None:
            return False
        status = b"%d %s" % (refusal.status, http.RESPONSES.get(refusal.status, b"Refused"))
        self._refuse(status, self.channel.site.refusal(refusal.message), headers=refusal.headers)
        return True

    def _refuse_too_large(self):
        self._refuse(b"413 Request Entity Too Large", self.channel.site.too_large(self.channel.site.max_body_bytes))

    def _refuse(self, status: bytes, answer, retry_after: int | None = None, headers: dict | None = None):
        """Answer before the request is complete, which Twisted's Request cannot do, and hang up."""
        self._refused = True
        self.channel.request_arrived()
        body = json.dumps(answer)
        head = [b"HTTP/1.1 " + status, b"Content-Type: application/json", b"Connection: close"]
        if retry_after is not None:
            head.append(b"Retry-After: %d" % retry_after)
        head += [name + b": " + value for name, value in {**CORS_HEADERS, **(headers or {})}.items()]
        head.append(b"Content-Length: %d" % len(body))
        self.channel.write(b"\r\n".join(head) + b"\r\n\r\n" + body.encode("utf-8"))
        self.channel.loseConnection()

    def requestReceived(self, command, path, version):
        self.channel.request_arrived()
        self.received_at = time.perf_counter()
        if isinstance(self.content, BodyBuffer):
            self.content.finish()
        if self._dropping:
            message = "the server is receiving too many large uploads at once; try again shortly"
            self._refuse(b"503 Service Unavailable", self.channel.site.refusal(message), retry_after=5)
            return
        super().requestReceived(command, path, version)


class Connections:
    """Connections held at once, in all and per client address, with room always made for a new one.

    Idle connections are what an attacker can hold cheaply (1,100 of them used up a server's
    file descriptors, and /health failed). At a cap, the oldest idle connection (no request in
    progress) of that address, or of all, is closed to admit the new one; only when every
    connection is working is the newcomer turned away.
    """

    def __init__(self, total: int = 0, per_address: int = 0):
        self.total, self.per_address = int(total), int(per_address)
        self._open: dict = {}  # channel -> client address, oldest first

    def __len__(self) -> int:
        return len(self._open)

    def admit(self, channel) -> None:
        peer = getattr(channel.transport.getPeer(), "host", "")
        self._open[channel] = peer
        for limit, same in ((self.per_address, lambda address: address == peer), (self.total, lambda address: True)):
            held = [other for other, address in self._open.items() if same(address)]
            if limit and len(held) > limit:
                victim = next((other for other in held if other is not channel and not other.requests), channel)
                self.forget(victim)
                victim.transport.loseConnection()
                if victim is channel:
                    return

    def forget(self, channel) -> None:
        self._open.pop(channel, None)


class GuardedChannel(http.HTTPChannel):
    """An HTTP connection whose receive deadline runs from connect, and again after each answer.

    Twisted makes a Request only once the request line is complete, so a deadline kept by the
    Request let a client trickle the request line a byte at a time for ever (the idle timeout
    resets on every byte).
    """

    _arrival = None
    site: QuietSite  # set by the site that built the channel (Site.buildProtocol)

    def connectionMade(self):
        super().connectionMade()
        # the socket read a quarter as often as Twisted's 64 KiB: the HTTP layer's cost is per read, and a
        # 64 MiB upload took 50 ms less CPU (docs/performance.md); a TLS connection sets its own (bulk_tls.py)
        self.transport.bufferSize = READ_SIZE  # type: ignore[union-attr]
        self._await_request()
        self.site.connections.admit(self)

    def body_room(self, most: int) -> memoryview | None:
        """Where the next `most` (or fewer) bytes of the body being received go, for the transport to read or
        decrypt them into in place (net/in_place.py, net/bulk_tls.py); None while any other bytes are due
        (request lines, headers, a chunked body, the body's last byte, the next request's bytes while one is
        answered) or the body is refused or dropped: those take Twisted's own way through dataReceived. Reads
        Twisted's parser state; where it is not as expected, every byte takes that way."""
        parser = (getattr(self, name, True) for name in ("line_mode", "_handlingRequest", "_buffer", "paused"))
        if any(parser):  # a line being read, a request being answered, bytes held back: Twisted's way
            return None
        decoder = getattr(self, "_transferDecoder", None)
        if type(decoder) is not http._IdentityTransferDecoder or decoder.dataCallback is None or not self.requests:
            return None
        left = decoder.contentLength
        if not isinstance(left, int) or left <= 1:  # the last byte ends the body: Twisted's finish path
            return None
        return self.requests[-1].body_room(min(most, left - 1))

    def body_received(self, count: int) -> None:
        """`count` bytes of the body arrived in the room: what dataReceived would have done with them."""
        decoder = self._transferDecoder
        assert decoder is not None  # body_room offered the room: the body's decoder is set
        self.resetTimeout()
        decoder.contentLength -= count
        self.requests[-1].body_received(count)

    def _await_request(self):
        limit = self.site.receive_timeout
        if limit:
            self._arrival = self.callLater(limit, partial(self._too_slow, limit))

    def request_arrived(self):
        """The last body byte is in (or the request was refused): the deadline stops."""
        if self._arrival is not None and self._arrival.active():
            self._arrival.cancel()
        self._arrival = None

    def _too_slow(self, limit):
        self._arrival = None
        if self.requests:
            self.requests[-1]._too_slow(limit)
        else:  # not even a request line in time
            assert self.transport is not None  # connectionLost() cancels the deadline
            # zope declares interface methods without `self`; mypy reads them so without the mypy-zope plugin
            self.transport.loseConnection()  # type: ignore[misc]

    def requestDone(self, request):
        super().requestDone(request)
        if not self.requests and self._arrival is None and self.transport is not None and self.connected:
            self._await_request()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.request_arrived()
        self.site.connections.forget(self)
        super().connectionLost(reason)


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
    """A service's site: our limits, given at construction, and no access log (the services log one line per
    request themselves, with timings).

    `too_large(limit)` and `refusal(message)` shape the early answers (413; 408, 503) in the service's own
    protocol; the prediction server's default is the v1 error list.
    """

    # Twisted types `protocol` as its HTTP/2-switching wrapper; Site.buildProtocol takes any channel class
    protocol = GuardedChannel  # type: ignore[assignment]
    requestFactory = TimedRequest

    def __init__(
        self,
        klein_resource,
        *,
        max_body_bytes: int = 2 * 1024**3,
        receive_timeout: float | None = 900.0,
        idle_timeout: float | None = 60.0,
        budget: Budget | None = None,
        connections: Connections | None = None,
        too_large=None,
        refusal=None,
        early_refusal=None,
        watch_for=None,
    ):
        super().__init__(CorsResource(klein_resource), timeout=idle_timeout or None)
        self.max_body_bytes = max_body_bytes
        self.receive_timeout = receive_timeout or None
        self.budget = budget if budget is not None else Budget(0)  # no limit unless the service sets one
        self.connections = connections if connections is not None else Connections()
        self.too_large = too_large or _too_large
        self.refusal = refusal or error_items
        self.early_refusal = early_refusal  # (request, method, path) -> access.identity.Refused | None
        self.watch_for = watch_for  # request -> bytes a body is watched for as it arrives (BodyBuffer), or None

    def log(self, request):
        pass


def _too_large(limit: int):
    return error_items(f"the request body is larger than this server accepts ({limit} bytes)")


def json_reply(request, value, status: int = 200) -> bytes:
    """A small JSON answer written from the reactor (a route's own answer: info, an error, an id), for Klein to send."""
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    return value if isinstance(value, bytes) else json.dumps(value).encode("utf-8")
