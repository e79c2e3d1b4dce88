"""Results by STOW-RS too: a rule sends the SEG back to the sender by C-STORE and the RTSTRUCT and SR to a DICOMweb
service by STOW-RS (the gateway tests' Orthanc, through its DICOMweb plugin, behind a relay that is down at first).
Each arrives exactly once: the STOW-RS destination being down delays only what goes to it, and results sent
again after a kill (the same SOP Instance UIDs) are kept once."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import requests
from browser_support import free_port
from gateway_support import TIMEOUT, Gateway, Relay, gateway_config, wait_for
from orthanc_support import make_ct_series
from test_gateway import assert_seg_matches, ct_rule, orthanc, put_in_orthanc, results_in, spool_empty, threshold_server

__all__ = ["orthanc", "threshold_server"]  # the fixtures

KINDS = ("SEG", "RTSTRUCT", "SR")


def counts(orthanc, study_uid: str) -> dict[str, int]:
    """Instances of each result kind in the study."""
    return {kind: sum(len(s["Instances"]) for s in orthanc.of_modality(study_uid, kind)) for kind in KINDS}


def origin(orthanc, series: dict) -> str:
    """How Orthanc received the series' first instance: DicomProtocol (C-STORE), Plugins (DICOMweb's STOW-RS), ..."""
    instance = series["Instances"][0]
    return requests.get(f"{orthanc.root}/instances/{instance}/metadata/Origin", timeout=TIMEOUT).text


def test_seg_by_c_store_and_rtstruct_and_sr_by_stow_rs_each_arrive_once(orthanc, threshold_server, tmp_path):
    relay = Relay(urlsplit(orthanc.dicomweb).port)  # Orthanc's HTTP port, refusing connections until started
    destinations = {"web": {"kind": "stowrs", "url": f"http://127.0.0.1:{relay.port}/dicom-web", "timeout": 30}}
    rule = ct_rule(threshold_server, send_to={"seg": "sender", "rtstruct": "web", "sr": "web"})
    port = free_port()
    config = gateway_config(tmp_path, port, orthanc, [rule], destinations=destinations,
                            retry={"attempts": 100, "first_delay": 0.2, "max_delay": 0.5})  # fmt: skip
    orthanc.declare("tomaat", "TOMAAT", port)
    series = make_ct_series(shuffle=True, seed=31)
    gateway = Gateway(config, tmp_path)
    try:
        orthanc.send("tomaat", put_in_orthanc(orthanc, series))
        (seg_series,) = results_in(orthanc, series.study_uid, "SEG")  # by C-STORE, while the STOW-RS one is down
        (row,) = wait_for(
            lambda: [r for r in gateway.status() if r["state"] == "built" and r["attempts"] >= 2], 60, "STOW retried"
        )
        assert row["results"] == 3 and row["sent"] == 1
        assert counts(orthanc, series.study_uid) == {"SEG": 1, "RTSTRUCT": 0, "SR": 0}
        assert "could not be reached storing the results (RTSTRUCT, SR)" in gateway.output()
        relay.start()
        found = {kind: results_in(orthanc, series.study_uid, kind) for kind in KINDS}
        wait_for(lambda: spool_empty(gateway), 30, "the spool emptied")
    finally:
        log = gateway.stop()
    assert counts(orthanc, series.study_uid) == {"SEG": 1, "RTSTRUCT": 1, "SR": 1}
    assert [origin(orthanc, s) for kind in KINDS for s in found[kind]] == ["DicomProtocol", "Plugins", "Plugins"]
    (seg,) = orthanc.instance_files(seg_series)
    assert_seg_matches(seg, series)
    assert f"series {series.series_uid}: 3 result(s) sent to ORTHANC at 127.0.0.1:{orthanc.dicom_port}, " in log
    assert "FAILED" not in log and "trying again in" in log

    # What a gateway killed between the STOW-RS answer and its journal leaves: the RTSTRUCT and SR built, not
    # marked sent. Started again, it sends the same instances again, and Orthanc keeps one of each.
    batch = tmp_path / "spool" / "series" / "00000000000000000001-restow"
    (batch / "results").mkdir(parents=True)
    deliveries = []
    for index, kind in enumerate(("RTSTRUCT", "SR"), start=1):
        name = f"{index:02d}-{kind.lower()}.dcm"
        ((data,),) = (orthanc.instance_files(s) for s in found[kind])
        (batch / "results" / name).write_bytes(data)
        deliveries.append({"result": name, "to": "web"})
    journal = {"batch": batch.name, "state": "built", "series_uid": series.series_uid, "study_uid": series.study_uid,
               "calling_ae": "ORTHANC", "modality": "CT", "series_description": "", "body_part": "", "created": 0,
               "attempts": 0, "results": [d["result"] for d in deliveries], "deliveries": deliveries, "sent": []}  # fmt: skip
    (batch / "journal.json").write_text(json.dumps(journal))
    gateway = Gateway(config, tmp_path)
    try:
        wait_for(lambda: spool_empty(gateway), 30, "the results sent again and the spool emptied")
    finally:
        log = gateway.stop()
        relay.stop()
    assert f"series {series.series_uid}: 2 result(s) sent to {destinations['web']['url']}; spool cleaned" in log
    assert counts(orthanc, series.study_uid) == {"SEG": 1, "RTSTRUCT": 1, "SR": 1}
