"""Form field bytes -> the values an app finds in data[destination], through real SimpleITK files."""

import base64
import math
import os

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import assert_same_grid, image_bytes, make_affine, make_bspline
from scratch_checks import no_scratch_left, private_tempdir  # noqa: F401 (an autouse fixture)

from tomaat.errors import RequestError, UnreadableVolume
from tomaat.files import confined
from tomaat.protocol.codecs import input_codec
from tomaat.protocol.elements import Checkbox, Fiducials, RadioButton, Slider, Transform, Volume
from tomaat.protocol.inputs import decode_fields
from tomaat.protocol.volumes import sniff_format


def decode_field(element, raw, allowance=None):
    """One field as the server reads it: its element type's codec, charged to the allowance."""
    from tomaat.files.limits import Allowance

    return input_codec(element).read(element, raw, element.where(), allowance or Allowance())


# --- scratch folders: none may be left behind -----------------------------------------------------


def decode(element, raw):
    with no_scratch_left():
        return decode_field(element, raw)


def refused(element, raw, error=RequestError):
    """The error decode_field raises, checking that the failure also left no scratch folder."""
    with no_scratch_left(), pytest.raises(error) as caught:
        decode_field(element, raw)
    return caught.value


# --- phantoms --------------------------------------------------------------------------------------


def _rotation(degrees_z: float, degrees_x: float) -> tuple:
    cz, sz = math.cos(math.radians(degrees_z)), math.sin(math.radians(degrees_z))
    cx, sx = math.cos(math.radians(degrees_x)), math.sin(math.radians(degrees_x))
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    return tuple((rz @ rx).ravel())


DIRECTIONS = {
    "rotation": _rotation(30, 20),
    # an axis swap: a left-handed frame, which NIfTI stores with qfac = -1
    "permutation": (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0),
}


def phantom(direction=DIRECTIONS["rotation"]) -> sitk.Image:
    array = (np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6) * 37 - 1000).astype(np.int16)
    image = sitk.GetImageFromArray(array)  # size (6, 5, 4)
    image.SetSpacing((0.75, 1.5, 3.0))
    image.SetOrigin((-12.5, 40.25, 7.0))
    image.SetDirection(direction)
    return image


def file_bytes(image: sitk.Image, path, compress: bool = False) -> bytes:
    sitk.WriteImage(image, str(path), compress)
    return path.read_bytes()


def assert_same_image(actual: sitk.Image, expected: sitk.Image, atol: float = 0.0):
    assert isinstance(actual, sitk.Image)
    assert actual.GetSize() == expected.GetSize()
    assert actual.GetPixelID() == expected.GetPixelID()
    np.testing.assert_allclose(actual.GetSpacing(), expected.GetSpacing(), rtol=0, atol=atol)
    np.testing.assert_allclose(actual.GetOrigin(), expected.GetOrigin(), rtol=0, atol=atol)
    np.testing.assert_allclose(actual.GetDirection(), expected.GetDirection(), rtol=0, atol=atol)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(actual), sitk.GetArrayViewFromImage(expected))


def test_phantom_geometry_is_not_the_default():
    image = phantom()
    assert image.GetDirection() != (1, 0, 0, 0, 1, 0, 0, 0, 1)
    assert image.GetOrigin() != (0, 0, 0)
    assert len(set(image.GetSpacing())) == 3


# --- volumes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("direction", DIRECTIONS.values(), ids=DIRECTIONS.keys())
@pytest.mark.parametrize("compress", [False, True], ids=["plain", "compressed"])
def test_volume_as_base64_mha_like_slicer(tmp_path, direction, compress):
    image = phantom(direction)
    text = base64.encodebytes(file_bytes(image, tmp_path / "in.mha", compress))
    assert b"\n" in text[:100]  # line breaks every 76 characters, as Slicer sends them
    result = decode(Volume("images"), text)
    assert_same_image(result, image)  # MHA keeps the geometry exactly


@pytest.mark.parametrize("direction", DIRECTIONS.values(), ids=DIRECTIONS.keys())
@pytest.mark.parametrize(
    ("suffix", "fmt", "atol"),
    [
        (".mha", "mha", 0.0),
        (".nrrd", "nrrd", 1e-12),  # NRRD's text header rounds to a unit in the last place
        # NIfTI stores the direction as float32 quaternions: close, not bit-identical
        (".nii", "nii", 1e-6),
        (".nii.gz", "nii.gz", 1e-6),
    ],
)
def test_volume_as_raw_file_bytes(tmp_path, direction, suffix, fmt, atol):
    image = phantom(direction)
    raw = file_bytes(image, tmp_path / ("in" + suffix), compress=suffix != ".nii")
    assert sniff_format(raw) == fmt
    result = decode(Volume("images"), raw)
    assert_same_image(result, image, atol)


def test_all_formats_give_the_same_image(tmp_path):
    image = phantom()
    results = [
        decode(Volume("v"), base64.encodebytes(file_bytes(image, tmp_path / "a.mha"))),
        decode(Volume("v"), file_bytes(image, tmp_path / "b.nii")),
        decode(Volume("v"), file_bytes(image, tmp_path / "c.nii.gz")),
        decode(Volume("v"), file_bytes(image, tmp_path / "d.nrrd")),
    ]
    for other in results[1:]:
        assert_same_image(other, results[0], atol=1e-6)


def test_a_nrrd_goes_through_a_decoder_folder_that_is_empty_after_it(tmp_path):
    """The leftover checks are meaningful for confined decoding too: the file is written, read and removed."""
    image = decode(Volume("images"), file_bytes(phantom(), tmp_path / "in.nrrd"))
    assert image.GetSize() == phantom().GetSize()
    decoders = confined.POOL.decoders
    assert decoders, "a NRRD is decoded in a decoder process"
    for decoder in decoders:
        assert os.path.dirname(decoder.folder) == confined._BASE
        assert os.listdir(decoder.folder) == []


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"hello, this is not an image",
        base64.encodebytes(b"hello, this is not an image either"),
        b"\x00\x01\x02\x03" * 100,
    ],
    ids=["empty", "text", "base64-of-text", "binary"],
)
def test_unreadable_volume_is_415(raw):
    error = refused(Volume("images"), raw, UnreadableVolume)
    assert error.status == 415
    assert "field 'images' (volume)" in error.message
    assert "MHA" in error.message and "NIfTI" in error.message


def test_truncated_base64_is_415(tmp_path):
    text = base64.encodebytes(file_bytes(phantom(), tmp_path / "in.mha"))
    error = refused(Volume("images"), text[: len(text) // 2 - 3], UnreadableVolume)  # cut inside a quantum
    assert error.status == 415
    assert "truncated or corrupt" in error.message
    assert "'images'" in error.message


def test_truncated_file_is_415(tmp_path):
    raw = file_bytes(phantom(), tmp_path / "in.mha")
    # a base64 text cut on a 4-character boundary decodes cleanly to a truncated file
    text = base64.b64encode(raw[: len(raw) - 200])
    error = refused(Volume("images"), text, UnreadableVolume)
    assert error.status == 415
    assert "could not be read" in error.message


def test_gzip_that_is_not_nifti_is_415(tmp_path):
    import gzip

    raw = gzip.compress(file_bytes(phantom(), tmp_path / "in.mha"))
    assert refused(Volume("images"), raw, UnreadableVolume).status == 415


# --- detached headers: never open a path the client chose --------------------------------------


@pytest.fixture
def secret(tmp_path):
    path = tmp_path / "secret.raw"
    path.write_bytes(b"secret-data-0123")  # exactly 4 x 4 unsigned chars
    return path


@pytest.fixture
def no_read(monkeypatch):
    calls = []
    monkeypatch.setattr(sitk, "ReadImage", lambda *args, **kwargs: calls.append(args))
    yield calls
    assert calls == [], "the image reader ran on a detached header"


MHA_HEADER = "ObjectType = Image\nNDims = 2\nDimSize = 4 4\nElementType = MET_UCHAR\n"


def test_detached_mha_header_would_leak_the_file(tmp_path, secret):
    """The control for the tests below: SimpleITK itself happily reads the file a header names."""
    header = tmp_path / "header.mha"
    header.write_text(MHA_HEADER + f"ElementDataFile = {secret}\n")
    assert bytes(sitk.GetArrayFromImage(sitk.ReadImage(str(header)))) == secret.read_bytes()


@pytest.mark.parametrize("encode", [bytes, base64.encodebytes], ids=["raw", "base64"])
@pytest.mark.parametrize(
    "header",
    [
        MHA_HEADER + "ElementDataFile = {secret}\n",
        MHA_HEADER + "ElementDataFile={secret}\n",
        MHA_HEADER + "ElementDataFile : {secret}\n",
        MHA_HEADER + "  ElementDataFile = {secret}\n",
        MHA_HEADER + "ElementDataFile = /etc/passwd\n",
        MHA_HEADER + "ElementDataFile = LIST\n{secret}\n",
        # a Comment quoting the safe line must not vouch for the real one below it
        "ObjectType = Image\nComment = ElementDataFile = LOCAL\n" + MHA_HEADER[19:] + "ElementDataFile = {secret}\n",
        "Comment = x ElementDataFile = LOCAL\n" + MHA_HEADER + "ElementDataFile = {secret}\n",
        MHA_HEADER + "ElementDataFile = LOCAL/../{secret.name}\n" + "x" * 16,
    ],
    ids=["plain", "no-space", "colon", "indented", "etc-passwd", "list", "comment", "comment-first", "local-prefix"],
)
def test_detached_mha_is_refused_without_reading(secret, no_read, header, encode):
    raw = encode(header.format(secret=secret).encode())
    error = refused(Volume("images"), raw, UnreadableVolume)
    assert error.status == 415
    assert "ElementDataFile = LOCAL" in error.message
    assert str(secret) not in error.message and "/etc/passwd" not in error.message


@pytest.mark.parametrize("line_end", ["\n", "\r\n"], ids=["lf", "crlf"])
@pytest.mark.parametrize("separator", [" = ", ": ", "="])
def test_hand_written_local_mha_is_accepted(line_end, separator):
    header = (MHA_HEADER + f"ElementDataFile{separator}LOCAL\n").replace("\n", line_end)
    image = decode(Volume("images"), header.encode() + bytes(range(16)))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image).ravel(), np.arange(16))


@pytest.mark.parametrize("encode", [bytes, base64.encodebytes], ids=["raw", "base64"])
@pytest.mark.parametrize("key", ["data file: ", "datafile: ", "Data File: "])
def test_detached_nrrd_is_refused_without_reading(secret, no_read, key, encode):
    header = f"NRRD0004\ntype: unsigned char\ndimension: 2\nsizes: 4 4\nencoding: raw\n{key}{secret}\n"
    error = refused(Volume("images"), encode(header.encode()), UnreadableVolume)
    assert error.status == 415
    assert "detached NRRD" in error.message


# --- sliders, checkboxes, radio buttons ------------------------------------------------------------

SLIDER = Slider("threshold", -10, 1000)


@pytest.mark.parametrize(("text", "value"), [(b"0.5", 0.5), (b"-10", -10.0), (b"1000", 1000.0), (b" 1e2\n", 100.0)])
def test_slider_value_in_range_is_a_float(text, value):
    result = decode(SLIDER, text)
    assert type(result) is float
    assert result == value


@pytest.mark.parametrize("text", [b"abc", b"", b"1,5", b"\xff\xfe"])
def test_slider_not_a_number_is_400_naming_the_field(text):
    error = refused(SLIDER, text)
    assert type(error) is RequestError
    assert error.status == 400
    assert "field 'threshold' (slider)" in error.message
    assert "between -10 and 1000" in error.message or "UTF-8" in error.message


@pytest.mark.parametrize("text", [b"1000.001", b"-11", b"nan", b"inf", b"-inf"])
def test_slider_out_of_range_is_400(text):
    error = refused(SLIDER, text)
    assert error.status == 400
    assert "field 'threshold' (slider)" in error.message
    assert "out of range; expected a number between -10 and 1000" in error.message


@pytest.mark.parametrize(
    ("text", "value"),
    [(b"True", True), (b"False", False), (b"true", True), (b"false", False), (b"1", True), (b"0", False)],
)
def test_checkbox(text, value):
    assert decode(Checkbox("smooth", "Smooth"), text) is value


def test_checkbox_other_text_is_400():
    error = refused(Checkbox("smooth"), b"maybe")
    assert error.status == 400
    assert "field 'smooth' (checkbox)" in error.message
    assert "True or False" in error.message


def test_radiobutton_option():
    element = RadioButton("organ", "Organ", ["liver", "left kidney", "spleen"])
    assert decode(element, b"left kidney") == "left kidney"
    assert decode(element, b"spleen\r\n") == "spleen"


def test_radiobutton_unlisted_value_is_400_listing_the_options():
    element = RadioButton("organ", "Organ", ["liver", "left kidney", "spleen"])
    error = refused(element, b"heart")
    assert error.status == 400
    assert "field 'organ' (radiobutton)" in error.message
    assert "'heart' is not one of the options" in error.message
    assert "liver, left kidney, spleen" in error.message
    # matching is exact: the options are what the client displayed
    assert refused(element, b"Liver").status == 400


# --- fiducials -------------------------------------------------------------------------------------


def test_fiducials_text_to_points():
    points = decode(Fiducials("landmarks"), b"1.5,-2,3e1;4,5.25,-6;")
    assert points.dtype == float
    np.testing.assert_array_equal(points, [[1.5, -2.0, 30.0], [4.0, 5.25, -6.0]])


def test_no_fiducials_is_an_empty_n_by_3_array():
    points = decode(Fiducials("landmarks"), b"")
    assert points.shape == (0, 3)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"1,2,3;4,5", "point 2 has 2 coordinates"),
        (b"1,2,3,4", "point 1 has 4 coordinates"),
        (b"1,2,x", "point 1 ('1,2,x') is not numeric"),
        (b"1 2 3", "point 1 ('1 2 3') is not numeric"),
        (b"1,2,nan", "point 1 has a non-finite coordinate"),
    ],
)
def test_malformed_fiducials_are_400_naming_the_field(text, expected):
    error = refused(Fiducials("landmarks"), text)
    assert error.status == 400
    assert "field 'landmarks' (fiducials)" in error.message
    assert expected in error.message
    assert "x,y,z;x,y,z" in error.message


# --- transforms ------------------------------------------------------------------------------------


def _transform_field(kind: str, data: bytes) -> bytes:
    return kind.encode() + b"\n" + base64.encodebytes(data)


def written_transform(transform, path) -> bytes:
    sitk.WriteTransform(transform, str(path))
    return path.read_bytes()


def test_transform_mat_is_an_affine_transform(tmp_path):
    expected = make_affine()
    result = decode(Transform("initial"), _transform_field("mat", written_transform(expected, tmp_path / "t.mat")))
    assert isinstance(result, sitk.AffineTransform)
    assert result.GetParameters() == expected.GetParameters()
    assert result.GetFixedParameters() == expected.GetFixedParameters()
    np.testing.assert_allclose(result.TransformPoint((1, 2, 3)), expected.TransformPoint((1, 2, 3)))


def test_transform_h5_is_a_bspline_transform(tmp_path):
    expected = make_bspline()
    result = decode(Transform("initial"), _transform_field("h5", written_transform(expected, tmp_path / "t.h5")))
    assert isinstance(result, sitk.BSplineTransform)
    np.testing.assert_array_equal(result.GetParameters(), expected.GetParameters())
    assert result.GetFixedParameters() == expected.GetFixedParameters()


def _displacement_field() -> sitk.Image:
    rng = np.random.default_rng(7)
    field = sitk.GetImageFromArray(rng.normal(size=(4, 5, 6, 3)), isVector=True)
    field.SetSpacing((2.0, 1.5, 1.0))
    field.SetOrigin((-4.0, 3.5, 10.0))
    return field


def test_transform_nii_gz_is_a_displacement_field_transform(tmp_path):
    field = _displacement_field()
    raw = file_bytes(field, tmp_path / "field.nii.gz", compress=True)
    result = decode(Transform("deformation"), _transform_field("nii.gz", raw))
    assert isinstance(result, sitk.DisplacementFieldTransform)
    got = result.GetDisplacementField()
    assert got.GetSize() == field.GetSize()
    assert got.GetNumberOfComponentsPerPixel() == 3
    np.testing.assert_allclose(got.GetSpacing(), field.GetSpacing())
    np.testing.assert_allclose(got.GetOrigin(), field.GetOrigin())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(got), sitk.GetArrayFromImage(field))


def test_transform_nii_gz_with_a_scalar_image_is_400(tmp_path):
    raw = file_bytes(phantom(), tmp_path / "scalar.nii.gz", compress=True)
    error = refused(Transform("deformation"), _transform_field("nii.gz", raw))
    assert error.status == 400
    assert "field 'deformation' (transform)" in error.message
    assert "3 components per voxel, got 1" in error.message


@pytest.mark.parametrize("raw", [b"tfm\nAAAA", b"no newline at all", b"\nAAAA"], ids=["unknown", "no-kind", "empty"])
def test_unknown_transform_kind_is_400(raw):
    error = refused(Transform("initial"), raw)
    assert type(error) is RequestError
    assert error.status == 400
    assert "field 'initial' (transform)" in error.message
    assert "nii.gz, h5, mat" in error.message


def test_transform_file_that_is_not_a_transform_is_400():
    error = refused(Transform("initial"), _transform_field("h5", b"this is not HDF5 at all"))
    assert error.status == 400
    assert "the h5 data is not an ITK B-spline transform file" in error.message


def test_transform_with_truncated_base64_is_refused(tmp_path):
    text = _transform_field("mat", written_transform(make_affine(), tmp_path / "t.mat"))
    error = refused(Transform("initial"), text[:-7])
    assert error.status == 415
    assert "truncated or corrupt" in error.message


# --- several fields at once ---------------------------------------------------------------------

INTERFACE = (Volume("images"), Slider("threshold", 0, 1000), RadioButton("mode", "Mode", ["fast", "exact"]))


def test_decode_fields_gives_every_declared_field_and_ignores_extras(tmp_path):
    image = phantom()
    fields = {
        "images": base64.encodebytes(file_bytes(image, tmp_path / "in.mha")),
        "threshold": b"250",
        "mode": b"exact",
        "module_version": b"0.4",  # TOMAAT-Slicer adds this
    }
    with no_scratch_left():
        data = decode_fields(INTERFACE, fields)
    assert set(data) == {"images", "threshold", "mode"}
    assert_same_image(data["images"], image)
    assert data["threshold"] == 250.0
    assert data["mode"] == "exact"


def test_missing_field_is_400_naming_it():
    with no_scratch_left(), pytest.raises(RequestError) as caught:
        decode_fields(INTERFACE, {"threshold": b"1", "module_version": b"0.4"})
    error = caught.value
    assert error.status == 400
    assert "missing field(s) 'images', 'mode'" in error.message
    assert "'threshold' (slider)" in error.message  # says what the service expects


def test_cheap_fields_are_checked_before_the_volume():
    # the volume is unreadable too, but the bad slider is reported first (and without decoding the volume)
    with no_scratch_left(), pytest.raises(RequestError) as caught:
        decode_fields(INTERFACE, {"images": b"garbage", "threshold": b"2000", "mode": b"fast"})
    assert caught.value.status == 400
    assert "'threshold'" in caught.value.message


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_a_nifti_with_a_rescale_slope_decodes_to_floats_as_itk_gives_them(tmp_path, suffix):
    """scl_slope/scl_inter make ITK return float32: the decoded size checked against the header must follow."""
    import gzip
    import struct

    image = sitk.GetImageFromArray(np.arange(60, dtype=np.int16).reshape(3, 4, 5))
    image.SetOrigin((-4.0, 7.5, 2.0))
    image.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, 1))
    raw = bytearray(image_bytes(image, ".nii"))
    struct.pack_into("<ff", raw, 112, 2.0, 1.0)
    data = gzip.compress(bytes(raw)) if suffix == ".nii.gz" else bytes(raw)
    back = decode(Volume("images"), data)
    assert back.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back).ravel(), np.arange(60) * 2.0 + 1.0)
    assert_same_grid(back, image)


def test_a_complex_nifti_still_decodes(tmp_path):
    image = sitk.GetImageFromArray((np.arange(60) + 1j).astype(np.complex64).reshape(3, 4, 5))
    image.SetOrigin((1.0, -2.0, 3.5))
    back = decode(Volume("images"), image_bytes(image, ".nii"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    assert_same_grid(back, image)
