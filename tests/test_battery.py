"""A battery of bad requests: each gets the right 4xx and a message, then a good request succeeds, nothing is left."""

from __future__ import annotations

import base64
import json

import pytest
import pytest_twisted
import requests
from clients import call, slicer_post
from conftest import image_bytes, make_phantom, v1_base64
from hostile import gzip_bomb, huge_mha, huge_nifti, huge_nrrd
from test_registry_support import make_key, payload, post, start_registry
from twisted.internet.threads import deferToThread

from examples.threshold import ThresholdApp

MHA = image_bytes(make_phantom(), ".mha")
NRRD = image_bytes(make_phantom(), ".nrrd")
NII = image_bytes(make_phantom(), ".nii")
NII_GZ = image_bytes(make_phantom(), ".nii.gz")
GOOD = {"images": v1_base64(make_phantom()), "threshold": "100"}


def form(images, threshold="100", **extra):
    fields = {"images": images, "threshold": threshold, **extra}
    return {k: v for k, v in fields.items() if v is not None}


def file_part(data: bytes, filename: str = "volume.mha"):
    return (filename, data, "application/octet-stream")


def multipart(parts: list[tuple[str, bytes]], boundary: str = "XyZ") -> tuple[bytes, str]:
    """A hand-built form, for what MultipartEncoder will not build (repeated names)."""
    body = b""
    for name, value in parts:
        body += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value + b"\r\n"
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


TRAVERSAL_MHA = (
    b"ObjectType = Image\nNDims = 3\nDimSize = 2 2 2\nElementType = MET_UCHAR\nElementDataFile = ../../etc/passwd\n"
)

FORMS = [
    ("truncated mha", form(file_part(MHA[: len(MHA) // 2])), 415, "truncated or corrupt"),
    ("truncated nrrd", form(file_part(NRRD[: len(NRRD) // 2], "v.nrrd")), 415, "truncated or corrupt"),
    ("truncated nii", form(file_part(NII[:-100], "v.nii")), 415, "truncated or corrupt"),
    ("truncated nii.gz", form(file_part(NII_GZ[: len(NII_GZ) // 2], "v.nii.gz")), 415, "expected an MHA, NIfTI"),
    ("corrupt mha sizes", form(file_part(MHA.replace(b"DimSize = 14 12 10", b"DimSize = a b c"))), 415, "DimSize"),
    ("mha zero size", form(file_part(MHA.replace(b"DimSize = 14 12 10", b"DimSize = 0 12 10"))), 415, "valid size"),
    (
        "nrrd no sizes",
        form(file_part(NRRD.replace(b"sizes:", b"sizez:"), "v.nrrd")),
        415,
        "line 'sizez' is neither 'field: value' nor 'key:=value'",
    ),
    ("corrupt nii.gz", form(file_part(b"\x1f\x8b" + b"\xff" * 400, "v.nii.gz")), 415, "expected an MHA, NIfTI"),
    ("wrong base64 padding", form(v1_base64(make_phantom())[:-3]), 415, "base64"),
    ("base64 of garbage", form(base64.b64encode(bytes(range(256)) * 4).decode()), 415, "the data is not"),
    ("binary garbage", form(file_part(bytes(range(256)) * 40)), 415, "neither"),
    ("empty volume", form(""), 415, "the data is not"),
    ("path traversal filename", form(file_part(b"\x00garbage", "../../../etc/passwd")), 415, "neither"),
    ("mha naming another file", form(file_part(TRAVERSAL_MHA, "../x.mha")), 415, "ElementDataFile = LOCAL"),
    ("detached nrrd", form(file_part(b"NRRD0004\nsizes: 2 2\ndata file: /etc/passwd\n\n", "a.nrrd")), 415, "detached"),
    ("mha over max voxels", form(file_part(huge_mha())), 413, "voxels"),
    ("nrrd over max voxels", form(file_part(huge_nrrd(), "v.nrrd")), 413, "voxels"),
    ("nifti over max voxels", form(file_part(huge_nifti(), "v.nii")), 413, "voxels"),
    ("gzip bomb nii.gz", form(file_part(gzip_bomb(), "bomb.nii.gz")), 413, "decompresses to more than"),
    ("NaN", form(GOOD["images"], "NaN"), 400, "out of range"),
    ("inf", form(GOOD["images"], "inf"), 400, "out of range"),
    ("-inf", form(GOOD["images"], "-Infinity"), 400, "out of range"),
    ("huge number", form(GOOD["images"], "1e309"), 400, "out of range"),
    ("very long number", form(GOOD["images"], "9" * 5000), 400, "out of range"),
    ("out of range", form(GOOD["images"], "-1"), 400, "between 0 and 1000"),
    ("unicode option", form(GOOD["images"], "ｔｈｒｅｅ ☃"), 400, "is not a number"),
    ("empty number", form(GOOD["images"], ""), 400, "is not a number"),
    ("NUL in number", form(GOOD["images"], "1\x002"), 400, "is not a number"),
    ("missing volume", form(None), 400, "missing field(s) 'images'"),
    ("missing slider", form(GOOD["images"], None), 400, "missing field(s) 'threshold'"),
    ("too many fields", form(GOOD["images"], **{f"x{i}": "1" for i in range(300)}), 413, "too many form fields"),
]


def raw(body: bytes, content_type: str | None, path: str = "/predict", method: str = "POST"):
    return {"body": body, "content_type": content_type, "path": path, "method": method}


REPEATED, REPEATED_TYPE = multipart([("images", GOOD["images"].encode()), ("threshold", b"1"), ("threshold", b"2")])
TRUNCATED, TRUNCATED_TYPE = multipart([("images", GOOD["images"].encode()), ("threshold", b"1")])
RAWS = [
    ("empty body", raw(b"", "multipart/form-data; boundary=XyZ"), 400, "malformed"),
    ("empty body, no type", raw(b"", None), 400, "missing field(s)"),
    ("json content type", raw(b'{"images": 1}', "application/json"), 415, "expected multipart/form-data"),
    ("text content type", raw(b"images=1", "text/plain"), 415, "expected multipart/form-data"),
    ("no boundary", raw(b"--a--", "multipart/form-data"), 400, "boundary"),
    ("binary garbage body", raw(bytes(range(256)) * 64, "multipart/form-data; boundary=XyZ"), 400, "malformed"),
    ("duplicate fields", raw(REPEATED, REPEATED_TYPE), 400, "'threshold' is sent more than once"),
    (
        "duplicate urlencoded",
        raw(b"threshold=1&threshold=2", "application/x-www-form-urlencoded"),
        400,
        "more than once",
    ),
    ("truncated multipart", raw(TRUNCATED[:-30], TRUNCATED_TYPE), 400, "malformed"),
    ("GET /predict", raw(b"", None, method="GET"), 405, "no such endpoint"),
    ("unknown path", raw(b"", None, path="/../../etc/passwd"), 404, "no such endpoint"),
    ("responses without id", raw(b"", "application/x-www-form-urlencoded", "/responses"), 400, "request_id"),
    (
        "responses unknown id",
        raw(b"request_id=nope", "application/x-www-form-urlencoded", "/responses"),
        404,
        "unknown",
    ),
]


def send_raw(url: str, spec: dict):
    headers = {"Content-Type": spec["content_type"]} if spec["content_type"] else {}
    return deferToThread(
        requests.request, spec["method"], url + spec["path"], data=spec["body"], headers=headers, timeout=30
    )


@pytest.fixture(scope="module")
def server_cases():
    return {name: (request, status, message) for name, request, status, message in FORMS + RAWS}


@pytest.mark.parametrize("name", [case[0] for case in FORMS + RAWS])
@pytest_twisted.ensureDeferred
async def test_bad_prediction_request(serve, leftovers, server_cases, name):
    request, status, message = server_cases[name]
    service = await serve(ThresholdApp())
    if "body" in request:
        response = await send_raw(service.url, request)
    else:
        response = await slicer_post(service.url + "/predict", request)
    assert response.status_code == status, response.text[:500]
    content = response.json()[0]["content"]
    assert message in content, content
    assert "Traceback" not in content and "/tmp" not in content and "tomaat/" not in content
    good = await slicer_post(service.url + "/predict", GOOD)
    assert good.status_code == 200
    assert leftovers() == []


KEY = "0" * 64
REGISTRY = [
    ("invalid JSON", b"{not json", 400, "not valid JSON"),
    ("JSON array", b"[1, 2]", 400, "JSON list; expected a JSON object"),
    ("JSON string", b'"announce me"', 400, "JSON str; expected a JSON object"),
    ("JSON null", b"null", 400, "expected a JSON object"),
    ("empty body", b"", 400, "not valid JSON"),
    ("not UTF-8", b"\xff\xfe{}", 400, "not UTF-8"),
    ("binary garbage", bytes(range(256)), 400, "expected a JSON object"),
    ("over-long name", payload(KEY, name="n" * 201), 400, "name is 201 characters long; expected at most 200"),
    ("over-long url", payload(KEY, prediction_url="http://h/" + "p" * 2100), 400, "expected at most 2048"),
    ("javascript: url", payload(KEY, prediction_url="javascript:alert(1)"), 400, "scheme must be http or https"),
    ("file: url", payload(KEY, interface_url="file:///etc/passwd"), 400, "scheme must be http or https"),
    ("url without host", payload(KEY, prediction_url="http:///predict"), 400, "no host"),
    ("url with password", payload(KEY, prediction_url="http://u:p@h/predict"), 400, "user:password@"),
    ("missing api_key", {k: v for k, v in payload(KEY).items() if k != "api_key"}, 400, "missing field 'api_key'"),
    ("numeric api_key", payload(KEY, api_key=12), 400, "invalid api_key"),
    ("numeric name", payload(KEY, name=1e308), 400, "a JSON float; expected a string"),
    ("control characters", payload(KEY, task="seg\x00\x1b[31m"), 400, "control characters"),
    ("unknown key", payload(KEY), 401, "unknown or revoked api_key"),
    ("body over the limit", b"{" + b" " * 70000 + b"}", 413, "larger than"),
]


@pytest.mark.parametrize("name, body, status, message", REGISTRY, ids=[case[0] for case in REGISTRY])
@pytest_twisted.ensureDeferred
async def test_bad_registry_request(tmp_path, name, body, status, message):
    target = str(tmp_path / "registry.sqlite3")
    key, _ = make_key(target)
    registry = await start_registry(target)
    try:
        code, answer = await post(
            registry.url + "/announce", body if isinstance(body, bytes) else json.dumps(body).encode()
        )
        assert code == status, answer
        assert message in answer["error"] and answer["status"] >= 1
        assert KEY not in answer["error"]
        code, answer = await post(registry.url + "/announce", payload(key))
        assert code == 200 and answer["SID"]
    finally:
        await registry.stop()


@pytest_twisted.ensureDeferred
async def test_withdraw_refuses_non_object_json(tmp_path):
    registry = await start_registry(str(tmp_path / "registry.sqlite3"))
    try:
        for body in (b"[]", b"{", b"7"):
            code, answer = await post(registry.url + "/withdraw", body)
            assert code == 400 and "expected a JSON object" in answer["error"]
        response = await call("GET", registry.url + "/health")
        assert response.status_code == 200
    finally:
        await registry.stop()
