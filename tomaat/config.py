"""Typed, frozen configuration: built once from a config dict and the command line, checked in one place.

A service reads `config.port`, never `config["port"]`: a misspelt setting is an AttributeError in our code
and a named error for an operator, not a silent default. Each service's settings are a dataclass of its own
(`tomaat/server/config.py`, `tomaat/registry/config.py`) on this base, which knows how to merge sources,
accept the old names (upstream TOMAAT's `host` and `interface`), coerce what a JSON file or the command line
gives, and refuse a value with a message that names the key and what it expects.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import typing
from collections.abc import Mapping
from typing import Any, ClassVar

import click

log = logging.getLogger("tomaat")


class ConfigError(ValueError):
    """A setting no service could run with; raised before anything listens."""


def setting(
    default,
    help: str = "",
    *,
    low: float | None = None,
    high: float | None = None,
    positive: bool = False,
    off: str = "",
    shown: str = "",
) -> Any:
    """A setting, declared once: its default, what it does (the command line's help), the values it may take
    (`low`/`high` bounds, or `positive`), what 0 means when it turns the setting off (`off`), and how its default
    is shown when its number alone would mislead (`shown`). Checks and command-line options are made from it."""
    metadata = {"help": help, "low": low, "high": high, "positive": positive, "off": off, "shown": shown}
    return dataclasses.field(default=default, metadata=metadata)


def option_help(field: dataclasses.Field) -> str:
    """A setting's help with its default (and what 0 means), as an option's help text shows it."""
    meta = field.metadata
    default = meta.get("shown") or _shown(field.default)
    off = f"; 0: {meta['off']}" if meta.get("off") else ""
    return f"{meta.get('help', '')} (default {default}{off})."


def _shown(value) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value) if value not in ("", None) else "none"
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if isinstance(value, int) and value >= size and value % size == 0:
            return f"{value // size} {unit}"
    return str(value) if isinstance(value, int) else f"{value:g}"


@dataclasses.dataclass(frozen=True)
class Config:
    # Old names -> field names; subclasses extend it.
    ALIASES: ClassVar[dict[str, str]] = {}
    # Keys accepted and kept aside (e.g. metadata in an upstream-style config dict), not settings.
    PASSED_THROUGH: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def build(cls, *sources: Mapping[str, Any] | None):
        """The config from later sources over earlier ones; a None value means "not given" (a CLI default)."""
        names = {f.name for f in dataclasses.fields(cls)}
        merged: dict[str, Any] = {}
        unknown = []
        for source in sources:
            for key, value in (source or {}).items():
                if value is None:
                    continue
                name = cls.ALIASES.get(key, key)
                if name in names:
                    merged[name] = value
                elif key not in cls.PASSED_THROUGH:
                    unknown.append(key)
        if unknown:
            log.warning("ignoring unknown setting(s) %s", ", ".join(repr(k) for k in sorted(set(unknown))))
        hints = typing.get_type_hints(cls)
        config = cls(**{name: _coerce(name, value, hints[name]) for name, value in merged.items()})
        config.check()
        return config

    def replace(self, **changes):
        """A new config with some settings changed (e.g. by the command line), checked again."""
        return type(self).build(dataclasses.asdict(self), changes)

    def check(self) -> None:
        """Each setting within what its declaration allows (setting())."""
        for field in dataclasses.fields(self):
            meta, value = field.metadata, getattr(self, field.name)
            if meta.get("positive") and not value > 0:
                raise ConfigError(f"setting {field.name!r} is {value!r}; expected a positive number")
            low, high = meta.get("low"), meta.get("high")
            if (low is not None and value < low) or (high is not None and value > high):
                bounds = f"at least {low:g}" if high is None else f"from {low:g} to {high:g}"
                raise ConfigError(f"setting {field.name!r} is {value!r}; expected {bounds}")


@dataclasses.dataclass(frozen=True)
class ListenConfig(Config):
    """What every service of ours sets to listen and to guard its connections (tomaat/net/daemon.py, tomaat/net/web.py)."""

    port: int = setting(0, "Port to listen on; 0: any free port", low=0, high=65535)
    listen_address: str = setting("0.0.0.0", "Address to listen on")
    tls: bool = True
    cert: str | None = None
    key: str | None = None
    state_dir: str = ""
    max_body_bytes: int = setting(2 * 1024**3, "Largest request body; else 413", low=0)
    idle_timeout: float = setting(60.0, "Seconds a connection may send nothing before it is closed", low=0)
    receive_timeout: float = setting(
        900.0, "Seconds from connect (or the last answer) to a request's last body byte; else 408", low=0
    )
    max_connections: int = setting(
        1000, "Connections held at once; at the cap the oldest idle one is closed", low=0, off="no limit"
    )
    max_connections_per_address: int = setting(
        256, "Connections held at once per client address", low=0, off="no limit"
    )

    def check(self) -> None:
        super().check()
        if bool(self.cert) != bool(self.key):
            raise ConfigError("'cert' and 'key' go together: give both, or neither for a self-signed certificate")


def _coerce(name: str, value, hint):
    """The value as the field's type: numbers from text, but never a bool for a number or text for a bool."""
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    kind = args[0]
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"setting {name!r} is {value!r}; expected true or false")
    if kind in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"setting {name!r} is {value!r}; expected a number")
        try:
            number = float(value) if kind is float else int(value)
        except (TypeError, ValueError):
            raise ConfigError(
                f"setting {name!r} is {value!r}; expected {'a number' if kind is float else 'a whole number'}"
            ) from None
        if kind is float and not math.isfinite(number):
            raise ConfigError(f"setting {name!r} is {value!r}; expected a finite number")
        return number
    if kind is str:
        if isinstance(value, (dict, list, tuple, bool)):
            raise ConfigError(f"setting {name!r} is {value!r}; expected text")
        return str(value)
    return value


def refuse_host(context, parameter, value):
    """`--host` meant the address to listen on, while upstream's config key `host` is the URL announced: one name,
    two meanings. It is refused, naming both options, rather than guessed."""
    if value is not None:
        raise click.UsageError(
            "--host is gone: say --listen-address for the address to listen on (e.g. 127.0.0.1), or, for a prediction server, --public-url "
            "for the URL clients reach the service at (upstream's config key 'host')"
        )
