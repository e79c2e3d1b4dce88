"""How big an image file says it is, read from its header before SimpleITK allocates anything.

SimpleITK allocates the whole voxel buffer a header asks for, so a 200-byte
file claiming 100000^3 voxels would take the process down. Each format's
header is parsed here just far enough to learn the image size, and a .nii.gz
is decompressed in bounded chunks so a gzip bomb is refused by its stream
length, not after it fills memory.
"""

from __future__ import annotations

import math
import re
import struct
import zlib

from .errors import TooLarge, UnreadableVolume

DEFAULT_MAX_VOXELS = 1024**3
HEADER_BYTES = 65536  # text headers longer than this are not images we accept
_CHUNK = 1 << 20


def _too_large(where: str, voxels: int, limit: int) -> TooLarge:
    return TooLarge(f"{where}: the image header claims {voxels} voxels; this server accepts at most {limit}")


def _positive(sizes, where: str) -> list[int]:
    if not sizes or any(size <= 0 for size in sizes):
        raise UnreadableVolume(f"{where}: the image header gives no valid size (got {list(sizes)[:8]})")
    return list(sizes)


def _text_value(header: bytes, key: bytes, separator: bytes) -> bytes | None:
    found = re.search(rb"^[ \t]*" + key + rb"[ \t]*" + separator + rb"[ \t]*([^\r\n]*)", header, re.M | re.I)
    return found.group(1).strip() if found else None


def _integers(text: bytes | None, where: str, key: str) -> list[int]:
    if text is None:
        raise UnreadableVolume(f"{where}: the image header has no {key}")
    try:
        return [int(part) for part in text.split()]
    except ValueError:
        raise UnreadableVolume(f"{where}: the image header's {key} is not a list of whole numbers") from None


_MET_BYTES = {b"MET_CHAR": 1, b"MET_UCHAR": 1, b"MET_SHORT": 2, b"MET_USHORT": 2, b"MET_INT": 4, b"MET_UINT": 4}
_MET_BYTES.update({b"MET_FLOAT": 4, b"MET_DOUBLE": 8, b"MET_LONG_LONG": 8, b"MET_ULONG_LONG": 8})
_MHA_DATA = re.compile(rb"^[ \t]*ElementDataFile[ \t]*[=:][ \t]*LOCAL[ \t]*\r?\n", re.M | re.I)


def mha_voxels(raw: bytes, where: str) -> int:
    header = bytes(raw[:HEADER_BYTES])
    sizes = _positive(_integers(_text_value(header, b"DimSize", b"[=:]"), where, "DimSize"), where)
    channels = _text_value(header, b"ElementNumberOfChannels", b"[=:]")
    count = _positive(_integers(channels, where, "ElementNumberOfChannels"), where)[0] if channels else 1
    return math.prod(sizes) * count


def _check_mha_length(raw: bytes, header: bytes, voxels: int, where: str) -> None:
    """MetaIO reads a short uncompressed data block without complaint, so a truncated file must be caught here."""
    compressed = (_text_value(header, b"CompressedData", b"[=:]") or b"").lower() == b"true"
    per_voxel = _MET_BYTES.get((_text_value(header, b"ElementType", b"[=:]") or b"").upper())
    start = _MHA_DATA.search(header)
    if compressed or per_voxel is None or start is None:
        return
    if len(raw) - start.end() < voxels * per_voxel:
        raise UnreadableVolume(
            f"{where}: the mha file could not be read (truncated or corrupt): its header announces {voxels * per_voxel} bytes of data, "
            f"it holds {len(raw) - start.end()}"
        )


def nrrd_voxels(raw: bytes, where: str) -> int:
    header = bytes(raw[:HEADER_BYTES]).split(b"\n\n", 1)[0]
    return math.prod(_positive(_integers(_text_value(header, b"sizes", b":"), where, "sizes"), where))


def _nifti_layout(head: bytes, where: str) -> tuple[int, int, int]:
    """(voxels, bytes per voxel, data offset) from a NIfTI-1 or NIfTI-2 header."""
    for order in "<>":
        size = struct.unpack(order + "i", head[:4])[0] if len(head) >= 4 else 0
        if size == 348 and len(head) >= 348:
            dims = struct.unpack(order + "8h", head[40:56])
            bitpix = struct.unpack(order + "h", head[72:74])[0]
            offset = struct.unpack(order + "f", head[108:112])[0]
            break
        if size == 540 and len(head) >= 540:
            dims = struct.unpack(order + "8q", head[16:80])
            bitpix = struct.unpack(order + "h", head[14:16])[0]
            offset = struct.unpack(order + "q", head[168:176])[0]
            break
    else:
        raise UnreadableVolume(f"{where}: the NIfTI header is truncated or corrupt")
    if not 1 <= dims[0] <= 7:
        raise UnreadableVolume(f"{where}: the NIfTI header gives {dims[0]} dimensions; expected 1 to 7")
    if not math.isfinite(offset) or not 0 <= offset < 2**40:
        raise UnreadableVolume(f"{where}: the NIfTI header's data offset is invalid")
    return math.prod(_positive(dims[1 : dims[0] + 1], where)), max(int(bitpix), 8) // 8, int(offset)


def nifti_voxels(raw: bytes, where: str) -> int:
    return _nifti_layout(bytes(raw[:540]), where)[0]


def _inflate(raw: bytes):
    """The decompressed pieces of a gzip file, at most _CHUNK bytes each.

    Like zlib's gzread, which ITK uses, a following gzip member is read on and
    anything else after a member is ignored, so the count matches what ITK would inflate.
    """
    view, position = memoryview(raw), 0
    stream, pending = zlib.decompressobj(wbits=31), b""
    while True:
        if stream.unconsumed_tail:
            data = stream.unconsumed_tail
        elif pending:
            data, pending = pending, b""
        elif position < len(view):
            data, position = view[position : position + _CHUNK], position + _CHUNK
        else:
            return
        yield stream.decompress(data, _CHUNK)
        if stream.eof:
            pending = stream.unused_data + bytes(view[position : position + 2])
            position += 2
            if not pending.startswith(b"\x1f\x8b"):
                return
            stream = zlib.decompressobj(wbits=31)


def check_gzip_nifti(raw: bytes, where: str, max_voxels: int) -> None:
    """Decompress in bounded chunks: refuse a stream longer than its header says the image is."""
    head, seen, allowed = b"", 0, None
    try:
        for piece in _inflate(raw):
            seen += len(piece)
            if allowed is None:
                head += piece[: 540 - len(head)]
                if len(head) < 540:
                    continue
                allowed = _allowed(head, where, max_voxels)
            if seen > allowed:
                raise TooLarge(
                    f"{where}: the .nii.gz data decompresses to more than the {allowed} bytes its header accounts for"
                )
    except zlib.error:
        raise UnreadableVolume(f"{where}: the .nii.gz file is not valid gzip data (truncated or corrupt)") from None
    if allowed is None:
        _allowed(head, where, max_voxels)


def _allowed(head: bytes, where: str, max_voxels: int) -> int:
    voxels, per_voxel, offset = _nifti_layout(head, where)
    if voxels > max_voxels:
        raise _too_large(where, voxels, max_voxels)
    return max(offset, 548) + voxels * per_voxel + 65536  # extensions and padding fit in the slack


def check_size(raw: bytes, fmt: str, where: str, max_voxels: int = DEFAULT_MAX_VOXELS) -> None:
    """Raise TooLarge when the header claims more voxels than max_voxels (or its stream is a bomb)."""
    if fmt == "nii.gz":
        check_gzip_nifti(raw, where, max_voxels)
        return
    voxels = {"mha": mha_voxels, "nrrd": nrrd_voxels, "nii": nifti_voxels}[fmt](raw, where)
    if voxels > max_voxels:
        raise _too_large(where, voxels, max_voxels)
    if fmt == "mha":
        _check_mha_length(raw, bytes(raw[:HEADER_BYTES]), voxels, where)
    elif fmt == "nii":
        _, per_voxel, offset = _nifti_layout(bytes(raw[:540]), where)
        if len(raw) < offset + voxels * per_voxel:  # ITK, too, reads a short .nii without complaint
            raise UnreadableVolume(
                f"{where}: the nii file could not be read (truncated or corrupt): its header announces {offset + voxels * per_voxel} bytes, "
                f"it holds {len(raw)}"
            )
