"""What can go wrong for a client, each kind its own class so the command line can say it in one line."""

from __future__ import annotations


class ClientError(Exception):
    """Base class; str() is a complete sentence meant for the user."""


class ValidationError(ClientError):
    """The inputs do not fit the server's interface; raised before anything is uploaded."""


class InputFileError(ValidationError):
    """A file given as an input could not be read as what its element needs."""


class ConnectionFailed(ClientError):
    """The server could not be reached, or stopped answering."""


class ServerError(ClientError):
    """The server answered with an error; the message is the server's own."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.message = message
        self.status = status


class AccessRefused(ServerError):
    """The service wants an identity (401) or one with another scope (403); the message says which."""


class CertificateChanged(ClientError):
    """A known server showed a different certificate than the one remembered for it."""


class ResultTimeout(ClientError):
    """A delayed result did not arrive within the time the caller allowed."""
