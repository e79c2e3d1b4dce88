"""What one request may cost once its inputs are decoded, and what all requests may cost at once.

The upload budget counts bytes on the wire, but a 0.5 MiB compressed MHA can
inflate to 1 GiB and a few bytes of header can ask a reader for gigabytes. So
each input is charged its decoded size, from its header, before it is decoded:
against the request's own allowance (413 past it: the request can never fit)
and against the process's (503 past it: it may fit once others finish).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from ..errors import ServerBusy, TooLarge
from ..net.body import Budget

DEFAULT_MAX_VOXELS = 1024**3


@dataclass(frozen=True)
class Limits:
    max_voxels: int = DEFAULT_MAX_VOXELS  # per image
    max_decoded_bytes: int = 4 * 1024**3  # per request, all inputs decoded
    max_points: int = 100_000  # per fiducials field
    max_transform_parameters: int = 10_000_000  # per transform field (80 MB of doubles)


class Allowance:
    """One request's decoded bytes, charged before each decode and given back when the request ends; and the
    decoder processes its files go to (a service's own pool; None: the process's, files/confined.py)."""

    def __init__(self, limits: Limits | None = None, shared: Budget | None = None, decoders=None):
        self.limits = limits or Limits()
        self.shared = shared
        self.decoders = decoders
        self.used = 0
        self.peak = 0  # the most this request held at once, decoding included: what its memory really costs

    def charge(self, size: int, where: str) -> None:
        limit = self.limits.max_decoded_bytes
        if limit and self.used + size > limit:
            raise TooLarge(
                f"{where}: decoding it takes {size} bytes; with the request's other inputs that is more than "
                f"the {limit} bytes one request may decode on this server"
            )
        if self.shared is not None and not self.shared.take(size):
            raise ServerBusy("the server is decoding as much as it can hold; try again shortly")
        self.used += size
        self.peak = max(self.peak, self.used)

    @contextlib.contextmanager
    def decoding(self, extra: int, where: str):
        """While a decode holds `extra` bytes beyond what it keeps (an inflated file or a decoder's output, and the
        image made from it, at once), they are charged to the process's budget too, and given back after: the
        budget bounds what decoding really holds at its peak, not half of it."""
        if self.shared is not None and extra and not self.shared.take(extra):
            raise ServerBusy(f"{where}: the server is decoding as much as it can hold; try again shortly")
        self.peak = max(self.peak, self.used + extra)
        try:
            yield
        finally:
            if self.shared is not None and extra:
                self.shared.give(extra)

    def release(self) -> None:
        if self.shared is not None:
            self.shared.give(self.used)
        self.used = 0
