"""Each identity method and the audit log through a real prediction server, with our own client and
TOMAAT-Slicer-style requests: OIDC tokens from a loopback issuer, client certificates from a test CA, and the
audit chain over 1,000 requests and a rotation."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import time

import numpy as np
import pytest
import pytest_twisted
import SimpleITK as sitk
from click.testing import CliRunner
from clients import call, collect_when_done, slicer_post
from conftest import assert_same_grid, v1_base64
from test_access_certificates import pki  # noqa: F401 (a fixture)
from test_access_oidc import AUDIENCE, Key, claims, forged, issuer  # noqa: F401 (a fixture)

from examples.threshold import ThresholdApp
from tomaat.access.audit import AuditError
from tomaat.access.audit_cli import audit
from tomaat.access.tokens import TokenStore
from tomaat.client import AsyncClient
from tomaat.client.errors import AccessRefused, ClientError


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def fields(phantom) -> dict:
    return {"images": v1_base64(phantom), "threshold": "250"}


def message(response) -> str:
    return response.json()[0]["content"]


@pytest_twisted.ensureDeferred
async def test_oidc_tokens_through_the_server(serve, phantom, issuer, tmp_path, caplog):  # noqa: F811
    caplog.set_level(logging.DEBUG)
    service = await serve(ThresholdApp(), state_dir=str(tmp_path), oidc_issuer=issuer.issuer, oidc_audience=AUDIENCE)
    info = (await call("GET", service.url + "/info")).json()
    assert info["access"]["methods"] == ["oidc"] and info["access"]["oidc"]["issuer"] == issuer.issuer
    rsa_key = issuer.keys[0]
    good = rsa_key.sign(claims(issuer))
    served = await slicer_post(service.url + "/predict", fields(phantom), headers=bearer(good))
    assert served.status_code == 200, served.text

    metrics_only = rsa_key.sign(claims(issuer, realm_access={"roles": ["metrics"]}))
    forbidden = await slicer_post(service.url + "/predict", fields(phantom), headers=bearer(metrics_only))
    assert forbidden.status_code == 403 and "oidc:alice" in message(forbidden) and "'predict'" in message(forbidden)
    assert (await call("GET", service.url + "/metrics", headers=bearer(metrics_only))).status_code == 200

    header = base64.urlsafe_b64encode(json.dumps({"alg": "none", "typ": "JWT"}).encode()).rstrip(b"=").decode()
    payload = base64.urlsafe_b64encode(json.dumps(claims(issuer)).encode()).rstrip(b"=").decode()
    attacks = {
        "alg none": f"{header}.{payload}.",
        "HS256 with the public key": forged(
            {"alg": "HS256", "typ": "JWT", "kid": rsa_key.kid},
            claims(issuer),
            lambda data: hmac.new(rsa_key.public_pem(), data, hashlib.sha256).digest(),
        ),
        "unknown kid": Key("RSA").sign(claims(issuer)),
        "tampered": good.split(".")[0] + "." + payload + "." + good.split(".")[2],
        "expired": rsa_key.sign(claims(issuer, exp=1_000_000_000, iat=999_999_000)),
        "wrong issuer": rsa_key.sign(claims(issuer, iss="https://elsewhere/realms/tomaat")),
        "wrong audience": rsa_key.sign(claims(issuer, aud="another-client")),
    }
    for what, token in attacks.items():
        refused = await slicer_post(service.url + "/predict", fields(phantom), headers=bearer(token))
        assert refused.status_code == 401, what
        assert 'error="invalid_token"' in refused.headers["WWW-Authenticate"], what
        for part in token.split("."):
            if len(part) > 8:
                assert part not in refused.text, what

    client = AsyncClient(service.url, token=good, known_hosts=str(tmp_path / "kh.json"))
    try:
        result = await client.predict({"images": phantom, "threshold": 250})
        assert_same_grid(result["labels"], phantom)
    finally:
        await client.close()
    logged = "\n".join(record.getMessage() for record in caplog.records)
    for token in [good, metrics_only, *attacks.values()]:
        assert token not in logged and token.split(".")[1] not in logged


@pytest_twisted.ensureDeferred
async def test_client_certificates_through_the_server(serve, phantom, pki, tmp_path):  # noqa: F811
    service = await serve(ThresholdApp(), tls=True, state_dir=str(tmp_path), client_ca=str(pki.ours.path))
    inputs = {"images": phantom, "threshold": 250}

    async def predict_with(client_cert):
        client = AsyncClient(
            service.url, client_cert=client_cert, fingerprint=service.fingerprint, known_hosts=str(tmp_path / "kh")
        )
        try:
            return await client.predict(inputs)
        finally:
            await client.close()

    result = await predict_with(pki.alice)
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(result["labels"]), (sitk.GetArrayFromImage(phantom) >= 250).astype(np.uint8)
    )
    with pytest.raises(AccessRefused, match="needs credentials"):
        await predict_with(None)  # no certificate: the handshake passes, the gate answers 401
    with pytest.raises(ClientError) as refused:
        await predict_with(pki.mallory)  # another CA's certificate: the handshake fails
    assert not isinstance(refused.value, AccessRefused)
    assert (await call("GET", service.url + "/health")).status_code == 200


def _records(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


@pytest_twisted.ensureDeferred
async def test_audit_chain_over_a_thousand_requests_and_a_rotation(serve, phantom, tmp_path):
    store = TokenStore(str(tmp_path / "state"))
    token = store.create("clinician", ["predict"])
    log_path = str(tmp_path / "audit" / "audit.log")
    service = await serve(
        ThresholdApp(), state_dir=str(tmp_path / "state"), audit_log=log_path, audit_rotate_bytes=256 * 1024,
        audit_fsync="interval",
    )  # fmt: skip
    body = fields(phantom)
    sent_digest = hashlib.sha256(body["images"].encode("ascii")).hexdigest()
    first = await slicer_post(service.url + "/predict", body, headers=bearer(token))
    assert first.status_code == 200
    for _ in range(998):
        response = await slicer_post(service.url + "/predict", body, headers=bearer(token))
        assert response.status_code == 200
    assert (await slicer_post(service.url + "/predict", body)).status_code == 401  # refusals are recorded too
    await service.stop()

    assert os.path.exists(log_path + ".1"), "no rotation happened"
    result = CliRunner().invoke(audit, ["verify", log_path])
    assert result.exit_code == 0, result.output
    assert "ok: 1000 records in" in result.output

    records = _records(log_path + ".1") + _records(log_path)
    served = records[0]
    assert served["identity"] == "token:clinician" and served["status"] == 200 and served["route"] == "POST /predict"
    assert served["inputs"]["images"]["sha256"] == sent_digest
    assert served["inputs"]["images"]["shape"] == list(phantom.GetSize())
    assert served["outputs"][0]["type"] == "LabelVolume" and len(served["outputs"][0]["sha256"]) == 64
    assert served["service"] == {"name": "Threshold", "version": "1.0"}
    assert {"receive", "parse", "decode", "inference", "encode"} <= set(served["stages"])
    assert records[-1]["status"] == 401 and records[-1]["identity"] is None
    text = open(log_path + ".1").read() + open(log_path).read()
    assert token not in text and token[4:] not in text

    # a one-byte edit of the server's own log is found, by line
    with open(log_path, "r+b") as handle:
        lines = handle.read().split(b"\n")
        lines[2] = lines[2].replace(b'"status":200', b'"status":201', 1)
        handle.seek(0)
        handle.write(b"\n".join(lines))
    edited = CliRunner().invoke(audit, ["verify", log_path])
    assert edited.exit_code == 1 and f"{os.path.basename(log_path)}:3:" in edited.output


@pytest_twisted.ensureDeferred
async def test_requests_refused_while_the_audit_log_cannot_be_written(serve, phantom, tmp_path, monkeypatch):
    store = TokenStore(str(tmp_path / "state"))
    token = store.create("clinician", ["predict"])
    log_path = str(tmp_path / "audit.log")
    service = await serve(ThresholdApp(), state_dir=str(tmp_path / "state"), audit_log=log_path)
    assert (await slicer_post(service.url + "/predict", fields(phantom), headers=bearer(token))).status_code == 200

    real_append = service.recorder.log.append

    def disk_full(record):
        raise AuditError("audit.log: No space left on device")

    monkeypatch.setattr(service.recorder.log, "append", disk_full)
    unrecorded = await slicer_post(service.url + "/predict", fields(phantom), headers=bearer(token))
    assert unrecorded.status_code == 503 and "audit log" in message(unrecorded)
    assert "LabelVolume" not in unrecorded.text  # the computed answer was not sent
    again = await slicer_post(service.url + "/predict", fields(phantom), headers=bearer(token))
    assert again.status_code == 503 and again.headers["Retry-After"] == "30"
    assert str(tmp_path) not in again.text

    monkeypatch.setattr(service.recorder.log, "append", real_append)
    deadline = time.monotonic() + 10  # the server tries the log again once a second
    while (await slicer_post(service.url + "/predict", fields(phantom), headers=bearer(token))).status_code != 200:
        assert time.monotonic() < deadline, "the server never came back once its audit log could be written"
    result = CliRunner().invoke(audit, ["verify", log_path])
    assert result.exit_code == 0, result.output


@pytest_twisted.ensureDeferred
async def test_audit_optional_serves_unrecorded(serve, phantom, tmp_path, monkeypatch):
    log_path = str(tmp_path / "audit.log")
    service = await serve(ThresholdApp(), state_dir=str(tmp_path), audit_log=log_path, audit_required=False)

    def disk_full(record):
        raise AuditError("audit.log: No space left on device")

    monkeypatch.setattr(service.recorder.log, "append", disk_full)
    assert (await slicer_post(service.url + "/predict", fields(phantom))).status_code == 200


@pytest_twisted.ensureDeferred
async def test_a_delayed_prediction_is_traced_from_request_to_collection(serve, phantom, tmp_path):
    token = TokenStore(str(tmp_path / "state")).create("clinician", ["predict"])
    log_path = str(tmp_path / "audit.log")
    service = await serve(ThresholdApp(), state_dir=str(tmp_path / "state"), audit_log=log_path)
    asked = await slicer_post(
        service.url + "/predict", fields(phantom), headers={**bearer(token), "Prefer": "respond-async"}
    )
    request_id = asked.json()[0]["request_id"]
    collected = await collect_when_done(service.url, request_id, headers=bearer(token))
    assert collected.status_code == 200
    await service.stop()
    records = _records(log_path)
    traced = [record for record in records if record.get("request_id") == request_id]
    # the 202 and the work's own record are written as each happens: in either order
    assert sorted((r["route"], r["status"]) for r in traced[:2]) == [("POST /predict", 200), ("POST /predict", 202)]
    [work] = [record for record in traced if record.get("delayed")]
    assert work["status"] == 200 and work["outputs"][0]["type"] == "LabelVolume"
    assert work["inputs"]["images"]["sha256"] == hashlib.sha256(fields(phantom)["images"].encode()).hexdigest()
    assert traced[-1]["route"] == "POST /responses" and traced[-1]["status"] == 200
    assert all(record["identity"] == "token:clinician" for record in traced)
    assert CliRunner().invoke(audit, ["verify", log_path]).exit_code == 0
