"""Small uploads that would cost a lot once decoded: refused, with the server's peak memory (VmHWM) as the proof.

A real `tomaat serve` process, so its VmHWM is its own: read before and after each hostile request.
"""

from __future__ import annotations

import base64
import os
import signal
import struct
import subprocess
import sys
import textwrap
import zlib

import pytest
import requests
from conftest import make_phantom, v1_base64
from test_cli_serve import ROOT, free_port, wait_until_up

LIMIT = 64 * 1024**2  # --max-decoded-bytes
APP = textwrap.dedent(
    """
    import SimpleITK as sitk
    from tomaat import Fiducials, LabelVolume, TomaatApp, Transform, Volume

    class CostlyInputs(TomaatApp):
        input_interface = [Volume("images"), Fiducials("seeds"), Transform("moving")]
        output_interface = [LabelVolume("labels")]

        def inference(self, data):
            data["labels"] = sitk.GetArrayFromImage(data["images"]) > 0
            return data

    app = CostlyInputs()
    """
)


def _peak(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("costs")
    (folder / "costly.py").write_text(APP)
    port = free_port()
    limits = ["--max-decoded-bytes", str(LIMIT), "--max-points", "1000", "--max-transform-parameters", "100000"]
    command = [sys.executable, "-m", "tomaat", "serve", str(folder / "costly.py"), "--port", str(port)]
    command += ["--no-tls", "--listen-address", "127.0.0.1", *limits]
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ}
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, process)
        assert _good(url).status_code == 200  # the baseline includes one ordinary request
        yield url, process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=20)


def _post(url: str, images: str, seeds: str = "1,2,3", moving: bytes | None = None):
    moving = moving or b"mat\n" + base64.b64encode(_itk_mat())
    files = {"images": (None, images), "seeds": (None, seeds), "moving": (None, moving)}
    return requests.post(url + "/predict", files=files, timeout=60)


def _good(url: str):
    return _post(url, v1_base64(make_phantom()))


def _itk_mat(declared_rows: int | None = None) -> bytes:
    """An affine transform as ITK writes it (MATLAB v4 matrices); declared_rows may lie about the first's size."""
    import tempfile

    import SimpleITK as sitk

    with tempfile.TemporaryDirectory() as folder:
        sitk.WriteTransform(sitk.AffineTransform(3), os.path.join(folder, "affine.mat"))
        with open(os.path.join(folder, "affine.mat"), "rb") as handle:
            data = handle.read()
    return data if declared_rows is None else data[:4] + struct.pack("<i", declared_rows) + data[8:]


def _compressed_doubles() -> str:
    """0.5 MiB of zlib that inflates to 128 MiB of doubles (256^3 MET_DOUBLE)."""
    header = (
        b"ObjectType = Image\nNDims = 3\nBinaryData = True\nCompressedData = True\nDimSize = 256 256 256\n"
        b"ElementType = MET_DOUBLE\nElementDataFile = LOCAL\n"
    )
    return base64.b64encode(header + zlib.compress(bytes(256**3 * 8), 9)).decode()


CASES = {
    "compressed MHA doubles": (lambda: {"images": _compressed_doubles()}, 413, "one request may decode"),
    "mat declaring 2^26 rows": (
        lambda: {"moving": b"mat\n" + base64.b64encode(_itk_mat(declared_rows=2**26))},
        413,
        "100000 parameters",
    ),
    "6 MB of fiducials": (lambda: {"seeds": "1.25,2.5,3.75;" * 450_000}, 413, "1000 points"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_an_amplifying_upload_is_refused_within_its_limit(server, case):
    url, pid = server
    make, status, message = CASES[case]
    fields = {"images": v1_base64(make_phantom()), **make()}
    before = _peak(pid)
    response = _post(url, **fields)
    grew = _peak(pid) - before
    assert response.status_code == status, response.text[:300]
    assert message in response.json()[0]["content"]
    print(f"{case}: VmHWM +{grew / 2**20:.1f} MiB")
    assert grew < LIMIT, f"{case}: the server's peak memory grew by {grew / 2**20:.0f} MiB"
    assert _good(url).status_code == 200
