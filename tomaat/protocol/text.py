"""Characters that must not reach a terminal, a log line or a page from untrusted text.

C0 and C1 controls move cursors and start terminal escapes (U+009B is a one-character CSI);
bidirectional overrides and isolates make text display in an order other than the one stored,
so a name can show as something it is not. Both the registry's checks and the client's output use
this one list.
"""

from __future__ import annotations

import re

_BIDI = "\u200e\u200f\u202a-\u202e\u2066-\u2069"
_SEPARATORS = "\u2028\u2029"
CONTROL = re.compile(f"[\x00-\x1f\x7f-\x9f{_BIDI}{_SEPARATORS}]")
CONTROL_EXCEPT_LINES = re.compile(f"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f{_BIDI}{_SEPARATORS}]")


def printable(text: str, keep_lines: bool = False) -> str:
    """text with every such character removed; line breaks kept when asked."""
    return (CONTROL_EXCEPT_LINES if keep_lines else CONTROL).sub("", text)
