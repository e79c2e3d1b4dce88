"""Stored volumes: decoded once by POST /volumes, kept in memory for a while, taken by any number of predictions.

A clinician on a slow link tries several settings on one scan: the scan crosses the link once.
The decoded SimpleITK image is kept here, never written anywhere, under an unguessable id
(128 random bits), and dropped when its time is up, on DELETE /volumes/<id>, or at shutdown.

- **Time.** Each volume has one reactor timer (no thread). The time to live slides: every
  prediction that takes the volume restarts it, so a volume in use stays while the clinician works
  and goes `ttl` seconds after its last use. A prediction that is running when its volume expires
  or is deleted finishes with the image it took.
- **Room.** At most `max_bytes` decoded bytes and `max_count` volumes (0: no limit); a volume that
  does not fit is refused with 507 before it is decoded, from its header. Stored volumes are decoded
  inputs held for longer, so they are also charged to the service's budget of decoded inputs
  (`max_decoded_total`), from their upload until they are dropped: that budget bounds all decoded
  images in memory, stored or in work, and a prediction taking a stored volume adds nothing to it.
- **Copies.** A prediction gets `sitk.Image(stored)`: SimpleITK images are copy-on-write, so this
  costs microseconds and shares the voxels, and the first change an app makes through SimpleITK
  (SetPixel, SetOrigin, `image += 1`, ...) copies them for that prediction alone. NumPy views
  (GetArrayViewFromImage) are read-only. The stored image can therefore not be changed by an app.

Thread use: take() runs on worker threads, under a lock; put(), delete(), the timers and clear()
run on the reactor. Ids are logged by their first 8 characters only.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import threading
from dataclasses import dataclass

from twisted.internet.base import DelayedCall

from ..errors import RequestError, ServerBusy, ServiceError, TooLarge
from ..files.limits import Allowance, Limits
from ..net.body import Budget
from ..protocol import stored_volumes
from ..protocol.codecs import input_codec
from ..protocol.elements import Volume
from .form import read_fields

log = logging.getLogger("tomaat.server")

FIELD = "volume"
UPLOAD = Volume(FIELD)
GIVEN = "POST /volumes takes one image file in a multipart/form-data part named 'volume'"


def short(volume_id: str) -> str:
    """An id as the log shows it: enough to follow one volume, too little to use it."""
    return volume_id[:8] + "..."


class VolumeStoreFull(ServiceError):
    status = 507


@dataclass
class _Stored:
    image: object  # sitk.Image, never handed out itself
    size: int
    last_used: float
    timer: DelayedCall | None = None
    owner: str = ""  # the identity that stored it (tomaat/access): to another one it does not exist


class _Reservation:
    """Room in the store (and in the decoded budget) held for one upload from its header until it is stored."""

    def __init__(self, store: StoredVolumes, allowance: Allowance):
        self.store = store
        self.allowance = allowance
        store._reserve(0, slot=True)  # 507 at once when the store holds as many volumes as it may
        self.slot, self.size = True, 0

    def add(self, size: int) -> None:
        self.store._reserve(size, slot=False)
        self.size += size

    def release(self) -> None:
        """Give the room back: the upload failed, or was never stored."""
        self.store._unreserve(self.size, self.slot)
        self.slot, self.size = False, 0
        self.allowance.release()


class _UploadAllowance(Allowance):
    """A request's allowance that also reserves room in the store, charging in this order: the request's own
    limit (413), the store's (507), the decoded inputs of all requests (503)."""

    def __init__(self, limits: Limits, shared: Budget | None, store: StoredVolumes):
        super().__init__(limits, shared, store.decoders)
        self.reservation = _Reservation(store, self)

    def charge(self, size: int, where: str) -> None:
        limit = self.limits.max_decoded_bytes
        if limit and self.used + size > limit:
            raise TooLarge(
                f"{where}: decoding it takes {size} bytes, more than the {limit} bytes one request may decode"
            )
        self.reservation.add(size)
        super().charge(size, where)  # a 503 here: the caller releases the reservation, this size included


@dataclass
class Upload:
    """A decoded upload, handed from the worker thread to the reactor, which stores it."""

    image: object
    reservation: _Reservation


class StoredVolumes:
    def __init__(
        self,
        clock,
        ttl: float = 600.0,
        max_bytes: int = 0,
        max_count: int = 0,
        limits: Limits | None = None,
        shared: Budget | None = None,
        max_fields: int = 256,
        decoders=None,
    ):
        self.clock = clock
        self.decoders = decoders  # the service's decoder processes (None: the process's)
        self.ttl = float(ttl)
        self.max_bytes, self.max_count = int(max_bytes), int(max_count)
        self.limits = limits or Limits()
        self.shared = shared  # the decoded inputs' budget, charged while a volume is held
        self.max_fields = max_fields
        self.held_bytes = 0
        self._reserved_bytes = self._reserved_count = 0
        self._entries: dict[str, _Stored] = {}
        self._lock = threading.Lock()
        self._closed = False

    @property
    def enabled(self) -> bool:
        return self.ttl > 0

    def __len__(self) -> int:
        return len(self._entries)

    def describe(self) -> dict | None:
        """What /info says: null when the server keeps no volumes."""
        if not self.enabled:
            return None
        return {"ttl": _number(self.ttl), "max_bytes": self.max_bytes}

    # ---- room, on worker threads ---------------------------------------------------------------

    def _reserve(self, size: int, slot: bool) -> None:
        with self._lock:
            count = len(self._entries) + self._reserved_count + 1
            if slot and self.max_count and count > self.max_count:
                raise VolumeStoreFull(
                    f"the server already keeps {self.max_count} volumes, as many as its max_stored_volumes "
                    "allows; delete one you no longer need (DELETE /volumes/<id>) or wait for one to expire"
                )
            used = self.held_bytes + self._reserved_bytes
            if size and self.max_bytes and used + size > self.max_bytes:
                raise VolumeStoreFull(
                    f"the volume takes {size} bytes decoded, and the server's stored volumes already hold {used} "
                    f"of its max_stored_bytes of {self.max_bytes}; delete a volume you no longer need "
                    "(DELETE /volumes/<id>), wait for one to expire, or send the volume with the prediction"
                )
            self._reserved_bytes += size
            self._reserved_count += int(slot)

    def _unreserve(self, size: int, slot: bool) -> None:
        with self._lock:
            self._reserved_bytes -= size
            self._reserved_count -= int(slot)

    def receive(self, body, content_type: str | None, timings, watch=None, trail=None) -> Upload:
        """POST /volumes on a worker thread: the one `volume` part, decoded and checked as /predict does."""
        with timings.stage("parse"):
            fields = read_fields(body, content_type, self.max_fields)
        if trail is not None:
            trail.received(fields)
        raw = fields.get(FIELD)
        if raw is None:
            raise RequestError(f"missing field {FIELD!r}; {GIVEN}")
        if stored_volumes.referenced_id(raw) is not None:
            raise RequestError(f"{UPLOAD.where()}: a volume_id names a stored volume; {GIVEN}")
        allowance = _UploadAllowance(self.limits, self.shared, self)
        try:
            with timings.stage("decode"):
                image = input_codec(UPLOAD).read(UPLOAD, raw, UPLOAD.where(), allowance)
            if trail is not None:
                trail.decoded({FIELD: image})
        except BaseException:
            allowance.reservation.release()
            raise
        return Upload(image, allowance.reservation)

    # ---- the reactor ---------------------------------------------------------------------------

    def put(self, upload: Upload, owner: str = "") -> tuple[str, int]:
        """Keep a decoded upload; (its id, its decoded bytes). On the reactor."""
        reservation = upload.reservation
        if self._closed:
            reservation.release()
            raise ServerBusy("the server is stopping; it keeps no more volumes")
        volume_id = secrets.token_hex(16)
        while volume_id in self._entries:  # 128 random bits: never, but never is cheap to be sure of
            volume_id = secrets.token_hex(16)
        size = reservation.size
        with self._lock:
            self._reserved_bytes -= size
            self._reserved_count -= int(reservation.slot)
            reservation.slot, reservation.size = False, 0
            self.held_bytes += size
            entry = self._entries[volume_id] = _Stored(upload.image, size, self.clock.seconds(), owner=owner)
        reservation.allowance.used = 0  # the decoded budget's charge is the store's now, given back on drop
        entry.timer = self.clock.callLater(self.ttl, self._expire, volume_id)
        log.info("stored volume %s (%d bytes); %d held, %d bytes", short(volume_id), size, len(self), self.held_bytes)
        return volume_id, size

    def _expire(self, volume_id: str) -> None:
        with self._lock:
            entry = self._entries.get(volume_id)
            if entry is None:
                return
            left = entry.last_used + self.ttl - self.clock.seconds()
            if left > 0:  # used since the timer was set: the time to live restarted then
                entry.timer = self.clock.callLater(left, self._expire, volume_id)
                return
            self._drop(volume_id)
        log.info("volume %s expired; %d held", short(volume_id), len(self))

    def _drop(self, volume_id: str) -> _Stored:
        """Under the lock."""
        entry = self._entries.pop(volume_id)
        self.held_bytes -= entry.size
        if self.shared is not None:
            self.shared.give(entry.size)
        return entry

    def _owned(self, volume_id: str, owner: str) -> _Stored | None:
        """Under the lock: the entry, if `owner` stored it; another identity's volume is as unknown as a wrong id."""
        entry = self._entries.get(volume_id)
        return entry if entry is not None and hmac.compare_digest(entry.owner, owner) else None

    def delete(self, volume_id: str, owner: str = "") -> bool:
        """DELETE /volumes/<id>: whether it was held. On the reactor."""
        with self._lock:
            if self._owned(volume_id, owner) is None:
                return False
            entry = self._drop(volume_id)
        if entry.timer is not None and entry.timer.active():
            entry.timer.cancel()
        log.info("deleted volume %s; %d held", short(volume_id), len(self))
        return True

    def clear(self) -> None:
        """Drop every volume (at shutdown); no more are stored after. On the reactor."""
        self._closed = True
        with self._lock:
            dropped = [self._drop(volume_id) for volume_id in list(self._entries)]
        for entry in dropped:
            if entry.timer is not None and entry.timer.active():
                entry.timer.cancel()
        if dropped:
            log.info("dropped %d stored volume(s) at shutdown", len(dropped))

    # ---- predictions, on worker threads --------------------------------------------------------

    def take(self, volume_id: str, where: str, owner: str = ""):
        """A copy-on-write copy of a stored volume for one prediction, restarting its time to live."""
        import SimpleITK as sitk

        with self._lock:
            entry = self._owned(volume_id, owner)
            if entry is None:
                raise RequestError(f"{where}: {stored_volumes.unknown(volume_id)}", 404)
            entry.last_used = self.clock.seconds()
            image = sitk.Image(entry.image)
        log.info("%s: stored volume %s", where, short(volume_id))
        return image


def _number(value: float):
    return int(value) if float(value).is_integer() else value


def take_fields(store: StoredVolumes | None, inputs, fields: dict, owner: str = "") -> dict:
    """{destination: image} for the volume fields whose value is `volume_id:<id>`; 400 for a malformed id,
    404 for one the store does not hold, or when the server keeps no volumes."""
    taken = {}
    for element in inputs:
        if element.wire_type != "volume" or element.destination not in fields:
            continue
        volume_id = stored_volumes.referenced_id(fields[element.destination])
        if volume_id is None:
            continue
        where = element.where()
        if not stored_volumes.is_volume_id(volume_id):
            raise RequestError(f"{where}: {stored_volumes.malformed()}")
        if store is None or not store.enabled:
            raise RequestError(
                f"{where}: {stored_volumes.unknown(volume_id)} (this server keeps no volumes: its volume_ttl is 0)",
                404,
            )
        taken[element.destination] = store.take(volume_id, where, owner)
    return taken
