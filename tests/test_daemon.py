"""Both daemons as an operator starts them: a start that fails says why in the log and exits 1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from test_cli_serve import ROOT


@pytest.fixture
def taken_port():
    """A port some other program is listening on."""
    with socket.socket() as holder:
        holder.bind(("0.0.0.0", 0))
        holder.listen()
        yield holder.getsockname()[1]


@pytest.mark.parametrize("daemon", ["server", "registry"])
def test_a_port_in_use_stops_the_start_with_exit_1_and_the_reason(daemon, taken_port, tmp_path):
    if daemon == "server":
        command = ["-m", "tomaat", "serve", "examples/threshold.py"]
    else:
        command = ["-m", "tomaat.registry.cli", "serve", "--db", str(tmp_path / "registry.sqlite3")]
    done = subprocess.run(
        [sys.executable, *command, "--port", str(taken_port), "--no-tls"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "could not start" in output and f":{taken_port}" in output and "in use" in output, output
    assert "serving on" not in output and "Traceback" not in output, output


def test_a_serving_process_returns_large_buffers_to_the_system():
    """glibc takes the settings (in a child: they are the process's, not the test run's)."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", "from tomaat.net.daemon import return_large_buffers; print(return_large_buffers())"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.strip() == "True", done.stderr
