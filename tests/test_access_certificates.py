"""Mutual TLS on a service's port: a client certificate from the configured CA is an identity, one from another
CA fails the handshake, none at all still connects (a token user); IPv6 listen addresses listen on IPv6."""

from __future__ import annotations

import datetime
import json
import socket
import ssl
import subprocess
from types import SimpleNamespace

import pytest
import pytest_twisted
from clients import call
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from klein import Klein
from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread
from twisted.web.server import Site

from tomaat.access.certificates import peer_identity
from tomaat.client.credentials import ClientCertificate, CredentialError
from tomaat.client.trust import KnownHosts, TrustOnFirstUse
from tomaat.net.daemon import local_url, server_endpoint
from tomaat.net.http_client import HttpClient
from tomaat.net.tls import fingerprint

SCOPES = frozenset({"predict"})


# ---- certificates made here, as an operator's CA would make them ---------------------------------------------


def _name(**attributes) -> x509.Name:
    oids = {"CN": NameOID.COMMON_NAME, "O": NameOID.ORGANIZATION_NAME, "OU": NameOID.ORGANIZATIONAL_UNIT_NAME}
    return x509.Name([x509.NameAttribute(oids[k], v) for k, v in attributes.items()])


def _builder(subject: x509.Name, issuer: x509.Name, public_key) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=30))
    )


class Authority:
    """A CA that signs client certificates, its files written into a folder."""

    def __init__(self, folder, name: str):
        self.folder, self.name = folder, name
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = _name(CN=name, O="tomaat tests")
        self.cert = (
            _builder(subject, subject, self.key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.path = folder / f"{name}-ca.pem"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, file_name: str, **subject) -> tuple[str, str]:
        """(cert path, key path) of a new client certificate."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            _builder(_name(**subject), self.cert.subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        cert_path, key_path = self.folder / f"{file_name}.pem", self.folder / f"{file_name}-key.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return str(cert_path), str(key_path)


@pytest.fixture
def pki(tmp_path):
    folder = tmp_path / "pki"
    folder.mkdir()
    ours, theirs = Authority(folder, "ours"), Authority(folder, "theirs")
    return SimpleNamespace(
        ours=ours,
        theirs=theirs,
        alice=ours.issue("alice", CN="alice", O="radiology"),
        nameless=ours.issue("nameless", O="radiology", OU="ward 7"),
        mallory=theirs.issue("mallory", CN="alice"),  # the same name, from a CA the service does not trust
    )


# ---- a service of our own that says whom it sees ---------------------------------------------------------------


class WhoAmI:
    """A tiny service on a real port, listening as the daemons do (server_endpoint), answering who the client
    is by peer_identity; `seen` lists the identities of the requests that got through."""

    app = Klein()

    def __init__(self):
        self.seen: list = []
        self.port = None
        self.config = None
        self.fingerprint = None

    @app.route("/whoami")
    def whoami(self, request):
        identity = peer_identity(request, SCOPES)
        self.seen.append(identity)
        request.setHeader(b"Content-Type", b"application/json")
        if identity is None:
            return b"null"
        shown = {"name": identity.name, "method": identity.method, "owner": identity.owner}
        return json.dumps({**shown, "scopes": sorted(identity.scopes)}).encode()

    async def listen(self, tmp_path, **settings):
        settings = {"port": 0, "listen_address": "127.0.0.1", "tls": True, "cert": None, "key": None, **settings}
        self.config = SimpleNamespace(state_dir=str(tmp_path / "state"), **settings)
        endpoint, self.fingerprint = server_endpoint(reactor, self.config)
        self.port = await endpoint.listen(Site(self.app.resource()))
        return self

    @property
    def url(self) -> str:
        return local_url(self.config, self.port)

    def stop(self):
        return defer.maybeDeferred(self.port.stopListening)


@pytest.fixture
def whoami(tmp_path):
    started = []

    async def start(**settings) -> WhoAmI:
        service = await WhoAmI().listen(tmp_path, **settings)
        started.append(service)
        return service

    yield start
    for service in started:
        pytest_twisted.blockon(service.stop())


async def ask(service: WhoAmI, tmp_path, client_cert=None):
    """GET /whoami with our client's TLS policy: the service's certificate pinned, client_cert shown."""
    trust = TrustOnFirstUse(
        KnownHosts(str(tmp_path / "known.json")), pinned=service.fingerprint, client_cert=client_cert
    )
    http = HttpClient(reactor, trust, connect_timeout=10)
    try:
        status, body = await http.get(service.url + "/whoami", timeout=10)
    finally:
        await http.close()
    return status, json.loads(body)


def _stdlib_handshake(port: int, ca_path: str | None, cert: tuple[str, str] | None, host: str = "127.0.0.1") -> bytes:
    """A request by Python's own ssl module (another TLS client than ours); what the server sent back."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if cert:
        context.load_cert_chain(*cert)
    with socket.create_connection((host, port), timeout=10) as raw:
        with context.wrap_socket(raw) as tls:
            tls.sendall(b"GET /whoami HTTP/1.0\r\nHost: x\r\n\r\n")
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
    return answer


# ---- the tests -------------------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_certificate_from_the_configured_ca_is_an_identity(whoami, pki, tmp_path):
    service = await whoami(client_ca=str(pki.ours.path))
    status, seen = await ask(service, tmp_path, ClientCertificate(*pki.alice))
    assert status == 200
    with open(pki.alice[0], "rb") as handle:
        alice_fingerprint = fingerprint(handle.read())
    assert seen == {
        "name": "cert:alice",
        "method": "certificate",
        "owner": f"cert:{alice_fingerprint}",
        "scopes": ["predict"],
    }
    # the owner is the fingerprint another tool computes for the same certificate
    openssl = subprocess.run(
        ["openssl", "x509", "-in", pki.alice[0], "-noout", "-fingerprint", "-sha256"], capture_output=True, text=True
    )
    assert openssl.returncode == 0, openssl.stderr
    assert seen["owner"] == "cert:" + openssl.stdout.strip().split("=", 1)[1]

    # no common name: the whole subject, as RFC 4514 writes it (most specific first)
    status, nameless = await ask(service, tmp_path, ClientCertificate(*pki.nameless))
    assert nameless["name"] == "cert:OU=ward 7,O=radiology"
    assert nameless["owner"] != seen["owner"]


@pytest_twisted.ensureDeferred
async def test_no_certificate_still_connects_with_no_identity(whoami, pki, tmp_path):
    service = await whoami(client_ca=str(pki.ours.path))
    assert await ask(service, tmp_path) == (200, None)  # a token user: the gate decides
    answer = await deferToThread(_stdlib_handshake, service.port.getHost().port, None, None)
    assert answer.startswith(b"HTTP/1.0 200") and answer.endswith(b"null")


@pytest_twisted.ensureDeferred
async def test_a_certificate_from_another_ca_fails_the_handshake(whoami, pki, tmp_path):
    service = await whoami(client_ca=str(pki.ours.path))
    with pytest.raises(Exception):  # noqa: B017  # how the failure surfaces depends on the TLS version
        await ask(service, tmp_path, ClientCertificate(*pki.mallory))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await deferToThread(_stdlib_handshake, service.port.getHost().port, None, pki.mallory)
    assert service.seen == []  # no request of mallory's reached the service
    # the right certificate, by the other client, on the same port
    answer = await deferToThread(_stdlib_handshake, service.port.getHost().port, None, pki.alice)
    assert answer.startswith(b"HTTP/1.0 200") and b'"cert:alice"' in answer


@pytest_twisted.ensureDeferred
async def test_without_client_ca_no_certificate_is_asked_for_nor_believed(whoami, pki, tmp_path):
    service = await whoami()  # TLS, but no client_ca
    assert await ask(service, tmp_path, ClientCertificate(*pki.alice)) == (200, None)
    plain = await whoami(tls=False)
    answer = await deferToThread(_plain_get, plain.port.getHost().port)
    assert answer.endswith(b"null")


def _plain_get(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(b"GET /whoami HTTP/1.0\r\nHost: x\r\n\r\n")
        answer = b""
        while chunk := raw.recv(65536):
            answer += chunk
    return answer


@pytest_twisted.ensureDeferred
async def test_an_ipv6_listen_address_listens_on_ipv6(whoami, pki, tmp_path):
    plain = await whoami(tls=False, listen_address="::1")
    assert plain.url == f"http://[::1]:{plain.port.getHost().port}"
    assert plain.port.getHost().type == "TCP" and plain.port.getHost().host == "::1"
    # treq cannot send to an IPv6 literal (hyperlink 21 IDNA-encodes "::1"), so requests asks here
    answer = await call("GET", plain.url + "/whoami")
    assert (answer.status_code, answer.content) == (200, b"null")

    secure = await whoami(listen_address="::1", client_ca=str(pki.ours.path))
    assert secure.url.startswith("https://[::1]:") and secure.port.getHost().host == "::1"
    answer = await deferToThread(_stdlib_handshake, secure.port.getHost().port, None, pki.alice, "::1")
    assert answer.startswith(b"HTTP/1.0 200") and b'"cert:alice"' in answer


def test_a_client_ca_file_without_certificates_is_named(pki, tmp_path):
    bad = tmp_path / "not-a-ca.pem"
    bad.write_text("hello\n")
    config = SimpleNamespace(
        port=0, listen_address="127.0.0.1", tls=True, cert=None, key=None, state_dir=str(tmp_path), client_ca=str(bad)
    )
    with pytest.raises(ValueError, match=f"client_ca {bad}: holds no PEM certificate") as caught:
        server_endpoint(reactor, config)
    assert "\n" not in str(caught.value)
    config.client_ca = str(tmp_path / "missing.pem")
    with pytest.raises(ValueError, match="cannot be read"):
        server_endpoint(reactor, config)


def test_a_client_key_that_is_not_the_certificates_is_refused_before_connecting(pki):
    with pytest.raises(CredentialError, match="is not the key of the certificate"):
        ClientCertificate(pki.alice[0], pki.mallory[1])
    with pytest.raises(CredentialError, match="holds no PEM certificate"):
        ClientCertificate(pki.alice[1], pki.alice[1])
    with pytest.raises(CredentialError, match="cannot be read"):
        ClientCertificate(pki.alice[0] + ".missing", pki.alice[1])
