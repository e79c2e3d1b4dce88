"""An identity, and the two ways a request without the right one is refused.

Every method (a client certificate, an OIDC token, a token the service issued, the client's network) ends in
the same `Identity`, so routes, ownership, fair shares and the audit log never ask how it was proved.
"""

from __future__ import annotations

import dataclasses

PREDICT, METRICS, ADMIN = "predict", "metrics", "admin"
SCOPES = (PREDICT, METRICS, ADMIN)
METHODS = ("certificate", "oidc", "token", "network")  # strongest first: the order they are tried in


@dataclasses.dataclass(frozen=True)
class Identity:
    """`name` is what logs and the audit log show (never a secret); `owner` keys what the identity owns (stored
    volumes, delayed results) and its fair share; `method` is how it was proved, or "open" on a server with no
    access rule."""

    name: str
    method: str
    scopes: frozenset[str]
    owner: str

    def may(self, scope: str) -> bool:
        return scope in self.scopes


def anyone() -> Identity:
    """A client of a route no rule guards: every scope; one owner for all, as before identities (stored volumes
    and delayed results are found by their unguessable ids); its fair share is counted per client address."""
    return Identity(name="anyone", method="open", scopes=frozenset(SCOPES), owner="")


class Refused(Exception):
    """Raised while identifying a request: answered with `status`, `message` in the JSON error shape, and
    `headers` (the 401's challenge)."""

    status = 401

    def __init__(self, message: str, headers: dict[bytes, bytes] | None = None):
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class Unauthenticated(Refused):
    """No identity, or credentials that prove none: 401 with a Bearer challenge (RFC 6750)."""

    def __init__(self, message: str, error: str = ""):
        challenge = 'Bearer realm="tomaat"' + (f', error="{error}"' if error else "")
        super().__init__(message, {b"WWW-Authenticate": challenge.encode("ascii")})


class Forbidden(Refused):
    """An identity without the scope a route needs: 403 naming the scope."""

    status = 403

    def __init__(self, identity: Identity, scope: str):
        super().__init__(
            f"{identity.name} may not do this: it needs the scope '{scope}' (it has: "
            f"{', '.join(sorted(identity.scopes)) or 'none'})",
            {b"WWW-Authenticate": f'Bearer realm="tomaat", error="insufficient_scope", scope="{scope}"'.encode()},
        )
