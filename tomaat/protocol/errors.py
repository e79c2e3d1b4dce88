"""Errors that travel to clients, and the v1 body every client can show.

TOMAAT-Slicer parses any answer as JSON and shows PlainText items in a message
box, so an error is a one-item PlainText list whatever its HTTP status.
"""

from __future__ import annotations


class RequestError(Exception):
    """A problem the client can fix; its message is sent to the client verbatim, so keep it path-free."""

    status = 400

    def __init__(self, message: str, status: int | None = None, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        if status is not None:
            self.status = status


class UnreadableVolume(RequestError):
    status = 415


class TooLarge(RequestError):
    status = 413


class AppFailure(RequestError):
    """The researcher's code failed; details stay in the server log."""

    status = 500


class AppTimeout(RequestError):
    """The app ran past the service's time limit; the client gets 504, the thread finishes in the background."""

    status = 504


def error_items(message: str) -> list[dict]:
    return [{"type": "PlainText", "label": "Error!", "content": message}]
