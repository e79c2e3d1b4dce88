"""Errors a client can be told about, each with its HTTP status; raised anywhere from file checks to apps.

ServiceError is what the server answers with; RequestError, below it, only what the client can fix (4xx).

They live below every package (files, protocol, server, client) so that the
hostile-file checks in `tomaat.files` can raise them without knowing the wire
format. A message is sent to the client verbatim, so it never holds a path.
"""

from __future__ import annotations


class ServiceError(Exception):
    """What a client is told when its request cannot be answered, with the HTTP status: the request's fault
    (RequestError, 4xx) or the service's (5xx). The message is sent verbatim, so keep it path-free."""

    status = 500

    def __init__(self, message: str, status: int | None = None, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        if status is not None:
            self.status = status


class RequestError(ServiceError):
    """A problem with the request, which the client can fix."""

    status = 400


class ServerBusy(ServiceError):
    """The service cannot take this now, and may later: the client can try again shortly."""

    status = 503


class UnreadableVolume(RequestError):
    status = 415


class TooLarge(RequestError):
    status = 413


class AppFailure(ServiceError):
    """The researcher's code failed; details stay in the server log."""

    status = 500


class AppTimeout(ServiceError):
    """The app ran past the service's time limit; the client gets 504, the thread finishes in the background."""

    status = 504
