"""The registry's settings: what `RegistryService(...)` and `tomaat-registry serve` accept."""

from __future__ import annotations

import dataclasses
import os
from typing import ClassVar

from ..config import ListenConfig, setting

STATE_DIR = os.path.join(os.path.expanduser("~"), ".tomaat", "registry")


@dataclasses.dataclass(frozen=True)
class RegistryConfig(ListenConfig):
    port: int = setting(8001, "Port to listen on; 0: any free port", low=0, high=65535)
    db: str = os.path.join(STATE_DIR, "registry.sqlite3")
    state_dir: str = STATE_DIR
    expiry: float = setting(3600.0, "Seconds an announcement lives without renewal (upstream's value)", positive=True)
    max_body_bytes: int = setting(64 * 1024, "Largest request body; else 413", low=0)
    max_services_per_key: int = setting(100, "Live announcements one key may hold", low=0, off="no limit")
    private: bool = setting(
        False, "Require a registry key (Authorization: Bearer) to read /discover and the front page", shown="off"
    )
    auth_failures: int = setting(
        10, "Failed authentications per client address per auth_window, then 429", low=0, off="no limit"
    )
    auth_window: float = setting(60.0, "Seconds over which failed authentications are counted", low=0)
    receive_timeout: float = setting(
        60.0, "Seconds from connect (or the last answer) to a request's last body byte; else 408", low=0
    )

    ALIASES: ClassVar[dict[str, str]] = {"interface": "listen_address"}
