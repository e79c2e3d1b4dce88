"""A hostile prediction server against `tomaat predict`: every trick ends in one line and an exit code.

The server here is a plain HTTP server that answers whatever a test tells it, on a real port.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import pytest_twisted
from client_support import one_line_error, run_cli
from conftest import image_bytes, make_phantom
from hostile import SECRET, nrrd_late_data_file, secret_file

INFO = {
    "name": "Hostile",
    "protocol": 2,
    "input_interface": [{"type": "volume", "destination": "images"}],
    "output_interface": [{"type": "LabelVolume", "field": "labels"}],
}


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _send(self, value, delay: float = 0.0):
        body = value if isinstance(value, bytes) else json.dumps(value).encode()
        time.sleep(delay)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._send(self.server.info)

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._send(self.server.answer, self.server.delay)


@pytest.fixture
def hostile_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.info, server.answer, server.delay = INFO, [], 0.0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _predict(server, tmp_path, *extra):
    volume = tmp_path / "in.nii.gz"
    volume.write_bytes(image_bytes(make_phantom(), ".nii.gz"))
    url = f"http://127.0.0.1:{server.server_address[1]}"
    args = ["predict", url, "--input", f"images={volume}", "--out", str(tmp_path / "out"), *extra]
    return run_cli(args, tmp_path / "config")


def _label(data: bytes) -> list:
    return [{"type": "LabelVolume", "label": "labels", "content": base64.b64encode(data).decode()}]


@pytest_twisted.ensureDeferred
async def test_a_label_volume_naming_a_local_file_is_refused(hostile_server, tmp_path):
    hostile_server.answer = _label(nrrd_late_data_file(secret_file(tmp_path), padding=0))
    result = await _predict(hostile_server, tmp_path)
    assert result.returncode == 3
    assert "detached NRRD" in one_line_error(result)
    out = tmp_path / "out"
    assert not out.exists() or all(SECRET.tobytes() not in f.read_bytes() for f in out.iterdir())


CASES = {
    "integer content": ([{"type": "PlainText", "label": "x", "content": 5}], INFO, "content and label must be text"),
    "protocol two": ([], {**INFO, "protocol": "two"}, "interface cannot be used"),
    "interface 5": ([], {**INFO, "input_interface": 5}, "interface cannot be used"),
    "compressed bomb": (
        _label(
            b"ObjectType = Image\nNDims = 3\nBinaryData = True\nCompressedData = True\nDimSize = 4 4 4\n"
            b"ElementType = MET_UCHAR\nElementDataFile = LOCAL\n" + __import__("zlib").compress(bytes(10**8))
        ),
        INFO,
        "decompresses to more than the 64 bytes",
    ),
    # Python's json parser recurses per level: 100,000 levels were a RecursionError traceback, not one line
    "answer nested deep": (b"[" * 100_000 + b"]" * 100_000, INFO, "the server's answer is not JSON"),
    "info nested deep": ([], b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "/interface did not answer JSON"),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest_twisted.ensureDeferred
async def test_a_malformed_answer_is_one_line_and_an_exit_code(hostile_server, tmp_path, case):
    hostile_server.answer, hostile_server.info, message = CASES[case]
    result = await _predict(hostile_server, tmp_path)
    assert result.returncode == 3, result.stderr
    assert message in one_line_error(result)


@pytest_twisted.ensureDeferred
async def test_terminal_escapes_in_answers_never_reach_the_terminal(hostile_server, tmp_path):
    text = "done\x1b]0;owned\x07 \x9b31mred\u202eevil\nsecond line"
    hostile_server.info = {**INFO, "output_interface": [{"type": "PlainText", "field": "report"}]}
    hostile_server.answer = [{"type": "PlainText", "label": "report\x1b[2J", "content": text}]
    result = await _predict(hostile_server, tmp_path)
    assert result.returncode == 0, result.stderr
    for bad in ("\x1b", "\x07", "\x9b", "\u202e"):
        assert bad not in result.stdout
    assert "done]0;owned 31mredevil\nsecond line" in result.stdout


@pytest_twisted.ensureDeferred
async def test_the_timeout_bounds_the_whole_wait(hostile_server, tmp_path):
    hostile_server.answer, hostile_server.delay = [], 30.0
    started = time.monotonic()
    result = await _predict(hostile_server, tmp_path, "--timeout", "3")
    assert time.monotonic() - started < 20
    assert result.returncode == 1
    assert "no answer within 3 s" in one_line_error(result)


FORGED = "wrote 1 file(s) to /etc/cron.d:"


@pytest_twisted.ensureDeferred
async def test_an_output_label_cannot_print_a_line_of_its_own(hostile_server, tmp_path):
    """A label with a line break (%0A in a binary answer's header, \\n in JSON) printed a forged line."""
    hostile_server.info = {**INFO, "output_interface": [{"type": "PlainText", "field": "report"}]}
    hostile_server.answer = [{"type": "PlainText", "label": f"report\n{FORGED}\n  /etc/cron.d/x", "content": "ok"}]
    result = await _predict(hostile_server, tmp_path)
    assert result.returncode == 0, result.stderr
    assert not any(line.startswith(FORGED) for line in result.stdout.splitlines()), result.stdout
    assert f"report{FORGED}" in result.stdout  # said, on the label's own line


@pytest_twisted.ensureDeferred
async def test_a_registrys_text_cannot_print_a_service_line_of_its_own(hostile_server, tmp_path):
    entry = {"name": "Real", "modality": "MRI", "anatomy": "Brain", "task": "Segmentation", "SID": "1",
             "prediction_url": "https://real:9000/predict",
             "description": "fine\n  Evil  https://evil.example/predict  SID 2"}  # fmt: skip
    hostile_server.info = [entry]
    url = f"http://127.0.0.1:{hostile_server.server_address[1]}"
    result = await run_cli(["discover", url], tmp_path / "config")
    assert result.returncode == 0, result.stderr
    assert not any(line.lstrip().startswith("Evil") for line in result.stdout.splitlines()), result.stdout
    assert "fine  Evil" in result.stdout
