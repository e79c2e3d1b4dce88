"""Image files as bytes: we tell the format by content, and that format's reader alone reads it.

ITK's own choice of reader looks for HDF5 and DICOM inside any file before it
looks for MHA, NRRD or NIfTI, so a valid MHA header with an HDF5 image at byte
512 was read as HDF5, external data and all. Here the format is decided once,
by sniff_format; its header is checked whole (files/image_headers.py) and charged to the
request's allowance; MHA is then decoded by our own parser and NRRD and NIfTI
by ITK's reader for that format only, in a confined decoder process
(files/confined.py). Single-file formats only: a header that points at another
file (MHD/raw, detached NRRD) is refused.
"""

from __future__ import annotations

import zlib

import SimpleITK as sitk

from ..errors import UnreadableVolume
from ..files import confined, filling, image_headers, mha
from ..files.limits import Allowance
from ..files.scratch import write_then_bytes
from ..net.body import give_back
from . import b64

# zlib level for written images: labels are mostly runs. On a 256^3 label map ISA-L level 1 takes 9 ms for
# 0.89 MB; SimpleITK's zlib took 19 ms for 1.03 MB at level 1, Python's 250 ms at 6 (docs/performance.md).
LABEL_LEVEL = 1
FORMATS = {"mha": ".mha", "nii": ".nii", "nii.gz": ".nii.gz", "nrrd": ".nrrd"}
_WHY = {  # how a decoder failed, for the client's message
    "refused": "",
    "nonsense": " (what its reader decoded does not match its header)",
    "stopped": " (the decoder stopped: the file is corrupt or hostile)",
    "timeout": " (decoding it took longer than this server allows)",
}
READERS = {"nii": "NiftiImageIO", "nii.gz": "NiftiImageIO", "nrrd": "NrrdImageIO"}  # ITK's, for the decoders
EXPECTED = "an MHA, NIfTI (.nii/.nii.gz) or NRRD image file, raw or base64-encoded"

_MHA_KEYS = (b"ObjectType", b"NDims", b"ObjectSubType", b"Comment", b"TransformMatrix", b"DimSize")
_BASE64_TEXT = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/= \t\n\r\x0b\x0c"
_CHECK_SLICE = 1 << 24
STREAM_FROM = 1 << 23  # base64 text shorter than this is decoded whole: its copy is small
B64_PIECE = 1 << 20  # base64 text decoded at a time when streamed: what is held twice, for a moment


def _nifti_header(head: bytes) -> bool:
    return (len(head) >= 348 and head[344:348] in (b"n+1\x00",)) or (len(head) >= 8 and head[4:8] == b"n+2\x00")


def sniff_format(raw: bytes) -> str | None:
    """The format key of an image file's bytes, or None when they are not one we read."""
    head = bytes(raw[:1024])
    if head[:2] == b"\x1f\x8b":
        try:
            inner = zlib.decompressobj(wbits=31).decompress(head, 600)
        except zlib.error:
            return None
        return "nii.gz" if _nifti_header(inner) else None
    if head.startswith(b"NRRD000"):
        return "nrrd"
    if _nifti_header(head):
        return "nii"
    if head.lstrip().startswith(_MHA_KEYS):
        return "mha"
    return None


def _is_base64_text(view: memoryview, start: int = 0, stop: int | None = None) -> bool:
    """Whether view[start:stop] holds only base64 characters and whitespace, checked in slices (no 1 GB copy)."""
    stop = len(view) if stop is None else min(stop, len(view))
    return not any(
        bytes(view[at : min(at + _CHECK_SLICE, stop)]).translate(None, _BASE64_TEXT)
        for at in range(start, stop, _CHECK_SLICE)
    )


def decode_base64(text, where: str) -> bytes:
    """The bytes of base64 text with line breaks, decoded without copying the text first.

    Decoding skips whitespace and any other character, so only the
    head is checked up front, to refuse binary data at once; the whole text is
    checked only when decoding fails, to say which mistake the client made.
    """
    if isinstance(text, str):
        text = text.encode("ascii", "replace")
    view = memoryview(text).cast("B")
    neither = UnreadableVolume(f"{where}: expected {EXPECTED}, got text that is neither")
    if not _is_base64_text(view, 0, 65536):
        raise neither
    try:
        return b64.decode(view)
    except (b64.Error, ValueError):
        if not _is_base64_text(view, 65536):
            raise neither from None
        raise UnreadableVolume(
            f"{where}: the base64 text is truncated or corrupt (its length or padding is wrong); expected {EXPECTED}"
        ) from None


def unwrap(raw: bytes, where: str) -> tuple[bytes, str]:
    """The image file's bytes and format, whether the field carried them raw or as base64 text."""
    fmt = sniff_format(raw)
    if fmt is None:
        text, raw = raw, decode_base64(raw, where)
        fmt = sniff_format(raw)
        if fmt is None:
            if not _is_base64_text(memoryview(text).cast("B")):
                raise UnreadableVolume(f"{where}: expected {EXPECTED}, got text that is neither")
            raise UnreadableVolume(f"{where}: the data is not {EXPECTED}")
    return raw, fmt


def _neither(where: str) -> UnreadableVolume:
    return UnreadableVolume(f"{where}: expected {EXPECTED}, got text that is neither")


def _streamed(text, where: str, allowance: Allowance) -> sitk.Image | None:
    """A large uncompressed MHA sent as base64 text (v1 clients), decoded piece by piece, each piece's text given
    back behind it (a request body's, net/body.give_back); None, with nothing given back, for any other text,
    which is decoded whole as before.

    Decoded whole, the text, its decoded bytes and the image were all held at once: 3.3 times the volume. Here
    each decoded piece is poured into the image (files/filling.py) and its text given back: the image takes
    3/4 of the pages the text gives back, never much more than the text alone.
    """
    if isinstance(text, str) or len(text) < STREAM_FROM:
        return None
    view = memoryview(text).cast("B")
    if not _is_base64_text(view, 0, 65536):
        raise _neither(where)
    if b64.padded_before(view, len(view) - b64.TAIL):
        return None
    pieces = b64.Pieces(view, B64_PIECE)
    steps = iter(pieces)
    try:
        head, consumed = next(steps)
    except (b64.Error, ValueError):
        return None
    if sniff_format(head) != "mha":
        return None
    size, header = image_headers.check(head, "mha", where, allowance.limits.max_voxels)
    assert header is not None  # check() parses every MHA header it is given
    if header.compressed or header.start + header.nbytes > len(view) // 4 * 3:
        return None  # too short to hold its data: refused by the whole decode, before an image is made
    # Only the image is charged: it takes the pages the text gives back (the upload budget's) as it is poured.
    allowance.charge(size, where)
    data = _poured(memoryview(head)[header.start :], consumed, steps, pieces, view, header.nbytes, where)
    del head
    return mha.from_pieces(header, data, where)


def _poured(first, consumed: int, steps, pieces, view: memoryview, nbytes: int, where: str):
    """The decoded data after the header, piece by piece: the first piece's rest, then each decoded piece, its
    text given back once the piece has been taken; exactly nbytes of them, or a refusal naming how many came."""
    held = 0

    def capped(piece):
        nonlocal held
        room = max(0, nbytes - held)
        held += len(piece)
        return piece[:room] if len(piece) > room else piece

    try:
        part = capped(first)
        del first
        if part:
            yield part
        del part
        give_back(view[:consumed])
        for piece, end in steps:
            part = capped(piece)
            del piece
            if part:
                yield part
            del part
            give_back(view[:end])  # all taken so far: a huge page a piece ended in goes once it is whole
            consumed = end
        give_back(view[:consumed], ends=True)
    except (b64.Error, ValueError):
        if pieces.odd or not _is_base64_text(view, pieces.at):
            raise _neither(where) from None
        raise UnreadableVolume(
            f"{where}: the base64 text is truncated or corrupt (its length or padding is wrong); expected {EXPECTED}"
        ) from None
    if held != nbytes:
        raise mha.truncated(where, f"its header announces {nbytes} bytes of data, it holds {held}")


def read_image(raw: bytes, where: str = "volume", allowance: Allowance | None = None) -> sitk.Image:
    """The image in raw, refused from its header alone when it costs more than the allowance."""
    allowance = allowance or Allowance()
    streamed = _streamed(raw, where, allowance) if sniff_format(raw) is None else None
    if streamed is not None:
        return streamed
    data, fmt = unwrap(raw, where)
    size, header = image_headers.check(data, fmt, where, allowance.limits.max_voxels)
    allowance.charge(size, where)
    # An MHA's data goes into its image as it is read or inflated (files/filling.py), a request body's given back
    # as it goes; any other file, and a small compressed MHA, is first inflated or decoded in full, then copied into
    # the image: twice the size, for a moment. (Base64 text decoded whole, below STREAM_FROM or not an uncompressed
    # MHA, holds its decoded bytes meanwhile, uncharged as before: 3/4 of text the upload budget holds.)
    poured = header is not None and (not header.compressed or filling.piped(size))
    transient = 0 if poured else size
    try:
        with allowance.decoding(transient, where):
            if header is not None:
                return mha.read(data, header, where)
            return confined.read_image(data, FORMATS[fmt], READERS[fmt], size, allowance.decoders)
    except confined.DecodeFailed as failure:
        raise UnreadableVolume(
            f"{where}: the {fmt} file could not be read (truncated or corrupt){_WHY[failure.reason]}; expected {EXPECTED}"
        ) from None


def write_image(image: sitk.Image, fmt: str = "mha", compress: bool = True) -> bytes:
    """The bytes of an image file, compressed at level 1: fast, and label maps are mostly runs."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown image format {fmt!r}; expected one of {', '.join(FORMATS)}")
    written = mha.write(image, compress, LABEL_LEVEL) if fmt == "mha" else None
    if written is not None:
        return written
    return write_then_bytes(FORMATS[fmt], lambda path: sitk.WriteImage(image, path, compress, LABEL_LEVEL))
