"""What an announcement or withdrawal body must hold, and a message for each way it can fail.

Every problem is collected rather than stopping at the first, because a v1
answer's `status` counts them and an operator fixing a config wants them all at
once. Messages name the field and what was expected, never echo the API key,
and quote other values only shortened. The fields, their limits and the words for
each problem are the wire format's (protocol/registry.py, protocol/metadata.py),
shared with the servers that announce; what is the registry's own is here: the
key, and the collecting.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..protocol import metadata
from ..protocol.registry import ANNOUNCED, EXPECTED, LIMITS, access_problem, field_problem
from ..protocol.text import CONTROL
from .keys import looks_like_key

__all__ = ["ANNOUNCED", "LIMITS", "Checked", "check_announcement", "check_withdrawal", "owner_problem", "read_object"]

OWNER_LIMIT = 200


@dataclass
class Checked:
    """A parsed body: the key (None when absent or malformed), the clean fields, and every problem found."""

    api_key: str | None = None
    fields: dict = field(default_factory=dict)
    problems: list = field(default_factory=list)


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
    value, problem = field_problem(name, data[name])
    if problem:
        checked.problems.append(problem)
    else:
        checked.fields[name] = value


def check_announcement(data: dict) -> Checked:
    """Unknown fields are ignored (v1 servers sent a SID of their own): the registry assigns SIDs.

    The model metadata is optional, so servers that predate it announce as before.
    """
    checked = Checked()
    _check_key(data, checked)
    for name in ANNOUNCED:
        _check_field(data, name, checked)
    model, problems = metadata.checked(data)  # optional: absent fields are stored empty
    checked.fields.update(model)
    checked.problems.extend(problems)
    access, problem = access_problem(data.get("access"))  # optional too: absent is an open service
    if problem:
        checked.problems.append(problem)
    else:
        checked.fields["access"] = access
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
    if CONTROL.search(owner):
        return "the owner contains control characters; expected one line of text"
    return None
