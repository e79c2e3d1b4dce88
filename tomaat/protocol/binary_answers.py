"""Binary answers (v2): a prediction's output items as the parts of a multipart/mixed body, raw bytes, no base64.

A client that sends `Accept: multipart/mixed` gets, on success, one part per output item, in the
items' order. Each part has these headers, then its bytes:

    Content-Type: text/plain; charset=utf-8     (PlainText, Fiducials)  or  application/octet-stream
    X-Tomaat-Type: LabelVolume                  (the item's v1 type)
    X-Tomaat-Label: Threshold%20mask            (its label, UTF-8, percent-encoded: urllib.parse.quote, safe="")
    Content-Length: 913

and its body is what the JSON answer's `content` holds once base64-decoded (LabelVolume: a
compressed MHA file; TransformGrid: a .nii.gz; TransformBSpline/TransformLinear: ITK .h5/.mat
files; VTKMesh: legacy VTK text), or, for PlainText and Fiducials, the UTF-8 bytes of the text.

The server encodes (`encode`) and clients decode (`decode`) with this module only, so the wire
format lives in one place:

    pieces, content_type = encode(items)    # items as the JSON answer has them, or with bytes contents
    parts = decode(body, content_type)      # [(type, label, content bytes), ...] in the answer's order
    items = json_items(parts)               # the same as the JSON answer's items, content as base64 text

`decode` reads an answer from a server it does not trust: at most `max_parts` parts, part headers
of at most `max_header_bytes`, every part's Content-Length checked against the boundary that must
follow it; anything else is a ValueError that says what was wrong. It reads the body once, never
searching past a part's header block, so its time is linear in the body's length.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from urllib.parse import quote, unquote

from . import b64

MEDIA_TYPE = "multipart/mixed"
TEXT_TYPES = frozenset({"PlainText", "Fiducials"})
TEXT = "text/plain; charset=utf-8"
OCTETS = "application/octet-stream"
MAX_PARTS = 1024
MAX_HEADER_BYTES = 8192

_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]\Z")  # RFC 2046's bchars
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_TYPE = re.compile(r"[A-Za-z][A-Za-z0-9]{0,63}\Z")
_LENGTH = re.compile(r"[0-9]{1,19}\Z")
_PARAMETER = re.compile(r'\s*([^=\s;]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)\s*')


@dataclass(frozen=True)
class DecodeLimits:
    """How much of an untrusted answer decode() reads before it refuses it."""

    max_parts: int = MAX_PARTS
    max_header_bytes: int = MAX_HEADER_BYTES  # one part's header block


def _split(text: str, separator: str) -> list[str]:
    """text split at separator, except inside double quotes (a quoted parameter may hold either)."""
    pieces: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            pieces.append("".join(current))
            current = []
            continue
        current.append(char)
    pieces.append("".join(current))
    return pieces


def media_type(value: str) -> tuple[str, list[tuple[str, str]]]:
    """(type/subtype in lower case, [(parameter name in lower case, value unquoted), ...]) of a header value."""
    first, *rest = _split(value, ";")
    parameters = []
    for piece in rest:
        if not piece.strip():
            continue
        match = _PARAMETER.fullmatch(piece)
        if match is None:
            raise ValueError(f"a malformed media type parameter {piece.strip()[:60]!r}")
        name, raw = match.group(1).lower(), match.group(2).strip()
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        parameters.append((name, raw))
    return first.strip().lower(), parameters


def _quality(parameters: list[tuple[str, str]]) -> float:
    for name, value in parameters:
        if name == "q":
            try:
                q = float(value)
            except ValueError:
                return 0.0
            return q if 0.0 <= q <= 1.0 else 0.0
    return 1.0


def wants_binary(accept) -> bool:
    """Whether an Accept header asks for a binary answer: `multipart/mixed` listed with q > 0, and no
    `application/json` listed with a higher q. Wildcards (`*/*`, `multipart/*`, as v1 clients send them)
    never ask for it: without an explicit multipart/mixed the answer is JSON as always."""
    if isinstance(accept, bytes):
        accept = accept.decode("latin-1")
    if not accept:
        return False
    binary = json = -1.0
    for media_range in _split(accept, ","):
        if not media_range.strip():
            continue
        try:
            kind, parameters = media_type(media_range)
        except ValueError:
            continue
        if kind == MEDIA_TYPE:
            binary = max(binary, _quality(parameters))
        elif kind == "application/json":
            json = max(json, _quality(parameters))
    return binary > 0 and binary >= json


def content_bytes(item: dict):
    """The bytes a part carries for an item: raw bytes as they are, text as UTF-8, a JSON item's base64 decoded."""
    content = item.get("content")
    if isinstance(content, (bytes, bytearray, memoryview)):
        return content
    if not isinstance(content, str):
        raise ValueError(f"an output item of type {item.get('type')!r} has no content to send")
    if item.get("type") in TEXT_TYPES:
        return content.encode("utf-8")
    return b64.decode(content)


def _head(item: dict, length: int) -> bytes:
    kind = str(item.get("type", ""))
    if not _TYPE.match(kind):
        raise ValueError(f"an output item's type {kind[:40]!r} cannot be sent as a part")
    label = quote(str(item.get("label", "") or ""), safe="")
    return (
        f"Content-Type: {TEXT if kind in TEXT_TYPES else OCTETS}\r\n"
        f"X-Tomaat-Type: {kind}\r\n"
        f"X-Tomaat-Label: {label}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode("ascii")


def encode(items: list[dict]) -> tuple[list[bytes], str]:
    """The pieces of a multipart/mixed body for output items, to be written in order, and its Content-Type.

    No content is copied: the pieces are the parts' headers and delimiters, and each item's content
    bytes themselves (a JSON item's base64 is decoded once). The boundary is random and checked not to
    occur in any content.
    """
    contents = [content_bytes(item) for item in items]
    contents = [bytes(content) if isinstance(content, memoryview) else content for content in contents]
    while True:
        boundary = "tomaat-" + secrets.token_hex(16)
        dash = b"--" + boundary.encode("ascii")
        if not any(dash in content for content in contents):
            break
    pieces: list = []
    lead = dash + b"\r\n"
    for item, content in zip(items, contents, strict=True):
        pieces.append(lead + _head(item, len(content)))
        pieces.append(content)
        lead = b"\r\n" + dash + b"\r\n"
    pieces.append((b"\r\n" if items else b"") + dash + b"--\r\n")
    return pieces, f"{MEDIA_TYPE}; boundary={boundary}"


def boundary_of(content_type: str) -> bytes:
    """The boundary of a multipart/mixed Content-Type; ValueError when it is not one, or has none, two, or a bad one."""
    kind, parameters = media_type(content_type or "")
    if kind != MEDIA_TYPE:
        raise ValueError(f"the answer's Content-Type is {kind[:60]!r}; expected {MEDIA_TYPE}")
    boundaries = [value for name, value in parameters if name == "boundary"]
    if not boundaries:
        raise ValueError("the answer's multipart/mixed Content-Type has no boundary parameter")
    if len(boundaries) > 1:
        raise ValueError("the answer's multipart/mixed Content-Type has two boundary parameters")
    if not _BOUNDARY.match(boundaries[0]):
        raise ValueError("the answer's multipart boundary is malformed: expected 1 to 70 of RFC 2046's characters")
    return boundaries[0].encode("ascii")


def _part_headers(block: bytes, number: int) -> dict[str, str]:
    try:
        text = block.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError(f"part {number}'s headers are not ASCII") from None
    headers: dict[str, str] = {}
    for line in text.split("\r\n") if text else ():
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.match(name):
            raise ValueError(f"part {number} has a malformed header line {line[:60]!r}")
        name = name.lower()
        if name in headers:
            raise ValueError(f"part {number} has two {name} headers")
        headers[name] = value.strip(" \t")
    return headers


def _part(headers: dict[str, str], number: int) -> tuple[str, str, int]:
    for needed in ("x-tomaat-type", "x-tomaat-label", "content-length"):
        if needed not in headers:
            raise ValueError(f"part {number} has no {needed} header")
    kind = headers["x-tomaat-type"]
    if not _TYPE.match(kind):
        raise ValueError(f"part {number}'s X-Tomaat-Type {kind[:40]!r} is not a type name")
    if not _LENGTH.match(headers["content-length"]):
        raise ValueError(f"part {number}'s Content-Length {headers['content-length'][:40]!r} is not a number")
    try:
        label = unquote(headers["x-tomaat-label"], encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise ValueError(f"part {number}'s X-Tomaat-Label is not percent-encoded UTF-8") from None
    return kind, label, int(headers["content-length"])


def decode(body, content_type: str, limits: DecodeLimits | None = None) -> list[tuple[str, str, bytes]]:
    """The parts of a binary answer: [(type, label, content bytes), ...] in the answer's order.

    body is the whole answer body (bytes-like), content_type its Content-Type header. ValueError with
    a message for anything but a well-formed answer: another media type, a missing, duplicate or
    malformed boundary, a part without its headers, a Content-Length that does not end where the
    next boundary begins, a truncated body, data after the closing boundary, too many parts.
    """
    limits = limits or DecodeLimits()
    dash = b"--" + boundary_of(content_type)
    data = body if isinstance(body, bytes) else bytes(body)
    if not data.startswith(dash):
        raise ValueError("the answer does not start with the boundary its Content-Type gives")
    parts: list[tuple[str, str, bytes]] = []
    at = len(dash)
    while True:
        if data[at : at + 2] == b"--":
            if data[at + 2 :] not in (b"", b"\r", b"\r\n"):
                raise ValueError("the answer has data after its closing boundary")
            return parts
        if data[at : at + 2] != b"\r\n":
            raise ValueError(
                "the answer is truncated or malformed: a boundary is not followed by a line break"
                if at + 2 > len(data)
                else "the answer is malformed: a boundary line is followed by other data"
            )
        number = len(parts) + 1
        if number > limits.max_parts:
            raise ValueError(f"the answer has more than {limits.max_parts} parts")
        head_end = data.find(b"\r\n\r\n", at, at + 2 + limits.max_header_bytes + 2)
        if head_end < 0:
            raise ValueError(
                f"part {number}'s headers are missing, truncated or longer than {limits.max_header_bytes} bytes"
            )
        kind, label, length = _part(_part_headers(data[at + 2 : head_end], number), number)
        start = head_end + 4
        end = start + length
        if end > len(data):
            raise ValueError(
                f"the answer is truncated: part {number}'s Content-Length is {length} but only "
                f"{len(data) - start} bytes follow its headers"
            )
        if data[end : end + 2 + len(dash)] != b"\r\n" + dash:
            raise ValueError(
                f"part {number}'s Content-Length ({length}) does not match its content: the boundary does not follow it"
            )
        parts.append((kind, label, data[start:end]))
        at = end + 2 + len(dash)


def json_content(kind: str, content) -> str:
    """An item's raw content as a JSON answer carries it: text types' UTF-8 as text, any other file as base64."""
    if kind in TEXT_TYPES:
        try:
            return bytes(content).decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"a {kind} part is not UTF-8 text") from None
    return b64.encode(content)


def json_items(parts: list[tuple[str, str, bytes]]) -> list[dict]:
    """Decoded parts as the JSON answer's items: {"type", "content", "label"}, content base64 text or text."""
    return [{"type": kind, "content": json_content(kind, content), "label": label} for kind, label, content in parts]
