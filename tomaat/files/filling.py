"""An image made from its voxel bytes as they come, piece by piece: the volume's one copy in memory.

SimpleITK can only make an image from a whole pixel array (GetImageFromArray), and it first zero-fills
the new image, committing all of its memory at once: while the bytes it is made from (a request body,
inflated or decoded data) are held in full, twice the volume. ITK's file readers, unlike that, allocate
an image without filling it and read the bytes into it as they come. So the voxels are poured into a pipe
that ITK's MetaImage reader reads as its data file, under a header we write ourselves from the header
mha.py parsed and checked: ITK sees no byte of the client's header, only raw voxels, in the amount our
header says. Each piece can be dropped from the source once it is in the pipe (net/body.give_back), so
the source shrinks as the image grows. The reader runs on a thread of its own (SimpleITK lets go of the
GIL); the pieces come from the caller's thread, so that their checks raise there.

Pieces of a request body (or of data inflated from one) go into the pipe by reference (vmsplice): the
kernel hands their pages to the reader instead of copying them in, so each voxel is copied once, by the
reader, where write() copied it twice (64 MiB: 36 ms through write, 15 ms spliced). Those are the only
pieces whose bytes nothing writes again while the pipe holds them (net/body.settled); others are written.

Where a pipe cannot be named (no /proc), the pieces are joined and copied the old way.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import math
import os
import threading
from collections.abc import Iterable

import numpy as np
import SimpleITK as sitk

from ..net.body import address, settled
from .scratch import scratch_path

_PIPE_SIZE = 1 << 20
PIPE_FROM = 1 << 22  # smaller images are joined and copied: twice a few MiB is nothing, and no thread is started
_ZEROS = bytes(1 << 20)
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class ReadFailed(Exception):
    """ITK's reader stopped before the image was whole (it should not, for bytes already checked)."""


def _header(sizes, element: str, channels: int, big_endian: bool, data_file: str) -> str:
    lines = [
        "ObjectType = Image",
        f"NDims = {len(sizes)}",
        "BinaryData = True",
        f"BinaryDataByteOrderMSB = {big_endian}",
        "CompressedData = False",
        f"DimSize = {' '.join(str(int(size)) for size in sizes)}",
        *([f"ElementNumberOfChannels = {int(channels)}"] if channels > 1 else []),
        f"ElementType = {element}",
        f"ElementDataFile = {data_file}",
    ]
    return "\n".join(lines) + "\n"


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("length", ctypes.c_size_t)]


def _vmsplice():
    try:
        function = ctypes.CDLL(None, use_errno=True).vmsplice
    except (OSError, AttributeError):  # not glibc on Linux: every piece is written
        return None
    function.argtypes = [ctypes.c_int, ctypes.POINTER(_Iovec), ctypes.c_ulong, ctypes.c_uint]
    function.restype = ctypes.c_ssize_t
    return function


_VMSPLICE = _vmsplice()


def _write_all(fd: int, piece) -> None:
    view = memoryview(piece).cast("B")
    if _VMSPLICE is not None and view and settled(view):
        _splice_all(fd, address(view), len(view))
        return
    while view:
        view = view[os.write(fd, view) :]


def _splice_all(fd: int, start: int, length: int) -> None:
    """The pages at start..start+length into the pipe by reference; ctypes lets go of the GIL while it waits."""
    while length:
        done = _VMSPLICE(fd, ctypes.byref(_Iovec(start, length)), 1, 0)
        if done < 0:
            code = ctypes.get_errno()
            if code == errno.EINTR:
                continue
            raise OSError(code, os.strerror(code))  # EPIPE: BrokenPipeError, as os.write raises
        start, length = start + done, length - done


def piped(nbytes: int) -> bool:
    """Whether an image of nbytes is made through the pipe, piece by piece; if not, from all its bytes at once."""
    return nbytes >= PIPE_FROM and os.path.isdir("/proc/self/fd")


def image_from_pieces(sizes, element: str, dtype: np.dtype, channels: int, pieces: Iterable) -> sitk.Image:
    """The image whose voxels (`element`, MetaIO's name of `dtype`, in the file's byte order) are the pieces'
    bytes in order; exactly `nbytes` of them, which the caller has made sure of. Its geometry is the
    default (unit spacing, zero origin, identity direction): the caller sets the header's."""
    nbytes = math.prod(int(size) for size in sizes) * channels * dtype.itemsize
    if not piped(nbytes):
        return _joined(sizes, dtype, channels, pieces)
    read, write = os.pipe()
    try:
        fcntl.fcntl(write, _F_SETPIPE_SZ, _PIPE_SIZE)  # fewer turns between the threads
    except OSError:
        pass
    result: dict = {}
    reader = None
    try:
        with scratch_path(".mhd") as path:
            with open(path, "w", encoding="ascii") as handle:
                handle.write(_header(sizes, element, channels, not dtype.isnative, f"/proc/self/fd/{read}"))
            reader = threading.Thread(target=_read, args=(path, read, result), name="tomaat-image-reader")
            reader.start()  # from here on, the reader closes the read end
            written = 0
            try:
                for piece in pieces:
                    _write_all(write, piece)
                    written += len(piece)
            except BrokenPipeError:
                pass  # the reader stopped: its failure is reported below
            except BaseException:
                # A check of the caller's refused the data: the reader is let finish on zeros, an image thrown
                # away, as MetaIO writes to the process's stderr when its data ends early.
                _pad(write, nbytes - written)
                raise
            finally:
                os.close(write)
                write = -1
                reader.join()
    finally:
        if write >= 0:
            os.close(write)
        if reader is None or reader.ident is None:
            os.close(read)  # no reader ever ran to close it
    if "image" not in result:
        raise ReadFailed(result.get("error", "the reader stopped"))
    image = result["image"]
    for key in image.GetMetaDataKeys():  # what MetaIO notes of our header: the image is as GetImageFromArray made it
        image.EraseMetaData(key)
    return image


def _pad(fd: int, count: int) -> None:
    try:
        for at in range(0, max(0, count), len(_ZEROS)):
            _write_all(fd, memoryview(_ZEROS)[: min(len(_ZEROS), count - at)])
    except BrokenPipeError:
        pass


def _read(path: str, read_end: int, result: dict) -> None:
    """On the reader's thread: ITK reads the header, then the pipe; the pipe's read end is closed after, so a
    writer still writing learns that nobody reads any more (BrokenPipeError) instead of waiting forever."""
    try:
        reader = sitk.ImageFileReader()
        reader.SetImageIO("MetaImageIO")
        reader.SetFileName(path)
        result["image"] = reader.Execute()
    except RuntimeError as error:
        result["error"] = str(error).strip().splitlines()[-1][:200] if str(error).strip() else "RuntimeError"
    finally:
        os.close(read_end)


def _joined(sizes, dtype: np.dtype, channels: int, pieces: Iterable) -> sitk.Image:
    """The old way, twice the volume for a moment: all the bytes, then the image copied from them."""
    parts = list(pieces)
    data = np.frombuffer(parts[0] if len(parts) == 1 else b"".join(parts), dtype=dtype)
    if not dtype.isnative:
        data = data.astype(dtype.newbyteorder("="))
    shape = tuple(int(size) for size in sizes[::-1]) + ((channels,) if channels > 1 else ())
    return sitk.GetImageFromArray(data.reshape(shape), isVector=channels > 1)
