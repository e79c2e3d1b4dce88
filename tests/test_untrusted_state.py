"""Held state and error shapes under hostile requests: delayed results are capped, every refusal is a JSON 4xx."""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from clients import call, slicer_post
from conftest import v1_base64
from test_registry_support import call as registry_call
from test_registry_support import make_key, payload, post, start_registry
from test_server_delayed import collect, poll_until_ready

from examples.threshold import ThresholdApp

ASYNC = {"Prefer": "respond-async"}


def _fields(phantom) -> dict:
    return {"images": v1_base64(phantom), "threshold": "250"}


@pytest_twisted.ensureDeferred
async def test_uncollected_delayed_results_are_capped_by_count(serve, phantom):
    service = await serve(ThresholdApp(), max_delayed_results=3)
    ids = []
    for _ in range(3):
        response = await slicer_post(service.url + "/predict", _fields(phantom), headers=ASYNC)
        assert response.status_code == 202
        ids.append(response.json()[0]["request_id"])
    refused = await slicer_post(service.url + "/predict", _fields(phantom), headers=ASYNC)
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "30"
    assert "3 uncollected delayed results" in refused.json()[0]["content"]
    assert (await poll_until_ready(service.url, ids[0])).status_code == 200
    assert (await slicer_post(service.url + "/predict", _fields(phantom), headers=ASYNC)).status_code == 202
    assert (await slicer_post(service.url + "/predict", _fields(phantom))).status_code == 200  # not delayed: unaffected


@pytest_twisted.ensureDeferred
async def test_a_delayed_result_past_the_byte_cap_is_kept_as_an_error(serve, phantom):
    service = await serve(ThresholdApp(), max_delayed_bytes=100)  # a threshold answer is a few hundred bytes
    response = await slicer_post(service.url + "/predict", _fields(phantom), headers=ASYNC)
    result = await poll_until_ready(service.url, response.json()[0]["request_id"])
    assert result.status_code == 507
    assert "too large to keep" in result.json()[0]["content"]
    assert service.delayed.held_bytes == 0 and len(service.delayed) == 0


@pytest_twisted.ensureDeferred
async def test_responses_refuses_a_large_body_without_parsing_it(serve):
    service = await serve(ThresholdApp())
    big = await slicer_post(service.url + "/responses", {"request_id": "x" * (1 << 20)})
    assert big.status_code == 413 and "request_id" in big.json()[0]["content"]
    unknown = await collect(service.url, "0" * 32)
    assert unknown.status_code == 404


@pytest_twisted.ensureDeferred
async def test_a_non_ascii_multipart_boundary_is_a_json_400(serve):
    service = await serve(ThresholdApp())
    body = b'--\xe2\x82\xac\r\nContent-Disposition: form-data; name="threshold"\r\n\r\n1\r\n--\xe2\x82\xac--\r\n'
    headers = {"Content-Type": "multipart/form-data; boundary*=UTF-8''%E2%82%AC"}
    response = await call("POST", service.url + "/predict", data=body, headers=headers)
    assert response.status_code == 400
    assert "boundary is not ASCII" in response.json()[0]["content"]


@pytest_twisted.ensureDeferred
async def test_registry_deep_json_is_a_json_400(tmp_path):
    registry = await start_registry(str(tmp_path / "registry.sqlite3"))
    try:
        code, headers, raw = await registry_call("POST", registry.url + "/announce", b"[" * 60_000)
        assert code == 400
        assert b"application/json" in headers.getRawHeaders("content-type")[0].encode()
        assert "nested too deeply" in json.loads(raw)["error"]
    finally:
        await registry.stop()


@pytest.mark.parametrize("character", ["\u009b", "\u202e", "\u2066", "\x85"], ids=["CSI", "RLO", "LRI", "NEL"])
@pytest_twisted.ensureDeferred
async def test_registry_refuses_c1_and_bidi_controls_in_names(tmp_path, character):
    target = str(tmp_path / "registry.sqlite3")
    key, _ = make_key(target)
    registry = await start_registry(target)
    try:
        code, answer = await post(registry.url + "/announce", payload(key, name=f"Prostate{character}31m"))
        assert code == 400 and "control characters" in answer["error"]
        code, _ = await post(registry.url + "/announce", payload(key))
        assert code == 200
    finally:
        await registry.stop()
