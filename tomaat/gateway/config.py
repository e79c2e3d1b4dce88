"""The gateway's configuration file (JSON), checked whole at start so that a mistake is one line, not a later failure.

Addresses and AE titles are an operator's; they are checked only for shape (an AE title is at most 16
characters of DICOM's default repertoire, no backslash), so the messages can name what was wrong.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from urllib.parse import urlsplit

OUTPUTS = ("seg", "rtstruct", "sr")
MATCH_KEYS = ("modality", "series_description", "body_part", "calling_ae")


class ConfigError(ValueError):
    """The configuration cannot be used; the text says which setting and what was expected."""


@dataclass(frozen=True)
class Node:
    """A DICOM application entity: where results go, or who may send."""

    ae_title: str
    host: str
    port: int


@dataclass(frozen=True)
class Stow:
    """A DICOMweb service that results are stored in by STOW-RS.

    Credentials stay in files, read at each sending (a rotated token is picked up without a restart) and
    never copied into the configuration or a journal; TLS is checked against the system's CAs, as the
    PACS loop checks its PACS.
    """

    url: str
    user: str | None = None
    password_file: str | None = None
    token_file: str | None = None
    timeout: float = 300.0  # one sending: connecting, the upload and the answer together

    def headers(self) -> dict:
        from ..dicom.web import credentials

        if self.token_file:
            return credentials(token=_first_line(self.token_file))
        if self.user is not None:
            return credentials(self.user, _first_line(self.password_file) if self.password_file else "")
        return {}


@dataclass(frozen=True)
class Rule:
    name: str
    match: dict[str, tuple[str, ...]]  # key -> glob patterns (any may match), all keys must match
    server: str
    settings: dict[str, str]
    outputs: tuple[str, ...]
    send_to: dict[str, tuple[str, ...]]  # output -> "sender" or destinations' names, each sent the output
    fingerprint: str | None = None


@dataclass(frozen=True)
class Retry:
    attempts: int = 5
    first_delay: float = 2.0
    max_delay: float = 300.0

    def delay(self, attempt: int) -> float:
        """Seconds before try `attempt + 1` (attempt >= 1): doubling from first_delay, capped."""
        return min(self.max_delay, self.first_delay * 2 ** (attempt - 1))


@dataclass(frozen=True)
class Tls:
    certificate: str
    key: str
    ca: str  # the peers' certificate authority: both sides are verified


@dataclass(frozen=True)
class Config:
    ae_title: str
    host: str
    port: int
    spool: str
    spool_max_bytes: int
    quiet_seconds: float
    callers: dict[str, Node]
    destinations: dict[str, Node | Stow]
    rules: tuple[Rule, ...]
    unmatched: str = "drop"
    retry: Retry = field(default_factory=Retry)
    status_host: str = "127.0.0.1"
    status_port: int | None = None
    tls: Tls | None = None
    retention: float | None = None  # seconds a failed or held series stays in the spool; None: until removed


def _first_line(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.readline().rstrip("\r\n")


def _ae(value, where: str) -> str:
    if not isinstance(value, str) or not 1 <= len(value.strip()) <= 16 or "\\" in value or not value.isprintable():
        raise ConfigError(f"{where} {value!r}: expected an AE title of 1 to 16 printable characters, no backslash")
    if not value.isascii():
        raise ConfigError(f"{where} {value!r}: expected an AE title in ASCII")
    return value.strip()


def _port(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 65536:
        raise ConfigError(f"{where} {value!r}: expected a port number from 0 to 65535")
    return value


def _text(value, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where} {value!r}: expected a non-empty text")
    return value


def _number(value, where: str, low: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= low:
        raise ConfigError(f"{where} {value!r}: expected a number of at least {low:g}")
    return float(value)


def _node(value, where: str, port_needed: bool = True) -> Node:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected an object with ae_title, host and port")
    unknown = set(value) - {"ae_title", "host", "port"}
    if unknown:
        raise ConfigError(f"{where}: unknown setting {sorted(unknown)[0]!r}; expected ae_title, host and port")
    port = value.get("port")
    host = value.get("host")
    return Node(
        _ae(value.get("ae_title"), f"{where}.ae_title"),
        _text(host, f"{where}.host") if host is not None or port_needed else "",  # a caller without host: any
        _port(port, f"{where}.port") if port_needed or port is not None else 0,
    )


def _stow(value: dict, where: str, base: str) -> Stow:
    known = {"kind", "url", "user", "password_file", "token_file", "timeout"}
    unknown = set(value) - known
    if unknown:
        raise ConfigError(
            f"{where}: unknown setting {sorted(unknown)[0]!r}; expected some of {', '.join(sorted(known))}"
        )
    url = _text(value.get("url"), f"{where}.url").strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ConfigError(f"{where}.url {url!r}: expected a DICOMweb base URL, e.g. https://pacs.hospital/dicom-web")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            f"{where}.url: expected no credentials in the URL; give user and password_file, or token_file"
        )
    user, token = value.get("user"), value.get("token_file")
    if token is not None and (user is not None or "password_file" in value):
        raise ConfigError(f"{where}: give user and password_file (basic) or token_file (bearer), not both")
    if "password_file" in value and user is None:
        raise ConfigError(f"{where}.password_file: expected user beside it")
    files = {}
    for key in ("password_file", "token_file"):
        if value.get(key) is not None:
            path = os.path.join(base, _text(value[key], f"{where}.{key}"))
            try:
                _first_line(path)
            except (OSError, ValueError) as error:
                problem = error.strerror if isinstance(error, OSError) else "not text"
                raise ConfigError(
                    f"{where}.{key} {value[key]!r}: cannot be read ({problem}); expected a file whose first line is the {key.removesuffix('_file')}"
                ) from None
            files[key] = path
    return Stow(
        url=url,
        user=_text(user, f"{where}.user") if user is not None else None,
        timeout=_number(value.get("timeout", 300.0), f"{where}.timeout", 1),
        **files,
    )


def _destination(value, where: str, base: str) -> Node | Stow:
    if not isinstance(value, dict):
        return _node(value, where)
    kind = value.get("kind", "cstore")
    if kind == "stowrs":
        return _stow(value, where, base)
    if kind != "cstore":
        raise ConfigError(f'{where}.kind {kind!r}: expected "cstore" (ae_title, host, port) or "stowrs" (url)')
    return _node({k: v for k, v in value.items() if k != "kind"}, where)


def _send_to(value, outputs: list | None, where: str, destinations: dict) -> tuple[dict[str, tuple[str, ...]], list]:
    """(output -> destinations, outputs): one destination (or a list) for all outputs, or one per output."""

    def names(given, at: str) -> tuple[str, ...]:
        listed = [given] if isinstance(given, str) else given
        if not isinstance(listed, list) or not listed:
            raise ConfigError(f'{at} {given!r}: expected "sender", a destination\'s name, or a list of them')
        for name in listed:
            if name != "sender" and name not in destinations:
                raise ConfigError(
                    f'{at} {name!r}: expected "sender" or one of destinations ({", ".join(destinations) or "none declared"})'
                )
        return tuple(dict.fromkeys(listed))

    if isinstance(value, dict):
        if not value or set(value) - set(OUTPUTS):
            raise ConfigError(
                f"{where} {value!r}: expected an object of outputs ({', '.join(OUTPUTS)}) and where each goes"
            )
        routes = {kind: names(to, f"{where}.{kind}") for kind, to in value.items()}
        missing = [kind for kind in outputs or () if kind not in routes]
        if missing:
            raise ConfigError(
                f"{where}: output {missing[0]!r} is made but sent nowhere; expected it among send_to's keys"
            )
        return routes, outputs if outputs is not None else list(routes)
    outputs = outputs if outputs is not None else ["seg"]
    to = names(value, where)
    return {kind: to for kind in outputs if kind in OUTPUTS}, outputs


def _patterns(value, where: str) -> tuple[str, ...]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values or not all(isinstance(v, str) and v for v in values):
        raise ConfigError(f'{where} {value!r}: expected a pattern or a list of patterns (e.g. "CT", "*chest*")')
    return tuple(values)


def _rule(value, index: int, destinations: dict[str, Node | Stow]) -> Rule:
    where = f"rules[{index}]"
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected an object with match, server and outputs")
    known = {"name", "match", "server", "set", "outputs", "send_to", "fingerprint"}
    unknown = set(value) - known
    if unknown:
        raise ConfigError(f"{where}: unknown setting {sorted(unknown)[0]!r}; expected {', '.join(sorted(known))}")
    match = value.get("match", {})
    if not isinstance(match, dict) or set(match) - set(MATCH_KEYS):
        raise ConfigError(f"{where}.match {match!r}: expected an object with some of {', '.join(MATCH_KEYS)}")
    settings = value.get("set", {})
    if not isinstance(settings, dict) or not all(isinstance(k, str) for k in settings):
        raise ConfigError(f"{where}.set {settings!r}: expected an object of input names and values")
    outputs = value.get("outputs")
    if outputs is not None and (not isinstance(outputs, list) or not outputs or not set(outputs) <= set(OUTPUTS)):
        raise ConfigError(f"{where}.outputs {outputs!r}: expected a list of some of {', '.join(OUTPUTS)}")
    send_to, outputs = _send_to(value.get("send_to", "sender"), outputs, f"{where}.send_to", destinations)
    send_to = {kind: to for kind, to in send_to.items() if kind in outputs}
    server = _text(value.get("server"), f"{where}.server")
    if not server.startswith(("http://", "https://")):
        raise ConfigError(f"{where}.server {server!r}: expected a prediction server's http(s) URL")
    fingerprint = value.get("fingerprint")
    return Rule(
        name=str(value.get("name") or f"rule {index + 1}"),
        match={key: _patterns(v, f"{where}.match.{key}") for key, v in match.items()},
        server=server,
        settings={k: v if isinstance(v, str) else json.dumps(v) for k, v in settings.items()},
        outputs=tuple(dict.fromkeys(outputs)),
        send_to=send_to,
        fingerprint=_text(fingerprint, f"{where}.fingerprint") if fingerprint is not None else None,
    )


def parse(data: dict, base: str = ".") -> Config:
    """The configuration from its JSON object; relative paths are taken from `base` (the file's folder)."""
    if not isinstance(data, dict):
        raise ConfigError("the configuration: expected a JSON object")
    known = {
        "ae_title", "listen", "spool", "quiet_seconds", "callers", "destinations", "rules", "unmatched", "retry",
        "status", "tls", "retention",
    }  # fmt: skip
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"unknown setting {sorted(unknown)[0]!r}; expected some of {', '.join(sorted(known))}")
    listen = data.get("listen", {})
    spool = data.get("spool")
    if not isinstance(spool, dict) or "folder" not in spool:
        raise ConfigError("spool: expected an object with folder (and max_bytes)")
    callers = data.get("callers")
    if not isinstance(callers, dict) or not callers:
        raise ConfigError(
            'callers: expected an object of the AE titles allowed to send, e.g. {"ORTHANC": {"host": "127.0.0.1", "port": 4242}}'
        )
    destinations = data.get("destinations", {})
    if not isinstance(destinations, dict) or "sender" in destinations:
        raise ConfigError(
            'destinations: expected an object of names (not "sender") and {ae_title, host, port} or {"kind": "stowrs", "url"}'
        )
    nodes = {name: _destination(v, f"destinations.{name}", base) for name, v in destinations.items()}
    rules = data.get("rules")
    if not isinstance(rules, list) or not rules:
        raise ConfigError("rules: expected a list of routing rules (the first that matches a series is used)")
    unmatched = data.get("unmatched", "drop")
    if unmatched not in ("drop", "hold"):
        raise ConfigError(f'unmatched {unmatched!r}: expected "drop" (log and delete) or "hold" (log and keep)')
    retry = data.get("retry", {})
    if not isinstance(retry, dict) or set(retry) - {"attempts", "first_delay", "max_delay"}:
        raise ConfigError("retry: expected an object with attempts, first_delay and max_delay")
    status = data.get("status", {})
    if not isinstance(status, dict) or set(status) - {"host", "port"}:
        raise ConfigError("status: expected an object with host and port (the /health and /metrics HTTP server)")
    tls = data.get("tls")
    if tls is not None and (not isinstance(tls, dict) or set(tls) != {"certificate", "key", "ca"}):
        raise ConfigError("tls: expected an object with certificate, key and ca (PEM files)")

    def path(value, where):
        return os.path.join(base, _text(value, where))

    return Config(
        ae_title=_ae(data.get("ae_title", "TOMAAT"), "ae_title"),
        host=_text(listen.get("host", "127.0.0.1"), "listen.host"),
        port=_port(listen.get("port", 11112), "listen.port"),
        spool=path(spool["folder"], "spool.folder"),
        spool_max_bytes=int(_number(spool.get("max_bytes", 20 << 30), "spool.max_bytes", 1)),
        quiet_seconds=_number(data.get("quiet_seconds", 10), "quiet_seconds", 0),
        callers={
            _ae(name, "callers"): _node({"ae_title": name, **(v or {})}, f"callers.{name}", port_needed=False)
            for name, v in callers.items()
        },
        destinations=nodes,
        rules=tuple(_rule(rule, i, nodes) for i, rule in enumerate(rules)),
        unmatched=unmatched,
        retry=Retry(
            attempts=int(_number(retry.get("attempts", 5), "retry.attempts", 1)),
            first_delay=_number(retry.get("first_delay", 2.0), "retry.first_delay", 0),
            max_delay=_number(retry.get("max_delay", 300.0), "retry.max_delay", 0),
        ),
        status_host=_text(status.get("host", "127.0.0.1"), "status.host"),
        status_port=_port(status["port"], "status.port") if "port" in status else None,
        tls=Tls(*(path(tls[k], f"tls.{k}") for k in ("certificate", "key", "ca"))) if tls else None,
        retention=_number(data["retention"], "retention", 0) if data.get("retention") is not None else None,
    )


def load(path: str) -> Config:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as error:
        raise ConfigError(
            f"{path}: cannot be read ({error.strerror}); expected the gateway's JSON configuration"
        ) from None
    except ValueError as error:
        raise ConfigError(f"{path}: not JSON ({error}); expected the gateway's JSON configuration") from None
    return parse(data, os.path.dirname(os.path.abspath(path)))
