"""Outgoing HTTP on treq, shared by the server's announcer and the client.

Both talk to peers that may be down, slow or hostile: a registry, a prediction
server. So every exchange has one deadline that covers connecting, sending and
reading the answer, an answer read as JSON is bounded (a peer cannot make us
hold gigabytes to parse), and TLS is whatever policy the caller trusts: a pinned
fingerprint (trust.py), trust on first use (client/trust.py), a CA file, or the
system's CAs when none is given. Connections are not kept between exchanges,
so an announcer renewing every half hour holds nothing open in between.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import cast

import treq
from twisted.internet import defer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IAgent

from .bulk_tls import EndpointFactory

JSON_HEADERS = {b"Content-Type": [b"application/json"]}


class AnswerTooLarge(Exception):
    """The peer's answer went past the bytes the caller was ready to read; the connection is dropped."""

    def __init__(self, limit: int):
        super().__init__(f"the answer is larger than {limit} bytes")
        self.limit = limit


def root_cause(error: BaseException) -> BaseException:
    """The failure that matters: Twisted wraps the real cause (a refused connection, a TLS error) in lists."""
    reasons = getattr(error, "reasons", None)
    return root_cause(reasons[0].value) if reasons else error


class _Body(Protocol):
    """An answer's body handed to collect() as it arrives. Unlike treq.collect, cancelling `finished` (a
    deadline) closes the connection, so a peer trickling bytes is cut off, not left sending to no one."""

    def __init__(self, collect: Callable[[bytes], None]):
        self.collect = collect
        self.finished: defer.Deferred[None] = defer.Deferred(lambda _: self._stop())

    def _stop(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        if self.finished.called:
            return
        try:
            self.collect(data)
        except Exception:
            self._stop()
            self.finished.errback()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.finished.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):  # PotentialDataLoss: a body that ends when the peer closes
            self.finished.callback(None)
        else:
            self.finished.errback(reason)


async def receive(response, collect: Callable[[bytes], None]) -> None:
    """Hand the body to collect() as it arrives; an exception collect() raises drops the connection and is raised
    here, and cancelling (the caller's deadline) drops it too."""
    body = _Body(collect)
    response.deliverBody(body)
    await body.finished


async def read_body(response, limit: int | None) -> bytes:
    """The whole body, at most `limit` bytes (AnswerTooLarge past it, the rest never read)."""
    chunks, size = [], [0]

    def collect(data: bytes) -> None:
        size[0] += len(data)
        if limit is not None and size[0] > limit:
            raise AnswerTooLarge(limit)
        chunks.append(data)

    await receive(response, collect)
    return b"".join(chunks)


class HttpClient:
    """treq on an Agent of its own; `tls` is an IPolicyForHTTPS, None for the system's CAs."""

    def __init__(self, reactor, tls=None, connect_timeout: float = 30.0):
        self.reactor = reactor
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        # TLS in large pieces (bulk_tls.py), not Agent's own record-at-a-time layer: volumes go up this way
        endpoints = EndpointFactory(reactor, tls or BrowserLikePolicyForHTTPS(), connect_timeout)
        agent = Agent.usingEndpointFactory(reactor, endpoints, pool=self.pool)
        self.treq = treq.client.HTTPClient(cast(IAgent, agent))  # Agent is @implementer(IAgent): zope, unread by mypy

    async def request(
        self, method: str, url: str, *, timeout: float | None = None, limit: int | None = None, **kwargs
    ) -> tuple[int, bytes]:
        """(HTTP status, body); `timeout` bounds the whole exchange, `limit` the body's bytes (AnswerTooLarge)."""

        async def exchange():
            response = await self.treq.request(method, url, **kwargs)
            return response.code, await read_body(response, limit)

        attempt = defer.Deferred.fromCoroutine(exchange())
        if timeout is not None:
            attempt.addTimeout(timeout, self.reactor)
        return await attempt

    def post_json(self, url: str, body, **options):
        """POST body as JSON; options as for request()."""
        return self.request("POST", url, data=json.dumps(body).encode("utf-8"), headers=JSON_HEADERS, **options)

    def get(self, url: str, **options):
        return self.request("GET", url, **options)

    def close(self):
        return self.pool.closeCachedConnections()
