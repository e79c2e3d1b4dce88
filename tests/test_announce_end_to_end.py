"""A server started with --announce: listed by the registry, renewed, withdrawn on SIGTERM. Real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import requests
from test_cli_serve import ROOT, free_port, wait_until_up

BIN = os.path.dirname(sys.executable)


def start(command, tmp_path, name):
    log = open(tmp_path / f"{name}.log", "w+")
    process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)
    process.log = log
    return process


def stop(process) -> str:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
    process.log.seek(0)
    return process.log.read()


def wait_for(condition, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_served_app_announces_renews_and_withdraws(tmp_path):
    db = str(tmp_path / "registry.sqlite3")
    key = subprocess.run(
        [os.path.join(BIN, "tomaat-registry"), "keys", "create", "--owner", "lab", "--db", db],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    key_file = tmp_path / "api-key"
    key_file.write_text(key + "\n")

    registry_port, server_port = free_port(), free_port()
    registry_url = f"http://127.0.0.1:{registry_port}"
    server_url = f"http://127.0.0.1:{server_port}"
    registry = start(
        [
            os.path.join(BIN, "tomaat-registry"),
            "serve",
            "--port",
            str(registry_port),
            "--listen-address",
            "127.0.0.1",
            "--db",
            db,
            "--no-tls",
        ],
        tmp_path,
        "registry",
    )
    server = None
    try:
        wait_until_up(registry_url, registry)
        server = start(
            [
                sys.executable,
                "-m",
                "tomaat",
                "serve",
                "examples/threshold.py",
                "--port",
                str(server_port),
                "--listen-address",
                "127.0.0.1",
                "--no-tls",
                "--announce",
                registry_url,
                "--api-key-file",
                str(key_file),
                "--public-url",
                server_url,
                "--announce-period",
                "0.5",
            ],
            tmp_path,
            "server",
        )
        wait_until_up(server_url, server)

        def listed():
            return [
                s
                for s in requests.get(registry_url + "/discover", timeout=5).json()
                if s["prediction_url"] == server_url + "/predict"
            ]

        [entry] = wait_for(listed, what="the announcement")
        assert entry["name"] == "Threshold" and entry["interface_url"] == server_url + "/interface"
        assert entry["api_key"] == "" and entry["SID"]
        assert requests.get(server_url + "/announcePoint", timeout=5).json() == {"announced_at": registry_url}
        first = entry["creation_time"]
        renewed = wait_for(lambda: [e for e in listed() if e["creation_time"] > first], what="a re-announcement")
        assert renewed[0]["SID"] == entry["SID"]

        output = stop(server)
        assert listed() == [], "the server did not withdraw on SIGTERM"
        assert server.returncode == 0
        assert "withdrew" in output
        assert key[:16] not in output
    finally:
        if server is not None:
            stop(server)
        registry_log = stop(registry)
    assert key[:16] not in registry_log
