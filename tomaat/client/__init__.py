"""The TOMAAT client: find services in a registry, send them inputs checked against their interface, save results.

`Client` and `discover` block (for scripts and notebooks); `AsyncClient` and
`async_client.discover` return Deferreds for Twisted code.
"""

from .async_client import AsyncClient, ServiceInfo
from .blocking import Client, discover
from .errors import (
    CertificateChanged,
    ClientError,
    ConnectionFailed,
    InputFileError,
    ResultTimeout,
    ServerError,
    ValidationError,
)
from .results import Output, Result

__all__ = [
    "AsyncClient",
    "CertificateChanged",
    "Client",
    "ClientError",
    "ConnectionFailed",
    "InputFileError",
    "Output",
    "Result",
    "ResultTimeout",
    "ServerError",
    "ServiceInfo",
    "ValidationError",
    "discover",
]
