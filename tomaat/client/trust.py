"""Trust on first use for self-signed TOMAAT servers, as TOMAAT-Slicer does it.

A self-signed server has no CA to vouch for it, so the first certificate seen
at a host:port is remembered (its v1 SHA-256 fingerprint, in known_hosts.json
in the user's config folder) and every later connection must show the same
one. A changed certificate is refused with both fingerprints in the message,
because that is what the user needs to decide whether the server was really
re-keyed or someone is in between.
"""

from __future__ import annotations

import json
import logging
import os
import threading

import click
from OpenSSL import SSL
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from ..net.trust import FingerprintCreator, _is_address, normalise_fingerprint
from .credentials import ClientCertificate
from .errors import CertificateChanged

log = logging.getLogger("tomaat.client")


def default_known_hosts() -> str:
    """~/.config/tomaat/known_hosts.json on Linux (XDG_CONFIG_HOME honoured), the platform's usual place elsewhere."""
    return os.path.join(click.get_app_dir("tomaat"), "known_hosts.json")


class KnownHosts:
    """The remembered fingerprints, one per "host:port", in a JSON object on disk."""

    def __init__(self, path: str | None = None):
        self.path = path or default_known_hosts()
        self._lock = threading.Lock()

    def load(self) -> dict[str, str]:
        try:
            with open(self.path, encoding="utf-8") as handle:
                data = json.load(handle)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            raise CertificateChanged(
                f"the known-hosts file {self.path} cannot be read ({error}); fix or remove it"
            ) from None
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def get(self, netloc: str) -> str | None:
        return self.load().get(netloc)

    def remember(self, netloc: str, fingerprint: str) -> None:
        with self._lock:
            hosts = self.load()
            hosts[netloc] = normalise_fingerprint(fingerprint)
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            temporary = self.path + ".tmp"
            with open(temporary, "w", encoding="utf-8") as handle:
                json.dump(hosts, handle, indent=2, sort_keys=True)
            os.replace(temporary, self.path)  # a crash never leaves half a file


@implementer(IPolicyForHTTPS)
class TrustOnFirstUse:
    """Remember the first fingerprint per host:port; refuse a different one later.

    `pinned` (from --trust) is written to the known hosts ahead of the first
    connection, so a stranger is refused even the first time. `insecure`
    accepts any certificate and remembers nothing: only by explicit choice.
    `client_cert` is shown to servers that ask for one (mutual TLS); the
    server's certificate is checked the same way with it or without.
    After a refusal, `refused` holds (netloc, remembered, shown) so the caller
    can say what happened; the TLS layer itself only reports a failed handshake.
    """

    def __init__(
        self,
        known_hosts: KnownHosts | None = None,
        pinned: str | None = None,
        insecure: bool = False,
        client_cert: ClientCertificate | None = None,
    ):
        self.known_hosts = known_hosts or KnownHosts()
        self.client_cert = client_cert
        self.pinned = normalise_fingerprint(pinned) if pinned else None
        self.insecure = insecure
        self.refused: tuple[str, str, str] | None = None
        self.seen: dict[str, str] = {}

    def _check(self, netloc: str, shown: str) -> bool:
        self.seen[netloc] = shown
        if self.insecure:
            return True
        if self.pinned is not None:
            if shown != self.pinned:
                self.refused = (netloc, self.pinned, shown)
                return False
            self.known_hosts.remember(netloc, shown)
            return True
        remembered = self.known_hosts.get(netloc)
        if remembered is None:
            self.known_hosts.remember(netloc, shown)
            # the one moment a person can compare the fingerprint with what the server's operator printed
            log.warning(
                "tomaat: trusting %s on first use, certificate fingerprint %s (remembered in %s)",
                netloc,
                shown,
                self.known_hosts.path,
            )
            return True
        if remembered != shown:
            self.refused = (netloc, remembered, shown)
            return False
        return True

    def creatorForNetloc(self, hostname, port):
        host = hostname.decode("ascii")
        netloc = f"{host}:{port}"
        if self.client_cert is None:
            return FingerprintCreator(lambda shown: self._check(netloc, shown), host)
        return PresentingCreator(lambda shown: self._check(netloc, shown), host, self.client_cert)

    def refusal(self) -> CertificateChanged | None:
        """The error to raise for the last refused handshake, naming both fingerprints."""
        if self.refused is None:
            return None
        netloc, expected, shown = self.refused
        if self.pinned is not None:
            return CertificateChanged(
                f"the server at {netloc} shows certificate {shown}, not the pinned {expected} (--trust); refusing"
            )
        return CertificateChanged(
            f"the certificate of {netloc} changed: remembered {expected}, now {shown}; refusing. "
            f"If the server was really given a new certificate, remove {netloc} from {self.known_hosts.path} "
            "or pass --trust with the new fingerprint"
        )


class PresentingCreator(FingerprintCreator):
    """A FingerprintCreator whose connections also show a client certificate.

    pyOpenSSL allows no change to a context once a connection uses it, so the certificate goes into a context
    of its own here rather than onto the one FingerprintCreator makes.
    """

    def __init__(self, check, hostname: str, certificate: ClientCertificate):
        super().__init__(check, hostname)
        self.certificate = certificate

    def clientConnectionForTLS(self, protocol):
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.set_verify(SSL.VERIFY_PEER, self._verify)
        self.certificate.present(context)
        connection = SSL.Connection(context, None)
        connection.set_app_data(protocol)
        if self.hostname and not _is_address(self.hostname):
            connection.set_tlsext_host_name(self.hostname.encode("idna"))
        return connection
