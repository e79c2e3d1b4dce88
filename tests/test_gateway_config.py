"""The gateway's configuration and routing rules: mistakes are one line naming the setting, the first rule wins."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from browser_support import ROOT

from tomaat.gateway.config import ConfigError, parse
from tomaat.gateway.rules import route

BASE = {
    "spool": {"folder": "spool"},
    "callers": {"ORTHANC": {"host": "127.0.0.1", "port": 4242}},
    "destinations": {"pacs": {"ae_title": "PACS", "host": "10.0.0.5", "port": 104}},
    "rules": [
        {"name": "chest", "match": {"modality": "CT", "series_description": "*chest*"}, "server": "http://a:1"},
        {"name": "any ct from the scanner", "match": {"modality": ["CT", "PT"], "calling_ae": "SCANNER*"}, "server": "http://b:1", "send_to": "pacs"},
        {"name": "knees", "match": {"body_part": "KNEE"}, "server": "http://c:1", "outputs": ["rtstruct", "sr"]},
    ],
}  # fmt: skip


def series(**values) -> dict:
    return {"modality": "", "series_description": "", "body_part": "", "calling_ae": "ORTHANC", **values}


def test_the_first_matching_rule_wins_without_regard_to_case():
    rules = parse(BASE, "/etc/tomaat").rules
    assert route(rules, series(modality="ct", series_description="Thorax CHEST 1mm")).name == "chest"
    assert route(rules, series(modality="PT", calling_ae="SCANNER2")).name == "any ct from the scanner"
    assert route(rules, series(modality="CT", series_description="Chest", calling_ae="SCANNER2")).name == "chest"
    assert route(rules, series(modality="MR", body_part="knee")).name == "knees"
    assert route(rules, series(modality="MR", body_part="HEAD")) is None


def test_settings_are_read_with_their_defaults():
    config = parse(BASE, "/etc/tomaat")
    assert config.spool == "/etc/tomaat/spool" and config.port == 11112 and config.ae_title == "TOMAAT"
    assert config.rules[0].outputs == ("seg",) and config.rules[0].send_to == "sender"
    assert config.rules[2].outputs == ("rtstruct", "sr") and config.unmatched == "drop"
    assert config.retry.delay(1) == 2.0 and config.retry.delay(3) == 8.0 and config.retry.delay(20) == 300.0


@pytest.mark.parametrize(
    "change, message",
    [
        ({"ae_title": "A" * 17}, "ae_title 'AAAAAAAAAAAAAAAAA': expected an AE title of 1 to 16"),
        ({"callers": {}}, "callers: expected an object of the AE titles allowed to send"),
        ({"rules": [{"server": "ftp://x", "match": {}}]}, "rules[0].server 'ftp://x': expected a prediction server's http(s) URL"),
        ({"rules": [{"server": "http://x", "send_to": "nowhere"}]}, "rules[0].send_to 'nowhere': expected \"sender\" or one of destinations (pacs)"),
        ({"rules": [{"server": "http://x", "match": {"colour": "red"}}]}, "rules[0].match {'colour': 'red'}: expected an object with some of"),
        ({"rules": [{"server": "http://x", "outputs": ["png"]}]}, "rules[0].outputs ['png']: expected a list of some of seg, rtstruct, sr"),
        ({"unmatched": "ignore"}, "unmatched 'ignore': expected \"drop\" (log and delete) or \"hold\""),
        ({"listen": {"port": 70000}}, "listen.port 70000: expected a port number"),
        ({"spool": {"folder": "s", "max_bytes": 0}}, "spool.max_bytes 0: expected a number of at least 1"),
        ({"colour": 1}, "unknown setting 'colour'"),
    ],
)  # fmt: skip
def test_a_mistake_is_one_line_naming_the_setting(change, message):
    with pytest.raises(ConfigError) as error:
        parse({**BASE, **change})
    assert str(error.value).startswith(message)


def test_serve_with_a_broken_configuration_says_so_in_one_line(tmp_path):
    path = tmp_path / "gateway.json"
    path.write_text(json.dumps({**BASE, "unmatched": "ignore"}))
    command = [
        sys.executable,
        "-c",
        "from tomaat.gateway.cli import gateway; gateway()",
        "serve",
        "--config",
        str(path),
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        == 'tomaat: invalid input: unmatched \'ignore\': expected "drop" (log and delete) or "hold" (log and keep)'
    )
    path.write_text("{not json")
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (
        done.returncode == 2
        and done.stderr.startswith(f"tomaat: invalid input: {path}: not JSON")
        and "Traceback" not in done.stderr
    )
