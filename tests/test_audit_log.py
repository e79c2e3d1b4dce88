"""The tamper-evident audit log: the chain across rotation, tampering found at the right line, restarts, threads,
write failures, fsync policies, and `tomaat audit verify`."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from tomaat.access import audit
from tomaat.access.audit import GENESIS, AuditError, AuditLog, chain_files, verify
from tomaat.access.audit_cli import audit as audit_group

ROOT = Path(__file__).resolve().parent.parent
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def event(i: int) -> dict:
    return {"event": "predict", "who": f"user-{i:04d}", "route": "/predict", "status": 200}


def write_log(path: Path, count: int, **options) -> AuditLog:
    with AuditLog(str(path), **{"fsync": "never", **options}) as log:
        for i in range(count):
            log.append(event(i))
    return log


def located(problems) -> list[tuple[str, int]]:
    return [(problem.path, problem.line) for problem in problems]


def lines_of(path: str) -> list[bytes]:
    return Path(path).read_bytes().splitlines(keepends=True)


def put_lines(path: str, lines: list[bytes]) -> None:
    Path(path).write_bytes(b"".join(lines))


def records(paths: list[str]) -> list[dict]:
    return [json.loads(line) for path in paths for line in lines_of(path)]


def cli(*args):
    return CliRunner().invoke(audit_group, list(args))


@pytest.fixture(scope="module")
def rotated(tmp_path_factory) -> tuple[str, str]:
    """1,000 records with one rotation: (path.1, path), written once and copied by each test that tampers."""
    path = tmp_path_factory.mktemp("rotated") / "logs" / "audit.log"
    write_log(path, 1000, rotate_bytes=150_000)
    return str(path) + ".1", str(path)


@pytest.fixture
def chain(rotated, tmp_path) -> tuple[str, str]:
    older, newer = (tmp_path / "audit.log.1", tmp_path / "audit.log")
    older.write_bytes(Path(rotated[0]).read_bytes())
    newer.write_bytes(Path(rotated[1]).read_bytes())
    return str(older), str(newer)


def test_a_thousand_records_across_a_rotation_verify_intact(rotated):
    older, newer = rotated
    assert chain_files(newer) == [older, newer]
    assert os.path.getsize(older) <= 150_000 < os.path.getsize(older) + len(lines_of(newer)[0])
    every = records([older, newer])
    assert [r["seq"] for r in every] == list(range(1, 1001))
    assert every[0]["prev"] == GENESIS
    for before, record in zip(every, every[1:], strict=False):
        assert record["prev"] == before["hash"]
    first_new = json.loads(lines_of(newer)[0])
    assert first_new["prev"] == json.loads(lines_of(older)[-1])["hash"]  # the chain crosses the rotation
    for record in every[:3]:
        body = {k: v for k, v in record.items() if k != "hash"}
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        assert record["hash"] == hashlib.sha256(canonical.encode()).hexdigest()
        assert TIME.fullmatch(record["time"])
    assert verify([older, newer]) == (1000, [])
    result = cli("verify", newer)
    assert (result.exit_code, result.output) == (0, "ok: 1000 records in 2 file(s), chain intact\n")


def test_folder_and_file_are_private(rotated):
    older, newer = rotated
    assert stat.S_IMODE(os.stat(os.path.dirname(newer)).st_mode) == 0o700
    for path in (older, newer):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


@pytest.mark.parametrize("which", ["older", "newer"])
def test_every_one_byte_edit_of_a_middle_line_is_found_at_that_line(tmp_path, which):
    path = tmp_path / "audit.log"
    write_log(path, 30, rotate_bytes=3000)
    files = chain_files(str(path))
    target = files[-2] if which == "older" else files[-1]
    original = lines_of(target)
    line = len(original) // 2
    for offset in range(len(original[line]) - 1):  # every byte but the newline
        edited = bytearray(original[line])
        edited[offset] ^= 0x01
        put_lines(target, original[:line] + [bytes(edited)] + original[line + 1 :])
        _, problems = verify(files)
        assert problems and located(problems)[0] == (target, line + 1), (offset, problems)
    put_lines(target, original)
    assert verify(files)[1] == []


def test_a_one_byte_edit_of_the_last_line_is_found(chain):
    older, newer = chain
    lines = lines_of(newer)
    lines[-1] = lines[-1].replace(b'"status":200', b'"status":201')
    put_lines(newer, lines)
    checked, problems = verify([older, newer])
    assert checked == 1000
    assert located(problems) == [(newer, len(lines))]
    assert "hash does not match" in problems[0].what
    result = cli("verify", newer)
    assert result.exit_code == 1
    assert result.stdout == f"{newer}:{len(lines)}: {problems[0].what}\n"


@pytest.mark.parametrize(
    "which, index, found", [("newer", 100, 101), ("newer", 0, 1), ("older", 500, 501), ("older", -1, 1)],
    ids=["middle", "first-of-new", "middle-of-old", "last-of-old"],
)  # fmt: skip
def test_a_removed_line_breaks_the_chain_at_the_next(chain, which, index, found):
    older, newer = chain
    target = older if which == "older" else newer
    lines = lines_of(target)
    del lines[index]
    put_lines(target, lines)
    _, problems = verify([older, newer])
    where = newer if index == -1 else target  # the last line of a file: the break shows in the next file
    assert located(problems) == [(where, found)]
    assert "does not follow" in problems[0].what


def test_a_removed_first_record_reads_as_older_files_gone(chain):
    """The chain alone cannot tell the two apart (docs/security.md): a note, and the heads the service logged."""
    older, newer = chain
    put_lines(older, lines_of(older)[1:])
    notes = []
    assert verify([older, newer], notes=notes) == (999, [])
    assert [(note.path, note.line, note.what) for note in notes] == [
        (older, 1, "the chain starts at seq 2: older files gone")
    ]


def test_an_inserted_copy_of_another_line_is_found_at_the_copy(chain):
    older, newer = chain
    lines = lines_of(newer)
    lines.insert(200, lines_of(older)[10])
    put_lines(newer, lines)
    assert located(verify([older, newer])[1]) == [(newer, 201)]


def forged(after: dict, **fields) -> bytes:
    record = {"event": "predict", "who": "mallory", "route": "/predict", "status": 200, "time": after["time"]}
    record |= {"seq": after["seq"] + 1, "prev": after["hash"]} | fields
    record["hash"] = audit.record_hash(record)
    return (audit.canonical(record) + "\n").encode()


def test_a_forged_line_with_its_own_correct_hash_is_found(chain):
    older, newer = chain
    lines = lines_of(newer)
    before = json.loads(lines[49])
    lines.insert(50, forged(before, seq=before["seq"], prev=json.loads(lines[48])["hash"]))  # poses as its neighbour
    put_lines(newer, lines)
    assert located(verify([older, newer])[1]) == [(newer, 51)]


def test_a_forged_line_that_links_to_the_one_before_is_found_at_the_line_after(chain):
    """The forgery itself is a valid link; the original record after it no longer is."""
    older, newer = chain
    lines = lines_of(newer)
    lines.insert(50, forged(json.loads(lines[49])))
    put_lines(newer, lines)
    _, problems = verify([older, newer])
    assert located(problems) == [(newer, 52)]
    assert "does not follow" in problems[0].what


def test_a_line_rewritten_with_the_same_content_is_found(chain):
    """Same JSON, other bytes (a space added): its hash still matches, its form does not."""
    older, newer = chain
    lines = lines_of(older)
    lines[7] = lines[7].replace(b'","', b'", "', 1)
    put_lines(older, lines)
    _, problems = verify([older, newer])
    assert [(p.path, p.line, p.what) for p in problems] == [
        (older, 8, "it is not in canonical form (the line was edited)")
    ]


def test_an_unreadable_line_is_reported_and_the_seq_still_checked(chain):
    older, newer = chain
    lines = lines_of(newer)
    lines[30] = b"garbage\n"
    del lines[31]  # hidden behind the garbage: the seq after it jumps by two
    put_lines(newer, lines)
    assert located(verify([older, newer])[1]) == [(newer, 31), (newer, 32)]


def test_reopening_continues_seq_and_chain(tmp_path):
    path = tmp_path / "audit.log"
    first = write_log(path, 5)
    head = first.head
    assert head[0] == 5
    with AuditLog(str(path)) as log:
        assert log.head == head
        log.append({"event": "start"})
        assert log.head[0] == 6
    every = records([str(path)])
    assert every[5]["seq"] == 6 and every[5]["prev"] == head[1]
    assert verify([str(path)]) == (6, [])


def test_reopening_after_a_crash_mid_rotation_continues_from_the_rotated_file(tmp_path):
    path = tmp_path / "audit.log"
    head = write_log(path, 5).head
    os.rename(path, str(path) + ".1")  # the crash came before the new file was made
    with AuditLog(str(path)) as log:
        assert log.head == head
        log.append({"event": "start"})
    assert verify(chain_files(str(path))) == (6, [])


def test_a_torn_last_line_stops_open_naming_the_line(tmp_path):
    path = tmp_path / "audit.log"
    write_log(path, 7)
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"event":"predict","who":"us')
    with pytest.raises(AuditError) as raised:
        AuditLog(str(path)).open()
    message = str(raised.value)
    assert "audit.log ends in line 8" in message and "tomaat audit verify" in message
    assert str(tmp_path) not in message and "\n" not in message
    assert located(verify([str(path)])[1]) == [(str(path), 8)]
    path.write_bytes(whole)  # what the operator does after verifying: the torn line removed
    with AuditLog(str(path)) as log:
        log.append({"event": "start"})
    assert verify([str(path)]) == (8, [])


def test_eight_threads_appending_at_once_keep_the_chain(tmp_path):
    path = tmp_path / "audit.log"
    log = AuditLog(str(path), fsync="never", rotate_bytes=40_000)
    log.open()
    start = threading.Barrier(8)

    def work(worker: int):
        start.wait(timeout=30)
        for i in range(250):
            log.append({"worker": worker, "i": i})

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    log.close()
    files = chain_files(str(path))
    assert len(files) > 2
    assert verify(files) == (2000, [])
    every = records(files)
    assert sorted((r["worker"], r["i"]) for r in every) == [(w, i) for w in range(8) for i in range(250)]
    assert log.head == (2000, every[-1]["hash"])


def test_a_path_under_a_regular_file_raises_audit_error(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    with pytest.raises(AuditError) as raised:
        AuditLog(str(blocker / "audit.log")).open()
    assert str(raised.value) == "cannot make the folder of the audit log audit.log: a file is in its place"
    with pytest.raises(AuditError) as raised:
        AuditLog(str(blocker / "deeper" / "audit.log")).open()
    assert str(raised.value) == "cannot make the folder of the audit log audit.log: Not a directory"


def test_a_device_is_refused_as_an_audit_log():
    with pytest.raises(AuditError, match=r"^the audit log full is not a regular file"):
        AuditLog("/dev/full").open()


FILLER = """
import json, resource, signal, sys
from tomaat.access.audit import AuditError, AuditLog
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing us
log = AuditLog(sys.argv[1], fsync="always")
log.open()
resource.setrlimit(resource.RLIMIT_FSIZE, (5000, resource.RLIM_INFINITY))
try:
    for i in range(1000):
        log.append({"event": "predict", "n": i, "pad": "x" * 37})
except AuditError as error:
    print(json.dumps([str(error), log.head]))
    try:
        log.append({"event": "again"})
    except AuditError as again:
        print(json.dumps(str(again)))
"""


def test_a_write_that_fails_midway_is_undone_and_raises(tmp_path):
    """The file size limit cuts a record in two: the half is removed, so the chain on disk stays whole."""
    path = tmp_path / "audit.log"
    run = subprocess.run(
        [sys.executable, "-c", FILLER, str(path)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    (message, (seq, last_hash)), again = map(json.loads, run.stdout.splitlines())
    assert message == "cannot write the audit log audit.log: File too large"
    assert again.startswith("cannot write the audit log audit.log")
    assert 5000 - 200 < path.stat().st_size < 5000
    assert verify([str(path)]) == (seq, [])
    with AuditLog(str(path)) as log:
        assert log.head == (seq, last_hash)
        log.append({"event": "after"})
    assert verify([str(path)]) == (seq + 1, [])


def test_a_rotation_that_fails_raises_and_is_tried_again(tmp_path):
    path = tmp_path / "audit.log"
    with AuditLog(str(path), fsync="never", rotate_bytes=1000, keep=1) as log:
        blocker = tmp_path / "audit.log.1"
        blocker.mkdir()  # the oldest file, to be deleted, cannot be
        with pytest.raises(AuditError, match=r"^cannot rotate the audit log audit.log: Is a directory$"):
            for i in range(100):
                log.append(event(i))
        written = log.head[0]
        assert 0 < written < 10
        blocker.rmdir()
        for i in range(written, 20):
            log.append(event(i))
    files = chain_files(str(path))
    assert len(files) == 2
    assert verify(files)[1] == []
    assert [r["seq"] for r in records(files)][-1] == 20


def test_a_second_writer_is_refused(tmp_path):
    path = str(tmp_path / "audit.log")
    with AuditLog(path):
        with pytest.raises(AuditError, match="audit.log is in use by another process"):
            AuditLog(path).open()


@pytest.mark.parametrize("policy, most", [("always", None), ("interval", 3), ("never", 0)])
def test_each_fsync_policy_writes_a_verifiable_log(tmp_path, monkeypatch, policy, most):
    synced = []
    real = os.fsync

    def counting(fd):  # still syncs: only counts
        synced.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    path = tmp_path / "audit.log"
    write_log(path, 100, fsync=policy, rotate_bytes=8000)
    files = chain_files(str(path))
    assert len(files) > 1
    assert verify(files) == (100, [])
    if most is None:
        assert len(synced) >= 100
    else:
        assert len(synced) <= most + len(files) * 2  # files and their folder at each rotation, and at close


def test_records_keep_their_time_and_may_not_set_the_chain(tmp_path):
    with AuditLog(str(tmp_path / "audit.log")) as log:
        log.append({"event": "x", "time": "2024-01-02T03:04:05.678Z"})
        for bad in ({"seq": 9}, {"hash": "0"}, {"prev": GENESIS}, ["not", "a", "dict"]):
            with pytest.raises(AuditError, match="append\\(\\) sets them"):
                log.append(bad)
        with pytest.raises(AuditError, match="cannot be written as JSON") as raised:
            log.append({"token": "s3cret-value", "body": b"bytes"})
        assert "s3cret" not in str(raised.value)
        with pytest.raises(AuditError):
            log.append({"score": float("nan")})
        assert log.head[0] == 1
    [record] = records([str(tmp_path / "audit.log")])
    assert record["time"] == "2024-01-02T03:04:05.678Z"


def test_old_files_beyond_keep_are_deleted_and_reported_as_a_note(tmp_path):
    path = tmp_path / "audit.log"
    write_log(path, 200, rotate_bytes=3000, keep=2)
    files = chain_files(str(path))
    assert files == [str(path) + ".2", str(path) + ".1", str(path)]
    notes = []
    checked, problems = verify(files, notes=notes)
    assert problems == [] and located(notes) == [(files[0], 1)]
    assert records(files)[-1]["seq"] == 200
    result = cli("verify", str(path))
    assert result.exit_code == 0
    assert result.stdout == f"ok: {checked} records in 3 file(s), chain intact\n"
    assert f"{files[0]}:1: note: the chain starts at seq" in result.stderr


def test_verify_takes_several_files_in_the_order_given(chain):
    older, newer = chain
    assert cli("verify", older, newer).stdout == "ok: 1000 records in 2 file(s), chain intact\n"
    result = cli("verify", newer, older)
    assert result.exit_code == 1
    assert result.stdout.startswith(f"{older}:1: seq 1 does not follow seq 1000")


@pytest.mark.parametrize("kind", ["missing", "folder"])
def test_verify_exits_2_with_one_line_when_a_file_cannot_be_read(tmp_path, kind):
    target = tmp_path / "audit.log"
    if kind == "folder":
        target.mkdir()
    result = cli("verify", str(target))
    assert result.exit_code == 2
    assert result.stdout == ""
    assert re.fullmatch(rf"error: cannot read the audit log {re.escape(str(target))}: [^\n]+\n", result.stderr)


def test_tomaat_audit_verify_runs_from_the_command_line(chain):
    from tomaat.cli import main

    if "audit" not in main.commands:
        pytest.skip("`tomaat audit` is not registered in tomaat/cli.py yet")
    older, newer = chain
    ok = subprocess.run([sys.executable, "-m", "tomaat", "audit", "verify", newer], cwd=ROOT, capture_output=True)
    assert (ok.returncode, ok.stdout) == (0, b"ok: 1000 records in 2 file(s), chain intact\n")
    lines = lines_of(older)
    del lines[3]
    put_lines(older, lines)
    bad = subprocess.run([sys.executable, "-m", "tomaat", "audit", "verify", newer], cwd=ROOT, capture_output=True)
    assert bad.returncode == 1 and bad.stdout.startswith(f"{older}:4: ".encode())
