"""MHA files read and written in memory, by our own parser only: no byte of a client's MHA header reaches MetaIO.

Volumes arrive as uncompressed MHA far more often than anything else (it is
what TOMAAT-Slicer and our client send), and writing 1 GB to a scratch file
only for SimpleITK to read it back doubled the decode time. Reading it here
also means the header that sets the size limit is the header that is decoded.

The header is read as MetaIO's MET_Read reads it (metaUtils.cxx, checked
against SimpleITK's MetaImageIO in tests/test_header_differential.py), so a
file means here what it means to every other tool: leading white space and
blank lines are skipped; a key ends at the first '=' or ':' and is compared
case-sensitively; the value runs to the next LF, a CR before it dropped; a key
MetaIO does not know is metadata (ITK writes its dictionary that way:
ITK_InputFilterName, ITK_original_direction, NIfTI's qform_code_name ...), kept
by MetaIO and ignored here; the ElementDataFile line ends the header. Where
MetaIO reads a header in a way a check could be walked around by, or that
depends on its version, the file is refused with the key named: a field it
knows given twice (MetaIO keeps the last), two synonyms at once (Origin beats
Offset whatever their order), a number list shorter or longer than its field
(MetaIO reads on into the next line), a bare CR or NUL (MetaIO reads on past
the first and stops at the second), a field before the NDims it depends on, a
HeaderSize that moves the data. The data must hold exactly the bytes the
header announces, raw or once inflated.

Compressed data goes through ISA-L (python-isal), which writes the same zlib
streams: on a 256^3 label map it compresses in 9 ms to 0.89 MB where
SimpleITK's zlib takes 19 ms for 1.03 MB, and inflates in 9 ms instead of 20.

The checked data (raw, or inflated whole first) is poured into the image as it comes
(files/filling.py: ITK's MetaImage reader reads it from a pipe, under a header we write), the
bytes poured given back behind it, so a volume is held once, not as its bytes and its image at once.
"""

from __future__ import annotations

import contextlib
import math
import re
import sys
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from isal import isal_zlib

from ..errors import TooLarge, UnreadableVolume
from ..net.body import decoded_map, give_back
from .filling import ReadFailed, image_from_pieces, piped

DTYPES = {
    "MET_CHAR": np.int8,
    "MET_UCHAR": np.uint8,
    "MET_SHORT": np.int16,
    "MET_USHORT": np.uint16,
    "MET_INT": np.int32,
    "MET_UINT": np.uint32,
    "MET_LONG_LONG": np.int64,
    "MET_ULONG_LONG": np.uint64,
    "MET_FLOAT": np.float32,
    "MET_DOUBLE": np.float64,
}
# Every field MetaIO's image reader knows (MetaObject's, then MetaImage's read fields), and what its value is:
# text, or how many numbers: a count, "dims" (NDims of them) or "matrix" (NDims squared).
_FIELDS: dict[str, str | int] = {
    **dict.fromkeys(
        ("ObjectType", "ObjectSubType", "Comment", "AcquisitionDate", "Name", "CompressedData", "BinaryData")
        + ("ElementByteOrderMSB", "BinaryDataByteOrderMSB", "DistanceUnits", "AnatomicalOrientation", "Modality")
        + ("ElementType", "ElementDataFile"),
        "text",
    ),
    **dict.fromkeys(
        ("FileFormatVersion", "NDims", "ID", "ParentID", "CompressedDataSize", "HeaderSize", "ElementMin")
        + ("ElementMax", "ElementNumberOfChannels", "ElementNBits", "ElementToIntensityFunctionSlope")
        + ("ElementToIntensityFunctionOffset",),
        1,
    ),
    "Color": 4,
    **dict.fromkeys(
        ("Position", "Origin", "Offset", "CenterOfRotation", "ElementSpacing", "DimSize", "ImagePosition")
        + ("SequenceID", "ElementSize"),
        "dims",
    ),
    **dict.fromkeys(("TransformMatrix", "Rotation", "Orientation"), "matrix"),
}
_WHOLE_NUMBERS = {"NDims", "DimSize", "CompressedDataSize", "HeaderSize", "ElementNumberOfChannels"}
# MetaIO's synonyms, each group kept under its first name; MetaIO's precedence among them is not their order.
_SYNONYMS = (("Offset", "Position", "Origin", "ImagePosition"), ("TransformMatrix", "Rotation", "Orientation"))
_OLD_SPELLINGS = {"Position", "Origin", "Rotation", "Orientation"}  # ignored by some MetaIO once FileFormatVersion > 0
_LOCAL = {"LOCAL", "Local", "local"}  # what MetaIO takes for "the data follows the header"
_SPACE = re.compile(rb"[ \t\n\r\v\f]*")  # isspace(), skipped before a key
_NAME = re.compile(rb"[^=:\r\n]*")
_NUMBER = re.compile(rb"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_WHOLE = re.compile(rb"[+-]?\d+")
MAX_HEADER = 65536
MAX_NAME = 500  # MetaIO stops reading the header at a longer key
MAX_DIMS = 5
EXPECTED = "a single .mha file with 'ElementDataFile = LOCAL' as its last header line"


@dataclass(frozen=True)
class Header:
    """What the header says about the data: enough to check the cost before anything is allocated."""

    sizes: tuple[int, ...]
    channels: int
    dtype: np.dtype
    compressed: bool
    start: int  # offset of the data
    compressed_size: int | None
    keys: dict

    @property
    def voxels(self) -> int:
        return math.prod(self.sizes) * self.channels

    @property
    def nbytes(self) -> int:
        return self.voxels * self.dtype.itemsize


def _refuse(where: str, problem: str) -> UnreadableVolume:
    return UnreadableVolume(f"{where}: {problem}; expected {EXPECTED}")


def truncated(where: str, detail: str) -> UnreadableVolume:
    return UnreadableVolume(f"{where}: the mha file could not be read (truncated or corrupt): {detail}")


def _field_numbers(name: str, value: bytes, keys: dict, where: str) -> str:
    """A known numeric field's value, refused unless it is exactly the numbers MetaIO reads for it."""
    kind = _FIELDS[name]
    if kind in ("dims", "matrix"):
        if "NDims" not in keys:
            raise _refuse(where, f"the MHA header gives {name} before NDims, which MetaIO refuses")
        dims = int(keys["NDims"])
        count = dims if kind == "dims" else dims * dims
    else:
        assert isinstance(kind, int)  # text fields are not parsed as numbers
        count = kind
    parts = value.split()
    pattern = _WHOLE if name in _WHOLE_NUMBERS else _NUMBER
    if len(parts) != count or not all(pattern.fullmatch(part) for part in parts):
        what = "whole numbers" if name in _WHOLE_NUMBERS else "numbers"
        raise _refuse(where, f"the MHA header's {name} is not {count} {what} (got {value[:60].decode('latin-1')!r})")
    if not all(math.isfinite(float(part)) for part in parts):
        raise _refuse(where, f"the MHA header's {name} is not {count} finite numbers")
    if name == "NDims" and not 1 <= int(parts[0]) <= 10:
        raise _refuse(where, f"the MHA header's NDims is {int(parts[0])}; 2 to {MAX_DIMS} are read")
    return value.decode("ascii")


def _run_end(pattern: re.Pattern[bytes], head: bytes, at: int) -> int:
    """Where a run of `pattern`'s characters from `at` ends; the run may be empty, so there always is a match."""
    run = pattern.match(head, at)
    assert run is not None
    return run.end()


def _lines(raw, where: str) -> tuple[dict[str, str], int]:
    """The fields MetaIO would read, up to and with ElementDataFile, and where the data starts."""
    head = bytes(raw[:MAX_HEADER])
    keys: dict[str, str] = {}
    at = 0
    while True:
        at = _run_end(_SPACE, head, at)
        name_end = _run_end(_NAME, head, at)
        line_end = head.find(b"\n", name_end)
        if at == len(head) or line_end < 0:
            if len(head) == MAX_HEADER:
                raise _refuse(where, f"the MHA header is longer than {MAX_HEADER} bytes")
            raise _refuse(where, "the MHA header ends before its ElementDataFile line")
        if name_end - at >= MAX_NAME:
            raise _refuse(where, f"the MHA header's line at byte {at} has a key longer than {MAX_NAME - 1} characters")
        if head[name_end] in b"\r\n":
            raise _refuse(where, f"the MHA header's line at byte {at} is not 'Key = value'")
        line = head[at:line_end]
        if b"\0" in line:
            raise _refuse(where, f"the MHA header's line at byte {at} holds a NUL byte")
        value = head[name_end:line_end].lstrip(b"=: \t")
        value = value[:-1] if value.endswith(b"\r") else value
        if b"\r" in value:
            raise _refuse(
                where, f"the MHA header's line at byte {at} holds a CR that does not end it (MetaIO reads on)"
            )
        value = value.rstrip(b" \t")
        name = head[at:name_end].rstrip(b" \t").decode("latin-1")
        at = line_end + 1
        if name not in _FIELDS:
            continue  # metadata: MetaIO keeps it in the image's dictionary, nothing reads it to decode
        if name in keys:
            raise _refuse(where, f"the MHA header gives {name} more than once")
        keys[name] = value.decode("latin-1") if _FIELDS[name] == "text" else _field_numbers(name, value, keys, where)
        if name == "ElementDataFile":
            if keys[name] not in _LOCAL:
                raise _refuse(where, "detached .mhd/.raw pairs are not accepted (ElementDataFile is not LOCAL)")
            return _merged(keys, where), at


def _merged(keys: dict, where: str) -> dict:
    """Synonyms under one name, ElementSize standing for a missing ElementSpacing, as MetaIO decodes them."""
    for group in _SYNONYMS:
        given = [name for name in group if name in keys]
        if len(given) > 1:
            raise _refuse(where, f"the MHA header gives both {given[0]} and {given[1]}; expected one of them")
        if given:
            keys[group[0]] = keys.pop(given[0])
            if given[0] in _OLD_SPELLINGS and float(keys.get("FileFormatVersion", "0")) != 0:
                raise _refuse(where, f"the MHA header's {given[0]} is read or not depending on the MetaIO version")
    if "ElementSpacing" not in keys and "ElementSize" in keys:
        keys["ElementSpacing"] = keys["ElementSize"]
    if "HeaderSize" in keys and int(keys["HeaderSize"]) != 0:
        raise _refuse(
            where,
            f"the key 'HeaderSize' = {keys['HeaderSize'][:20]} makes MetaIO read data elsewhere than after the header",
        )
    return keys


def _flag(keys: dict, key: str) -> bool:
    """MetaIO's reading of a True/False field: true when its first character is T, t or 1."""
    return keys.get(key, "")[:1] in ("T", "t", "1")


def _reals(keys: dict, key: str, count: int, default: list[float], where: str) -> list[float]:
    if key not in keys:
        return default
    values = [float(part) for part in keys[key].split()]
    if len(values) != count:  # NDims was checked against these lengths when the header was read
        raise _refuse(where, f"the MHA header's {key} is not {count} finite numbers")
    return values


def parse_header(raw, where: str = "volume") -> Header:
    """The header's meaning, or UnreadableVolume naming what is wrong with it."""
    keys, start = _lines(raw, where)
    if keys.get("ObjectType", "Image") != "Image":
        raise _refuse(where, f"the MHA object is a {keys['ObjectType'][:20]!r}, not an Image")
    if "BinaryData" in keys and not _flag(keys, "BinaryData"):
        raise _refuse(where, "text (BinaryData = False) MHA data is not accepted")
    for key in ("NDims", "DimSize", "ElementType"):
        if key not in keys:
            raise _refuse(where, f"the MHA header has no {key}, which MetaIO requires")
    dims = int(keys["NDims"])
    if not 2 <= dims <= MAX_DIMS:
        raise _refuse(where, f"the MHA header's NDims is {dims}; 2 to {MAX_DIMS} are read")
    sizes = [int(part) for part in keys["DimSize"].split()]
    channels = int(keys.get("ElementNumberOfChannels", "1"))
    if min(sizes) <= 0 or channels <= 0:
        raise _refuse(
            where, "the MHA header gives no valid size (DimSize and ElementNumberOfChannels must be positive)"
        )
    if keys["ElementType"] not in DTYPES:
        raise _refuse(
            where, f"the MHA header's ElementType {keys['ElementType'][:20]!r} is not one of {', '.join(DTYPES)}"
        )
    dtype = np.dtype(DTYPES[keys["ElementType"]])
    orders = {_flag(keys, key) for key in ("BinaryDataByteOrderMSB", "ElementByteOrderMSB") if key in keys}
    if len(orders) > 1:
        raise _refuse(where, "the MHA header's BinaryDataByteOrderMSB and ElementByteOrderMSB disagree")
    if True in orders:
        dtype = dtype.newbyteorder(">")
    compressed = _flag(keys, "CompressedData")
    packed = int(keys["CompressedDataSize"]) if compressed and "CompressedDataSize" in keys else None
    if packed is not None and packed <= 0:
        raise _refuse(where, "the MHA header's CompressedDataSize must be positive")
    return Header(tuple(sizes), channels, dtype, compressed, start, packed, keys)


PIECE = 1 << 20  # bytes copied or inflated at a time: the most held twice while a volume is decoded


def _copied(data: memoryview):
    """Uncompressed data a piece at a time, each piece of a request body given back once it has been taken."""
    for at in range(0, len(data), PIECE):
        yield data[at : at + PIECE]
        give_back(data[: at + PIECE])  # all taken so far: a huge page a piece ended in goes once it is whole
    give_back(data, ends=True)


def _inflate(data: memoryview, header: Header, where: str, into) -> None:
    """Compressed data inflated into `into`, a piece at a time, checked whole before anything is made of it:
    exactly the bytes the header announces (more: TooLarge, one byte past them; fewer: truncated)."""
    stream, out, beyond = isal_zlib.decompressobj(), 0, False
    try:
        for at in range(0, len(data), PIECE):
            pending: bytes | memoryview = data[at : at + PIECE]
            last = at + PIECE >= len(data)
            # after the last input, asked on with nothing: output held back by the limit is still to come
            while (pending or last) and not stream.eof and out <= header.nbytes:
                # at most one byte past the announced size: enough to know the data is too large
                piece = stream.decompress(pending, min(PIECE, header.nbytes + 1 - out))
                if not piece and len(stream.unconsumed_tail) == len(pending):
                    break  # no progress: read as a stream that ends early
                into[out : out + len(piece)] = piece
                out += len(piece)
                pending = stream.unconsumed_tail
            if stream.eof or out > header.nbytes or pending:
                beyond = bool(stream.unconsumed_tail) or bool(stream.unused_data) or at + PIECE < len(data)
                break
    except isal_zlib.error:  # type: ignore[misc]  # isal's stub declares `error` an Exception instance; it is a class
        raise truncated(where, "its compressed data is not a valid zlib stream") from None
    if out > header.nbytes or (stream.eof and beyond):
        raise TooLarge(
            f"{where}: the mha data decompresses to more than the {header.nbytes} bytes its header announces"
        )
    if out < header.nbytes or not stream.eof:
        raise truncated(where, f"its data inflates to fewer than the {header.nbytes} bytes its header announces")


def read(raw, header: Header | None = None, where: str = "volume") -> sitk.Image:
    """The image in an MHA file's bytes; pass the header when it was already parsed for the limits.

    The image is made as its data comes (files/filling.py); a request body's data is given back as it goes
    (net/body.give_back): the body reads as zeros there after. Compressed data is inflated whole first, into
    pages given back as the image takes them, so that every refusal comes before the image is made.
    """
    header = header or parse_header(raw, where)
    data = memoryview(raw).cast("B")[header.start :]
    if not header.compressed:
        if len(data) != header.nbytes:
            raise truncated(where, f"its header announces {header.nbytes} bytes of data, it holds {len(data)}")
        return from_pieces(header, _copied(data) if piped(header.nbytes) else [data], where)
    if header.compressed_size is not None:
        if header.compressed_size > len(data):
            raise truncated(where, f"CompressedDataSize is {header.compressed_size}, it holds {len(data)} bytes")
        data = data[: header.compressed_size]
    inflated, view = decoded_map(header.nbytes + 1), None  # one byte more: room to see that there is more
    try:
        _inflate(data, header, where, inflated)
        view = memoryview(inflated)[: header.nbytes]
        return from_pieces(header, _copied(view) if piped(header.nbytes) else [view], where)
    finally:
        view = None
        with contextlib.suppress(BufferError):  # a view in an error's traceback: unmapped when it goes
            inflated.close()


def from_pieces(header: Header, pieces, where: str = "volume") -> sitk.Image:
    """The image whose data (exactly header.nbytes, raw, in the file's byte order) the pieces hold in turn; the
    pieces' own refusals are raised as they are."""
    element = header.keys["ElementType"]
    try:
        image = image_from_pieces(header.sizes, element, header.dtype, header.channels, pieces)
    except ReadFailed as failure:
        raise truncated(where, f"its data could not be read ({failure})") from None
    return finish(image, header, where)


def finish(image: sitk.Image, header: Header, where: str) -> sitk.Image:
    """The image with the header's geometry, as ITK reads it."""
    dims = len(header.sizes)
    image.SetSpacing(_reals(header.keys, "ElementSpacing", dims, [1.0] * dims, where))
    if min(image.GetSpacing()) <= 0:
        raise _refuse(where, "the MHA header's ElementSpacing must be positive")
    image.SetOrigin(_reals(header.keys, "Offset", dims, [0.0] * dims, where))
    matrix = _reals(header.keys, "TransformMatrix", dims * dims, list(np.eye(dims).ravel()), where)
    # ITK: TransformMatrix holds each axis's direction in turn, i.e. the direction matrix's columns
    direction = np.asarray(matrix).reshape(dims, dims).T
    if abs(np.linalg.det(direction)) < 1e-6:
        raise _refuse(where, "the MHA header's TransformMatrix is singular")
    image.SetDirection(direction.ravel().tolist())
    return image


_ELEMENT_TYPES = {np.dtype(dtype): name for name, dtype in DTYPES.items()}


def _numbers(values) -> str:
    """Shortest text that reads back as the same doubles: the geometry survives the file exactly."""
    return " ".join(repr(float(value)) for value in values)


def write(image: sitk.Image, compress: bool, level: int) -> bytes | None:
    """A scalar 2-D or 3-D image as MHA file bytes, or None where SimpleITK must write it."""
    dims = image.GetDimension()
    if dims not in (2, 3) or image.GetNumberOfComponentsPerPixel() != 1 or sys.byteorder != "little":
        return None
    array = sitk.GetArrayViewFromImage(image)
    element = _ELEMENT_TYPES.get(array.dtype)
    if element is None:
        return None
    data: bytes | memoryview = np.ascontiguousarray(array).data.cast("B")
    if compress:
        data = isal_zlib.compress(data, level)
    matrix = np.asarray(image.GetDirection()).reshape(dims, dims).T.ravel()
    lines = [
        "ObjectType = Image",
        f"NDims = {dims}",
        "BinaryData = True",
        "BinaryDataByteOrderMSB = False",
        f"CompressedData = {compress}",
        *([f"CompressedDataSize = {len(data)}"] if compress else []),
        f"TransformMatrix = {_numbers(matrix)}",
        f"Offset = {_numbers(image.GetOrigin())}",
        f"CenterOfRotation = {_numbers([0.0] * dims)}",
        f"ElementSpacing = {_numbers(image.GetSpacing())}",
        f"DimSize = {' '.join(str(size) for size in image.GetSize())}",
        f"ElementType = {element}",
        "ElementDataFile = LOCAL",
    ]
    return b"".join([("\n".join(lines) + "\n").encode("ascii"), data])
