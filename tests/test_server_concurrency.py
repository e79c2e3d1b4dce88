"""The GPU lock: inference never overlaps, while other requests' preprocessing runs beside it."""

from __future__ import annotations

import threading
import time

import pytest_twisted
from clients import slicer_post, wait_for
from conftest import v1_base64
from twisted.internet.defer import gatherResults

from tomaat import PlainText, TomaatApp, Volume
from tomaat.protocol.elements import Slider


class Recorder(TomaatApp):
    """Inference of the first request waits (with a deadline) until another request is preprocessing."""

    input_interface = [Volume("images"), Slider("which", 0, 10)]
    output_interface = [PlainText("done")]

    def __init__(self):
        super().__init__()
        self.events = []
        self.lock = threading.Lock()
        self.inside = 0
        self.max_inside = 0
        self.second_preprocessing = threading.Event()

    def note(self, what, data):
        with self.lock:
            self.events.append((time.monotonic(), what, int(data["which"])))

    def preprocess(self, data):
        self.note("pre-start", data)
        if data["which"] == 2:
            self.second_preprocessing.set()
            time.sleep(0.05)
        self.note("pre-end", data)
        return data

    def inference(self, data):
        with self.lock:
            self.inside += 1
            self.max_inside = max(self.max_inside, self.inside)
        self.note("inf-start", data)
        if data["which"] == 1:
            # Deterministic overlap: hold the GPU until request 2 is in preprocess (or give up after 10 s).
            data["saw_second"] = self.second_preprocessing.wait(10)
        else:
            time.sleep(0.05)
        self.note("inf-end", data)
        with self.lock:
            self.inside -= 1
        data["done"] = "ok"
        return data


@pytest_twisted.ensureDeferred
async def test_inference_is_serialised_and_preprocess_overlaps_it(serve, phantom):
    app = Recorder()
    service = await serve(app, threads=4)
    volume = v1_base64(phantom)
    first = slicer_post(service.url + "/predict", {"images": volume, "which": "1"})
    # request 2 goes out once request 1 holds the GPU
    await wait_for(lambda: any(e[1] == "inf-start" and e[2] == 1 for e in app.events), what="request 1 in inference")
    second = slicer_post(service.url + "/predict", {"images": volume, "which": "2"})
    responses = await gatherResults([first, second])
    assert [r.status_code for r in responses] == [200, 200]

    times = {(what, which): t for t, what, which in app.events}
    assert app.max_inside == 1
    # B's preprocess ran inside A's inference
    assert times[("inf-start", 1)] < times[("pre-start", 2)] < times[("inf-end", 1)]
    # and B's inference began only after A's ended
    assert times[("inf-end", 1)] <= times[("inf-start", 2)]
