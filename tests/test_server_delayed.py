"""Delayed responses: asked for by header or by the service, collected once, expired when left."""

from __future__ import annotations

import time

import pytest_twisted
from clients import call, slicer_post, wait_for
from conftest import v1_base64
from twisted.internet import reactor, task

from examples.threshold import ThresholdApp


async def collect(url, request_id):
    return await slicer_post(url + "/responses", {"request_id": request_id})


async def poll_until_ready(url, request_id, timeout=10.0):
    """Poll as TOMAAT-Slicer does, until the answer is no longer a DelayedResponse."""
    deadline = time.monotonic() + timeout
    while True:
        response = await collect(url, request_id)
        if response.json()[0]["type"] != "DelayedResponse":
            return response
        assert time.monotonic() < deadline, "the delayed result never arrived"
        await task.deferLater(reactor, 0.02, lambda: None)


@pytest_twisted.ensureDeferred
async def test_prefer_respond_async_then_collect_once(serve, phantom):
    service = await serve(ThresholdApp())
    fields = {"images": v1_base64(phantom), "threshold": "250"}
    response = await slicer_post(service.url + "/predict", fields, headers={"Prefer": "respond-async"})
    assert response.status_code == 202
    assert response.headers["Preference-Applied"] == "respond-async"
    [item] = response.json()
    assert item["type"] == "DelayedResponse" and len(item["request_id"]) >= 32

    result = await poll_until_ready(service.url, item["request_id"])
    assert result.status_code == 200
    assert [i["type"] for i in result.json()] == ["LabelVolume", "PlainText"]

    again = await collect(service.url, item["request_id"])
    assert again.status_code == 404
    assert "already collected" in again.json()[0]["content"]
    assert len(service.delayed) == 0


@pytest_twisted.ensureDeferred
async def test_service_option_answers_v1_delayed_responses(serve, phantom):
    service = await serve(ThresholdApp(), delayed_responses=True)
    response = await slicer_post(service.url + "/predict", {"images": v1_base64(phantom), "threshold": "250"})
    assert response.status_code == 200  # v1 clients expect 200 with the DelayedResponse item
    request_id = response.json()[0]["request_id"]
    result = await poll_until_ready(service.url, request_id)
    assert result.json()[1]["type"] == "PlainText"


@pytest_twisted.ensureDeferred
async def test_errors_are_delivered_through_responses_too(serve, phantom):
    service = await serve(ThresholdApp(), delayed_responses=True)
    response = await slicer_post(service.url + "/predict", {"images": v1_base64(phantom), "threshold": "oops"})
    result = await poll_until_ready(service.url, response.json()[0]["request_id"])
    assert result.status_code == 400 and "threshold" in result.json()[0]["content"]


@pytest_twisted.ensureDeferred
async def test_uncollected_results_expire(serve, phantom):
    service = await serve(ThresholdApp(), delayed_responses=True, response_ttl=0.2)
    response = await slicer_post(service.url + "/predict", {"images": v1_base64(phantom), "threshold": "250"})
    request_id = response.json()[0]["request_id"]
    await wait_for(lambda: len(service.delayed) == 0, timeout=5, what="the result to expire")
    late = await collect(service.url, request_id)
    assert late.status_code == 404 and "expired" in late.json()[0]["content"]


@pytest_twisted.ensureDeferred
async def test_responses_needs_a_request_id(serve):
    service = await serve(ThresholdApp())
    response = await call("POST", service.url + "/responses", data={"other": "x"})
    assert response.status_code == 400 and "request_id" in response.json()[0]["content"]
