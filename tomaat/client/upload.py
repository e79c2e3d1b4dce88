"""A multipart/form-data body that reports its progress while Twisted sends it.

treq's own multipart producer gives no progress; this one writes the body in
chunks, one per reactor turn, and calls `progress(sent, total)` after each, so
the command line can draw an upload bar without a thread of its own.
"""

from __future__ import annotations

import secrets

from twisted.internet import task
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

CHUNK = 256 * 1024


class Body:
    """A multipart body as the list of its pieces: a volume's bytes are sent from where they lie.

    Joining them would copy a 64 MiB volume into fresh memory first, which
    cost the client about 40 ms per request (docs/performance.md).
    """

    def __init__(self, chunks: list):
        self.chunks = [memoryview(chunk).cast("B") for chunk in chunks]
        self.length = sum(len(chunk) for chunk in self.chunks)

    def __len__(self) -> int:
        return self.length


def multipart_body(parts: list[tuple[str, str | None, bytes]]) -> tuple[Body, str]:
    """(body, content type) for (name, file name or None, bytes) parts."""
    boundary = "tomaat-" + secrets.token_hex(16)
    chunks = []
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
            header = f"Content-Disposition: {disposition}\r\nContent-Type: application/octet-stream\r\n\r\n"
        else:
            header = f"Content-Disposition: {disposition}\r\n\r\n"
        chunks += [f"--{boundary}\r\n".encode("ascii"), header.encode("utf-8"), data, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode("ascii"))
    return Body(chunks), f"multipart/form-data; boundary={boundary}"


@implementer(IBodyProducer)
class ProgressProducer:
    def __init__(self, body: Body, progress=None, cooperator=None):
        self.body = body
        self.length = len(body)
        self.progress = progress
        self.sent = 0
        self._cooperator = cooperator or task.cooperate
        self._task = None

    def _chunks(self, consumer):
        for piece in self.body.chunks:
            for start in range(0, len(piece), CHUNK):
                chunk = bytes(piece[start : start + CHUNK])
                consumer.write(chunk)
                self.sent += len(chunk)
                if self.progress is not None:
                    self.progress(self.sent, self.length)
                yield None

    def startProducing(self, consumer):
        self._task = self._cooperator(self._chunks(consumer))
        done = self._task.whenDone()
        done.addErrback(lambda f: f.trap(task.TaskStopped))
        return done.addCallback(lambda _: None)

    def pauseProducing(self):
        self._task.pause()

    def resumeProducing(self):
        self._task.resume()

    def stopProducing(self):
        if self._task is not None:
            try:
                self._task.stop()
            except task.TaskFinished:
                pass
