"""The browser page at /app/, in a real headless Chromium against a real server process."""

from __future__ import annotations

import hashlib
import os
import re
import textwrap

import numpy as np
import pytest
import requests
import SimpleITK as sitk
from browser_support import ROOT, Served, blob_bytes, chrome, finished, hook, needs_browser, status_when
from conftest import assert_same_grid

from tomaat.server import page

THRESHOLD = 300


def phantom() -> sitk.Image:
    """64^3 on a rotated grid with an offset origin (values exact in float32, as NIfTI stores them)."""
    z, y, x = np.mgrid[:64, :64, :64]
    body = np.where((x - 30) ** 2 + ((y - 34) / 1.3) ** 2 + ((z - 31) / 0.8) ** 2 < 20**2, 200, -1000)
    organ = np.where((x - 36) ** 2 + (y - 30) ** 2 + (z - 30) ** 2 < 8**2, 400, 0)
    image = sitk.GetImageFromArray((body + organ + (x % 7)).astype(np.int16))
    image.SetSpacing((0.75, 1.25, 2.5))
    image.SetOrigin((-40.5, 12.25, 101.0))
    image.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, 1))
    return image


@pytest.fixture
def threshold_page(tmp_path):
    served = Served("examples/threshold.py", tmp_path)
    yield served
    served.stop()


def run_threshold(driver, url: str, path: str, threshold: int = THRESHOLD) -> str:
    driver.get(url + "/app/")
    status_when(driver, lambda text: "Run" in text or text.startswith("error:"))
    hook(driver, "input-images").send_keys(path)
    status_when(driver, lambda text: "voxels" in text or text.startswith("error:"))
    number = [
        e
        for e in driver.find_elements("css selector", '[data-testid="input-threshold"]')
        if e.get_attribute("type") == "number"
    ][0]
    number.clear()
    number.send_keys(str(threshold))
    before = hook(driver, "status").text
    hook(driver, "run").click()
    return status_when(driver, lambda text: text != before and finished(text))


def screenshot_rgb(png: bytes) -> np.ndarray:
    folder = os.environ.get("TMPDIR", "/tmp")
    path = os.path.join(folder, f"shot-{os.getpid()}.png")
    with open(path, "wb") as handle:
        handle.write(png)
    try:
        rgb = sitk.GetArrayFromImage(sitk.ReadImage(path)).astype(int)
    finally:
        os.remove(path)
    return rgb


def open_with(driver, url: str, path: str) -> None:
    """The page, with the scan at path in its volume input, once the page shows it."""
    driver.get(url + "/app/")
    status_when(driver, lambda text: "Run" in text)
    hook(driver, "input-images").send_keys(path)
    status_when(driver, lambda text: "voxels" in text)


def overlay_pixels(png: bytes) -> int:
    """Pixels of the labels' colour (red over grey) in a screenshot of the viewer."""
    rgb = screenshot_rgb(png)
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return int(((red - green > 60) & (red - blue > 60)).sum())


def violet_pixels(png: bytes) -> int:
    """Pixels of the points' colour (red and blue, little green) in a screenshot of the viewer."""
    rgb = screenshot_rgb(png)
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return int(((red - green > 60) & (blue - green > 60)).sum())


@needs_browser()
def test_a_scan_dropped_in_gets_its_labels_drawn_over_it_and_downloadable_on_its_grid(threshold_page, tmp_path):
    image = phantom()
    path = str(tmp_path / "phantom.nii.gz")
    sitk.WriteImage(image, path)
    driver = chrome()
    try:
        status = run_threshold(driver, threshold_page.url, path)
        assert status.endswith("done"), status
        assert driver.find_element("tag name", "body").get_attribute("data-viewer") == "niivue"
        assert overlay_pixels(hook(driver, "viewer").screenshot_as_png) > 500
        # SwiftShader is software rendering: the 3D view waits until asked for, then shows the labels too
        assert driver.find_element("tag name", "body").get_attribute("data-renderer") == "software"
        toggle = hook(driver, "render3d")
        assert not toggle.is_selected()
        slices_only = hook(driver, "viewer").screenshot_as_png
        toggle.click()
        with_3d = hook(driver, "viewer").screenshot_as_png
        assert with_3d != slices_only and overlay_pixels(with_3d) > 500  # a fourth view, labels in it too
        expected = int((sitk.GetArrayFromImage(image) >= THRESHOLD).sum())
        assert hook(driver, "result-summary").text.endswith(
            f"{expected} voxels at or above {THRESHOLD}: {expected * 0.75 * 1.25 * 2.5 / 1000:.3f} ml"
        )
        link = hook(driver, "download-labels")
        assert link.get_attribute("download") == "labels.nii.gz" and link.get_attribute("href").startswith("blob:")
        saved = tmp_path / "labels.nii.gz"
        saved.write_bytes(blob_bytes(driver, link.get_attribute("href")))
        labels = sitk.ReadImage(str(saved))
        assert_same_grid(labels, image, tol=1e-6)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(labels), sitk.GetArrayFromImage(image) >= THRESHOLD)
        origins = {
            re.match(r"https?://[^/]+", entry) and re.match(r"https?://[^/]+", entry).group(0)
            for entry in driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        }
        assert origins <= {threshold_page.url}  # nothing from another origin
        severe = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert severe == []  # no CSP violation, no script error
    finally:
        driver.quit()


@needs_browser()
def test_a_bad_file_is_reported_and_the_page_stays_usable(threshold_page, tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b" + os.urandom(2000))
    good = tmp_path / "phantom.nii.gz"
    sitk.WriteImage(phantom(), str(good))
    driver = chrome()
    try:
        status = run_threshold(driver, threshold_page.url, str(bad))
        assert status.startswith("error:") and "expected" in status, status  # the server's own words
        status = run_threshold(driver, threshold_page.url, str(good))
        assert status.endswith("done"), status
    finally:
        driver.quit()


@needs_browser()
def test_without_webgl2_a_plain_canvas_shows_the_slice_and_the_labels(threshold_page, tmp_path):
    path = str(tmp_path / "phantom.nii.gz")
    sitk.WriteImage(phantom(), path)
    driver = chrome(webgl=False)
    try:
        status = run_threshold(driver, threshold_page.url, path)
        assert status.endswith("done"), status
        assert driver.find_element("tag name", "body").get_attribute("data-viewer") == "canvas"
        assert overlay_pixels(hook(driver, "viewer").screenshot_as_png) > 100
        assert hook(driver, "download-labels").get_attribute("href").startswith("blob:")
    finally:
        driver.quit()


def serve_source(source: str, folder) -> tuple[Served, str]:
    """A server for the app in source, and the path of a phantom to give it."""
    app = folder / "app.py"
    app.write_text(textwrap.dedent(source))
    path = str(folder / "phantom.nii.gz")
    sitk.WriteImage(phantom(), path)
    return Served(str(app), folder), path


HOSTILE = """
from tomaat import PlainText, TomaatApp, Volume

class Hostile(TomaatApp):
    name = '<img src=x onerror="document.title=1">Liver'
    description = "<b>bold?</b>"
    input_interface = [Volume("images")]
    output_interface = [PlainText("text", "<i>label</i>")]

    def inference(self, data):
        data["text"] = "<script>document.title='owned'</script>"
        return data
"""


@needs_browser()
def test_text_from_the_server_is_shown_as_text_never_as_html(tmp_path):
    served, path = serve_source(HOSTILE, tmp_path)
    driver = chrome()
    try:
        open_with(driver, served.url, path)
        assert hook(driver, "input-images").get_attribute("type") == "file"
        hook(driver, "run").click()
        assert status_when(driver, finished).endswith("done")
        assert driver.find_element("id", "name").text == '<img src=x onerror="document.title=1">Liver'
        assert "<script>document.title='owned'</script>" in hook(driver, "result-text").text
        assert driver.find_elements("css selector", "main img, header img, #results script") == []
        assert driver.title not in ("1", "owned")
    finally:
        driver.quit()
        served.stop()


def test_the_page_is_served_with_a_strict_policy_and_nothing_else_is(threshold_page):
    answer = requests.get(threshold_page.url + "/app/", timeout=10)
    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("text/html")
    policy = answer.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert "<script" not in answer.text.replace('<script type="module" src="app.js"></script>', "")
    assert (
        requests.get(threshold_page.url + "/app/niivue.js", timeout=10)
        .headers["Content-Type"]
        .startswith("text/javascript")
    )
    for name in ("../service.py", "..%2Fservice.py", "index.html.bak", "static", "<script>alert(1)</script>.html"):
        missing = requests.get(threshold_page.url + "/app/" + name, timeout=10)
        assert missing.status_code == 404 and missing.headers["Content-Type"] == "application/json"
        if "/app/" in missing.url:  # (the client resolves ../ before sending: that one is no page's)
            # the page's headers on its 404s too: the path it echoes is never sniffed as HTML nor allowed to run
            assert missing.headers["X-Content-Type-Options"] == "nosniff"
            assert missing.headers["Content-Security-Policy"] == policy
    assert requests.get(threshold_page.url + "/app", timeout=10, allow_redirects=False).headers["Location"] == "app/"


def test_the_vendored_libraries_are_the_pinned_releases():
    script = open(os.path.join(ROOT, "scripts", "vendor-browser.sh")).read()
    pins = re.findall(r"^@niivue/\S+ \S+ \S+ (\S+) ([0-9a-f]{64})$", script, re.M)
    assert {name for name, _ in pins} == {
        "niivue.js",
        "dcm2niix/index.js",
        "dcm2niix/worker.js",
        "dcm2niix/dcm2niix.js",
        "dcm2niix/dcm2niix.wasm",
    }
    for name, pinned in pins:
        with open(os.path.join(page.FOLDER, name), "rb") as handle:
            assert hashlib.sha256(handle.read()).hexdigest() == pinned, name
        assert name in page.FILES  # served
    licences = open(os.path.join(page.FOLDER, "LICENSES.txt")).read()
    assert "BSD 2-Clause License" in licences and "(dcm2niix)" in licences


def write_dicom_series(image: sitk.Image, folder) -> list[str]:
    """image as a CT DICOM series, one file per slice, with its position and orientation in each file."""
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    root = "1.2.826.0.1.3680043.2.1125.4711"
    d = image.GetDirection()
    paths = []
    for k in range(image.GetDepth()):
        slice_ = image[:, :, k]
        tags = {
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0008|0018": f"{root}.3.{k + 1}",
            "0008|0060": "CT",
            "0020|000d": f"{root}.1",
            "0020|000e": f"{root}.2",
            "0020|0011": "1",
            "0020|0012": "1",
            "0008|0020": "20260101",
            "0008|0021": "20260101",
            "0008|0030": "120000",
            "0008|0031": "120000",
            "0008|0032": "120000",
            "0008|0033": "120000",
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.4f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))),
            "0020|0037": "\\".join(str(v) for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
            "0018|0050": str(image.GetSpacing()[2]),
        }
        for key, value in tags.items():
            slice_.SetMetaData(key, value)
        path = str(folder / f"slice{k:03d}.dcm")
        writer.SetFileName(path)
        writer.Execute(slice_)
        paths.append(path)
    return paths


@needs_browser()
def test_a_dicom_series_is_converted_in_the_browser_and_segmented_on_its_grid(threshold_page, tmp_path):
    image = phantom()
    series = tmp_path / "series"
    series.mkdir()
    paths = write_dicom_series(image, series)
    driver = chrome()
    try:
        driver.get(threshold_page.url + "/app/")
        status_when(driver, lambda text: "Run" in text)
        hook(driver, "input-images").send_keys("\n".join(paths))
        assert "voxels" in status_when(driver, lambda text: "voxels" in text or text.startswith("error:"), 60)
        hook(driver, "run").click()
        assert status_when(driver, finished).endswith("done")
        saved = tmp_path / "labels.nii.gz"
        saved.write_bytes(blob_bytes(driver, hook(driver, "download-labels").get_attribute("href")))
        labels = sitk.ReadImage(str(saved))
        # dcm2niix stores rows bottom-up: the same voxels in the same place, another index order. On the
        # series' own grid (nearest neighbour, no transform) the labels are exactly the expected voxels.
        assert labels.GetSize() == image.GetSize()
        np.testing.assert_allclose(np.abs(labels.GetDirection()), np.abs(image.GetDirection()), atol=1e-4)
        on_series = sitk.Resample(labels, image, sitk.Transform(), sitk.sitkNearestNeighbor)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(on_series), sitk.GetArrayFromImage(image) >= THRESHOLD)
        assert [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []
    finally:
        driver.quit()


EVERYTHING = """
import numpy as np
import SimpleITK as sitk
from tomaat import (Checkbox, Fiducials, LabelVolume, PlainText, RadioButton, Slider, TomaatApp, Transform,
                    TransformLinear, Volume, VTKMesh)

MESH = "\\n".join(["# vtk DataFile Version 3.0", "mesh", "ASCII", "DATASET POLYDATA", "POINTS 3 float",
                   "0 0 0", "10 0 0", "0 10 0", "POLYGONS 1 4", "3 0 1 2", ""])

class Everything(TomaatApp):
    input_interface = [Volume("images"), Slider("level", 0, 10), Checkbox("flip", "Flip"),
                       RadioButton("units", "Units", ["mm", "voxels"]), Fiducials("seeds"), Transform("moving")]
    output_interface = [LabelVolume("labels"), VTKMesh("mesh"), Fiducials("points"), PlainText("report"),
                        TransformLinear("affine")]

    def inference(self, data):
        data["labels"] = (sitk.GetArrayFromImage(data["images"]) > 0).astype(np.uint8)
        data["mesh"] = MESH
        data["points"] = data["seeds"] + 1.0
        moving = type(data["moving"]).__name__
        data["report"] = f"level={data['level']} flip={data['flip']} units={data['units']} " + (
            f"seeds={len(data['seeds'])} moving={moving}")
        data["affine"] = data["moving"]
        return data
"""


@needs_browser()
def test_every_control_and_every_output_kind_in_the_page(tmp_path):
    served, path = serve_source(EVERYTHING, tmp_path)
    affine = sitk.AffineTransform(3)
    affine.SetTranslation((1.5, -2.0, 3.25))
    sitk.WriteTransform(affine, str(tmp_path / "moving.mat"))
    driver = chrome()
    try:
        open_with(driver, served.url, path)
        numbers = driver.find_elements("css selector", '[data-testid="input-level"][type="number"]')
        assert numbers[0].get_attribute("value") == "5"  # the slider's midpoint, as Slicer starts it
        numbers[0].clear()
        numbers[0].send_keys("7.5")
        hook(driver, "input-flip").click()
        hook(driver, "input-units", 1).click()  # the second radio button
        hook(driver, "input-seeds").send_keys("1,2,3")
        hook(driver, "add-seeds").click()  # the crosshair's point, where a click on the viewer put it
        hook(driver, "input-moving").send_keys(str(tmp_path / "moving.mat"))
        hook(driver, "run").click()
        assert status_when(driver, finished).endswith("done"), hook(driver, "status").text
        report = hook(driver, "result-report").text
        assert report.endswith("level=7.5 flip=True units=voxels seeds=2 moving=AffineTransform"), report
        assert "2, 3, 4" in hook(driver, "result-points").text  # the first seed, +1 by the app
        mesh = blob_bytes(driver, hook(driver, "download-mesh").get_attribute("href"))
        assert (
            mesh.startswith(b"# vtk DataFile") and hook(driver, "download-mesh").get_attribute("download") == "mesh.vtk"
        )
        saved = tmp_path / "affine.mat"
        saved.write_bytes(blob_bytes(driver, hook(driver, "download-affine").get_attribute("href")))
        np.testing.assert_allclose(sitk.ReadTransform(str(saved)).GetParameters()[-3:], (1.5, -2.0, 3.25))
        assert [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []
    finally:
        driver.quit()
        served.stop()


POINTS = """
import numpy as np
from tomaat import Fiducials, TomaatApp, Volume

class Centre(TomaatApp):
    name = "Centre"
    input_interface = [Volume("images")]
    output_interface = [Fiducials("centre")]

    def inference(self, data):
        image = data["images"]
        middle = [(n - 1) / 2 for n in image.GetSize()]
        data["centre"] = np.array([image.TransformContinuousIndexToPhysicalPoint(middle)])
        return data
"""


@needs_browser()
def test_points_found_by_the_app_are_drawn_in_the_viewer(tmp_path):
    served, path = serve_source(POINTS, tmp_path)
    driver = chrome()
    try:
        open_with(driver, served.url, path)
        canvas = driver.find_element("id", "canvas")
        assert violet_pixels(canvas.screenshot_as_png) == 0
        hook(driver, "run").click()
        assert status_when(driver, finished).endswith("done"), hook(driver, "status").text
        centre = phantom().TransformContinuousIndexToPhysicalPoint((31.5, 31.5, 31.5))
        shown = [float(v) for v in hook(driver, "result-centre").text.splitlines()[1].split(",")]
        np.testing.assert_allclose(shown, centre, atol=1e-6)  # LPS, as the app gave it
        assert violet_pixels(canvas.screenshot_as_png) > 50  # a sphere in each slice view
    finally:
        driver.quit()
        served.stop()


@needs_browser()
def test_a_server_that_answers_later_is_asked_again_until_the_labels_are_there(tmp_path):
    path = str(tmp_path / "phantom.nii.gz")
    sitk.WriteImage(phantom(), path)
    served = Served("examples/threshold.py", tmp_path, "--delayed")
    driver = chrome()
    try:
        assert run_threshold(driver, served.url, path).endswith("done"), hook(driver, "status").text
        saved = tmp_path / "labels.nii.gz"
        saved.write_bytes(blob_bytes(driver, hook(driver, "download-labels").get_attribute("href")))
        labels = sitk.ReadImage(str(saved))
        assert_same_grid(labels, phantom())
        expected = sitk.GetArrayFromImage(phantom()) >= THRESHOLD
        np.testing.assert_array_equal(sitk.GetArrayFromImage(labels), expected.astype(np.uint8))
        asked = driver.execute_script("return performance.getEntriesByType('resource').map((e) => e.name)")
        assert any(name.endswith("/responses") for name in asked), asked  # collected, not answered at once
    finally:
        driver.quit()
        served.stop()


# ---- stored volumes and compressed uploads ------------------------------------------------------------------


def asked(driver, path: str) -> int:
    """How many requests the page made to path, from the browser's own performance entries."""
    names = driver.execute_script("return performance.getEntriesByType('resource').map((e) => e.name)")
    return sum(1 for name in names if name.split("?")[0].endswith(path))


def deleted(driver) -> int:
    """How many DELETE /volumes/<id> the page sent (a stored volume's own URL is asked for no other way)."""
    names = driver.execute_script("return performance.getEntriesByType('resource').map((e) => e.name)")
    return sum(1 for name in names if "/volumes/" in name)


def rerun(driver, threshold: int) -> str:
    """Run again on the same page with only the threshold changed."""
    number = [
        e
        for e in driver.find_elements("css selector", '[data-testid="input-threshold"]')
        if e.get_attribute("type") == "number"
    ][0]
    number.clear()
    number.send_keys(str(threshold))
    driver.execute_script("document.getElementById('status').textContent = ''")
    hook(driver, "run").click()
    return status_when(driver, finished)


def labels_of(driver, tmp_path) -> np.ndarray:
    saved = tmp_path / "labels.nii.gz"
    saved.write_bytes(blob_bytes(driver, hook(driver, "download-labels").get_attribute("href")))
    return sitk.GetArrayFromImage(sitk.ReadImage(str(saved)))


class SamePort(Served):
    """A server started again on the port of one that stopped: a restart, which keeps no volumes."""

    def __init__(self, target: str, folder, port: int):
        import browser_support

        chosen = browser_support.free_port
        browser_support.free_port = lambda: port
        try:
            super().__init__(target, folder)
        finally:
            browser_support.free_port = chosen


@needs_browser()
def test_a_run_with_only_a_parameter_changed_names_the_stored_volume_instead_of_uploading_it(tmp_path):
    image = phantom()
    path = str(tmp_path / "phantom.nii.gz")
    sitk.WriteImage(image, path)
    served = Served("examples/threshold.py", tmp_path)
    driver = chrome()
    try:
        assert run_threshold(driver, served.url, path).endswith("done")
        assert asked(driver, "/volumes") == 1 and asked(driver, "/predict") == 1
        for threshold in (500, 100):
            assert rerun(driver, threshold).endswith("done"), hook(driver, "status").text
            np.testing.assert_array_equal(labels_of(driver, tmp_path), sitk.GetArrayFromImage(image) >= threshold)
        assert asked(driver, "/volumes") == 1 and asked(driver, "/predict") == 3  # uploaded once
        assert requests.get(served.url + "/health", timeout=10).json()["stored_volumes"] == 1

        other = str(tmp_path / "other.nii.gz")  # another scan: uploaded, and the first one deleted
        sitk.WriteImage(sitk.Cast(image > 0, sitk.sitkInt16) * 1000, other)
        chooser = hook(driver, "input-images")
        driver.execute_script("arguments[0].value = ''", chooser)  # a new choice, not one more file
        chooser.send_keys(other)
        status_when(driver, lambda text: "other.nii.gz" in text and "voxels" in text)
        assert rerun(driver, 300).endswith("done"), hook(driver, "status").text
        assert labels_of(driver, tmp_path).sum() == (sitk.GetArrayFromImage(image) > 0).sum()
        assert asked(driver, "/volumes") == 2 and asked(driver, "/predict") == 4
        assert deleted(driver) == 1 and requests.get(served.url + "/health", timeout=10).json()["stored_volumes"] == 1

        served.stop()  # the server restarts and holds no volumes: 404 unknown volume_id, uploaded again once
        served = SamePort("examples/threshold.py", tmp_path, served.port)
        assert rerun(driver, 400).endswith("done"), hook(driver, "status").text
        assert labels_of(driver, tmp_path).sum() == (sitk.GetArrayFromImage(image) > 0).sum()
        assert asked(driver, "/volumes") == 3 and asked(driver, "/predict") == 6
        severe = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert [message for message in severe if "404" not in message] == []
    finally:
        driver.quit()
        served.stop()


@pytest.mark.parametrize("suffix", [".nii", ".mha"])
@needs_browser()
def test_an_uncompressed_scan_is_compressed_in_the_browser_for_a_far_server_only(threshold_page, tmp_path, suffix):
    from benchmarks.link import Link, Profile

    image = phantom()
    path = str(tmp_path / f"phantom{suffix}")
    sitk.WriteImage(image, path, False)
    size = os.path.getsize(path)
    expected = sitk.GetArrayFromImage(image) >= THRESHOLD
    for profile, link_kind in ((Profile(None, None, 0.030), "far"), (Profile(None, None, 0.0), "near")):
        with Link(threshold_page.port, profile) as link:
            driver = chrome()
            try:
                url = f"http://127.0.0.1:{link.port}"
                driver.get(url + "/app/")
                status_when(driver, lambda text: "Run" in text)
                assert driver.find_element("tag name", "body").get_attribute("data-link") == link_kind
                before = link.counts()[0]
                assert run_threshold(driver, url, path).endswith("done"), hook(driver, "status").text
                np.testing.assert_array_equal(labels_of(driver, tmp_path), expected)
                up = link.counts()[0] - before  # every byte the page sent: the scan and a few small requests
                if link_kind == "far":
                    assert up < size / 2, (up, size)
                else:
                    assert up > size, (up, size)
            finally:
                driver.quit()


def bright_pixels(png: bytes) -> int:
    """Pixels that are not near black: anything drawn on the viewer's black background (its edge, where an element
    screenshot may take in a row of the page around it, left out)."""
    return int((screenshot_rgb(png)[2:-2, 2:-2, :3].max(axis=-1) > 60).sum())


ROWS = """
return arguments[0].map((element) => {
    const rects = Array.from(element.getClientRects());
    const box = element.getBoundingClientRect();
    return { lines: rects.length, top: box.top, bottom: box.bottom, middle: (box.top + box.bottom) / 2 };
});
"""


def one_row(driver, elements) -> list[dict]:
    """Each element's line boxes and vertical extent; asserts each is one line and all share a line."""
    rects = driver.execute_script(ROWS, elements)
    assert [rect["lines"] for rect in rects] == [1] * len(elements), rects  # an inline box that wraps has two
    for rect in rects[1:]:
        assert rects[0]["top"] < rect["middle"] < rects[0]["bottom"], rects  # side by side, not one under another
    return rects


@needs_browser()
def test_before_a_scan_the_page_says_what_to_do_and_its_controls_sit_on_one_line(threshold_page, tmp_path):
    path = str(tmp_path / "phantom.nii.gz")
    sitk.WriteImage(phantom(), path)
    driver = chrome()
    try:
        driver.get(threshold_page.url + "/app/")
        status_when(driver, lambda text: "Run" in text or text.startswith("error:"))
        driver.save_screenshot(str(tmp_path / "before-a-scan.png"))  # for a person to look at when the page changes
        empty = hook(driver, "viewer-empty")
        assert empty.is_displayed()
        assert empty.text == "Choose a scan (NIfTI, NRRD, MHA or a DICOM folder) to begin"
        assert "loading" not in driver.find_element("tag name", "body").text.lower()
        # NiiVue draws its own placeholder into the canvas, out of the DOM's reach: with the note hidden, the
        # canvas must be plain black.
        driver.execute_script("arguments[0].style.visibility = 'hidden'", empty)
        assert bright_pixels(hook(driver, "viewer").screenshot_as_png) == 0
        driver.execute_script("arguments[0].style.visibility = ''", empty)

        # The header: the service's name, its modality, anatomy and task where not "any", its description.
        header = driver.find_element("tag name", "header").text
        description = "Labels voxels at or above a threshold; reports their count and volume."
        assert header.splitlines() == ["Threshold", "segmentation", description]  # the app says "any", "any"

        # The scan's two choosers side by side, each one line, worded for one scan.
        choosers = [hook(driver, "choose-images"), hook(driver, "choose-folder-images")]
        one_row(driver, choosers)
        assert [chooser.text for chooser in choosers] == ["Choose a scan file…", "Choose a DICOM folder…"]
        # The slider with its range and value on one line: 0 [----o----] 1000 [500]
        slider = driver.find_element("css selector", '[data-testid="input-threshold"][type="range"]')
        number = driver.find_element("css selector", '[data-testid="input-threshold"][type="number"]')
        low, high = hook(driver, "minimum-threshold"), hook(driver, "maximum-threshold")
        one_row(driver, [low, slider, high, number])
        assert (low.text, high.text, number.get_attribute("value")) == ("0", "1000", "500")

        hook(driver, "input-images").send_keys(path)
        status_when(driver, lambda text: "voxels" in text)
        assert not empty.is_displayed()  # the scan replaces the note
        assert bright_pixels(hook(driver, "viewer").screenshot_as_png) > 1000
        driver.save_screenshot(str(tmp_path / "with-a-scan.png"))
        assert [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []
    finally:
        driver.quit()
