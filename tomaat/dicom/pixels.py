"""One slice's stored values, compressed or not, decoded in the DICOM decoder only, and only as big as its header says.

Compressed pixel data goes to GDCM (JPEG, JPEG-LS, JPEG 2000; the library ITK and Slicer read DICOM
with) through pydicom's decoder plugins, RLE to pydicom's own decoder. GDCM sizes its output buffer
from the DICOM header and the codec its writes from the stream, so a file whose header and stream
disagree makes it abort the process (tests/test_dicom_compressed.py shows it) or return part of the
image. Each stream's own frame header (JPEG's and JPEG-LS's SOF, JPEG 2000's SIZ) is read
here first and must describe the same pixels as Rows, Columns, SamplesPerPixel and BitsAllocated,
and the claimed size must fit a limit, before any codec sees a byte; the decoded frame must then
hold exactly Rows x Columns values.
"""

from __future__ import annotations

import struct

import numpy as np
import pydicom
from pydicom.encaps import generate_frames
from pydicom.pixels import get_decoder
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

NATIVE = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian)
# Syntax -> pydicom decoding plugin. pydicom's GDCM plugin refuses 12-bit JPEG Extended, which GDCM
# decodes exactly as DCMTK and ITK do (the tests compare), so that syntax gets the small plugin below.
PLUGINS = {
    JPEGBaseline8Bit: "gdcm",
    JPEGExtended12Bit: "tomaat-gdcm",
    JPEGLossless: "gdcm",
    JPEGLosslessSV1: "gdcm",
    JPEGLSLossless: "gdcm",
    JPEGLSNearLossless: "gdcm",
    JPEG2000Lossless: "gdcm",
    JPEG2000: "gdcm",
    RLELossless: "pydicom",
}
DECODABLE = (*NATIVE, *PLUGINS)
MAX_FRAME_BYTES = 1 << 30  # one decoded slice; 16384 x 16384 x 16 bits is half of it
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}  # 0xF7: JPEG-LS

# pydicom's plugin protocol: what the module decodes, and that it can
DECODER_DEPENDENCIES = {JPEGExtended12Bit: ("gdcm>=3.0.10",)}


def is_available(uid: str) -> bool:
    return uid == JPEGExtended12Bit


class Refused(Exception):
    """Pixel data that is not what its header says; the message, complete, goes to the user."""


def decode_extended(src: bytes, runner) -> bytes:
    """A JPEG Extended frame through GDCM, whose libjpeg builds decode 8- and 12-bit streams."""
    import gdcm

    fragment = gdcm.Fragment()
    fragment.SetByteStringValue(src)
    fragments = gdcm.SequenceOfFragments.New()
    fragments.AddFragment(fragment)
    element = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
    element.SetValue(fragments.__ref__())
    image = gdcm.Image()
    image.SetNumberOfDimensions(2)
    image.SetDimensions((runner.columns, runner.rows, 1))
    image.SetDataElement(element)
    image.SetPhotometricInterpretation(gdcm.PhotometricInterpretation(gdcm.PhotometricInterpretation.MONOCHROME2))
    image.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGExtendedProcess2_4))
    precision = _jpeg(src)["precision"]  # checked against the header before any decoding
    allocated = 8 if precision <= 8 else 16
    runner.set_option("bits_allocated", allocated)
    image.SetPixelFormat(gdcm.PixelFormat(1, allocated, precision, precision - 1, runner.pixel_representation))
    buffer = image.GetBuffer()
    if buffer is None:
        raise ValueError("GDCM could not decode the JPEG stream")
    return buffer.encode("utf-8", "surrogateescape")  # GDCM hands char* over as str


def stored(dataset: pydicom.Dataset, name: str) -> np.ndarray:
    """The slice's stored values, (Rows, Columns), checked against its header before and after decoding."""
    rows, columns = int(dataset.Rows), int(dataset.Columns)
    samples = int(dataset.get("SamplesPerPixel", 1))
    allocated = int(dataset.get("BitsAllocated", 0))
    if allocated not in (8, 16, 32):
        raise Refused(f"{name}: BitsAllocated {allocated}; expected 8, 16 or 32 bits a pixel")
    claimed = rows * columns * samples * allocated // 8
    if claimed > MAX_FRAME_BYTES:
        raise Refused(
            f"{name}: its header claims {columns} x {rows} pixels of {allocated} bits ({claimed / 2**20:.0f} MiB) "
            f"in one slice; expected at most {MAX_FRAME_BYTES >> 20} MiB a slice"
        )
    syntax = dataset.file_meta.TransferSyntaxUID
    if syntax in NATIVE:
        array = dataset.pixel_array
    else:
        stream = next(generate_frames(dataset.PixelData, number_of_frames=1), b"")
        if syntax in PLUGINS and syntax != RLELossless:
            _check_stream(syntax, stream, (rows, columns, samples, allocated), name)
        array, _ = get_decoder(syntax).as_array(dataset, index=0, decoding_plugin=PLUGINS[syntax])
    if array.shape != (rows, columns):
        shape = " x ".join(map(str, array.shape[::-1]))
        raise Refused(f"{name}: {shape} pixels decoded; expected {columns} x {rows}, as its header says")
    return array


def _check_stream(syntax, stream: bytes, header: tuple[int, int, int, int], name: str) -> None:
    rows, columns, samples, allocated = header
    kind = "JPEG 2000" if syntax in (JPEG2000, JPEG2000Lossless) else "JPEG-LS" if "LS" in syntax.name else "JPEG"
    found = _j2k(stream) if kind == "JPEG 2000" else _jpeg(stream)
    if not found:
        raise Refused(
            f"{name}: its {kind} stream has no readable frame header; expected {syntax.name} pixel data "
            "(the file is truncated or corrupt)"
        )
    if (found["rows"], found["columns"], found["samples"]) != (rows, columns, samples) or not (
        1 <= found["precision"] <= allocated
    ):
        raise Refused(
            f"{name}: its {kind} stream holds {found['columns']} x {found['rows']} pixels of {found['precision']} "
            f"bits ({found['samples']} sample(s) each), but its header says {columns} x {rows} of at most "
            f"{allocated} bits ({samples} sample(s)); expected a header that describes its pixel data"
        )


def _jpeg(stream: bytes) -> dict:
    """The frame header (SOFn, or JPEG-LS's SOF55) of a JPEG or JPEG-LS stream; {} when none is found."""
    if stream[:2] != b"\xff\xd8":
        return {}
    at = 2
    while at + 4 <= len(stream):
        if stream[at] != 0xFF:
            return {}
        marker = stream[at + 1]
        if marker == 0xFF:  # a fill byte before the marker
            at += 1
            continue
        (length,) = struct.unpack(">H", stream[at + 2 : at + 4])
        if marker in _JPEG_SOF:
            if at + 10 > len(stream):
                return {}
            precision, height, width, components = struct.unpack(">BHHB", stream[at + 4 : at + 10])
            return {"rows": height, "columns": width, "samples": components, "precision": precision}
        if marker == 0xDA or length < 2:  # scan data before a frame header: not a JPEG frame
            return {}
        at += 2 + length
    return {}


def _j2k(stream: bytes) -> dict:
    """The SIZ marker of a JPEG 2000 codestream, inside a JP2 file's jp2c box if it is one; {} when none."""
    at = 0
    if stream[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n":
        at = 12
        while at + 8 <= len(stream):
            (length,) = struct.unpack(">I", stream[at : at + 4])
            if stream[at + 4 : at + 8] == b"jp2c":
                at += 8
                break
            if length < 8:
                return {}
            at += length
        else:
            return {}
    if stream[at : at + 4] != b"\xff\x4f\xff\x51" or at + 43 > len(stream):
        return {}
    width, height, x0, y0 = struct.unpack(">IIII", stream[at + 8 : at + 24])
    (components,) = struct.unpack(">H", stream[at + 40 : at + 42])
    return {
        "rows": height - y0,
        "columns": width - x0,
        "samples": components,
        "precision": (stream[at + 42] & 0x7F) + 1,
    }


def _register() -> None:
    decoder = get_decoder(JPEGExtended12Bit)
    if "tomaat-gdcm" not in decoder.available_plugins:
        decoder.add_plugin("tomaat-gdcm", (__name__, "decode_extended"))


_register()
