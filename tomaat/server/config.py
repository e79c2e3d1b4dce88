"""The prediction server's settings: what `TomaatService(config, app, ...)` and `tomaat serve` accept.

Upstream TOMAAT's config dict mixed settings with the service's description (name, modality, ...) and used
`host` for the public URL announced and `interface` for the address to listen on. Both old names are
accepted; the fields say what they are. Descriptions pass through to the service's metadata.
"""

from __future__ import annotations

import dataclasses
import os
from typing import ClassVar

from ..config import ConfigError, ListenConfig
from ..files import confined
from ..files.limits import DEFAULT_MAX_VOXELS

GiB = 1024**3
DESCRIPTION = ("name", "modality", "anatomy", "task", "description", "version")
MODEL_METADATA = ("licence", "citation", "intended_use", "disclaimer", "accuracy")


@dataclasses.dataclass(frozen=True)
class ServiceConfig(ListenConfig):
    port: int = 9000
    public_url: str = ""  # the base URL announced to registries (upstream's `host`); default: this machine's name
    state_dir: str = os.path.join(os.path.expanduser("~"), ".tomaat")
    threads: int = 8
    device: str = "auto"  # handed to the app's setup(): where to load weights ("auto": the framework's choice)
    announce: str = ""  # the registry's URL; empty: not announced
    api_key: str = ""
    announce_period: float = 1600.0  # well inside the registry's default expiry of 3600 s
    registry_fingerprint: str | None = None  # pin an https registry's self-signed certificate (v1 format)
    delayed_responses: bool = False
    response_ttl: float = 3600.0
    max_delayed_results: int = 256  # uncollected delayed results held at once; then 503 (0: no limit)
    max_delayed_bytes: int = 2 * GiB  # their answers' bytes; a result past it is kept as a 507 error (0: none)
    volume_ttl: float = 600.0  # seconds a stored volume (POST /volumes) is kept after its last use (0: no store)
    max_stored_bytes: int = 2 * GiB  # decoded bytes of stored volumes at once; then 507 (0: no limit)
    max_stored_volumes: int = 256  # stored volumes at once; then 507 (0: no limit)
    # Limits against heavy and hostile traffic (docs/security.md); 0 turns a limit off where noted.
    max_voxels: int = DEFAULT_MAX_VOXELS  # per image, read from its header before anything is allocated
    max_decoded_bytes: int = 4 * GiB  # one request's inputs once decoded, charged from their headers; then 413
    max_decoded_total: int = 8 * GiB  # all requests' decoded inputs at once; then 503 (0: none)
    max_points: int = 100_000  # per fiducials input; then 413
    max_transform_parameters: int = 10_000_000  # per transform input; then 413
    decoders: int = 2  # confined processes that decode NIfTI, NRRD and transform files (docs/security.md)
    decoder_memory: int = confined.DEFAULT_MEMORY  # address space each decoder may add once loaded
    decode_timeout: float = confined.DEFAULT_TIMEOUT  # seconds one file may take to decode; then 415
    max_fields: int = 256  # form fields per request
    max_queue: int = 64  # requests waiting for a worker thread; beyond it 503 + Retry-After (0: unbounded)
    max_pending_bytes: int = 4 * GiB  # bodies of 1 MiB+ held at once (received, queued, in work); then 503 (0: none)
    app_timeout: float = 600.0  # seconds from the app's first step to its answer; then 504 (0: none)
    shutdown_grace: float = 30.0  # seconds SIGTERM waits for requests in progress before exiting

    ALIASES: ClassVar[dict[str, str]] = {"host": "public_url", "interface": "listen_address"}
    PASSED_THROUGH: ClassVar[frozenset[str]] = frozenset(DESCRIPTION + MODEL_METADATA)
    POSITIVE: ClassVar[frozenset[str]] = frozenset({"announce_period", "response_ttl"})
    RANGES: ClassVar[dict] = {
        **ListenConfig.RANGES,
        "threads": (1, None),
        "decoders": (1, None),
        **{
            name: (0, None)
            for name in (
                "max_delayed_results", "max_delayed_bytes", "volume_ttl", "max_stored_bytes", "max_stored_volumes",
                "max_voxels", "max_decoded_bytes", "max_decoded_total",
                "max_points", "max_transform_parameters", "decoder_memory", "decode_timeout", "max_fields",
                "max_queue", "max_pending_bytes", "app_timeout", "shutdown_grace",
            )
        },
    }  # fmt: skip

    @classmethod
    def build(cls, *sources):
        cleaned = []
        for source in sources:
            source = dict(source or {})
            if source.get("announce") is True:
                raise ConfigError("'announce' needs the registry's URL (e.g. https://registry:8001), not True")
            if source.get("announce") is False:  # upstream's way of saying "not announced"
                source["announce"] = ""
            cleaned.append(source)
        return super().build(*cleaned)

    def check(self) -> None:
        super().check()
        if self.announce and not self.api_key.strip():
            raise ConfigError("announcing needs an api_key from the registry's operator")
        if self.public_url and not self.public_url.startswith(("http://", "https://")):
            raise ConfigError(f"'public_url' (upstream's 'host') is {self.public_url!r}; expected an http(s) URL")

    @property
    def upload_limit(self) -> int:
        """The largest body accepted: a body larger than the pending budget could never be taken in."""
        limit, pending = self.max_body_bytes, self.max_pending_bytes
        return min(limit, pending) if pending else limit


def described(app, *sources) -> dict:
    """The service's description and model metadata: the app's attributes, then any config dict's keys."""
    stated = {key: getattr(app, key) for key in DESCRIPTION + MODEL_METADATA if hasattr(app, key)}
    for source in sources:
        stated.update({k: v for k, v in (source or {}).items() if k in DESCRIPTION + MODEL_METADATA and v is not None})
    return stated
