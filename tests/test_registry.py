"""The registry over real HTTP on real ports, against SQLite and PostgreSQL alike."""

from __future__ import annotations

import json
import time

import pytest
import pytest_twisted
import test_registry_support as support
from click.testing import CliRunner
from test_registry_support import (
    BACKENDS,
    assert_no_key_material,
    call,
    dump_database,
    eventually,
    get_json,
    make_key,
    payload,
    post,
    start_registry,
)
from twisted.internet import defer
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from tomaat.registry import cli, store
from tomaat.registry.announcement import ANNOUNCED
from tomaat.registry.keys import generate_key, hash_key

REQUIRED = ("api_key", *ANNOUNCED)

# fixtures shared with the other registry tests
db = support.db
registry = support.registry
logs = support.logs


async def listed(service) -> list[dict]:
    return await get_json(service.url + "/discover")


@pytest_twisted.ensureDeferred
async def test_announce_lists_the_service_without_its_key(registry, db):
    key, _ = make_key(db)
    before = time.time()
    code, answer = await post(registry.url + "/announce", payload(key))
    assert (code, answer["status"], answer["error"]) == (200, 0, "")
    services = await listed(registry)
    assert len(services) == 1
    entry = services[0]
    assert entry["api_key"] == ""
    assert entry["SID"] == answer["SID"]
    assert {name: entry[name] for name in ANNOUNCED} == {name: payload(key)[name] for name in ANNOUNCED}
    assert before <= entry["creation_time"] <= time.time()
    health = await get_json(registry.url + "/health")
    assert health["status"] == "ok" and health["services"] == 1


@pytest_twisted.ensureDeferred
async def test_an_unknown_key_is_refused_and_not_listed(registry, db):
    make_key(db)
    code, answer = await post(registry.url + "/announce", payload(generate_key()))
    assert code == 401
    assert answer["status"] > 0 and "api_key" in answer["error"]
    assert await listed(registry) == []


@pytest_twisted.ensureDeferred
async def test_each_missing_field_is_counted(registry, db):
    key, _ = make_key(db)
    for name in REQUIRED:
        body = payload(key)
        del body[name]
        code, answer = await post(registry.url + "/announce", body)
        assert (code, answer["status"]) == (400, 1), name
        assert f"missing field '{name}'" in answer["error"]
    code, answer = await post(registry.url + "/announce", {})
    assert (code, answer["status"]) == (400, len(REQUIRED))
    body = {name: value for name, value in payload(key).items() if name not in ("name", "task", "anatomy")}
    code, answer = await post(registry.url + "/announce", body)
    assert (code, answer["status"]) == (400, 3)
    assert await listed(registry) == []


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"prediction_url": "ftp://host/predict"}, "invalid prediction_url"),
        ({"prediction_url": "javascript:alert(1)"}, "invalid prediction_url"),
        ({"interface_url": "http:///interface"}, "no host"),
        ({"interface_url": "https://user:secret@host/interface"}, "user:password@"),
        ({"prediction_url": "http://host/ predict"}, "printable ASCII"),
        ({"name": "x" * 201}, "name is 201 characters long; expected at most 200"),
        ({"description": "d" * 4001}, "expected at most 4000"),
        ({"modality": 3}, "invalid modality: a JSON int; expected a string"),
        ({"task": "  "}, "empty task"),
        ({"anatomy": "pro\x00state"}, "control characters"),
        ({"api_key": "0123"}, "invalid api_key"),
    ],
)
@pytest.mark.parametrize("db", BACKENDS[:1], indirect=True)
@pytest_twisted.ensureDeferred
async def test_invalid_fields_are_named(registry, db, changes, expected):
    key, _ = make_key(db)
    code, answer = await post(registry.url + "/announce", payload(key, **changes))
    assert (code, answer["status"]) == (400, 1)
    assert expected in answer["error"]
    assert "secret" not in answer["error"]


@pytest.mark.parametrize("db", BACKENDS[:1], indirect=True)
@pytest_twisted.ensureDeferred
async def test_bodies_that_are_not_json_objects(registry):
    for body, expected in [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON list; expected a JSON object"),
        (b"\xff\xfe", "not UTF-8"),
        (b"", "not valid JSON"),
    ]:
        code, answer = await post(registry.url + "/announce", body)
        assert (code, answer["status"]) == (400, 1)
        assert expected in answer["error"]


@implementer(IBodyProducer)
class _Chunked:
    """A body of unknown length, so it travels chunked, without a Content-Length to refuse early."""

    length = UNKNOWN_LENGTH

    def __init__(self, data: bytes):
        self.data = data

    def startProducing(self, consumer):
        for start in range(0, len(self.data), 8192):
            consumer.write(self.data[start : start + 8192])
        return defer.succeed(None)

    def pauseProducing(self):
        pass

    def stopProducing(self):
        pass


@pytest.mark.parametrize("db", BACKENDS[:1], indirect=True)
@pytest_twisted.ensureDeferred
async def test_oversized_bodies_get_413(registry, db):
    key, _ = make_key(db)
    big = json.dumps(payload(key, description="x" * 70_000)).encode()
    for body in (big, _Chunked(big)):
        code, _, raw = await call("POST", registry.url + "/announce", body)
        answer = json.loads(raw)
        assert (code, answer["status"]) == (413, 1)
        assert "larger than 65536 bytes" in answer["error"]
    assert await listed(registry) == []
    # just under the limit is fine
    code, answer = await post(registry.url + "/announce", payload(key, description="y" * 3000))
    assert code == 200


@pytest_twisted.ensureDeferred
async def test_discover_filters_ignore_case(registry, db):
    key, _ = make_key(db)
    services = [
        ("MRI", "Prostate", "Segmentation"),
        ("mri", "Brain", "Segmentation"),
        ("CT", "Liver", "Registration"),
    ]
    for number, (modality, anatomy, task) in enumerate(services):
        body = payload(key, prediction_url=f"http://host{number}:9000/predict", modality=modality)
        body.update(anatomy=anatomy, task=task)
        assert (await post(registry.url + "/announce", body))[0] == 200

    async def names(query: str) -> list[tuple]:
        found = await get_json(registry.url + "/discover" + query)
        return [(s["modality"], s["anatomy"], s["task"]) for s in found]

    assert len(await names("")) == 3
    assert sorted(await names("?modality=MRI")) == sorted(services[:2])
    assert await names("?modality=mRi&anatomy=BRAIN") == [services[1]]
    assert await names("?task=registration") == [services[2]]
    assert await names("?modality=CT&task=segmentation") == []
    assert await names("?anatomy=") == await names("")
    # the order clients group by: modality, then anatomy, then task, ignoring case
    assert await names("") == [services[2], services[1], services[0]]


@pytest.mark.parametrize("db", BACKENDS, indirect=True)
@pytest_twisted.ensureDeferred
async def test_announcements_expire_unless_renewed(db):
    key, _ = make_key(db)
    service = await start_registry(db, expiry=0.6)
    try:
        code, first = await post(service.url + "/announce", payload(key))
        assert code == 200 and first["expires_in"] == 0.6
        assert len(await listed(service)) == 1

        async def gone():
            return await listed(service) == []

        await eventually(gone, timeout=5)
        code, again = await post(service.url + "/announce", payload(key))
        assert again["SID"] == first["SID"]
        assert [s["SID"] for s in await listed(service)] == [first["SID"]]
    finally:
        await service.stop()


@pytest_twisted.ensureDeferred
async def test_reannouncing_refreshes_and_keeps_the_sid(registry, db):
    key, _ = make_key(db)
    other_key, _ = make_key(db, "another lab")
    _, first = await post(registry.url + "/announce", payload(key))
    [entry] = await listed(registry)
    _, second = await post(registry.url + "/announce", payload(key, name="Renamed", description="new text"))
    assert second["SID"] == first["SID"]
    [renewed] = await listed(registry)
    assert (renewed["SID"], renewed["name"], renewed["description"]) == (first["SID"], "Renamed", "new text")
    assert renewed["creation_time"] >= entry["creation_time"]
    # the key as read from a key file, newline and all, or upper-cased, is the same key
    for variant in (key + "\n", key.upper()):
        code, same = await post(registry.url + "/announce", payload(variant, name="Renamed"))
        assert (code, same["SID"]) == (200, first["SID"])
    # another URL is another service; the same URL under another key is another service too
    _, elsewhere = await post(registry.url + "/announce", payload(key, prediction_url="http://other:9000/predict"))
    _, foreign = await post(registry.url + "/announce", payload(other_key))
    sids = {first["SID"], elsewhere["SID"], foreign["SID"]}
    assert len(sids) == 3
    assert {s["SID"] for s in await listed(registry)} == sids
    for sid in sids:
        assert key[:6] not in sid and other_key[:6] not in sid


@pytest_twisted.ensureDeferred
async def test_revoking_a_key_removes_its_services_at_once(registry, db):
    key, key_id = make_key(db)
    other_key, _ = make_key(db, "another lab")
    await post(registry.url + "/announce", payload(key))
    await post(registry.url + "/announce", payload(other_key, prediction_url="http://kept:9000/predict"))
    assert len(await listed(registry)) == 2
    result = CliRunner().invoke(cli.main, ["keys", "revoke", key_id, "--db", db])
    assert result.exit_code == 0, result.output
    assert "1 announcement(s) removed" in result.output
    assert [s["prediction_url"] for s in await listed(registry)] == ["http://kept:9000/predict"]
    code, answer = await post(registry.url + "/announce", payload(key))
    assert code == 401 and answer["status"] == 1
    assert len(await listed(registry)) == 1


@pytest_twisted.ensureDeferred
async def test_withdrawal_by_the_announcing_key_only(registry, db):
    key, _ = make_key(db)
    other_key, _ = make_key(db, "another lab")
    url = payload(key)["prediction_url"]
    await post(registry.url + "/announce", payload(key))
    code, answer = await post(registry.url + "/withdraw", {"api_key": other_key, "prediction_url": url})
    assert code == 404 and answer["status"] == 1
    code, answer = await post(registry.url + "/withdraw", {"api_key": generate_key(), "prediction_url": url})
    assert code == 401
    code, answer = await post(registry.url + "/withdraw", {"api_key": key})
    assert code == 400 and "missing field 'prediction_url'" in answer["error"]
    assert len(await listed(registry)) == 1
    code, answer = await post(registry.url + "/withdraw", {"api_key": key, "prediction_url": url})
    assert (code, answer["status"]) == (200, 0)
    assert await listed(registry) == []
    code, answer = await post(registry.url + "/withdraw", {"api_key": key, "prediction_url": url})
    assert code == 404 and "may have expired" in answer["error"]


@pytest_twisted.ensureDeferred
async def test_the_html_page_groups_and_escapes(registry, db):
    key, _ = make_key(db)
    hostile = payload(
        key,
        name="<script>alert('name')</script>",
        description='"><img src=x onerror=alert(1)>',
        modality="MRI & <b>CT</b>",
    )
    await post(registry.url + "/announce", hostile)
    await post(registry.url + "/announce", payload(key, prediction_url="http://b:9000/predict", modality="CT"))
    code, headers, raw = await call("GET", registry.url + "/")
    page = raw.decode()
    assert code == 200
    assert headers.getRawHeaders("content-type") == ["text/html; charset=utf-8"]
    assert "default-src 'none'" in headers.getRawHeaders("content-security-policy")[0]
    assert "<script>" not in page and "<img" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(&#x27;name&#x27;)&lt;/script&gt;" in page
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in page
    assert page.index("<h2>CT</h2>") < page.index("<h2>MRI &amp; &lt;b&gt;CT&lt;/b&gt;</h2>")
    assert page.index("<h3>Prostate</h3>") < page.index("<h4>Segmentation</h4>")
    # each service links to the browser page it serves beside /predict
    assert (
        '<a class="page" href="http://b:9000/app/" rel="nofollow noopener noreferrer">open in the browser</a>' in page
    )


@pytest_twisted.ensureDeferred
async def test_no_key_material_anywhere(registry, db, logs):
    key, _ = make_key(db)
    revoked, revoked_id = make_key(db, "revoked lab")
    answers = [
        await post(registry.url + "/announce", payload(key)),
        await post(registry.url + "/announce", payload(revoked)),
        await post(registry.url + "/announce", payload(key, name="")),  # refused, key well-formed
        await post(registry.url + "/announce", payload(key.upper(), prediction_url="http://upper:9000/predict")),
    ]
    CliRunner().invoke(cli.main, ["keys", "revoke", revoked_id, "--db", db])
    answers.append(await post(registry.url + "/announce", payload(revoked)))
    answers.append(
        await post(registry.url + "/withdraw", {"api_key": key, "prediction_url": "http://upper:9000/predict"})
    )
    answers.append(await post(registry.url + "/withdraw", {"api_key": revoked, "prediction_url": "http://x:1/p"}))
    assert [code for code, _ in answers] == [200, 200, 400, 200, 401, 200, 401]
    discover = json.dumps(await listed(registry))
    _, _, page = await call("GET", registry.url + "/")
    _, _, health = await call("GET", registry.url + "/health")
    keys_list = CliRunner().invoke(cli.main, ["keys", "list", "--db", db])
    keys_json = CliRunner().invoke(cli.main, ["keys", "list", "--json", "--db", db])
    for secret in (key, revoked):
        assert_no_key_material(secret, discover, "/discover")
        assert_no_key_material(secret, page.decode(), "the HTML page")
        assert_no_key_material(secret, health.decode(), "/health")
        assert_no_key_material(secret, json.dumps(answers), "the answers")
        assert_no_key_material(secret, keys_list.output + keys_json.output, "keys list")
        assert_no_key_material(secret, logs.text, "the logs")
        assert_no_key_material(secret, dump_database(db), "the database")
    assert "refused: unknown or revoked API key" in logs.text  # the logs were captured
    assert hash_key(key) in dump_database(db)  # and the database was read


def test_a_failed_write_leaves_no_half_written_row(db):
    key, _ = make_key(db)
    opened = store.SyncStore(db)
    fields = {name: payload(key)[name] for name in ANNOUNCED}
    # past validation, straight to the store: the key's last use is written, then the CHECK fails
    with pytest.raises(Exception, match="(?i)check"):
        opened.run(store.announce, hash_key(key), {**fields, "name": "x" * 500}, time.time())
    [entry] = opened.run(store.list_keys)
    assert entry["last_used"] is None and entry["services"] == 0
    assert opened.run(store.live_services, 0.0) == []
    assert opened.run(store.announce, hash_key(key), fields, time.time())
    assert len(opened.run(store.live_services, 0.0)) == 1


@pytest_twisted.ensureDeferred
async def test_a_restarted_registry_keeps_its_announcements(db):
    key, _ = make_key(db)
    service = await start_registry(db)
    _, answer = await post(service.url + "/announce", payload(key))
    await service.stop()
    service = await start_registry(db)  # the schema exists now: creating it again must be harmless
    try:
        assert [s["SID"] for s in await listed(service)] == [answer["SID"]]
    finally:
        await service.stop()


@pytest.mark.parametrize("db", BACKENDS[:1], indirect=True)
@pytest_twisted.ensureDeferred
async def test_unknown_endpoints_and_methods_answer_json_with_cors(registry):
    code, headers, raw = await call("GET", registry.url + "/nowhere")
    assert code == 404 and "no such endpoint: GET /nowhere" in json.loads(raw)["error"]
    assert headers.getRawHeaders("access-control-allow-origin") == ["*"]
    code, _, raw = await call("GET", registry.url + "/announce")
    assert code == 405 and json.loads(raw)["status"] == 1
    code, headers, _ = await call("OPTIONS", registry.url + "/announce")
    assert code == 204 and headers.getRawHeaders("access-control-allow-origin") == ["*"]
