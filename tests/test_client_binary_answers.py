"""Binary answers (multipart/mixed) decode to exactly what the JSON answer decodes to, with the same checks.

The JSON answers come from the same real server behind a Recorder that hides `binary_answers` in its
/info: a v2 server of before binary answers, which must get today's request exactly (no Accept).
"""

from __future__ import annotations

import numpy as np
import pytest
import pytest_twisted
import SimpleITK as sitk
from conftest import make_phantom
from klein import Klein
from test_server_all_types import EverythingApp, affine_field
from transfer_support import Recorder, same_image
from twisted.internet import endpoints, reactor
from twisted.web.server import Site

from tomaat.client import AsyncClient, ServerError
from tomaat.protocol import b64, binary_answers
from tomaat.protocol.volumes import write_image


def everything_inputs(tmp_path) -> dict:
    sitk.WriteTransform(affine_field(), str(tmp_path / "moving.mat"))
    return {"images": make_phantom(pixel=np.int16), "seeds": [[1.5, 2, 3]], "moving": str(tmp_path / "moving.mat")}


def same_outputs(binary, json) -> None:
    assert [(o.name, o.type, o.label) for o in binary] == [(o.name, o.type, o.label) for o in json]
    for got, expected in zip(binary, json, strict=True):
        if isinstance(got.value, sitk.Image):
            same_image(got.value, expected.value)
        elif isinstance(got.value, sitk.Transform):
            assert type(got.value) is type(expected.value)
            assert got.value.GetParameters() == expected.value.GetParameters()
            assert got.value.GetFixedParameters() == expected.value.GetFixedParameters()
        elif isinstance(got.value, np.ndarray):
            np.testing.assert_array_equal(got.value, expected.value)
        else:
            assert got.value == expected.value
        if got.type != "TransformBSpline":  # HDF5 holds the time it was written: two predictions, two files
            assert got.raw == expected.raw  # transforms saved byte for byte either way


@pytest.mark.parametrize("delayed", [False, True])
@pytest_twisted.ensureDeferred
async def test_the_binary_answer_decodes_to_the_same_outputs_as_the_json_one(serve, tmp_path, delayed):
    service = await serve(EverythingApp(), delayed_responses=delayed)
    binary = await Recorder(service.url).listen()
    plain = await Recorder(service.url, hide=("binary_answers",)).listen()
    try:
        inputs = everything_inputs(tmp_path)
        client = AsyncClient(binary.url, known_hosts=str(tmp_path / "kh.json"))
        assert (await client.info()).binary_answers
        got = await client.predict(inputs)
        old = AsyncClient(plain.url, known_hosts=str(tmp_path / "kh.json"))
        assert not (await old.info()).binary_answers
        expected = await old.predict(inputs)
        same_outputs(got, expected)
        asked = "/responses" if delayed else "/predict"
        assert {s.accept for s in binary.of("POST", asked)} == {"multipart/mixed"}
        assert {s.accept for s in plain.of("POST", "/")} == {""}  # without the flag: today's request
        assert plain.count("POST", "/volumes") == 0 and binary.count("POST", "/volumes") == 0  # small: inline
        saved = sorted(p.name for p in _saved(got, tmp_path / "binary"))
        assert saved == sorted(p.name for p in _saved(expected, tmp_path / "json"))
        assert (tmp_path / "binary" / "affine.mat").read_bytes() == (tmp_path / "json" / "affine.mat").read_bytes()
        assert got.outputs[5].raw.startswith(b64.encode(b"\x89HD"))  # the file itself, re-encoded only for .raw
    finally:
        await binary.stop()
        await plain.stop()


def _saved(result, folder):
    result.save(str(folder))
    return list(folder.iterdir())


# ---- a hostile server's binary answers: every trick refused in one message ----------------------------------

INFO = {
    "name": "Hostile",
    "protocol": 2,
    "binary_answers": True,
    "input_interface": [{"type": "volume", "destination": "images"}],
    "output_interface": [{"type": "LabelVolume", "field": "labels"}, {"type": "PlainText", "field": "text"}],
}


class Hostile:
    app = Klein()

    def __init__(self):
        self.answer: tuple[bytes, str] = (b"", "")

    @app.route("/info")
    def info(self, request):
        request.setHeader(b"Content-Type", b"application/json")
        import json

        return json.dumps(INFO).encode()

    @app.route("/predict", methods=["POST"])
    def predict(self, request):
        request.content.read()
        body, content_type = self.answer
        request.setHeader(b"Content-Type", content_type.encode())
        return body

    async def listen(self):
        endpoint = endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        self.port = await endpoint.listen(Site(self.app.resource()))
        return f"http://127.0.0.1:{self.port.getHost().port}"


def _answer(*items) -> tuple[bytes, str]:
    pieces, content_type = binary_answers.encode([{"type": t, "label": "x", "content": c} for t, c in items])
    return b"".join(pieces), content_type


def _bomb() -> bytes:
    """An MHA label whose header claims a few voxels and whose zlib data inflates to 64 MiB."""
    import zlib

    header = (
        "ObjectType = Image\nNDims = 3\nBinaryData = True\nCompressedData = True\nDimSize = 4 4 4\n"
        "ElementType = MET_UCHAR\nElementDataFile = LOCAL\n"
    )
    return header.encode() + zlib.compress(bytes(64 << 20), 9)


def _truncated() -> tuple[bytes, str]:
    body, content_type = _answer(("LabelVolume", write_image(make_phantom(), "mha")), ("PlainText", b"hello"))
    return body[: len(body) // 2], content_type


HOSTILE = {
    "not multipart": ((b"[]", "multipart/mixed"), "malformed: .*no boundary"),
    "truncated": (_truncated(), "truncated"),
    "not an image": (_answer(("LabelVolume", b"<html>no</html>"), ("PlainText", b"x")), "not an image file"),
    "a zlib bomb": (_answer(("LabelVolume", _bomb()), ("PlainText", b"x")), "decompresses to more than"),
    "text not UTF-8": (
        _answer(("LabelVolume", write_image(make_phantom(), "mha")), ("PlainText", b"\xff\xfe")),
        "PlainText output could not be read",
    ),
    "an unknown type": (_answer(("Executable", b"MZ"), ("PlainText", b"x")), "unknown type 'Executable'"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
@pytest_twisted.ensureDeferred
async def test_a_hostile_binary_answer_is_refused(tmp_path, case):
    server = Hostile()
    url = await server.listen()
    server.answer, message = HOSTILE[case]
    try:
        client = AsyncClient(url, known_hosts=str(tmp_path / "kh.json"))
        with pytest.raises(ServerError, match=message):
            await client.predict({"images": make_phantom()})
    finally:
        await server.port.stopListening()
