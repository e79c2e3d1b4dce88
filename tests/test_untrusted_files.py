"""Attacks through the files a client uploads: each is refused with a 4xx, gives nothing back, and the server goes on.

Each hostile file is built here; where the attack worked before, a control shows that ITK's own
automatic reading of the same bytes does read the secret, so the refusal is not an accident.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib

import numpy as np
import pytest
import pytest_twisted
import SimpleITK as sitk
from clients import slicer_post
from conftest import image_bytes, make_phantom, v1_base64
from hostile import SECRET, hide_landlock, nrrd_late_data_file, polyglot, secret_file
from test_server_limits import _post_file

from examples.threshold import ThresholdApp
from tomaat import LabelVolume, TomaatApp, Transform, Volume
from tomaat.errors import RequestError
from tomaat.files import confined
from tomaat.protocol.outputs import decode_item
from tomaat.protocol.volumes import read_image

GOOD = {"images": v1_base64(make_phantom()), "threshold": "100"}


def _secret_leaked(response) -> bool:
    text = response.text
    return any(str(int(v)) in text for v in SECRET[5:9]) or base64.b64encode(SECRET.tobytes()[:12]).decode() in text


async def _refused_then_good(service, filename: str, data: bytes, status: int, message: str):
    response = await _post_file(service.url + "/predict", "images", filename, data)
    assert response.status_code == status, response.text[:400]
    assert message in response.json()[0]["content"]
    assert not _secret_leaked(response)
    good = await slicer_post(service.url + "/predict", GOOD)
    assert good.status_code == 200
    return response


# ---- 1. a server file named by a NRRD header past the first 64 KiB ---------------------------------


def test_control_itk_reads_the_file_a_late_nrrd_data_file_names(tmp_path):
    path = tmp_path / "late.nrrd"
    path.write_bytes(nrrd_late_data_file(secret_file(tmp_path)))
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path))).ravel(), SECRET)


@pytest.mark.parametrize("padding", [0, 70 * 1024], ids=["first-64KiB", "after-70KiB"])
@pytest_twisted.ensureDeferred
async def test_a_nrrd_naming_a_server_file_is_refused(serve, tmp_path, leftovers, padding):
    service = await serve(ThresholdApp())
    data = nrrd_late_data_file(secret_file(tmp_path), padding)
    message = "detached NRRD" if padding == 0 else "does not end with a blank line within 65536 bytes"
    await _refused_then_good(service, "late.nrrd", data, 415, message)
    assert leftovers() == []


# ---- 2. an HDF5 image hidden at byte 512 of a valid MHA, NRRD or NIfTI file -------------------------


@pytest.mark.parametrize("fmt", ["mha", "nrrd", "nii"])
def test_control_itk_reads_the_hidden_hdf5_and_the_secret(tmp_path, fmt):
    path = tmp_path / f"polyglot.{fmt}"
    path.write_bytes(polyglot(fmt, tmp_path, secret_file(tmp_path)))
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path))).ravel(), SECRET)


@pytest.mark.parametrize("fmt", ["mha", "nrrd", "nii"])
@pytest_twisted.ensureDeferred
async def test_an_hdf5_hidden_in_a_valid_image_is_never_read_as_hdf5(serve, tmp_path, leftovers, fmt):
    service = await serve(ThresholdApp())
    data = polyglot(fmt, tmp_path, secret_file(tmp_path))
    await _refused_then_good(service, f"polyglot.{fmt}", data, 415, "truncated or corrupt")
    assert leftovers() == []


# ---- 3. data shorter than its header: no reader may fill the image from memory ---------------------


def _short_data_cases():
    image = make_phantom()
    mha = image_bytes(image, ".mha")
    header = mha[: mha.index(b"ElementDataFile = LOCAL\n") + 24].replace(
        b"CompressedData = False", b"CompressedData = True"
    )
    nrrd = image_bytes(image, ".nrrd")
    nrrd_gzip = nrrd[: nrrd.index(b"\n\n") + 2].replace(b"encoding: raw", b"encoding: gzip")
    nii_gz = image_bytes(image, ".nii.gz")
    return {
        "mha one compressed byte": ("short.mha", header + b"x"),
        "mha compressed, cut short": ("short.mha", header + zlib.compress(bytes(400))),
        "nrrd gzip, cut short": ("short.nrrd", nrrd_gzip + zlib.compress(bytes(400), wbits=31)),
        "nii.gz cut short": ("short.nii.gz", nii_gz[: len(nii_gz) // 2]),
        "nii cut short": ("short.nii", image_bytes(image, ".nii")[:-100]),
    }


@pytest.mark.parametrize("case", list(_short_data_cases()))
@pytest_twisted.ensureDeferred
async def test_data_shorter_than_its_header_is_refused(serve, leftovers, case):
    service = await serve(ThresholdApp())
    filename, data = _short_data_cases()[case]
    await _refused_then_good(service, filename, data, 415, "")
    assert leftovers() == []


# ---- 4. the voxel limit: the header checked is the header decoded -----------------------------------

TINY_MHA = b"ObjectType = Image\nNDims = 3\nBinaryData = True\nElementType = MET_UCHAR\n"


@pytest.mark.parametrize(
    "lines, message",
    [
        (b"DimSize = 4 4 4\nDimSize = 128 128 128\n", "gives DimSize more than once"),
        (b"DimSize = 4 4 4\nHeaderSize = -1\n", "the key 'HeaderSize'"),
    ],
    ids=["twice", "header-size"],
)
@pytest_twisted.ensureDeferred
async def test_an_mha_header_read_two_ways_is_refused(serve, lines, message):
    service = await serve(ThresholdApp(), max_voxels=4096)
    data = TINY_MHA + lines + b"ElementDataFile = LOCAL\n" + bytes(64)
    await _refused_then_good(service, "twice.mha", data, 415, message)


@pytest_twisted.ensureDeferred
async def test_a_lower_case_mha_key_is_metadata_as_metaio_reads_it(serve):
    """MetaIO compares keys case-sensitively: 'dimsize' is a user field, the image is the DimSize one."""
    service = await serve(ThresholdApp(), max_voxels=4096)
    data = TINY_MHA + b"dimsize = 128 128 128\nDimSize = 4 4 4\nElementDataFile = LOCAL\n" + bytes(64)
    response = await _post_file(service.url + "/predict", "images", "lower.mha", data)
    assert response.status_code == 200, response.text[:300]
    assert decode_item(response.json()[0]).GetSize() == (4, 4, 4)


@pytest_twisted.ensureDeferred
async def test_a_nrrd_with_two_sizes_lines_is_refused(serve):
    service = await serve(ThresholdApp(), max_voxels=4096)
    data = b"NRRD0004\ntype: uchar\ndimension: 3\nsizes: 4 4 4\nSizes: 128 128 128\nencoding: raw\n\n" + bytes(64)
    await _refused_then_good(service, "twice.nrrd", data, 415, "more than once")


@pytest_twisted.ensureDeferred
async def test_a_dicom_preamble_in_an_mha_header_is_read_as_the_mha_it_is(serve):
    """GDCM looks for 'DICM' at byte 128 of any file; here it is inside a Comment, and the MHA says 2x2x2."""
    service = await serve(ThresholdApp(), max_voxels=4096)
    hidden = b"Comment = " + b"p" * 118 + b"DICM" + b"q" * 20 + b"\n" + TINY_MHA + b"DimSize = 2 2 2\n"
    assert hidden[128:132] == b"DICM"
    data = hidden + b"ElementDataFile = LOCAL\n" + bytes(8)
    response = await _post_file(service.url + "/predict", "images", "dicm.mha", data)
    assert response.status_code == 200, response.text[:300]
    assert decode_item(response.json()[0]).GetSize() == (2, 2, 2)


class FieldApp(TomaatApp):
    input_interface = [Volume("images"), Transform("moving")]
    output_interface = [LabelVolume("labels")]

    def inference(self, data):
        data["labels"] = sitk.GetArrayFromImage(data["images"]) > 0
        return data


def _field_bytes(size: int) -> bytes:
    field = sitk.Image([size] * 3, sitk.sitkVectorFloat64, 3)
    field.SetOrigin((-3.0, 4.0, 10.0))
    return b"nii.gz\n" + base64.b64encode(image_bytes(field, ".nii.gz"))


@pytest_twisted.ensureDeferred
async def test_a_displacement_field_obeys_the_voxel_limit(serve):
    service = await serve(FieldApp(), max_voxels=4096)
    images = v1_base64(make_phantom((8, 8, 8)))
    response = await slicer_post(service.url + "/predict", {"images": images, "moving": _field_bytes(20)})
    assert response.status_code == 413, response.text[:300]
    assert "field 'moving'" in response.json()[0]["content"] and "24000 voxels" in response.json()[0]["content"]
    good = await slicer_post(service.url + "/predict", {"images": images, "moving": _field_bytes(8)})
    assert good.status_code == 200, good.text[:300]


# ---- the confined decoders ----------------------------------------------------------------------


def test_a_decoder_can_open_no_file_and_reach_no_port_but_its_own_folder(tmp_path):
    if not confined.landlock_available():
        pytest.skip("this kernel offers no Landlock: the server starts with a warning instead")
    outside = tmp_path / "outside.txt"
    outside.write_text("not for decoders")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        for path in (str(outside), "/etc/passwd", os.path.expanduser("~")):
            answer = confined.probe(path, port)
            assert answer["landlock"] >= 1
            assert answer["open"] is False, path
            assert answer["connect"] is False
        own = confined.POOL.decoders[0].folder
        assert confined.probe(own, port)["open"] is True  # the probe itself works: the refusals mean something


def _nifti() -> bytes:
    return image_bytes(make_phantom(), ".nii")


def test_a_decoder_killed_mid_file_is_a_clean_refusal_and_the_next_file_decodes():
    read_image(_nifti())  # a decoder is up and idle
    (decoder,) = [d for d in confined.POOL.decoders if not d.busy][:1]
    os.kill(decoder.pid, signal.SIGSTOP)  # it will take the next file and not answer
    outcome = {}

    def decode():
        try:
            outcome["image"] = read_image(_nifti(), "field 'images' (volume)")
        except RequestError as error:
            outcome["error"] = error

    worker = threading.Thread(target=decode)
    worker.start()
    deadline = time.monotonic() + 10
    while not decoder.busy and time.monotonic() < deadline:
        worker.join(0.01)
    assert decoder.busy, "the stopped decoder was given the file"
    os.kill(decoder.pid, signal.SIGKILL)
    worker.join(10)
    assert outcome["error"].status == 415
    assert "the decoder stopped" in outcome["error"].message and "field 'images'" in outcome["error"].message
    assert decoder not in confined.POOL.decoders
    assert read_image(_nifti()).GetSize() == make_phantom().GetSize()


def test_a_decoder_past_its_deadline_is_replaced(monkeypatch):
    read_image(_nifti())
    idle = [d for d in confined.POOL.decoders if not d.busy]
    for decoder in idle:
        os.kill(decoder.pid, signal.SIGSTOP)
    monkeypatch.setattr(confined.POOL, "timeout", 1.0)
    with pytest.raises(RequestError, match="took longer than this server allows") as refused:
        read_image(_nifti())
    assert refused.value.status == 415
    for decoder in idle:
        with contextlib.suppress(ProcessLookupError):  # the pool killed the one it gave the file to
            os.kill(decoder.pid, signal.SIGKILL)
    assert read_image(_nifti()).GetSize() == make_phantom().GetSize()


def test_without_landlock_decoding_goes_on_with_one_warning(tmp_path, monkeypatch, caplog):
    hide_landlock(tmp_path, monkeypatch)
    pool = confined.DecoderPool(size=1)
    monkeypatch.setattr(confined, "POOL", pool)
    try:
        with caplog.at_level("WARNING", logger="tomaat.files"):
            for _ in range(2):
                assert read_image(_nifti()).GetSize() == make_phantom().GetSize()
            pool._discard(pool.decoders[0])  # a second decoder start warns no more
            read_image(_nifti())
    finally:
        pool.close()
    warnings = [r.getMessage() for r in caplog.records if "WITHOUT confinement" in r.getMessage()]
    assert len(warnings) == 1 and "landlockpy package is not installed" in warnings[0]


@pytest_twisted.ensureDeferred
async def test_decoded_bytes_are_charged_per_request_and_process_and_given_back(serve):
    one = await serve(ThresholdApp(), max_decoded_bytes=1000)
    response = await slicer_post(one.url + "/predict", GOOD)
    assert response.status_code == 413 and "1000 bytes one request may decode" in response.json()[0]["content"]
    busy = await serve(ThresholdApp(), max_decoded_total=1000)
    response = await slicer_post(busy.url + "/predict", GOOD)
    assert response.status_code == 503 and "decoding as much as it can hold" in response.json()[0]["content"]
    roomy = await serve(ThresholdApp(), max_decoded_total=10**6)
    for _ in range(3):
        assert (await slicer_post(roomy.url + "/predict", GOOD)).status_code == 200
    assert roomy.prediction.decoded.used == 0


@pytest_twisted.ensureDeferred
async def test_each_service_decodes_with_decoders_of_its_own(serve):
    """Two services in one process: each has its own decoder processes, with its own settings, and neither
    takes the process-wide pool that clients in the same process use."""
    small = await serve(ThresholdApp(), decoders=1, decode_timeout=30)
    large = await serve(ThresholdApp(), decoders=3, decode_timeout=60)
    assert small.decoders is not large.decoders and small.decoders is not confined.POOL
    assert (small.decoders.size, small.decoders.timeout) == (1, 30) and (
        large.decoders.size,
        large.decoders.timeout,
    ) == (3, 60)
    for service in (small, large):
        response = await _post_file(service.url + "/predict", "images", "v.nii", _nifti())  # read by a decoder
        assert response.status_code == 200, response.text[:300]
    assert len(small.decoders.decoders) == 1 and len(large.decoders.decoders) == 3  # started before the port opened
    assert {d.pid for d in small.decoders.decoders}.isdisjoint(d.pid for d in large.decoders.decoders)


def test_a_decoder_does_not_inherit_the_servers_environment(monkeypatch):
    """A reader taken over by a file could copy its environment into the voxels it returns."""
    monkeypatch.setenv("TOMAAT_TEST_SECRET", "s3cr3t")
    pool = confined.DecoderPool(size=1)
    monkeypatch.setattr(confined, "POOL", pool)
    try:
        read_image(_nifti())
        (decoder,) = pool.decoders
        with open(f"/proc/{decoder.pid}/environ", "rb") as handle:
            environment = handle.read()
    finally:
        pool.close()
    assert b"TOMAAT_TEST_SECRET" not in environment and b"s3cr3t" not in environment
    assert b"OPENBLAS_NUM_THREADS=1" in environment


def test_a_process_that_decoded_leaves_no_decoder_folder_when_it_exits(tmp_path):
    script = (
        "import SimpleITK as sitk, tempfile, os\n"
        "from tomaat.protocol.volumes import read_image\n"
        "path = os.path.join(tempfile.gettempdir(), 'in.nii')\n"
        "sitk.WriteImage(sitk.Image(4, 4, 4, sitk.sitkInt16), path)\n"
        "print(read_image(open(path, 'rb').read()).GetSize())\n"
        "os.unlink(path)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env={**os.environ, "TMPDIR": str(tmp_path)}, capture_output=True, text=True
    )
    assert done.returncode == 0 and "(4, 4, 4)" in done.stdout, done.stderr
    assert os.listdir(tmp_path) == []
