"""The audit log: one JSON line per decision, each chained to the one before by a SHA-256 hash.

The chain makes an edit, a removed line or an inserted line visible to `tomaat audit verify`; it cannot stop
someone who rewrites the whole log from building a fresh chain, which is why the service also writes the head
(seq, hash) to its ordinary log at start and stop (docs/security.md, "The audit log").

A torn last line (a crash in the middle of a write) stops `open()`: continuing after it would let a real
tampering pass as a crash. The operator verifies the log, removes the torn line, and starts again.
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import json
import os
import re
import stat
import threading
import time
import typing

GENESIS = "0" * 64  # the `prev` of the first record ever
FSYNC_POLICIES = ("always", "interval", "never")
CHAINED = ("seq", "prev", "hash")  # the fields append() sets: a record may not bring its own
_HEX64 = re.compile(r"[0-9a-f]{64}")


class AuditError(Exception):
    """The log cannot be opened, written or read: a one-line reason naming the file, never a record's content."""


class Problem(typing.NamedTuple):
    path: str
    line: int  # 1-based, within `path`
    what: str


def canonical(record: dict) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def record_hash(record: dict) -> str:
    return hashlib.sha256(canonical({k: v for k, v in record.items() if k != "hash"}).encode("ascii")).hexdigest()


def chain_files(path: str) -> list[str]:
    """`path.N` siblings, highest N (oldest) first, then `path`; gaps (a crash mid-rotation) are skipped."""
    folder, base = os.path.split(path)
    pattern = re.compile(re.escape(base) + r"\.([1-9][0-9]*)")
    try:
        names = os.listdir(folder or ".")
    except FileNotFoundError:
        names = []
    except OSError as error:
        raise AuditError(f"cannot list the folder of the audit log {path}: {error.strerror}") from None
    numbered = sorted((int(m.group(1)), name) for name in names if (m := pattern.fullmatch(name)))
    return [os.path.join(folder, name) for _, name in reversed(numbered)] + [path]


class AuditLog:
    """Appends are serialised by a lock and written whole with os.write on an O_APPEND descriptor, so no record
    is split by Python's buffering; the file is also flock()ed so two services cannot interleave one chain."""

    def __init__(self, path: str, *, fsync: str = "always", rotate_bytes: int = 64 * 1024**2, keep: int = 10):
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"audit fsync policy {fsync!r} is unknown: expected one of {', '.join(FSYNC_POLICIES)}")
        if rotate_bytes < 1 or keep < 1:
            raise ValueError(f"audit rotate_bytes ({rotate_bytes}) and keep ({keep}) must both be at least 1")
        self.path, self.fsync, self.rotate_bytes, self.keep = path, fsync, rotate_bytes, keep
        self._name = os.path.basename(path)
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._size = 0
        self._seq, self._hash = 0, GENESIS
        self._synced_at = 0.0
        self._dirty = False
        self._damaged = ""  # why appends must stop: a failed write that could not be undone

    @property
    def head(self) -> tuple[int, str]:
        with self._lock:
            return self._seq, self._hash

    def __enter__(self) -> AuditLog:
        self.open()
        return self

    def __exit__(self, *_) -> None:
        self.close()

    def open(self) -> None:
        with self._lock:
            if self._fd is not None:
                return
            folder = os.path.dirname(self.path) or "."
            try:
                os.makedirs(folder, mode=0o700, exist_ok=True)
            except FileExistsError:  # a file where the folder should be
                raise AuditError(
                    f"cannot make the folder of the audit log {self._name}: a file is in its place"
                ) from None
            except OSError as error:
                raise self._error("make the folder of", error) from None
            try:
                self._seq, self._hash = self._last_head()
                self._open_file()
                self._damaged = ""
            except OSError as error:
                raise self._error("open", error) from None

    def append(self, record: dict) -> None:
        """Writes `record` with seq, time (unless given), prev and hash. A failed write is undone (the file is
        cut back) so the chain stays whole; a failed fsync leaves the record in the file and in the chain, and
        still raises, since the record may not survive a power cut."""
        if not isinstance(record, dict) or any(key in record for key in CHAINED):
            raise AuditError(f"an audit record must be a dict without {', '.join(CHAINED)}: append() sets them")
        with self._lock:
            if self._damaged:
                raise AuditError(self._damaged)
            if self._fd is None:
                raise AuditError(f"the audit log {self._name} is not open")
            full = {"time": _now()} | record | {"seq": self._seq + 1, "prev": self._hash}
            try:
                full["hash"] = record_hash(full)
                line = (canonical(full) + "\n").encode("ascii")
            except (TypeError, ValueError) as error:
                raise AuditError(f"an audit record cannot be written as JSON: {error}") from None
            if self._size and self._size + len(line) > self.rotate_bytes:
                self._rotate()
            self._write(line)
            self._seq, self._hash = full["seq"], full["hash"]
            self._dirty = True
            if self.fsync == "always" or (self.fsync == "interval" and time.monotonic() - self._synced_at >= 1):
                self._sync()

    def close(self) -> None:
        with self._lock:
            if self._fd is None:
                return
            fd, self._fd = self._fd, None
            try:
                if self.fsync != "never" and self._dirty:
                    os.fsync(fd)
            except OSError as error:
                raise self._error("sync", error) from None
            finally:
                os.close(fd)  # also drops the flock

    def _error(self, doing: str, error: OSError) -> AuditError:
        return AuditError(f"cannot {doing} the audit log {self._name}: {error.strerror or type(error).__name__}")

    def _last_head(self) -> tuple[int, str]:
        """The newest record of the newest non-empty file of the chain, or (0, GENESIS) for a new log."""
        for path in reversed(chain_files(self.path)):
            try:
                line, whole = _last_line(path)
            except FileNotFoundError:
                continue
            if not line and whole:
                continue  # empty: a crash between a rotation and the first record of the new file
            record = _parse(line) if whole else "no newline after it"
            if isinstance(record, str):
                raise AuditError(
                    f"the audit log {os.path.basename(path)} ends in line {_count_lines(path)}, which is not a "
                    f"whole record ({record}: a crash mid-write, or an edit): check the log with `tomaat audit "
                    "verify`, remove that line, and start again"
                )
            return record["seq"], record["hash"]
        return 0, GENESIS

    def _open_file(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise AuditError(f"the audit log {self._name} is not a regular file: expected a file it may rotate")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise AuditError(f"the audit log {self._name} is in use by another process") from None
            if self.fsync != "never":
                _sync_folder(self.path)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._size = fd, info.st_size

    def _rotate(self) -> None:
        """path.N -> path.N+1 oldest first, dropping every N >= keep, then path -> path.1 and a fresh path. A
        failure up to the last rename leaves the current file open (the next append tries again); one after it
        leaves no file to write, and appends fail until a restart."""
        try:
            for sibling in chain_files(self.path)[:-1]:
                number = int(sibling.rsplit(".", 1)[1])
                if number >= self.keep:
                    os.remove(sibling)
                else:
                    os.rename(sibling, f"{self.path}.{number + 1}")
            os.rename(self.path, self.path + ".1")
        except OSError as error:
            raise self._error("rotate", error) from None
        fd, self._fd = self._fd, None
        assert fd is not None
        os.close(fd)
        try:
            self._open_file()
        except OSError as error:
            self._damaged = f"the audit log {self._name} was rotated but no new file could be made: restart"
            raise self._error("rotate", error) from None
        except AuditError as error:
            self._damaged = str(error)
            raise

    def _write(self, line: bytes) -> None:
        assert self._fd is not None  # open() came first
        start, written = self._size, 0
        try:
            while written < len(line):
                written += os.write(self._fd, line[written:])
        except OSError as error:
            if written:
                try:
                    os.ftruncate(self._fd, start)
                except OSError:
                    self._damaged = f"the audit log {self._name} ends in a partly written record: restart"
            raise self._error("write", error) from None
        self._size += written

    def _sync(self) -> None:
        assert self._fd is not None
        try:
            os.fsync(self._fd)
        except OSError as error:
            raise self._error("sync", error) from None
        self._synced_at, self._dirty = time.monotonic(), False


def verify(paths: list[str], *, notes: list[Problem] | None = None) -> tuple[int, list[Problem]]:
    """Checks each record's own hash and canonical form, and its link (seq, prev) to the record before, across
    the files in the order given. Returns (records checked, problems); what is worth telling but no fault (the
    chain starting after seq 1 because `keep` dropped older files) goes to `notes` when given. Raises AuditError
    for a file that cannot be read.

    After a bad link the next record may link to either the bad one or the last good one, so one removed or
    inserted line is reported once, at the first line whose link is broken."""
    problems: list[Problem] = []
    checked = unreadable = 0  # unreadable: lines since `last` that are no record; each stands for one
    last: dict | None = None  # the last readable record
    good: dict | None = None  # the last one whose link was fine
    for path in paths:
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError as error:
            raise AuditError(f"cannot read the audit log {path}: {error.strerror}") from None
        lines = data.split(b"\n")
        torn = lines.pop()  # b"" when the file ends with a newline, as every whole record does
        for number, raw in enumerate(lines + ([torn] if torn else []), start=1):
            checked += 1
            record = _parse(raw, check_hash=False)
            if isinstance(record, str):
                problems.append(Problem(path, number, record))
                unreadable += 1
                continue
            what, linked = [], True
            if number > len(lines):
                what.append("it does not end with a newline (a write cut short)")
            if record["hash"] != record_hash(record):
                what.append("its hash does not match its content (the line was edited)")
            elif raw != canonical(record).encode("ascii"):
                what.append("it is not in canonical form (the line was edited)")
            if last is None and checked == 1:  # the chain's start
                if record["seq"] != 1 and notes is not None:
                    notes.append(Problem(path, number, f"the chain starts at seq {record['seq']}: older files gone"))
                elif record["seq"] == 1 and record["prev"] != GENESIS:
                    what.append("seq 1 has a prev other than 64 zeros")
            elif unreadable:  # prev cannot be checked, seq can
                if last is not None and record["seq"] != last["seq"] + 1 + unreadable:
                    linked = False
                    what.append(f"seq {record['seq']} does not follow seq {last['seq']} and {unreadable} bad line(s)")
            elif not any(_links(record, before) for before in (last, good) if before is not None):
                assert last is not None  # not the chain's start
                linked = False
                what.append(
                    (
                        f"seq {record['seq']} does not follow seq {last['seq']} before it"
                        if record["seq"] != last["seq"] + 1
                        else f"prev is not the hash of seq {last['seq']} before it"
                    )
                    + " (a record removed, inserted or edited before this line)"
                )
            if what:
                problems.append(Problem(path, number, "; ".join(what)))
            if linked:
                good = record
            last, unreadable = record, 0
    return checked, problems


def _links(record: dict, before: dict) -> bool:
    return record["seq"] == before["seq"] + 1 and record["prev"] == before["hash"]


def _parse(raw: bytes, check_hash: bool = True) -> dict | str:
    """A record with well-typed chain fields, or a one-line reason it is not one."""
    if not raw:
        return "an empty line"
    try:
        record = json.loads(raw.decode("ascii"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError):
        return "not a JSON record"
    if not isinstance(record, dict):
        return "not a JSON object"
    if type(record.get("seq")) is not int or record["seq"] < 1:
        return "no positive integer seq"
    if not all(isinstance(record.get(key), str) and _HEX64.fullmatch(record[key]) for key in ("prev", "hash")):
        return "no 64-hex-digit prev and hash"
    try:
        own = record_hash(record)
    except ValueError:
        return "not a JSON record (a number out of range)"
    if check_hash and record["hash"] != own:
        return "its hash does not match its content"
    return record


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _last_line(path: str) -> tuple[bytes, bool]:
    """The file's last line and whether a newline ends it; (b"", True) for an empty file. Reads from the end,
    so a 64 MiB log opens at once."""
    with open(path, "rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        tail, position = b"", size
        while position and b"\n" not in tail[:-1]:
            step = min(position, 65536)
            position -= step
            handle.seek(position)
            tail = handle.read(step) + tail
    whole = tail.endswith(b"\n") or not tail
    return tail[tail.rfind(b"\n", 0, len(tail) - 1) + 1 :].removesuffix(b"\n"), whole


def _count_lines(path: str) -> int:
    with open(path, "rb") as handle:
        data = handle.read()
    return data.count(b"\n") + (0 if data.endswith(b"\n") else 1)


def _sync_folder(path: str) -> None:
    """A new or renamed file survives a power cut only once its folder is synced too."""
    fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
