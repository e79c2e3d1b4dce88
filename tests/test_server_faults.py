"""Faults inside the researcher's app: a clean 500 for the client, the traceback in the log, service continues."""

from __future__ import annotations

import logging

import pytest
import pytest_twisted
from clients import slicer_post, wait_for
from conftest import v1_base64

from examples.threshold import ThresholdApp
from tomaat.server.runners import GPU_LOCK


class Faulty(ThresholdApp):
    def __init__(self, fault):
        super().__init__()
        self.fault = fault

    def inference(self, data):
        if data["threshold"] == 13 and self.fault == "raises":
            raise RuntimeError("secret detail /srv/models/weights.h5")
        return super().inference(data)

    def postprocess(self, data):
        data = super().postprocess(data)
        if data["threshold"] == 13:
            if self.fault == "missing":
                del data["summary"]
            elif self.fault == "wrong type":
                data["labels"] = "not an image"
            elif self.fault == "not a dict":
                return [data]
        return data


@pytest.mark.parametrize(
    "fault, message",
    [
        ("raises", "failed during inference"),
        ("missing", "produced no 'summary' output"),
        ("not a dict", "did not return the data dict"),
        ("wrong type", "invalid 'labels' output"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_app_fault_is_a_clean_500(serve, phantom, leftovers, caplog, fault, message):
    service = await serve(Faulty(fault))
    volume = v1_base64(phantom)
    with caplog.at_level(logging.INFO, logger="tomaat.server"):
        response = await slicer_post(service.url + "/predict", {"images": volume, "threshold": "13"})
    assert response.status_code == 500
    content = response.json()[0]["content"]
    assert message in content
    assert "secret" not in content and "Traceback" not in content and "/srv" not in content
    if fault == "raises":
        assert "secret detail" in caplog.text and "Traceback" in caplog.text
    assert not GPU_LOCK.locked()
    after = await slicer_post(service.url + "/predict", {"images": volume, "threshold": "250"})
    assert after.status_code == 200
    assert leftovers() == []


class Slow(ThresholdApp):
    """Runs past the time limit in inference, holding the GPU lock, until the test lets it finish."""

    def __init__(self):
        super().__init__()
        import threading

        self.release = threading.Event()
        self.finished = threading.Event()

    def inference(self, data):
        if data["threshold"] == 13:
            self.release.wait(20)
            self.finished.set()
        return super().inference(data)


@pytest_twisted.ensureDeferred
async def test_an_app_past_its_time_limit_gets_a_clean_504_and_the_next_request_is_served(
    serve, phantom, leftovers, caplog
):
    app = Slow()
    service = await serve(app, app_timeout=0.5)
    volume = v1_base64(phantom)
    try:
        with caplog.at_level(logging.INFO, logger="tomaat.server"):
            response = await slicer_post(service.url + "/predict", {"images": volume, "threshold": "13"})
        assert response.status_code == 504
        content = response.json()[0]["content"]
        assert "time limit of 0.5 s" in content and "Traceback" not in content
        assert "app_timeout" in caplog.text
    finally:
        app.release.set()
    await wait_for(lambda: app.finished.is_set() and service.worker.in_flight == 0, what="the late step to end")
    assert not GPU_LOCK.locked()
    after = await slicer_post(service.url + "/predict", {"images": volume, "threshold": "250"})
    assert after.status_code == 200
    assert leftovers() == []
