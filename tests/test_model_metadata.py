"""Model metadata end to end on real ports: stated by an app, listed in /info, announced, stored, discovered, printed."""

from __future__ import annotations

import json
import math

import pytest
import pytest_twisted
import test_registry_support as support
from client_support import run_cli
from clients import call
from test_registry_support import BACKENDS, eventually, get_json, make_key, payload, post, start_registry

from tomaat import LabelVolume, TomaatApp, Volume
from tomaat.protocol import metadata
from tomaat.server.service import TomaatService

db = support.db  # SQLite, and PostgreSQL where scripts/postgres.sh runs
registry = support.registry

V1_KEYS = {"api_key", "prediction_url", "interface_url", "name", "modality", "anatomy", "task", "description"}
V1_KEYS |= {"SID", "creation_time"}
ACCURACY = [
    {"metric": "Dice", "value": 0.869, "dataset": "PROMISE12 test set"},
    {"metric": "HD95 (mm)", "value": 5, "dataset": "PROMISE12 test set"},
]
STATED = {
    "version": "2.1.0",
    "licence": "CC-BY-NC-4.0",
    "citation": "Milletari F. et al., V-Net, 3DV 2016.\nhttps://doi.org/10.1109/3DV.2016.79",
    "intended_use": "Research on T2-weighted prostate MRI.",
    "disclaimer": "Not for clinical judgement.",
    "accuracy": ACCURACY,
}


class DocumentedApp(TomaatApp):
    name = "Prostate V-Net"
    modality = "MRI"
    anatomy = "prostate"
    task = "segmentation"
    version = STATED["version"]
    licence = STATED["licence"]
    citation = STATED["citation"]
    intended_use = STATED["intended_use"]
    disclaimer = STATED["disclaimer"]
    accuracy = ACCURACY
    input_interface = [Volume("images")]
    output_interface = [LabelVolume("labels")]


class PlainApp(TomaatApp):
    input_interface = [Volume("images")]
    output_interface = [LabelVolume("labels")]


# ---- the server ---------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_info_lists_the_metadata_and_interface_is_unchanged(serve):
    service = await serve(DocumentedApp())
    info = (await call("GET", service.url + "/info")).json()
    assert {name: info[name] for name in metadata.FIELDS} == STATED
    assert info["name"] == "Prostate V-Net" and info["protocol"] == 2
    assert (await call("GET", service.url + "/interface")).json() == [{"type": "volume", "destination": "images"}]
    plain = await serve(PlainApp())
    info = (await call("GET", plain.url + "/info")).json()
    assert {name: info[name] for name in metadata.FIELDS} == {**metadata.empty(), "version": "1"}


@pytest_twisted.ensureDeferred
async def test_the_config_dict_states_metadata_in_upstream_style():
    config = {"name": "Mean threshold", "port": 0, "interface": "127.0.0.1", "tls": False, **STATED}
    config["version"] = 2.1  # upstream configs give numbers; /info has always shown them as text
    service = TomaatService(config, TomaatApp(lambda data: data), [{"type": "volume", "destination": "images"}])
    await service.listen()
    try:
        info = (await call("GET", service.url + "/info")).json()
    finally:
        await service.stop()
    assert {name: info[name] for name in metadata.FIELDS} == {**STATED, "version": "2.1"}


@pytest.mark.parametrize(
    "attributes, expected",
    [
        ({"licence": "x" * 201}, "licence is 201 characters long; expected at most 200"),
        ({"licence": "MIT\nGPL"}, "invalid licence: it contains control characters"),
        ({"citation": ["a paper"]}, "invalid citation: a JSON list; expected a string"),
        ({"accuracy": {"Dice": 0.8}}, "invalid accuracy: a JSON dict; expected a list of at most 20"),
        ({"accuracy": [{"metric": "Dice", "value": 0.8}]}, "accuracy[0] lacks 'dataset'"),
        ({"accuracy": [{"metric": "Dice", "value": "high", "dataset": "d"}]}, "invalid accuracy[0].value: a JSON str"),
        ({"accuracy": [{"metric": "Dice", "value": math.inf, "dataset": "d"}]}, "expected a finite number"),
        ({"accuracy": [ACCURACY[0]] * 21}, "accuracy has 21 results; expected at most 20"),
    ],
)
def test_metadata_the_registry_would_refuse_stops_the_server_at_start(attributes, expected):
    app = type("BadApp", (PlainApp,), attributes)()
    with pytest.raises(ValueError, match="the service's metadata cannot be served or announced") as raised:
        TomaatService(app=app)
    assert expected in str(raised.value)


# ---- the registry -------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_announced_metadata_is_stored_discovered_shown_and_printed(db, tmp_path):
    key, _ = make_key(db)
    registry = await start_registry(db)
    # started by hand: it must withdraw before the registry stops
    service = TomaatService(app=DocumentedApp(), announce=registry.url, api_key=key, port=0, tls=False)
    await service.listen()
    try:

        async def listed():
            return await get_json(registry.url + "/discover")

        [entry] = await eventually(listed)
        assert set(entry) == V1_KEYS | set(metadata.FIELDS)  # v1 clients find every key they read, as before
        assert entry["prediction_url"] == service.public_url + "/predict" and entry["api_key"] == ""
        assert {name: entry[name] for name in metadata.FIELDS} == STATED

        _, _, page = await support.call("GET", registry.url + "/")
        page = page.decode()
        for shown in ("2.1.0", "licence: CC-BY-NC-4.0", "intended use: Research on T2-weighted prostate MRI."):
            assert shown in page
        assert "<li>Dice 0.869 on PROMISE12 test set</li>" in page and "HD95 (mm) 5 on PROMISE12" in page
        assert '<div class="model disclaimer">Not for clinical judgement.</div>' in page

        table = await run_cli(["discover", registry.url], tmp_path)
        assert table.returncode == 0, table.stderr
        indent = " " * 27
        for line in (
            f"{indent}version: 2.1.0",
            f"{indent}licence: CC-BY-NC-4.0",
            f"{indent}cite as: Milletari F. et al., V-Net, 3DV 2016.",
            f"{indent}         https://doi.org/10.1109/3DV.2016.79",  # under the value, not at the margin
            f"{indent}disclaimer: Not for clinical judgement.",
            f"{indent}accuracy:",
            f"{indent}  Dice 0.869 on PROMISE12 test set",
        ):
            assert line in table.stdout.splitlines(), table.stdout
        as_json = await run_cli(["discover", registry.url, "--json"], tmp_path)
        assert json.loads(as_json.stdout)[0]["accuracy"] == ACCURACY

        shown = await run_cli(["interface", service.url], tmp_path)
        assert shown.returncode == 0, shown.stderr
        lines = shown.stdout.splitlines()
        assert lines[0] == "Prostate V-Net 2.1.0"
        for line in (
            "  intended use: Research on T2-weighted prostate MRI.",
            "  accuracy:",
            "    HD95 (mm) 5 on PROMISE12 test set",
        ):
            assert line in lines, shown.stdout
    finally:
        await service.stop()  # withdraws while the registry still answers
        await registry.stop()


@pytest_twisted.ensureDeferred
async def test_servers_that_state_none_announce_as_before(registry, db):
    key, _ = make_key(db)
    code, answer = await post(registry.url + "/announce", payload(key))  # exactly what older servers send
    assert (code, answer["status"]) == (200, 0)
    [entry] = await get_json(registry.url + "/discover")
    assert {name: entry[name] for name in metadata.FIELDS} == metadata.empty()
    # an announcement is the whole state: stated once, then announced without, it is gone
    await post(registry.url + "/announce", payload(key, **STATED))
    [entry] = await get_json(registry.url + "/discover")
    assert entry["accuracy"] == ACCURACY
    await post(registry.url + "/announce", payload(key))
    [entry] = await get_json(registry.url + "/discover")
    assert {name: entry[name] for name in metadata.FIELDS} == metadata.empty()


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"licence": "x" * 201}, "licence is 201 characters long; expected at most 200"),
        ({"version": "1\n2"}, "invalid version: it contains control characters"),
        ({"disclaimer": "beware\x1b[2J"}, "invalid disclaimer: it contains control characters"),
        ({"citation": 5}, "invalid citation: a JSON int; expected a string"),
        ({"accuracy": "0.87"}, "invalid accuracy: a JSON str; expected a list"),
        ({"accuracy": [{"metric": "Dice", "value": 0.8}]}, "accuracy[0] lacks 'dataset'"),
        ({"accuracy": [{"metric": "", "value": 0.8, "dataset": "d"}]}, "empty accuracy[0].metric"),
        ({"accuracy": [{"metric": "Dice", "value": True, "dataset": "d"}]}, "invalid accuracy[0].value: a JSON bool"),
        ({"accuracy": [{"metric": "Dice", "value": math.nan, "dataset": "d"}]}, "expected a finite number"),
        ({"accuracy": [7]}, "invalid accuracy[0]: a JSON int; expected {"),
        ({"accuracy": [ACCURACY[0]] * 21}, "accuracy has 21 results; expected at most 20"),
    ],
)
@pytest.mark.parametrize("db", BACKENDS[:1], indirect=True)
@pytest_twisted.ensureDeferred
async def test_invalid_metadata_is_named_and_counted(registry, db, changes, expected):
    key, _ = make_key(db)
    code, answer = await post(registry.url + "/announce", payload(key, **changes))  # NaN travels as JSON's NaN
    assert (code, answer["status"]) == (400, 1), answer
    assert expected in answer["error"]
    code, answer = await post(registry.url + "/announce", payload(key, name="", **changes))
    assert (code, answer["status"]) == (400, 2)  # counted with the v1 fields' problems
    assert await get_json(registry.url + "/discover") == []


@pytest_twisted.ensureDeferred
async def test_the_longest_metadata_fits_the_store(registry, db):
    """Every limit at once, in characters that JSON escapes: the accuracy column's bound is wide enough."""
    key, _ = make_key(db)
    longest = {name: "\\" * limit for name, limit in metadata.TEXT.items()}
    result = {"metric": '"' * 100, "value": -1.2345678901234567e-300, "dataset": '"' * 200}
    longest["accuracy"] = [result] * metadata.MAX_RESULTS
    code, answer = await post(registry.url + "/announce", payload(key, **longest))
    assert (code, answer["status"]) == (200, 0), answer
    [entry] = await get_json(registry.url + "/discover")
    assert {name: entry[name] for name in metadata.FIELDS} == longest


@pytest.mark.parametrize("db", BACKENDS[:1], indirect=True)
@pytest_twisted.ensureDeferred
async def test_metadata_on_the_page_is_escaped(registry, db):
    key, _ = make_key(db)
    hostile = {
        "version": "<b>9</b>",
        "licence": "<script>alert('licence')</script>",
        "citation": '"><img src=x onerror=alert(1)>',
        "disclaimer": "</div><iframe>",
        "accuracy": [{"metric": "<svg onload=x>", "value": 1, "dataset": "&amp;"}],
    }
    assert (await post(registry.url + "/announce", payload(key, **hostile)))[0] == 200
    _, _, raw = await support.call("GET", registry.url + "/")
    page = raw.decode()
    for tag in ("<script", "<img", "<iframe", "<svg", "<b>"):
        assert tag not in page
    assert "&lt;script&gt;alert(&#x27;licence&#x27;)&lt;/script&gt;" in page
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in page
    assert "<li>&lt;svg onload=x&gt; 1 on &amp;amp;</li>" in page
