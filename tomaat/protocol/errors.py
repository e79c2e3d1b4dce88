"""The v1 error body every client can show.

TOMAAT-Slicer parses any answer as JSON and shows PlainText items in a message
box, so an error is a one-item PlainText list whatever its HTTP status.
"""

from __future__ import annotations


def error_items(message: str) -> list[dict]:
    return [{"type": "PlainText", "label": "Error!", "content": message}]
