"""`tomaat check APP`: one request, built from the interface's defaults and a generated phantom, through the app
and the encoders, with no server and no client: a researcher learns what would fail before a clinician does.

The request goes through the same prediction code as a served one (decoding, the contract, the three steps, the
encoders), so a wrong key, a forgotten output or a label off the input's grid shows here. The phantom's grid is
deliberately not the default one (permuted, flipped axes and an offset origin), as clinical images are not.
"""

from __future__ import annotations

import logging
import traceback

import numpy as np
import SimpleITK as sitk

from ..errors import ServiceError
from ..files.limits import Allowance
from ..protocol import b64, fiducials, transforms
from ..protocol.codecs import input_codec
from ..protocol.outputs import decode_item
from ..protocol.volumes import write_image
from .rendering import json_ready
from .timings import Timings, Watch

log = logging.getLogger("tomaat.server")


def phantom() -> sitk.Image:
    """A CT-like volume: air around a body with a brighter organ, on a rotated grid with an offset origin."""
    z, y, x = np.mgrid[:16, :20, :24].astype(np.float32)
    body = ((x - 12) / 10) ** 2 + ((y - 10) / 8) ** 2 + ((z - 8) / 7) ** 2 <= 1
    organ = ((x - 14) / 4) ** 2 + ((y - 9) / 3) ** 2 + ((z - 8) / 3) ** 2 <= 1
    array = np.where(body, 40.0, -1000.0) + np.where(organ, 160.0, 0.0)
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.SetSpacing((0.8, 1.1, 2.5))
    image.SetOrigin((-40.5, 12.25, 101.0))
    image.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, 1))
    return image


def sample_fields(inputs, image: sitk.Image) -> dict[str, bytes]:
    """The form fields of a request a client would send with every default and the phantom for each volume."""
    centre = image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in image.GetSize()])
    fields = {}
    for element in inputs:
        if element.wire_type == "volume":
            fields[element.destination] = write_image(image, "mha")
        elif element.wire_type == "fiducials":
            fields[element.destination] = fiducials.format_points([centre]).encode("ascii")
        elif element.wire_type == "transform":
            identity = transforms.transform_file(sitk.AffineTransform(3), "mat")
            fields[element.destination] = b"mat\n" + b64.encode(identity).encode("ascii")
        else:
            fields[element.destination] = input_codec(element).write(element, element.default, 2)[1]
    return fields


def _on_grid(image: sitk.Image, reference: sitk.Image) -> bool:
    return (
        image.GetSize() == reference.GetSize()
        and np.allclose(image.GetSpacing(), reference.GetSpacing())
        and np.allclose(image.GetOrigin(), reference.GetOrigin())
        and np.allclose(image.GetDirection(), reference.GetDirection())
    )


def _describe(item: dict, image: sitk.Image) -> tuple[bool, str]:
    """(fine, what the output is), for one answer item read back as a client reads it."""
    value = decode_item(item)
    kind = item["type"]
    if kind == "LabelVolume":
        labels = sorted(int(v) for v in np.unique(sitk.GetArrayViewFromImage(value)))[:10]
        if not _on_grid(value, image):
            return False, f"{kind}: NOT on the input's grid (size {value.GetSize()} vs {image.GetSize()}, or geometry)"
        return True, f"{kind}: on the input's grid, labels {labels}"
    if kind == "Fiducials":
        return True, f"{kind}: {len(value)} point(s)"
    if kind == "PlainText":
        return True, f"{kind}: {value[:80]!r}"
    if kind == "VTKMesh":
        return True, f"{kind}: {len(value)} bytes of legacy VTK"
    return True, f"{kind}: {type(value).__name__}"


def check(service) -> tuple[bool, list[str]]:
    """Run the sample request through the service's app; (passed, report lines)."""
    lines = []
    image = phantom()
    try:
        service.app.setup(str(service.config.device))
    except Exception:
        return False, ["setup: FAILED", traceback.format_exc().rstrip()]
    lines.append(f"setup: ok (device {service.config.device})")
    fields = sample_fields(service.input_interface, image)
    sent = ", ".join(f"{e.destination}={_shown(e, fields[e.destination])}" for e in service.input_interface)
    lines.append(f"request: {sent}")
    timings = Timings()
    allowance = Allowance(service.limits, None, service.decoders)
    try:
        items = json_ready(service.prediction.run_fields(fields, timings, Watch(), allowance))  # as a client reads them
    except ServiceError as error:
        return False, [*lines, f"FAILED ({error.status}): {error.message}", "(the traceback is in the log above)"]
    finally:
        allowance.release()
    lines.append(f"steps: ok ({timings.summary()})")
    passed = True
    for element, item in zip(service.output_interface, items, strict=True):
        fine, what = _describe(item, image)
        passed = passed and fine
        lines.append(f"output '{element.field}': {what}")
    return passed, lines


def _shown(element, raw: bytes) -> str:
    if element.wire_type == "volume":
        return "a 24x20x16 phantom on a rotated grid"
    if element.wire_type == "transform":
        return "an identity affine"
    return raw.decode("utf-8")
