"""A v1-only server (no /info, base64 MHA volumes only, errors as 200 with a v1 body) served by the same client."""

from __future__ import annotations

import numpy as np
import pytest
import pytest_twisted
import SimpleITK as sitk
from client_support import V1Server, one_line_error, run_cli
from conftest import assert_same_grid

from tomaat.client import AsyncClient, ServerError, ValidationError


@pytest_twisted.async_yield_fixture
async def v1():
    server = await V1Server().listen()
    yield server
    await server.stop()


@pytest_twisted.ensureDeferred
async def test_library_speaks_v1(v1, tmp_path, phantom):
    sitk.WriteImage(phantom, str(tmp_path / "p.nii.gz"))  # NIfTI on disk: a v1 server gets base64 MHA
    client = AsyncClient(v1.url + "/predict", known_hosts=str(tmp_path / "kh.json"))
    info = await client.info()
    assert info.protocol == 1 and [e.destination for e in info.inputs] == ["images", "threshold", "mode", "seeds"]
    result = await client.predict({"images": str(tmp_path / "p.nii.gz"), "threshold": 400, "seeds": [[1, 2, 3]]})
    assert result.request.filled == [("mode", "normal")]
    assert [(o.name, o.type) for o in result] == [
        ("labels", "LabelVolume"),
        ("text", "PlainText"),
        ("fiducials", "Fiducials"),
    ]
    assert_same_grid(result["labels"], phantom)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result["labels"]), sitk.GetArrayFromImage(phantom) >= 400)
    assert result["text"] == "141 voxels"
    np.testing.assert_allclose(result["fiducials"], [[2, 4, 6]])
    assert v1.requests == ["GET /info", "GET /interface", "POST /predict"]

    with pytest.raises(ServerError, match="the model failed: simulated failure"):
        await client.predict({"images": phantom, "mode": "fail", "seeds": ""})
    with pytest.raises(ValidationError, match="'mode' \\(radiobutton\\).*normal, fail"):
        await client.predict({"images": phantom, "mode": "quick", "seeds": ""})
    assert v1.requests.count("POST /predict") == 2  # the invalid one never left the client


@pytest_twisted.ensureDeferred
async def test_command_line_speaks_v1_with_delayed_results(tmp_path, phantom):
    v1 = await V1Server(delayed=True).listen()
    try:
        sitk.WriteImage(phantom, str(tmp_path / "p.mha"))
        shown = await run_cli(["interface", v1.url], tmp_path)
        assert shown.returncode == 0 and "a v1 server" in shown.stdout and "[default normal]" in shown.stdout
        out = tmp_path / "out"
        result = await run_cli(
            ["predict", v1.url + "/predict", "--input", f"images={tmp_path / 'p.mha'}", "--input", "seeds=1,2,3"]
            + ["--set", "threshold=400", "--out", str(out)],
            tmp_path,
        )
        assert result.returncode == 0, result.stderr
        assert "Summary: 141 voxels" in result.stdout
        assert_same_grid(sitk.ReadImage(str(out / "labels.nii.gz")), phantom, 1e-5)
        assert (out / "fiducials.fcsv").exists() and (out / "fiducials.json").exists()
        assert v1.requests.count("POST /responses") == 3  # polled until the result was ready

        v1.delayed = False
        failed = await run_cli(
            ["predict", v1.url, "--input", f"images={tmp_path / 'p.mha'}", "--input", "seeds="]
            + ["--set", "mode=fail", "--out", str(out)],
            tmp_path,
        )
        assert failed.returncode == 3
        assert one_line_error(failed).endswith("the model failed: simulated failure")
    finally:
        await v1.stop()
