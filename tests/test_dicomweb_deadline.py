"""`tomaat dicomweb predict` against hostile PACSs: one deadline for the whole command, bounded answers.

Each fake PACS is a plain socket server on a real loopback port, run by the test, that misbehaves in one way
(never answers, trickles, sends too much, nests JSON deep) and records what it was asked and what it sent.
The command runs as a user runs it, in a subprocess, against a real prediction server; every case must end
with one line on standard error, exit status 1, near --timeout, and no STOW-RS request.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass, field

import pydicom
import pytest
from browser_support import ROOT, Served
from orthanc_support import make_ct_series, to_bytes

TIMEOUT = 3.0  # the command's --timeout in the deadline cases
SLACK = 1.0  # how far past the deadline the PACS may see the connection still open
EVERY = 0.5  # a trickling PACS sends a byte this often
CAP = 16 * 1024 * 1024  # the client's JSON_LIMIT
FLOOD = 256 * 1024 * 1024  # what the oversized PACS would send


@dataclass
class Request:
    method: str
    path: str
    headers: dict
    body: bytes = b""


@dataclass
class FakePacs:
    """A DICOMweb server on a loopback port: `answer(pacs, request, conn)` writes each answer, however it likes.

    It records each request, the bytes it managed to send, and when each connection ended (the peer closing,
    seen as a failed send or an empty read). One thread per connection; stop() ends them all.
    """

    answer: object
    requests: list = field(default_factory=list)
    sent: int = 0
    opened: list = field(default_factory=list)
    ended: list = field(default_factory=list)

    def __post_init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/dicom-web"
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        self.opened.append(time.monotonic())
        with conn:
            try:
                while not self.stopping.is_set():
                    request = _read_request(conn)
                    if request is None:
                        break
                    self.requests.append(request)
                    if not self.answer(self, request, conn):
                        break
            except OSError:
                pass
            finally:
                self.ended.append(time.monotonic())

    def send(self, conn: socket.socket, data: bytes) -> None:
        conn.sendall(data)
        with self.lock:
            self.sent += len(data)

    def hold(self, conn: socket.socket, seconds: float = 60.0) -> bool:
        """Keep the connection open without a word until the peer closes it (or stop())."""
        conn.settimeout(0.1)
        until = time.monotonic() + seconds
        while time.monotonic() < until and not self.stopping.is_set():
            try:
                if conn.recv(1) == b"":
                    return False
            except TimeoutError:
                continue
        return False

    def trickle(self, conn: socket.socket, byte: bytes = b" ", seconds: float = 60.0) -> bool:
        until = time.monotonic() + seconds
        while time.monotonic() < until and not self.stopping.is_set():
            self.send(conn, byte)
            time.sleep(EVERY)
        return False

    def closed(self, count: int = 1, within: float = 5.0) -> list:
        """When the first `count` connections ended, waiting for it: a trickler sees a close at its next send."""
        until = time.monotonic() + within
        while len(self.ended) < count:
            assert time.monotonic() < until, f"{len(self.ended)} of {count} connections ended"
            time.sleep(0.02)
        return self.ended

    @property
    def stored(self) -> list:
        return [r for r in self.requests if r.method == "POST"]

    def stop(self) -> None:
        self.stopping.set()
        self.listener.close()


def _read_request(conn: socket.socket) -> Request | None:
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        head += chunk
        assert len(head) < 1 << 20
    head, _, body = head.partition(b"\r\n\r\n")
    line, *fields = head.decode("latin-1").split("\r\n")
    method, path, _ = line.split(" ", 2)
    headers = {k.strip().lower(): v.strip() for k, _, v in (f.partition(":") for f in fields)}
    while len(body) < int(headers.get("content-length", 0)):
        body += conn.recv(65536)
    return Request(method, path, headers, body)


def _head(status: str = "200 OK", content_type: str = "application/dicom+json", **extra) -> bytes:
    lines = [f"HTTP/1.1 {status}", f"Content-Type: {content_type}", *(f"{k}: {v}" for k, v in extra.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _series_json(series) -> bytes:
    return json.dumps(
        [
            {
                "0020000E": {"vr": "UI", "Value": [series.series_uid]},
                "00080060": {"vr": "CS", "Value": ["CT"]},
                "00201209": {"vr": "IS", "Value": [len(series.datasets)]},
            }
        ]
    ).encode()


def _multipart(parts: list[bytes], boundary: str = "fake-boundary") -> tuple[str, bytes]:
    body = b"".join(
        b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + part + b"\r\n" for part in parts
    )
    return f'multipart/related; type="application/dicom"; boundary={boundary}', body + f"--{boundary}--".encode()


class Honest:
    """Answers as a PACS should: the series on QIDO, its instances on WADO-RS, {} on STOW-RS."""

    def __init__(self, series, qido_delay: float = 0.0, wado=None, stow=None):
        self.series, self.qido_delay, self.wado, self.stow = series, qido_delay, wado, stow

    def __call__(self, pacs: FakePacs, request: Request, conn) -> bool:
        if request.method == "POST" and self.stow is not None:
            return self.stow(pacs, request, conn)
        if request.method == "POST":
            body = b"{}"
            pacs.send(conn, _head(**{"Content-Length": len(body)}) + body)
        elif request.path.split("?")[0].endswith("/series"):
            time.sleep(self.qido_delay)
            body = _series_json(self.series)
            pacs.send(conn, _head(**{"Content-Length": len(body)}) + body)
        elif self.wado is not None:
            return self.wado(pacs, request, conn)
        else:
            kind, body = _multipart([to_bytes(ds) for ds in self.series.datasets])
            pacs.send(conn, _head(content_type=kind, **{"Content-Length": len(body)}) + body)
        return True


def never_answers(pacs, request, conn) -> bool:
    return pacs.hold(conn)


def trickles_its_headers(pacs, request, conn) -> bool:
    pacs.send(conn, b"HTTP/1.1 200 OK\r\nX-Padding: ")
    return pacs.trickle(conn, b"a")


def trickles_its_body(pacs, request, conn) -> bool:
    pacs.send(conn, _head(**{"Content-Length": 1_000_000}) + b"[")
    return pacs.trickle(conn, b" ")


def floods(pacs, request, conn) -> bool:
    """A QIDO answer of FLOOD bytes of valid-looking JSON, with no length given."""
    item = json.dumps({"0020000E": {"vr": "UI", "Value": ["1.2.3"]}, "0008103E": {"vr": "LO", "Value": ["x" * 900]}})
    block = ("[" + ",".join([item] * 1000) + ",").encode()
    pacs.send(conn, _head(Connection="close"))
    while pacs.sent < FLOOD:
        pacs.send(conn, block)
    return False


def nests_deep(pacs, request, conn) -> bool:
    body = b"[" * 100_000 + b"]" * 100_000
    pacs.send(conn, _head(**{"Content-Length": len(body)}) + body)
    return True


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    served = Served("examples/threshold.py", tmp_path_factory.mktemp("threshold"))
    yield served
    served.stop()


@pytest.fixture
def fake():
    made = []

    def make(answer) -> FakePacs:
        made.append(FakePacs(answer))
        return made[-1]

    yield make
    for pacs in made:
        pacs.stop()


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    peak_mib: float  # the command's peak resident memory


# Runs a command and writes its peak resident memory (KiB) to a file. The command must be forked from this small
# process, not from pytest: Linux keeps the high-water mark of the memory a process had before exec, and a child
# of a test process that holds 1 GiB reports 1 GiB whatever it uses itself.
LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as report:
    report.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def dicomweb(server_url: str, pacs_url: str, study: str, *options: str, folder) -> Ran:
    """The command in a subprocess, timed, with its peak memory (wait4's rusage, in a small launcher)."""
    command = [sys.executable, "-m", "tomaat", "dicomweb", "predict", server_url, "--dicomweb", pacs_url]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TOMAAT_DICOMWEB_")}
    out, err, peak = folder / "stdout", folder / "stderr", folder / "peak-kib"
    began = time.monotonic()
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, str(peak), *command, "--study", study, "--set", "threshold=300", *options],
            cwd=ROOT,
            env=environment,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
        killer = threading.Timer(120, lambda: os.killpg(process.pid, signal.SIGKILL))
        killer.start()
        try:
            process.wait()
        finally:
            killer.cancel()
    seconds = time.monotonic() - began
    return Ran(process.returncode, out.read_text(), err.read_text(), seconds, int(peak.read_text()) / 1024)


def one_line(ran: Ran, *words: str) -> str:
    """The command failed with status 1 and exactly one line on stderr, holding every word."""
    assert ran.returncode == 1, (ran.returncode, ran.stderr)
    assert ran.stdout == "" and "Traceback" not in ran.stderr, ran.stderr
    lines = ran.stderr.strip().splitlines()
    assert len(lines) == 1, ran.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


# ---- the deadline -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("hostile", [never_answers, trickles_its_headers, trickles_its_body])
def test_a_pacs_that_never_finishes_its_answer_is_cut_off_at_the_deadline(server, fake, tmp_path, hostile):
    pacs = fake(hostile)
    ran = dicomweb(server.url, pacs.url, "1.2.3.4", "--timeout", str(TIMEOUT), folder=tmp_path)

    line = one_line(ran, f"the PACS at {pacs.url}", "searching study 1.2.3.4", "within the 3 s of --timeout")
    assert line.startswith("tomaat: error: ")
    # the PACS saw the connection open for the deadline, not longer (it was 122 s, and for ever when trickled)
    held = pacs.closed()[0] - pacs.opened[0]
    assert TIMEOUT - SLACK < held < TIMEOUT + SLACK + 2 * EVERY, held
    assert ran.seconds < TIMEOUT + 5  # interpreter start and imports included
    assert [r.method for r in pacs.requests] == ["GET"] and not pacs.stored  # asked once: no retry


def test_the_deadline_is_the_whole_commands_not_each_exchanges(server, fake, tmp_path):
    series = make_ct_series(seed=21)
    pacs = fake(Honest(series, qido_delay=2.0, wado=trickles_its_body))
    ran = dicomweb(server.url, pacs.url, series.study_uid, "--timeout", str(TIMEOUT), folder=tmp_path)

    assert ran.returncode == 1 and "Traceback" not in ran.stderr, ran.stderr
    last = ran.stderr.strip().splitlines()[-1]
    assert f"retrieving series {series.series_uid}" in last and "within the 3 s of --timeout" in last, last
    assert sum(line.startswith("tomaat:") for line in ran.stderr.splitlines()) == 1
    # 2 s of QIDO and the WADO-RS answer together end at 3 s, not at 2 + 3
    assert pacs.closed(2)[-1] - pacs.opened[0] < TIMEOUT + SLACK + 2 * EVERY
    assert not pacs.stored


SLOW_APP = """
import time
from tomaat import LabelVolume, Slider, TomaatApp, Volume

class Slow(TomaatApp):
    name = "Slow"
    input_interface = [Volume("images"), Slider("threshold", 0, 1000)]
    output_interface = [LabelVolume("labels", "Labels")]

    def inference(self, data):
        time.sleep(20)
        return data
"""


def test_a_prediction_server_that_does_not_answer_in_time_is_cut_off_and_nothing_is_stored(fake, tmp_path):
    (tmp_path / "slow.py").write_text(textwrap.dedent(SLOW_APP))
    slow = Served(str(tmp_path / "slow.py"), tmp_path)
    series = make_ct_series(seed=22)
    pacs = fake(Honest(series))
    limit = 10.0  # time for the confined decoder to start and read the series before the server is asked
    try:
        ran = dicomweb(slow.url, pacs.url, series.study_uid, "--timeout", str(limit), folder=tmp_path)
    finally:
        slow.stop()

    assert ran.returncode == 1 and ran.stdout == "" and "Traceback" not in ran.stderr, ran.stderr
    last = ran.stderr.strip().splitlines()[-1]
    assert last == (
        f"tomaat: error: the prediction server {slow.url} did not answer the prediction within "
        "the 10 s of --timeout; nothing was stored"
    ), ran.stderr
    assert "retrieved 12 instances" in ran.stderr
    assert ran.seconds < limit + 5
    assert not pacs.stored


def test_a_stow_rs_answer_that_never_comes_says_the_segmentation_may_have_been_stored(server, fake, tmp_path):
    series = make_ct_series(seed=24)
    pacs = fake(Honest(series, stow=never_answers))
    limit = 12.0  # time to reach STOW-RS: the decoder's start, the prediction and the SEG
    ran = dicomweb(server.url, pacs.url, series.study_uid, "--timeout", str(limit), folder=tmp_path)

    assert ran.returncode == 1 and ran.stdout == "" and "Traceback" not in ran.stderr, ran.stderr
    last = ran.stderr.strip().splitlines()[-1]
    assert last == (
        f"tomaat: error: the PACS at {pacs.url} timed out storing the segmentation: no whole answer within the 12 s "
        f"of --timeout; it may have stored the segmentation: look in study {series.study_uid} before running the "
        "command again"
    ), ran.stderr
    assert len(pacs.stored) == 1 and ran.seconds < limit + 5


# ---- bounded answers --------------------------------------------------------------------------------------


def test_an_oversized_qido_answer_is_refused_by_name_without_being_read(server, fake, tmp_path):
    pacs = fake(floods)
    ran = dicomweb(server.url, pacs.url, "1.2.3.4", folder=tmp_path)

    one_line(ran, f"the PACS at {pacs.url} sent more than 16 MiB searching study 1.2.3.4; refused")
    assert pacs.sent < 4 * CAP, pacs.sent  # the rest of the 256 MiB was never read: the connection was dropped
    assert ran.peak_mib < 400, ran.peak_mib  # 87 MiB once drove the command to 1.16 GiB
    assert not pacs.stored


def test_qido_json_nested_deep_is_one_line(server, fake, tmp_path):
    pacs = fake(nests_deep)
    ran = dicomweb(server.url, pacs.url, "1.2.3.4", folder=tmp_path)

    one_line(ran, f"the PACS at {pacs.url} sent an answer that could not be read searching study 1.2.3.4",
             "(JSON nested too deeply)")  # fmt: skip
    assert not pacs.stored


def test_a_study_uid_that_is_not_a_uid_never_reaches_the_pacs(server, fake, tmp_path):
    pacs = fake(never_answers)
    ran = dicomweb(server.url, pacs.url, "1.2/../../instances", folder=tmp_path)

    assert ran.returncode == 2 and "Traceback" not in ran.stderr, ran.stderr
    assert "--study '1.2/../../instances' is not a DICOM UID" in ran.stderr
    assert pacs.requests == []


# ---- WADO-RS asks for the instances as stored ---------------------------------------------------------------


def test_wado_rs_asks_for_the_instances_as_the_pacs_stores_them_and_a_good_run_stores_one_seg(server, fake, tmp_path):
    series = make_ct_series(seed=23, shuffle=True)
    pacs = fake(Honest(series))
    ran = dicomweb(server.url, pacs.url, series.study_uid, "--timeout", "60", folder=tmp_path)

    assert ran.returncode == 0, ran.stderr
    (wado,) = [r for r in pacs.requests if r.method == "GET" and not r.path.split("?")[0].endswith("/series")]
    assert wado.path == f"/dicom-web/studies/{series.study_uid}/series/{series.series_uid}"
    kind, *parameters = [p.strip() for p in wado.headers["accept"].split(";")]
    assert kind == "multipart/related"
    assert 'type="application/dicom"' in parameters and "transfer-syntax=*" in parameters
    (stow,) = pacs.stored
    assert stow.path == f"/dicom-web/studies/{series.study_uid}"
    assert stow.headers["content-type"].startswith('multipart/related; type="application/dicom"')
    boundary = stow.headers["content-type"].split('boundary="')[1].rstrip('"')
    (part,) = [p for p in stow.body.split(b"--" + boundary.encode()) if b"\r\n\r\n" in p]
    seg = pydicom.dcmread(io.BytesIO(part.split(b"\r\n\r\n", 1)[1].removesuffix(b"\r\n")))
    assert seg.Modality == "SEG" and seg.StudyInstanceUID == series.study_uid
    assert ran.stdout.strip() == seg.SeriesInstanceUID
