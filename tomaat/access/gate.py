"""The gate: which identity sent a request, and whether it may use the route it asks for.

Methods are tried strongest first (identity.METHODS): a verified client certificate, then a bearer token (an
OIDC access token when it is a JWT and an issuer is configured, else one the service issued), then the client's
network. Credentials that are presented and fail are refused (401), never passed over for a weaker method, so
a mistyped token is reported rather than silently served as "the network".

No rule at all leaves the service open, as before identities. Tokens in the state folder guard the scopes they
grant; a certificate authority, an OIDC issuer or a network rule guards every scope.
"""

from __future__ import annotations

from .identity import METHODS, SCOPES, Forbidden, Identity, Refused, Unauthenticated, anyone
from .network import network_identity

BEARER = b"bearer "


def bearer(request) -> str | None:
    """The bearer token of `Authorization`, or None; any other scheme is refused by name."""
    value = request.getHeader(b"Authorization")
    if value is None:
        return None
    if not value[: len(BEARER)].lower() == BEARER:
        scheme = value.split(b" ", 1)[0].decode("latin-1")[:20]
        raise Unauthenticated(f"the Authorization scheme {scheme!r} is not accepted; expected 'Bearer <token>'")
    token = value[len(BEARER) :].strip().decode("latin-1")
    if not token:
        raise Unauthenticated("the Authorization header holds no token; expected 'Bearer <token>'", "invalid_request")
    return token


def _is_jwt(token: str) -> bool:
    return token.count(".") == 2


def peer_host(request) -> str:
    return getattr(request.getClientAddress(), "host", "") or ""


class Access:
    def __init__(
        self,
        *,
        tokens=None,
        oidc=None,
        certificates: bool = False,
        certificate_scopes=frozenset({"predict"}),
        networks=(),
        network_scopes=frozenset({"predict"}),
    ):
        self.tokens = tokens  # tokens.TokenStore, or None
        self.oidc = oidc  # oidc.OidcVerifier, or None
        self.certificates = certificates
        self.certificate_scopes = frozenset(certificate_scopes)
        self.networks = tuple(networks)
        self.network_scopes = frozenset(network_scopes)

    @property
    def ruled(self) -> bool:
        """A rule that guards every scope: an issuer, a certificate authority or a network."""
        return bool(self.oidc or self.certificates or self.networks)

    def required(self) -> frozenset[str]:
        """The scopes that need an identity now (tokens can be created and revoked while the server runs)."""
        if self.ruled:
            return frozenset(SCOPES)
        return self.tokens.covered() if self.tokens is not None else frozenset()

    def methods(self) -> list[str]:
        present = {
            "certificate": self.certificates,
            "oidc": self.oidc is not None,
            "token": self.tokens is not None and bool(self.tokens.covered()),
            "network": bool(self.networks),
        }
        return [method for method in METHODS if present[method]]

    def describe(self) -> dict:
        """What /info says, so that clients know what to send (nothing secret)."""
        described: dict = {"methods": self.methods(), "required": sorted(self.required())}
        if self.oidc is not None:
            described["oidc"] = self.oidc.describe()
        return described

    def _certificate(self, request) -> Identity | None:
        if not self.certificates:
            return None
        from .certificates import peer_identity

        return peer_identity(request, self.certificate_scopes)

    def _token(self, token: str) -> Identity:
        found = self.tokens.identify(token) if self.tokens is not None else None
        if found is None:
            raise Unauthenticated("the bearer token is unknown, revoked or expired", "invalid_token")
        return found

    def early(self, request, scope: str | None) -> Refused | None:
        """Before the body is read (web.TimedRequest.gotLength): a request that cannot have the identity its route
        needs is refused without receiving its upload. Only what is decided at once is decided here: an OIDC
        token may need the issuer's keys fetched, so it is checked with the route."""
        if scope is None or scope not in self.required():
            return None
        try:
            token = bearer(request)
            if self._certificate(request) is not None:
                return None
            if token is not None:
                if self.oidc is not None and _is_jwt(token):
                    return None
                found = self._token(token)
                if not found.may(scope):
                    raise Forbidden(found, scope)
                return None
            if network_identity(self.networks, peer_host(request), self.network_scopes) is None:
                raise Unauthenticated(self.missing())
        except Refused as refused:
            return refused
        return None

    def missing(self) -> str:
        return f"this service needs an identity: {', '.join(self.methods()) or 'a token'} (docs/security.md)"

    async def _identity(self, request) -> Identity | None:
        found = self._certificate(request)
        if found is not None:
            return found
        token = bearer(request)
        if token is not None:
            if self.oidc is not None and _is_jwt(token):
                return await self.oidc.identify(token)
            return self._token(token)
        return network_identity(self.networks, peer_host(request), self.network_scopes)

    async def identify(self, request, scope: str) -> Identity:
        """The request's identity, allowed `scope`; raises Refused (401 or 403) otherwise."""
        if scope not in self.required():
            try:
                return await self._identity(request) or anyone()
            except Refused:
                return anyone()  # an open route: a stale token costs nothing
        found = await self._identity(request)
        if found is None:
            raise Unauthenticated(self.missing())
        if not found.may(scope):
            raise Forbidden(found, scope)
        return found
