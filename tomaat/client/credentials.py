"""What a client proves itself with: a bearer token, a client certificate, or both.

A token is a password that travels with every request, so it is held in an object whose repr() hides it, goes
only into the Authorization header (never a URL, a log line or an error), and is checked for characters a header
cannot carry before anything is sent, so a stray newline from a file is not a broken request.

A client certificate and its key are read and matched once, when the client is made: a wrong path or a key
that belongs to another certificate is said then, in one line, not as a failed handshake later.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Mapping

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL

from .errors import ClientError

ENVIRONMENT = "TOMAAT_TOKEN"
# RFC 6750's b64token and more: any visible ASCII, so tokens of other issuers (OIDC JWTs, ours) all pass
_TOKEN = re.compile(r"[\x21-\x7e]+")


class CredentialError(ClientError):
    """A token or client certificate that cannot be used; the message never holds the secret."""


class Token:
    """A bearer token; its text only leaves as the Authorization header's value."""

    __slots__ = ("_secret",)

    def __init__(self, text: str, source: str = "the token"):
        text = text.strip()
        if not text:
            raise CredentialError(f"{source} is empty; expected the token the service's operator gave you")
        if not _TOKEN.fullmatch(text):
            raise CredentialError(f"{source} holds spaces or characters other than visible ASCII; expected one token")
        self._secret = text

    def authorization(self) -> bytes:
        return b"Bearer " + self._secret.encode("ascii")

    def redact(self, text: str) -> str:
        """text with the token, should it be in it, replaced (a server's message may echo what it was sent)."""
        return text.replace(self._secret, "<token>")

    def __repr__(self) -> str:
        return "Token(<hidden>)"

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("a Token is not pickled: it would write the secret where nobody meant it to go")


def as_token(token: Token | str | None) -> Token | None:
    return token if token is None or isinstance(token, Token) else Token(token)


def read_token_file(path: str, warn: Callable[[str], None] | None = None) -> Token:
    """The first line of the file, stripped.

    A file others may read only gets a warning (`warn`), not a refusal as ssh gives a private key: token files
    are often mounted by tools the user does not control (Kubernetes and Docker secrets are 0644 by default).
    """
    try:
        with open(path, encoding="utf-8") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            first = handle.readline()
    except UnicodeDecodeError:
        raise CredentialError(
            f"the token file {path} is not UTF-8 text; expected the token on its first line"
        ) from None
    except OSError as error:
        raise CredentialError(f"the token file {path} cannot be read ({error.strerror or error})") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO) and warn is not None:
        warn(
            f"tomaat: warning: the token file {path} may be read by others (mode {stat.S_IMODE(mode):04o}); "
            f"chmod 600 {path}"
        )
    return Token(first, f"the token file {path}")


def resolve_token(
    token: str | None,
    token_file: str | None,
    environ: Mapping[str, str] | None = None,
    warn: Callable[[str], None] | None = None,
) -> Token | None:
    """--token, else --token-file, else TOMAAT_TOKEN, else none; both options at once is the caller's usage
    error to report (ValueError here)."""
    if token is not None and token_file is not None:
        raise ValueError("give --token or --token-file, not both")
    if token is not None:
        return Token(token, "--token")
    if token_file is not None:
        return read_token_file(token_file, warn)
    value = (os.environ if environ is None else environ).get(ENVIRONMENT)
    return Token(value, ENVIRONMENT) if value else None


class ClientCertificate:
    """A PEM certificate (its chain may follow it in the file) and its unencrypted PEM key, for mutual TLS."""

    __slots__ = ("cert_path", "key_path", "_chain", "_key")

    def __init__(self, cert_path: str, key_path: str):
        self.cert_path, self.key_path = cert_path, key_path
        self._chain = _certificates(cert_path)
        self._key = _key(key_path)
        mine = (
            self._chain[0]
            .public_key()
            .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        theirs = self._key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if mine != theirs:
            raise CredentialError(f"the key {key_path} is not the key of the certificate {cert_path}")

    def present(self, context: SSL.Context) -> None:
        """Make a new TLS context show this certificate when the server asks for one."""
        context.use_certificate(self._chain[0])
        context.use_privatekey(self._key)
        for extra in self._chain[1:]:
            context.add_extra_chain_cert(extra)

    def __repr__(self) -> str:
        return f"ClientCertificate({self.cert_path!r}, key {self.key_path!r})"


def as_certificate(client_cert) -> ClientCertificate | None:
    """None, a ClientCertificate, or (cert_path, key_path)."""
    if client_cert is None or isinstance(client_cert, ClientCertificate):
        return client_cert
    try:
        cert_path, key_path = client_cert
    except (TypeError, ValueError):
        raise CredentialError("client_cert: expected (certificate PEM path, key PEM path)") from None
    return ClientCertificate(os.fspath(cert_path), os.fspath(key_path))


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as error:
        raise CredentialError(f"the client {what} {path} cannot be read ({error.strerror or error})") from None


def _certificates(path: str) -> list[x509.Certificate]:
    try:
        chain = x509.load_pem_x509_certificates(_read(path, "certificate"))
    except ValueError:
        chain = []
    if not chain:
        raise CredentialError(f"the client certificate {path} holds no PEM certificate; expected a PEM file")
    return chain


def _key(path: str):
    data = _read(path, "key")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise CredentialError(f"the client key {path} is encrypted; expected an unencrypted PEM key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise CredentialError(f"the client key {path} holds no PEM private key; expected a PEM key file") from None
