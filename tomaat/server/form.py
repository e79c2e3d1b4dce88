"""Request bodies into named fields of raw bytes, off the reactor thread.

Twisted's own form parsing is switched off (see web.py) because it runs on
the reactor and keeps several copies of each part. Here the body is read
once into one bytes object and each part is a memoryview into it, found with
bytes.find: a 1 GB volume is never copied, and a volume sent as a plain field
(as old clients do) is not mangled by a text decoding. A streaming decoder
(werkzeug's) was three times slower than reading the body from the socket.
"""

from __future__ import annotations

from bisect import bisect_left
from urllib.parse import parse_qs

from werkzeug.http import parse_options_header

from ..errors import RequestError
from ..net.body import BodyBuffer, body_bytes

MAX_PART_HEADER = 16384


def _malformed(why: str) -> RequestError:
    return RequestError(f"the multipart body is malformed: {why}")


def _part_name(head: bytes) -> str:
    for line in head.decode("latin-1").split("\r\n"):
        key, colon, value = line.partition(":")
        if not colon:
            raise _malformed(f"a part header line has no colon: {line[:60]!r}")
        if key.strip().lower() == "content-disposition":
            disposition, options = parse_options_header(value.strip())
            if disposition.lower() != "form-data" or "name" not in options:
                raise _malformed("a part's Content-Disposition is not form-data with a name")
            return options["name"]
    raise _malformed("a part has no Content-Disposition header")


def _starts(body, prefix: bytes, at: int = 0) -> bool:
    return body[at : at + len(prefix)] == prefix  # bytes and memory maps alike


def delimiter_of(content_type: str | bytes | None) -> bytes | None:
    """The bytes that end each part of a multipart/form-data body with this Content-Type (CRLF, two dashes,
    the boundary), or None for any other body: what a connection looks for as the body arrives
    (net/body.BodyBuffer's `watch`), so that split_multipart need not search the body again."""
    if isinstance(content_type, bytes):
        content_type = content_type.decode("latin-1")
    try:
        boundary = _boundary(content_type)
    except RequestError:
        return None
    return _delimiter(boundary) if boundary is not None else None


def _delimiter(boundary: bytes) -> bytes:
    return b"\r\n--" + boundary


def _boundary(content_type: str | None) -> bytes | None:
    """A multipart/form-data body's boundary; None for another type; RequestError for no usable boundary."""
    mimetype, options = parse_options_header(content_type or "")
    if mimetype != "multipart/form-data":
        return None
    given = options.get("boundary")
    if not given:
        raise RequestError("multipart/form-data without a boundary parameter")
    try:
        return given.encode("ascii")
    except UnicodeEncodeError:  # werkzeug decodes RFC 2231 (boundary*=UTF-8''...) to any character
        raise RequestError("the multipart boundary is not ASCII; expected a boundary as RFC 2046 allows") from None


def split_multipart(body, boundary: bytes, max_fields: int, found: list[int] | None = None) -> dict[str, memoryview]:
    """Each part's name and a read-only view of its bytes in body (RFC 2046: preamble and epilogue are ignored).

    body is bytes or a memory map (body.BodyBuffer): both have find() and slicing. `found`, where given, holds
    where every occurrence of the delimiter (CRLF, two dashes, the boundary) in the body starts, in order, as
    the connection saw them arrive: the delimiter is then looked up there instead of searched for, with the
    same result.
    """
    view, dash, delimiter = memoryview(body).toreadonly(), b"--" + boundary, _delimiter(boundary)

    def next_delimiter(start: int) -> int:
        if found is None:
            return body.find(delimiter, start)
        at = bisect_left(found, start)
        return found[at] if at < len(found) else -1

    at = 0 if _starts(body, dash) else next_delimiter(0)
    if at < 0:
        raise _malformed("the boundary given in Content-Type never occurs in the body")
    at += len(dash) if at == 0 else len(delimiter)
    fields: dict[str, memoryview] = {}
    while True:
        if _starts(body, b"--", at):
            return fields
        line_end = body.find(b"\r\n", at)
        if line_end < 0 or body[at:line_end].strip(b" \t"):
            raise _malformed("the body is truncated or a boundary line is followed by data")
        head_end = body.find(b"\r\n\r\n", line_end, line_end + MAX_PART_HEADER)
        if head_end < 0:
            raise _malformed("a part's headers are missing, too long or truncated")
        name = _part_name(body[line_end + 2 : head_end]) if head_end > line_end else _part_name(b"")
        end = next_delimiter(head_end + 4)
        if end < 0:
            raise _malformed("the body is truncated: its closing boundary is missing")
        # Slicer never repeats a name; guessing which copy was meant could run the wrong input
        if name in fields:
            raise RequestError(f"field {name[:60]!r} is sent more than once; expected each field once")
        fields[name] = view[head_end + 4 : end]
        if len(fields) > max_fields:
            raise RequestError(f"too many form fields (more than {max_fields})", 413)
        at = end + len(delimiter)


def read_fields(body, content_type: str | None, max_fields: int = 256) -> dict[str, bytes | memoryview]:
    """Fields from a multipart/form-data or urlencoded body (a file object positioned at 0).

    Multipart values are read-only views into the body, alive as long as a view is.
    """
    boundary = _boundary(content_type)
    if boundary is not None:
        watched = isinstance(body, BodyBuffer) and body.watched == _delimiter(boundary)
        return dict(split_multipart(body_bytes(body), boundary, max_fields, body.found if watched else None))
    mimetype, _ = parse_options_header(content_type or "")
    if mimetype in ("application/x-www-form-urlencoded", ""):
        try:
            query = parse_qs(
                bytes(body_bytes(body)).decode("latin-1"), keep_blank_values=True, max_num_fields=max_fields
            )
        except ValueError:  # parse_qs's only complaint: more fields than max_num_fields
            raise RequestError(f"too many form fields (more than {max_fields})", 413) from None
        repeated = next((key for key, values in query.items() if len(values) > 1), None)
        if repeated is not None:
            raise RequestError(f"field {repeated[:60]!r} is sent more than once; expected each field once")
        return {key: values[0].encode("latin-1") for key, values in query.items()}
    raise RequestError(f"unsupported Content-Type {mimetype!r}; expected multipart/form-data", 415)
