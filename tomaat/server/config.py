"""The prediction server's settings: what `TomaatService(config, app, ...)` and `tomaat serve` accept.

Upstream TOMAAT's config dict mixed settings with the service's description (name, modality, ...) and used
`host` for the public URL announced and `interface` for the address to listen on. Both old names are
accepted; the fields say what they are. Descriptions pass through to the service's metadata.
"""

from __future__ import annotations

import dataclasses
import os
from typing import ClassVar

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
