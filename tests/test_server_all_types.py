"""Every input type in, every output type out, over HTTP; and each kind of bad input refused by name."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import pytest_twisted
import SimpleITK as sitk
from clients import slicer_post
from conftest import assert_same_grid, image_bytes, v1_base64, written_bytes

from tomaat import (
    Checkbox,
    Fiducials,
    LabelVolume,
    PlainText,
    RadioButton,
    Slider,
    TomaatApp,
    Transform,
    TransformBSpline,
    TransformGrid,
    TransformLinear,
    Volume,
    VTKMesh,
)
from tomaat.protocol.outputs import decode_item

MESH = "# vtk DataFile Version 3.0\nmesh\nASCII\nDATASET POLYDATA\nPOINTS 1 float\n0 0 0\n"


class EverythingApp(TomaatApp):
    input_interface = [
        Volume("images"),
        Slider("level", -1, 1),
        Checkbox("invert", "Invert the mask"),
        RadioButton("units", "Units", ["mm", "voxels"]),
        Fiducials("seeds"),
        Transform("moving"),
    ]
    output_interface = [
        LabelVolume("labels"),
        VTKMesh("mesh"),
        PlainText("report", "Report"),
        Fiducials("seeds_out"),
        TransformGrid("field"),
        TransformBSpline("bspline"),
        TransformLinear("affine"),
    ]

    def inference(self, data):
        image = data["images"]
        mask = sitk.GetArrayFromImage(image) > 100
        if data["invert"]:
            mask = ~mask
        data["labels"] = mask  # a NumPy array: the server puts it on the input's grid
        data["mesh"] = MESH
        kind = type(data["moving"]).__name__
        data["report"] = f"level={data['level']} invert={data['invert']} units={data['units']} moving={kind}"
        data["seeds_out"] = data["seeds"] + 1.0
        displacement = sitk.Image(image.GetSize(), sitk.sitkVectorFloat64, 3)
        displacement.CopyInformation(image)
        data["field"] = displacement
        data["bspline"] = sitk.BSplineTransformInitializer(image, [2, 2, 2])
        data["affine"] = data["moving"] if isinstance(data["moving"], sitk.AffineTransform) else sitk.AffineTransform(3)
        return data


def affine_field() -> sitk.AffineTransform:
    affine = sitk.AffineTransform(3)
    affine.SetMatrix((0, -1, 0, 1, 0, 0, 0, 0, 1))
    affine.SetTranslation((1.5, -2.0, 3.25))
    return affine


def transform_text(transform: sitk.Transform, suffix: str) -> str:
    """A transform field as v1 clients send it: the file kind, a newline, the base64 file."""
    data = written_bytes(lambda path: sitk.WriteTransform(transform, path), suffix)
    return suffix.lstrip(".") + "\n" + base64.encodebytes(data).decode("ascii")


def good_fields(phantom) -> dict:
    return {
        "images": v1_base64(phantom),
        "level": "0.25",
        "invert": "False",
        "units": "voxels",
        "seeds": "1.5,2,3;-4,5.25,6",
        "moving": transform_text(affine_field(), ".mat"),
        "module_version": "1",
    }


@pytest_twisted.ensureDeferred
async def test_every_input_and_output_type(serve, phantom, leftovers):
    service = await serve(EverythingApp())
    response = await slicer_post(service.url + "/predict", good_fields(phantom))
    assert response.status_code == 200, response.text
    items = {item["type"]: item for item in response.json()}
    assert list(items) == [
        "LabelVolume",
        "VTKMesh",
        "PlainText",
        "Fiducials",
        "TransformGrid",
        "TransformBSpline",
        "TransformLinear",
    ]

    labels = decode_item(items["LabelVolume"])
    assert_same_grid(labels, phantom)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(labels), sitk.GetArrayFromImage(phantom) > 100)
    assert decode_item(items["VTKMesh"]).decode() == MESH
    assert items["PlainText"]["content"] == "level=0.25 invert=False units=voxels moving=AffineTransform"
    assert items["PlainText"]["label"] == "Report"
    # module_version marks TOMAAT-Slicer: its RAS points reach the app in LPS (x, y negated), +1 there, then back
    np.testing.assert_allclose(decode_item(items["Fiducials"]), [[0.5, 1, 4], [-5, 4.25, 7]])
    field = decode_item(items["TransformGrid"])
    assert field.GetNumberOfComponentsPerPixel() == 3
    assert_same_grid(field, phantom, 1e-5)
    assert isinstance(decode_item(items["TransformBSpline"]), sitk.BSplineTransform)
    affine = decode_item(items["TransformLinear"])
    np.testing.assert_allclose(affine.GetParameters(), affine_field().GetParameters())
    assert leftovers() == []


@pytest.mark.parametrize("suffix, expected", [(".h5", "BSplineTransform"), ("nii.gz", "DisplacementFieldTransform")])
@pytest_twisted.ensureDeferred
async def test_transform_kinds(serve, phantom, suffix, expected):
    service = await serve(EverythingApp())
    fields = good_fields(phantom)
    if suffix == ".h5":
        fields["moving"] = transform_text(sitk.BSplineTransformInitializer(phantom, [2, 2, 2]), ".h5")
    else:
        displacement = sitk.Image(phantom.GetSize(), sitk.sitkVectorFloat32, 3)
        displacement.CopyInformation(phantom)
        fields["moving"] = "nii.gz\n" + base64.encodebytes(image_bytes(displacement, ".nii.gz")).decode()
    response = await slicer_post(service.url + "/predict", fields)
    assert response.status_code == 200, response.text
    assert response.json()[2]["content"].endswith(f"moving={expected}")


BAD = {
    "checkbox not a boolean": ("invert", "maybe", 400, "invert"),
    "option not listed": ("units", "inches", 400, "mm, voxels"),
    "malformed fiducials": ("seeds", "1,2;3,4,5", 400, "seeds"),
    "fiducials not numbers": ("seeds", "a,b,c", 400, "seeds"),
    "unknown transform kind": ("moving", "tfm\nAAAA", 400, "nii.gz, h5, mat"),
    "transform not a transform": ("moving", "mat\n" + base64.encodebytes(b"garbage" * 20).decode(), 400, "moving"),
    "slider above maximum": ("level", "1.5", 400, "between -1 and 1"),
    "slider not finite": ("level", "nan", 400, "level"),
}


@pytest.mark.parametrize("case", list(BAD))
@pytest_twisted.ensureDeferred
async def test_bad_values_are_refused_by_name(serve, phantom, leftovers, case):
    service = await serve(EverythingApp())
    field, value, status, mentioned = BAD[case]
    fields = {**good_fields(phantom), field: value}
    response = await slicer_post(service.url + "/predict", fields)
    assert response.status_code == status
    content = response.json()[0]["content"]
    assert f"'{field}'" in content and mentioned in content
    assert (await slicer_post(service.url + "/predict", good_fields(phantom))).status_code == 200
    assert leftovers() == []
