"""JSON from a peer we do not trust (a prediction server, a registry, a PACS): at worst a ValueError, never a crash.

Python's json parser recurses once per nesting level, so `[[[[...]]]]` 100,000 deep ends in RecursionError, which
is not the ValueError every caller already turns into one line for the user: it became a traceback. Nesting
is limited to the interpreter's recursion limit (about 1,000 levels; no answer of ours nests past 10) and the
size by whoever reads the bytes (the client's JSON_LIMIT).
"""

from __future__ import annotations

import json


def loads(data: bytes | str):
    """The parsed value; ValueError (UnicodeDecodeError included) for anything that is not reasonable JSON."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
