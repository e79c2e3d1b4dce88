"""Helpers for the client tests: the command line as a subprocess, a v1-only server, DICOM series on disk."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import numpy as np
import SimpleITK as sitk
from klein import Klein
from twisted.internet import defer, endpoints, reactor
from twisted.internet.threads import deferToThread
from twisted.web.server import Site

from tomaat.protocol import fiducials
from tomaat.protocol.volumes import read_image, sniff_format, write_image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(args: list[str], config_dir, timeout: float = 60.0):
    """`tomaat ARGS` in a subprocess, off the reactor thread so in-process servers keep answering."""
    env = {**os.environ, "XDG_CONFIG_HOME": str(config_dir), "PYTHONPATH": ROOT}
    command = [sys.executable, "-m", "tomaat", *args]
    return deferToThread(subprocess.run, command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def one_line_error(result) -> str:
    """The whole stderr, asserted to be exactly one line and no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def write_dicom_series(image: sitk.Image, folder) -> None:
    """One DICOM file per slice with the tags that carry geometry, so the series reads back on the same grid."""
    os.makedirs(folder, exist_ok=True)
    image = sitk.Cast(image, sitk.sitkInt16)
    direction = image.GetDirection()
    orientation = "\\".join(
        repr(float(v)) for v in (direction[0], direction[3], direction[6], direction[1], direction[4], direction[7])
    )
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series_uid = "1.2.826.0.1.3680043.2.1125." + "1" * 10
    for index in range(image.GetDepth()):
        slice_ = image[:, :, index]
        position = image.TransformIndexToPhysicalPoint((0, 0, index))
        tags = {
            "0008|0060": "CT",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0008|0018": f"{series_uid}.{index + 1}",
            "0020|000d": series_uid + ".0",
            "0020|000e": series_uid,
            "0020|0052": series_uid + ".9",  # FrameOfReferenceUID: a DICOM SEG of the labels needs one
            "0020|0013": str(index + 1),
            "0020|0032": "\\".join(repr(float(p)) for p in position),
            "0020|0037": orientation,
            "0028|0030": f"{image.GetSpacing()[1]!r}\\{image.GetSpacing()[0]!r}",
            "0018|0050": repr(float(image.GetSpacing()[2])),
        }
        for tag, value in tags.items():
            slice_.SetMetaData(tag, value)
        writer.SetFileName(os.path.join(str(folder), f"slice{index:03d}.dcm"))
        writer.Execute(slice_)


# ---- a v1-only server: what upstream TOMAAT servers spoke ----------------------------------------

V1_INTERFACE = [
    {"type": "volume", "destination": "images"},
    {"type": "slider", "destination": "threshold", "minimum": 0, "maximum": 1000},
    {"type": "radiobutton", "destination": "mode", "text": "Mode", "options": ["normal", "fail"]},
    {"type": "fiducials", "destination": "seeds"},
]


def _v1_error(message: str) -> bytes:
    return json.dumps([{"type": "PlainText", "label": "Error!", "content": message}]).encode()


class V1Server:
    """No /info (404), base64 volumes only, errors as 200 with a v1 body; optionally delayed results."""

    app = Klein()

    def __init__(self, delayed: bool = False):
        self.delayed = delayed
        self.requests: list[str] = []
        self.pending: dict[str, list] = {}
        self.polls = 0
        self.port = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port.getHost().port}"

    @app.route("/", branch=True)
    def everything(self, request):
        path = request.path.decode()
        self.requests.append(f"{request.method.decode()} {path}")
        request.setHeader(b"Content-Type", b"application/json")
        if path == "/interface" and request.method == b"GET":
            return json.dumps(V1_INTERFACE).encode()
        if path == "/predict" and request.method == b"POST":
            return self.predict(request)
        if path == "/responses" and request.method == b"POST":
            return self.responses(request)
        request.setResponseCode(404)
        return b"<html>404 Not Found</html>"

    def predict(self, request):
        fields = {key.decode(): values[0] for key, values in request.args.items()}
        missing = [e["destination"] for e in V1_INTERFACE if e["destination"] not in fields]
        if missing:
            return _v1_error(f"missing {missing}")
        raw = fields["images"]
        if sniff_format(raw) is not None:
            return _v1_error("this server reads only base64-encoded MHA volumes")
        image = read_image(raw, "images")
        if fields["mode"].decode() == "fail":
            return _v1_error("the model failed: simulated failure")
        mask = sitk.GetArrayFromImage(image) >= float(fields["threshold"])
        labels = sitk.GetImageFromArray(mask.astype(np.uint8))
        labels.CopyInformation(image)
        points = fiducials.parse(fields["seeds"].decode(), "seeds")
        items = [
            {"type": "LabelVolume", "content": base64.b64encode(write_image(labels, "mha")).decode(), "label": "Mask"},
            {"type": "PlainText", "content": f"{int(mask.sum())} voxels", "label": "Summary"},
            {"type": "Fiducials", "content": fiducials.format_points(points * 2), "label": "Doubled"},
        ]
        if not self.delayed:
            return json.dumps(items).encode()
        request_id = f"req{len(self.pending)}"
        self.pending[request_id] = items
        return json.dumps([{"type": "DelayedResponse", "request_id": request_id}]).encode()

    def responses(self, request):
        request_id = request.args.get(b"request_id", [b""])[0].decode()
        if request_id not in self.pending:
            return _v1_error(f"unknown request_id {request_id!r}")
        self.polls += 1
        if self.polls < 3:  # still "running" for the first two polls
            return json.dumps([{"type": "DelayedResponse", "request_id": request_id}]).encode()
        return json.dumps(self.pending.pop(request_id)).encode()

    async def listen(self):
        endpoint = endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        self.port = await endpoint.listen(Site(self.app.resource()))
        return self

    def stop(self) -> defer.Deferred:
        return defer.maybeDeferred(self.port.stopListening)
