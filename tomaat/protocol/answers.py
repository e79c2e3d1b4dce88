"""The shapes of a prediction's answer besides output items: the v1 error and the DelayedResponse.

TOMAAT-Slicer parses any answer as JSON and shows PlainText items in a message
box, so an error is a one-item PlainText list labelled "Error!" whatever its
HTTP status (a v1 server sends it with 200). Both shapes are built and read
here only, by the server and by the client.
"""

from __future__ import annotations

ERROR_LABEL = "Error!"
DELAYED = "DelayedResponse"


def error_items(message: str) -> list[dict]:
    return [{"type": "PlainText", "label": ERROR_LABEL, "content": message}]


def error_message(items) -> str | None:
    """The message of a v1 error answer, or None when items are not one."""
    if isinstance(items, list) and len(items) == 1 and isinstance(items[0], dict):
        item = items[0]
        if item.get("type") == "PlainText" and item.get("label") == ERROR_LABEL:
            return str(item.get("content", ""))
    return None


def delayed_items(request_id: str) -> list[dict]:
    return [{"type": DELAYED, "request_id": request_id}]


def delayed_id(items) -> str | None:
    """The request_id of a DelayedResponse answer, or None when the answer is the result."""
    if isinstance(items, list) and len(items) == 1 and isinstance(items[0], dict) and items[0].get("type") == DELAYED:
        return str(items[0].get("request_id", ""))
    return None
