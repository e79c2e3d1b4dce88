"""Binary answers: `Accept: multipart/mixed` gets the output items as raw parts, decoded to the JSON answer's items;
errors and DelayedResponses stay JSON; without the header nothing changes; the decoder refuses malformed bodies."""

from __future__ import annotations

import base64
import json
import time

import numpy as np
import pytest
import pytest_twisted
import SimpleITK as sitk
from clients import call, collect_when_done, slicer_post
from conftest import assert_same_grid, make_phantom, v1_base64
from test_server_all_types import MESH, EverythingApp, affine_field, good_fields
from test_server_delayed import collect

from examples.threshold import ThresholdApp
from tomaat import PlainText, TomaatApp, Volume
from tomaat.protocol import binary_answers
from tomaat.protocol.binary_answers import DecodeLimits, decode, encode, json_items, wants_binary
from tomaat.protocol.outputs import decode_item
from tomaat.protocol.volumes import write_image

BINARY = {"Accept": "multipart/mixed"}
ALL_TYPES = ["LabelVolume", "VTKMesh", "PlainText", "Fiducials", "TransformGrid", "TransformBSpline", "TransformLinear"]


def parts_of(response):
    assert response.status_code == 200, response.text
    content_type = response.headers["Content-Type"]
    assert content_type.startswith("multipart/mixed; boundary=")
    assert int(response.headers["Content-Length"]) == len(response.content)
    return decode(response.content, content_type)


def part_headers(response) -> list[dict]:
    """Each part's headers as sent, read from the body independently of the decoder."""
    boundary = response.headers["Content-Type"].split("boundary=", 1)[1].encode()
    headers = []
    for chunk in response.content.split(b"--" + boundary)[1:-1]:
        head = chunk[2:].split(b"\r\n\r\n", 1)[0].decode("ascii")
        headers.append(dict(line.split(": ", 1) for line in head.split("\r\n")))
    return headers


# ---- over HTTP -----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_binary_answer_holds_what_the_json_answer_holds_for_every_type(serve, phantom):
    service = await serve(EverythingApp())
    as_json = await slicer_post(service.url + "/predict", good_fields(phantom))
    as_binary = await slicer_post(service.url + "/predict", good_fields(phantom), headers=BINARY)
    items = as_json.json()
    parts = parts_of(as_binary)
    assert [kind for kind, _, _ in parts] == ALL_TYPES == [item["type"] for item in items]
    assert [label for _, label, _ in parts] == [item["label"] for item in items]
    # every writer but HDF5's (which stamps each file) writes the same bytes twice: the contents are the JSON's
    binary_items = json_items(parts)
    for mine, theirs in zip(binary_items, items, strict=True):
        if mine["type"] != "TransformBSpline":
            assert mine == theirs
    # and each reads back to the same value
    labels = decode_item(binary_items[0])
    assert_same_grid(labels, phantom)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(labels), sitk.GetArrayFromImage(phantom) > 100)
    assert parts[1][2].decode() == MESH
    assert parts[2][2] == b"level=0.25 invert=False units=voxels moving=AffineTransform"
    np.testing.assert_allclose(decode_item(binary_items[3]), decode_item(items[3]))
    assert_same_grid(decode_item(binary_items[4]), phantom, 1e-5)
    mine, theirs = decode_item(binary_items[5]), decode_item(items[5])
    assert isinstance(mine, sitk.BSplineTransform)
    np.testing.assert_array_equal(mine.GetParameters(), theirs.GetParameters())
    np.testing.assert_allclose(decode_item(binary_items[6]).GetParameters(), affine_field().GetParameters())
    # the body is the raw contents and under 200 bytes of framing per part
    assert 0 < len(as_binary.content) - sum(len(content) for _, _, content in parts) < 200 * len(parts)
    headers = part_headers(as_binary)
    assert [h["X-Tomaat-Type"] for h in headers] == ALL_TYPES
    texts = {"PlainText", "Fiducials"}
    assert [h["Content-Type"] for h in headers] == [
        "text/plain; charset=utf-8" if kind in texts else "application/octet-stream" for kind in ALL_TYPES
    ]
    assert [int(h["Content-Length"]) for h in headers] == [len(content) for _, _, content in parts]


class LabelledApp(TomaatApp):
    input_interface = [Volume("images")]
    output_interface = [PlainText("a", "Résumé: 50% / ok?"), PlainText("b", ""), PlainText("c", "Ünïcode ✓")]

    def inference(self, data):
        data.update(a="première\r\n--ligne", b="", c="\u2713 " * 3)
        return data


@pytest_twisted.ensureDeferred
async def test_labels_travel_percent_encoded_and_texts_as_utf8(serve, phantom):
    service = await serve(LabelledApp())
    response = await slicer_post(service.url + "/predict", {"images": v1_base64(phantom)}, headers=BINARY)
    assert parts_of(response) == [
        ("PlainText", "Résumé: 50% / ok?", "première\r\n--ligne".encode()),
        ("PlainText", "", b""),
        ("PlainText", "Ünïcode ✓", "\u2713 ".encode() * 3),
    ]
    assert part_headers(response)[0]["X-Tomaat-Label"] == "R%C3%A9sum%C3%A9%3A%2050%25%20%2F%20ok%3F"
    as_json = (await slicer_post(service.url + "/predict", {"images": v1_base64(phantom)})).json()
    assert json_items(parts_of(response)) == as_json


@pytest.mark.parametrize(
    "accept",
    ["multipart/mixed", "multipart/mixed, application/json;q=0.5", "application/json;q=0.1, Multipart/Mixed;q=0.9"],
)
@pytest_twisted.ensureDeferred
async def test_accept_is_read_as_a_media_type_list(serve, phantom, accept):
    service = await serve(ThresholdApp())
    fields = {"images": v1_base64(phantom), "threshold": "250"}
    response = await slicer_post(service.url + "/predict", fields, headers={"Accept": accept})
    assert [kind for kind, _, _ in parts_of(response)] == ["LabelVolume", "PlainText"]
    assert response.headers["Vary"] == "Accept"


@pytest.mark.parametrize(
    "accept",
    [None, "*/*", "application/json", "multipart/*", "multipart/mixed;q=0", "multipart/mixed;q=0.2, application/json"],
)
@pytest_twisted.ensureDeferred
async def test_other_accept_headers_get_json(serve, phantom, accept):
    service = await serve(ThresholdApp())
    fields = {"images": v1_base64(phantom), "threshold": "250"}
    response = await slicer_post(service.url + "/predict", fields, headers={"Accept": accept} if accept else None)
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/json"
    assert [item["type"] for item in response.json()] == ["LabelVolume", "PlainText"]


@pytest_twisted.ensureDeferred
async def test_a_v1_answer_is_byte_for_byte_what_it_was(serve, phantom):
    """The JSON path is unchanged: a fixed request's answer is exactly the v1 encoding of the expected outputs."""
    service = await serve(ThresholdApp())
    fields = {"images": v1_base64(phantom), "threshold": "250", "module_version": "1.0"}
    response = await slicer_post(service.url + "/predict", fields)
    labels = sitk.GetImageFromArray((sitk.GetArrayFromImage(phantom) >= 250).astype(np.uint8))
    labels.CopyInformation(phantom)
    expected = json.dumps(
        [
            {
                "type": "LabelVolume",
                "content": base64.b64encode(write_image(labels, "mha")).decode("ascii"),
                "label": "Threshold mask",
            },
            {"type": "PlainText", "content": "141 voxels at or above 250: 0.176 ml", "label": "Summary"},
        ]
    ).encode("utf-8")
    assert response.status_code == 200
    assert response.content == expected
    assert response.headers["Content-Type"] == "application/json"
    assert int(response.headers["Content-Length"]) == len(expected)
    assert "Vary" not in response.headers
    # the same through a delayed response, collected as TOMAAT-Slicer collects it
    delayed = await serve(ThresholdApp(), delayed_responses=True)
    request_id = (await slicer_post(delayed.url + "/predict", fields)).json()[0]["request_id"]
    collected = await collect_when_done(delayed.url, request_id)
    assert collected.content == expected and collected.headers["Content-Type"] == "application/json"


@pytest_twisted.ensureDeferred
async def test_errors_stay_json_whatever_accept_says(serve, phantom):
    service = await serve(ThresholdApp())
    bad = await slicer_post(service.url + "/predict", {"images": v1_base64(phantom), "threshold": "x"}, headers=BINARY)
    assert bad.status_code == 400 and bad.headers["Content-Type"] == "application/json"
    assert "'threshold'" in bad.json()[0]["content"] and bad.json()[0]["label"] == "Error!"
    missing = await call("POST", service.url + "/predict", files={"threshold": (None, "1")}, headers=BINARY)
    assert missing.status_code == 400 and "'images'" in missing.json()[0]["content"]
    nowhere = await call("GET", service.url + "/nope", headers=BINARY)
    assert nowhere.status_code == 404 and nowhere.headers["Content-Type"] == "application/json"
    unknown = await slicer_post(service.url + "/responses", {"request_id": "0" * 32}, headers=BINARY)
    assert unknown.status_code == 404 and "unknown request_id" in unknown.json()[0]["content"]


@pytest_twisted.ensureDeferred
async def test_a_delayed_result_collected_with_accept_multipart_is_a_binary_answer(serve, phantom):
    service = await serve(ThresholdApp())
    fields = {"images": v1_base64(phantom), "threshold": "250"}
    asked = {"Prefer": "respond-async", **BINARY}
    accepted = await slicer_post(service.url + "/predict", fields, headers=asked)
    assert accepted.status_code == 202 and accepted.headers["Content-Type"] == "application/json"
    [item] = accepted.json()
    assert item["type"] == "DelayedResponse"
    binary = await collect_when_done(service.url, item["request_id"], headers=BINARY)
    parts = parts_of(binary)
    assert [kind for kind, _, _ in parts] == ["LabelVolume", "PlainText"]
    assert parts[1][2] == b"141 voxels at or above 250: 0.176 ml"
    assert_same_grid(decode_item(json_items(parts)[0]), phantom)

    # asked for JSON, the same kind of result is JSON; a delayed error is JSON whatever the collector accepts
    again = await slicer_post(service.url + "/predict", fields, headers={"Prefer": "respond-async"})
    as_json = await collect_when_done(service.url, again.json()[0]["request_id"])
    assert json_items(parts)[1] == as_json.json()[1]
    failed = await slicer_post(
        service.url + "/predict", {**fields, "threshold": "x"}, headers={"Prefer": "respond-async"}
    )
    error = await collect_when_done(service.url, failed.json()[0]["request_id"], headers=BINARY)
    assert error.status_code == 400 and error.headers["Content-Type"] == "application/json"
    assert (await collect(service.url, failed.json()[0]["request_id"])).status_code == 404


@pytest_twisted.ensureDeferred
async def test_a_large_binary_answer_arrives_whole(serve):
    phantom = make_phantom(size=(160, 150, 140))
    service = await serve(ThresholdApp())
    fields = {"images": v1_base64(phantom), "threshold": "250"}
    parts = parts_of(await slicer_post(service.url + "/predict", fields, headers=BINARY))
    labels = decode_item(json_items(parts)[0])
    assert_same_grid(labels, phantom)
    assert sitk.GetArrayFromImage(labels).sum() == (sitk.GetArrayFromImage(phantom) >= 250).sum()


# ---- the module ----------------------------------------------------------------------------------


ITEMS = [
    {
        "type": "LabelVolume",
        "content": base64.b64encode(b"\r\n--not-a-boundary\r\n\x00\xff" * 100).decode(),
        "label": "L",
    },
    {"type": "PlainText", "content": "line one\r\n\r\nline two", "label": "A label / with 100% ✓"},
    {"type": "Fiducials", "content": "1.0,2.0,3.0;4.0,5.0,6.0", "label": ""},
    {"type": "VTKMesh", "content": b"# vtk DataFile Version 4.2\n", "label": "raw bytes content"},
]


def body_of(items=ITEMS) -> tuple[bytes, str]:
    pieces, content_type = encode(items)
    return b"".join(pieces), content_type


def test_encode_then_decode_round_trips():
    body, content_type = body_of()
    parts = decode(body, content_type)
    assert [(kind, label) for kind, label, _ in parts] == [(item["type"], item["label"]) for item in ITEMS]
    assert parts[0][2] == b"\r\n--not-a-boundary\r\n\x00\xff" * 100
    assert parts[1][2] == b"line one\r\n\r\nline two"
    assert parts[3][2] == b"# vtk DataFile Version 4.2\n"
    assert json_items(parts)[:3] == ITEMS[:3]
    assert decode(*body_of([])) == []
    # a bytearray or memoryview body reads the same
    assert decode(memoryview(bytearray(body)), content_type) == parts


def test_encode_copies_no_content():
    content = b"x" * 1000
    pieces, _ = encode([{"type": "LabelVolume", "content": content, "label": ""}])
    assert any(piece is content for piece in pieces)


def test_the_boundary_is_random_and_quoted_boundaries_are_read():
    (_, first), (_, second) = body_of(), body_of()
    assert first != second
    body, content_type = body_of()
    boundary = content_type.split("boundary=")[1]
    assert decode(body, f'multipart/mixed; charset=x; boundary="{boundary}"') == decode(body, content_type)


@pytest.mark.parametrize(
    "accept, expected",
    [
        ("multipart/mixed", True),
        ("MULTIPART/MIXED; q=1.0", True),
        ("text/html, multipart/mixed;q=0.7, application/json;q=0.5", True),
        ('multipart/mixed; x="a, b", application/json;q=0.1', True),
        ("application/json, multipart/mixed", True),
        (b"multipart/mixed", True),
        ("", False),
        (None, False),
        ("*/*", False),
        ("multipart/*", False),
        ("multipart/form-data", False),
        ("multipart/mixed;q=0", False),
        ("multipart/mixed;q=abc", False),
        ("multipart/mixed;q=0.4, application/json;q=0.5", False),
        ("application/json", False),
    ],
)
def test_wants_binary(accept, expected):
    assert wants_binary(accept) is expected


def _refused(body: bytes, content_type: str, why: str, limits=None) -> None:
    with pytest.raises(ValueError) as caught:
        decode(body, content_type, limits)
    assert why in str(caught.value)


def test_the_decoder_refuses_a_missing_duplicate_or_malformed_boundary():
    body, content_type = body_of()
    boundary = content_type.split("boundary=")[1]
    _refused(body, "multipart/mixed", "no boundary parameter")
    _refused(body, f"multipart/mixed; boundary={boundary}; boundary=other", "two boundary parameters")
    _refused(body, "multipart/mixed; boundary=" + "x" * 71, "boundary is malformed")
    _refused(body, 'multipart/mixed; boundary=""', "boundary is malformed")
    _refused(body, "multipart/mixed; boundary=ends-with-space ", "does not start with the boundary")
    _refused(body, "multipart/mixed; boundary=another", "does not start with the boundary")
    _refused(body, "application/json", "expected multipart/mixed")
    _refused(body, "", "expected multipart/mixed")
    _refused(b"preamble\r\n" + body, content_type, "does not start with the boundary")


def test_the_decoder_refuses_truncated_bodies():
    body, content_type = body_of()
    boundary = content_type.split("boundary=")[1].encode()
    for cut in (len(body) - 5, len(body) - 4, len(body) // 2, body.index(b"\r\n\r\n") + 2, len(boundary) + 2, 10):
        with pytest.raises(ValueError) as caught:
            decode(body[:cut], content_type)
        message = str(caught.value)
        assert "truncated" in message or "does not match" in message or "does not start" in message, (cut, message)
    _refused(body[: body.index(b"Content-Length: 2200") + 5], content_type, "truncated")


def test_the_decoder_refuses_a_content_length_that_does_not_match():
    body, content_type = body_of()
    first = b"Content-Length: 2200\r\n"  # the first part's 2200 bytes
    assert body.count(first) == 1

    def length(value: bytes) -> bytes:
        return body.replace(first, b"Content-Length: " + value + b"\r\n" if value else b"")

    _refused(length(b"2199"), content_type, "does not match its content")
    _refused(length(b"2201"), content_type, "does not match its content")
    _refused(length(b"-30"), content_type, "not a number")
    _refused(length(b"1e3"), content_type, "not a number")
    _refused(length(b"99999"), content_type, "truncated")
    _refused(length(b""), content_type, "no content-length header")


def test_the_decoder_refuses_bad_part_headers():
    body, content_type = body_of()
    _refused(body.replace(b"X-Tomaat-Type: LabelVolume\r\n", b""), content_type, "no x-tomaat-type header")
    _refused(body.replace(b"X-Tomaat-Label: L\r\n", b""), content_type, "no x-tomaat-label header")
    _refused(body.replace(b"X-Tomaat-Label: L\r\n", b"X-Tomaat-Label: %ff\r\n"), content_type, "not percent-encoded")
    _refused(body.replace(b"X-Tomaat-Label: L\r\n", b"X-Tomaat-Label: L\r\nx-tomaat-label: M\r\n"), content_type, "two")
    _refused(body.replace(b"X-Tomaat-Type: LabelVolume", b"X-Tomaat-Type: Label Volume"), content_type, "type name")
    _refused(body.replace(b"X-Tomaat-Label: L\r\n", b"no colon here\r\n"), content_type, "malformed header line")
    _refused(body.replace(b"X-Tomaat-Label: L\r\n", "X-Tomaat-Label: é\r\n".encode()), content_type, "not ASCII")
    long_header = b"X-Padding: " + b"p" * 9000 + b"\r\n"
    _refused(body.replace(b"X-Tomaat-Label: L\r\n", b"X-Tomaat-Label: L\r\n" + long_header), content_type, "longer")
    _refused(body + b"epilogue", content_type, "after its closing boundary")
    boundary = content_type.split("boundary=")[1].encode()
    _refused(body.replace(b"--" + boundary + b"\r\n", b"--" + boundary + b"xx\r\n", 1), content_type, "other data")


def test_the_decoder_refuses_too_many_parts():
    many = [{"type": "PlainText", "content": "", "label": ""}] * 1025
    body, content_type = body_of(many)
    _refused(body, content_type, "more than 1024 parts")
    assert len(decode(*body_of(many[:1024]))) == 1024
    _refused(*body_of(many[:4]), "more than 3 parts", limits=DecodeLimits(max_parts=3))


def test_the_decoder_is_linear():
    """A body of 4 MiB of line breaks and dashes, in one part or in a thousand, decodes in one pass."""
    noise = b"\r\n--\r\n\r\n" * (1 << 19)
    one = [{"type": "VTKMesh", "content": noise, "label": ""}]
    thousand = [{"type": "VTKMesh", "content": noise[: len(noise) // 1000], "label": ""}] * 1000
    for items in (one, thousand):
        body, content_type = body_of(items)
        start = time.perf_counter()
        assert len(decode(body, content_type)) == len(items)
        assert time.perf_counter() - start < 2.0
    # a part with no end of headers is refused after reading at most max_header_bytes of it
    _, content_type = body_of(one)
    boundary = content_type.split("boundary=")[1].encode()
    headless = b"--" + boundary + b"\r\nX-Tomaat-Type: VTKMesh\r\n" + b"h" * (64 << 20)
    start = time.perf_counter()
    _refused(headless, content_type, "headers are missing, truncated or longer than 8192 bytes")
    assert time.perf_counter() - start < 2.0


def test_a_json_item_without_content_cannot_be_encoded():
    with pytest.raises(ValueError):
        encode([{"type": "DelayedResponse", "request_id": "x"}])
    assert (
        binary_answers.content_bytes({"type": "TransformLinear", "content": base64.b64encode(b"ab").decode()}) == b"ab"
    )


def test_an_answer_no_part_can_carry_is_a_json_500(caplog):
    from tomaat.server.rendering import BINARY, Outcome, render

    answer = render(Outcome(200, [{"type": "Not A Type", "content": "x", "label": ""}]), BINARY)
    assert answer.status == 500 and answer.content_type == "application/json"
    assert "binary answer" in json.loads(answer.body)[0]["content"]
    assert "could not be encoded as multipart/mixed" in caplog.text
