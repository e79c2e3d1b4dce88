"""Certificates for the HTTP services: self-signed on first start, fingerprints in the v1 format.

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

CERT_NAME = "tls-cert.pem"
KEY_NAME = "tls-key.pem"


def der_fingerprint(der: bytes) -> str:
    """SHA-256 of a DER certificate, upper-case hex pairs joined by colons (as TOMAAT-Slicer stores it)."""
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def fingerprint(cert_pem: bytes) -> str:
    return der_fingerprint(x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER))


def _self_signed(hostname: str) -> tuple[bytes, bytes]:
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


def ensure_certificate(folder: str, hostname: str = "localhost") -> tuple[str, str]:
    """Paths of the certificate and key kept in folder, made on first use and reused after."""
    cert_path, key_path = os.path.join(folder, CERT_NAME), os.path.join(folder, KEY_NAME)
    if not (os.path.exists(cert_path) and os.path.exists(key_path)):
        os.makedirs(folder, exist_ok=True)
        cert_pem, key_pem = _self_signed(hostname)
        descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(key_pem)
        with open(cert_path, "wb") as handle:
            handle.write(cert_pem)
    return cert_path, key_path


def server_options(cert_path: str, key_path: str):
    """Twisted TLS options serving the given PEM certificate and key."""
    from twisted.internet import ssl

    with open(cert_path, "rb") as cert, open(key_path, "rb") as key:
        # cryptography objects: pyOpenSSL deprecates its own X509/PKey types here
        certificate = x509.load_pem_x509_certificate(cert.read())
        private_key = serialization.load_pem_private_key(key.read(), password=None)
    return ssl.CertificateOptions(privateKey=private_key, certificate=certificate)


def file_fingerprint(cert_path: str) -> str:
    with open(cert_path, "rb") as handle:
        return fingerprint(handle.read())
