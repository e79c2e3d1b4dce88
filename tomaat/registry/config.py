"""The registry's settings: what `RegistryService(...)` and `tomaat-registry serve` accept."""

from __future__ import annotations

import dataclasses
import os
from typing import ClassVar

from ..config import ListenConfig

STATE_DIR = os.path.join(os.path.expanduser("~"), ".tomaat", "registry")


@dataclasses.dataclass(frozen=True)
class RegistryConfig(ListenConfig):
    port: int = 8001
    db: str = os.path.join(STATE_DIR, "registry.sqlite3")
    state_dir: str = STATE_DIR
    expiry: float = 3600.0  # seconds an announcement lives without renewal (upstream's value)
    max_body_bytes: int = 64 * 1024
    max_services_per_key: int = 100  # live announcements one key may hold (0: no limit)
    auth_failures: int = 10  # failed authentications per client address per auth_window, then 429 (0: no limit)
    auth_window: float = 60.0
    receive_timeout: float = 60.0  # seconds from connect (or the last answer) to a request's last body byte; 408

    ALIASES: ClassVar[dict[str, str]] = {"interface": "listen_address"}
    POSITIVE: ClassVar[frozenset[str]] = frozenset({"expiry"})
    RANGES: ClassVar[dict] = {
        **ListenConfig.RANGES,
        "max_services_per_key": (0, None),
        "auth_failures": (0, None),
        "auth_window": (0, None),
    }
