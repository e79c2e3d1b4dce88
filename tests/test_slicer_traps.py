"""What would break TOMAAT-Slicer, each tried the way its module behaves.

The module (TOMAAT-Slicer's TOMAAT.py) reads a Fiducials answer with a bare split on ';' and ','
and float() of each part, names each result's file after its label, finds it again with
slicer.util.getNode (a pattern), and sends fiducials in Slicer's RAS world coordinates next to
volumes saved as LPS MHA files. `slicer_reads` does what the module does with an answer.
"""

from __future__ import annotations

import numpy as np
import pytest
import pytest_twisted
import SimpleITK as sitk
from clients import slicer_post
from conftest import make_phantom, v1_base64

from tomaat import Fiducials, LabelVolume, PlainText, TomaatApp, TomaatService, Volume, VTKMesh
from tomaat.protocol import fiducials
from tomaat.protocol.elements import InterfaceError
from tomaat.protocol.outputs import decode_item

SLICER = {"module_version": "Slicer-v2"}


def slicer_reads(items: list[dict]) -> list:
    """Each item as the module handles it, in order; an exception here is what loses every later output."""
    handled = []
    for item in items:
        if item["type"] == "Fiducials":
            handled.append([[float(v) for v in point.split(",")] for point in item["content"].split(";")])
        else:
            handled.append(item["type"])
    return handled


class SeedsApp(TomaatApp):
    """Marks the voxel under each seed and gives the seeds back, as an app of our contract sees them."""

    input_interface = [Volume("images"), Fiducials("seeds")]
    output_interface = [LabelVolume("labels", "Seeds"), Fiducials("seeds", "Seeds"), PlainText("after", "After")]

    def inference(self, data):
        image = data["images"]
        mask = np.zeros(tuple(reversed(image.GetSize())), dtype=np.uint8)
        for point in data["seeds"]:
            x, y, z = image.TransformPhysicalPointToIndex(tuple(point))
            mask[z, y, x] = 1
        data["labels"] = mask
        data["after"] = f"{len(data['seeds'])} seed(s)"
        return data


INDEX = (3, 5, 2)


def seed_points(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    lps = np.array([image.TransformIndexToPhysicalPoint(INDEX)])
    return lps, lps * [-1, -1, 1]


def marked(items: list[dict]) -> list[tuple[int, int, int]]:
    label = sitk.GetArrayFromImage(decode_item(items[0]))
    return [tuple(int(i) for i in reversed(where)) for where in np.argwhere(label)]


@pytest_twisted.ensureDeferred
async def test_fiducials_from_slicer_are_ras_and_reach_the_app_in_lps(serve):
    service = await serve(SeedsApp())
    image = make_phantom()  # permuted, flipped axes and an offset origin: RAS and LPS differ in x and y
    lps, ras = seed_points(image)
    fields = {"images": v1_base64(image), "seeds": fiducials.format_points(ras), **SLICER}
    items = (await slicer_post(service.url + "/predict", fields)).json()
    assert marked(items) == [INDEX]  # the app found the voxel the user clicked on
    np.testing.assert_allclose(slicer_reads(items)[1], ras)  # the points go back in Slicer's frame

    # any other client sends LPS, as ITK and our client use: the same voxel, points back as sent
    fields = {"images": v1_base64(image), "seeds": fiducials.format_points(lps)}
    items = (await slicer_post(service.url + "/predict", fields)).json()
    assert marked(items) == [INDEX]
    np.testing.assert_allclose(fiducials.parse(items[1]["content"]), lps)


@pytest_twisted.ensureDeferred
async def test_no_points_reach_slicer_as_a_message_and_every_later_output_still_arrives(serve):
    service = await serve(SeedsApp())
    fields = {"images": v1_base64(make_phantom()), "seeds": ""}
    items = (await slicer_post(service.url + "/predict", {**fields, **SLICER})).json()
    assert items[1] == {"type": "PlainText", "content": "no points were found", "label": "Seeds"}
    assert slicer_reads(items) == ["LabelVolume", "PlainText", "PlainText"]
    assert items[2]["content"] == "0 seed(s)"

    other = (await slicer_post(service.url + "/predict", fields)).json()  # other clients: the documented ""
    assert other[1] == {"type": "Fiducials", "content": "", "label": "Seeds"}


@pytest_twisted.ensureDeferred
async def test_points_are_never_sent_with_a_trailing_separator(serve):
    service = await serve(SeedsApp())
    image = make_phantom()
    _, ras = seed_points(image)
    many = np.vstack([ras, ras + 1.0, ras - 2.5])
    fields = {"images": v1_base64(image), "seeds": fiducials.format_points(many) + ";", **SLICER}
    items = (await slicer_post(service.url + "/predict", fields)).json()
    assert not items[1]["content"].endswith(";")
    np.testing.assert_allclose(slicer_reads(items)[1], many)


@pytest.mark.parametrize("label", ["a/b", "a\\b", "C:mask", "mask*", "mask?", "[mask]", 'say "mask"', "a<b>", "a|b"])
def test_output_labels_that_cannot_be_file_names_are_refused_at_start(label):
    for element in (LabelVolume("labels", label), VTKMesh("mesh", label), Fiducials("points", label)):
        with pytest.raises(InterfaceError, match="make file names from labels") as caught:
            TomaatService(app=SeedsApp(), output_interface=[element])
        assert repr(label) in str(caught.value)


def test_control_characters_and_overlong_labels_are_refused_and_plain_text_labels_are_free():
    with pytest.raises(InterfaceError, match="control characters"):
        TomaatService(app=SeedsApp(), output_interface=[{"type": "LabelVolume", "field": "x", "label": "a\tb"}])
    with pytest.raises(InterfaceError, match="at most 128"):
        TomaatService(app=SeedsApp(), output_interface=[LabelVolume("x", "m" * 129)])
    fine = [LabelVolume("labels", "Prostate (T2w) - zone 1.5"), PlainText("text", "Volume: ml [approx.]")]
    assert len(TomaatService(app=SeedsApp(), output_interface=fine).output_interface) == 2


def test_the_start_up_advice_leads_operators_to_set_ups_slicer_can_use():
    plain = TomaatService(app=SeedsApp(), tls=False)
    assert any("does not connect to plain-HTTP prediction servers" in line for line in plain.advice())
    assert TomaatService(app=SeedsApp(), listen_address="127.0.0.1").advice() == []  # HTTPS, the default
    # beyond loopback with no access rule, the operator is told that anyone reaching the port may use it
    [open_warning] = TomaatService(app=SeedsApp()).advice()
    assert "anyone who can reach this port" in open_warning
    assert TomaatService(app=SeedsApp(), allow_from="10.0.0.0/8").advice() == []
