"""A request body held in memory where it arrived, for the form parser to read without a copy."""

from __future__ import annotations

import mmap


class BodyBuffer:
    """A request body of announced length, filled in place in an anonymous memory map.

    Twisted spools bodies over 100 KB to a temporary file that the form parser
    then reads back whole: a disk round trip and a copy. The map is the one
    place the body ever lives; its pages are only committed as bytes arrive,
    so a client announcing a huge body and sending nothing costs nothing.
    """

    def __init__(self, length: int):
        self.map = mmap.mmap(-1, length)
        self.position = 0

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
