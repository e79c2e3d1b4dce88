"""SIGTERM and SIGKILL on a real `tomaat serve` process, mid-request."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import requests
from conftest import make_phantom, v1_base64
from test_cli_serve import ROOT, free_port, wait_until_up

SLOW_APP = textwrap.dedent(
    """
    import threading
    from examples.threshold import ThresholdApp
    from tomaat.files.scratch import scratch_path

    class SlowApp(ThresholdApp):
        '''Keeps a scratch file open during inference, as an app writing files for a tool would.'''

        def inference(self, data):
            with scratch_path(".bin") as path:
                with open(path, "wb") as handle:
                    handle.write(b"work in progress")
                threading.Event().wait(2.0)  # the work itself
            return super().inference(data)

    app = SlowApp()
    """
)


def start(tmp_path, port: int) -> subprocess.Popen:
    app = tmp_path / "slow_app.py"
    app.write_text(SLOW_APP)
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "tomaat",
        "serve",
        str(app),
        "--port",
        str(port),
        "--no-tls",
        "--listen-address",
        "127.0.0.1",
    ]
    command += ["--shutdown-grace", "10"]
    env = {**os.environ, "TMPDIR": str(scratch), "PYTHONPATH": ROOT}
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    wait_until_up(f"http://127.0.0.1:{port}", process)
    return process


def post_in_background(url: str) -> dict:
    outcome = {}

    def send():
        fields = {"images": (None, v1_base64(make_phantom())), "threshold": (None, "250")}
        try:
            outcome["response"] = requests.post(url + "/predict", files=fields, timeout=30)
        except requests.RequestException as error:
            outcome["error"] = error

    outcome["thread"] = threading.Thread(target=send)
    outcome["thread"].start()
    return outcome


def request_folders(scratch) -> list[str]:
    """The requests' scratch folders, not the decoders' (started with the server, before its port opens)."""
    return [name for name in os.listdir(scratch) if "-decoder-" not in name]


def wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.02)


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def test_sigterm_stops_accepting_finishes_the_request_in_flight_and_exits_0(tmp_path):
    port = free_port()
    process = start(tmp_path, port)
    scratch = tmp_path / "scratch"
    try:
        outcome = post_in_background(f"http://127.0.0.1:{port}")
        wait(lambda: request_folders(scratch), 20, "the request to reach the app")
        process.send_signal(signal.SIGTERM)
        wait(lambda: refuses_connections(port), 5, "the port to close")
        assert "response" not in outcome  # still running while new connections are refused
        outcome["thread"].join(30)
        assert outcome["response"].status_code == 200, outcome
        output, _ = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, output
    assert os.listdir(scratch) == []


def test_the_next_start_removes_what_a_sigkilled_process_left_in_the_temp_area(tmp_path):
    port = free_port()
    process = start(tmp_path, port)
    scratch = tmp_path / "scratch"
    try:
        post_in_background(f"http://127.0.0.1:{port}")
        wait(lambda: request_folders(scratch), 20, "the request to reach the app")
        process.kill()
        process.communicate(timeout=10)
        left = os.listdir(scratch)  # the request's folder and the decoders'
        assert left and all(name.startswith(f"tomaat-{process.pid}-") for name in left)
        restarted = start(tmp_path, port)
        try:
            assert not [name for name in os.listdir(scratch) if name.startswith(f"tomaat-{process.pid}-")]
            assert request_folders(scratch) == []
        finally:
            restarted.send_signal(signal.SIGTERM)
            restarted.communicate(timeout=20)
        assert restarted.returncode == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
