"""HDF5 transform files are walked before ITK opens them, because HDF5 opens other files when a file asks.

An HDF5 file can name other files: external links (a group member that lives in another file),
external raw data (a dataset whose bytes are read from other files) and virtual datasets (whose
values come from datasets in other files). ITK's HDF5 follows all three when it reads a
transform, by absolute path or relative to the scratch folder or the working directory, so a
client could make the server read any file it can open and get the bytes back as transform
parameters: /etc/passwd came back this way (docs/security.md). ITK picks its reader by content,
not by name, so a `mat` upload holding HDF5 bytes is read by HDF5 too, and is checked the same way.

The library cannot be told to refuse. ITK links its own copy of HDF5 and hides its symbols, so
no H5Pset_elink_cb or file access property can be set from Python. HDF5_EXT_PREFIX,
HDF5_EXTFILE_PREFIX and HDF5_VDS_PREFIX only add places to look: HDF5 still tries an absolute
path first. Searching the bytes for signatures does not work either: link messages carry no
signature, and a group's link table may be stored compressed.

So the file is walked the way HDF5 walks it when ITK opens paths from the root group: every
object header reachable from the superblock through symbol tables, links (compact, or in a
group's fractal heap, which ITK writes from 8 transforms on) and header continuations. Anything
that can name another file is refused, and so is anything this walk does not understand (fail
closed): external or user-defined links, external data files, virtual layouts, filters HDF5
would load as plugins, message types outside a short list, and structures outside the file.
ITK's own files use none of these. Refusing broken structures here also keeps most bad uploads
from reaching HDF5, which prints an error stack to the server's stderr; the bundled library's
error printing (H5Eset_auto) cannot be reached from Python to turn it off.
"""

from __future__ import annotations

import bisect

from ..errors import RequestError

SIGNATURE = b"\x89HDF\r\n\x1a\n"
_FILTERS = {1, 2, 3, 5, 6}  # deflate, shuffle, fletcher32, nbit, scaleoffset: built in, nothing loaded
_PLAIN = {0x00, 0x01, 0x03, 0x04, 0x05, 0x0A, 0x0C, 0x0D, 0x0E, 0x12, 0x13, 0x15, 0x16}  # read, never followed
_CHECKED = {0x02, 0x06, 0x08, 0x0B, 0x10, 0x11}  # parsed below, so a shared (stored elsewhere) copy is refused
_MAX_STEPS = 200_000  # messages, links and nodes; an ITK transform file has a few dozen


def _power_of_two(number: int) -> bool:
    return number > 0 and number & (number - 1) == 0


class _Outside(Exception):
    """A structure that makes HDF5 open another file."""


class _Unreadable(Exception):
    """A structure this walk does not accept: broken, or a feature ITK never writes."""


def superblock_offset(data: bytes) -> int | None:
    """Where HDF5 finds the superblock: byte 0 or a power of two from 512 on, as H5Fis_hdf5 searches."""
    offset = 0
    while offset + len(SIGNATURE) <= len(data):
        if data[offset : offset + len(SIGNATURE)] == SIGNATURE:
            return offset
        offset = 512 if offset == 0 else offset * 2
    return None


def check(data: bytes, where: str, kind: str, expected: str) -> None:
    """Refuse an HDF5 file that names other files or that cannot be walked; other bytes pass untouched."""
    offset = superblock_offset(data)
    if offset is None:
        return
    try:
        if offset:
            raise _Unreadable(f"a user block before the HDF5 superblock at byte {offset}")
        _Walk(data).run()
    except _Outside as error:
        raise RequestError(
            f"{where}: the {kind} data is an HDF5 file that refers to other files ({error}); "
            f"expected {expected} that holds all of its own data"
        ) from None
    except _Unreadable as error:
        raise RequestError(
            f"{where}: the {kind} data is a truncated, corrupt or unsupported HDF5 file ({error}); expected {expected}"
        ) from None


class _Walk:
    def __init__(self, data: bytes):
        self.data = memoryview(data)
        self.offsets = self.lengths = 8
        self.headers: list[int] = []
        self.seen: set[tuple[str, int]] = set()
        self.steps = 0

    def uint(self, at: int, size: int) -> int:
        if at < 0 or at + size > len(self.data):
            raise _Unreadable("a structure beyond the end of the file")
        return int.from_bytes(self.data[at : at + size], "little")

    def address(self, at: int) -> int | None:
        value = self.uint(at, self.offsets)
        return None if value == (1 << 8 * self.offsets) - 1 else value

    def expect(self, at: int | None, signature: bytes) -> None:
        if at is None or bytes(self.data[at : at + len(signature)]) != signature:
            raise _Unreadable(f"no {signature.decode()} structure where one should be")

    def first_visit(self, what: str, at: int | None) -> bool:
        if at is None or (what, at) in self.seen:
            return False
        self.seen.add((what, at))
        self.step()
        return True

    def step(self) -> None:
        self.steps += 1
        if self.steps > _MAX_STEPS:
            raise _Unreadable("more objects than a transform file holds")

    def run(self) -> None:
        version = self.uint(8, 1)
        if version in (0, 1):
            self.offsets, self.lengths = self.uint(13, 1), self.uint(14, 1)
            at = 24 if version == 0 else 28
        elif version in (2, 3):
            self.offsets, self.lengths = self.uint(9, 1), self.uint(10, 1)
            at = 12
        else:
            raise _Unreadable(f"superblock version {version}")
        if self.offsets not in (4, 8) or self.lengths not in (4, 8):
            raise _Unreadable("unusual address sizes")
        if self.uint(at, self.offsets) != 0:
            raise _Unreadable("a non-zero base address")
        if self.uint(at + 2 * self.offsets, self.offsets) > len(self.data):
            raise _Unreadable("the file is shorter than its superblock says")
        if self.address(at + self.offsets) is not None:  # v0/v1: free-space info; v2/v3: superblock extension
            raise _Unreadable("a superblock extension or free-space manager")
        if version < 2:
            if self.address(at + 3 * self.offsets) is not None:
                raise _Unreadable("a file driver block")
            self.entry(at + 4 * self.offsets)
        else:
            self.headers.append(self.uint(at + 3 * self.offsets, self.offsets))
        while self.headers:
            self.header(self.headers.pop())

    # Old-style groups: a symbol table is a B-tree of symbol nodes whose entries name object headers.

    def entry(self, at: int) -> None:
        """A symbol table entry: an object header, and for a group possibly a cached symbol table."""
        self.headers.append(self.uint(at + self.offsets, self.offsets))
        if self.uint(at + 2 * self.offsets, 4) == 1:
            self.btree(self.address(at + 2 * self.offsets + 8))

    def btree(self, at: int | None, level: int | None = None) -> None:
        """A version 1 B-tree of group nodes, down to its symbol nodes; each level one lower than its parent."""
        if at is None or not self.first_visit("btree", at):
            return
        self.expect(at, b"TREE")
        if self.uint(at + 4, 1) != 0 or level not in (None, self.uint(at + 5, 1)):
            raise _Unreadable("a malformed group B-tree")
        level, used = self.uint(at + 5, 1), self.uint(at + 6, 2)
        first = at + 8 + 2 * self.offsets + self.lengths
        for i in range(used):
            self.step()
            child = self.address(first + i * (self.offsets + self.lengths))
            self.btree(child, level - 1) if level else self.symbols(child)

    def symbols(self, at: int | None) -> None:
        if at is None or not self.first_visit("snod", at):
            return
        self.expect(at, b"SNOD")
        for i in range(self.uint(at + 6, 2)):
            self.step()
            self.entry(at + 8 + i * (2 * self.offsets + 24))

    # Object headers, version 1 (no signature) or 2 (OHDR, continued in OCHK blocks).

    def header(self, at: int) -> None:
        if not self.first_visit("header", at):
            return
        if bytes(self.data[at : at + 4]) == b"OHDR":
            if self.uint(at + 4, 1) != 2:
                raise _Unreadable("an object header of unknown version")
            flags = self.uint(at + 5, 1)
            start = at + 6 + (16 if flags & 0x20 else 0) + (4 if flags & 0x10 else 0)
            width = 1 << (flags & 3)
            chunks = [(start + width, start + width + self.uint(start, width))]
            prefix = 6 if flags & 0x04 else 4
        elif self.uint(at, 1) == 1:
            chunks, prefix = [(at + 16, at + 16 + self.uint(at + 8, 4))], 8
        else:
            raise _Unreadable("an object header of unknown version")
        while chunks:
            start, stop = chunks.pop()
            if not self.first_visit("chunk", start):
                continue
            if stop > len(self.data):
                raise _Unreadable("an object header beyond the end of the file")
            while stop - start >= prefix:
                self.step()
                if prefix == 8:
                    kind, size, flags = self.uint(start, 2), self.uint(start + 2, 2), self.uint(start + 4, 1)
                else:
                    kind, size, flags = self.uint(start, 1), self.uint(start + 1, 2), self.uint(start + 3, 1)
                if start + prefix + size > stop:
                    raise _Unreadable("a message longer than its object header")
                more = self.message(kind, flags, start + prefix)
                if more is not None and prefix != 8:
                    self.expect(more[0], b"OCHK")
                    more = (more[0] + 4, more[1] - 4)
                if more is not None:
                    chunks.append(more)
                start += prefix + size

    def message(self, kind: int, flags: int, at: int) -> tuple[int, int] | None:
        """Check one header message; a continuation's (start, stop) to walk next."""
        if kind == 0x07:
            raise _Outside("external raw data files")
        if kind in _PLAIN:
            return None
        if kind not in _CHECKED:
            raise _Unreadable(f"an HDF5 message of type {kind:#x}")
        if flags & 0x02:
            raise _Unreadable(f"a shared HDF5 message of type {kind:#x}")
        if kind == 0x02:
            self.dense(at)
        elif kind == 0x06:
            self.link(at)
        elif kind == 0x08:
            self.layout(at)
        elif kind == 0x0B:
            self.filters(at)
        elif kind == 0x10:
            start = self.uint(at, self.offsets)
            return start, start + self.uint(at + self.offsets, self.lengths)
        elif kind == 0x11:
            self.btree(self.address(at))
        return None

    def link(self, at: int) -> None:
        if self.uint(at, 1) != 1:
            raise _Unreadable("a link message of unknown version")
        flags = self.uint(at + 1, 1)
        kind = self.uint(at + 2, 1) if flags & 0x08 else 0
        if kind == 64:
            raise _Outside("an external link")
        if kind not in (0, 1):
            raise _Outside("a user-defined link")
        self.step()
        if kind == 0:  # a soft link (1) names a path in this file, which the walk reaches from the root
            at += 2 + bool(flags & 0x08) + (8 if flags & 0x04 else 0) + bool(flags & 0x10)
            width = 1 << (flags & 3)
            self.headers.append(self.uint(at + width + self.uint(at, width), self.offsets))

    def layout(self, at: int) -> None:
        version = self.uint(at, 1)
        layout = self.uint(at + (2 if version < 3 else 1), 1)
        if version > 4 or layout > 3:
            raise _Unreadable("an unknown dataset layout")
        if layout == 3:
            raise _Outside("a virtual dataset")
        if version >= 3 and layout == 1:
            start = self.address(at + 2)
            if start is not None and start + self.uint(at + 2 + self.offsets, self.lengths) > len(self.data):
                raise _Unreadable("dataset values beyond the end of the file")

    def filters(self, at: int) -> None:
        version, count = self.uint(at, 1), self.uint(at + 1, 1)
        if version == 1:
            at += 8
            for _ in range(count):
                self.filter(self.uint(at, 2))
                values = self.uint(at + 6, 2)
                at += 8 + self.uint(at + 2, 2) + 4 * (values + values % 2)
        elif version == 2:  # only filters numbered from 256 on carry a name, and those are refused first
            at += 2
            for _ in range(count):
                self.filter(self.uint(at, 2))
                at += 6 + 4 * self.uint(at + 4, 2)
        else:
            raise _Unreadable("a filter pipeline of unknown version")

    def filter(self, ident: int) -> None:
        if ident not in _FILTERS:
            raise _Unreadable(f"filter {ident}, which HDF5 would look for as a plugin")

    # Dense link storage: link messages in a fractal heap, found through version 2 B-trees of heap IDs.

    def dense(self, at: int) -> None:
        flags = self.uint(at + 1, 1)
        at += 2 + (8 if flags & 1 else 0)
        heap = self.address(at)
        if heap is None:  # links are compact, in the header itself
            return
        blocks, off_size, len_size = self.heap(heap)
        starts = [start for _, start, _ in blocks]
        indexes = [(self.address(at + self.offsets), 5, 4)]  # by name: hash, heap ID
        if flags & 2:
            indexes.append((self.address(at + 2 * self.offsets), 6, 8))  # by creation order: order, heap ID
        for index, kind, skip in indexes:
            for record in self.records(index, kind, skip + 7):
                heap_id = record + skip
                if self.uint(heap_id, 1) != 0:  # version 0, type 0: a managed object, not tiny or huge
                    raise _Unreadable("a link stored outside the heap's blocks")
                offset = self.uint(heap_id + 1, off_size)
                length = self.uint(heap_id + 1 + off_size, len_size)
                found = bisect.bisect_right(starts, offset) - 1
                if found < 0 or offset + length > blocks[found][1] + blocks[found][2]:
                    raise _Unreadable("a link outside its heap")
                block, start, _ = blocks[found]
                self.link(block + offset - start)

    def records(self, at: int | None, kind: int, size: int) -> list[int]:
        """Where the records of a version 2 B-tree are; only a single leaf, which holds 45 (a composite of 44)."""
        if at is None:
            return []
        self.expect(at, b"BTHD")
        if self.uint(at + 4, 1) != 0 or self.uint(at + 5, 1) != kind or self.uint(at + 10, 2) != size:
            raise _Unreadable("a malformed link index")
        if self.uint(at + 12, 2) != 0:
            raise _Unreadable("a link index deeper than one node")
        leaf, count = self.address(at + 16), self.uint(at + 16 + self.offsets, 2)
        if count == 0:
            return []
        self.expect(leaf, b"BTLF")
        assert leaf is not None  # expect() refuses a missing address
        if self.uint(leaf + 4, 1) != 0 or self.uint(leaf + 5, 1) != kind:
            raise _Unreadable("a malformed link index")
        self.uint(leaf + 6 + count * size, 4)  # the records and checksum lie inside the file
        return [leaf + 6 + i * size for i in range(count)]

    def heap(self, at: int) -> tuple[list[tuple[int, int, int]], int, int]:
        """A fractal heap's direct blocks as (file address, heap offset, size), and its heap ID field sizes."""
        self.expect(at, b"FRHP")
        offsets, lengths = self.offsets, self.lengths
        if self.uint(at + 4, 1) != 0 or self.uint(at + 5, 2) != 7:
            raise _Unreadable("a link heap of unknown version")
        if self.uint(at + 7, 2) != 0:
            raise _Unreadable("a compressed link heap")
        biggest = self.uint(at + 10, 4)
        table = at + 14 + 10 * lengths + 2 * offsets
        width = self.uint(table, 2)
        first, largest = self.uint(table + 2, lengths), self.uint(table + 2 + lengths, lengths)
        table += 2 + 2 * lengths
        bits, root, rows = self.uint(table, 2), self.address(table + 4), self.uint(table + 4 + offsets, 2)
        off_size = (bits + 7) // 8
        len_size = min((largest.bit_length() - 1 + 7) // 8, (biggest.bit_length() - 1) // 8 + 1)
        # HDF5 finds a block by bit arithmetic on powers of two and decodes an ID past its 7 bytes if the sizes
        # say so; only where both hold does this walk read the bytes HDF5 reads.
        powers = all(_power_of_two(number) for number in (width, first, largest))
        if not (powers and biggest and first <= largest and 1 + off_size + len_size <= 7):
            raise _Unreadable("a malformed link heap")
        if root is None:
            return [], off_size, len_size
        if rows == 0:
            blocks = [(root, 0, first)]
        else:
            direct_rows = largest.bit_length() - first.bit_length() + 2
            if rows > direct_rows:
                raise _Unreadable("a link heap with nested blocks")
            self.expect(root, b"FHIB")
            entry, blocks, offset = root + 5 + offsets + off_size, [], 0
            for row in range(rows):
                size = first if row < 2 else first << (row - 1)
                for _ in range(width):
                    self.step()
                    block = self.address(entry)
                    if block is not None:
                        blocks.append((block, offset, size))
                    entry, offset = entry + offsets, offset + size
        for block, offset, size in blocks:
            # HDF5 places objects by the offset a block states, so it must be the one its place in the table gives
            self.expect(block, b"FHDB")
            if self.uint(block + 5, offsets) != at or self.uint(block + 5 + offsets, off_size) != offset:
                raise _Unreadable("a link heap block out of place")
            self.uint(block + size - 1, 1)  # the whole block lies inside the file
        return blocks, off_size, len_size
