"""A request body held in memory where it arrived, for the form parser to read without a copy."""

from __future__ import annotations

import mmap
import threading

import numpy as np


class Budget:
    """The bytes of request bodies held at once: being received, queued and being worked on.

    max_queue bounds how many requests wait, not how large they are: 64 queued
    uploads of 2 GiB would be 128 GiB. Each body is charged by the bytes that
    actually arrived, chunked or not, and gives them back when it is closed, on
    whichever thread closes it; a client that announces 2 GiB and sends one byte
    holds one byte of the budget, not 2 GiB. The same count serves decoded inputs
    (files/limits.py), charged from their headers.
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


class OverBudget(Exception):
    """The bytes that arrived would take the budget past its limit."""


class _BodyMap(mmap.mmap):
    """A request body's map, or bytes decoded from one (decoded_map): the buffers whose pages give_back may drop.

    `page` is what give_back drops at least: a huge page where the map asked for them (huge()), since dropping
    part of one splits it into small pages, which cost more than the huge page saved.
    """

    page = mmap.PAGESIZE

    def huge(self) -> None:
        """2 MiB pages for a map written whole at once: a 64 MiB body faulted in 36 ms as 4 KiB pages, 15 ms as
        2 MiB ones (docs/performance.md)."""
        if hasattr(mmap, "MADV_HUGEPAGE"):
            self.madvise(mmap.MADV_HUGEPAGE)
            self.page = HUGE_PAGE


HUGE_PAGE = 1 << 21
HUGE_FROM = 1 << 23  # bodies from this size are held in huge pages


FOUND_MOST = 4096  # delimiters a body's watch records: a form has at most max_fields (256) parts
SMALL_BODY = 1 << 20  # bodies below this are never refused for the budget: a /responses form, say
_GROW = 1 << 20


class BodyBuffer:
    """A request body, filled in place in an anonymous memory map as its bytes arrive.

    Twisted spools bodies over 100 KB to a temporary file that the form parser
    then reads back whole: a disk round trip and a copy. The map is the one
    place the body ever lives; its pages are only committed as bytes arrive,
    so a client announcing a huge body and sending nothing costs nothing. A
    chunked body (no length up front) grows the map; finish() trims it.
    """

    def __init__(self, length: int | None, budget: Budget | None = None, watch: bytes | None = None):
        # private: a shared anonymous map cannot grow (its pages past the first size fault with SIGBUS)
        self.map = _BodyMap(-1, length or _GROW, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if length is not None and length >= HUGE_FROM:
            self.map.huge()
        self.fixed = length is not None
        self.position = self.size = self.charged = 0
        self._budget = budget
        # where `watch` (a multipart delimiter) occurs, every time, looked for in each piece as it arrives, while
        # it is in the cache: form.split_multipart then searches nothing (12 ms of a 64 MiB body's parse). None
        # once there are more than FOUND_MOST: a body of delimiters would otherwise fill memory with offsets.
        self.watched = watch
        self.found: list[int] | None = [] if watch else None
        self._looked = 0  # every earlier offset has been looked at as the start of a delimiter

    def _charge(self, end: int) -> None:
        if self._budget is None or end <= self.charged or end < SMALL_BODY:
            return
        step = max(end - self.charged, _GROW)
        if not self._budget.take(step):
            raise OverBudget
        self.charged += step

    def write(self, data) -> None:
        end = self.position + len(data)
        self._charge(end)
        if end > len(self.map):
            if self.fixed:
                raise ValueError("more body bytes than the request announced")
            self.map.resize(max(end, 2 * len(self.map)))
        self.map[self.position : end] = data
        self.position, self.size = end, max(self.size, end)
        self._look()

    def _look(self) -> None:
        found, watched = self.found, self.watched
        if found is None or not watched:
            return
        at, end = self._looked, self.size
        while (hit := self.map.find(watched, at, end)) >= 0:
            if len(found) == FOUND_MOST:
                self.found = None  # the parser searches for itself
                return
            found.append(hit)
            at = hit + 1
        self._looked = max(at, end - len(watched) + 1)

    def room(self, most: int) -> memoryview | None:
        """A writable view of up to `most` bytes where the next body bytes go, charged to the budget as write()
        would charge them, for a transport to receive them in place (net/in_place.py); then advance() by the
        count. None where they must come through write(): no room left, or over the budget (write() says so)."""
        end = min(self.position + most, len(self.map))
        if end <= self.position:
            return None
        try:
            self._charge(end)
        except OverBudget:
            return None
        return memoryview(self.map)[self.position : end]

    def advance(self, count: int) -> None:
        """`count` bytes were received in place at the room's start."""
        self.position += count
        self.size = max(self.size, self.position)
        self._look()

    def finish(self) -> None:
        """The body is complete: the map holds exactly its bytes, for parsers that search the whole map."""
        if self.size and len(self.map) != self.size:
            self.map.resize(self.size)  # an empty body keeps its page; body_bytes gives b""

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = 0) -> int:
        self.position = offset if whence == 0 else (self.position + offset if whence == 1 else self.size + offset)
        return self.position

    def read(self, size: int = -1) -> bytes:
        end = self.size if size is None or size < 0 else min(self.size, self.position + size)
        data = self.map[self.position : end]
        self.position = end
        return data

    def close(self) -> None:
        if self._budget is not None:
            self._budget.give(self.charged)
            self._budget, self.charged = None, 0
        if self.map.closed:
            return
        try:
            self.map.close()
        except BufferError:
            pass  # views of parts are still alive (e.g. in an error's traceback): unmapped when they go


def body_bytes(content):
    """All of a request body as a bytes-like object that supports find(); no copy for a BodyBuffer."""
    if isinstance(content, BodyBuffer):
        return content.map if content.size == len(content.map) else content.map[: content.size]
    content.seek(0)
    return content.read()


def decoded_map(size: int) -> mmap.mmap:
    """Room for bytes decoded from a body (an MHA's inflated data), its pages committed only as they are written
    and given back (give_back) as the decoder pours them on; close it when done."""
    room = _BodyMap(-1, max(1, size), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    room.huge()  # all of it is written, at once
    return room


def address(buffer) -> int:
    """Where a buffer's first byte lies in this process's memory."""
    return np.frombuffer(buffer, np.uint8).__array_interface__["data"][0]


def settled(view) -> bool:
    """Whether view lies in a request body, or in bytes decoded from one: buffers written once, before anyone
    reads them, and never again (give_back only drops their pages), so their pages may be lent out."""
    owner = getattr(view, "obj", None)
    return isinstance(owner, _BodyMap) and not owner.closed


def give_back(view, ends: bool = False) -> None:
    """Return the memory of a part of a request body that has been read for the last time; any other buffer is
    left alone.

    A decoder copying a 1 GB volume out of the body into its image would otherwise hold both until the request
    ends: the body's pages are dropped behind it as it goes, so the two together never take much more than one
    copy. Only the whole pages inside `view` go (a neighbouring field sharing a page at either end keeps its
    bytes); they read as zeros from then on, which is why only a decoder that is done with them may call this.
    In a map of huge pages only whole huge pages go, unless `ends`: the decoder's last call, which gives back
    the small pages of the huge ones at the view's two ends too (two splits, not one per piece).
    """
    owner = getattr(view, "obj", None)
    if not isinstance(owner, _BodyMap) or owner.closed or not len(view):
        return
    base, page = address(owner), mmap.PAGESIZE if ends else owner.page
    begin = address(view)
    start = -(-begin // page) * page  # whole pages by address: a huge page lies on a 2 MiB boundary
    stop = (begin + len(view)) // page * page
    if stop > start:
        owner.madvise(mmap.MADV_DONTNEED, start - base, stop - start)
