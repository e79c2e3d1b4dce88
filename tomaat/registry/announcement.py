"""What an announcement or withdrawal body must hold, and a message for each way it can fail.

Every problem is collected rather than stopping at the first, because a v1
answer's `status` counts them and an operator fixing a config wants them all at
once. Messages name the field and what was expected, never echo the API key,
and quote other values only shortened.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..protocol import text
from .keys import looks_like_key

# Longest accepted value of each announced field, in characters; the store's CHECK constraints use the same.
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
OPTIONAL_EMPTY = ("description",)
OWNER_LIMIT = 200
EXPECTED = {
    "api_key": "the 64 hexadecimal characters issued by the registry's operator",
    "prediction_url": "the http(s) URL clients POST predictions to, e.g. https://host:9000/predict",
    "interface_url": "the http(s) URL of the service's interface, e.g. https://host:9000/interface",
    "name": "a short service name",
    "modality": "the imaging modality, e.g. MRI",
    "anatomy": "the anatomy, e.g. prostate",
    "task": "the task, e.g. segmentation",
    "description": "a text describing the service (may be empty)",
}
_CONTROL, _CONTROL_EXCEPT_LINES = text.CONTROL, text.CONTROL_EXCEPT_LINES


@dataclass
class Checked:
    """A parsed body: the key (None when absent or malformed), the clean fields, and every problem found."""

    api_key: str | None = None
    fields: dict = field(default_factory=dict)
    problems: list = field(default_factory=list)


def _quote(value: str) -> str:
    return repr(value if len(value) <= 60 else value[:57] + "...")


def read_object(body: bytes) -> dict:
    """The JSON object in body; ValueError with a message for the client otherwise."""
    try:
        data = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError("the body is not UTF-8 text; expected a JSON object") from None
    except RecursionError:
        raise ValueError("the body's JSON is nested too deeply; expected a flat JSON object") from None
    except json.JSONDecodeError as error:
        # the decoder's message gives a position, never the content, so it cannot carry a key
        raise ValueError(
            f"the body is not valid JSON ({error.msg} at line {error.lineno} column {error.colno}); expected a JSON object"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(
            f"the body is a JSON {type(data).__name__}; expected a JSON object with the fields {', '.join(('api_key',) + ANNOUNCED)}"
        )
    return data


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


def _text_problem(name: str, value: str) -> str | None:
    pattern = _CONTROL_EXCEPT_LINES if name == "description" else _CONTROL
    if pattern.search(value):
        return f"invalid {name}: it contains control characters; expected {EXPECTED[name]}"
    if not value and name not in OPTIONAL_EMPTY:
        return f"empty {name}; expected {EXPECTED[name]}"
    return None


def _check_key(data: dict, checked: Checked) -> None:
    if "api_key" not in data:
        checked.problems.append(f"missing field 'api_key'; expected {EXPECTED['api_key']}")
    elif not isinstance(data["api_key"], str) or not looks_like_key(data["api_key"].strip()):
        checked.problems.append(f"invalid api_key; expected {EXPECTED['api_key']}")
    else:
        checked.api_key = data["api_key"].strip()  # key files end in a newline, often sent along


def _check_field(data: dict, name: str, checked: Checked) -> None:
    if name not in data:
        checked.problems.append(f"missing field {name!r}; expected {EXPECTED[name]}")
        return
    value = data[name]
    if not isinstance(value, str):
        checked.problems.append(f"invalid {name}: a JSON {type(value).__name__}; expected a string, {EXPECTED[name]}")
        return
    value = value.strip()
    if len(value) > LIMITS[name]:
        checked.problems.append(f"{name} is {len(value)} characters long; expected at most {LIMITS[name]}")
        return
    problem = url_problem(name, value) if name in URL_FIELDS else _text_problem(name, value)
    if problem:
        checked.problems.append(problem)
    else:
        checked.fields[name] = value


def check_announcement(data: dict) -> Checked:
    """Unknown fields are ignored (v1 servers sent a SID of their own): the registry assigns SIDs."""
    checked = Checked()
    _check_key(data, checked)
    for name in ANNOUNCED:
        _check_field(data, name, checked)
    return checked


def check_withdrawal(data: dict) -> Checked:
    checked = Checked()
    _check_key(data, checked)
    _check_field(data, "prediction_url", checked)
    return checked


def owner_problem(owner: str) -> str | None:
    if not owner.strip():
        return "the owner is empty; expected a name telling who holds the key, e.g. 'Lab X, jane@example.org'"
    if len(owner) > OWNER_LIMIT:
        return f"the owner is {len(owner)} characters long; expected at most {OWNER_LIMIT}"
    if _CONTROL.search(owner):
        return "the owner contains control characters; expected one line of text"
    return None
