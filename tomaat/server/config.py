"""The prediction server's settings: what `TomaatService(config, app, ...)` and `tomaat serve` accept.

Upstream TOMAAT's config dict mixed settings with the service's description (name, modality, ...) and used
`host` for the public URL announced and `interface` for the address to listen on. Both old names are
accepted; the fields say what they are. Descriptions pass through to the service's metadata.
"""

from __future__ import annotations

import dataclasses
import os
from typing import ClassVar

from ..access.identity import SCOPES
from ..access.network import NetworkError, parse_networks
from ..config import ConfigError, ListenConfig, setting
from ..files import confined
from ..files.limits import DEFAULT_MAX_VOXELS

GiB = 1024**3
DESCRIPTION = ("name", "modality", "anatomy", "task", "description", "version")
MODEL_METADATA = ("licence", "citation", "intended_use", "disclaimer", "accuracy")


@dataclasses.dataclass(frozen=True)
class ServiceConfig(ListenConfig):
    port: int = setting(9000, "Port to listen on; 0: any free port", low=0, high=65535)
    public_url: str = setting(
        "", "Base URL clients reach this service at, as announced (upstream's `host`)", shown="this machine's name"
    )
    state_dir: str = os.path.join(os.path.expanduser("~"), ".tomaat")
    threads: int = setting(8, "Worker threads", low=1)
    device: str = setting(
        "auto", "Handed to the app's setup(), e.g. cuda:1 or cpu", shown="auto: the framework's choice"
    )
    announce: str = ""  # the registry's URL; empty: not announced
    api_key: str = ""
    announce_period: float = setting(1600.0, "Seconds between re-announcements", positive=True)
    registry_fingerprint: str | None = setting(
        None, "Trust an https registry whose certificate has this SHA-256 fingerprint", shown="a CA-signed registry"
    )
    delayed_responses: bool = False
    response_ttl: float = setting(3600.0, "Seconds an uncollected delayed result is kept", positive=True)
    max_delayed_results: int = setting(256, "Uncollected delayed results held at once; then 503", low=0, off="no limit")
    max_delayed_bytes: int = setting(
        2 * GiB, "Bytes of delayed answers held; a result past it is kept as a 507", low=0, off="no limit"
    )
    volume_ttl: float = setting(
        600.0, "Seconds a stored volume (POST /volumes) is kept after its last use", low=0, off="no store"
    )
    max_stored_bytes: int = setting(2 * GiB, "Most decoded bytes of stored volumes, then 507", low=0, off="no limit")
    max_stored_volumes: int = setting(256, "Most stored volumes at once, then 507", low=0, off="no limit")
    # Limits against heavy and hostile traffic (docs/security.md).
    max_voxels: int = setting(
        DEFAULT_MAX_VOXELS, "Largest image, read from its header before anything is allocated", low=0, shown="1024^3"
    )
    max_decoded_bytes: int = setting(
        4 * GiB, "Most bytes one request's inputs decode to, charged from their headers; then 413", low=0
    )
    max_decoded_total: int = setting(
        8 * GiB, "Most decoded bytes of all requests at once; then 503", low=0, off="no limit"
    )
    max_points: int = setting(100_000, "Most points per fiducials input; then 413", low=0)
    max_transform_parameters: int = setting(10_000_000, "Most parameters per transform input; then 413", low=0)
    decoders: int = setting(2, "Confined processes decoding NIfTI, NRRD and transform files", low=1)
    decoder_memory: int = setting(confined.DEFAULT_MEMORY, "Address space each decoder may add once loaded", low=0)
    decode_timeout: float = setting(confined.DEFAULT_TIMEOUT, "Seconds one file may take to decode; then 415", low=0)
    max_fields: int = setting(256, "Most form fields per request", low=0)
    max_queue: int = setting(64, "Most requests waiting for a worker thread, then 503", low=0, off="no limit")
    max_pending_bytes: int = setting(
        4 * GiB, "Most body bytes (of 1 MiB+ bodies) held at once, then 503", low=0, off="no limit"
    )
    app_timeout: float = setting(600.0, "Seconds from the app's first step to its answer, then 504", low=0, off="none")
    shutdown_grace: float = setting(30.0, "Seconds SIGTERM waits for requests in progress", low=0)
    # Who may use the service (docs/security.md): none of these, and no token in state_dir, leaves it open.
    client_ca: str = setting("", "PEM file of the CAs whose client certificates identify clients (mutual TLS)")
    client_cert_scopes: str = setting("predict", "Scopes a verified client certificate grants, comma-separated")
    oidc_issuer: str = setting("", "OIDC issuer whose access tokens identify clients (e.g. a Keycloak realm's URL)")
    oidc_audience: str = setting("", "The audience (aud) OIDC access tokens must be issued for")
    oidc_jwks_url: str = setting("", "Where the issuer's signing keys are", shown="the issuer's discovery")
    oidc_ca: str = setting("", "PEM file of the CA that signed the issuer's certificate", shown="the system's CAs")
    oidc_roles_claim: str = setting(
        "realm_access.roles", "Dotted path of the roles in an OIDC token; a role named like a scope grants it"
    )
    allow_from: str = setting("", "Client networks identified by address alone (CIDR, comma-separated)")
    network_scopes: str = setting("predict", "Scopes a client in allow_from gets, comma-separated")
    open_info: bool = True  # /interface, /info and the page answer anyone; /health always does
    max_per_identity: int | None = setting(
        None, "Requests one identity may have in flight and queued, then 429", off="no cap",
        shown="one fewer than the worker threads when access rules are set, else no cap",
    )  # fmt: skip
    audit_log: str = setting("", "File the audit log is appended to (rotated beside it)", shown="no audit log")
    audit_fsync: str = setting("always", "When audit records reach the disk: always, interval (each second) or never")
    audit_rotate_bytes: int = setting(64 * 1024**2, "Size at which the audit log is rotated", low=1024)
    audit_required: bool = True  # a request that cannot be recorded is refused with 503

    ALIASES: ClassVar[dict[str, str]] = {"host": "public_url", "interface": "listen_address"}
    PASSED_THROUGH: ClassVar[frozenset[str]] = frozenset(DESCRIPTION + MODEL_METADATA)

    @classmethod
    def build(cls, *sources):
        cleaned = []
        for source in sources:
            source = dict(source or {})
            if source.get("announce") is True:
                raise ConfigError("'announce' needs the registry's URL (e.g. https://registry:8001), not True")
            if source.get("announce") is False:  # upstream's way of saying "not announced"
                source["announce"] = ""
            for key in ("allow_from", "client_cert_scopes", "network_scopes"):  # a JSON list, as comma-separated text
                if isinstance(source.get(key), (list, tuple)):
                    source[key] = ",".join(str(item) for item in source[key])
            cleaned.append(source)
        return super().build(*cleaned)

    def check(self) -> None:
        super().check()
        if self.announce and not self.api_key.strip():
            raise ConfigError("announcing needs an api_key from the registry's operator")
        if self.max_per_identity is not None and self.max_per_identity < 0:
            raise ConfigError(f"setting 'max_per_identity' is {self.max_per_identity}; expected at least 0")
        if self.audit_fsync not in ("always", "interval", "never"):
            raise ConfigError(f"setting 'audit_fsync' is {self.audit_fsync!r}; expected always, interval or never")
        for key in ("client_cert_scopes", "network_scopes"):
            unknown = sorted(set(scope_list(getattr(self, key))) - set(SCOPES))
            if unknown:
                raise ConfigError(
                    f"setting {key!r} names {', '.join(unknown)}; expected scopes among {', '.join(SCOPES)}"
                )
        if bool(self.oidc_issuer) != bool(self.oidc_audience):
            raise ConfigError("'oidc_issuer' and 'oidc_audience' go together: tokens are checked for both")
        if self.client_ca and not self.tls:
            raise ConfigError("'client_ca' needs TLS: client certificates are presented in the TLS handshake")
        try:
            parse_networks([self.allow_from])
        except NetworkError as error:
            raise ConfigError(str(error)) from None
        if self.public_url and not self.public_url.startswith(("http://", "https://")):
            raise ConfigError(f"'public_url' (upstream's 'host') is {self.public_url!r}; expected an http(s) URL")

    @property
    def upload_limit(self) -> int:
        """The largest body accepted: a body larger than the pending budget could never be taken in."""
        limit, pending = self.max_body_bytes, self.max_pending_bytes
        return min(limit, pending) if pending else limit


def scope_list(text: str) -> frozenset[str]:
    return frozenset(part.strip() for part in text.split(",") if part.strip())


def described(app, *sources) -> dict:
    """The service's description and model metadata: the app's attributes, then any config dict's keys."""
    stated = {key: getattr(app, key) for key in DESCRIPTION + MODEL_METADATA if hasattr(app, key)}
    for source in sources:
        stated.update({k: v for k, v in (source or {}).items() if k in DESCRIPTION + MODEL_METADATA and v is not None})
    return stated
