"""The client's credentials: a bearer token on every request and nowhere else, the command line's token options
and their order, the refusals said in one line, and a client certificate shown to a mutual-TLS server."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import pytest_twisted
import SimpleITK as sitk
from client_support import V1Server, one_line_error, run_cli
from test_access_certificates import Authority
from twisted.internet import defer, reactor
from twisted.web import resource
from twisted.web.server import Site

from tomaat.access.certificates import peer_identity
from tomaat.access.identity import Forbidden, Identity, Unauthenticated
from tomaat.client import AsyncClient, ServerError
from tomaat.client.errors import AccessRefused
from tomaat.net.daemon import local_url, server_endpoint

TOKEN = "tmt_" + "S3cr3t-" * 6 + "x"  # shaped as the service's own tokens are
METHODS_MESSAGE = "this service needs an identity: a token or a client certificate"
INFO = {
    "protocol": 2,
    "name": "Gated",
    "version": "1",
    "modality": "CT",
    "anatomy": "brain",
    "task": "segmentation",
    "input_interface": [{"type": "slider", "destination": "threshold", "minimum": 0, "maximum": 10}],
    "output_interface": [],
    "access": {
        "methods": ["token", "oidc"],
        "required": ["predict", "metrics"],
        "oidc": {"issuer": "", "audience": ""},
    },
}


class Gate(resource.Resource):
    """In front of a service: records each request's Authorization header and client certificate, and answers
    401 or 403 with the JSON error shape and challenge the access module defines, as the service's gate would.

    `tokens` maps a token to its scopes; a verified client certificate gets `predict`. /predict needs `predict`,
    anything else just an identity. `info` (a dict) is answered at /info; else /info goes to the service.
    `echo` puts the token it was sent into its refusal, as a careless or hostile server might."""

    isLeaf = True

    def __init__(self, inner, tokens: dict, info: dict | None = None, echo: bool = False):
        super().__init__()
        self.inner, self.tokens, self.info, self.echo = inner, tokens, info, echo
        self.seen: list[SimpleNamespace] = []
        self.port = self.config = self.fingerprint = None

    def render(self, request):
        given = (request.getHeader(b"authorization") or b"").decode("latin-1") or None
        certificate = peer_identity(request, frozenset({"predict"}))
        path = request.path.decode()
        self.seen.append(
            SimpleNamespace(what=f"{request.method.decode()} {path}", uri=request.uri, auth=given, cert=certificate)
        )
        identity = certificate
        if given and given.startswith("Bearer "):
            scopes = self.tokens.get(given[len("Bearer ") :])
            identity = Identity("token:user", "token", frozenset(scopes), "token:user") if scopes is not None else None
            if identity is None:
                echoed = f" ({given[7:]})" if self.echo else ""
                return self._refuse(request, Unauthenticated(f"the token is not known{echoed}", "invalid_token"))
        if identity is None:
            return self._refuse(request, Unauthenticated(METHODS_MESSAGE))
        if path == "/predict" and not identity.may("predict"):
            return self._refuse(request, Forbidden(identity, "predict"))
        if path == "/info" and self.info is not None:
            request.setHeader(b"Content-Type", b"application/json")
            return json.dumps(self.info).encode()
        return self.inner.render(request)

    def _refuse(self, request, refusal):
        request.setResponseCode(refusal.status)
        for name, value in refusal.headers.items():
            request.setHeader(name, value)
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps({"error": refusal.message}).encode()

    async def listen(self, tmp_path, **settings):
        settings = {"port": 0, "listen_address": "127.0.0.1", "tls": False, "cert": None, "key": None, **settings}
        self.config = SimpleNamespace(state_dir=str(tmp_path / "gate-state"), **settings)
        endpoint, self.fingerprint = server_endpoint(reactor, self.config)
        self.port = await endpoint.listen(Site(self))
        return self

    @property
    def url(self) -> str:
        return local_url(self.config, self.port)


@pytest.fixture
def gate(tmp_path):
    """gate(tokens, **options) in front of a v1 service (client_support.V1Server), on a real port."""
    started = []

    async def start(tokens: dict, info=None, echo=False, **settings) -> Gate:
        v1 = V1Server()
        service = await Gate(v1.app.resource(), tokens, info, echo).listen(tmp_path, **settings)
        started.append(service)
        return service

    yield start
    for service in started:
        pytest_twisted.blockon(defer.maybeDeferred(service.port.stopListening))


@pytest_twisted.ensureDeferred
async def test_the_token_goes_in_the_authorization_header_of_every_request_and_nowhere_else(gate, tmp_path, phantom):
    service = await gate({TOKEN: {"predict"}})
    client = AsyncClient(service.url, token=TOKEN, known_hosts=str(tmp_path / "kh.json"))
    assert TOKEN not in repr(client) and "<hidden>" in repr(client)
    result = await client.predict({"images": phantom, "threshold": 400, "seeds": [[1, 2, 3]]})
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result["labels"]), sitk.GetArrayFromImage(phantom) >= 400)
    assert [seen.what for seen in service.seen] == ["GET /info", "GET /interface", "POST /predict"]
    assert {seen.auth for seen in service.seen} == {f"Bearer {TOKEN}"}
    assert all(TOKEN.encode() not in seen.uri for seen in service.seen)
    await client.close()


@pytest_twisted.ensureDeferred
async def test_refusals_say_what_is_needed(gate, tmp_path, phantom):
    service = await gate({TOKEN: {"predict"}, "tmt_metrics-only": {"metrics"}}, echo=True)
    known = str(tmp_path / "kh.json")

    with pytest.raises(AccessRefused) as nothing:
        await AsyncClient(service.url, known_hosts=known).info()
    assert nothing.value.status == 401
    assert f"{service.url} needs credentials: {METHODS_MESSAGE}; give a token or a client certificate" == str(
        nothing.value
    )

    wrong = "tmt_wrong-" + "z" * 30
    with pytest.raises(AccessRefused) as refused:
        await AsyncClient(service.url, token=wrong, known_hosts=known).info()
    assert "did not accept the credentials given: the token is not known" in str(refused.value)
    assert wrong not in str(refused.value) and "<token>" in str(refused.value)  # the server echoed it

    metrics = AsyncClient(service.url, token="tmt_metrics-only", known_hosts=known)
    with pytest.raises(AccessRefused) as forbidden:
        await metrics.predict({"images": phantom, "threshold": 400, "seeds": [[1, 2, 3]]})
    assert forbidden.value.status == 403 and isinstance(forbidden.value, ServerError)
    assert str(forbidden.value) == "token:user may not do this: it needs the scope 'predict' (it has: metrics)"


@pytest_twisted.ensureDeferred
async def test_token_options_their_order_and_the_environment(gate, tmp_path, monkeypatch):
    service = await gate({"tmt_from-option": {"predict"}, "tmt_from-file": {"predict"}, "tmt_from-env": {"predict"}})
    secret = tmp_path / "token"
    secret.write_text("  tmt_from-file  \nsecond line ignored\n")
    os.chmod(secret, 0o600)
    monkeypatch.setenv("TOMAAT_TOKEN", "tmt_from-env")

    async def sent(*options) -> str:
        before = len(service.seen)
        done = await run_cli(["interface", service.url, *options], tmp_path)
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""
        return service.seen[before].auth

    assert await sent("--token", "tmt_from-option") == "Bearer tmt_from-option"  # over TOMAAT_TOKEN
    assert await sent("--token-file", str(secret)) == "Bearer tmt_from-file"  # over TOMAAT_TOKEN
    assert await sent() == "Bearer tmt_from-env"

    both = await run_cli(
        ["interface", service.url, "--token", "tmt_from-option", "--token-file", str(secret)], tmp_path
    )
    assert both.returncode == 2 and "give --token or --token-file, not both" in both.stderr
    assert "tmt_from-option" not in both.stdout + both.stderr

    # a file others may read: used, with one line of warning (token files are often mounted 0644)
    os.chmod(secret, 0o644)
    before = len(service.seen)
    warned = await run_cli(["interface", service.url, "--token-file", str(secret)], tmp_path)
    assert warned.returncode == 0 and service.seen[before].auth == "Bearer tmt_from-file"
    line = one_line_error(warned)
    assert f"the token file {secret} may be read by others (mode 0644)" in line
    assert "tmt_from-file" not in warned.stdout + warned.stderr

    missing = await run_cli(["interface", service.url, "--token-file", str(tmp_path / "none")], tmp_path)
    assert (
        missing.returncode == 1 and "the token file" in one_line_error(missing) and "cannot be read" in missing.stderr
    )
    spaced = await run_cli(["interface", service.url, "--token", "two words"], tmp_path)
    assert spaced.returncode == 1 and "--token holds spaces" in one_line_error(spaced)
    assert "two words" not in spaced.stderr


@pytest_twisted.ensureDeferred
async def test_predict_never_prints_the_token_even_when_refused(gate, tmp_path, phantom, monkeypatch):
    service = await gate({TOKEN: {"predict"}}, echo=True)
    sitk.WriteImage(phantom, str(tmp_path / "p.nii.gz"))
    common = ["--input", f"images={tmp_path / 'p.nii.gz'}", "--set", "threshold=400", "--out", str(tmp_path / "out")]
    wrong = TOKEN[:-1] + "y"
    for options in (["--token", wrong], ["--token-file", str(tmp_path / "wrong")], []):
        (tmp_path / "wrong").write_text(wrong + "\n")
        os.chmod(tmp_path / "wrong", 0o600)
        if not options:
            monkeypatch.setenv("TOMAAT_TOKEN", wrong)
        done = await run_cli(["predict", service.url, *common, *options], tmp_path)
        assert done.returncode == 3, done.stderr
        line = one_line_error(done)
        assert "the server refused" in line and "did not accept the credentials given" in line
        assert wrong not in done.stdout + done.stderr

    monkeypatch.delenv("TOMAAT_TOKEN")
    anonymous = await run_cli(["predict", service.url, *common], tmp_path)
    assert anonymous.returncode == 3 and f"needs credentials: {METHODS_MESSAGE}" in one_line_error(anonymous)

    done = await run_cli(["predict", service.url, *common, "--set", "seeds=1,2,3", "--token", TOKEN], tmp_path)
    assert done.returncode == 0, done.stderr
    assert TOKEN not in done.stdout + done.stderr


@pytest_twisted.ensureDeferred
async def test_interface_and_discover_say_what_a_service_accepts(gate, tmp_path):
    service = await gate({TOKEN: {"predict"}}, info=INFO)
    shown = await run_cli(["interface", service.url, "--token", TOKEN], tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "  access: token, oidc (predict, metrics need an identity)" in shown.stdout.splitlines()

    open_info = {**INFO, "access": {"methods": [], "required": []}}
    open_service = await gate({TOKEN: {"predict"}}, info=open_info)
    quiet = await run_cli(["interface", open_service.url, "--token", TOKEN], tmp_path)
    assert quiet.returncode == 0 and "access" not in quiet.stdout

    # a private registry: /discover wants a read token; its entry says what the service accepts
    entry = {"name": "Gated", "prediction_url": "https://x:9000", "SID": "s1", "modality": "CT", "anatomy": "brain"}
    entry.update(task="segmentation", access=["token", "certificate", "bogus\x1b[31m"])
    registry = await gate({"tmt_read": {"read"}})
    registry.inner = _Discover([entry])
    listed = await run_cli(["discover", registry.url, "--token", "tmt_read"], tmp_path)
    assert listed.returncode == 0, listed.stderr
    # the registry's methods, known ones only (tomaat.protocol.registry.parse_access), never a terminal escape
    assert "access: token, certificate" in [line.strip() for line in listed.stdout.splitlines()], listed.stdout
    assert "\x1b" not in listed.stdout
    assert registry.seen[-1].auth == "Bearer tmt_read" and registry.seen[-1].what == "GET /discover"
    refused = await run_cli(["discover", registry.url], tmp_path)
    assert refused.returncode == 3 and "needs credentials" in one_line_error(refused)


class _Discover(resource.Resource):
    isLeaf = True

    def __init__(self, services):
        super().__init__()
        self.services = services

    def render(self, request):
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps(self.services).encode()


@pytest_twisted.ensureDeferred
async def test_a_client_certificate_is_shown_to_a_mutual_tls_server(gate, tmp_path):
    folder = tmp_path / "pki"
    folder.mkdir()
    ca = Authority(folder, "hospital")
    cert, key = ca.issue("workstation", CN="workstation-7")
    service = await gate({TOKEN: {"predict"}}, info=INFO, tls=True, client_ca=str(ca.path))

    done = await run_cli(
        ["interface", service.url, "--trust", service.fingerprint, "--client-cert", cert, "--client-key", key],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert service.seen[-1].cert is not None and service.seen[-1].cert.name == "cert:workstation-7"
    assert service.seen[-1].auth is None

    # the API, pinning the server's certificate as before, with the certificate and a token together
    client = AsyncClient(service.url, fingerprint=service.fingerprint, client_cert=(cert, key), token=TOKEN)
    assert (await client.info()).protocol == 2
    assert service.seen[-1].cert.name == "cert:workstation-7" and service.seen[-1].auth == f"Bearer {TOKEN}"

    half = await run_cli(["interface", service.url, "--client-cert", cert], tmp_path)
    assert half.returncode == 2 and "--client-cert and --client-key go together" in half.stderr
    without = await run_cli(["interface", service.url, "--trust", service.fingerprint], tmp_path)
    assert without.returncode == 3 and "needs credentials" in one_line_error(without)


@pytest_twisted.ensureDeferred
async def test_dicomweb_predict_names_the_prediction_servers_credentials_apart_from_the_pacs(tmp_path):
    base = ["dicomweb", "predict", "http://127.0.0.1:9", "--dicomweb", "http://127.0.0.1:9", "--study", "1.2.3"]
    both = await run_cli([*base, "--server-token", "tmt_a", "--server-token-file", str(tmp_path / "f")], tmp_path)
    assert both.returncode == 2 and "give --server-token or --server-token-file, not both" in both.stderr
    half = await run_cli([*base, "--token", "pacs-token", "--server-client-key", "k.pem"], tmp_path)
    assert half.returncode == 2 and "--server-client-cert and --server-client-key go together" in half.stderr
