"""A request body held in memory where it arrived, for the form parser to read without a copy."""

from __future__ import annotations

import mmap
import threading


class Budget:
    """The bytes of request bodies held at once: being received, queued and being worked on.

    max_queue bounds how many requests wait, not how large they are: 64 queued
    uploads of 2 GiB would be 128 GiB. Each body takes its announced length
    from the budget when its headers arrive and gives it back when it is
    closed, on whichever thread closes it.
    """

    def __init__(self, limit: int):
        self.limit = limit  # 0: no limit
        self.used = 0
        self._lock = threading.Lock()

    def take(self, size: int) -> bool:
        with self._lock:
            if self.limit and self.used + size > self.limit:
                return False
            self.used += size
            return True

    def give(self, size: int) -> None:
        with self._lock:
            self.used -= size


class BodyBuffer:
    """A request body of announced length, filled in place in an anonymous memory map.

    Twisted spools bodies over 100 KB to a temporary file that the form parser
    then reads back whole: a disk round trip and a copy. The map is the one
    place the body ever lives; its pages are only committed as bytes arrive,
    so a client announcing a huge body and sending nothing costs nothing.
    """

    def __init__(self, length: int, budget: Budget | None = None):
        self.map = mmap.mmap(-1, length)
        self.position = 0
        self._budget = budget  # already taken from by the caller

    def write(self, data) -> None:
        end = self.position + len(data)
        self.map[self.position : end] = data
        self.position = end

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = 0) -> int:
        self.position = offset if whence == 0 else (self.position + offset if whence == 1 else len(self.map) + offset)
        return self.position

    def read(self, size: int = -1) -> bytes:
        end = len(self.map) if size is None or size < 0 else min(len(self.map), self.position + size)
        data = self.map[self.position : end]
        self.position = end
        return data

    def close(self) -> None:
        if self._budget is not None:
            self._budget.give(len(self.map))
            self._budget = None
        if self.map.closed:
            return
        try:
            self.map.close()
        except BufferError:
            pass  # views of parts are still alive (e.g. in an error's traceback): unmapped when they go


def body_bytes(content):
    """All of a request body as a bytes-like object that supports find(); no copy for a BodyBuffer."""
    if isinstance(content, BodyBuffer):
        return content.map
    content.seek(0)
    return content.read()
