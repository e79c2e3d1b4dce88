"""Errors a client can be told about, each with its HTTP status; raised anywhere from file checks to apps.

They live below every package (files, protocol, server, client) so that the
hostile-file checks in `tomaat.files` can raise them without knowing the wire
format. A message is sent to the client verbatim, so it never holds a path.
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
