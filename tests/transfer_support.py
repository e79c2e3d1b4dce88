"""Helpers for the tests of compressed uploads, binary answers and stored volumes.

`Recorder` is a real HTTP proxy on a real port in front of a real server: it writes down every
request (method, path, Accept, body bytes) and can take flags out of /info, to play a v2 server
of before binary answers and stored volumes. `EchoApp` answers its input volume itself, so a
round trip shows exactly what the server decoded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import treq
from klein import Klein
from twisted.internet import defer, endpoints, reactor
from twisted.web.client import HTTPConnectionPool
from twisted.web.server import Site

from benchmarks.link import Profile
from tomaat import LabelVolume, PlainText, RadioButton, Slider, TomaatApp, Volume


class EchoApp(TomaatApp):
    """The input volume back as it was decoded, a mask at the threshold, and a line naming both."""

    name = "Echo"
    input_interface = [Volume("images"), Slider("threshold", -1000, 2000)]
    output_interface = [LabelVolume("echo", "Echo"), LabelVolume("mask", "Mask"), PlainText("report", "Report")]

    def inference(self, data):
        image = data["images"]
        mask = sitk.GetArrayViewFromImage(image) >= data["threshold"]
        data["echo"] = image
        data["mask"] = mask.astype(np.uint8)
        data["report"] = f"{int(mask.sum())} voxels at or above {data['threshold']:g}"
        return data


class TwoSettingsApp(TomaatApp):
    """Three settings, to combine variations of several of them (an option that holds a space and a slash)."""

    input_interface = [
        Volume("images"),
        Slider("threshold", 0, 10),
        RadioButton("mode", "Mode", ["fast", "a b/c"]),
        Slider("scale", 0, 10),
    ]
    output_interface = [PlainText("report", "Report")]

    def inference(self, data):
        data["report"] = f"mode={data['mode']} threshold={data['threshold']:g} scale={data['scale']:g}"
        return data


def ct_phantom(size=(48, 40, 24)) -> sitk.Image:
    """A small CT-like int16 volume (air exactly -1000 around a noisy body with an organ), on a grid that
    cannot pass for defaults: permuted, flipped axes and an offset origin (conftest.make_phantom's)."""
    from tomaat.client.compression import ct_phantom as volume

    image = sitk.GetImageFromArray(volume((size[2], size[1], size[0])))
    image.SetSpacing((0.5, 1.25, 2.0))
    image.SetOrigin((-12.5, 40.0, 7.25))
    image.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, 1))
    return image


FAR = Profile(None, None, 0.030)  # a link of 30 ms round trips and no bandwidth limit: far, and quick to test


@dataclass
class Seen:
    method: str
    path: str
    accept: str
    length: int  # the request body's bytes


class Recorder:
    """A proxy to `target` that records each request; `hide` names /info keys it leaves out."""

    app = Klein()

    def __init__(self, target: str, hide: tuple = ()):
        self.target = target.rstrip("/")
        self.hide = hide
        self.seen: list[Seen] = []
        self.port = None
        self.interface = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://{self.interface}:{self.port.getHost().port}"

    def count(self, method: str, path: str) -> int:
        return sum(1 for s in self.seen if s.method == method and s.path.startswith(path))

    def of(self, method: str, path: str) -> list[Seen]:
        return [s for s in self.seen if s.method == method and s.path.startswith(path)]

    @app.route("/", branch=True)
    async def forward(self, request):
        body = request.content.read()
        method, path = request.method.decode(), request.uri.decode()
        accept = (request.getHeader(b"Accept") or b"").decode("latin-1")
        self.seen.append(Seen(method, path, accept, len(body)))
        headers = {
            name: request.requestHeaders.getRawHeaders(name)
            for name in (b"Content-Type", b"Accept", b"Prefer")
            if request.requestHeaders.hasHeader(name)
        }
        answer = await treq.request(
            method, self.target + path, data=body or None, headers=headers, pool=HTTPConnectionPool(reactor, False)
        )
        content = await answer.content()
        request.setResponseCode(answer.code)
        for name in (b"Content-Type",):
            for value in answer.headers.getRawHeaders(name) or ():
                request.setHeader(name, value)
        if path == "/info" and answer.code == 200 and self.hide:
            info = json.loads(content)
            for key in self.hide:
                info.pop(key, None)
            content = json.dumps(info).encode()
        return content

    async def listen(self, interface: str = "127.0.0.1") -> Recorder:
        endpoint = endpoints.TCP4ServerEndpoint(reactor, 0, interface=interface)
        self.port = await endpoint.listen(Site(self.app.resource()))
        self.interface = interface
        return self

    def stop(self) -> defer.Deferred:
        return defer.maybeDeferred(self.port.stopListening)


def same_image(got: sitk.Image, expected: sitk.Image) -> None:
    """Voxels, pixel type and grid identical (the geometry to the last bit)."""
    assert got.GetPixelID() == expected.GetPixelID(), (got.GetPixelIDTypeAsString(), expected.GetPixelIDTypeAsString())
    assert got.GetSize() == expected.GetSize()
    assert got.GetSpacing() == expected.GetSpacing()
    assert got.GetOrigin() == expected.GetOrigin()
    assert got.GetDirection() == expected.GetDirection()
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(got), sitk.GetArrayViewFromImage(expected))
