"""Trusting self-signed TLS certificates by fingerprint, shared by the announcer and the client.

TOMAAT servers and registries make their own certificates, so no CA vouches
for them: the v1 model is that the certificate's SHA-256 fingerprint is the
identity. The TLS layer here only computes the fingerprint of the leaf the peer
shows and asks a `check` callable whether to go on; pinning one fingerprint
and trusting on first use are two such checks.
"""

from __future__ import annotations

import ipaddress
from typing import cast

from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.web.client import BrowserLikePolicyForHTTPS
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from .tls import der_fingerprint


def normalise_fingerprint(fingerprint: str) -> str:
    """The v1 form (`AB:CD:...`) of a SHA-256 fingerprint typed with or without colons, in any case."""
    cleaned = fingerprint.strip().upper().replace(":", "")
    if len(cleaned) != 64 or any(c not in "0123456789ABCDEF" for c in cleaned):
        raise ValueError(f"{fingerprint!r} is not a SHA-256 fingerprint (64 hex digits, colons optional)")
    return ":".join(cleaned[i : i + 2] for i in range(0, 64, 2))


def _is_address(hostname: str) -> bool:
    try:
        ipaddress.ip_address(hostname.strip("[]"))
    except ValueError:
        return False
    return True


@implementer(IOpenSSLClientConnectionCreator)
class FingerprintCreator:
    """A TLS client connection whose peer is accepted when `check(fingerprint)` says so."""

    def __init__(self, check, hostname: str):
        self.check = check
        self.hostname = hostname

    def _verify(self, connection, x509, errno, depth, ok):
        if depth != 0:
            return True  # the leaf decides: it is the one whose fingerprint is trusted
        return bool(self.check(der_fingerprint(x509.to_cryptography().public_bytes(Encoding.DER))))

    def clientConnectionForTLS(self, protocol):
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.set_verify(SSL.VERIFY_PEER, self._verify)
        connection = SSL.Connection(context, None)
        connection.set_app_data(protocol)
        if self.hostname and not _is_address(self.hostname):
            connection.set_tlsext_host_name(self.hostname.encode("idna"))
        return connection


@implementer(IPolicyForHTTPS)
class PinnedFingerprint:
    """Trust exactly one certificate, by its SHA-256 fingerprint (as `tomaat-registry serve` prints it).

    This is the self-signed model of v1: no CA, no host name check, the
    fingerprint is the identity.
    """

    def __init__(self, fingerprint: str):
        self.fingerprint = normalise_fingerprint(fingerprint)

    def creatorForNetloc(self, hostname, port):
        return FingerprintCreator(lambda seen: seen == self.fingerprint, hostname.decode("ascii"))


def pin_fingerprint(fingerprint: str) -> PinnedFingerprint:
    return PinnedFingerprint(fingerprint)


def trust_certificate(pem_path: str) -> IPolicyForHTTPS:
    """Trust a certificate (or its CA) from a PEM file, checking the host name as browsers do."""
    from twisted.internet import ssl

    with open(pem_path, "rb") as handle:
        policy = BrowserLikePolicyForHTTPS(trustRoot=ssl.Certificate.loadPEM(handle.read()))
    return cast(IPolicyForHTTPS, policy)  # it is @implementer(IPolicyForHTTPS): zope, which mypy cannot read
