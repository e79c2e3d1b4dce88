"""The gateway's configuration and routing rules: mistakes are one line naming the setting, the first rule wins."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from browser_support import ROOT

from tomaat.gateway.config import ConfigError, Node, Stow, parse
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
    assert config.rules[0].outputs == ("seg",) and config.rules[0].send_to == {"seg": ("sender",)}
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
        ({"rules": [{"server": "http://x", "outputs": ["seg", "sr"], "send_to": {"seg": "sender"}}]}, "rules[0].send_to: output 'sr' is made but sent nowhere"),
        ({"rules": [{"server": "http://x", "send_to": {"seg": ["sender", "nowhere"]}}]}, "rules[0].send_to.seg 'nowhere': expected \"sender\" or one of destinations (pacs)"),
        ({"rules": [{"server": "http://x", "send_to": {"png": "sender"}}]}, "rules[0].send_to {'png': 'sender'}: expected an object of outputs"),
        ({"destinations": {"web": {"kind": "stowrs", "url": "ftp://pacs/dicom-web"}}}, "destinations.web.url 'ftp://pacs/dicom-web': expected a DICOMweb base URL"),
        ({"destinations": {"web": {"kind": "stowrs", "url": "https://u:p@pacs/dicom-web"}}}, "destinations.web.url: expected no credentials in the URL"),
        ({"destinations": {"web": {"kind": "stowrs", "url": "https://pacs", "user": "u", "token_file": "t"}}}, "destinations.web: give user and password_file (basic) or token_file (bearer), not both"),
        ({"destinations": {"web": {"kind": "stowrs", "url": "https://pacs", "token_file": "/nonexistent/token"}}}, "destinations.web.token_file '/nonexistent/token': cannot be read (No such file or directory)"),
        ({"destinations": {"web": {"kind": "wado", "url": "https://pacs"}}}, "destinations.web.kind 'wado': expected \"cstore\" (ae_title, host, port) or \"stowrs\" (url)"),
        ({"retention": -1}, "retention -1: expected a number of at least 0"),
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


def test_outputs_can_go_to_different_destinations_by_c_store_and_stow_rs(tmp_path):
    (tmp_path / "token").write_text("s3cret-token\n")
    (tmp_path / "password").write_text("pa:ss\n")
    destinations: dict = {
        **BASE["destinations"],  # type: ignore[dict-item]
        "web": {"kind": "stowrs", "url": "https://pacs.hospital/dicom-web/", "token_file": "token"},
        "basic": {
            "kind": "stowrs",
            "url": "http://127.0.0.1:8042/dicom-web",
            "user": "gw",
            "password_file": "password",
        },
    }
    rules = [
        {"server": "http://a:1", "send_to": {"seg": "sender", "rtstruct": "web", "sr": ["web", "basic"]}},
        {"server": "http://a:1", "outputs": ["seg", "sr"], "send_to": "web"},
    ]
    config = parse({**BASE, "destinations": destinations, "rules": rules, "retention": 3600}, str(tmp_path))
    first, second = config.rules
    assert first.outputs == ("seg", "rtstruct", "sr")  # the outputs send_to names, when outputs is not given
    assert first.send_to == {"seg": ("sender",), "rtstruct": ("web",), "sr": ("web", "basic")}
    assert second.send_to == {"seg": ("web",), "sr": ("web",)}
    web, basic = config.destinations["web"], config.destinations["basic"]
    assert isinstance(web, Stow) and isinstance(basic, Stow) and isinstance(config.destinations["pacs"], Node)
    assert web.url == "https://pacs.hospital/dicom-web" and web.headers() == {"Authorization": "Bearer s3cret-token"}
    assert basic.headers() == {"Authorization": "Basic " + __import__("base64").b64encode(b"gw:pa:ss").decode()}
    (tmp_path / "token").write_text("rotated\n")  # read at each sending: a rotated token needs no restart
    assert web.headers() == {"Authorization": "Bearer rotated"}
    assert config.retention == 3600.0 and parse(BASE).retention is None
    assert "s3cret" not in repr(config)  # the credentials stay in their files
