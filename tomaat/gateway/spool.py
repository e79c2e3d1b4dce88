"""The spool: every acknowledged instance is on disk (fsync'd) before its C-STORE is answered, until its results left.

A series lives in a batch folder, `series/<batch>/`, with its instances, the results built from them,
and `journal.json`, the batch's state, rewritten atomically (a new file, fsync, rename, fsync of the
folder), so a gateway killed at any point finds each batch in a state it wrote whole:

- receiving: instances are arriving; the series is whole once none came for the quiet time
- received: closed (later instances of the series start a new batch); the prediction is to be made
- built: the results are on disk; `sent` lists those a destination acknowledged
- held: matched no rule, kept for an operator (`unmatched: hold`)
- failed: given up, with the reason; the instances are deleted, the journal kept for `gateway status`

A batch whose results were all sent is deleted whole. Results are built once and sent as the same
files after a restart, so a destination that stored one before the gateway was killed receives the same
SOP Instance UID again and keeps one copy: delivery is exactly once by UID.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import uuid

JOURNAL = "journal.json"
INSTANCES = "instances"
RESULTS = "results"
OPEN = "receiving"
TERMINAL = ("failed", "held")


class Full(Exception):
    """The instance would take the spool past its size cap."""


def _fsync_folder(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: str, data: bytes) -> None:
    """`data` at `path`, whole or not at all, and on disk when this returns."""
    temporary = f"{path}.{uuid.uuid4().hex}.part"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(temporary)
        raise
    os.close(fd)
    os.replace(temporary, path)
    _fsync_folder(os.path.dirname(path))


def _size(folder: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                pass
    return total


class Spool:
    """The batches on disk, the bytes they take, and which batch a series' next instance goes to."""

    def __init__(self, folder: str, max_bytes: int, owner: bool = True):
        """`owner`: the gateway's own spool, tidied at start; False for a look from `gateway status`."""
        self.folder = os.path.abspath(folder)
        self.series = os.path.join(self.folder, "series")
        self.max_bytes = max_bytes
        os.makedirs(self.series, mode=0o700, exist_ok=True)
        for name in os.listdir(self.series) if owner else ():
            if not os.path.exists(os.path.join(self.series, name, JOURNAL)):  # made, never journalled: nothing acked
                shutil.rmtree(os.path.join(self.series, name), ignore_errors=True)
        self._lock = threading.Lock()
        self.bytes = _size(self.series)
        self._open: dict[str, str] = {}  # SeriesInstanceUID -> its receiving batch
        self.arrival: dict[str, float] = {}  # batch -> monotonic time of its last instance
        for batch in self.batches():
            journal = self.journal(batch)
            if journal.get("state") == OPEN:
                self._open[journal["series_uid"]] = batch
        self.restart_quiet()

    def restart_quiet(self) -> None:
        """Start every receiving batch's quiet time again (as the listener opens after a restart): a sender that
        the gateway's end cut off may be sending the series again."""
        with self._lock:
            now = time.monotonic()
            self.arrival = {batch: now for batch in self._open.values()}

    def batches(self) -> list[str]:
        return sorted(name for name in os.listdir(self.series) if os.path.exists(self.path(name, JOURNAL)))

    def path(self, batch: str, *parts: str) -> str:
        return os.path.join(self.series, batch, *parts)

    def journal(self, batch: str) -> dict:
        with open(self.path(batch, JOURNAL), encoding="utf-8") as handle:
            return json.load(handle)

    def save(self, batch: str, journal: dict) -> None:
        data = json.dumps(journal, indent=1).encode()
        with self._lock:
            old = os.path.getsize(self.path(batch, JOURNAL)) if os.path.exists(self.path(batch, JOURNAL)) else 0
            write_durably(self.path(batch, JOURNAL), data)
            self.bytes += len(data) - old

    def put(self, header: dict, calling_ae: str, data: bytes) -> str:
        """Keep one instance (header: its UIDs and routing attributes, as the decoder read them); its batch.

        Raises Full when the spool would pass its cap. Returns only once the instance is on disk.
        """
        with self._lock:
            if self.bytes + len(data) > self.max_bytes:
                raise Full(f"{self.bytes + len(data)} bytes would pass the spool's cap of {self.max_bytes}")
            batch = self._open.get(header["series_uid"])
            if batch is None:
                batch = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
                os.makedirs(self.path(batch, INSTANCES), mode=0o700)
                journal = {
                    "batch": batch,
                    "state": OPEN,
                    "series_uid": header["series_uid"],
                    "study_uid": header["study_uid"],
                    "calling_ae": calling_ae,
                    "modality": header["modality"],
                    "series_description": header["series_description"],
                    "body_part": header["body_part"],
                    "created": time.time(),
                    "attempts": 0,
                    "results": [],
                    "sent": [],
                }
                data_journal = json.dumps(journal, indent=1).encode()
                write_durably(self.path(batch, JOURNAL), data_journal)
                _fsync_folder(self.series)
                self.bytes += len(data_journal)
                self._open[header["series_uid"]] = batch
            target = self.path(batch, INSTANCES, header["sop_uid"] + ".dcm")
            old = os.path.getsize(target) if os.path.exists(target) else 0  # the same instance again: replaced
            write_durably(target, data)
            self.bytes += len(data) - old
            self.arrival[batch] = time.monotonic()
            return batch

    def quiet(self, seconds: float) -> list[str]:
        """The receiving batches that got no instance for `seconds`."""
        now = time.monotonic()
        with self._lock:
            return [b for b in self._open.values() if now - self.arrival.get(b, now) >= seconds]

    def close(self, batch: str) -> dict:
        """Close a receiving batch (the series' next instance starts a new one); its journal, state `received`."""
        with self._lock:
            journal = self.journal(batch)
            self._open.pop(journal["series_uid"], None)
            self.arrival.pop(batch, None)
        journal["state"] = "received"
        self.save(batch, journal)
        return journal

    def instances(self, batch: str) -> list[str]:
        folder = self.path(batch, INSTANCES)
        return sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".dcm"))

    def add_result(self, batch: str, name: str, data: bytes) -> str:
        folder = self.path(batch, RESULTS)
        os.makedirs(folder, mode=0o700, exist_ok=True)
        path = os.path.join(folder, name)
        with self._lock:
            old = os.path.getsize(path) if os.path.exists(path) else 0  # built again after a kill: replaced
            write_durably(path, data)
            self.bytes += len(data) - old
        return path

    def drop_instances(self, batch: str) -> None:
        """Delete what a batch received and built, keeping its journal (a failed or held batch's record)."""
        for name in (INSTANCES, RESULTS):
            self._remove(self.path(batch, name))

    def remove(self, batch: str) -> None:
        with self._lock:
            self._open = {series: b for series, b in self._open.items() if b != batch}
            self.arrival.pop(batch, None)
        self._remove(self.path(batch))

    def _remove(self, path: str) -> None:
        if not os.path.exists(path):
            return
        size = _size(path) if os.path.isdir(path) else os.path.getsize(path)
        shutil.rmtree(path, ignore_errors=True)
        with self._lock:
            self.bytes -= size
