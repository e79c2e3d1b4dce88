"""Large buffers in huge pages, bodies lent to the image reader's pipe: the same bytes, faster (issue 25).

A server restarts itself with glibc's hugetlb tunable; a request body of 8 MiB or more lies in 2 MiB pages,
which give_back drops only whole; the pieces of a body go into the reader's pipe by reference (vmsplice).
"""

from __future__ import annotations

import mmap
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from test_cli_serve import ROOT, free_port, wait_until_up

from tomaat.files import filling, mha
from tomaat.net import body as body_module
from tomaat.net.body import HUGE_FROM, HUGE_PAGE, BodyBuffer, Budget, address, decoded_map, give_back, settled
from tomaat.net.huge_pages import TUNABLE

MIB = 1 << 20


def _huge_pages_possible() -> bool:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as setting:
            return "[never]" not in setting.read() and os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (OSError, ValueError):
        return False


def _serve(tmp_path, env: dict):
    """A `tomaat serve` process as an operator starts one: (its Popen, the environment it serves with)."""
    port = free_port()
    command = [sys.executable, "-m", "tomaat", "serve", "examples/threshold.py", "--port", str(port), "--no-tls"]
    process = subprocess.Popen(
        command + ["--listen-address", "127.0.0.1"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**env, "TMPDIR": str(tmp_path)},
    )
    try:
        wait_until_up(f"http://127.0.0.1:{port}", process)
        with open(f"/proc/{process.pid}/environ", "rb") as environ:  # the process the operator started: same id
            served = dict(item.split(b"=", 1) for item in environ.read().split(b"\0") if b"=" in item)
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20)
    assert process.returncode == 0, output
    return output, {key.decode(): value.decode() for key, value in served.items()}


@pytest.mark.skipif(not _huge_pages_possible(), reason="no transparent huge pages or not glibc")
def test_a_server_restarts_itself_with_huge_pages(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "GLIBC_TUNABLES"}
    output, served = _serve(tmp_path, env)
    assert served["GLIBC_TUNABLES"] == f"{TUNABLE}=1"
    assert "Threshold serving on" in output and "Traceback" not in output


@pytest.mark.skipif(not _huge_pages_possible(), reason="no transparent huge pages or not glibc")
def test_an_operators_own_setting_of_huge_pages_is_kept(tmp_path):
    _, served = _serve(tmp_path, {**os.environ, "GLIBC_TUNABLES": f"{TUNABLE}=0"})
    assert served["GLIBC_TUNABLES"] == f"{TUNABLE}=0"


RESTARTED = """
import os, sys
from tomaat.net.huge_pages import restart_with_huge_pages
pid = os.environ.setdefault("BEFORE_PID", str(os.getpid()))
restart_with_huge_pages()
data = b"\\x01" * (64 << 20)  # filled by memset: every page faulted
with open("/proc/self/smaps_rollup") as rollup:
    huge = next(int(line.split()[1]) for line in rollup if line.startswith("AnonHugePages:"))
print(pid == str(os.getpid()), os.environ["GLIBC_TUNABLES"], huge // 1024)
"""


@pytest.mark.skipif(not _huge_pages_possible(), reason="no transparent huge pages or not glibc")
@pytest.mark.parametrize("given", [None, "glibc.malloc.tcache_count=7", f"{TUNABLE}=0"])
def test_the_restart_keeps_the_process_and_the_operators_tunables_and_gives_huge_pages(given):
    """The effect itself: a 64 MiB buffer lies in huge pages after the restart (in none where an operator set
    the tunable to 0). /proc/PID/environ cannot show it: glibc rewrites the variable there as it parses it."""
    env = {key: value for key, value in os.environ.items() if key not in ("GLIBC_TUNABLES", "BEFORE_PID")}
    if given is not None:
        env["GLIBC_TUNABLES"] = given
    done = subprocess.run(
        [sys.executable, "-c", RESTARTED], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    same_process, tunables, huge_mib = done.stdout.split()
    assert same_process == "True", done.stderr
    if given == f"{TUNABLE}=0":
        assert tunables == given and int(huge_mib) == 0
    else:
        assert tunables == ":".join(filter(None, (given, f"{TUNABLE}=1")))
        assert int(huge_mib) >= 60, done.stdout  # all but the unaligned ends of 64 MiB


def _huge_map(size: int) -> BodyBuffer:
    body = BodyBuffer(size, Budget(0))
    body.write(bytes(range(256)) * (size // 256))
    body.finish()
    return body


def test_a_large_body_is_held_in_huge_pages_and_a_small_one_is_not():
    large, small = BodyBuffer(HUGE_FROM, Budget(0)), BodyBuffer(HUGE_FROM - 1, Budget(0))
    try:
        assert large.map.page == (HUGE_PAGE if hasattr(mmap, "MADV_HUGEPAGE") else mmap.PAGESIZE)
        assert small.map.page == mmap.PAGESIZE
    finally:
        large.close()
        small.close()


def test_giving_back_part_of_a_huge_page_body_drops_only_whole_huge_pages():
    """Dropping part of a huge page would split it (the decode stage doubled when it did), so only the whole
    2 MiB pages inside a view go; every byte outside the view, and inside it on a partial page, stays."""
    size = 24 * MIB
    body = _huge_map(size)
    try:
        if body.map.page != HUGE_PAGE:
            pytest.skip("no MADV_HUGEPAGE here")
        original = np.frombuffer(bytes(range(256)) * (size // 256), np.uint8)
        view = memoryview(body.map)
        start, stop = 3 * MIB + 123, 13 * MIB + 7
        give_back(view[start:stop])
        got = np.frombuffer(body.map, np.uint8)
        base = address(body.map)
        first = -(-(base + start) // HUGE_PAGE) * HUGE_PAGE - base  # the first whole huge page inside the view
        last = (base + stop) // HUGE_PAGE * HUGE_PAGE - base
        assert first < last  # at least one whole huge page lay inside
        assert not got[first:last].any()  # given back: reads as zeros
        assert np.array_equal(got[:first], original[:first]) and np.array_equal(got[last:], original[last:])
    finally:
        view.release()
        body.close()


def test_pieces_given_back_behind_a_pour_leave_nothing_behind():
    """mha._copied gives back all it has poured after each 1 MiB piece, whole huge pages only while it
    pours, then the small pages at both ends: every whole page of the data is gone, whatever the data's offset
    in the map, and the bytes before it (another field's) are kept."""
    size = 20 * MIB
    for offset in (0, 4096 + 17, HUGE_PAGE - 5):
        room = decoded_map(size)
        try:
            room[:] = b"\x01" * size
            data = memoryview(room)[offset:]
            pieces = mha._copied(data)
            for _ in range(5):
                next(pieces)
            got = np.frombuffer(room, np.uint8)
            base = address(room)
            first = -(-(base + offset) // room.page) * room.page - base
            assert got[:first].all()  # mid-pour: the partial huge page at the start is whole still
            for piece in pieces:
                del piece  # taken, as the pipe takes it
            start = -(-offset // mmap.PAGESIZE) * mmap.PAGESIZE
            assert not got[start:].any(), f"offset {offset}: pages left"
            assert got[:offset].all()  # before the data: kept
            del got
            data.release()
        finally:
            room.close()


def test_only_a_bodys_bytes_are_lent_to_the_pipe():
    body = _huge_map(HUGE_FROM)
    try:
        assert settled(memoryview(body.map)[5:100]) and settled(memoryview(body.map).cast("B").toreadonly())
        assert not settled(memoryview(bytes(10))) and not settled(memoryview(bytearray(10)))
    finally:
        body.close()
    assert not settled(memoryview(bytearray(10)))


@pytest.mark.parametrize("lent", [True, False])
def test_an_image_poured_from_a_body_by_reference_or_by_copy_is_exact(lent, monkeypatch, tmp_path):
    """The same image either way, on a rotated, offset grid, and the body's pages given back behind it."""
    if not lent:
        monkeypatch.setattr(filling, "_VMSPLICE", None)
    elif filling._VMSPLICE is None:
        pytest.skip("no vmsplice here")
    array = np.random.default_rng(3).normal(0, 100, (64, 96, 384)).astype(np.float32)  # 9 MiB: huge pages
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.7, 0.8, 2.5))
    image.SetOrigin((-31.5, 12.0, 4.25))
    image.SetDirection((0, 0, 1, 1, 0, 0, 0, 1, 0))
    sitk.WriteImage(image, str(tmp_path / "volume.mha"), False)  # as ITK writes it
    raw = (tmp_path / "volume.mha").read_bytes()
    body = BodyBuffer(len(raw), Budget(0))
    body.write(raw)
    body.finish()
    spliced = []
    real = filling._splice_all
    monkeypatch.setattr(filling, "_splice_all", lambda fd, at, n: (spliced.append(n), real(fd, at, n)))
    try:
        got = mha.read(memoryview(body.map))
        assert np.array_equal(sitk.GetArrayViewFromImage(got), array)
        assert (got.GetSpacing(), got.GetOrigin(), got.GetDirection()) == (
            image.GetSpacing(),
            image.GetOrigin(),
            image.GetDirection(),
        )
        assert (sum(spliced) == array.nbytes) if lent else not spliced
        assert not np.frombuffer(body.map, np.uint8)[len(raw) // 2 : len(raw) // 2 + HUGE_PAGE].any()  # given back
    finally:
        body.close()


def test_give_back_leaves_other_buffers_alone():
    data = bytearray(b"\x07" * (4 * MIB))
    give_back(memoryview(data))
    assert data == b"\x07" * (4 * MIB)
    assert body_module.SMALL_BODY < HUGE_FROM
