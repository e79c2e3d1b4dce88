"""Request bodies into named fields of raw bytes, off the reactor thread.

Twisted's own form parsing is switched off (see site.py) because it runs on
the reactor and keeps several copies of each part; werkzeug's sans-IO decoder
streams the body once and keeps every part as bytes, so a volume sent as a
plain field (as old clients do) is not mangled by a text decoding.
"""

from __future__ import annotations

from urllib.parse import parse_qs

from werkzeug.http import parse_options_header
from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, NeedData

from ..protocol.errors import RequestError

CHUNK = 1 << 20


def _multipart(body, boundary: bytes, max_fields: int) -> dict[str, bytes]:
    decoder = MultipartDecoder(boundary)
    fields: dict[str, bytes] = {}
    name, buffer = None, None
    while True:
        chunk = body.read(CHUNK)
        decoder.receive_data(chunk or None)
        while True:
            event = decoder.next_event()
            if isinstance(event, NeedData):
                break
            if isinstance(event, (Field, File)):
                name, buffer = event.name, bytearray()
            elif isinstance(event, Data):
                buffer += event.data
                if not event.more_data:
                    # Slicer never repeats a name; guessing which copy was meant could run the wrong input
                    if name in fields:
                        raise RequestError(f"field {name[:60]!r} is sent more than once; expected each field once")
                    fields[name] = bytes(buffer)
                    buffer = None
                    if len(fields) > max_fields:
                        raise RequestError(f"too many form fields (more than {max_fields})", 413)
            elif isinstance(event, Epilogue):
                return fields
        if not chunk:
            raise RequestError("the multipart body is truncated: its closing boundary is missing")


def read_fields(body, content_type: str | None, max_fields: int = 256) -> dict[str, bytes]:
    """Fields from a multipart/form-data or urlencoded body (a file object positioned at 0)."""
    mimetype, options = parse_options_header(content_type or "")
    if mimetype == "multipart/form-data":
        boundary = options.get("boundary")
        if not boundary:
            raise RequestError("multipart/form-data without a boundary parameter")
        try:
            return _multipart(body, boundary.encode("latin-1"), max_fields)
        except ValueError as error:
            raise RequestError(f"the multipart body is malformed: {error}") from None
    if mimetype in ("application/x-www-form-urlencoded", ""):
        try:
            query = parse_qs(body.read().decode("latin-1"), keep_blank_values=True, max_num_fields=max_fields)
        except ValueError:  # parse_qs's only complaint: more fields than max_num_fields
            raise RequestError(f"too many form fields (more than {max_fields})", 413) from None
        repeated = next((key for key, values in query.items() if len(values) > 1), None)
        if repeated is not None:
            raise RequestError(f"field {repeated[:60]!r} is sent more than once; expected each field once")
        return {key: values[0].encode("latin-1") for key, values in query.items()}
    raise RequestError(f"unsupported Content-Type {mimetype!r}; expected multipart/form-data", 415)
