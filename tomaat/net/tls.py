"""Certificates for the HTTP services: self-signed on first start, fingerprints in the v1 format.

Each port gets its own certificate. TOMAAT-Slicer keeps its trusted
fingerprints in a dict keyed by fingerprint, each for one host and port, so
services sharing one certificate could not all stay trusted in it.

Generation uses `cryptography`'s X.509 builder, which pyOpenSSL's own docs point
to now that pyOpenSSL's certificate-building API is deprecated; Twisted serves
the result through pyOpenSSL.
"""

from __future__ import annotations

import datetime
import hashlib
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

PEM = serialization.Encoding.PEM
# TLS 1.3 suites in the server's order of preference. OpenSSL's default puts AES-256-GCM first; AES-128-GCM is
# as authenticated, mandatory for every TLS 1.3 peer, and a third cheaper per byte with AES-NI, which a 64 MiB
# volume feels (issue 25). TLS 1.2 keeps Twisted's list, which already puts ECDHE with AES-GCM first.
TLS13_SUITES = b"TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"

CERT_NAME = "tls-cert.pem"
KEY_NAME = "tls-key.pem"


def der_fingerprint(der: bytes) -> str:
    """SHA-256 of a DER certificate, upper-case hex pairs joined by colons (as TOMAAT-Slicer stores it)."""
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def fingerprint(cert_pem: bytes) -> str:
    return der_fingerprint(x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER))


def self_signed(hostname: str = "localhost") -> tuple[bytes, bytes]:
    """A new certificate and key, as PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _names(port: int | None) -> tuple[str, str]:
    if port is None:
        return CERT_NAME, KEY_NAME
    return CERT_NAME.replace(".pem", f"-{port}.pem"), KEY_NAME.replace(".pem", f"-{port}.pem")


def _adopt_shared(folder: str, cert_path: str, key_path: str) -> None:
    """Give the one certificate that older versions shared between ports to the first port started,
    so the service its users pinned most likely keeps its fingerprint."""
    shared_cert, shared_key = os.path.join(folder, CERT_NAME), os.path.join(folder, KEY_NAME)
    try:
        os.rename(shared_key, key_path)
    except OSError:
        return  # none, or another service took it first
    os.rename(shared_cert, cert_path)


def ensure_certificate(folder: str, hostname: str = "localhost", port: int | None = None) -> tuple[str, str]:
    """Paths of the certificate and key kept in folder for port (one for all when None), made on first use."""
    cert_name, key_name = _names(port)
    cert_path, key_path = os.path.join(folder, cert_name), os.path.join(folder, key_name)
    if port is not None and not os.path.exists(key_path):
        _adopt_shared(folder, cert_path, key_path)
    if not (os.path.exists(cert_path) and os.path.exists(key_path)):
        os.makedirs(folder, exist_ok=True)
        cert_pem, key_pem = self_signed(hostname)
        descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(key_pem)
        with open(cert_path, "wb") as handle:
            handle.write(cert_pem)
    return cert_path, key_path


def pem_options(cert_pem: bytes, key_pem: bytes, client_ca_pem: bytes | None = None):
    """Twisted TLS options serving the given PEM certificate and key.

    With `client_ca_pem` (one or more CA certificates) a client is asked for a certificate, and one these CAs
    did not sign fails the handshake; a client without one still connects (a token user), and the access gate
    decides what it may do.
    """
    from twisted.internet import ssl

    # cryptography objects: pyOpenSSL deprecates its own X509/PKey types here
    certificate = x509.load_pem_x509_certificate(cert_pem)
    private_key = serialization.load_pem_private_key(key_pem, password=None)
    if client_ca_pem is None:
        # Twisted annotates pyOpenSSL's PKey/X509 only; the pyOpenSSL Context it hands them to takes these too
        options = ssl.CertificateOptions(privateKey=private_key, certificate=certificate)  # type: ignore[arg-type]
        _prefer_fast_ciphers(options.getContext())
        return options
    from OpenSSL import crypto

    authorities = client_authorities(client_ca_pem)
    # verify and caCerts, not trustRoot: Twisted ties trustRoot to requiring a certificate
    options = ssl.CertificateOptions(
        privateKey=private_key,  # type: ignore[arg-type]
        certificate=certificate,  # type: ignore[arg-type]
        verify=True,
        caCerts=[crypto.X509.from_cryptography(ca) for ca in authorities],
        requireCertificate=False,  # VERIFY_PEER without FAIL_IF_NO_PEER_CERT
    )
    # the CA names a client is told, so one with several certificates (a browser) offers the right one
    context = options.getContext()
    for authority in authorities:
        context.add_client_ca(authority)
    _prefer_fast_ciphers(context)
    return options


def _prefer_fast_ciphers(context) -> None:
    """The server's order decides (TLS13_SUITES), not the client's: clients put AES-256 first by default."""
    from OpenSSL import SSL

    context.set_tls13_ciphersuites(TLS13_SUITES)
    context.set_options(SSL.OP_CIPHER_SERVER_PREFERENCE)


def client_authorities(pem: bytes) -> list[x509.Certificate]:
    """The CA certificates of a client_ca file; ValueError naming what is wrong."""
    try:
        authorities = x509.load_pem_x509_certificates(pem)
    except ValueError:
        authorities = []
    if not authorities:
        raise ValueError(
            "holds no PEM certificate; expected the PEM certificates of the CAs that sign client certificates"
        )
    return authorities


def server_options(cert_path: str, key_path: str, client_ca: str | None = None):
    with open(cert_path, "rb") as cert, open(key_path, "rb") as key:
        cert_pem, key_pem = cert.read(), key.read()
    return pem_options(cert_pem, key_pem, read_client_ca(client_ca) if client_ca else None)


def read_client_ca(path: str) -> bytes:
    """The PEM of a client_ca file, checked to hold certificates; ValueError in one line naming the file."""
    try:
        with open(path, "rb") as handle:
            pem = handle.read()
        client_authorities(pem)
    except OSError as error:
        raise ValueError(f"client_ca {path}: cannot be read ({error.strerror or error})") from None
    except ValueError as error:
        raise ValueError(f"client_ca {path}: {error}") from None
    return pem


def file_fingerprint(cert_path: str) -> str:
    with open(cert_path, "rb") as handle:
        return fingerprint(handle.read())
