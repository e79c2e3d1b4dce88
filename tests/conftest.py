"""Shared fixtures: phantoms with real geometry, a private temp folder, servers on real ports."""

from __future__ import annotations

import base64
import os
import tempfile

import numpy as np
import pytest
import pytest_twisted
import SimpleITK as sitk
from twisted.internet.defer import ensureDeferred

from tomaat.server.service import TomaatService


@pytest.fixture(autouse=True, scope="session")
def private_tmp(tmp_path_factory):
    """Point tempfile at a folder of our own so a test can prove a request left nothing behind."""
    folder = str(tmp_path_factory.mktemp("requests-tmp"))
    old = tempfile.tempdir
    tempfile.tempdir = folder
    yield folder
    tempfile.tempdir = old


@pytest.fixture
def leftovers(private_tmp):
    """A callable listing what requests left in the temp folder since the test began."""
    before = set(os.listdir(private_tmp))
    return lambda: sorted(set(os.listdir(private_tmp)) - before)


def make_phantom(size=(14, 12, 10), pixel=np.float32) -> sitk.Image:
    """A volume whose geometry cannot be mistaken for defaults: permuted, flipped axes and an offset origin."""
    z, y, x = size[2], size[1], size[0]
    array = np.zeros((z, y, x), dtype=pixel)
    array[2:6, 3:8, 4:11] = 500
    array[7, 1, 2] = 900
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.5, 1.25, 2.0))
    image.SetOrigin((-12.5, 40.0, 7.25))
    image.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, 1))
    return image


@pytest.fixture
def phantom() -> sitk.Image:
    return make_phantom()


def written_bytes(write, suffix: str) -> bytes:
    """The bytes SimpleITK writes for write(path), made outside the server's temp folder."""
    folder = tempfile.mkdtemp(prefix="fixture-", dir=os.environ.get("TMPDIR", "/tmp"))
    path = os.path.join(folder, "file" + suffix)
    try:
        write(path)
        with open(path, "rb") as handle:
            return handle.read()
    finally:
        os.remove(path)
        os.rmdir(folder)


def image_bytes(image: sitk.Image, suffix: str) -> bytes:
    return written_bytes(lambda path: sitk.WriteImage(image, path), suffix)


def v1_base64(image: sitk.Image) -> str:
    """The volume field as TOMAAT-Slicer sends it: base64 MHA with 76-character lines."""
    return base64.encodebytes(image_bytes(image, ".mha")).decode("ascii")


def make_affine() -> sitk.AffineTransform:
    """A linear transform with nothing at its default: matrix, translation and centre all set."""
    transform = sitk.AffineTransform(3)
    transform.SetMatrix((1.1, 0.2, 0.0, -0.1, 0.9, 0.05, 0.0, 0.3, 1.2))
    transform.SetTranslation((1.0, -2.0, 3.5))
    transform.SetCenter((5.0, 6.0, 7.0))
    return transform


def make_bspline() -> sitk.BSplineTransform:
    """A B-spline transform on an offset grid with non-zero coefficients."""
    grid = sitk.Image([8, 8, 8], sitk.sitkFloat32)
    grid.SetSpacing((2.0, 2.0, 2.0))
    grid.SetOrigin((-8.0, -8.0, -8.0))
    transform = sitk.BSplineTransformInitializer(grid, [3, 3, 3], 3)
    transform.SetParameters(np.linspace(-1.0, 1.0, len(transform.GetParameters())).tolist())
    return transform


def assert_same_grid(result: sitk.Image, expected: sitk.Image, tol=1e-6) -> None:
    assert result.GetSize() == expected.GetSize()
    np.testing.assert_allclose(result.GetSpacing(), expected.GetSpacing(), atol=tol)
    np.testing.assert_allclose(result.GetOrigin(), expected.GetOrigin(), atol=tol)
    np.testing.assert_allclose(result.GetDirection(), expected.GetDirection(), atol=tol)


@pytest.fixture
def serve():
    """Start TomaatServices on free ports (plain HTTP unless asked) and stop them after the test."""
    services = []

    async def start(app, **options) -> TomaatService:
        options.setdefault("tls", False)
        options.setdefault("port", 0)
        options.setdefault("interface", "127.0.0.1")
        service = TomaatService(app=app, **options)
        await service.listen()
        services.append(service)
        return service

    yield start
    for service in services:
        pytest_twisted.blockon(ensureDeferred(service.stop()))


def pytest_terminal_summary(terminalreporter):
    """Say how many PostgreSQL store tests ran, so a CI log shows they were not all skipped."""
    counts = {}
    for outcome in ("passed", "failed", "skipped", "error"):
        for report in terminalreporter.stats.get(outcome, []):
            if "postgresql" in getattr(report, "nodeid", "") and report.when in ("call", "setup"):
                if outcome == "skipped" or report.when == "call":
                    counts[outcome] = counts.get(outcome, 0) + 1
    if counts:
        summary = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
        terminalreporter.write_line(f"PostgreSQL store tests: {summary}")
