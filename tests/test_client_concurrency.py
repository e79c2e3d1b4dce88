"""Predictions in flight at once on one client: each call keeps its own request (which defaults it filled)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest_twisted
import SimpleITK as sitk
from client_support import ROOT
from twisted.internet import defer
from twisted.internet.threads import deferToThread

from tomaat import PlainText, RadioButton, Slider, TomaatApp, Volume
from tomaat.client import AsyncClient


class MeetingApp(TomaatApp):
    """Holds each request until a second one has arrived, so both were prepared before either answers.

    The barrier's timeout only ends a broken test; a passing one never waits for it.
    """

    input_interface = [Volume("images"), Slider("level", -1, 1), RadioButton("units", "Units", ["mm", "voxels"])]
    output_interface = [PlainText("report")]

    def __init__(self):
        super().__init__()
        self.meeting = threading.Barrier(2, timeout=30)

    def preprocess(self, data):
        self.meeting.wait()
        return data

    def inference(self, data):
        data["report"] = f"level={data['level']} units={data['units']}"
        return data


@pytest_twisted.ensureDeferred
async def test_concurrent_predictions_each_see_their_own_request(serve, tmp_path, phantom):
    service = await serve(MeetingApp())
    client = AsyncClient(service.url, known_hosts=str(tmp_path / "kh.json"))
    first, second = await defer.gatherResults(
        [
            defer.Deferred.fromCoroutine(client.predict({"images": phantom, "level": 0.5})),
            defer.Deferred.fromCoroutine(client.predict({"images": phantom, "units": "voxels"})),
        ],
        consumeErrors=True,
    )
    assert first["report"] == "level=0.5 units=mm"
    assert first.request.filled == [("units", "mm")]
    assert second["report"] == "level=0.0 units=voxels"
    assert second.request.filled == [("level", 0.0)]


@pytest_twisted.ensureDeferred
async def test_threads_sharing_a_blocking_client_each_see_their_own_defaults(serve, tmp_path, phantom):
    sitk.WriteImage(phantom, str(tmp_path / "p.mha"))
    service = await serve(MeetingApp())
    script = (
        "import sys, threading\n"
        "from tomaat.client import Client\n"
        "client = Client(sys.argv[1])\n"
        "seen = {}\n"
        "def call(name, **given):\n"
        "    result = client.predict(images=sys.argv[2], **given)\n"
        "    seen[name] = (client.filled, result.request.filled, result['report'])\n"
        "threads = [threading.Thread(target=call, args=('a',), kwargs={'level': 0.5}),\n"
        "           threading.Thread(target=call, args=('b',), kwargs={'units': 'voxels'})]\n"
        "for thread in threads:\n"
        "    thread.start()\n"
        "for thread in threads:\n"
        "    thread.join()\n"
        "print(seen['a'])\n"
        "print(seen['b'])\n"
    )
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config")}  # its own known hosts
    done = await deferToThread(
        subprocess.run,
        [sys.executable, "-c", script, service.url, str(tmp_path / "p.mha")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "([('units', 'mm')], [('units', 'mm')], 'level=0.5 units=mm')",
        "([('level', 0.0)], [('level', 0.0)], 'level=0.0 units=voxels')",
    ]
