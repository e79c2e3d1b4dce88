"""A multipart/form-data body that reports its progress while Twisted sends it.

treq's own multipart producer gives no progress; this one writes the body in
chunks, one per reactor turn, and calls `progress(sent, total)` after each, so
the command line can draw an upload bar without a thread of its own. A file's
bytes (inputs.FileData) are read from disk as they are sent, a batch ahead in the
reactor's thread pool, so a 64 MiB scan is neither read whole before the upload
starts (50 ms on loopback) nor read on the reactor thread.
"""

from __future__ import annotations

import secrets

from twisted.internet import task, threads
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

CHUNK = 256 * 1024
READ_BATCH = 4  # chunks read from a file per trip to the thread pool


class Body:
    """A multipart body as the list of its pieces: a volume's bytes are sent from where they lie.

    Joining them would copy a 64 MiB volume into fresh memory first, which
    cost the client about 40 ms per request (docs/performance.md).
    """

    def __init__(self, chunks: list):
        self.chunks = [chunk if hasattr(chunk, "read") else memoryview(chunk).cast("B") for chunk in chunks]
        self.length = sum(len(chunk) for chunk in self.chunks)

    def __len__(self) -> int:
        return self.length


def multipart_body(parts: list) -> tuple[Body, str]:
    """(body, content type) for (name, file name or None, bytes or inputs.FileData) parts."""
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
    """`read(function, *args)` runs a file's reads where they may block (a Deferred): the reactor's
    thread pool in the client; a file's piece fails the upload when the file changed meanwhile.

    `views`: the consumer takes memoryviews, as our TLS layer (net/bulk_tls.py) does, so a volume's
    chunks are written from where the volume lies; Twisted's TCP transport takes only bytes, and each
    chunk is copied for it (15 ms of a 64 MiB upload).
    """

    def __init__(self, body: Body, progress=None, cooperator=None, read=None, views: bool = False):
        self.body = body
        self.views = views
        self.length = len(body)
        self.progress = progress
        self.sent = 0
        self.failure: BaseException | None = None  # what ended the upload on our side (a file that changed)
        self._cooperator = cooperator or task.cooperate
        self._read = read or threads.deferToThread
        self._task: task.CooperativeTask | None = None

    def _write(self, consumer, chunk: bytes | memoryview):
        consumer.write(chunk)
        self.sent += len(chunk)
        if self.progress is not None:
            self.progress(self.sent, self.length)

    def _chunks(self, consumer):
        for piece in self.body.chunks:
            if hasattr(piece, "read"):
                yield from self._file_chunks(consumer, piece)
                continue
            for start in range(0, len(piece), CHUNK):
                chunk = piece[start : start + CHUNK]
                self._write(consumer, chunk if self.views else bytes(chunk))
                yield None

    def _batch(self, piece, offset: int):
        sizes = []
        for at in range(offset, min(len(piece), offset + CHUNK * READ_BATCH), CHUNK):
            sizes.append(min(CHUNK, len(piece) - at))
        batch = self._read(piece.read, offset, sizes)
        return batch, offset + sum(sizes)

    def _file_chunks(self, consumer, piece):
        """The file's chunks, each batch read while the one before it is written."""
        finished, pending = False, None
        try:
            pending, offset = self._batch(piece, 0)
            while pending is not None:
                got: list = []
                pending.addCallback(got.append)
                if not got:
                    yield pending  # the cooperator waits for the read; a failed read fails the upload
                chunks, pending = got[0], None
                if offset < len(piece):
                    pending, offset = self._batch(piece, offset)
                for chunk in chunks:
                    self._write(consumer, chunk)
                    yield None
            finished = True
        finally:
            if pending is not None:
                pending.addErrback(lambda failure: None)  # abandoned: the upload ended meanwhile
            piece.close(check=finished)  # a file that changed while it was sent fails the upload

    def startProducing(self, consumer):
        self._task = work = self._cooperator(self._chunks(consumer))
        done = work.whenDone()

        def failed(failure):
            if failure.check(task.TaskStopped):
                return None
            self.failure = failure.value
            return failure

        done.addErrback(failed)
        return done.addCallback(lambda _: None)

    def pauseProducing(self):
        assert self._task is not None  # a consumer pauses only what it started
        self._task.pause()

    def resumeProducing(self):
        assert self._task is not None
        self._task.resume()

    def stopProducing(self):
        if self._task is not None:
            try:
                self._task.stop()
            except task.TaskFinished:
                pass
