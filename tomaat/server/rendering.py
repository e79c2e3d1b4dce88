"""The one place where an answer's encoding is chosen: JSON (base64 contents), binary multipart, or a delayed id.

Inside the server an answer is an `Outcome`: a status and output items whose contents are raw (a file's bytes,
or the text itself for PlainText and Fiducials), or error items. Only here does it become bytes on the wire,
as the request asked (`encoding_for`): JSON, whose file contents are base64 text, the v1 encoding every client
reads; or, for a client whose Accept asks for multipart/mixed, a binary answer (protocol/binary_answers.py),
one raw part per item. Errors are always JSON. A delayed prediction's outcome is kept unrendered and rendered
when collected, as the collecting request asks (the route answers the id itself, a small JSON item).

`render` runs on a worker thread: an outcome's items can be hundreds of megabytes.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from ..protocol import binary_answers
from ..protocol.answers import error_items

log = logging.getLogger("tomaat.server")

JSON_TYPE = "application/json"
JSON, BINARY = "json", "binary"


@dataclass(frozen=True)
class Outcome:
    """What a piece of work gave: its status and its items (raw contents), or error items."""

    status: int
    items: list

    @classmethod
    def error(cls, status: int, message: str) -> Outcome:
        return cls(status, error_items(message))


@dataclass(frozen=True)
class Answer:
    """Bytes for the wire: the whole body, or a binary answer's pieces, written in turn (sending.py)."""

    status: int
    body: bytes | list
    content_type: str = JSON_TYPE


def encoding_for(accept: bytes | str | None) -> str:
    """How a successful answer is encoded for a request with this Accept header."""
    return BINARY if binary_answers.wants_binary(accept) else JSON


def json_answer(value, status: int = 200) -> Answer:
    return Answer(status, json.dumps(value).encode("utf-8"))


def error(status: int, message: str) -> Answer:
    return json_answer(error_items(message), status)


def json_ready(items: list) -> list:
    """Items as a JSON answer carries them: raw contents written as JSON content (binary_answers.json_content);
    text contents, error and delayed items as they are."""
    return [
        {**item, "content": binary_answers.json_content(item["type"], item["content"])}
        if isinstance(item, dict) and isinstance(item.get("content"), (bytes, bytearray, memoryview))
        else item
        for item in items
    ]


def render(outcome: Outcome, encoding: str = JSON) -> Answer:
    """The answer for an outcome: binary when asked for and it succeeded, JSON otherwise (errors always)."""
    if encoding == BINARY and outcome.status == 200:
        try:
            pieces, content_type = binary_answers.encode(outcome.items)
        except (TypeError, ValueError):  # an output type no part header can name: the app's, not the client's
            log.exception("the answer could not be encoded as multipart/mixed")
            return error(
                500, "the service's answer could not be sent as a binary answer; ask without Accept: multipart/mixed"
            )
        return Answer(outcome.status, pieces, content_type)
    return json_answer(json_ready(outcome.items), outcome.status)
