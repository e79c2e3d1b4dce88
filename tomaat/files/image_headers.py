"""What an image file will cost once decoded, read from the whole of its header before anything is allocated.

A decoder allocates the whole voxel buffer a header asks for, so a 200-byte
file claiming 100000^3 voxels would take the process down. The check must read
the header exactly as the decoder will: a check that stops at 64 KiB while the
decoder reads on, or that takes the first of two `sizes` lines while the
decoder takes the last, is a check an attacker walks around. So each format's
header is parsed whole and strictly here: NRRD fields in teem's spellings,
each once, from an allow-list that has no `data file`; NIfTI sizes from the
datatype code the decoder uses, not from `bitpix`; MHA by our own reader's
parser (mha.py), which is also the only MHA decoder. The data must then be
exactly as long as the header says, raw or once inflated, so a decoder never
fills a buffer from memory it did not read (which sent earlier requests' voxels
to a client) and a gzip bomb stops at the size its header accounts for.
"""

from __future__ import annotations

import math
import re
import struct
import zlib

from ..errors import TooLarge, UnreadableVolume
from . import mha
from .limits import DEFAULT_MAX_VOXELS

HEADER_BYTES = 65536  # text headers longer than this are not images we accept
_CHUNK = 1 << 20


def _too_large(where: str, voxels: int, limit: int) -> TooLarge:
    return TooLarge(f"{where}: the image header claims {voxels} voxels; this server accepts at most {limit}")


def _positive(sizes, where: str) -> list[int]:
    if not sizes or any(size <= 0 for size in sizes):
        raise UnreadableVolume(f"{where}: the image header gives no valid size (got {list(sizes)[:8]})")
    return list(sizes)


# NRRD: every field name teem knows (NrrdIO's nrrdField enum and its equivalents), compared without case as teem
# does; the second set is those this server accepts. `data file` would open another file, `line skip` and
# `byte skip` would move the data, `block size` goes with a block type we do not read.
_NRRD_KNOWN = {
    "content", "number", "type", "block size", "blocksize", "dimension", "space", "space dimension",
    "spacedimension", "sizes", "spacings", "thicknesses", "axis mins", "axismins", "axis maxs", "axismaxs",
    "space directions", "spacedirections", "centers", "centerings", "kinds", "labels", "units", "min", "max",
    "old min", "oldmin", "old max", "oldmax", "endian", "encoding", "line skip", "lineskip", "byte skip", "byteskip",
    "sample units", "sampleunits", "space units", "spaceunits", "space origin", "spaceorigin", "measurement frame",
    "measurementframe", "data file", "datafile", "key/value",
}  # fmt: skip
_NRRD_REFUSED = {"blocksize", "datafile", "lineskip", "byteskip", "key/value"}
_NRRD_MAGIC = re.compile(rb"NRRD000[1-5]")
_NRRD_LINE_END = re.compile(rb"\r\n|\r|\n")  # teem's airOneLine ends a line at each of these
_NRRD_TYPES = {}
for _size, _names in {
    1: "signed char,int8,int8_t,uchar,unsigned char,uint8,uint8_t",
    2: "short,short int,signed short,signed short int,int16,int16_t,ushort,unsigned short,unsigned short int,"
    "uint16,uint16_t",
    4: "int,signed int,int32,int32_t,uint,unsigned int,uint32,uint32_t,float",
    8: "longlong,long long,long long int,signed long long,signed long long int,int64,int64_t,ulonglong,"
    "unsigned long long,unsigned long long int,uint64,uint64_t,double",
}.items():
    _NRRD_TYPES.update(dict.fromkeys(_names.split(","), _size))
_NRRD_EXPECTED = "one .nrrd file with its data attached, raw or gzip-encoded"


def _nrrd_refuse(where: str, problem: str) -> UnreadableVolume:
    return UnreadableVolume(f"{where}: {problem}; expected {_NRRD_EXPECTED}")


def nrrd_lines(head: bytes):
    """(start, end of text, end of line) of each line of a NRRD header, split as teem splits them."""
    at = 0
    for end in _NRRD_LINE_END.finditer(head):
        yield at, end.start(), end.end()
        at = end.end()


def nrrd_field(text: bytes) -> tuple[str | None, bytes]:
    """(the field a header line sets, in teem's name without spaces, or None for a comment or key:=value pair;
    its value), as teem's _nrrdReadNrrdParseField decides: the text before the first ': ' names a field
    if teem knows it, else the line is a key/value pair if it holds ':=' anywhere, else it is an error ('')."""
    if text.startswith(b"#"):
        return None, b""
    colon = text.find(b": ")
    name = text[:colon].decode("latin-1").lower() if colon >= 0 else ""
    if name in _NRRD_KNOWN:
        return name.replace(" ", ""), text[colon + 2 :].lstrip(b" \t")
    if b":=" in text:
        return None, b""
    return "", text


def nrrd_header(raw, where: str) -> tuple[dict[str, str], int]:
    """Every field of a NRRD header, and where its data starts, read as teem reads them."""
    head = bytes(raw[:HEADER_BYTES])
    fields: dict[str, str] = {}
    for start, text_end, end in nrrd_lines(head):
        text = head[start:text_end]
        if b"\0" in text:
            raise _nrrd_refuse(where, f"the NRRD header's line at byte {start} holds a NUL byte")
        if start == 0:
            if not _NRRD_MAGIC.fullmatch(text):
                raise _nrrd_refuse(where, f"the NRRD file's first line {text[:20]!r} is not NRRD0001 to NRRD0005")
            continue
        if not text:
            return fields, end
        key, value = nrrd_field(text)
        if key is None:
            continue  # a comment or a key/value pair: metadata, never a file name
        if key == "datafile":
            raise _nrrd_refuse(where, "detached NRRD headers are not accepted (the header names a data file)")
        shown = text[: max(text.find(b":"), 0) or 40].decode("latin-1")[:40]
        if key == "":
            raise _nrrd_refuse(where, f"the NRRD header's line {shown!r} is neither 'field: value' nor 'key:=value'")
        if key in _NRRD_REFUSED:
            raise _nrrd_refuse(where, f"the NRRD header's field {shown!r} is not one this server reads")
        if key in fields:
            raise _nrrd_refuse(where, f"the NRRD header gives {shown!r} more than once")
        fields[key] = value.decode("latin-1").strip()
    raise _nrrd_refuse(where, f"the NRRD header does not end with a blank line within {HEADER_BYTES} bytes")


def _nrrd_layout(raw, where: str) -> tuple[list[int], int, str, int]:
    fields, start = nrrd_header(raw, where)
    try:
        sizes = [int(part) for part in fields.get("sizes", "").split()]
        dimension = int(fields.get("dimension", ""))
    except ValueError:
        raise _nrrd_refuse(where, "the NRRD header's sizes and dimension must be whole numbers") from None
    if len(sizes) != dimension or not 1 <= dimension <= 16:
        raise _nrrd_refuse(where, f"the NRRD header's sizes ({len(sizes)} numbers) do not match its dimension")
    per_voxel = _NRRD_TYPES.get(" ".join(fields.get("type", "").lower().split()))
    if per_voxel is None:
        raise _nrrd_refuse(
            where, f"the NRRD type {fields.get('type', '')[:30]!r} is not a scalar type this server reads"
        )
    encoding = {"raw": "raw", "gzip": "gzip", "gz": "gzip"}.get(fields.get("encoding", "").lower())
    if encoding is None:
        raise _nrrd_refuse(where, f"the NRRD encoding {fields.get('encoding', '')[:20]!r} is not raw or gzip")
    return _positive(sizes, where), per_voxel, encoding, start


def _exact(where: str, fmt: str, announced: int, held: int, inflated: bool = False) -> UnreadableVolume:
    what = "inflates to" if inflated else "holds"
    more = "more" if held > announced else "fewer"
    return UnreadableVolume(
        f"{where}: the {fmt} file could not be read (truncated or corrupt): its header announces "
        f"{announced} bytes of data, it {what} {more}"
    )


# NIfTI datatype codes and their bytes per voxel, as niftilib sizes its reads (bitpix is not used).
_NIFTI_BYTES = {2: 1, 4: 2, 8: 4, 16: 4, 32: 8, 64: 8, 128: 3, 256: 1, 512: 2, 768: 4, 1024: 8, 1280: 8, 1792: 16}
_NIFTI_BYTES[2304] = 4
_NIFTI_INTEGERS = {2, 4, 8, 256, 512, 768, 1024, 1280}


def _rescaled(slope: float, intercept: float) -> bool:
    """Whether ITK applies scl_slope/scl_inter, which turns integer voxels into 32-bit floats."""
    return math.isfinite(slope) and abs(slope) > 1e-12 and (abs(slope - 1) > 1e-12 or abs(intercept) > 1e-12)


def _nifti_layout(head: bytes, where: str) -> tuple[int, int, int, int]:
    """(voxels, bytes per voxel on disk, data offset, bytes per voxel once ITK decoded it) from a
    single-file NIfTI-1 or NIfTI-2 header."""
    for order in "<>":
        size = struct.unpack(order + "i", head[:4])[0] if len(head) >= 4 else 0
        if size == 348 and len(head) >= 348 and head[344:348] == b"n+1\x00":
            dims = struct.unpack(order + "8h", head[40:56])
            datatype = struct.unpack(order + "h", head[70:72])[0]
            offset = struct.unpack(order + "f", head[108:112])[0]
            slope, intercept = struct.unpack(order + "2f", head[112:120])
            break
        if size == 540 and len(head) >= 540 and head[4:8] == b"n+2\x00":
            dims = struct.unpack(order + "8q", head[16:80])
            datatype = struct.unpack(order + "h", head[12:14])[0]
            offset = struct.unpack(order + "q", head[168:176])[0]
            slope, intercept = struct.unpack(order + "2d", head[176:192])
            break
    else:
        raise UnreadableVolume(f"{where}: the NIfTI header is truncated or corrupt (a single-file .nii is expected)")
    if not 1 <= dims[0] <= 7:
        raise UnreadableVolume(f"{where}: the NIfTI header gives {dims[0]} dimensions; expected 1 to 7")
    if size == 540 and max(dims[1 : dims[0] + 1]) > 32767:
        raise UnreadableVolume(
            f"{where}: the NIfTI-2 header gives an axis of {max(dims[1 : dims[0] + 1])} voxels; "
            "expected at most 32767 per axis (the NIfTI-1 limit of this server's reader)"
        )
    if datatype not in _NIFTI_BYTES:
        raise UnreadableVolume(f"{where}: the NIfTI datatype code {datatype} is not one this server reads")
    if not math.isfinite(offset) or not 0 <= offset < 2**40:
        raise UnreadableVolume(f"{where}: the NIfTI header's data offset is invalid")
    offset = max(int(offset), 352 if size == 348 else 544)  # niftilib reads no data from inside the header
    voxels, per_voxel = math.prod(_positive(dims[1 : dims[0] + 1], where)), _NIFTI_BYTES[datatype]
    decoded = 4 if datatype in _NIFTI_INTEGERS and _rescaled(slope, intercept) else per_voxel
    return voxels, per_voxel, offset, decoded


def _inflate(raw):
    """The decompressed pieces of a gzip file, at most _CHUNK bytes each.

    Like zlib's gzread, which ITK uses, a following gzip member is read on and
    anything else after a member is ignored, so the count matches what ITK would inflate.
    """
    view, position = memoryview(raw), 0
    stream, pending = zlib.decompressobj(wbits=31), b""
    data: bytes | memoryview
    while True:
        if stream.unconsumed_tail:
            data = stream.unconsumed_tail
        elif pending:
            data, pending = pending, b""
        elif position < len(view):
            data, position = view[position : position + _CHUNK], position + _CHUNK
        else:
            if not stream.eof:
                raise zlib.error("truncated")
            return
        yield stream.decompress(data, _CHUNK)
        if stream.eof:
            pending = stream.unused_data + bytes(view[position : position + 2])
            position += 2
            if not pending.startswith(b"\x1f\x8b"):
                return
            stream = zlib.decompressobj(wbits=31)


def _inflated_exactly(raw, expected: int | None, where: str, fmt: str, head_bytes: int = 0, on_head=None) -> None:
    """Inflate in bounded pieces; refuse a stream that is longer or shorter than expected.

    on_head(head) may learn `expected` from the first head_bytes inflated (a NIfTI header).
    """
    head, seen = b"", 0
    try:
        for piece in _inflate(raw):
            if len(head) < head_bytes:
                head += piece[: head_bytes - len(head)]
                if len(head) == head_bytes and on_head is not None:
                    expected = on_head(head)
            seen += len(piece)
            if expected is not None and seen > expected:
                raise TooLarge(
                    f"{where}: the {fmt} data decompresses to more than the {expected} bytes its header accounts for"
                )
    except zlib.error:
        raise UnreadableVolume(f"{where}: the {fmt} file is not valid gzip data (truncated or corrupt)") from None
    if expected is None:
        expected = on_head(head)  # a file shorter than head_bytes: NIfTI-1 needs only 348 of them
    if seen != expected:
        raise _exact(where, fmt, expected, seen, inflated=True)


def _check_voxels(voxels: int, where: str, max_voxels: int) -> None:
    if voxels > max_voxels:
        raise _too_large(where, voxels, max_voxels)


def check(raw, fmt: str, where: str, max_voxels: int = DEFAULT_MAX_VOXELS) -> tuple[int, mha.Header | None]:
    """The bytes the image takes once decoded, and an MHA file's parsed header for its reader.

    TooLarge or UnreadableVolume when the file is not what its header says.
    """
    if fmt == "mha":
        header = mha.parse_header(raw, where)
        _check_voxels(math.prod(header.sizes), where, max_voxels)
        return header.nbytes, header
    if fmt == "nrrd":
        sizes, per_voxel, encoding, start = _nrrd_layout(raw, where)
        voxels = math.prod(sizes)
        _check_voxels(voxels, where, max_voxels)
        if encoding == "gzip":
            _inflated_exactly(memoryview(raw)[start:], voxels * per_voxel, where, "nrrd")
        elif len(raw) - start != voxels * per_voxel:
            raise _exact(where, "nrrd", voxels * per_voxel, len(raw) - start)
        return voxels * per_voxel, None
    if fmt == "nii":
        voxels, per_voxel, offset, decoded = _nifti_layout(bytes(raw[:540]), where)
        _check_voxels(voxels, where, max_voxels)
        if len(raw) != offset + voxels * per_voxel:  # ITK, too, reads a short .nii without complaint
            raise _exact(where, "nii", offset + voxels * per_voxel, len(raw))
        return voxels * decoded, None
    if fmt == "nii.gz":
        layout = {}

        def expected(head: bytes) -> int:
            voxels, per_voxel, offset, layout["decoded"] = _nifti_layout(head, where)
            _check_voxels(voxels, where, max_voxels)
            layout["voxels"] = voxels
            return offset + voxels * per_voxel

        _inflated_exactly(raw, None, where, "nii.gz", 540, expected)
        return layout["voxels"] * layout["decoded"], None
    raise UnreadableVolume(f"{where}: unknown image format {fmt!r}")
