"""Who may use a prediction server: service-issued tokens, scopes, network rules, ownership and fair shares,
on real servers over real HTTP (tests/test_access_oidc.py and tests/test_access_certificates.py: the others)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import pytest_twisted
import requests
from clients import call, collect_when_done, slicer_post
from conftest import image_bytes, v1_base64
from requests_toolbelt import MultipartEncoder
from twisted.internet.threads import deferToThread

from examples.threshold import ThresholdApp
from tomaat.access.gate import Access
from tomaat.access.network import network_identity, parse_networks
from tomaat.access.tokens import TokenError, TokenStore
from tomaat.protocol.outputs import decode_item
from tomaat.server.gpu_lock import FairLock, owned_by

FIELDS_THRESHOLD = "250"


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


async def predict(service, phantom, token: str | None = None, **headers):
    fields = {"images": v1_base64(phantom), "threshold": FIELDS_THRESHOLD}
    return await slicer_post(service.url + "/predict", fields, headers={**(bearer(token) if token else {}), **headers})


def refusal(response) -> str:
    [item] = response.json()
    assert item["type"] == "PlainText" and item["label"] == "Error!"
    return item["content"]


@pytest.fixture
def tokens(tmp_path):
    return TokenStore(str(tmp_path / "state"))


@pytest_twisted.ensureDeferred
async def test_tokens_created_used_revoked_and_expired(serve, phantom, tokens, caplog):
    caplog.set_level(logging.DEBUG)
    clinician = tokens.create("clinician", ["predict"])
    soon = tokens.create("visitor", ["predict"], expires=time.time() + 2)
    service = await serve(ThresholdApp(), state_dir=tokens.path.rsplit("/", 1)[0])

    anonymous = await predict(service, phantom)
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"] == 'Bearer realm="tomaat"'
    assert "needs an identity" in refusal(anonymous) and "token" in refusal(anonymous)

    served = await predict(service, phantom, clinician)
    assert served.status_code == 200, served.text
    assert decode_item(served.json()[0]).GetSize() == phantom.GetSize()
    assert (await predict(service, phantom, soon)).status_code == 200

    wrong = await predict(service, phantom, clinician[:-2] + ("AA" if not clinician.endswith("AA") else "BB"))
    assert wrong.status_code == 401 and 'error="invalid_token"' in wrong.headers["WWW-Authenticate"]
    assert "unknown, revoked or expired" in refusal(wrong)
    basic = await predict(service, phantom, Authorization="Basic dXNlcjpwYXNz")
    assert basic.status_code == 401 and "'Basic' is not accepted" in refusal(basic)

    tokens.revoke("clinician")  # a running server sees it at its next request
    assert (await predict(service, phantom, clinician)).status_code == 401
    deadline = time.time() + 10
    while time.time() < tokens.list()[1]["expires"]:
        assert time.time() < deadline
        await deferToThread(time.sleep, 0.1)
    expired = await predict(service, phantom, soon)
    assert expired.status_code == 401 and "expired" in refusal(expired)

    log_text = "\n".join(record.getMessage() for record in caplog.records)
    for token in (clinician, soon):
        assert token not in log_text and token[4:] not in log_text
        for answer in (anonymous, wrong, expired):
            assert token not in answer.text


@pytest_twisted.ensureDeferred
async def test_scopes_403_names_the_scope_and_tokens_guard_only_their_scopes(serve, phantom, tokens):
    watcher = tokens.create("prometheus", ["metrics"])
    service = await serve(ThresholdApp(), state_dir=tokens.path.rsplit("/", 1)[0])
    # only `metrics` is covered by a token: prediction stays open, metrics needs one
    assert (await predict(service, phantom)).status_code == 200
    assert (await call("GET", service.url + "/metrics")).status_code == 401
    metrics = await call("GET", service.url + "/metrics", headers=bearer(watcher))
    assert metrics.status_code == 200 and "tomaat_predictions_total" in metrics.text
    assert watcher not in metrics.text

    clinician = tokens.create("clinician", ["predict"])
    refused = await call("GET", service.url + "/metrics", headers=bearer(clinician))
    assert refused.status_code == 403
    assert "needs the scope 'metrics'" in refusal(refused) and "token:clinician" in refusal(refused)
    assert 'error="insufficient_scope"' in refused.headers["WWW-Authenticate"]
    no_predict = await predict(service, phantom, watcher)
    assert no_predict.status_code == 403 and "'predict'" in refusal(no_predict)
    assert (
        await call("GET", service.url + "/announcePoint", headers=bearer(clinician))
    ).status_code == 200  # admin not covered

    for open_route in ("/health", "/info", "/interface", "/app/"):  # load balancers and discovery
        assert (await call("GET", service.url + open_route)).status_code == 200, open_route
    info = (await call("GET", service.url + "/info")).json()
    assert info["access"] == {"methods": ["token"], "required": ["metrics", "predict"]}


@pytest_twisted.ensureDeferred
async def test_info_can_be_closed_too(serve, tokens):
    token = tokens.create("clinician", ["predict"])
    service = await serve(ThresholdApp(), state_dir=tokens.path.rsplit("/", 1)[0], open_info=False)
    assert (await call("GET", service.url + "/info")).status_code == 401
    assert (await call("GET", service.url + "/interface")).status_code == 401
    assert (await call("GET", service.url + "/info", headers=bearer(token))).status_code == 200
    assert (await call("GET", service.url + "/health")).status_code == 200
    assert (await call("GET", service.url + "/app/")).status_code == 200  # the page asks for the token itself


def _raw_exchange(port: int, head: bytes, body: bytes = b"", timeout: float = 10.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        connection.sendall(head + body)
        answer = b""
        while True:
            chunk = connection.recv(65536)
            if not chunk:
                return answer
            answer += chunk


@pytest_twisted.ensureDeferred
async def test_refused_before_the_body_is_received(serve, tokens):
    tokens.create("clinician", ["predict"])
    service = await serve(ThresholdApp(), state_dir=tokens.path.rsplit("/", 1)[0])
    port = service.port.getHost().port
    # 1 GiB announced, nothing sent: the answer comes at once, from the headers alone
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 1073741824\r\n\r\n"
    started = time.monotonic()
    answer = await deferToThread(_raw_exchange, port, head)
    assert answer.startswith(b"HTTP/1.1 401 Unauthorized"), answer[:200]
    assert b'WWW-Authenticate: Bearer realm="tomaat"' in answer
    assert b"needs an identity" in answer
    assert time.monotonic() - started < 5
    assert service.budget.used == 0
    forged = head.replace(b"\r\n\r\n", b"\r\nAuthorization: Bearer tmt_" + b"A" * 43 + b"\r\n\r\n", 1)
    assert (await deferToThread(_raw_exchange, port, forged)).startswith(b"HTTP/1.1 401")
    assert (await call("GET", service.url + "/health")).status_code == 200  # still serving


@pytest_twisted.ensureDeferred
async def test_stored_volumes_and_delayed_results_belong_to_their_identity(serve, phantom, tokens):
    alice, bob = tokens.create("alice", ["predict"]), tokens.create("bob", ["predict"])
    service = await serve(ThresholdApp(), state_dir=tokens.path.rsplit("/", 1)[0])
    files = {"volume": ("scan.mha", image_bytes(phantom, ".mha"), "application/octet-stream")}
    stored = await call("POST", service.url + "/volumes", files=files, headers=bearer(alice))
    assert stored.status_code == 201, stored.text
    volume_id = stored.json()["volume_id"]
    unknown_id = "0" * 32
    fields = {"images": f"volume_id:{volume_id}", "threshold": "250"}
    theirs = await slicer_post(service.url + "/predict", fields, headers=bearer(bob))
    nobodys = await slicer_post(
        service.url + "/predict", {**fields, "images": f"volume_id:{unknown_id}"}, headers=bearer(bob)
    )
    assert theirs.status_code == nobodys.status_code == 404
    assert refusal(theirs) == refusal(nobodys).replace(unknown_id, volume_id)
    assert (await call("DELETE", f"{service.url}/volumes/{volume_id}", headers=bearer(bob))).status_code == 404
    assert (await slicer_post(service.url + "/predict", fields, headers=bearer(alice))).status_code == 200

    delayed = await predict(service, phantom, alice, Prefer="respond-async")
    assert delayed.status_code == 202
    request_id = delayed.json()[0]["request_id"]
    stolen = await slicer_post(service.url + "/responses", {"request_id": request_id}, headers=bearer(bob))
    never = await slicer_post(service.url + "/responses", {"request_id": "f" * 32}, headers=bearer(bob))
    assert stolen.status_code == never.status_code == 404
    assert refusal(stolen) == refusal(never).replace("f" * 32, request_id)
    mine = await collect_when_done(service.url, request_id, headers=bearer(alice))
    assert mine.status_code == 200 and decode_item(mine.json()[0]).GetSize() == phantom.GetSize()
    assert (await call("DELETE", f"{service.url}/volumes/{volume_id}", headers=bearer(alice))).status_code == 204


def test_network_rules_edges_ipv4_and_ipv6():
    networks = parse_networks(["10.1.0.0/16", "192.168.7.7", "fd00:1::/32,::1"])
    scopes = frozenset({"predict"})
    inside = ["10.1.0.0", "10.1.255.255", "192.168.7.7", "::ffff:10.1.2.3", "fd00:1::", "fd00:1:ffff:ffff::1", "::1"]
    outside = ["10.0.255.255", "10.2.0.0", "192.168.7.8", "fd00:2::", "fd00::", "::2", "not-an-address", ""]
    for host in inside:
        found = network_identity(networks, host, scopes)
        assert found is not None and found.method == "network" and found.scopes == scopes, host
    for host in outside:
        assert network_identity(networks, host, scopes) is None, host
    with pytest.raises(ValueError, match="host bits set"):
        parse_networks(["10.1.0.1/16"])
    with pytest.raises(ValueError, match="expected an address or a network"):
        parse_networks(["10.1.0.0/33"])


@pytest_twisted.ensureDeferred
async def test_network_rule_serves_a_slicer_client_and_refuses_others(serve, phantom, tmp_path):
    inside = await serve(ThresholdApp(), state_dir=str(tmp_path / "a"), allow_from="127.0.0.0/8")
    served = await predict(inside, phantom)  # TOMAAT-Slicer's v1 request: no credentials at all
    assert served.status_code == 200 and [i["type"] for i in served.json()] == ["LabelVolume", "PlainText"]
    assert (await call("GET", inside.url + "/metrics")).status_code == 403  # the network grants predict only
    assert (await call("GET", inside.url + "/info")).json()["access"]["methods"] == ["network"]

    outside = await serve(ThresholdApp(), state_dir=str(tmp_path / "b"), allow_from="10.0.0.0/8,fd00::/8")
    refused = await predict(outside, phantom)
    assert refused.status_code == 401 and "network" in refusal(refused)


@pytest_twisted.ensureDeferred
async def test_network_rule_on_ipv6_loopback(serve, phantom, tmp_path):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        service = await serve(ThresholdApp(), state_dir=str(tmp_path), interface="::1", allow_from="::1/128")
    except Exception as error:  # an IPv6-less container
        pytest.skip(f"cannot listen on ::1: {error}")
    url = f"http://[::1]:{service.port.getHost().port}"
    fields = {"images": v1_base64(phantom), "threshold": "250"}
    assert (await slicer_post(url + "/predict", fields)).status_code == 200


class Napping(ThresholdApp):
    """Each request holds its worker thread for a fixed time, so shares show in latencies."""

    def inference(self, data):
        time.sleep(0.3)
        return super().inference(data)


@pytest_twisted.ensureDeferred
async def test_fair_share_one_identity_flooding_leaves_others_their_share(serve, phantom, tokens):
    flood, single = tokens.create("flood", ["predict"]), tokens.create("single", ["predict"])
    service = await serve(Napping(), state_dir=tokens.path.rsplit("/", 1)[0], threads=4, max_queue=64)
    started = time.monotonic()
    assert (await predict(service, phantom, single)).status_code == 200
    unloaded = time.monotonic() - started

    barrier = threading.Barrier(32)
    scan = v1_base64(phantom)

    def flood_one(_):
        encoder = MultipartEncoder(fields={"images": scan, "threshold": "250"})
        headers = {"Content-Type": encoder.content_type, **bearer(flood)}
        barrier.wait(timeout=20)
        return requests.post(service.url + "/predict", data=encoder, headers=headers)

    def flood_all():  # 32 threads of its own: the reactor's pool has 10
        with ThreadPoolExecutor(32) as pool:
            return list(pool.map(flood_one, range(32)))

    flooding = deferToThread(flood_all)
    while service.worker.in_flight < 3:  # the flood holds its share of the threads
        await deferToThread(time.sleep, 0.01)
    started = time.monotonic()
    mine = await predict(service, phantom, single)
    loaded = time.monotonic() - started
    results = await flooding
    assert mine.status_code == 200
    statuses = sorted(response.status_code for response in results)
    assert statuses.count(200) >= 3 and statuses.count(429) >= 20, statuses
    limited = next(r for r in results if r.status_code == 429)
    assert limited.headers["Retry-After"] == "5" and "token:flood has 3 requests" in refusal(limited)
    assert loaded <= 2 * unloaded, (loaded, unloaded)


def test_token_store_refuses_bad_names_scopes_and_duplicates(tokens):
    tokens.create("ok.name", ["predict"])
    for name, scopes, fragment in (
        ("bad name", ["predict"], "expected 1 to 64"),
        ("x", ["root"], "expected one or more of predict, metrics, admin"),
        ("x", [], "expected one or more"),
        ("ok.name", ["predict"], "exists"),
    ):
        with pytest.raises(TokenError, match=fragment):
            tokens.create(name, scopes)
    text = open(tokens.path).read()
    assert "tmt_" not in text  # hashes only


def test_open_server_has_no_rules():
    access = Access()
    assert access.required() == frozenset() and access.methods() == [] and access.describe()["methods"] == []


def test_the_gpu_lock_goes_to_the_identity_served_least_recently():
    lock, order = FairLock(), []
    lock.acquire()  # held by "a" (the default owner here is "")
    waiting = []

    def wait_for_lock(owner: str, label: str):
        with owned_by(owner):
            with lock:
                order.append(label)

    for owner, label in (("a", "a1"), ("a", "a2"), ("a", "a3"), ("b", "b1")):
        thread = threading.Thread(target=wait_for_lock, args=(owner, label))
        thread.start()
        waiting.append(thread)
        deadline = time.monotonic() + 5
        while sum(len(queue) for queue in lock._waiting.values()) < len(waiting):  # queued in this order
            assert time.monotonic() < deadline
            time.sleep(0.001)
    lock.release()
    for thread in waiting:
        thread.join(timeout=10)
    # "a" and "b" had never held it: a1 first (queued first among equals), then b, then a's others in order
    assert order == ["a1", "b1", "a2", "a3"]
    assert not lock.locked()
