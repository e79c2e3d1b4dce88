"""Which prediction service a series goes to: the first rule whose every condition matches wins.

Conditions are shell-style patterns (`*`, `?`, `[...]`), compared without regard to case, since
scanners spell "chest" and "CHEST" as they please; a condition with several patterns matches when any
does. A pattern, unlike a regular expression, cannot make matching slow on a hostile description.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from .config import Rule


def matches(rule: Rule, series: dict) -> bool:
    for key, patterns in rule.match.items():
        value = str(series.get(key) or "").upper()
        if not any(fnmatchcase(value, pattern.upper()) for pattern in patterns):
            return False
    return True


def route(rules: tuple[Rule, ...], series: dict) -> Rule | None:
    """The first rule that matches `series` (a journal: modality, series_description, body_part, calling_ae)."""
    return next((rule for rule in rules if matches(rule, series)), None)
