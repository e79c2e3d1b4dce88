"""OIDC access tokens against a real issuer on a real port: Keycloak's paths and token shape, keys made here.

The issuer is a Twisted web server on 127.0.0.1 serving an openid-configuration and a JWKS (with Keycloak's
encryption key beside the signing one), counting what it is asked. Tokens are signed with PyJWT, except the
forgeries (alg none, HS256 keyed with the public key), which are put together by hand as an attacker would.
Every refusal is checked for its status, its message, and for not quoting the token.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import time
import uuid

import jwt
import pytest
import pytest_twisted
import test_registry_support as support
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from test_registry_support import eventually
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.web import resource, server

from tomaat.access.identity import Identity, Refused, Unauthenticated
from tomaat.access.oidc import OidcVerifier, Unavailable

logs = support.logs  # every log record and Twisted event, as text

REALM = "/realms/tomaat"
CERTS = REALM + "/protocol/openid-connect/certs"
DISCOVERY = REALM + "/.well-known/openid-configuration"
AUDIENCE = "tomaat"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class Key:
    """A signing key pair and its public JWK, as Keycloak publishes it (kid, use, alg)."""

    def __init__(self, kind: str = "RSA", kid: str = ""):
        self.kid = kid or uuid.uuid4().hex
        if kind == "RSA":
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            self.algorithm, jwk = "RS256", jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        elif kind == "EC":
            self.private = ec.generate_private_key(ec.SECP256R1())
            self.algorithm, jwk = "ES256", jwt.algorithms.ECAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        else:
            self.private = ed25519.Ed25519PrivateKey.generate()
            self.algorithm, jwk = "EdDSA", jwt.algorithms.OKPAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        self.jwk = {**jwk, "kid": self.kid, "use": "sig", "alg": self.algorithm}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, claims: dict, **header) -> str:
        return jwt.encode(claims, self.private, algorithm=self.algorithm, headers={"kid": self.kid, **header})


def keycloak_encryption_key() -> dict:
    """Keycloak's JWKS also lists an RSA-OAEP key for encryption: it must be passed over, not break the set."""
    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(
        rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key(), as_dict=True
    )
    return {**jwk, "kid": "enc-" + uuid.uuid4().hex, "use": "enc", "alg": "RSA-OAEP"}


ENCRYPTION_KEY = keycloak_encryption_key()


class Issuer(resource.Resource):
    """Keycloak's two documents at Keycloak's paths; `keys` is what the JWKS lists, `asked` each path requested."""

    isLeaf = True

    def __init__(self, keys: list[Key]):
        super().__init__()
        self.keys = keys
        self.asked: list[str] = []
        self.url = ""
        self.flood = False

    def render_GET(self, request):
        path = request.path.decode()
        self.asked.append(path)
        request.setHeader(b"Content-Type", b"application/json")
        if path == DISCOVERY:
            document = {
                "issuer": self.issuer,
                "jwks_uri": self.url + CERTS,
                "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            }
        elif path == CERTS:
            document = {"keys": [key.jwk for key in self.keys] + [ENCRYPTION_KEY]}
            if self.flood:
                document["padding"] = "x" * 300_000
        else:
            request.setResponseCode(404)
            document = {"error": "not found"}
        return json.dumps(document).encode()

    @property
    def issuer(self) -> str:
        return self.url + REALM

    def fetches(self) -> int:
        return self.asked.count(CERTS)


@pytest.fixture
def issuer():
    """A running issuer with one RSA and one EC key."""
    site = Issuer([Key("RSA"), Key("EC")])
    port = reactor.listenTCP(0, server.Site(site), interface="127.0.0.1")
    site.url = f"http://127.0.0.1:{port.getHost().port}"
    site.port = port
    yield site
    port.stopListening()


def claims(issuer: Issuer, **changes) -> dict:
    """An access token's claims in Keycloak's shape (a realm role mapped into `realm_access`)."""
    now = int(time.time())
    body = {
        "exp": now + 300,
        "iat": now,
        "jti": str(uuid.uuid4()),
        "iss": issuer.issuer,
        "aud": [AUDIENCE, "account"],
        "sub": "4f1c2a9e-1111-4ad0-9d55-0c6a1c2b3d4e",
        "typ": "Bearer",
        "azp": "tomaat-cli",
        "session_state": str(uuid.uuid4()),
        "acr": "1",
        "realm_access": {"roles": ["default-roles-tomaat", "offline_access", "predict", "metrics"]},
        "resource_access": {"account": {"roles": ["manage-account", "view-profile"]}},
        "scope": "openid profile email",
        "email_verified": True,
        "preferred_username": "alice",
    }
    body.update(changes)
    return {name: value for name, value in body.items() if value is not None}


async def started(issuer: Issuer, **options) -> OidcVerifier:
    options = {"issuer": issuer.issuer, "audience": AUDIENCE, "timeout": 5.0, **options}
    verifier = OidcVerifier(reactor, **options)
    await verifier.start()
    return verifier


async def refused(verifier: OidcVerifier, token: str, status: int, fragment: str) -> Refused:
    """The refusal of `token`: its status, a message containing `fragment`, never the token or its parts."""
    with pytest.raises(Refused) as caught:
        await verifier.identify(token)
    error = caught.value
    assert error.status == status, error.message
    assert fragment in error.message, error.message
    assert "\n" not in error.message
    assert_no_token(token, f"{error.message} {error!r} {error.args} {error.headers}")
    return error


def assert_no_token(token: str, text: str) -> None:
    """Neither the token nor any of its three parts (the signature alone is a secret worth replaying)."""
    for part in [token, *token.split(".")]:
        assert len(part) < 8 or part[:16] not in text, "a piece of the token appears in a message"


# ---- tokens that identify --------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_keycloak_rs256_token_identifies_with_its_realm_roles(issuer, logs):
    verifier = await started(issuer)  # the JWKS URL discovered from the openid-configuration
    try:
        assert issuer.asked == [DISCOVERY, CERTS]
        token = issuer.keys[0].sign(claims(issuer))
        identity = await verifier.identify(token)
        assert identity == Identity(
            name="oidc:alice",
            method="oidc",
            scopes=frozenset({"predict", "metrics"}),
            owner="oidc:4f1c2a9e-1111-4ad0-9d55-0c6a1c2b3d4e",
        )
        assert verifier.describe() == {"issuer": issuer.issuer, "audience": AUDIENCE}
        assert issuer.fetches() == 1  # a known kid costs no fetch
        assert_no_token(token, logs.text)
    finally:
        await verifier.stop()


@pytest_twisted.ensureDeferred
async def test_an_es256_token_with_a_given_jwks_url_and_a_single_audience(issuer):
    verifier = await started(issuer, jwks_url=issuer.url + CERTS)
    try:
        assert issuer.asked == [CERTS]  # no discovery when the URL is given
        token = issuer.keys[1].sign(claims(issuer, aud=AUDIENCE, preferred_username=None))
        identity = await verifier.identify(token)
        assert identity.name == "oidc:4f1c2a9e-1111-4ad0-9d55-0c6a1c2b3d4e"  # no username: the subject
        assert identity.scopes == {"predict", "metrics"}
    finally:
        await verifier.stop()


@pytest_twisted.ensureDeferred
async def test_an_eddsa_token_is_accepted(issuer):
    issuer.keys.append(Key("OKP"))
    verifier = await started(issuer)
    try:
        identity = await verifier.identify(issuer.keys[2].sign(claims(issuer)))
        assert identity.name == "oidc:alice"
    finally:
        await verifier.stop()


@pytest.mark.parametrize(
    "roles_claim, changes, role_scopes, expected",
    [
        ("resource_access.tomaat.roles", {"resource_access": {"tomaat": {"roles": ["admin"]}}}, None, {"admin"}),
        ("roles", {"roles": ["predict", 7, None]}, None, {"predict"}),
        ("scope", {"scope": "openid tomaat:predict tomaat:metrics"}, {"tomaat:predict": "predict"}, {"predict"}),
        ("realm_access.roles", {"realm_access": {"roles": ["offline_access"]}}, None, set()),
        ("realm_access.roles", {"realm_access": None}, None, set()),
        ("realm_access.roles", {"realm_access": {"roles": {"predict": True}}}, None, set()),
    ],
)
@pytest_twisted.ensureDeferred
async def test_roles_are_read_where_the_claim_path_points(issuer, roles_claim, changes, role_scopes, expected):
    verifier = await started(issuer, roles_claim=roles_claim, role_scopes=role_scopes)
    try:
        identity = await verifier.identify(issuer.keys[0].sign(claims(issuer, **changes)))
        assert identity.scopes == expected  # no mapped role still identifies: the gate answers 403
        assert identity.method == "oidc" and identity.name == "oidc:alice"
    finally:
        await verifier.stop()


@pytest_twisted.ensureDeferred
async def test_an_expiry_within_the_leeway_is_accepted(issuer):
    verifier = await started(issuer, leeway=30.0)
    try:
        token = issuer.keys[0].sign(claims(issuer, exp=int(time.time()) - 10))
        assert (await verifier.identify(token)).name == "oidc:alice"
    finally:
        await verifier.stop()


def by_hand(key: Key, claims: dict, algorithm: str) -> str:
    """A JWS made with `cryptography` alone, as RFC 7515/7518 spell it (ES256: raw r||s, not DER), so the check
    is not PyJWT reading what PyJWT wrote."""
    signing_input = (
        b64(json.dumps({"alg": algorithm, "typ": "JWT", "kid": key.kid}).encode())
        + "."
        + b64(json.dumps(claims).encode())
    ).encode()
    if algorithm == "ES256":
        r, s = decode_dss_signature(key.private.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    elif algorithm == "PS256":
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        signature = key.private.sign(signing_input, pss, hashes.SHA256())
    else:
        signature = key.private.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return signing_input.decode() + "." + b64(signature)


def jwk_by_hand(key: Key, algorithm: str) -> dict:
    """The public JWK from the key's numbers, with Keycloak's certificate members (x5c, x5t, x5t#S256) beside it."""
    numbers = key.private.public_key().public_numbers()
    width = lambda n: n.to_bytes((n.bit_length() + 7) // 8, "big")  # noqa: E731
    if algorithm == "ES256":
        members = {
            "kty": "EC",
            "crv": "P-256",
            "x": b64(numbers.x.to_bytes(32, "big")),
            "y": b64(numbers.y.to_bytes(32, "big")),
        }
    else:
        members = {"kty": "RSA", "n": b64(width(numbers.n)), "e": b64(width(numbers.e))}
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "tomaat")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key.private, hashes.SHA256())
    )
    der = certificate.public_bytes(serialization.Encoding.DER)
    return {
        "kid": key.kid,
        **members,
        "alg": algorithm,
        "use": "sig",
        "x5c": [base64.b64encode(der).decode()],
        "x5t": b64(hashlib.sha1(der).digest()),
        "x5t#S256": b64(hashlib.sha256(der).digest()),
    }


@pytest.mark.parametrize("kind, algorithm", [("RSA", "RS256"), ("RSA", "PS256"), ("EC", "ES256")])
@pytest_twisted.ensureDeferred
async def test_tokens_and_keys_written_without_pyjwt(issuer, kind, algorithm):
    key = Key(kind)
    key.jwk = jwk_by_hand(key, algorithm)
    issuer.keys = [key]
    verifier = await started(issuer)
    try:
        identity = await verifier.identify(by_hand(key, claims(issuer), algorithm))
        assert identity.name == "oidc:alice" and identity.scopes == {"predict", "metrics"}
        header, body, signature = by_hand(key, claims(issuer), algorithm).split(".")
        tampered = body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1]
        await refused(verifier, f"{header}.{tampered}.{signature}", 401, "signature does not verify")
    finally:
        await verifier.stop()


# ---- forgeries and bad tokens -----------------------------------------------------------------------------


def forged(header: dict, body: dict, sign=lambda signing_input: b"") -> str:
    signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(body).encode())
    return signing_input + "." + b64(sign(signing_input.encode()))


@pytest_twisted.ensureDeferred
async def test_forgeries_are_refused_by_name_before_any_key_is_used(issuer):
    verifier = await started(issuer, min_refetch=0.0)  # so even an unknown kid would fetch
    try:
        key = issuer.keys[0]
        fetched = issuer.fetches()
        for alg in ("none", "None", "NONE"):
            token = forged({"alg": alg, "typ": "JWT", "kid": key.kid}, claims(issuer))
            error = await refused(verifier, token, 401, "unsigned tokens (alg 'none') are refused")
            assert error.headers[b"WWW-Authenticate"] == b'Bearer realm="tomaat", error="invalid_token"'
        for alg, digest in (("HS256", hashlib.sha256), ("HS512", hashlib.sha512)):
            token = forged(
                {"alg": alg, "typ": "JWT", "kid": key.kid},
                claims(issuer),
                lambda data, digest=digest: hmac.new(key.public_pem(), data, digest).digest(),
            )
            await refused(verifier, token, 401, f"symmetric {alg} tokens are refused")
        token = forged({"alg": "HS256", "typ": "JWT"}, claims(issuer), lambda data: b"x")  # no kid either
        await refused(verifier, token, 401, "symmetric HS256 tokens are refused")
        token = forged({"alg": "ES256K", "kid": key.kid}, claims(issuer), lambda data: b"x" * 64)
        await refused(verifier, token, 401, "the token's algorithm is not accepted: expected one of RS256")
        assert issuer.fetches() == fetched  # not even an unknown-kid refetch
    finally:
        await verifier.stop()


@pytest_twisted.ensureDeferred
async def test_an_algorithm_that_does_not_fit_the_named_key_is_refused(issuer):
    verifier = await started(issuer)
    try:
        rsa_key, ec_key = issuer.keys
        token = jwt.encode(claims(issuer), ec_key.private, algorithm="ES256", headers={"kid": rsa_key.kid})
        await refused(verifier, token, 401, "the token's algorithm ES256 does not fit the issuer's key")
        token = jwt.encode(claims(issuer), rsa_key.private, algorithm="PS256", headers={"kid": rsa_key.kid})
        await refused(verifier, token, 401, "the token's algorithm PS256 does not fit")  # the JWK says RS256
    finally:
        await verifier.stop()


@pytest_twisted.ensureDeferred
async def test_a_tampered_payload_fails_its_signature(issuer):
    verifier = await started(issuer)
    try:
        header, _, signature = issuer.keys[0].sign(claims(issuer)).split(".")
        promoted = claims(issuer, realm_access={"roles": ["predict", "metrics", "admin"]})
        token = f"{header}.{b64(json.dumps(promoted).encode())}.{signature}"
        await refused(verifier, token, 401, "the token's signature does not verify with the issuer's key")
    finally:
        await verifier.stop()


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({"exp": int(time.time()) - 120}, "the token has expired"),
        ({"nbf": int(time.time()) + 600}, "the token is not valid yet"),
        ({"iss": "http://127.0.0.1:1/realms/other"}, "the token is from another issuer: expected http://127.0.0.1:"),
        ({"aud": ["account"]}, "the token is not meant for this service: expected the audience tomaat"),
        ({"aud": "tomaat-other"}, "expected the audience tomaat"),
        ({"exp": None}, "the token lacks the claim 'exp'"),
        ({"sub": None}, "the token lacks the claim 'sub'"),
        ({"sub": ""}, "the token's subject (sub) is empty"),
        ({"exp": "tomorrow"}, "the token is malformed"),
        ({"typ": "ID"}, "the token is not an access token"),
        ({"typ": "Refresh"}, "the token is not an access token"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_claims_are_refused_naming_what_was_wrong(issuer, changes, fragment):
    verifier = await started(issuer, leeway=30.0)
    try:
        await refused(verifier, issuer.keys[0].sign(claims(issuer, **changes)), 401, fragment)
    finally:
        await verifier.stop()


@pytest.mark.parametrize(
    "token, fragment",
    [
        ("", "no token"),
        ("not-a-jwt", "the token is not a JWT"),
        ("a.b.c", "the token is not a JWT"),
        ("eyJhbGciOiJSUzI1NiJ9." + "A" * 20000 + ".sig", "the token is longer than 16384 characters"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_garbage_is_refused(issuer, token, fragment):
    verifier = await started(issuer)
    try:
        await refused(verifier, token, 401, fragment)
    finally:
        await verifier.stop()


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # PyJWT signing with it, here
@pytest_twisted.ensureDeferred
async def test_a_key_too_short_to_trust_verifies_nothing(issuer):
    weak = Key("RSA")
    weak.private = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    weak.jwk = {**jwt.algorithms.RSAAlgorithm.to_jwk(weak.private.public_key(), as_dict=True), "kid": weak.kid}
    issuer.keys.append(weak)
    verifier = await started(issuer)
    try:
        await refused(verifier, weak.sign(claims(issuer)), 401, "the issuer's key cannot check this token (too short")
    finally:
        await verifier.stop()


# ---- keys: unknown kids, rotation, the refetch limit, an issuer that is down ------------------------------------


@pytest_twisted.ensureDeferred
async def test_an_unknown_kid_refetches_once_then_is_refused(issuer, logs):
    verifier = await started(issuer, min_refetch=0.0)
    try:
        stranger = Key("RSA")  # a key the issuer never published
        token = stranger.sign(claims(issuer))
        await refused(verifier, token, 401, "signed with a key the issuer does not publish (unknown kid)")
        assert issuer.fetches() == 2  # the one at start and the one this token caused
        assert_no_token(token, logs.text)
    finally:
        await verifier.stop()


@pytest_twisted.ensureDeferred
async def test_a_rotated_key_is_accepted_after_the_automatic_refetch(issuer):
    verifier = await started(issuer, min_refetch=0.3)
    try:
        old = issuer.keys[0]
        assert (await verifier.identify(old.sign(claims(issuer)))).name == "oidc:alice"
        new = Key("RSA")
        issuer.keys = [new]  # Keycloak rotated: the old key is gone from the JWKS
        await deferLater(reactor, 0.35, lambda: None)  # past the refetch limit since the fetch at start
        assert (await verifier.identify(new.sign(claims(issuer)))).name == "oidc:alice"
        assert issuer.fetches() == 2
        token = old.sign(claims(issuer))  # the withdrawn key no longer verifies anything
        await refused(verifier, token, 401, "unknown kid")
    finally:
        await verifier.stop()


@pytest_twisted.ensureDeferred
async def test_unknown_kids_cause_at_most_one_fetch_per_interval(issuer):
    verifier = await started(issuer, min_refetch=1.0)
    try:
        assert issuer.fetches() == 1
        await deferLater(reactor, 1.05, lambda: None)
        strangers = [Key("EC") for _ in range(3)]
        tokens = [strangers[i % 3].sign(claims(issuer)) for i in range(30)]
        # concurrent: all 30 wait on one fetch
        results = await defer.DeferredList(
            [defer.ensureDeferred(verifier.identify(token)) for token in tokens], consumeErrors=True
        )
        assert all(not ok and isinstance(failure.value, Unauthenticated) for ok, failure in results)
        assert issuer.fetches() == 2
        for token in tokens:  # one after another, inside the interval: no fetch at all
            await refused(verifier, token, 401, "unknown kid")
        assert issuer.fetches() == 2
        await deferLater(reactor, 1.05, lambda: None)
        await refused(verifier, tokens[0], 401, "unknown kid")
        assert issuer.fetches() == 3  # the interval passed: one more
    finally:
        await verifier.stop()


@pytest_twisted.ensureDeferred
async def test_the_default_limit_is_ten_seconds(issuer):
    verifier = await started(issuer)
    try:
        tokens = [Key("EC").sign(claims(issuer)) for _ in range(5)]
        for token in tokens:
            await refused(verifier, token, 401, "unknown kid")
        assert issuer.fetches() == 1 and verifier.min_refetch == 10.0
    finally:
        await verifier.stop()


@pytest_twisted.ensureDeferred
async def test_keys_are_refreshed_in_the_background_until_stop(issuer):
    verifier = await started(issuer, refresh=0.1, min_refetch=60.0)
    new = Key("EC")
    issuer.keys.append(new)
    await eventually(lambda: issuer.fetches() >= 3)
    assert (await verifier.identify(new.sign(claims(issuer)))).name == "oidc:alice"  # no unknown-kid fetch needed
    await verifier.stop()
    stopped_at = issuer.fetches()
    await deferLater(reactor, 0.4, lambda: None)  # four refresh periods
    assert issuer.fetches() == stopped_at


@pytest_twisted.ensureDeferred
async def test_an_unreachable_issuer_answers_503_until_it_comes_up(issuer, logs):
    port = issuer.port.getHost().port
    await issuer.port.stopListening()
    verifier = await started(issuer, min_refetch=0.2)  # start does not raise
    try:
        assert "OIDC: could not fetch the signing keys from" in logs.text
        assert "ConnectionRefusedError" in logs.text
        token = issuer.keys[0].sign(claims(issuer))
        error = await refused(verifier, token, 503, f"the OIDC issuer {issuer.issuer} could not be reached")
        assert isinstance(error, Unavailable) and not isinstance(error, Unauthenticated)
        forged_token = forged({"alg": "none"}, claims(issuer))
        await refused(verifier, forged_token, 401, "alg 'none'")  # a forgery is still a 401
        issuer.port = reactor.listenTCP(port, server.Site(issuer), interface="127.0.0.1")
        await deferLater(reactor, 0.25, lambda: None)
        assert (await verifier.identify(token)).name == "oidc:alice"
        assert_no_token(token, logs.text)
    finally:
        await verifier.stop()


@pytest_twisted.ensureDeferred
async def test_a_silent_issuer_is_given_up_on_within_the_timeout(logs):
    from twisted.internet import protocol

    port = reactor.listenTCP(0, protocol.Factory.forProtocol(protocol.Protocol), interface="127.0.0.1")
    try:
        url = f"http://127.0.0.1:{port.getHost().port}{REALM}"
        began = time.monotonic()
        verifier = await started_at(url, timeout=0.5)
        assert time.monotonic() - began < 3.0
        assert "no answer within 0.5 s" in logs.text
        await verifier.stop()
    finally:
        await port.stopListening()


async def started_at(issuer_url: str, **options) -> OidcVerifier:
    verifier = OidcVerifier(reactor, issuer=issuer_url, audience=AUDIENCE, **options)
    await verifier.start()
    return verifier


@pytest_twisted.ensureDeferred
async def test_bad_answers_from_the_issuer_keep_the_keys_already_known(issuer, logs):
    verifier = await started(issuer, min_refetch=0.0)
    try:
        token = issuer.keys[0].sign(claims(issuer))
        issuer.flood = True
        await refused(verifier, Key("RSA").sign(claims(issuer)), 401, "unknown kid")  # caused a refetch
        assert "the answer is larger than 262144 bytes" in logs.text
        assert (await verifier.identify(token)).name == "oidc:alice"
        issuer.flood = False
        issuer.keys = []
        await refused(verifier, Key("RSA").sign(claims(issuer)), 401, "unknown kid")
        assert "the JWKS has no signing key of an accepted type" in logs.text  # Keycloak's enc key alone is not one
        assert (await verifier.identify(token)).name == "oidc:alice"
    finally:
        await verifier.stop()


@pytest_twisted.ensureDeferred
async def test_discovery_that_names_another_issuer_is_not_trusted(issuer, logs):
    verifier = await started_at(issuer.issuer + "/", timeout=5.0)  # a trailing slash Keycloak does not write
    try:
        assert "the openid-configuration names another issuer, expected exactly" in logs.text
        await refused(verifier, issuer.keys[0].sign(claims(issuer)), 503, "could not be reached")
    finally:
        await verifier.stop()


@pytest.mark.parametrize(
    "options, fragment",
    [
        ({"issuer": "sso.example/realms/x"}, "is not an http(s) URL"),
        ({"audience": ""}, "the OIDC audience is empty"),
        ({"role_scopes": {"doctor": "predikt"}}, "role_scopes maps to unknown scopes ['predikt']"),
        ({"roles_claim": "realm_access..roles"}, "is not a dotted path"),
        ({"jwks_url": "ftp://x/certs"}, "the OIDC JWKS URL"),
    ],
)
def test_bad_settings_are_refused_at_construction(options, fragment):
    options = {"issuer": "https://sso.example/realms/tomaat", "audience": AUDIENCE, **options}
    with pytest.raises(ValueError) as caught:
        OidcVerifier(reactor, **options)
    assert fragment in str(caught.value)
