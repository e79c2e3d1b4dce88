"""Hostile inputs shared by the limit tests, the bad-request battery and the load benchmark: no tests here."""

from __future__ import annotations

import functools
import os
import socket
import struct
import time
import zlib

import numpy as np
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


# ---- files that make a reader open other files, or read what was never sent (docs/security.md) ----

SECRET = (np.arange(64, dtype=np.int16) * 7 + 3).astype("<i2")  # stands for a server file's bytes


def secret_file(folder) -> str:
    path = os.path.join(str(folder), "secret.bin")
    with open(path, "wb") as handle:
        handle.write(SECRET.tobytes())
    return path


def nrrd_late_data_file(secret: str, padding: int = 70 * 1024) -> bytes:
    """A NRRD whose `data file` line comes after `padding` bytes of comments: past any 64 KiB peek."""
    comments = b"# padding\n" * (padding // 10)
    fields = f"type: short\ndimension: 3\nsizes: 4 4 4\nendian: little\nencoding: raw\ndata file: {secret}\n\n"
    return b"NRRD0004\n" + comments + fields.encode()


def _hdf5_with_external_voxels(folder, secret: str) -> bytes:
    """An ITK HDF5 image whose voxels are external data in `secret`, after a 512-byte user block."""
    import h5py
    import SimpleITK as sitk

    plain, hostile = os.path.join(str(folder), "plain.hdf5"), os.path.join(str(folder), "hostile.hdf5")
    sitk.WriteImage(sitk.Image(4, 4, 4, sitk.sitkInt16), plain)
    with h5py.File(plain, "r") as source, h5py.File(hostile, "w", userblock_size=512) as target:
        for key in source:
            source.copy(source[key], target, name=key)
        voxels = "ITKImage/0/VoxelData"
        attributes = dict(target[voxels].attrs)
        del target[voxels]
        dataset = target.create_dataset(voxels, shape=(4, 4, 4), dtype="<i2", external=[(secret, 0, SECRET.nbytes)])
        for key, value in attributes.items():
            dataset.attrs[key] = value
    with open(hostile, "rb") as handle:
        return handle.read()


def _nifti_head(size: int) -> bytes:
    head = bytearray(352)
    struct.pack_into("<i", head, 0, 348)
    struct.pack_into("<8h", head, 40, 3, size, size, size, 1, 1, 1, 1)
    struct.pack_into("<hh", head, 70, 2, 8)  # uint8
    struct.pack_into("<8f", head, 76, 1, 1, 1, 1, 1, 1, 1, 1)
    struct.pack_into("<f", head, 108, 352.0)
    head[344:348] = b"n+1\x00"
    return bytes(head)


POLYGLOT_HEADS = {
    "mha": b"ObjectType = Image\nNDims = 3\nBinaryData = True\nDimSize = 2 2 2\nElementType = MET_UCHAR\n"
    b"ElementDataFile = LOCAL\n" + bytes(8),
    "nrrd": b"NRRD0004\ntype: uchar\ndimension: 3\nsizes: 2 2 2\nencoding: raw\n\n" + bytes(8),
    "nii": _nifti_head(2) + bytes(8),
}


def polyglot(fmt: str, folder, secret: str) -> bytes:
    """A valid `fmt` header and data, and at byte 512 an HDF5 image made of the secret file's bytes."""
    data = bytearray(_hdf5_with_external_voxels(folder, secret))
    head = POLYGLOT_HEADS[fmt]
    data[: len(head)] = head
    return bytes(data)


def hide_landlock(folder, monkeypatch) -> None:
    """Decoders started from now on cannot import landlockpy: the server's documented fallback on a kernel
    without Landlock (a warning, then decoding unconfined)."""
    shadow = folder / "shadow" / "landlockpy"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('no landlock here')\n")
    monkeypatch.setenv("PYTHONPATH", f"{shadow.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
