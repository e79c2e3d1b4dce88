"""App values -> v1 output items (as the server renders them) and back (decode_item), and the app called without a server."""

import base64
import dataclasses
import json
import math

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import make_affine, make_bspline
from scratch_checks import no_scratch_left, private_tempdir  # noqa: F401 (an autouse fixture)

from tomaat.protocol.codecs import output_codec
from tomaat.protocol.elements import (
    Fiducials,
    LabelVolume,
    OutputElement,
    PlainText,
    TransformBSpline,
    TransformGrid,
    TransformLinear,
    VTKMesh,
)
from tomaat.protocol.outputs import decode_item, output_item
from tomaat.protocol.volumes import sniff_format
from tomaat.server.app import TomaatApp
from tomaat.server.rendering import json_ready

# --- scratch folders: none may be left behind -----------------------------------------------------


def encode_item(element, value, reference=None) -> dict:
    """The item as the server writes it in a JSON answer: its raw content, rendered."""
    return json_ready([output_item(element, output_codec(element).write(element, value, reference))])[0]


def encode(element, value, reference=None) -> dict:
    with no_scratch_left():
        item = encode_item(element, value, reference)
    json.dumps(item)  # every item must be JSON as it is
    return item


def decode(item):
    with no_scratch_left():
        return decode_item(item)


def encode_refused(element, value, reference=None, match=None) -> TypeError:
    with no_scratch_left(), pytest.raises(TypeError, match=match) as caught:
        encode_item(element, value, reference)
    return caught.value


# --- fixtures --------------------------------------------------------------------------------------


def rotation(degrees: float) -> tuple:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return (c, 0.0, s, 0.0, 1.0, 0.0, -s, 0.0, c)  # about y: every axis but one is mixed


def reference_image() -> sitk.Image:
    image = sitk.GetImageFromArray(np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6))
    image.SetSpacing((0.8, 1.25, 2.5))
    image.SetOrigin((100.5, -30.25, 12.0))
    image.SetDirection(rotation(25))
    return image


def label_array() -> np.ndarray:
    labels = np.zeros((4, 5, 6), dtype=np.uint8)
    labels[1:3, 1:4, 2:5] = 1
    labels[0, 0, 0] = 2
    return labels


def assert_same_geometry(actual: sitk.Image, expected: sitk.Image, atol: float = 0.0):
    assert actual.GetSize() == expected.GetSize()
    np.testing.assert_allclose(actual.GetSpacing(), expected.GetSpacing(), rtol=0, atol=atol)
    np.testing.assert_allclose(actual.GetOrigin(), expected.GetOrigin(), rtol=0, atol=atol)
    np.testing.assert_allclose(actual.GetDirection(), expected.GetDirection(), rtol=0, atol=atol)


# --- LabelVolume -----------------------------------------------------------------------------------


def test_label_volume_from_an_image_keeps_its_geometry_exactly():
    labels = sitk.GetImageFromArray(label_array())
    labels.CopyInformation(reference_image())
    item = encode(LabelVolume("labels", "Segmentation"), labels)
    assert set(item) == {"type", "content", "label"}
    assert item["type"] == "LabelVolume"
    assert item["label"] == "Segmentation"
    content = base64.b64decode(item["content"], validate=True)
    assert sniff_format(content) == "mha"
    assert b"CompressedData = True" in content[:400]
    assert b"ElementDataFile = LOCAL" in content[:1000]

    result = decode(item)
    assert result.GetPixelID() == sitk.sitkUInt8
    assert result.GetSize() == labels.GetSize()
    assert result.GetSpacing() == labels.GetSpacing()
    assert result.GetOrigin() == labels.GetOrigin()
    assert result.GetDirection() == labels.GetDirection()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result), label_array())


def test_label_volume_image_keeps_its_own_geometry_not_the_reference():
    labels = sitk.GetImageFromArray(label_array())
    labels.SetSpacing((1.0, 2.0, 3.0))  # e.g. a resampled result: the app's geometry wins
    result = decode(encode(LabelVolume("labels"), labels, reference_image()))
    assert result.GetSpacing() == (1.0, 2.0, 3.0)
    assert result.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def test_label_volume_from_an_array_takes_the_reference_geometry():
    reference = reference_image()
    result = decode(encode(LabelVolume("labels"), label_array(), reference))
    assert_same_geometry(result, reference)
    assert result.GetDirection() == reference.GetDirection()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result), label_array())


def test_label_volume_from_a_boolean_array_is_uint8():
    mask = label_array() > 0
    result = decode(encode(LabelVolume("labels"), mask, reference_image()))
    assert result.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result), mask.astype(np.uint8))


def test_label_volume_array_with_another_shape_is_a_type_error():
    error = encode_refused(LabelVolume("labels"), np.zeros((6, 5, 4), np.uint8), reference_image())
    message = str(error)
    assert "shape (6, 5, 4)" in message
    assert "(shape (4, 5, 6))" in message


@pytest.mark.parametrize("value", [None, "labels", [[0, 1], [1, 0]]], ids=["none", "str", "list"])
def test_label_volume_of_another_kind_is_a_type_error(value):
    encode_refused(LabelVolume("labels"), value, reference_image(), match="SimpleITK image or a NumPy array")


# --- VTKMesh ---------------------------------------------------------------------------------------

VTK_TEXT = """# vtk DataFile Version 3.0
one triangle
ASCII
DATASET POLYDATA
POINTS 3 float
0 0 0 1 0 0 0 1 0
POLYGONS 1 4
3 0 1 2
"""


@pytest.mark.parametrize("value", [VTK_TEXT, VTK_TEXT.encode()], ids=["text", "bytes"])
def test_vtk_mesh(value):
    item = encode(VTKMesh("surface", "Surface"), value)
    assert item["type"] == "VTKMesh" and item["label"] == "Surface"
    assert base64.b64decode(item["content"], validate=True) == VTK_TEXT.encode()
    assert decode(item) == VTK_TEXT.encode()


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("solid triangle\nfacet normal 0 0 1\n", "legacy VTK file"),
        (b"\x00\x01binary", "legacy VTK file"),
        (42, "legacy VTK text or bytes, got int"),
    ],
)
def test_vtk_mesh_of_another_kind_is_a_type_error(value, match):
    encode_refused(VTKMesh("surface"), value, match=match)


# --- PlainText -------------------------------------------------------------------------------------


def test_plain_text():
    item = encode(PlainText("summary", "Summary"), "42 voxels: 0.336 ml")
    assert item == {"type": "PlainText", "content": "42 voxels: 0.336 ml", "label": "Summary"}
    assert decode(item) == "42 voxels: 0.336 ml"


def test_plain_text_from_bytes_and_numbers():
    assert encode(PlainText("summary"), "volume: 3 µl".encode())["content"] == "volume: 3 µl"
    assert encode(PlainText("summary"), 12.5)["content"] == "12.5"
    assert encode(PlainText("summary"), "x")["label"] == ""


# --- Fiducials -------------------------------------------------------------------------------------


def test_fiducials_round_trip():
    points = np.array([[1.5, -2.0, 30.0], [0.1, 1e-7, -123456.789]])
    item = encode(Fiducials("landmarks", "Landmarks"), points)
    assert item["type"] == "Fiducials"
    assert item["content"] == "1.5,-2.0,30.0;0.1,1e-07,-123456.789"
    np.testing.assert_array_equal(decode(item), points)  # repr() of floats: no precision lost


def test_fiducials_from_a_list_and_from_nothing():
    assert encode(Fiducials("p"), [[1, 2, 3]])["content"] == "1.0,2.0,3.0"
    empty = encode(Fiducials("p"), np.zeros((0, 3)))
    assert empty["content"] == ""
    assert decode(empty).shape == (0, 3)


@pytest.mark.parametrize("value", [np.zeros((2, 2)), np.zeros(3), np.zeros((2, 3, 1))], ids=["2d", "flat", "3d"])
def test_fiducials_of_another_shape_are_a_type_error(value):
    encode_refused(Fiducials("p"), value, match=r"\(N, 3\) array")


# --- transforms ------------------------------------------------------------------------------------


def displacement_field() -> sitk.Image:
    rng = np.random.default_rng(3)
    field = sitk.GetImageFromArray(rng.normal(size=(4, 5, 6, 3)), isVector=True)
    field.SetSpacing((2.0, 1.5, 1.0))
    field.SetOrigin((-4.0, 3.5, 10.0))
    field.SetDirection(rotation(90))
    return field


def _check_grid_item(item, field: sitk.Image):
    assert item["type"] == "TransformGrid"
    content = base64.b64decode(item["content"], validate=True)
    assert content[:2] == b"\x1f\x8b"
    assert sniff_format(content) == "nii.gz"
    result = decode(item)
    assert result.GetNumberOfComponentsPerPixel() == 3
    assert_same_geometry(result, field, atol=1e-6)  # NIfTI: float32 orientation
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result), sitk.GetArrayFromImage(field))


def test_transform_grid_from_a_vector_image():
    field = displacement_field()
    _check_grid_item(encode(TransformGrid("deformation"), field), field)


def test_transform_grid_from_a_displacement_field_transform():
    field = displacement_field()
    transform = sitk.DisplacementFieldTransform(sitk.Image(field))  # the constructor takes the image's buffer
    _check_grid_item(encode(TransformGrid("deformation"), transform), field)


@pytest.mark.parametrize(
    "value", [reference_image(), sitk.AffineTransform(3), "field"], ids=["scalar", "affine", "str"]
)
def test_transform_grid_of_another_kind_is_a_type_error(value):
    encode_refused(TransformGrid("deformation"), value, match="DisplacementFieldTransform or a vector image")


def test_transform_bspline_round_trip():
    expected = make_bspline()
    item = encode(TransformBSpline("deformation"), expected)
    assert item["type"] == "TransformBSpline"
    assert base64.b64decode(item["content"])[:8] == b"\x89HDF\r\n\x1a\n"
    result = decode(item)
    assert isinstance(result, sitk.BSplineTransform)
    np.testing.assert_array_equal(result.GetParameters(), expected.GetParameters())
    assert result.GetFixedParameters() == expected.GetFixedParameters()


def test_transform_linear_round_trip():
    expected = make_affine()
    item = encode(TransformLinear("registration", "Rigid"), expected)
    assert item["type"] == "TransformLinear" and item["label"] == "Rigid"
    result = decode(item)
    assert isinstance(result, sitk.AffineTransform)
    assert result.GetParameters() == expected.GetParameters()
    assert result.GetFixedParameters() == expected.GetFixedParameters()
    np.testing.assert_allclose(result.TransformPoint((1.0, 2.0, 3.0)), expected.TransformPoint((1.0, 2.0, 3.0)))


def test_transform_linear_from_an_euler_transform():
    expected = sitk.Euler3DTransform((1.0, 2.0, 3.0), 0.1, -0.2, 0.3, (4.0, 5.0, 6.0))
    result = decode(encode(TransformLinear("registration"), expected))
    np.testing.assert_allclose(result.GetParameters(), expected.GetParameters())
    np.testing.assert_allclose(result.TransformPoint((7.0, 8.0, 9.0)), expected.TransformPoint((7.0, 8.0, 9.0)))


@pytest.mark.parametrize("element", [TransformLinear("t"), TransformBSpline("t")], ids=["linear", "bspline"])
def test_transform_file_of_another_kind_is_a_type_error(element):
    encode_refused(element, np.eye(4), match="needs a SimpleITK transform, got ndarray")


def test_an_output_type_that_cannot_write_its_items_fails_by_name():
    @dataclasses.dataclass(frozen=True)
    class Hologram(OutputElement):  # a type declared without its write_item
        output_type = "Hologram"

    with pytest.raises(NotImplementedError, match="Hologram"):  # a RuntimeError: the server's 500 names the field
        encode_item(Hologram("h"), 1)


# --- the app without a server ----------------------------------------------------------------------


def test_steps_may_change_data_in_place_and_return_none():
    app = TomaatApp(inference_fun=lambda data: data.update(field=data["field"] * 2))
    assert app({"field": 21}) == {"field": 42}  # the missing steps pass data through


def test_a_step_may_return_a_new_dict():
    app = TomaatApp(postprocess_fun=lambda data: {"only": "this"})
    assert app({"field": 1}) == {"only": "this"}


class Counting(TomaatApp):
    name = "Counting"
    modality = "MRI"
    anatomy = "prostate"
    task = "segmentation"
    description = "adds numbers"
    version = "2.1"

    def preprocess(self, data):
        data["field"] = 0
        return data

    def inference(self, data):
        data["field"] += 10
        return data

    def postprocess(self, data):
        data["field"] += 1
        return data


def test_subclass_style_app_called_directly():
    assert Counting()({}) == {"field": 11}
    assert Counting().metadata() == {
        "name": "Counting",
        "modality": "MRI",
        "anatomy": "prostate",
        "task": "segmentation",
        "description": "adds numbers",
        "version": "2.1",
    }


def test_functions_given_to_a_subclass_replace_its_methods():
    app = Counting(inference_fun=lambda data: {"field": data["field"] + 100})
    assert app({}) == {"field": 101}
