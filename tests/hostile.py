"""Hostile inputs shared by the limit tests, the bad-request battery and the load benchmark: no tests here."""

from __future__ import annotations

import functools
import socket
import struct
import time
import zlib

from conftest import image_bytes, make_phantom

HUGE = 100000


def huge_mha() -> bytes:
    header = (
        "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
        f"DimSize = {HUGE} {HUGE} {HUGE}\nElementType = MET_FLOAT\nElementDataFile = LOCAL\n"
    )
    return header.encode("ascii") + b"\0" * 64


def huge_nrrd() -> bytes:
    header = f"NRRD0004\ntype: float\ndimension: 3\nsizes: {HUGE} {HUGE} {HUGE}\nencoding: raw\n\n"
    return header.encode("ascii") + b"\0" * 64


def huge_nifti() -> bytes:
    raw = bytearray(image_bytes(make_phantom(), ".nii"))
    raw[40:56] = struct.pack("<8h", 3, 30000, 30000, 30000, 1, 1, 1, 1)
    return bytes(raw)


@functools.lru_cache(maxsize=1)
def gzip_bomb(mebibytes: int = 512) -> bytes:
    """A valid small NIfTI file followed by `mebibytes` of zeros, about 1/1000 of that compressed.

    Built a chunk at a time, so making it does not itself raise the test process's peak memory.
    """
    stream = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [stream.compress(image_bytes(make_phantom(), ".nii"))]
    zeros = bytes(1024 * 1024)
    parts += [stream.compress(zeros) for _ in range(mebibytes)]
    parts.append(stream.flush())
    return b"".join(parts)


def raw_exchange(port: int, data: bytes, trickle: bool = False, every: float = 0.2, limit: float = 10.0) -> bytes:
    """Send data, then (trickle) one byte every `every` s, until the server closes; all it sent back."""
    with socket.create_connection(("127.0.0.1", port), timeout=limit) as sock:
        sock.sendall(data)
        sock.settimeout(every)
        received, deadline = b"", time.monotonic() + limit
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                if trickle:
                    try:
                        sock.sendall(b"x")
                    except OSError:
                        return received
                continue
            except OSError:
                return received
            if not chunk:
                return received
            received += chunk
    raise AssertionError(f"the server neither answered nor closed the connection within {limit}s")
