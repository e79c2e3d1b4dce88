"""MHA files read and written in memory, without SimpleITK's detour through a named file.

Volumes arrive as uncompressed MHA far more often than anything else (it is
what TOMAAT-Slicer and our client send), and writing 1 GB to a scratch file
only for SimpleITK to read it back doubled the decode time. Only the header
keys SimpleITK itself writes are understood here, with ITK's geometry
semantics; anything else (vector pixels, big-endian data, more than three
dimensions, an unknown key) returns None and the caller falls back to SimpleITK.

Compressed data goes through ISA-L (python-isal), which writes the same zlib
streams: on a 256^3 label map it compresses in 9 ms to 0.89 MB where
SimpleITK's zlib takes 19 ms for 1.03 MB, and inflates in 9 ms instead of 20.
"""

from __future__ import annotations

import re
import sys

import numpy as np
import SimpleITK as sitk
from isal import isal_zlib

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
_KNOWN = {
    "ObjectType",
    "NDims",
    "BinaryData",
    "BinaryDataByteOrderMSB",
    "ElementByteOrderMSB",
    "CompressedData",
    "TransformMatrix",
    "Offset",
    "CenterOfRotation",
    "AnatomicalOrientation",
    "ElementSpacing",
    "DimSize",
    "ElementType",
    "ElementNumberOfChannels",
    "ElementDataFile",
    "CompressedDataSize",
}
_LINE = re.compile(rb"([A-Za-z]\w*)[ \t]*[=:][ \t]*([^\r\n]*)\r?\n")
MAX_HEADER = 65536


def _header(raw) -> tuple[dict[str, str], int] | None:
    """The header's keys and the offset of the data, or None for anything unusual."""
    head = bytes(raw[:MAX_HEADER])
    keys, at = {}, 0
    while True:
        line = _LINE.match(head, at)
        if line is None:
            return None
        key, value = line.group(1).decode("ascii"), line.group(2).decode("latin-1").strip()
        if key not in _KNOWN or key in keys:
            return None
        keys[key], at = value, line.end()
        if key == "ElementDataFile":
            return (keys, at) if value == "LOCAL" else None


def _floats(text: str | None, count: int, default: list[float]) -> list[float] | None:
    if text is None:
        return default
    try:
        values = [float(part) for part in text.split()]
    except ValueError:
        return None
    return values if len(values) == count else None


def _inflate(data, expected: int) -> bytes | None:
    """Exactly the bytes the header announces, never more: a zlib bomb stops at the voxel limit."""
    try:
        inflated = isal_zlib.decompressobj().decompress(data, expected)
    except isal_zlib.error:
        return None
    return inflated if len(inflated) == expected else None


def read(raw) -> sitk.Image | None:
    """The image in a scalar MHA file's bytes, or None where SimpleITK must read it.

    The caller has checked the header's size against the voxel limit and the data's length.
    """
    parsed = _header(raw)
    if parsed is None:
        return None
    keys, start = parsed
    truthy = {"True": True, "False": False}
    if keys.get("ObjectType", "Image") != "Image" or keys.get("BinaryData", "True") != "True":
        return None
    compressed = truthy.get(keys.get("CompressedData", "False"))
    if compressed is None or keys.get("ElementNumberOfChannels", "1") != "1":
        return None
    if any(truthy.get(keys.get(k, "False")) is not False for k in ("BinaryDataByteOrderMSB", "ElementByteOrderMSB")):
        return None
    dtype = DTYPES.get(keys.get("ElementType", ""))
    try:
        dims = int(keys.get("NDims", ""))
        sizes = [int(part) for part in keys.get("DimSize", "").split()]
    except ValueError:
        return None
    if dtype is None or dims not in (2, 3) or len(sizes) != dims or min(sizes) <= 0:
        return None
    spacing = _floats(keys.get("ElementSpacing"), dims, [1.0] * dims)
    origin = _floats(keys.get("Offset"), dims, [0.0] * dims)
    matrix = _floats(keys.get("TransformMatrix"), dims * dims, list(np.eye(dims).ravel()))
    if spacing is None or origin is None or matrix is None or min(spacing) <= 0:
        return None
    count = int(np.prod(sizes))
    if compressed:
        raw, start = _inflate(memoryview(raw)[start:], count * np.dtype(dtype).itemsize), 0
        if raw is None:
            return None
    try:
        data = np.frombuffer(raw, dtype=dtype, count=count, offset=start)
    except ValueError:  # shorter than its header says: SimpleITK's own message applies
        return None
    image = sitk.GetImageFromArray(data.reshape(sizes[::-1]))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    # ITK: TransformMatrix holds each axis's direction in turn, i.e. the direction matrix's columns
    image.SetDirection(np.asarray(matrix).reshape(dims, dims).T.ravel().tolist())
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
    data = memoryview(np.ascontiguousarray(array)).cast("B")
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
