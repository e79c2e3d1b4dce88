"""Model metadata, as DeepInfer's model registry keeps it: what a model is, on what terms, how well it did.

An app states its version, licence, citation, intended use, a disclaimer (the TOMAAT paper's
"not for clinical judgement") and its measured accuracy. The server lists them in /info and
announces them; the registry stores them and lists them in /discover; clients print them. All
read them through this module, so a limit is the same everywhere: a server whose citation the
registry would refuse fails at start, instead of being refused at every renewal.

What a client reads from /info or /discover is untrusted, so `parse` keeps what has the right
shape and drops the rest, and never raises.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from .fields import checked_text

# The text fields and their limits in characters; all optional, empty when not stated.
TEXT = {"version": 100, "licence": 200, "citation": 1000, "intended_use": 2000, "disclaimer": 1000}
LINES = ("citation", "intended_use", "disclaimer")  # may hold line breaks and tabs
ACCURACY = "accuracy"
FIELDS = (*TEXT, ACCURACY)
MAX_RESULTS = 20  # measured results per model
RESULT_TEXT = {"metric": 100, "dataset": 200}  # the text keys of one result, and their limits
RESULT_SHAPE = '{"metric": text, "value": number, "dataset": text}'
EXPECTED = {
    "version": "the model's version, e.g. 1.2.0",
    "licence": "the licence of the model and its weights, e.g. CC-BY-NC-4.0",
    "citation": "how to cite the model, e.g. the reference of its paper",
    "intended_use": "what the model is meant for, and on which data",
    "disclaimer": "a warning for users, e.g. not for clinical judgement",
    ACCURACY: f"a list of at most {MAX_RESULTS} measured results, each {RESULT_SHAPE}",
    "metric": "the metric's name, e.g. Dice",
    "dataset": "the dataset it was measured on, e.g. PROMISE12 test set",
}


def empty() -> dict:
    """The metadata of a model that states none (an older server, or an app without these attributes)."""
    return {**dict.fromkeys(TEXT, ""), ACCURACY: []}


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _result(index: int, item) -> tuple[dict | None, list[str]]:
    where = f"{ACCURACY}[{index}]"
    if not isinstance(item, Mapping):
        return None, [f"invalid {where}: a JSON {type(item).__name__}; expected {RESULT_SHAPE}"]
    clean, problems = {}, []
    for key in ("metric", "value", "dataset"):
        if key not in item:
            problems.append(f"{where} lacks {key!r}; expected {RESULT_SHAPE}")
        elif key == "value":
            if _is_number(item[key]):
                clean[key] = item[key]
            else:
                problems.append(f"invalid {where}.value: a JSON {type(item[key]).__name__}; expected a finite number")
        else:
            value, problem = checked_text(f"{where}.{key}", item[key], RESULT_TEXT[key], EXPECTED[key])
            if problem is None and not value:
                problem = f"empty {where}.{key}; expected {EXPECTED[key]}"
            if problem:
                problems.append(problem)
            else:
                clean[key] = value
    return (None, problems) if problems else (clean, [])


def _accuracy(value) -> tuple[list, list[str]]:
    if not isinstance(value, list | tuple):
        return [], [f"invalid {ACCURACY}: a JSON {type(value).__name__}; expected {EXPECTED[ACCURACY]}"]
    if len(value) > MAX_RESULTS:
        return [], [f"{ACCURACY} has {len(value)} results; expected at most {MAX_RESULTS}"]
    results, problems = [], []
    for index, item in enumerate(value):
        result, found = _result(index, item)
        problems.extend(found)
        if result is not None:
            results.append(result)
    return results, problems


def checked(data: Mapping) -> tuple[dict, list[str]]:
    """The metadata in data, each absent field empty, and every problem found (collected, not just the first)."""
    clean, problems = empty(), []
    for name, limit in TEXT.items():
        if name in data:
            value, problem = checked_text(name, data[name], limit, EXPECTED[name], name in LINES)
            if problem:
                problems.append(problem)
            else:
                clean[name] = value
    if ACCURACY in data:
        clean[ACCURACY], found = _accuracy(data[ACCURACY])
        problems.extend(found)
    return clean, problems


def check(data: Mapping, whose: str) -> dict:
    """The clean metadata, or ValueError listing every problem: for a server at start, before it serves or announces."""
    clean, problems = checked(data)
    if problems:
        raise ValueError(f"{whose} metadata cannot be served or announced: {'; '.join(problems)}")
    return clean


def parse(data) -> dict:
    """What an untrusted /info or /discover entry states: text where text is due, results of the right shape."""
    parsed = empty()
    if not isinstance(data, Mapping):
        return parsed
    for name in TEXT:
        if isinstance(data.get(name), str):
            parsed[name] = data[name]
    results = data.get(ACCURACY)
    if isinstance(results, list):
        shaped = (_result(index, item)[0] for index, item in enumerate(results[:MAX_RESULTS]))
        parsed[ACCURACY] = [result for result in shaped if result is not None]
    return parsed


def describe_result(result: Mapping) -> str:
    """One measured result as people read it: `Dice 0.87 on PROMISE12 test set`."""
    return f"{result['metric']} {result['value']:g} on {result['dataset']}"
