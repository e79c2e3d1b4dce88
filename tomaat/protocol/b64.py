"""Base64 for the wire, through pybase64 (libbase64, SIMD): v1 volumes travel as base64 text.

For a 64 MiB volume the standard library took 439 ms to encode MIME lines and
205 ms to decode them; decoding was a third of a v1 request (docs/performance.md).
pybase64 writes and reads the same bytes in 103 ms and 54 ms.
"""

from __future__ import annotations

import binascii

import numpy as np
import pybase64

Error = binascii.Error


def encode_lines(data) -> bytes:
    """MIME base64, a line break every 76 characters: what v1 servers and TOMAAT-Slicer expect."""
    return pybase64.encodebytes(data)


def encode(data) -> str:
    """One line of base64, the `content` of a v1 output item."""
    return pybase64.b64encode_as_string(data)


def decode(text) -> bytes:
    """The bytes of base64 text; whitespace and other characters between groups are skipped.

    Raises Error when the length or padding is wrong. Callers that must refuse
    text that is not base64 check its characters themselves (volumes.decode_base64).
    """
    return pybase64.b64decode(text)


ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_SKIPPED = bytes(byte for byte in range(256) if byte not in ALPHABET + b"=")  # what decode() discards
_WHITESPACE = b" \t\n\r\x0b\x0c"
TAIL = 4096  # the end of a text where padding may be; anywhere before it, a '=' sends the text to decode() whole
_LINE = 128  # how far back from a cut a line break is looked for


def padded_before(view: memoryview, stop: int) -> bool:
    """Whether a '=' occurs in view[:stop]: decode() reads padding there its own way, which pieces cannot."""
    step = 1 << 20  # the comparison's booleans stay small
    return any(
        bool(np.count_nonzero(np.frombuffer(view[at : min(at + step, stop)], np.uint8) == ord("=")))
        for at in range(0, max(stop, 0), step)
    )


class Pieces:
    """Base64 text decoded piece by piece, exactly as decode() decodes it whole, for text with no padding
    before its last TAIL bytes (padded_before); iterating yields (decoded bytes, text offset consumed so far).

    A piece ends after a line break, so a MIME text's pieces are whole groups of four and each is decoded as
    it is; text cut elsewhere (other line lengths, stray characters) has its piece stripped of what decode()
    skips, and the last incomplete group carried to the next. `odd` says whether a stripped piece held
    characters that are neither base64 nor white space (for the caller's message when decoding fails).
    """

    def __init__(self, view: memoryview, size: int):
        self.view, self.size = view, max(4 * _LINE, size)
        self.at = 0
        self.odd = False
        self._carry = b""

    def _cut(self, target: int) -> int:
        window = bytes(self.view[target - _LINE : target])
        newline = window.rfind(b"\n")
        return target - _LINE + newline + 1 if newline >= 0 else self.at + (target - self.at) // 4 * 4

    def _strip(self, piece) -> bytes:
        text = bytes(piece)
        if not self.odd and text.translate(None, ALPHABET + b"=" + _WHITESPACE):
            self.odd = True
        return self._carry + text.translate(None, _SKIPPED)

    def __iter__(self):
        last = len(self.view) - TAIL
        while self.at < len(self.view):
            target = self.at + self.size
            final = target >= last
            end = len(self.view) if final else self._cut(target)
            piece = self.view[self.at : end]
            if final:
                decoded = decode(piece) if not self._carry else decode(self._strip(piece))
            else:
                decoded = None
                if not self._carry:
                    try:
                        decoded = decode(piece)  # whole groups of four: MIME lines of 76 characters
                    except (Error, ValueError):
                        pass
                if decoded is None:
                    kept = self._strip(piece)
                    whole = len(kept) // 4 * 4
                    decoded, self._carry = decode(kept[:whole]), kept[whole:]
            self.at = end
            yield decoded, end
