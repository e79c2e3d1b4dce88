"""The answers on the wire, pinned: every output type as TOMAAT-Slicer gets it (v1 JSON), as a v2 client gets it
(JSON and binary multipart), and through delayed responses collected either way, byte for byte what the tree
answered when these digests were taken (before the request path was rebuilt, issue 23).

Two things differ from one answer to the next and are replaced before hashing: a binary answer's boundary (random
per answer), by a fixed token in the body and the Content-Type; and the B-spline transform's HDF5 file, whose
object headers carry the time it was written, by a digest of the transform it holds (its parameters and fixed
parameters as decoded), in place. Everything else is hashed as sent: status, Content-Type, Vary and the body.
"""

from __future__ import annotations

import base64
import hashlib

import numpy as np
import pytest_twisted
from clients import collect_when_done, slicer_post
from conftest import make_phantom
from test_server_all_types import EverythingApp, good_fields

from examples.threshold import ThresholdApp
from tomaat import TomaatApp
from tomaat.protocol import binary_answers
from tomaat.protocol.outputs import decode_item

BINARY = {"Accept": "multipart/mixed"}
PINNED = {  # taken on 3de7a84, the request path as it was
    "everything v1 slicer": "8e3026eab588c046dd6260f331eec282a54096821e3e8fa5c5eb1d97b87a8252",
    "everything v2 json": "aa06198b76d917a93b1e98ad26b2274a4bb019fc6948313929f92a50cf0f38ba",
    "everything v2 binary": "8af4ce5ae61e279146c0884914665197337d5f526c019dcfb5434129da298d2e",
    "everything delayed json": "aa06198b76d917a93b1e98ad26b2274a4bb019fc6948313929f92a50cf0f38ba",
    "everything delayed binary": "8af4ce5ae61e279146c0884914665197337d5f526c019dcfb5434129da298d2e",
    "threshold v1 slicer": "8a927b8522885993d46d5b48c07c7acd9e1f629b22bf2f3c9dbaaa1f387c3b48",
    "threshold v2 binary": "caf3b3f455d8a3eeae95708840cfc773ee8be9d1c288e97f133dc49c41aa5b88",
    "upstream v1 slicer": "ee822f969a96a00667ae4ea12d9c175b239b2401adac194b668633b49448b5af",
    "upstream v2 binary": "9b045eafdaf7b457735e4cc6f225e6152355ae7b75482fe1f32e55843490527a",
}


def _upstream_app():
    """An app written for upstream TOMAAT: step functions, one-item lists, its volume read from a file path."""
    import SimpleITK as sitk

    def preprocess(data):
        return {"image": sitk.ReadImage(data["images"][0]), "seeds": data["seeds"][0]}

    def inference(data):
        mask = (sitk.GetArrayFromImage(data["image"]) > 100).astype(np.uint8)
        return {**data, "mask": mask}

    def postprocess(data):
        labels = sitk.GetImageFromArray(data["mask"])
        labels.CopyInformation(data["image"])
        return {"labels": [labels], "seeds_out": [data["seeds"] * 2.0], "note": [f"{int(data['mask'].sum())}"]}

    inputs = [{"type": "volume", "destination": "images"}, {"type": "fiducials", "destination": "seeds"}]
    outputs = [{"type": "LabelVolume", "field": "labels"}, {"type": "Fiducials", "field": "seeds_out"}]
    outputs.append({"type": "PlainText", "field": "note"})
    return TomaatApp(preprocess, inference, postprocess), inputs, outputs


def _transform_digest(raw: bytes) -> bytes:
    transform = decode_item({"type": "TransformBSpline", "content": base64.b64encode(raw).decode("ascii")})
    numbers = np.concatenate([transform.GetParameters(), transform.GetFixedParameters()]).astype("<f8")
    return b"HDF5(" + hashlib.sha256(numbers.tobytes()).hexdigest().encode("ascii") + b")"


def digest(response) -> str:
    content_type = response.headers["Content-Type"]
    body = response.content
    if "boundary=" in content_type:
        for kind, _, raw in binary_answers.decode(body, content_type):
            if kind == "TransformBSpline":
                body = body.replace(raw, _transform_digest(raw))
        boundary = content_type.split("boundary=", 1)[1]
        body = body.replace(boundary.encode("ascii"), b"BOUNDARY")
        content_type = content_type.replace(boundary, "BOUNDARY")
    else:
        for item in response.json():
            if item["type"] == "TransformBSpline":
                text = item["content"].encode("ascii")
                body = body.replace(text, _transform_digest(base64.b64decode(text)))
    seen = f"{response.status_code}\n{content_type}\n{response.headers.get('Vary', '')}\n".encode() + body
    return hashlib.sha256(seen).hexdigest()


@pytest_twisted.ensureDeferred
async def test_every_answer_is_byte_for_byte_what_it_was(serve):
    phantom = make_phantom(pixel=np.int16)
    slicer = good_fields(phantom)
    plain = {key: value for key, value in slicer.items() if key != "module_version"}
    everything = await serve(EverythingApp())
    delayed = await serve(EverythingApp(), delayed_responses=True)
    threshold = await serve(ThresholdApp())
    app, inputs, outputs = _upstream_app()
    upstream = await serve(app, input_interface=inputs, output_interface=outputs)
    seen = {
        "everything v1 slicer": await slicer_post(everything.url + "/predict", slicer),
        "everything v2 json": await slicer_post(everything.url + "/predict", plain),
        "everything v2 binary": await slicer_post(everything.url + "/predict", plain, headers=BINARY),
    }
    for how, headers in (("json", None), ("binary", BINARY)):
        request_id = (await slicer_post(delayed.url + "/predict", plain)).json()[0]["request_id"]
        seen[f"everything delayed {how}"] = await collect_when_done(delayed.url, request_id, headers)
    threshold_fields = {"images": slicer["images"], "threshold": "250", "module_version": "1.0"}
    seen["threshold v1 slicer"] = await slicer_post(threshold.url + "/predict", threshold_fields)
    seen["threshold v2 binary"] = await slicer_post(threshold.url + "/predict", threshold_fields, headers=BINARY)
    upstream_fields = {"images": slicer["images"], "seeds": slicer["seeds"]}
    seen["upstream v1 slicer"] = await slicer_post(
        upstream.url + "/predict", {**upstream_fields, "module_version": "1"}
    )
    seen["upstream v2 binary"] = await slicer_post(upstream.url + "/predict", upstream_fields, headers=BINARY)
    for name, response in seen.items():
        assert response.status_code == 200, (name, response.text[:300])
    got = {name: digest(response) for name, response in seen.items()}
    assert got == PINNED
