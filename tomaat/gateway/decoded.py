"""What the gateway learns from a sender's instance, through its confined decoder (decoder_process.py).

The answer is distrusted: UIDs must be UIDs (they name folders and files in the spool), texts are cut
to DICOM's lengths and stripped of controls.
"""

from __future__ import annotations

import atexit
import re

from ..files import confined
from ..protocol.text import printable

POOL = confined.DecoderPool(size=2, timeout=60.0, module="tomaat.gateway.decoder_process")
RESULTS_POOL = confined.DecoderPool(size=1, timeout=300.0, module="tomaat.gateway.decoder_process")  # RTSTRUCT, SR
atexit.register(POOL.close)
atexit.register(RESULTS_POOL.close)

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


class Unreadable(Exception):
    """The instance cannot be taken; the text says why (for the log, with no patient data)."""


def uid(value) -> str:
    if not isinstance(value, str) or len(value) > 64 or not _UID.fullmatch(value):
        raise ValueError("uid")
    return value


def header(data: bytes) -> dict:
    """UIDs (sop_uid, sop_class, study_uid, series_uid) and routing texts (modality, series_description,
    body_part) of one Part 10 instance."""
    try:
        answer, decoder = POOL.run({"op": "header"}, data, ".dcm")
    except confined.DecodeFailed as failure:
        raise Unreadable(f"the decoder {failure.reason} on it") from None
    POOL.release(decoder)
    if answer.get("ok") is not True:
        refused = answer.get("refused")
        raise Unreadable(printable(refused)[:200] if isinstance(refused, str) else "not a DICOM file it can read")
    try:
        result = {key: uid(answer[key]) for key in ("sop_uid", "sop_class", "study_uid", "series_uid")}
        for key, limit in (("modality", 16), ("series_description", 64), ("body_part", 16)):
            if not isinstance(answer[key], str):
                raise ValueError(key)
            result[key] = " ".join(printable(answer[key]).split())[:limit]
    except (KeyError, ValueError):
        raise Unreadable("its UIDs are not DICOM UIDs (digits and dots, at most 64)") from None
    return result
