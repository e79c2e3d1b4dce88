"""Writes an answer through a pull producer, so the server can time its `send` stage.

Handed the whole body at once, Twisted gives no sign of when the client has
taken it. A pull producer is asked for more only once the transport has
written out what it had, so the last such request marks the end of the send.
Chunks of 1 MiB keep that to a few reactor turns for a label volume. A body may
come in pieces (a binary answer's part headers and contents), written in turn
without first being joined into one copy.
"""

from __future__ import annotations

import time

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPullProducer
from zope.interface import implementer

CHUNK = 1 << 20


@implementer(IPullProducer)
class _Sender:
    def __init__(self, request, pieces: list):
        self.request = request
        self.pieces = [memoryview(piece).cast("B") for piece in pieces if len(piece)]
        self.body = self.pieces.pop(0) if self.pieces else memoryview(b"")
        self.offset = 0
        self.started = time.perf_counter()
        self.done: Deferred[float] = Deferred()

    def resumeProducing(self) -> None:
        chunk, room = [], CHUNK  # up to 1 MiB per write, small pieces joined with what follows them
        while room:
            if self.offset >= len(self.body):
                if not self.pieces:
                    break
                self.body, self.offset = self.pieces.pop(0), 0
            taken = self.body[self.offset : self.offset + room]
            chunk.append(taken)
            self.offset += len(taken)
            room -= len(taken)
        if not chunk:
            self.request.unregisterProducer()
            self.done.callback(time.perf_counter() - self.started)
            return
        self.request.write(b"".join(chunk))

    def stopProducing(self) -> None:
        # The client went away. `done` stays unfired: Klein cancels the answer
        # once the request learns of the lost connection, and writes nothing.
        self.body, self.pieces = memoryview(b""), []


def send(request, body) -> Deferred:
    """Write body (bytes, or a list of pieces) as the whole response; fires with the seconds until the
    transport took its last byte."""
    pieces = body if isinstance(body, list) else [body]
    request.setHeader(b"Content-Length", str(sum(len(piece) for piece in pieces)).encode("ascii"))
    sender = _Sender(request, pieces)
    request.registerProducer(sender, False)
    return sender.done
