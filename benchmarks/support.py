"""Processes and measurements shared by the latency and throughput benchmarks.

Servers run as subprocesses on loopback so their memory can be read from
/proc and the benchmark's own client work does not share their GIL.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time

import requests
import urllib3

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)  # our own self-signed certificate


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(command: list[str], url: str, env: dict, log_path: str | None = None) -> subprocess.Popen:
    """Start a server and wait until it answers GET /health (certificates are not checked: they are ours)."""
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{command} exited with {process.returncode}")
        try:
            requests.get(url + "/health", timeout=1, verify=False)
            return process
        except requests.ConnectionError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"{url} did not come up")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def tomaat_serve(
    app_path: str, port: int, tls: tuple[str, str] | None, extra: list[str] | tuple[str, ...] = ()
) -> list[str]:
    command = [sys.executable, "-m", "tomaat", "serve", app_path, "--listen-address", "127.0.0.1", "--port", str(port)]
    command += ["--cert", tls[0], "--key", tls[1]] if tls else ["--no-tls"]
    return command + list(extra)


def status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {key} for {pid}")


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds a process has used (its own threads; not its children's)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class PeakMemory:
    """The growth of a process's resident memory over a block, from its baseline to its peak.

    Writing 5 to /proc/PID/clear_refs resets the kernel's peak (VmHWM) to the
    current RSS, so VmHWM afterwards is the exact peak; where that is not
    allowed, RSS is sampled every millisecond instead, which can miss a short peak.
    """

    def __init__(self, pid: int):
        self.pid = pid
        self.growth_mib = 0.0
        self.method = "VmHWM"

    def __enter__(self):
        self.base = status_kib(self.pid, "VmRSS")
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as handle:
                handle.write("5")
        except OSError:
            self.method, self.peak, self._stop = "sampled VmRSS", self.base, threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, status_kib(self.pid, "VmRSS"))
            time.sleep(0.001)

    def __exit__(self, *exc):
        if self.method == "VmHWM":
            peak = status_kib(self.pid, "VmHWM")
        else:
            self._stop.set()
            self._thread.join()
            peak = self.peak
        self.growth_mib = (peak - self.base) / 1024
        return False


_SUM = re.compile(r'^tomaat_stage_seconds_sum\{stage="(\w+)"\} (\S+)$', re.M)


def stage_sums(url: str) -> dict[str, float]:
    """Seconds spent per stage so far, from the server's /metrics histogram."""
    text = requests.get(url + "/metrics", timeout=10, verify=False).text
    return {name: float(value) for name, value in _SUM.findall(text)}


def median_ms(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return 1000 * (ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2)
