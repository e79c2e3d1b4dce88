"""The two data contracts: upstream TOMAAT's for step functions, ours for subclasses, and how each is chosen."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
import pytest_twisted
import SimpleITK as sitk
from clients import slicer_post
from conftest import assert_same_grid, make_affine, make_phantom, v1_base64, written_bytes

from tomaat import (
    Checkbox,
    LabelVolume,
    PlainText,
    RadioButton,
    Slider,
    TomaatApp,
    TomaatService,
    Volume,
)
from tomaat.protocol import b64
from tomaat.protocol.outputs import decode_item
from tomaat.server import TomaatServiceDelayedResponse
from tomaat.server.app import RICH, UPSTREAM

# ---- in the shape of upstream's tests/app_test.py ------------------------------------------------


def pre_processing_mock_function(data):
    data["field"] = 0
    return data


def post_processing_mock_function(data):
    data["field"] += 1
    return data


def inference_mock_function(data):
    data["field"] += 10
    return data


mock_app = TomaatApp(
    preprocess_fun=pre_processing_mock_function,
    inference_fun=inference_mock_function,
    postprocess_fun=post_processing_mock_function,
)


def test_tomaatapp_answer():
    logging.info("TESTING TOMAAT APP INIT FUNCTION")
    assert mock_app.preprocess_fun == pre_processing_mock_function
    assert mock_app.inference_fun == inference_mock_function
    assert mock_app.postprocess_fun == post_processing_mock_function


def test_tomaatapp_basic_functionality_answer():
    logging.info("TESTING TOMAAT APP BASIC FUNCTIONALITY")
    result = mock_app({})
    assert isinstance(result, dict)
    assert list(result.keys()) == ["field"]
    assert result["field"] == 11
    assert mock_app.run_inference({"field": 0}) == {"field": 10}  # each step alone, as the server runs them


def test_the_gpu_lock_upstream_passed_is_held_around_inference_only():
    events = []

    class Lock:
        def acquire(self):
            events.append("acquire")

        def release(self):
            events.append("release")

    def step(name):
        return lambda data: events.append(name)

    TomaatApp(step("pre"), step("inference"), step("post"))({}, gpu_lock=Lock())
    assert events == ["pre", "acquire", "inference", "release", "post"]


# ---- choosing the contract ------------------------------------------------------------------------


class Subclassed(TomaatApp):
    input_interface = [Volume("images")]
    output_interface = [PlainText("size", "Size")]

    def __init__(self, unit):  # forgets super().__init__(): it still works
        self.unit = unit

    def inference(self, data):
        data["size"] = f"{data['images'].GetSize()} {self.unit}"
        return data


def test_functions_get_upstreams_contract_subclasses_ours_and_either_can_say_which():
    assert TomaatApp(pre_processing_mock_function).data_contract == UPSTREAM
    assert TomaatApp(pre_processing_mock_function, contract=RICH).data_contract == RICH
    assert Subclassed("voxels").data_contract == RICH
    assert Subclassed("voxels").preprocess_fun is None

    class Upstreamish(Subclassed):
        contract = UPSTREAM

    assert Upstreamish("voxels").data_contract == UPSTREAM
    with pytest.raises(ValueError, match="unknown contract 'legacy'; expected 'rich' or 'upstream'"):
        TomaatApp(contract="legacy")
    with pytest.raises(TypeError, match="inference_fun must be callable"):
        TomaatApp(inference_fun="model.pt")


@pytest_twisted.ensureDeferred
async def test_a_subclass_that_forgets_super_init_serves(serve, phantom):
    service = await serve(Subclassed("voxels"))
    response = await slicer_post(service.url + "/predict", {"images": v1_base64(phantom)})
    assert response.status_code == 200, response.text
    assert response.json()[0]["content"] == "(14, 12, 10) voxels"


# ---- upstream's data, input by input --------------------------------------------------------------

INPUTS = [
    {"type": "volume", "destination": "images"},
    {"type": "slider", "destination": "level", "minimum": 0, "maximum": 10},
    {"type": "checkbox", "destination": "smooth", "text": "Smooth"},
    {"type": "radiobutton", "destination": "organ", "text": "Organ", "options": ["liver", "spleen"]},
    {"type": "fiducials", "destination": "seeds"},
    {"type": "transform", "destination": "initial"},
]


def describe(data):
    """What an upstream-style app sees, as JSON text; files are read as upstream's apps read them."""
    seen = {key: [type(v).__name__ for v in value] for key, value in data.items()}
    image = sitk.ReadImage(data["images"][0])
    transform = sitk.ReadTransform(data["initial"][0])
    seen.update(
        level=data["level"],
        smooth=data["smooth"],
        organ=data["organ"],
        seeds=data["seeds"][0].tolist(),
        image_size=list(image.GetSize()),
        image_file=os.path.basename(data["images"][0]),
        in_tempdir=os.path.dirname(os.path.dirname(data["images"][0])),
        transform=transform.GetName(),
    )
    return {"summary": [json.dumps(seen)], "mask": [sitk.GetArrayFromImage(image) > 100]}


def upstream_service(**options):
    app = TomaatApp(lambda data: data, describe, lambda data: data)
    outputs = [{"type": "PlainText", "field": "summary"}, {"type": "LabelVolume", "field": "mask"}]
    return TomaatService({"tls": False, "port": 0, "interface": "127.0.0.1", **options}, app, INPUTS, outputs)


def upstream_fields(phantom):
    affine = written_bytes(lambda path: sitk.WriteTransform(make_affine(), path), ".mat")
    return {
        "images": v1_base64(phantom),
        "level": "2.5",
        "smooth": "1",
        "organ": "spleen",
        "seeds": "1,2,3;4,5,6",
        "initial": "mat\n" + b64.encode(affine),
    }


@pytest_twisted.ensureDeferred
async def test_upstream_style_steps_get_lists_of_paths_numbers_and_text_as_sent(leftovers, private_tmp):
    service = upstream_service()
    await service.listen()
    try:
        phantom = make_phantom()
        response = await slicer_post(service.url + "/predict", upstream_fields(phantom))
        assert response.status_code == 200, response.text
        summary, mask = response.json()
    finally:
        await service.stop()
    seen = json.loads(summary["content"])
    assert seen["images"] == ["str"] and seen["initial"] == ["str"]
    assert seen["level"] == [2.5] and seen["smooth"] == ["1"] and seen["organ"] == ["spleen"]
    assert seen["seeds"] == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    assert seen["image_size"] == [14, 12, 10] and seen["image_file"].endswith(".mha")
    assert seen["in_tempdir"] == private_tmp  # in the request's scratch folder, inside the temp folder
    assert seen["transform"] == "AffineTransform"
    label = decode_item(mask)
    assert_same_grid(label, phantom)  # a NumPy array in [0] takes the input's grid, as outputs do here
    np.testing.assert_array_equal(sitk.GetArrayFromImage(label), sitk.GetArrayFromImage(phantom) > 100)
    assert leftovers() == []  # the files the app was given went with the request


@pytest_twisted.ensureDeferred
async def test_an_upstream_style_output_that_is_not_a_list_is_a_clear_500(serve, phantom, caplog):
    app = TomaatApp(lambda data: {"text": "not in a list"})
    service = await serve(app, input_interface=[Volume("images")], output_interface=[PlainText("text")])
    with caplog.at_level(logging.ERROR, logger="tomaat.server"):
        response = await slicer_post(service.url + "/predict", {"images": v1_base64(phantom)})
    assert response.status_code == 500
    assert response.json()[0]["content"] == "the service produced an invalid 'text' output (PlainText)"
    assert "one-item list, data['text'] = [value], got str" in caplog.text


@pytest_twisted.ensureDeferred
async def test_step_functions_can_ask_for_our_contract(serve, phantom):
    def inference(data):
        data["labels"] = sitk.OtsuThreshold(data["images"], 0, 1)
        data["summary"] = f"{data['smooth']!r} {data['level']!r}"
        return data

    app = TomaatApp(inference_fun=inference, contract=RICH)
    inputs = [Volume("images"), Checkbox("smooth"), Slider("level", 0, 10), RadioButton("organ", "", ["a"])]
    service = await serve(app, input_interface=inputs, output_interface=[LabelVolume("labels"), PlainText("summary")])
    fields = {"images": v1_base64(phantom), "smooth": "False", "level": "3", "organ": "a"}
    response = await slicer_post(service.url + "/predict", fields)
    assert response.status_code == 200, response.text
    assert_same_grid(decode_item(response.json()[0]), phantom)
    assert response.json()[1]["content"] == "False 3.0"


@pytest_twisted.ensureDeferred
async def test_upstreams_delayed_service_answers_with_a_delayed_response(phantom):
    app = TomaatApp(lambda data: {"text": ["done"]})
    service = TomaatServiceDelayedResponse(
        {"tls": False, "port": 0, "interface": "127.0.0.1"},
        app,
        [{"type": "volume", "destination": "images"}],
        [{"type": "PlainText", "field": "text"}],
    )
    await service.listen()
    try:
        response = await slicer_post(service.url + "/predict", {"images": v1_base64(phantom)})
    finally:
        await service.stop()
    [item] = response.json()
    assert item["type"] == "DelayedResponse" and item["request_id"]


# ---- names upstream's apps import ----------------------------------------------------------------


def test_upstream_helpers_fail_at_import_naming_their_replacement():
    with pytest.raises(ImportError, match=r"tomaat.extras.FromSITKToNumpy .* use tomaat.processing.ToNumpy"):
        from tomaat.extras import FromSITKToNumpy  # noqa: F401
    with pytest.raises(ImportError, match=r"use tomaat.processing.Compose"):
        from tomaat.extras import TransformChain  # noqa: F401
    with pytest.raises(ImportError, match=r"Prediction is upstream TOMAAT.s .*TorchModel"):
        from tomaat.frameworks.pytorch import Prediction  # noqa: F401
    with pytest.raises(ImportError, match=r"Prediction is upstream TOMAAT.s .*KerasModel"):
        from tomaat.frameworks.tensorflow import Prediction  # noqa: F401, F811
    import tomaat.frameworks.pytorch as ours

    assert not hasattr(ours, "anything_else")  # other look-ups behave as usual
