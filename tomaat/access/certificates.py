"""An identity from the client certificate of a request's TLS connection (mutual TLS, `client_ca`).

Only a certificate OpenSSL verified counts: the server asked for one (tomaat/net/tls.py sets VERIFY_PEER when
client_ca is configured) and the chain checked out. The owner is the certificate's fingerprint, not its name:
two certificates a CA issued with the same common name are two owners, and a renewed certificate is a new one.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

from ..net.tls import der_fingerprint
from ..protocol.text import printable
from .identity import Identity


def peer_identity(request, scopes: frozenset[str]) -> Identity | None:
    """The identity of the verified certificate the client showed; None without one (plain HTTP, no client_ca,
    a client that showed none)."""
    certificate = verified_peer(request)
    if certificate is None:
        return None
    fingerprint = der_fingerprint(certificate.public_bytes(Encoding.DER))
    return Identity(
        name="cert:" + subject_name(certificate), method="certificate", scopes=scopes, owner="cert:" + fingerprint
    )


def verified_peer(request) -> x509.Certificate | None:
    transport = getattr(getattr(request, "channel", None), "transport", None) or getattr(request, "transport", None)
    get_handle = getattr(transport, "getHandle", None)
    connection = get_handle() if get_handle is not None else None
    if not isinstance(connection, SSL.Connection):  # a TCP socket: no TLS on this connection
        return None
    if not connection.get_context().get_verify_mode() & SSL.VERIFY_PEER:
        return None  # the server did not ask, so nothing was checked
    # With VERIFY_PEER a certificate that fails verification ends the handshake, so one on an open connection
    # was verified: in this handshake, or in the one that made the session it resumes (get_verified_chain()
    # is None after a resumption, so it cannot be the test).
    return connection.get_peer_certificate(as_cryptography=True)


def subject_name(certificate: x509.Certificate) -> str:
    """The subject's common name, or the whole subject (RFC 4514) when it has none; without control characters,
    as it goes into log lines."""
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    text = names[0].value if names else certificate.subject.rfc4514_string()
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return printable(text)
