"""Nothing lost: a gateway killed (SIGKILL) while receiving or while sending, then restarted, finishes every series
it acknowledged, and Orthanc ends with its results exactly once; a destination that stays down is given up on
with a logged, visible failure."""

from __future__ import annotations

import requests
from browser_support import free_port
from gateway_support import Gateway, Relay, associate, gateway_config, wait_for
from orthanc_support import make_ct_series
from test_gateway import assert_seg_matches, ct_rule, orthanc, put_in_orthanc, results_in, spool_empty, threshold_server

__all__ = ["orthanc", "threshold_server"]  # the fixtures


def seg_instances(orthanc, study_uid: str) -> int:
    return sum(len(s["Instances"]) for s in orthanc.of_modality(study_uid, "SEG"))


def test_killed_while_receiving_the_acknowledged_instances_survive_and_the_series_is_finished_once(
    orthanc, threshold_server, tmp_path
):
    port = free_port()
    config = gateway_config(tmp_path, port, orthanc, [ct_rule(threshold_server)], quiet_seconds=6)
    orthanc.declare("tomaat", "TOMAAT", port)
    series = make_ct_series(shuffle=True, seed=11)
    series_id = put_in_orthanc(orthanc, series)
    gateway = Gateway(config, tmp_path)
    assoc = associate(port)  # a modality sends the first five instances, then the gateway dies mid-association
    assert [assoc.send_c_store(ds).Status for ds in series.datasets[:5]] == [0] * 5
    gateway.kill()
    assoc.abort()

    gateway = Gateway(config, tmp_path)
    try:
        (row,) = gateway.status()
        assert row["series_uid"] == series.series_uid and row["instances"] == 5  # every acknowledged one kept
        orthanc.send("tomaat", series_id)  # the sender sends the series again, as a PACS retries a failed job
        (seg_series,) = results_in(orthanc, series.study_uid, "SEG")
        (seg,) = orthanc.instance_files(seg_series)
        assert_seg_matches(seg, series)  # all twelve slices: the five kept and the twelve sent again, once each
        wait_for(lambda: spool_empty(gateway), 30, "the spool emptied")
        assert seg_instances(orthanc, series.study_uid) == 1
    finally:
        gateway.stop()


def test_killed_while_sending_the_results_arrive_once_after_the_restart(orthanc, threshold_server, tmp_path):
    port = free_port()
    relay = Relay(orthanc.dicom_port)  # Orthanc's DICOM port behind a relay that is down at first
    destinations = {"pacs": {"ae_title": orthanc.aet, "host": "127.0.0.1", "port": relay.port}}
    config = gateway_config(tmp_path, port, orthanc, [ct_rule(threshold_server, send_to="pacs")],
                            destinations=destinations, retry={"attempts": 100, "first_delay": 0.2, "max_delay": 0.5})  # fmt: skip
    orthanc.declare("tomaat", "TOMAAT", port)
    series = make_ct_series(seed=12)
    put_in_orthanc(orthanc, series)
    gateway = Gateway(config, tmp_path)
    try:
        assoc = associate(port)
        assert [assoc.send_c_store(ds).Status for ds in series.datasets] == [0] * len(series.datasets)
        assoc.release()
        wait_for(
            lambda: any(r["state"] == "built" and r["attempts"] >= 2 for r in gateway.status()), 60, "sending retried"
        )
        assert "trying again in" in gateway.output()
    finally:
        gateway.kill()
    relay.start()
    gateway = Gateway(config, tmp_path)
    try:
        (seg_series,) = results_in(orthanc, series.study_uid, "SEG")
        (seg,) = orthanc.instance_files(seg_series)
        assert_seg_matches(seg, series)
        wait_for(lambda: spool_empty(gateway), 30, "the spool emptied")
        assert seg_instances(orthanc, series.study_uid) == 1
        assert "FAILED" not in gateway.output()
    finally:
        gateway.stop()
        relay.stop()


def test_results_acknowledged_before_a_kill_are_sent_again_as_the_same_instance_and_kept_once(
    orthanc, threshold_server, tmp_path
):
    """The window between a destination's acknowledgement and the journal's record of it: the same SOP Instance
    UID goes again, and the destination keeps one."""
    port = free_port()
    config = gateway_config(tmp_path, port, orthanc, [ct_rule(threshold_server)], quiet_seconds=0.5)
    orthanc.declare("tomaat", "TOMAAT", port)
    series = make_ct_series(seed=13)
    put_in_orthanc(orthanc, series)
    gateway = Gateway(config, tmp_path)
    spool = tmp_path / "spool" / "series"
    try:
        assoc = associate(port)
        assert [assoc.send_c_store(ds).Status for ds in series.datasets] == [0] * len(series.datasets)
        assoc.release()
        results_in(orthanc, series.study_uid, "SEG")
        wait_for(lambda: spool_empty(gateway), 30, "the spool emptied")
    finally:
        gateway.stop()
    # What a gateway killed right after the acknowledgement leaves: the batch, built, its result not marked sent.
    (seg_series,) = orthanc.of_modality(series.study_uid, "SEG")
    (seg,) = orthanc.instance_files(seg_series)
    batch = spool / "00000000000000000001-restart"
    (batch / "results").mkdir(parents=True)
    (batch / "results" / "00-seg.dcm").write_bytes(seg)
    journal = {"batch": batch.name, "state": "built", "series_uid": series.series_uid, "study_uid": series.study_uid,
               "calling_ae": "ORTHANC", "modality": "CT", "series_description": "", "body_part": "", "created": 0,
               "attempts": 0, "results": ["00-seg.dcm"], "sent": [],
               "destination": {"ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}}  # fmt: skip
    (batch / "journal.json").write_text(__import__("json").dumps(journal))
    gateway = Gateway(config, tmp_path)
    try:
        wait_for(lambda: spool_empty(gateway), 30, "the result sent again and the spool emptied")
        assert seg_instances(orthanc, series.study_uid) == 1
    finally:
        gateway.stop()


def test_a_destination_that_stays_down_is_given_up_on_visibly(orthanc, threshold_server, tmp_path):
    port = free_port()
    status_port = free_port()
    destinations = {"pacs": {"ae_title": orthanc.aet, "host": "127.0.0.1", "port": free_port()}}  # nothing listens
    config = gateway_config(tmp_path, port, orthanc, [ct_rule(threshold_server, send_to="pacs")], destinations=destinations,
                            retry={"attempts": 3, "first_delay": 0.2, "max_delay": 0.4}, status={"port": status_port})  # fmt: skip
    series = make_ct_series(seed=14)
    gateway = Gateway(config, tmp_path)
    try:
        assoc = associate(port)
        assert [assoc.send_c_store(ds).Status for ds in series.datasets] == [0] * len(series.datasets)
        assoc.release()
        (row,) = wait_for(lambda: [r for r in gateway.status() if r["state"] == "failed"], 60, "the series failed")
        assert row["series_uid"] == series.series_uid and "gave up after 3 attempts" in row["error"]
        assert row["instances"] == 0  # nothing of the series kept but its journal
        assert f"FAILED series {series.series_uid}" in gateway.output()
        metrics = requests.get(f"http://127.0.0.1:{status_port}/metrics", timeout=10).text
        assert "tomaat_gateway_series_failed_total 1.0" in metrics
    finally:
        gateway.stop()
