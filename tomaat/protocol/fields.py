"""Checks for text fields that arrive from someone else: their type, their length, their characters.

The registry refuses announcements with these words, and a server checks its own model metadata
with them before it announces anything, so a value the registry would refuse is caught at start.
Each check gives a message that names the field and says what was expected, and never quotes
the value, which may be long or hostile.
"""

from __future__ import annotations

from . import text


def string(name: str, value, limit: int, expected: str) -> tuple[str | None, str | None]:
    """(the value without surrounding white space, None), or (None, why it is not a string of at most limit characters)."""
    if not isinstance(value, str):
        return None, f"invalid {name}: a JSON {type(value).__name__}; expected a string, {expected}"
    value = value.strip()
    if len(value) > limit:
        return None, f"{name} is {len(value)} characters long; expected at most {limit}"
    return value, None


def control_problem(name: str, value: str, expected: str, lines: bool = False) -> str | None:
    """Why value may not be shown as it is: control or bidirectional characters (line breaks and tabs allowed with lines)."""
    if (text.CONTROL_EXCEPT_LINES if lines else text.CONTROL).search(value):
        return f"invalid {name}: it contains control characters; expected {expected}"
    return None


def checked_text(name: str, value, limit: int, expected: str, lines: bool = False) -> tuple[str | None, str | None]:
    """string() and control_problem() together: (clean value, None) or (None, the first problem)."""
    clean, problem = string(name, value, limit, expected)
    if clean is not None:
        problem = control_problem(name, clean, expected, lines)
    return (None, problem) if problem else (clean, None)
