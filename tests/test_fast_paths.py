"""The in-memory fast paths (multipart views, MHA read without a scratch file) against the slow truth."""

from __future__ import annotations

import io
import os
import zlib

import numpy as np
import pytest
import SimpleITK as sitk

from tomaat.errors import RequestError
from tomaat.files import mha
from tomaat.protocol.volumes import decode_base64, read_image, write_image
from tomaat.server.form import read_fields


def _file(image: sitk.Image, folder, compress: bool = False) -> tuple[bytes, str]:
    path = os.path.join(folder, "image.mha")
    sitk.WriteImage(image, path, compress)
    with open(path, "rb") as handle:
        return handle.read(), path


def _odd_grid(dims: int, dtype, seed: int) -> sitk.Image:
    rng = np.random.default_rng(seed)
    image = sitk.GetImageFromArray(rng.uniform(0, 100, (5, 6, 7)[:dims]).astype(dtype))
    image.SetSpacing(rng.uniform(0.1, 3, dims).tolist())
    image.SetOrigin(rng.uniform(-100, 100, dims).tolist())
    image.SetDirection(np.linalg.qr(rng.normal(size=(dims, dims)))[0].ravel().tolist())
    return image


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("dtype", list(mha.DTYPES.values()))
@pytest.mark.parametrize("compress", [False, True])
def test_mha_read_in_memory_matches_simpleitk_exactly(tmp_path, dims, dtype, compress):
    image = _odd_grid(dims, dtype, seed=dims)
    raw, path = _file(image, tmp_path, compress)
    mine, truth = mha.read(raw), sitk.ReadImage(path)
    assert mine is not None
    assert mine.GetPixelID() == truth.GetPixelID()
    assert np.array_equal(sitk.GetArrayViewFromImage(mine), sitk.GetArrayViewFromImage(truth))
    assert (mine.GetSpacing(), mine.GetOrigin(), mine.GetDirection()) == (
        truth.GetSpacing(),
        truth.GetOrigin(),
        truth.GetDirection(),
    )


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("dtype", list(mha.DTYPES.values()))
@pytest.mark.parametrize("compress", [False, True])
def test_mha_written_in_memory_reads_back_in_simpleitk_exactly(tmp_path, dims, dtype, compress):
    image = _odd_grid(dims, dtype, seed=dims + 10)
    raw = write_image(image, "mha", compress)
    assert (b"CompressedData = True" in raw) == compress
    path = tmp_path / "written.mha"
    path.write_bytes(raw)
    for back in (sitk.ReadImage(str(path)), mha.read(raw)):
        assert back.GetPixelID() == image.GetPixelID()
        assert np.array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(image))
        assert (back.GetSpacing(), back.GetOrigin(), back.GetDirection()) == (
            image.GetSpacing(),
            image.GetOrigin(),
            image.GetDirection(),
        )


def test_images_the_mha_writer_does_not_know_go_through_simpleitk():
    vector = sitk.Compose([sitk.Image(4, 5, 6, sitk.sitkFloat32)] * 3)
    assert mha.write(vector, True, 1) is None
    assert read_image(write_image(vector, "mha")).GetNumberOfComponentsPerPixel() == 3
    four_d = sitk.Image([2, 3, 4, 5], sitk.sitkUInt8)
    assert mha.write(four_d, True, 1) is None
    assert read_image(write_image(four_d, "mha")).GetSize() == (2, 3, 4, 5)


def test_mha_that_simpleitk_writes_with_channels_or_comments_is_read_by_our_reader(tmp_path):
    vector = sitk.Compose([sitk.Image(4, 5, 6, sitk.sitkFloat32)] * 3)
    vector.SetOrigin((1.5, -2.0, 3.0))
    raw, _ = _file(vector, tmp_path)
    back = mha.read(raw)
    assert back.GetNumberOfComponentsPerPixel() == 3 and back.GetOrigin() == (1.5, -2.0, 3.0)
    commented = b"Comment = hello\n" + _file(sitk.Image(4, 5, 6, sitk.sitkUInt8), tmp_path)[0]
    assert mha.read(commented).GetSize() == (4, 5, 6)


def test_compressed_mha_that_inflates_past_its_header_size_is_refused(tmp_path):
    raw, _ = _file(sitk.Image(8, 8, 8, sitk.sitkUInt8), tmp_path, compress=True)
    header, _, _ = raw.partition(b"ElementDataFile = LOCAL\n")
    header = b"\n".join(line for line in header.split(b"\n") if not line.startswith(b"CompressedDataSize"))
    bomb = header.replace(b"DimSize = 8 8 8", b"DimSize = 2 2 2") + b"ElementDataFile = LOCAL\n"
    with pytest.raises(RequestError, match="decompresses to more than the 8 bytes") as refused:
        mha.read(bomb + zlib.compress(bytes(10**7)))  # inflating stops one byte past the 8 announced
    assert refused.value.status == 413


def test_base64_decoding_accepts_views_and_line_breaks_and_refuses_other_text():
    import base64

    data = bytes(range(256)) * 1000
    assert decode_base64(memoryview(base64.encodebytes(data)), "v") == data
    with pytest.raises(RequestError, match="neither"):
        decode_base64(b"QUJD*A==", "v")
    with pytest.raises(RequestError, match="truncated or corrupt"):
        decode_base64(b"QUJDR", "v")


def _form(parts, boundary=b"b0und"):
    body = b"preamble\r\n"
    for name, value in parts:
        body += b"--" + boundary + b'\r\nContent-Disposition: form-data; name="' + name + b'"\r\n\r\n' + value + b"\r\n"
    return body + b"--" + boundary + b"--\r\nepilogue", f"multipart/form-data; boundary={boundary.decode()}"


def test_multipart_parts_are_views_of_the_one_body():
    payload = bytes(range(256)) * 4096 + b"\r\n--b0un"  # a near-boundary inside the data
    body, content_type = _form([(b"images", payload), (b"threshold", b"300"), (b"empty", b"")])
    fields = read_fields(io.BytesIO(body), content_type)
    assert isinstance(fields["images"], memoryview) and fields["images"].obj is fields["threshold"].obj
    assert fields["images"] == payload and fields["threshold"] == b"300" and fields["empty"] == b""


@pytest.mark.parametrize(
    "body, message",
    [
        (b"", "never occurs"),
        (b'--b0und\r\nContent-Disposition: form-data; name="a"\r\n\r\nabc', "truncated"),
        (b"--b0und\r\nX-Other: 1\r\n\r\nabc\r\n--b0und--", "no Content-Disposition"),
        (b"--b0und\r\nno colon here\r\n\r\nabc\r\n--b0und--", "no colon"),
    ],
)
def test_malformed_multipart_bodies_are_named(body, message):
    with pytest.raises(RequestError, match=message) as raised:
        read_fields(io.BytesIO(body), "multipart/form-data; boundary=b0und")
    assert "malformed" in raised.value.message and raised.value.status == 400
