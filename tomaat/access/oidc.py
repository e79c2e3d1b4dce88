"""Bearer tokens from an OpenID Connect issuer (Keycloak): signed JWTs checked against the issuer's published keys.

The service never talks to the issuer per request: the keys (JWKS) are fetched at start, refreshed in the
background, and refetched once when a token names a key not seen yet, so a rotated key works without a restart.
A hostile client decides everything in a token, so the header is judged before any key is touched: only the
issuer's asymmetric algorithms are accepted, and the algorithm must fit the key it names. `alg: none` and HS*
(the public key used as an HMAC secret) are refused by name. URLs or keys inside a token (`jku`, `x5u`, `jwk`)
are never used. No token, claim dump or key reaches a message or a log line.

Usage::

    verifier = OidcVerifier(reactor, issuer="https://sso.example/realms/tomaat", audience="tomaat")
    await verifier.start()                        # before the port opens; an unreachable issuer only warns
    identity = await verifier.identify(token)     # Unauthenticated (401), or Refused with status 503
    verifier.stop()
"""

from __future__ import annotations

import json
import logging
from urllib.parse import urlsplit

import jwt
from OpenSSL import SSL
from twisted.internet import defer, task

from ..net.http_client import AnswerTooLarge, HttpClient, root_cause
from .identity import SCOPES, Identity, Refused, Unauthenticated

log = logging.getLogger("tomaat.access.oidc")

ANSWER_LIMIT = 256 * 1024  # a JWKS or an openid-configuration is a few KiB
TOKEN_LIMIT = 16 * 1024  # Twisted's own cap on a header line
DEFAULT_ROLE_SCOPES = {scope: scope for scope in SCOPES}

# Each accepted algorithm and the keys it may be checked with: kty, and the curves where kty has several.
ALGORITHMS: dict[str, tuple[str, frozenset[str] | None]] = {
    **{f"{family}{bits}": ("RSA", None) for family in ("RS", "PS") for bits in (256, 384, 512)},
    "ES256": ("EC", frozenset({"P-256"})),
    "ES384": ("EC", frozenset({"P-384"})),
    "ES512": ("EC", frozenset({"P-521"})),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
}
DEFAULT_ALGORITHM = {"RSA": "RS256", "P-256": "ES256", "P-384": "ES384", "P-521": "ES512", "OKP": "EdDSA"}
PUBLIC_MEMBERS = ("kty", "kid", "alg", "use", "crv", "n", "e", "x", "y")  # never a private part ("d", "p", ...)
REQUIRED_CLAIMS = ["exp", "iss", "aud", "sub"]
ACCESS_TOKEN_TYPES = ("bearer", "at+jwt")  # Keycloak's `typ` claim; its ID and refresh tokens are signed alike


class Unavailable(Refused):
    """The issuer's keys are not known (it could not be reached): the token may be fine, it cannot be checked."""

    status = 503

    def __init__(self, message: str):
        super().__init__(message, {b"Retry-After": b"10"})


def invalid(message: str) -> Unauthenticated:
    return Unauthenticated(message, error="invalid_token")


def describe_failure(error: BaseException, timeout: float) -> str:
    """One line for a failed fetch."""
    error = root_cause(error)
    if isinstance(error, defer.TimeoutError | defer.CancelledError):
        return f"no answer within {timeout:g} s"
    if isinstance(error, AnswerTooLarge | ValueError):
        return str(error)
    if isinstance(error, SSL.Error):
        return "the TLS handshake failed: the issuer's certificate is not trusted (give the CA)"
    return f"{type(error).__name__}: {error}"


def public_jwk(entry) -> dict | None:
    """The public members of a JWKS entry usable for signatures, or None (an encryption key, an unknown type)."""
    if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
        return None
    jwk = {name: entry[name] for name in PUBLIC_MEMBERS if name in entry}
    if "alg" in jwk and jwk["alg"] not in ALGORITHMS:
        return None  # e.g. Keycloak's RSA-OAEP key, or an HS* key that must never verify anything
    if not isinstance(jwk.get("kid", ""), str):
        return None
    family = jwk.get("crv") if jwk.get("kty") == "EC" else jwk.get("kty")
    algorithm = jwk.get("alg") or DEFAULT_ALGORITHM.get(str(family))
    if algorithm is None or not fits(jwk, algorithm):
        return None
    try:
        jwt.PyJWK(jwk, algorithm=algorithm)
    except Exception:  # a malformed key: PyJWT's message would quote it
        return None
    return jwk


def fits(jwk: dict, algorithm: str) -> bool:
    """Whether a key may check a signature made with `algorithm`: the RS256-header-on-an-EC-key kind of confusion."""
    kty, curves = ALGORITHMS[algorithm]
    return (
        jwk.get("kty") == kty
        and (curves is None or jwk.get("crv") in curves)
        and jwk.get("alg", algorithm) == algorithm
    )


def claim_at(claims: dict, path: str):
    """The value at a dotted path (`realm_access.roles`), None where any step is missing."""
    value = claims
    for step in path.split("."):
        if not isinstance(value, dict) or step not in value:
            return None
        value = value[step]
    return value


def roles_in(value) -> list[str]:
    """Roles as a list of strings (Keycloak) or a space-separated string (OAuth's `scope`); anything else: none."""
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [role for role in value if isinstance(role, str)]
    return []


class OidcVerifier:
    """Identifies requests by access tokens that `issuer` signed for `audience`.

    `jwks_url` empty: discovered from `{issuer}/.well-known/openid-configuration`. `roles_claim` is a dotted path
    to the roles; `role_scopes` maps a role to the scope it grants (by default a role named like a scope grants
    it). `leeway` is the clock skew allowed on exp/nbf/iat, `refresh` how often the keys are refetched in the
    background, `min_refetch` the least time between fetches an unknown `kid` may cause (so a flood of forged
    kids cannot make us hammer the issuer). `http` is an HttpClient (for a private CA); the default trusts the
    system's CAs.
    """

    def __init__(
        self,
        reactor,
        *,
        issuer: str,
        audience: str,
        jwks_url: str = "",
        roles_claim: str = "realm_access.roles",
        role_scopes: dict[str, str] | None = None,
        leeway: float = 30.0,
        refresh: float = 300.0,
        http: HttpClient | None = None,
        timeout: float = 10.0,
        min_refetch: float = 10.0,
    ):
        role_scopes = DEFAULT_ROLE_SCOPES if role_scopes is None else dict(role_scopes)
        for url, what in ((issuer, "issuer"), (jwks_url, "JWKS URL")):
            parts = urlsplit(url)
            if (url or what == "issuer") and (parts.scheme not in ("http", "https") or not parts.hostname):
                raise ValueError(
                    f"the OIDC {what} {url!r} is not an http(s) URL with a host, e.g. https://sso/realms/x"
                )
        if not audience:
            raise ValueError(
                "the OIDC audience is empty: expected the client id the tokens are issued for, e.g. tomaat"
            )
        if not roles_claim or "" in roles_claim.split("."):
            raise ValueError(f"the roles claim {roles_claim!r} is not a dotted path, e.g. realm_access.roles")
        unknown = sorted(set(role_scopes.values()) - set(SCOPES))
        if unknown:
            raise ValueError(f"role_scopes maps to unknown scopes {unknown}: expected some of {', '.join(SCOPES)}")
        if leeway < 0 or refresh <= 0 or timeout <= 0 or min_refetch < 0:
            raise ValueError("leeway and min_refetch must be >= 0 s, refresh and timeout > 0 s")
        self.reactor = reactor
        self.issuer = issuer
        self.audience = audience
        self.configured_jwks_url = jwks_url
        self.roles_claim = roles_claim
        self.role_scopes = role_scopes
        self.leeway = leeway
        self.refresh = refresh
        self.timeout = timeout
        self.min_refetch = min_refetch
        self.owns_http = http is None
        self.http = http if http is not None else HttpClient(reactor, connect_timeout=timeout)
        self.jwks_url = jwks_url  # discovered on the first fetch when not given
        self.keys: dict[str, list[dict]] = {}  # by kid ("" for keys without one)
        self.loaded = False  # whether any fetch ever succeeded
        self.fetches = 0
        self.last_fetch = float("-inf")
        self.fetching: defer.Deferred | None = None
        self.waiters: list[defer.Deferred] = []
        self.loop: task.LoopingCall | None = None
        self.stopped = False

    def describe(self) -> dict:
        return {"issuer": self.issuer, "audience": self.audience}

    async def start(self) -> None:
        """Fetch the keys once (a failure is logged, not raised: the issuer may come up later), then keep them
        fresh every `refresh` seconds."""
        await self.refetch()
        if not self.loaded:
            log.warning("OIDC: no signing keys from %s yet; tokens are answered 503 until it is reachable", self.issuer)
        self.loop = task.LoopingCall(self.refetch)
        self.loop.clock = self.reactor
        self.loop.start(self.refresh, now=False)

    def stop(self) -> defer.Deferred:
        """Stop refreshing and drop a fetch in flight; the keys already known keep working."""
        self.stopped = True
        if self.loop is not None and self.loop.running:
            self.loop.stop()
        if self.fetching is not None:
            self.fetching.cancel()
        return self.http.close() if self.owns_http else defer.succeed(None)

    # ---- keys --------------------------------------------------------------------------------------

    def refetch(self) -> defer.Deferred:
        """Fires (never fails) when a fetch ends: the one in flight if any, so concurrent callers share it."""
        waiter: defer.Deferred = defer.Deferred()
        if self.stopped:
            waiter.callback(None)
            return waiter
        self.waiters.append(waiter)
        if self.fetching is None:
            self.last_fetch = self.reactor.seconds()
            fetch = defer.Deferred.fromCoroutine(self._fetch())
            if not fetch.called:  # a fetch that failed at once has already fired its waiters
                self.fetching = fetch
        return waiter

    async def _fetch(self) -> None:
        url = self.jwks_url or self.issuer
        try:
            self.fetches += 1
            if not self.jwks_url:
                url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
                self.jwks_url = self._jwks_uri(await self._get_json(url))
                url = self.jwks_url
            keys = self._parse_jwks(await self._get_json(url))
        except Exception as error:  # every failure keeps the keys we have; a CancelledError is stop()
            if not self.configured_jwks_url:
                self.jwks_url = ""  # discover again next time: the issuer may have moved its keys
            if not self.stopped:
                log.warning(
                    "OIDC: could not fetch the signing keys from %s: %s", url, describe_failure(error, self.timeout)
                )
        else:
            self.keys, self.loaded = keys, True
            log.info("OIDC: %d signing key(s) from %s", sum(map(len, keys.values())), url)
        finally:
            self.fetching = None
            waiters, self.waiters = self.waiters, []
            for waiter in waiters:
                if not waiter.called:
                    waiter.callback(None)

    async def _get_json(self, url: str):
        status, body = await self.http.get(
            url, timeout=self.timeout, limit=ANSWER_LIMIT, headers={b"Accept": [b"application/json"]}
        )
        if status != 200:
            raise ValueError(f"HTTP {status}, expected 200")
        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            raise ValueError("the answer is not JSON") from None

    def _jwks_uri(self, configuration) -> str:
        if not isinstance(configuration, dict):
            raise ValueError("the openid-configuration is not a JSON object")
        if configuration.get("issuer") != self.issuer:
            raise ValueError(
                f"the openid-configuration names another issuer, expected exactly {self.issuer} (check the realm URL, "
                "the trailing slash and Keycloak's hostname setting)"
            )
        uri = configuration.get("jwks_uri")
        parts = urlsplit(uri) if isinstance(uri, str) else None
        if not isinstance(uri, str) or parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("the openid-configuration has no http(s) jwks_uri")
        return uri

    @staticmethod
    def _parse_jwks(document) -> dict[str, list[dict]]:
        entries = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(entries, list):
            raise ValueError('the JWKS is not a JSON object with a "keys" list')
        keys: dict[str, list[dict]] = {}
        for jwk in filter(None, map(public_jwk, entries)):
            keys.setdefault(jwk.get("kid", ""), []).append(jwk)
        if not keys:
            raise ValueError("the JWKS has no signing key of an accepted type (RSA, EC, OKP)")
        return keys

    def _find(self, kid: str, algorithm: str) -> dict | None:
        """The key for a token, None when its kid is unknown; 401 when the kid names a key of another type.
        A token without a kid (some small issuers) may use the one key that fits."""
        candidates = self.keys.get(kid, []) if kid else [jwk for group in self.keys.values() for jwk in group]
        fitting = [jwk for jwk in candidates if fits(jwk, algorithm)]
        if len(fitting) == 1:
            return fitting[0]
        if fitting:
            raise invalid(f"{len(fitting)} of the issuer's keys fit the token's kid and algorithm: expected one kid")
        if not kid and self.loaded:
            raise invalid(f"the token names no key (kid) and the issuer has no {algorithm} key: expected a kid")
        if candidates:
            raise invalid(f"the token's algorithm {algorithm} does not fit the issuer's key it names (kid)")
        return None

    async def _key(self, kid: str, algorithm: str) -> dict:
        jwk = self._find(kid, algorithm)
        if jwk is None and (self.fetching is not None or self.reactor.seconds() - self.last_fetch >= self.min_refetch):
            await self.refetch()  # perhaps a rotated key
            jwk = self._find(kid, algorithm)
        if jwk is not None:
            return jwk
        if not self.loaded:
            raise Unavailable(
                f"the OIDC issuer {self.issuer} could not be reached for its signing keys: try again later"
            )
        raise invalid("the token is signed with a key the issuer does not publish (unknown kid)")

    # ---- tokens ------------------------------------------------------------------------------------

    def _algorithm(self, token: str) -> tuple[str, str]:
        """The header's (alg, kid), refused before any key is used."""
        if not isinstance(token, str) or not token:
            raise invalid("no token: expected a JWT access token from the OIDC issuer")
        if len(token) > TOKEN_LIMIT:
            raise invalid(f"the token is longer than {TOKEN_LIMIT} characters: expected a JWT access token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise invalid("the token is not a JWT: expected header.payload.signature in base64url") from None
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or not algorithm:
            raise invalid("the token's header names no algorithm (alg)")
        if algorithm.lower() == "none":
            raise invalid("unsigned tokens (alg 'none') are refused: expected a token signed by the issuer")
        if algorithm.upper().startswith("HS"):
            named = algorithm if algorithm in ("HS256", "HS384", "HS512") else "HS*"
            raise invalid(f"symmetric {named} tokens are refused: expected the issuer's public-key signature")
        if algorithm not in ALGORITHMS:
            raise invalid(f"the token's algorithm is not accepted: expected one of {', '.join(ALGORITHMS)}")
        kid = header.get("kid", "")
        if not isinstance(kid, str):
            raise invalid("the token's key id (kid) is not a string")
        return algorithm, kid

    def _claims(self, token: str, jwk: dict, algorithm: str) -> dict:
        try:
            return jwt.decode(
                token,
                key=jwt.PyJWK(jwk, algorithm=algorithm),
                algorithms=[algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": REQUIRED_CLAIMS, "enforce_minimum_key_length": True},
            )
        except jwt.InvalidSignatureError:
            raise invalid("the token's signature does not verify with the issuer's key") from None
        except jwt.ExpiredSignatureError:
            raise invalid("the token has expired: expected a fresh one from the issuer") from None
        except jwt.ImmatureSignatureError:
            raise invalid(
                f"the token is not valid yet (nbf or iat past our clock by more than {self.leeway:g} s)"
            ) from None
        except jwt.MissingRequiredClaimError as error:
            raise invalid(f"the token lacks the claim '{error.claim}': expected {', '.join(REQUIRED_CLAIMS)}") from None
        except jwt.InvalidIssuerError:
            raise invalid(f"the token is from another issuer: expected {self.issuer}") from None
        except jwt.InvalidAudienceError:
            raise invalid(f"the token is not meant for this service: expected the audience {self.audience}") from None
        except jwt.InvalidKeyError:
            raise invalid("the issuer's key cannot check this token (too short, or of another type)") from None
        except jwt.PyJWTError:
            raise invalid("the token is malformed: a claim has the wrong type or the payload is not JSON") from None

    async def identify(self, token: str) -> Identity:
        algorithm, kid = self._algorithm(token)
        claims = self._claims(token, await self._key(kid, algorithm), algorithm)
        kind = claims.get("typ")
        if isinstance(kind, str) and kind.lower() not in ACCESS_TOKEN_TYPES:
            raise invalid("the token is not an access token (an ID or refresh token?): expected typ Bearer")
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise invalid("the token's subject (sub) is empty: expected the user's id")
        username = claims.get("preferred_username")
        roles = roles_in(claim_at(claims, self.roles_claim))
        return Identity(
            name="oidc:" + (username if isinstance(username, str) and username else subject),
            method="oidc",
            scopes=frozenset(self.role_scopes[role] for role in roles if role in self.role_scopes),
            owner="oidc:" + subject,
        )
