"""Upload once, predict many: a stored volume (POST /volumes) named by its id, uploaded again when the server lost it.

Every server is real, on a real port; a Recorder proxy in front of it counts what the client sent
(uploads to /volumes, predictions, the bytes of each body), and the server's own /health says how many
volumes it holds.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import pytest_twisted
import SimpleITK as sitk
from client_support import V1Server, run_cli
from transfer_support import FAR, EchoApp, Recorder, ct_phantom, same_image
from twisted.internet import defer

from benchmarks.link import Link
from tomaat.client import AsyncClient, ServerError
from tomaat.server.service import TomaatService

SMALL = 4096  # a prediction request naming a stored volume: the form's few fields


@pytest_twisted.async_yield_fixture
async def echo(serve):
    """An EchoApp server (stored volumes on) behind a Recorder: (service, recorder)."""
    service = await serve(EchoApp())
    recorder = await Recorder(service.url).listen()
    yield service, recorder
    await recorder.stop()


def mask(result, threshold) -> None:
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(result["mask"]), sitk.GetArrayFromImage(result["echo"]) >= threshold
    )


@pytest_twisted.ensureDeferred
async def test_a_file_is_uploaded_once_for_several_predictions(echo, tmp_path):
    service, recorder = echo
    image = ct_phantom()
    path = str(tmp_path / "scan.mha")
    sitk.WriteImage(image, path)
    client = AsyncClient(recorder.url, known_hosts=str(tmp_path / "kh.json"), reuse=True)
    for threshold in (100, 300, 500):
        result = await client.predict({"images": path, "threshold": threshold})
        same_image(result["echo"], image)
        mask(result, threshold)
    assert recorder.count("POST", "/volumes") == 1
    assert recorder.of("POST", "/volumes")[0].length > os.path.getsize(path)  # the volume, once
    assert [s.length < SMALL for s in recorder.of("POST", "/predict")] == [True, True, True]
    assert (await client.health())["stored_volumes"] == 1
    assert client.uploads == 1

    os.utime(path, ns=(1, 1))  # the file changed (as far as its modification time tells): uploaded again
    await client.predict({"images": path, "threshold": 100})
    assert recorder.count("POST", "/volumes") == 2

    assert await client.forget() == 2  # both stored volumes deleted
    assert (await client.health())["stored_volumes"] == 0
    assert recorder.count("DELETE", "/volumes/") == 2


@pytest_twisted.ensureDeferred
async def test_images_and_bytes_are_known_by_their_content(echo, tmp_path):
    service, recorder = echo
    client = AsyncClient(recorder.url, known_hosts=str(tmp_path / "kh.json"), reuse=True)
    image = ct_phantom()
    await client.predict({"images": image, "threshold": 100})
    await client.predict({"images": sitk.Image(image), "threshold": 200})  # a copy: the same volume
    assert recorder.count("POST", "/volumes") == 1
    image.SetPixel((3, 4, 5), 1234)  # changed in place: another volume
    result = await client.predict({"images": image, "threshold": 1234})
    assert recorder.count("POST", "/volumes") == 2
    assert sitk.GetArrayViewFromImage(result["mask"]).sum() == 1

    data = (tmp_path / "scan.nrrd").as_posix()
    sitk.WriteImage(image, data)
    with open(data, "rb") as handle:
        raw = handle.read()
    await client.predict({"images": raw, "threshold": 100})
    await client.predict({"images": bytes(raw), "threshold": 100})
    assert recorder.count("POST", "/volumes") == 3
    await client.close()
    assert (await AsyncClient(service.url, known_hosts=str(tmp_path / "kh.json")).health())["stored_volumes"] == 0


@pytest_twisted.ensureDeferred
async def test_a_volume_the_server_no_longer_holds_is_uploaded_again_once(serve, tmp_path):
    service = TomaatService(app=EchoApp(), tls=False, port=0, interface="127.0.0.1")  # stopped here, not by serve
    await service.listen()
    recorder = await Recorder(service.url).listen()
    try:
        path = str(tmp_path / "scan.mha")
        sitk.WriteImage(ct_phantom(), path)
        client = AsyncClient(recorder.url, known_hosts=str(tmp_path / "kh.json"), reuse=True)
        await client.predict({"images": path, "threshold": 100})
        (first,) = [stored.volume_id for stored in client.stored.values()]
        assert service.volumes.delete(first)  # gone behind the client's back, as when its time ran out

        result = await client.predict({"images": path, "threshold": 300})  # 404 unknown volume_id, then again
        mask(result, 300)
        assert [(s.method, s.path) for s in recorder.seen if s.method == "POST"][-3:] == [
            ("POST", "/predict"),
            ("POST", "/volumes"),
            ("POST", "/predict"),
        ]
        (second,) = [stored.volume_id for stored in client.stored.values()]
        assert second != first and (await client.health())["stored_volumes"] == 1

        port = service.port.getHost().port  # the server restarts: it holds no volumes at all
        await service.stop()
        await serve(EchoApp(), port=port)
        result = await client.predict({"images": path, "threshold": 500})
        mask(result, 500)
        assert recorder.count("POST", "/volumes") == 3 and recorder.count("POST", "/predict") == 5
    finally:
        await recorder.stop()
        if service.port is not None and service.port.connected:
            await service.stop()


@pytest_twisted.ensureDeferred
async def test_a_stored_volume_past_its_time_is_uploaded_without_asking(echo, tmp_path):
    service, recorder = echo
    client = AsyncClient(recorder.url, known_hosts=str(tmp_path / "kh.json"), reuse=True)
    image = ct_phantom()
    await client.predict({"images": image, "threshold": 100})
    (stored,) = client.stored.values()
    ttl = (await client.info()).volume_store["ttl"]
    assert 0 < stored.expires - __import__("time").monotonic() <= ttl
    before = stored.expires
    await client.predict({"images": image, "threshold": 100})
    assert stored.expires > before  # the server's time to live slides with each use: so does ours
    stored.expires = 0.0  # as if ttl seconds had passed
    await client.predict({"images": image, "threshold": 100})
    assert recorder.count("POST", "/volumes") == 2 and recorder.count("POST", "/predict") == 3  # no 404 first


@pytest_twisted.ensureDeferred
async def test_concurrent_predictions_upload_a_new_volume_once(echo, tmp_path):
    service, recorder = echo
    client = AsyncClient(recorder.url, known_hosts=str(tmp_path / "kh.json"), reuse=True)
    image = ct_phantom()
    results = await defer.gatherResults(
        [defer.Deferred.fromCoroutine(client.predict({"images": image, "threshold": t})) for t in (100, 200, 300)],
        consumeErrors=True,
    )
    for result, threshold in zip(results, (100, 200, 300), strict=True):
        mask(result, threshold)
    assert recorder.count("POST", "/volumes") == 1 and recorder.count("POST", "/predict") == 3


@pytest_twisted.ensureDeferred
async def test_when_to_store_by_default(echo, tmp_path):
    """reuse=None: not for a near server (nothing to save), nor for a small volume; a big one to a far server is."""
    service, recorder = echo
    client = AsyncClient(recorder.url, known_hosts=str(tmp_path / "kh.json"))
    big = ct_phantom((96, 96, 64))
    for _ in range(2):
        await client.predict({"images": big, "threshold": 100})
    assert recorder.count("POST", "/volumes") == 0 and client.uploads == 2
    with Link(recorder.port.getHost().port, FAR) as link:
        client = AsyncClient(f"http://127.0.0.1:{link.port}", known_hosts=str(tmp_path / "kh.json"))
        for threshold in (100, 300):
            mask(await client.predict({"images": big, "threshold": threshold}), threshold)
        await client.predict({"images": ct_phantom((24, 20, 12)), "threshold": 100})  # 11 KiB: inline
        assert recorder.count("POST", "/volumes") == 1 and client.uploads == 2
        assert [s.length < SMALL for s in recorder.of("POST", "/predict")][2:] == [True, True, False]


@pytest_twisted.ensureDeferred
async def test_no_store_no_reuse_and_a_full_store_sends_the_volume_inline(serve, tmp_path):
    image, other = ct_phantom(), ct_phantom((40, 40, 20))
    plain = await serve(EchoApp(), volume_ttl=0)  # keeps no volumes: /info says so
    client = AsyncClient(plain.url, known_hosts=str(tmp_path / "kh.json"), reuse=True)
    assert (await client.info()).volume_store is None
    mask(await client.predict({"images": image, "threshold": 100}), 100)
    assert client.stored == {} and client.uploads == 1

    full = await serve(EchoApp(), max_stored_volumes=1)
    recorder = await Recorder(full.url).listen()
    try:
        client = AsyncClient(recorder.url, known_hosts=str(tmp_path / "kh.json"), reuse=True)
        await client.predict({"images": image, "threshold": 100})
        mask(await client.predict({"images": other, "threshold": 100}), 100)  # 507 from /volumes: inline
        assert [s.length > SMALL for s in recorder.of("POST", "/predict")] == [False, True]
        assert recorder.count("POST", "/volumes") == 2 and len(client.stored) == 1
    finally:
        await recorder.stop()


@pytest_twisted.ensureDeferred
async def test_a_v1_server_sees_no_change(tmp_path):
    v1 = await V1Server().listen()
    try:
        path = str(tmp_path / "scan.mha")
        sitk.WriteImage(ct_phantom(), path)
        client = AsyncClient(v1.url, known_hosts=str(tmp_path / "kh.json"), reuse=True, compress=True)
        for threshold in (100, 300):
            result = await client.predict({"images": path, "threshold": threshold, "seeds": "1,2,3"})
            assert result["text"].endswith("voxels")
        assert v1.requests == ["GET /info", "GET /interface", "POST /predict", "POST /predict"]
        assert client.stored == {} and await client.forget() == 0
    finally:
        await v1.stop()


@pytest_twisted.ensureDeferred
async def test_the_volume_is_checked_before_it_is_stored(echo, tmp_path):
    service, recorder = echo
    bad = tmp_path / "bad.mha"
    bad.write_bytes(
        b"ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementType = MET_SHORT\nElementDataFile = LOCAL\n"
    )
    client = AsyncClient(recorder.url, known_hosts=str(tmp_path / "kh.json"), reuse=True)
    with pytest.raises(ServerError, match="^field 'images' \\(volume\\): the mha file could not be read") as caught:
        await client.predict({"images": str(bad), "threshold": 1})
    assert caught.value.status == 415 and recorder.count("POST", "/predict") == 0  # refused by POST /volumes
    assert client.stored == {}


@pytest_twisted.ensureDeferred
async def test_the_command_line_runs_each_variation_in_its_own_folder_and_uploads_once(echo, tmp_path):
    service, recorder = echo
    image = ct_phantom()
    path = tmp_path / "scan.nii.gz"
    sitk.WriteImage(image, str(path))
    out = tmp_path / "out"
    result = await run_cli(
        ["predict", recorder.url, "--input", f"images={path}", "--out", str(out)]
        + ["--set", "threshold=100", "--set", "threshold=300", "--set", "threshold=100", "--set", "threshold=-50.5"],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["threshold=-50.5", "threshold=100", "threshold=300"]
    for value in (100, 300, -50.5):
        labels = sitk.ReadImage(str(out / f"threshold={value:g}" / "mask.nii.gz"))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(labels), sitk.GetArrayFromImage(image) >= value)
        assert f"[threshold={value:g}]" in result.stdout
    assert "3 predictions; 1 volume upload(s) for 1 volume input(s)" in result.stdout
    assert recorder.count("POST", "/volumes") == 1 and recorder.count("POST", "/predict") == 3
    assert recorder.count("DELETE", "/volumes/") == 1  # what the command stored, it deletes
    assert (await AsyncClient(service.url, known_hosts=str(tmp_path / "kh.json")).health())["stored_volumes"] == 0

    single = await run_cli(
        ["predict", recorder.url, "--input", f"images={path}", "--set", "threshold=7", "--out", str(tmp_path / "one")],
        tmp_path,
    )
    assert single.returncode == 0, single.stderr
    assert (tmp_path / "one" / "mask.nii.gz").exists()  # one prediction: straight into --out, as always
    assert recorder.count("POST", "/volumes") == 1  # loopback, one prediction: inline


@pytest_twisted.ensureDeferred
async def test_the_command_line_combines_variations_of_several_settings(serve, tmp_path):
    from transfer_support import TwoSettingsApp

    service = await serve(TwoSettingsApp())
    path = tmp_path / "scan.mha"
    sitk.WriteImage(ct_phantom(), str(path))
    out = tmp_path / "out"
    result = await run_cli(
        ["predict", service.url, "--input", f"images={path}", "--out", str(out), "--set", "mode=a b/c"]
        + ["--set", "threshold=1", "--set", "threshold=2", "--set", "mode=fast", "--set", "scale=3"],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    names = ["mode=a_b_c,threshold=1", "mode=a_b_c,threshold=2", "mode=fast,threshold=1", "mode=fast,threshold=2"]
    assert sorted(p.name for p in out.iterdir()) == names
    assert (out / "mode=fast,threshold=2" / "report.txt").read_text() == "mode=fast threshold=2 scale=3\n"
    assert "4 predictions; 1 volume upload(s)" in result.stdout
