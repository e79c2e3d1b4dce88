"""The registry's wire format, shared by the registry, the server's announcer and the client's `discover`.

What a server announces and withdraws, what the registry answers (the v1 shape
`{"status": N, "error": "..."}`) and what one `/discover` entry holds are
defined once here, so the three cannot drift apart. The v1 fields are required,
as TOMAAT-Slicer and upstream servers know them; the model metadata
(protocol/metadata.py) is optional, so old servers announce as before and v1
clients see only keys added to the entries they already read. So is `access`, the methods a
service asks its clients to prove themselves with: a client learns before its first request whether
it needs a certificate or a token, and an open service sends nothing, exactly as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from . import metadata, untrusted_json
from .fields import control_problem, string

# Longest accepted value of each v1 field, in characters; the store's CHECK constraints use the same.
LIMITS = {
    "prediction_url": 2048,
    "interface_url": 2048,
    "name": 200,
    "modality": 100,
    "anatomy": 100,
    "task": 100,
    "description": 4000,
}
ANNOUNCED = tuple(LIMITS)
URL_FIELDS = ("prediction_url", "interface_url")
TEXT_FIELDS = tuple(name for name in ANNOUNCED if name not in URL_FIELDS)
OPTIONAL_EMPTY = ("description",)
FILTERS = ("modality", "anatomy", "task")
EXPECTED = {
    "api_key": "the 64 hexadecimal characters issued by the registry's operator",
    "prediction_url": "the http(s) URL clients POST predictions to, e.g. https://host:9000/predict",
    "interface_url": "the http(s) URL of the service's interface, e.g. https://host:9000/interface",
    "name": "a short service name",
    "modality": "the imaging modality, e.g. MRI",
    "anatomy": "the anatomy, e.g. prostate",
    "task": "the task, e.g. segmentation",
    "description": "a text describing the service (may be empty)",
    "access": "a list of the access methods the service asks for, each at most once, among "
    "certificate, oidc, token, network",
}
# The ways a service may identify its clients (tomaat/access/identity.py's METHODS, pinned by a test): kept
# here too, so that a registry deployed on its own needs nothing of the server's.
ACCESS_METHODS = ("certificate", "oidc", "token", "network")
ANSWER_LIMIT = 1024 * 1024  # bytes of an /announce or /withdraw answer read; a real one is under 1 KiB
DISCOVER_LIMIT = 64 * 1024 * 1024  # bytes of a /discover answer read: thousands of services


def _quote(value: str) -> str:
    return repr(value if len(value) <= 60 else value[:57] + "...")


# ---- the fields ---------------------------------------------------------------------------------


def url_problem(name: str, value: str) -> str | None:
    if not value.isascii() or any(ch <= " " or ch == "\x7f" for ch in value):
        return f"invalid {name}: URLs must be printable ASCII without spaces (percent-encode other characters); expected {EXPECTED[name]}"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (raises ValueError for a port out of range)
    except ValueError:
        return f"invalid {name} {_quote(value)}: not a URL; expected {EXPECTED[name]}"
    if parts.scheme.lower() not in ("http", "https"):
        return f"invalid {name} {_quote(value)}: the scheme must be http or https; expected {EXPECTED[name]}"
    if not parts.hostname:
        return f"invalid {name} {_quote(value)}: there is no host; expected {EXPECTED[name]}"
    if parts.username is not None or parts.password is not None:
        return (
            f"invalid {name}: it contains user:password@, and everything announced is public; expected {EXPECTED[name]}"
        )
    return None


def field_problem(name: str, value) -> tuple[str | None, str | None]:
    """(the clean value, None) or (None, what is wrong with it) for one v1 field that is present."""
    value, problem = string(name, value, LIMITS[name], EXPECTED[name])
    if problem is None:
        if name in URL_FIELDS:
            problem = url_problem(name, value)
        else:
            problem = control_problem(name, value, EXPECTED[name], lines=name == "description")
            if problem is None and not value and name not in OPTIONAL_EMPTY:
                problem = f"empty {name}; expected {EXPECTED[name]}"
    return (None, problem) if problem else (value, None)


# ---- requests -----------------------------------------------------------------------------------


def access_problem(value) -> tuple[list[str] | None, str | None]:
    """(the methods, None) or (None, what is wrong) for an announced `access`; null and [] mean an open service.

    Unknown names are refused rather than dropped: a client told less than the service asks for would
    only find out at its first request, with a 401 it cannot explain.
    """
    if value is None:
        return [], None
    if not isinstance(value, list):
        return None, f"invalid access: a JSON {type(value).__name__}; expected {EXPECTED['access']}"
    if len(value) > len(ACCESS_METHODS):
        return None, f"invalid access: {len(value)} methods; expected {EXPECTED['access']}"
    for method in value:
        if not isinstance(method, str) or method not in ACCESS_METHODS:
            shown = _quote(method) if isinstance(method, str) else f"a JSON {type(method).__name__}"
            return None, f"invalid access: {shown} is not an access method; expected {EXPECTED['access']}"
    if len(set(value)) != len(value):
        return None, f"invalid access: a method is named twice; expected {EXPECTED['access']}"
    return list(value), None


def announcement_body(
    public_url: str, service: Mapping, model: Mapping | None = None, access: list[str] | None = None
) -> dict:
    """The fields a server announces: its endpoints under public_url, its v1 text fields, the metadata it states,
    and the access methods it asks for.

    Metadata left empty is not sent, nor is `access` for an open service, so a server without either
    announces exactly what it did before.
    """
    base = public_url.rstrip("/")
    fields: dict[str, object] = {name: str(service.get(name, "")) for name in TEXT_FIELDS}
    fields.update(prediction_url=base + "/predict", interface_url=base + "/interface")
    fields.update({name: value for name, value in (model or {}).items() if name in metadata.FIELDS and value})
    if access:
        fields["access"] = list(access)
    return fields


def announce_body(api_key: str, fields: Mapping) -> dict:
    return {"api_key": api_key, **fields}


def withdraw_body(api_key: str, prediction_url: str) -> dict:
    return {"api_key": api_key, "prediction_url": prediction_url}


# ---- answers ------------------------------------------------------------------------------------


def answer(problems: list[str], **extra) -> dict:
    """The v1 answer: `status` counts the problems (0: accepted), `error` lists them."""
    return {"status": len(problems), "error": "; ".join(problems), **extra}


def read_answer(raw: bytes) -> dict:
    """The registry's answer as a dict; whatever else it sent becomes the `error`, so it can be logged."""
    try:
        parsed = untrusted_json.loads(raw.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError included
        parsed = None
    return parsed if isinstance(parsed, dict) else {"error": raw.decode("utf-8", "replace")}


def accepted(code: int, parsed: Mapping) -> bool:
    return code == 200 and parsed.get("status") == 0


# ---- /discover ----------------------------------------------------------------------------------


def discover_item(service: Mapping) -> dict:
    """One /discover entry from a stored service: the v1 keys as v1 clients read them, then the metadata."""
    item: dict[str, object] = {"api_key": ""}  # v1 clients expect the key, always empty
    item.update({name: service[name] for name in ANNOUNCED})
    item.update(SID=service["sid"], creation_time=service["announced"])
    item.update({name: service.get(name, default) for name, default in metadata.empty().items()})
    if service.get("access"):  # an open service's entry is exactly what it was before access existed
        item["access"] = list(service["access"])
    return item


def _text(value) -> str:
    if isinstance(value, str):
        return value
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else ""


def parse_discover(data) -> list[dict]:
    """The entries of an untrusted /discover answer, each text key a string and the metadata shaped.

    ValueError when the answer is not a list; entries that are not objects are left out.
    Other keys stay as the registry sent them, so a v1 registry's entries read as before; `access` keeps only
    the known methods, and goes when none is left.
    """
    if not isinstance(data, list):
        raise ValueError(f"a JSON {type(data).__name__}, not a list of services")
    services = []
    for entry in data:
        if isinstance(entry, dict):
            item = {**entry, **{name: _text(entry.get(name, "")) for name in (*ANNOUNCED, "SID")}}
            item.update(metadata.parse(entry))
            item.pop("access", None)
            methods = parse_access(entry.get("access"))
            if methods:
                item["access"] = methods
            services.append(item)
    return services


def parse_access(value) -> list[str]:
    """The known access methods an untrusted entry names, each once, in its order; [] for anything else."""
    if not isinstance(value, list):
        return []
    return list(dict.fromkeys(method for method in value if isinstance(method, str) and method in ACCESS_METHODS))


def matches(service: Mapping, wanted: Mapping[str, str]) -> bool:
    """Whether the service has each wanted modality, anatomy and task, ignoring case (as filters do everywhere)."""
    return all(str(service.get(name, "")).casefold() == value.casefold() for name, value in wanted.items())
