"""Compressed uploads through a real server: each format round-trips exactly, and only where it pays.

What went on the wire is read from the client's own progress reports: their total is the length of
the body it wrote. What the server decoded comes back from EchoApp, voxel for voxel.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import pytest_twisted
import SimpleITK as sitk
from client_support import write_dicom_series
from transfer_support import FAR, EchoApp, ct_phantom, same_image
from twisted.python.threadable import isInIOThread

from benchmarks.link import Link
from tomaat.client import AsyncClient, InputFileError, compression
from tomaat.protocol.volumes import sniff_format


async def predict(client: AsyncClient, images, **options):
    """The result and the bytes of the request body the client sent."""
    totals = []
    result = await client.predict(
        {"images": images, "threshold": 100}, progress=lambda s, t: totals.append(t), **options
    )
    return result, totals[-1]


def write(image: sitk.Image, path, compress: bool = False) -> str:
    sitk.WriteImage(image, str(path), compress)
    return str(path)


@pytest.mark.parametrize("suffix", [".mha", ".nii", ".nrrd"])
@pytest_twisted.ensureDeferred
async def test_an_uncompressed_file_is_compressed_in_its_own_format_and_round_trips_exactly(serve, tmp_path, suffix):
    image = ct_phantom()
    path = write(image, tmp_path / f"scan{suffix}")
    size = os.path.getsize(path)
    service = await serve(EchoApp())
    client = AsyncClient(service.url, known_hosts=str(tmp_path / "kh.json"), compress=True)
    result, sent = await predict(client, path)
    assert sent < size / 2, (sent, size)  # what crossed the wire: the body, compressed
    same_image(result["echo"], sitk.ReadImage(path))  # what the server decoded is what the file says
    if suffix != ".nii":  # NIfTI holds its geometry in float32
        same_image(result["echo"], image)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result["mask"]), sitk.GetArrayFromImage(image) >= 100)

    plain, sent_plain = await predict(client, path, compress=False)
    assert sent_plain > size  # forced off: the file's own bytes
    same_image(plain["echo"], result["echo"])


@pytest.mark.parametrize("kind", ["image", "dicom"])
@pytest_twisted.ensureDeferred
async def test_volumes_the_client_encodes_go_as_compressed_mha(serve, tmp_path, kind):
    image = ct_phantom()
    given = image
    if kind == "dicom":
        write_dicom_series(image, tmp_path / "series")
        given = str(tmp_path / "series")
    service = await serve(EchoApp())
    client = AsyncClient(service.url, known_hosts=str(tmp_path / "kh.json"), compress=True)
    result, sent = await predict(client, given)
    raw = image.GetNumberOfPixels() * 2
    assert sent < raw / 2, (sent, raw)
    if kind == "image":
        same_image(result["echo"], image)
    else:  # a DICOM series holds its geometry as decimal text
        expected = sitk.ReadImage(sorted(str(p) for p in (tmp_path / "series").iterdir()))
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(result["echo"]), sitk.GetArrayViewFromImage(image))
        np.testing.assert_allclose(result["echo"].GetOrigin(), expected.GetOrigin(), atol=1e-6)
        np.testing.assert_allclose(result["echo"].GetDirection(), image.GetDirection(), atol=1e-6)
    _, sent_plain = await predict(client, given, compress=False)
    assert sent_plain > raw


@pytest.mark.parametrize("suffix", [".nii.gz", ".mha"])
@pytest_twisted.ensureDeferred
async def test_a_compressed_file_is_sent_as_it_is(serve, tmp_path, suffix):
    image = ct_phantom()
    path = write(image, tmp_path / f"scan{suffix}", compress=True)
    with open(path, "rb") as handle:
        raw = handle.read()
    assert sniff_format(raw) == suffix.lstrip(".")
    service = await serve(EchoApp())
    client = AsyncClient(service.url, known_hosts=str(tmp_path / "kh.json"), compress=True)
    result, sent = await predict(client, path)
    assert len(raw) < sent < len(raw) + 1024  # the file, its part's headers and the other fields
    same_image(result["echo"], sitk.ReadImage(path))


@pytest_twisted.ensureDeferred
async def test_automatic_compression_not_to_a_near_server(serve, tmp_path):
    image = ct_phantom((96, 96, 64))  # 1.1 MiB: big enough, and it compresses well
    path = write(image, tmp_path / "scan.mha")
    service = await serve(EchoApp())
    client = AsyncClient(service.url, known_hosts=str(tmp_path / "kh.json"))
    _, sent = await predict(client, path)
    assert client.distance < compression.NEAR and not await client.far()
    assert sent > os.path.getsize(path)  # loopback: the bytes are free, compressing would only cost time


@pytest_twisted.ensureDeferred
async def test_automatic_compression_to_a_far_server_when_it_pays(serve, tmp_path):
    service = await serve(EchoApp())
    with Link(service.port.getHost().port, FAR) as link:  # 30 ms round trips, on loopback all the same
        client = AsyncClient(f"http://127.0.0.1:{link.port}", known_hosts=str(tmp_path / "kh.json"), reuse=False)
        scan = write(ct_phantom((96, 96, 64)), tmp_path / "scan.nrrd")  # 1.1 MiB of CT: compressed
        result, sent = await predict(client, scan)
        assert client.distance >= compression.NEAR and await client.far()
        assert sent < os.path.getsize(scan) / 2
        same_image(result["echo"], sitk.ReadImage(scan))

        small = write(ct_phantom((48, 40, 24)), tmp_path / "small.mha")  # 90 KiB: below MIN_BYTES, as it is
        _, sent = await predict(client, small)
        assert sent > os.path.getsize(small)

        rng = np.random.default_rng(3)  # noise does not deflate: sent as it is
        noisy = sitk.GetImageFromArray(rng.integers(0, 2**16, (40, 80, 80), dtype=np.uint16))
        path = write(noisy, tmp_path / "noisy.mha")
        result, sent = await predict(client, path)
        assert sent > os.path.getsize(path)
        same_image(result["echo"], noisy)


def test_the_rule():
    ct = sitk.GetArrayFromImage(ct_phantom((96, 96, 64))).tobytes()
    noise = np.random.default_rng(1).integers(0, 2**16, 2**19, dtype=np.uint16).tobytes()
    assert compression.pays(ct, True, None) and not compression.pays(ct, False, None)
    assert not compression.pays(noise, True, None) and compression.pays(noise, False, True)
    assert not compression.pays(ct[: compression.MIN_BYTES - 2], True, None)
    assert not compression.pays(ct, True, False)
    assert compression.sample_ratio(ct) < 0.5 and compression.sample_ratio(noise) > compression.MAX_RATIO


def test_an_mha_header_keeps_its_lines():
    header = b"ObjectType = Image\nNDims = 3\nCompressedData = False\nDimSize = 2 2 2\nElementType = MET_SHORT\n"
    header += b"AnatomicalOrientation = RAI\nElementDataFile = LOCAL\n"
    rewritten = compression.mha_header(header, 123)
    assert rewritten.splitlines() == [
        b"ObjectType = Image",
        b"NDims = 3",
        b"DimSize = 2 2 2",
        b"ElementType = MET_SHORT",
        b"AnatomicalOrientation = RAI",
        b"CompressedData = True",
        b"CompressedDataSize = 123",
        b"ElementDataFile = LOCAL",
    ]


@pytest_twisted.ensureDeferred
async def test_compression_and_file_reads_run_off_the_reactor_thread(serve, tmp_path, monkeypatch):
    where = {}
    for name in ("deflate", "gzip", "sample_ratio"):
        real = getattr(compression, name)

        def wrapped(*args, real=real, name=name):
            where.setdefault(name, set()).add(isInIOThread())
            return real(*args)

        monkeypatch.setattr(compression, name, wrapped)
    from tomaat.client import inputs

    real_read = inputs.FileData.read

    def read(self, *args):
        where.setdefault("read", set()).add(isInIOThread())
        return real_read(self, *args)

    monkeypatch.setattr(inputs.FileData, "read", read)
    service = await serve(EchoApp())
    client = AsyncClient(service.url, known_hosts=str(tmp_path / "kh.json"))
    image = ct_phantom((96, 96, 64))
    await predict(client, write(image, tmp_path / "a.mha"), compress=True)
    await predict(client, write(image, tmp_path / "b.nii"), compress=True)
    await predict(client, write(image, tmp_path / "c.mha"), compress=False)  # streamed from disk
    assert where == {"deflate": {False}, "gzip": {False}, "read": {False}}


@pytest_twisted.ensureDeferred
async def test_a_file_that_changes_while_it_uploads_fails_the_request_with_one_line(serve, tmp_path):
    path = tmp_path / "scan.mha"
    write(ct_phantom((160, 160, 128)), path)  # 6 MiB: many chunks
    service = await serve(EchoApp())
    client = AsyncClient(service.url, known_hosts=str(tmp_path / "kh.json"))

    def shrink(sent, total):  # the first chunk is out: the user overwrites the file
        if os.path.getsize(path) > 4096:
            os.truncate(path, 4096)

    with pytest.raises(InputFileError, match="changed while it was being sent"):
        await client.predict({"images": str(path), "threshold": 1}, progress=shrink)
    assert (await client.health())["in_flight"] == 0
