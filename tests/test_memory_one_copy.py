"""One copy in memory (issue 25): a volume in a request body becomes its image without being held twice.

VmHWM is the kernel's peak of resident memory; writing 5 to /proc/PID/clear_refs resets it to the
current RSS, so the growth over a block is exact (tracemalloc sees neither memory maps nor ITK's buffers).
The volumes are ones SimpleITK wrote, compared with SimpleITK's own reading, with geometry no default has.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import requests
import SimpleITK as sitk
from test_cli_serve import ROOT, free_port, wait_until_up

from benchmarks.support import PeakMemory
from tomaat.errors import RequestError, TooLarge
from tomaat.files import filling, mha
from tomaat.files.limits import Allowance, Limits
from tomaat.net.body import BodyBuffer, Budget
from tomaat.protocol import b64, volumes
from tomaat.protocol.volumes import read_image
from tomaat.server.form import read_fields

MIB = 1024**2
BOUNDARY = "one-copy-boundary"


def _vm(key: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith(key + ":"))


class Growth:
    """This process's peak resident memory over a block, above what it held when the block began."""

    def __enter__(self):
        self.base = _vm("VmRSS")
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        return self

    def __exit__(self, *exc):
        self.bytes = _vm("VmHWM") - self.base
        return False


def _volume(shape=(128, 256, 256), pixel=np.float32) -> sitk.Image:
    """Noise (as incompressible as a scan) on a grid no default has: permuted, flipped axes, an offset origin."""
    array = np.random.default_rng(7).normal(100, 30, shape).astype(pixel)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.9, 1.5))
    image.SetOrigin((-12.5, 40.0, 7.25))
    image.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, 1))
    return image


@pytest.fixture(scope="module")
def itk_file(tmp_path_factory):
    """(the image, the uncompressed MHA file SimpleITK wrote for it, SimpleITK's own reading of that file)."""
    path = str(tmp_path_factory.mktemp("one-copy") / "volume.mha")
    image = _volume()
    sitk.WriteImage(image, path, False)
    with open(path, "rb") as handle:
        raw = handle.read()
    return image, raw, sitk.ReadImage(path)


def _body(fields: list[tuple[str, bytes]]) -> BodyBuffer:
    """A multipart body received as the server receives one: into a BodyBuffer, 64 KiB at a time."""
    data = b"".join(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value + b"\r\n"
        for name, value in fields
    )
    data += f"--{BOUNDARY}--\r\n".encode()
    body = BodyBuffer(len(data), Budget(0))
    for at in range(0, len(data), 1 << 16):
        body.write(data[at : at + (1 << 16)])
    body.finish()
    return body


def _same(got: sitk.Image, truth: sitk.Image) -> None:
    assert got.GetSize() == truth.GetSize() and got.GetPixelID() == truth.GetPixelID()
    assert (got.GetSpacing(), got.GetOrigin(), got.GetDirection()) == (
        truth.GetSpacing(),
        truth.GetOrigin(),
        truth.GetDirection(),
    )
    assert np.array_equal(sitk.GetArrayViewFromImage(got), sitk.GetArrayViewFromImage(truth))
    assert got.GetMetaDataKeys() == ()  # nothing of the reader's: as GetImageFromArray made images before


@pytest.mark.parametrize("sent", ["binary part", "base64 text"])
def test_a_volume_in_a_body_is_decoded_exactly_while_the_body_gives_its_pages_back(itk_file, sent, leftovers):
    """Before: the body and the image (v2), or the text, its decoded bytes and the image (v1), were all held:
    2x and 3.3x the volume. Now the image grows as the body shrinks."""
    image, raw, truth = itk_file
    payload = raw if sent == "binary part" else base64.encodebytes(raw)  # as TOMAAT-Slicer encodes it
    body = _body([("images", payload), ("threshold", b"300")])
    try:
        fields = read_fields(body, f"multipart/form-data; boundary={BOUNDARY}")
        allowance = Allowance(Limits(max_decoded_bytes=10**10), Budget(0))
        with Growth() as growth:
            got = read_image(fields["images"], "images", allowance)
        _same(got, truth)
        _same(got, image)
        volume = truth.GetNumberOfPixels() * 4
        # what the image took, the body gave back (a few pieces in flight)
        assert growth.bytes < 0.3 * volume, f"{sent}: grew {growth.bytes / MIB:.1f} MiB for {volume / MIB:.0f} MiB"
        assert bytes(fields["threshold"]) == b"300"  # a field sharing the volume's last page keeps its bytes
        assert growth.bytes <= 1.2 * allowance.peak  # never more than was charged
    finally:
        body.close()
    assert leftovers() == []  # the reader's header file is gone with its folder


def test_bytes_that_are_not_a_body_are_left_alone(itk_file):
    _, raw, truth = itk_file
    copy = bytearray(raw)
    _same(mha.read(copy), truth)
    assert copy == raw


@pytest.mark.parametrize("compressed", [False, True])
def test_mha_that_simpleitk_writes_is_poured_into_its_image_exactly_in_every_layout(tmp_path, monkeypatch, compressed):
    """The pipe to ITK's reader, even for small images: pixel types of every size, 2-D to 5-D, vectors, both byte
    orders, compressed or not."""
    monkeypatch.setattr(filling, "PIPE_FROM", 0)
    descriptors = len(os.listdir("/proc/self/fd"))
    rng = np.random.default_rng(3)
    path = str(tmp_path / "layout.mha")
    for dims, channels, pixel in [(2, 1, "uint8"), (3, 1, "int16"), (3, 3, "float32"), (4, 1, "float64")] + [
        (5, 2, "uint16"),
        (3, 1, "int64"),
        (3, 1, "uint32"),
        (2, 4, "int8"),
    ]:
        shape = (5, 6, 7, 3, 2)[:dims][::-1] + ((channels,) if channels > 1 else ())
        image = sitk.GetImageFromArray(rng.normal(0, 60, shape).astype(pixel), isVector=channels > 1)
        image.SetOrigin(tuple(float(d) - 3.5 for d in range(dims)))
        sitk.WriteImage(image, path, compressed)
        with open(path, "rb") as handle:
            _same(mha.read(handle.read()), sitk.ReadImage(path))
    array = rng.normal(0, 50, (5, 6, 7)).astype(">f4")  # big-endian, as some tools write
    header = (
        b"NDims = 3\nBinaryDataByteOrderMSB = True\nDimSize = 7 6 5\nElementType = MET_FLOAT\nElementDataFile = LOCAL\n"
    )
    assert np.array_equal(sitk.GetArrayViewFromImage(mha.read(header + array.tobytes())), array.astype("<f4"))
    assert len(os.listdir("/proc/self/fd")) == descriptors  # each pipe closed, both ends


def test_data_refused_while_it_is_poured_is_refused_quietly(monkeypatch, capfd):
    """MetaIO writes to stderr when its data ends early: compressed data is checked whole before the image is
    made, and base64 text found short half-way lets the reader finish on zeros (no more than the text could
    hold: a header announcing more than that is refused before, by the whole decode)."""
    import zlib

    monkeypatch.setattr(filling, "PIPE_FROM", 0)
    monkeypatch.setattr(volumes, "STREAM_FROM", 1 << 20)
    monkeypatch.setattr(volumes, "B64_PIECE", 1 << 18)
    descriptors = len(os.listdir("/proc/self/fd"))
    header = b"NDims = 3\nDimSize = 64 64 64\nElementType = MET_UCHAR\nCompressedData = True\nElementDataFile = LOCAL\n"
    with pytest.raises(TooLarge, match="decompresses to more than the 262144 bytes"):
        mha.read(header + zlib.compress(bytes(300_000)))
    with pytest.raises(RequestError, match="inflates to fewer than the 262144 bytes"):
        mha.read(header + zlib.compress(bytes(200_000)))
    with pytest.raises(RequestError, match="not a valid zlib stream"):
        mha.read(header + b"\x78\x9c" + b"\xff" * 40)
    padded = []
    real_pad = filling._pad
    monkeypatch.setattr(filling, "_pad", lambda fd, count: (padded.append(count), real_pad(fd, count)))
    image = sitk.GetImageFromArray(np.random.default_rng(1).integers(0, 255, (64, 128, 128), np.uint8))
    raw = mha.write(image, False, 1)
    with pytest.raises(RequestError, match="announces 1048576 bytes of data, it holds 1047576"):
        read_image(base64.encodebytes(raw[:-1000]), "images")
    with pytest.raises(RequestError, match="truncated or corrupt \\(its length or padding is wrong\\)"):
        read_image(base64.encodebytes(raw).rstrip(b"\n=")[:-1], "images")
    assert len(padded) == 2 and padded[0] == 1000  # both found out while pouring
    with pytest.raises(RequestError, match="announces 1048576 bytes of data, it holds 524288"):  # decoded whole
        read_image(base64.encodebytes(raw[: len(raw) - 524288]), "images")
    assert len(padded) == 2  # that one never reached the reader
    assert len(os.listdir("/proc/self/fd")) == descriptors
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("size", [mha.PIECE - 1, mha.PIECE, mha.PIECE + 7, 2 * mha.PIECE + 1, 3 * mha.PIECE])
def test_compressed_data_inflated_a_piece_at_a_time_is_all_there(size):
    """Output held back by a piece's limit after the last input still comes out: no false 'fewer' refusal."""
    import zlib

    data = np.repeat(np.arange(size // 1000 + 1, dtype=np.uint8), 1000)[:size].tobytes()
    header = b"NDims = 2\nDimSize = %d 1\nElementType = MET_UCHAR\nCompressedData = True\nElementDataFile = LOCAL\n"
    for level in (1, 9):
        image = mha.read(header % size + zlib.compress(data, level))
        assert sitk.GetArrayViewFromImage(image).tobytes() == data
        with pytest.raises(TooLarge):
            mha.read(header % size + zlib.compress(data + b"\0", level))
        with pytest.raises(RequestError, match="inflates to fewer"):
            mha.read(header % size + zlib.compress(data[:-1], level))


def _texts(data: bytes) -> dict[str, bytes]:
    """The same bytes as base64 the ways tools write it."""
    one_line = base64.b64encode(data)
    return {
        "MIME lines (Python, Slicer)": base64.encodebytes(data),
        "one line": one_line,
        "PEM lines of 64, CRLF": b"\r\n".join(one_line[i : i + 64] for i in range(0, len(one_line), 64)),
        "lines of 75 (not whole groups)": b"\n".join(one_line[i : i + 75] for i in range(0, len(one_line), 75)),
        "stray spaces and tabs": b" \t".join(one_line[i : i + 50] for i in range(0, len(one_line), 50)),
    }


@pytest.mark.parametrize("size", [0, 1, 2, 3, 100_000, 300_001])
def test_base64_decoded_in_pieces_is_what_decoding_it_whole_gives(size):
    data = np.random.default_rng(size).integers(0, 256, size, np.uint8).tobytes()
    for name, text in _texts(data).items():
        view = memoryview(text)
        assert not b64.padded_before(view, len(view) - b64.TAIL), name
        pieces = b64.Pieces(view, 4096)
        assert b"".join(piece for piece, _ in pieces) == b64.decode(text) == data, name
        assert not pieces.odd, name
    one_line = base64.b64encode(data)
    stray = b"*".join(one_line[i : i + 33] for i in range(0, len(one_line), 33))  # what pybase64 skips
    assert b"".join(piece for piece, _ in b64.Pieces(memoryview(stray), 4096)) == b64.decode(stray) == data


@pytest.mark.parametrize("sent", ["MIME lines (Python, Slicer)", "lines of 75 (not whole groups)", "one line"])
def test_a_v1_volume_streamed_from_its_base64_is_exact_and_its_faults_are_named(itk_file, monkeypatch, sent):
    monkeypatch.setattr(volumes, "STREAM_FROM", 1 << 20)
    monkeypatch.setattr(volumes, "B64_PIECE", 1 << 18)
    image, raw, truth = itk_file
    small = sitk.RegionOfInterest(truth, (256, 256, 8))  # 2 MiB, from the same file's voxels
    small_raw = mha.write(small, False, 1)
    text = _texts(small_raw)[sent]
    _same(read_image(text, "images"), small)
    with pytest.raises(RequestError, match="truncated or corrupt \\(its length or padding is wrong\\)"):
        read_image(text.rstrip(b"\r\n=")[:-1], "images")
    nbytes = small.GetNumberOfPixels() * 4
    with pytest.raises(RequestError, match=f"announces {nbytes} bytes of data, it holds {nbytes + 8}"):
        read_image(base64.encodebytes(small_raw + bytes(8)), "images")
    cut = text.rstrip(b"\r\n=")[:-1]
    with pytest.raises(RequestError, match="got text that is neither"):  # other characters, where still unread
        read_image(cut[:-100] + b"*!*" + cut[-100:], "images")


# ---- through a real server ------------------------------------------------------------------------------------

APP = textwrap.dedent(
    """
    import SimpleITK as sitk
    from tomaat import PlainText, TomaatApp, Volume

    class Mean(TomaatApp):
        input_interface = [Volume("images")]
        output_interface = [PlainText("mean")]

        def inference(self, data):  # a view and a sum: the app itself holds next to nothing
            data["mean"] = repr(float(sitk.GetArrayViewFromImage(data["images"]).mean(dtype="float64")))
            return data

    app = Mean()
    """
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("one-copy-server")
    (folder / "mean.py").write_text(APP)
    port = free_port()
    command = [sys.executable, "-m", "tomaat", "serve", str(folder / "mean.py"), "--port", str(port), "--no-tls"]
    command += ["--listen-address", "127.0.0.1"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, process)
        yield url, process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=20)


@pytest.mark.parametrize("sent, most", [("binary part", 1.3), ("base64 text", 1.6)])
def test_a_servers_peak_for_one_request_is_about_one_copy(server, itk_file, sent, most):
    """A request's growth of the server's VmHWM: the body as it arrives, then the image as the body goes
    (v1: base64 text is 4/3 of the volume, and arrives whole). Before: 2.0x and 3.3x."""
    url, pid = server
    _, raw, truth = itk_file
    if sent == "binary part":
        files = {"images": ("images.mha", raw, "application/octet-stream")}
    else:
        files = {"images": (None, base64.encodebytes(raw))}
    expected = float(sitk.GetArrayViewFromImage(truth).mean(dtype="float64"))
    assert requests.post(url + "/predict", files=files, timeout=120).status_code == 200  # first-touch allocations
    with PeakMemory(pid) as memory:
        answer = requests.post(url + "/predict", files=files, timeout=120)
    assert answer.status_code == 200, answer.text[:300]
    assert float(answer.json()[0]["content"]) == expected
    volume_mib = len(raw) / MIB
    print(f"{sent}: the server's VmHWM grew {memory.growth_mib:.1f} MiB for a {volume_mib:.0f} MiB volume")
    assert memory.growth_mib <= most * volume_mib, f"{sent}: {memory.growth_mib:.0f} MiB for {volume_mib:.0f} MiB"


def test_the_reader_pipe_needs_proc(monkeypatch, itk_file):
    """Without /proc the bytes are joined and copied as before: the same image."""
    _, raw, truth = itk_file
    real = os.path.isdir
    monkeypatch.setattr(filling.os.path, "isdir", lambda path: False if path == "/proc/self/fd" else real(path))
    _same(mha.read(raw), truth)


def test_the_memory_benchmark_runs_and_prints_both_clients():
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory", "--size", "32", "--runs", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "(a) tomaat client" in result.stdout and "(b) v1 client" in result.stdout and "OK" in result.stdout
