"""Every way a request can travel returns exactly what the app computes in-process: each answer compared voxel
for voxel and on its grid, under concurrency, with volumes of many sizes, pixel types, grids and formats.

Servers are real `tomaat serve` processes on real ports: one request at a time, batched, delayed, and Ray Serve
replicas (batched and not) on a local Ray instance. tests/exactness.py drives each path with 8 concurrent
clients. CI runs the quick mode (24 requests per path, 360 in all); TOMAAT_EXACT_REQUESTS=200 runs 200 per path.
After each Ray front end exits, none of the processes it started may remain.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import requests
from browser_support import ROOT, free_port

HERE = os.path.dirname(os.path.abspath(__file__))
APP = os.path.join(HERE, "exact_app.py")
REQUESTS = int(os.environ.get("TOMAAT_EXACT_REQUESTS", "24"))
CLIENTS = 8


class Server:
    """`tomaat serve` in a session of its own, so what it started can be found by process group too."""

    def __init__(self, folder, app: str, *options: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = str(folder / f"serve-{self.port}.log")
        command = [sys.executable, "-m", "tomaat", "serve", f"{APP}:{app}", "--port", str(self.port)]
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [*command, "--listen-address", "127.0.0.1", "--no-tls", *options],
                cwd=ROOT, env={**os.environ, "TMPDIR": str(folder)}, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log()
            try:
                steps = requests.get(self.url + "/health", timeout=2).json()["steps"]
                if steps["engine"] == "local" or steps["replicas"]["running"] >= 2:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"the server did not come up: {self.log()}")

    def log(self) -> str:
        with open(self.log_path) as handle:
            return handle.read()[-4000:]

    def drive(self, path: str, seed: int) -> dict:
        command = [sys.executable, os.path.join(HERE, "exactness.py"), self.url, "--path", path]
        done = subprocess.run(
            [*command, "--clients", str(CLIENTS), "--requests", str(REQUESTS), "--seed", str(seed)],
            cwd=ROOT, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        lines = done.stdout.strip().splitlines()
        assert lines, done.stderr[-3000:]
        return json.loads(lines[-1])

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(90)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(f"the server did not stop within 90 s of SIGTERM: {self.log()}") from None


def _processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent, process group, name) of every process now."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    name, rest = handle.read().rsplit(")", 1)
                fields = rest.split()
                found[int(entry)] = (int(fields[1]), int(fields[2]), name.split("(", 1)[1])
            except (OSError, IndexError):
                pass
    return found


def started_by(pid: int) -> set[int]:
    """The processes a server started: its descendants, and its process group's members."""
    table = _processes()
    children: dict[int, list[int]] = {}
    for child, (parent, _, _) in table.items():
        children.setdefault(parent, []).append(child)
    tree, todo = set(), [pid]
    while todo:
        current = todo.pop()
        tree.add(current)
        todo.extend(children.get(current, []))
    return (tree | {p for p, (_, group, _) in table.items() if group == pid}) - {pid}


def assert_all_gone(pids: set[int], within: float) -> None:
    deadline = time.monotonic() + within
    while True:
        table = _processes()
        alive = {pid: table[pid][2] for pid in pids if pid in table}
        if not alive:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{within:g} s after the server exited these of its processes still run: {alive}")
        time.sleep(0.1)


def assert_exact(server: Server, paths: list[str], seed: int) -> None:
    for number, path in enumerate(paths):
        report = server.drive(path, seed + 1000 * number)
        expected = REQUESTS * (2 if path == "stored" else 1)
        assert report["compared"] == expected, report
        assert report["wrong"] == [], f"{path}: {report['wrong'][:5]}\n{server.log()}"


@pytest.mark.parametrize(
    ("app", "options", "paths"),
    [
        ("Exact", [], ["json", "binary", "v1", "stored", "compressed"]),
        ("Exact", ["--delayed"], ["delayed"]),
        ("ExactBatched", [], ["binary", "v1", "json"]),
    ],
    ids=["one-at-a-time", "delayed", "batched"],
)
def test_every_answer_in_this_process_is_what_the_app_computes(tmp_path, app, options, paths):
    server = Server(tmp_path, app, *options)
    try:
        assert_exact(server, paths, seed=len(options) * 10000)
    finally:
        server.stop()
    assert os.listdir(tmp_path) == [os.path.basename(server.log_path)]  # no request left a file behind


@pytest.mark.parametrize(
    ("app", "paths"),
    [("ExactBatched", ["binary", "json", "v1"]), ("Exact", ["binary", "stored"])],
    ids=["batched", "one-at-a-time"],
)
def test_every_answer_from_ray_replicas_is_what_the_app_computes_and_ray_goes_with_the_server(tmp_path, app, paths):
    pytest.importorskip("ray")
    env_ray = ["--ray", "--replicas", "2", "--ray-cpus", "2", "--ray-node-ip", "127.0.0.5"]
    server = Server(tmp_path, app, *env_ray)
    try:
        assert_exact(server, paths, seed=50000)
    finally:
        ours = started_by(server.process.pid)
        server.stop()
    assert len(ours) >= 4, ours  # GCS, raylet, the controller, two replicas...: the check saw Ray's processes
    assert_all_gone(ours, within=5.0)
    assert server.process.returncode == 0, server.log()
    # Ray's own SIGTERM handler (absl's, which kills the process seconds later) was not the one that ran
    assert "SIGTERM received" not in server.log(), server.log()
