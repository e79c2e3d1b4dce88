"""Writes an answer through a pull producer, so the server can time its `send` stage.

Handed the whole body at once, Twisted gives no sign of when the client has
taken it. A pull producer is asked for more only once the transport has
written out what it had, so the last such request marks the end of the send.
Chunks of 1 MiB keep that to a few reactor turns for a label volume.
"""

from __future__ import annotations

import time

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPullProducer
from zope.interface import implementer

CHUNK = 1 << 20


@implementer(IPullProducer)
class _Sender:
    def __init__(self, request, body: bytes):
        self.request = request
        self.body = memoryview(body)
        self.offset = 0
        self.started = time.perf_counter()
        self.done = Deferred()

    def resumeProducing(self) -> None:
        if self.offset >= len(self.body):
            self.request.unregisterProducer()
            self.done.callback(time.perf_counter() - self.started)
            return
        chunk = bytes(self.body[self.offset : self.offset + CHUNK])
        self.offset += len(chunk)
        self.request.write(chunk)

    def stopProducing(self) -> None:
        # The client went away. `done` stays unfired: Klein cancels the answer
        # once the request learns of the lost connection, and writes nothing.
        self.body = memoryview(b"")


def send(request, body: bytes) -> Deferred:
    """Write body as the whole response; fires with the seconds until the transport took its last byte."""
    request.setHeader(b"Content-Length", str(len(body)).encode("ascii"))
    sender = _Sender(request, body)
    request.registerProducer(sender, False)
    return sender.done
