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


# ---- what a decode really holds, and what it is charged ---------------------------------------------------------

MIB = 1024**2


def _vm(key: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith(key + ":"))


def _hundred_mib_files() -> dict[str, bytes]:
    """A 100 MiB int16 volume (zeros: its compressed files are tiny) in every format a server takes."""
    import numpy as np
    import SimpleITK as sitk

    from tomaat.protocol.volumes import write_image

    image = sitk.GetImageFromArray(np.zeros((200, 512, 512), np.int16))
    image.SetOrigin((-12.5, 3.0, 40.0))
    image.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, 1))
    return {
        "mha compressed": write_image(image, "mha", compress=True),
        "mha": write_image(image, "mha", compress=False),
        "nii.gz": write_image(image, "nii.gz"),
        "nrrd": write_image(image, "nrrd"),
    }


@pytest.mark.parametrize("kind", ["mha compressed", "mha", "nii.gz", "nrrd"])
def test_a_decodes_peak_memory_is_within_a_fifth_of_what_it_was_charged(kind):
    """A 0.2 MiB compressed file declaring 100 MiB held twice that while decoding (the inflated bytes and the
    image at once) and was charged once: the budget bounded half of what decoding really holds."""
    from tomaat.files.limits import Allowance, Limits
    from tomaat.protocol.volumes import read_image

    raw = _hundred_mib_files()[kind]
    allowance = Allowance(Limits(max_decoded_bytes=10**10))
    before = _vm("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # the kernel's reset of this process's VmHWM
    image = read_image(raw, kind, allowance)
    grown = _vm("VmHWM") - before
    assert image.GetSize() == (512, 512, 200) and allowance.used == 100 * MIB
    assert grown <= 1.2 * allowance.peak, f"{kind}: held {grown / MIB:.0f} MiB, charged {allowance.peak / MIB:.0f}"


def test_the_decoded_budget_takes_a_decodes_peak_and_gives_its_transient_part_back():
    from tomaat.errors import ServerBusy
    from tomaat.files.limits import Allowance, Limits
    from tomaat.net.body import Budget
    from tomaat.protocol.volumes import read_image

    raw = _hundred_mib_files()["nii.gz"]
    tight = Budget(150 * MIB)  # holds the image, not the image and the decoder's output at once
    with pytest.raises(ServerBusy, match="decoding as much as it can hold"):
        read_image(raw, "images", Allowance(Limits(max_decoded_bytes=10**10), tight))
    roomy = Budget(250 * MIB)
    allowance = Allowance(Limits(max_decoded_bytes=10**10), roomy)
    read_image(raw, "images", allowance)
    assert (allowance.peak, roomy.used) == (200 * MIB, 100 * MIB)  # the copy's share given back after the decode
    allowance.release()
    assert roomy.used == 0
