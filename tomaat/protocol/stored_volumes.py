"""Stored volumes (v2), as the wire has them: ids, the `volume_id:<id>` a volume field may carry, the messages.

`POST /volumes` keeps a decoded volume on the server for a while and answers its id; a `/predict`
volume field whose value is the text `volume_id:<id>` then takes that volume instead of an upload.
Server and clients both spell these here (tomaat/server/volume_store.py keeps the volumes).
"""

from __future__ import annotations

import re

PREFIX = "volume_id:"
_PREFIX = PREFIX.encode("ascii")
ID = re.compile(r"[0-9a-f]{32}\Z")
MAX_REFERENCE = 256  # a field holding more than this after the prefix is no reference, but a malformed one
EXPECTED = "32 lowercase hex characters, as POST /volumes answers them"


def is_volume_id(text) -> bool:
    return isinstance(text, str) and ID.match(text) is not None


def reference(volume_id: str) -> str:
    """The value of a volume field that names a stored volume."""
    if not is_volume_id(volume_id):
        raise ValueError(f"a volume_id is {EXPECTED}")
    return PREFIX + volume_id


def referenced_id(raw) -> str | None:
    """The text after `volume_id:` when a volume field's bytes (or text) name a stored volume, else None.

    Neither an image file nor base64 text can start with `volume_id:` (base64 has no colon), so the
    prefix alone tells a reference from an upload. The text returned is not checked: see is_volume_id.
    """
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "replace")
    head = bytes(raw[: len(_PREFIX) + 64]).lstrip()
    if not head.startswith(_PREFIX):
        return None
    if len(raw) > MAX_REFERENCE + len(_PREFIX) + 64:
        return f"<more than {MAX_REFERENCE} characters>"  # never an id: refused as malformed
    return bytes(raw).strip()[len(_PREFIX) :].decode("latin-1").strip()


def shown(volume_id: str) -> str:
    """How a message names an id: quoted when it is one, else as "a malformed volume_id"."""
    return repr(volume_id) if is_volume_id(volume_id) else "(a malformed volume_id)"


def unknown(volume_id: str) -> str:
    """The message for an id the server does not hold (404)."""
    return f"unknown volume_id {shown(volume_id)}: it was never stored, has expired or was deleted"


def malformed() -> str:
    """The message for a volume field whose `volume_id:` is followed by something that is not an id (400)."""
    return f"a malformed volume_id; expected {PREFIX} followed by {EXPECTED}"
