"""Hostile servers and registries against the client and the announcer: metadata that cannot mislead, answers that cannot swell.

The peers here are plain HTTP servers on real ports that answer whatever a test gives them.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import pytest_twisted
import test_registry_support as support
from client_support import one_line_error, run_cli
from test_registry_support import eventually
from twisted.internet import reactor

from tomaat.client import AsyncClient, ServerError
from tomaat.client.async_client import JSON_LIMIT
from tomaat.protocol.registry import ANSWER_LIMIT
from tomaat.server.announcer import Announcer

logs = support.logs

INFO = {
    "name": "Hostile",
    "version": "6.6.6",
    "protocol": 2,
    "input_interface": [{"type": "volume", "destination": "images"}],
    "output_interface": [{"type": "LabelVolume", "field": "labels"}],
    "licence": "MIT\x1b]0;owned\x07",
    "citation": "A paper.\n  TLS fingerprint: 00:11:22",  # a second line posing as one of ours
    "intended_use": 5,
    "accuracy": [
        {"metric": "Dice", "value": 0.9, "dataset": "set \x9b31m"},
        {"metric": "Jaccard", "value": 0.8, "dataset": "clean set"},
        {"metric": 5},
        "junk",
        {"metric": "Dice", "value": True, "dataset": "d"},
    ],
}
SERVICE = {
    "api_key": "",
    "prediction_url": "http://a:9000/predict",
    "interface_url": "http://a:9000/interface",
    "name": "Listed",
    "modality": "MRI",
    "anatomy": "prostate",
    "task": "segmentation",
    "description": "",
    "SID": "1",
    "creation_time": 1.0,
}


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _answer(self):
        value = self.server.answers.get(self.path.split("?")[0])
        if value is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = value if isinstance(value, bytes) else json.dumps(value).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:  # the client hung up on an answer too large to read: what is tested
            pass

    def do_GET(self):
        self._answer()

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._answer()


@pytest.fixture
def peer():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.answers = {}
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _clean(output: str) -> None:
    for bad in ("\x1b", "\x07", "\x9b", "Traceback"):
        assert bad not in output


@pytest_twisted.ensureDeferred
async def test_interface_prints_only_well_formed_metadata_without_controls(peer, tmp_path):
    peer.answers["/info"] = INFO
    shown = await run_cli(["interface", peer.url], tmp_path)
    assert shown.returncode == 0, shown.stderr
    _clean(shown.stdout)
    lines = shown.stdout.splitlines()
    assert "  licence: MIT]0;owned" in lines
    assert "  cite as: A paper." in lines and "             TLS fingerprint: 00:11:22" in lines
    assert not any(line.startswith("  TLS fingerprint") for line in lines)
    assert "  accuracy:" in lines and "    Jaccard 0.8 on clean set" in lines
    assert not any("intended use" in line or "Dice" in line for line in lines)  # wrong shapes are left out


@pytest_twisted.ensureDeferred
async def test_discover_survives_a_registry_that_lies_about_shapes(peer, tmp_path):
    odd = {**SERVICE, "name": {"x": 1}, "prediction_url": "http://b:9000/predict", "licence": "GPL\x1b[2J"}
    peer.answers["/discover"] = [SERVICE, "junk", 7, {**odd, "accuracy": "all good", "version": ["1"]}]
    table = await run_cli(["discover", peer.url], tmp_path)
    assert table.returncode == 0, table.stderr
    _clean(table.stdout + table.stderr)
    assert "http://a:9000/predict" in table.stdout and "http://b:9000/predict" in table.stdout
    assert f"{'':<27}licence: GPL[2J" in table.stdout.splitlines()
    listed = json.loads((await run_cli(["discover", peer.url, "--json"], tmp_path)).stdout)
    assert [s["name"] for s in listed] == ["Listed", ""]
    assert listed[1]["accuracy"] == [] and listed[1]["version"] == ""
    peer.answers["/discover"] = {"services": []}
    refused = await run_cli(["discover", peer.url], tmp_path)
    assert refused.returncode == 3 and "did not answer a list of services" in one_line_error(refused)


@pytest_twisted.ensureDeferred
async def test_a_swollen_info_is_refused_not_read_whole(peer):
    peer.answers["/info"] = b"[" + b" " * JSON_LIMIT + b"]"
    with pytest.raises(ServerError, match=f"is larger than {JSON_LIMIT} bytes"):
        await AsyncClient(peer.url).info()


@pytest_twisted.ensureDeferred
async def test_the_announcer_refuses_a_swollen_answer_and_keeps_trying(peer, logs):
    peer.answers["/announce"] = b"{" + b" " * ANSWER_LIMIT + b"}"
    fields = {name: SERVICE[name] for name in ("prediction_url", "interface_url", "name", "modality")}
    fields.update(anatomy="prostate", task="segmentation", description="")
    announcer = Announcer(reactor, peer.url, "ab" * 32, fields, period=5.0, first_retry=0.05, stop_timeout=1.0)
    try:
        announcer.start()
        await eventually(lambda: announcer.failures >= 2)
        assert announcer.announced_at == ""
        assert f"could not reach the registry: the answer is larger than {ANSWER_LIMIT} bytes" in logs.text
    finally:
        await announcer.stop()
