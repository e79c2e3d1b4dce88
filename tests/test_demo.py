"""The README's first command stays true: the demo runs the whole loop and leaves a label map on the phantom's grid,
and the browser page it prints last answers while the user can open it."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time

import requests
import SimpleITK as sitk
from test_cli_serve import ROOT


def test_demo_discovers_predicts_and_saves(tmp_path):
    result = subprocess.run(
        [sys.executable, "examples/demo.py", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "$ tomaat discover http://127.0.0.1:" in result.stdout
    assert "   any / any / segmentation\n     Threshold " in result.stdout
    assert "$ tomaat predict http://127.0.0.1:" in result.stdout and "--set threshold=250 --out" in result.stdout
    assert "(on the input's grid: yes)" in result.stdout
    labels = sitk.ReadImage(str(tmp_path / "labels.nii.gz"))
    assert labels.GetSize() == (64, 64, 48)
    assert int(sitk.GetArrayViewFromImage(labels).sum()) > 0
    # Not at a terminal: the demo says its servers stop, and how to serve the page, rather than offer a dead link.
    assert re.search(r"the browser page answered at http://127\.0\.0\.1:\d+/app/ \(HTTP 200\)", result.stdout)
    assert "stops its\n   servers now (not run in a terminal)" in result.stdout
    assert ".venv/bin/tomaat serve\n   examples/threshold.py --port 9000" in result.stdout


def read_until(leader: int, seen: bytearray, wanted: bytes | None, deadline: float) -> None:
    """Read the terminal's output into seen until wanted appears (or, for None, until the other end closes)."""
    while wanted is None or wanted not in seen:
        assert time.monotonic() < deadline, seen.decode(errors="replace")
        if select.select([leader], [], [], 0.5)[0]:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: every process holding the terminal has exited
                chunk = b""
            if not chunk:
                assert wanted is None, seen.decode(errors="replace")
                return
            seen += chunk


def test_at_a_terminal_the_demo_keeps_its_page_up_until_ctrl_c(tmp_path):
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "examples/demo.py", "--out", str(tmp_path)],
        cwd=ROOT,
        stdin=follower,
        stdout=follower,
        stderr=follower,
        start_new_session=True,  # a process group of its own, as a terminal's foreground job is
    )
    os.close(follower)
    seen = bytearray()
    try:
        read_until(leader, seen, b"press Ctrl-C to stop them", time.monotonic() + 120)
        url = re.search(rb"5\. the browser page: (http://127\.0\.0\.1:\d+/app/) ", seen).group(1).decode()
        answer = requests.get(url, timeout=10)
        assert answer.status_code == 200 and "<title>" in answer.text  # the link works once printed
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C sends: the whole foreground group
        read_until(leader, seen, None, time.monotonic() + 60)
        assert process.wait(timeout=30) == 0, seen.decode(errors="replace")
        assert b"stopping the registry and the example server" in seen
        assert b"Traceback" not in seen
        try:
            requests.get(url, timeout=5)
            raise AssertionError(f"{url} still answers after Ctrl-C")
        except requests.ConnectionError:
            pass  # stopped
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        os.close(leader)
