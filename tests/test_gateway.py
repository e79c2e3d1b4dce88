"""The DICOM gateway against a real Orthanc: a CT series in by C-STORE, its SEG back by C-STORE, nothing lost.

Orthanc (its DICOM server on, the gateway declared as its modality) sends a series made here (int16, oblique,
offset origin) with its REST `/modalities/tomaat/store`; the gateway, a real `tomaat gateway serve` process,
routes it to the threshold example served by a real `tomaat serve`, and the SEG it sends back is read from
Orthanc and checked frame by frame against the source voxels at or above the threshold.
"""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
import requests
from browser_support import Served, free_port
from gateway_support import ORTHANC_AET, Gateway, Orthanc, associate, gateway_config, wait_for
from orthanc_support import make_ct_series, store, to_bytes

THRESHOLD = 300


@pytest.fixture(scope="module")
def orthanc():
    return Orthanc()


@pytest.fixture(scope="module")
def threshold_server(tmp_path_factory):
    served = Served("examples/threshold.py", tmp_path_factory.mktemp("threshold"))
    yield served
    served.stop()


def ct_rule(server, **extra) -> dict:
    return {
        "name": "ct threshold",
        "match": {"modality": "CT"},
        "server": server.url,
        "set": {"threshold": THRESHOLD},
        **extra,
    }


def put_in_orthanc(orthanc: Orthanc, series) -> str:
    """The series stored in Orthanc (by REST); its Orthanc id."""
    ids = store(orthanc.dicomweb, series.datasets)
    return orthanc.series_id(ids[0])


def results_in(orthanc: Orthanc, study_uid: str, modality: str, count: int = 1) -> list[dict]:
    return wait_for(lambda: len(found := orthanc.of_modality(study_uid, modality)) >= count and found, 90,
                    f"{count} {modality} series in Orthanc's study {study_uid}")  # fmt: skip


def assert_seg_matches(seg_bytes: bytes, series) -> None:
    """Each frame holds its source slice's voxels >= THRESHOLD; every slice with such voxels has its frame."""
    seg = pydicom.dcmread(io.BytesIO(seg_bytes))
    assert seg.Modality == "SEG" and seg.StudyInstanceUID == series.study_uid
    assert seg.FrameOfReferenceUID == series.datasets[0].FrameOfReferenceUID
    expected = series.volume >= THRESHOLD
    by_uid = {uid: k for k, uid in enumerate(series.slice_uids)}
    pixels = seg.pixel_array.reshape(-1, *series.volume.shape[1:])
    seen = set()
    for index, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
        k = by_uid[frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
        np.testing.assert_array_equal(pixels[index], expected[k].astype(np.uint8), err_msg=f"slice {k}")
        seen.add(k)
    assert seen == {k for k in range(len(expected)) if expected[k].any()} and seen


def spool_empty(gateway: Gateway) -> bool:
    return gateway.status() == []


def test_orthanc_sends_a_series_and_its_seg_comes_back_into_orthanc(orthanc, threshold_server, tmp_path):
    port = free_port()
    config = gateway_config(tmp_path, port, orthanc, [ct_rule(threshold_server)], status={"port": free_port()})
    gateway = Gateway(config, tmp_path)
    try:
        orthanc.declare("tomaat", "TOMAAT", port)
        series = make_ct_series(shuffle=True, seed=3)
        job = orthanc.send("tomaat", put_in_orthanc(orthanc, series))
        assert job.get("InstancesCount", len(series.datasets)) == len(series.datasets)

        (seg_series,) = results_in(orthanc, series.study_uid, "SEG")
        (seg,) = orthanc.instance_files(seg_series)
        assert_seg_matches(seg, series)
        wait_for(lambda: spool_empty(gateway), 30, "the spool emptied after sending")
        status_port = __import__("json").load(open(config))["status"]["port"]
        health = requests.get(f"http://127.0.0.1:{status_port}/health", timeout=10)
        assert health.status_code == 200 and health.json()["status"] == "ok"
        metrics = requests.get(f"http://127.0.0.1:{status_port}/metrics", timeout=10).text
        assert (
            "tomaat_gateway_series_received_total 1.0" in metrics and "tomaat_gateway_series_sent_total 1.0" in metrics
        )
        assert "tomaat_gateway_series_failed_total 0.0" in metrics
    finally:
        log = gateway.stop()
    assert series.study_uid not in log and "Test^Phantom" not in log and "TOMAAT-TEST" not in log  # UIDs of series only
    assert f"series {series.series_uid}" in log


def test_an_unknown_calling_ae_is_refused_at_association(tmp_path):
    port = free_port()
    gateway = Gateway(gateway_config(tmp_path, port, None, [{"server": "http://127.0.0.1:9", "match": {}}]), tmp_path)
    try:
        stranger = associate(port, calling="STRANGER")
        assert stranger.is_rejected and not stranger.is_established
        known = associate(port, calling=ORTHANC_AET)
        assert known.is_established
        known.release()
    finally:
        gateway.stop()


def send_series(port: int, series, count: int | None = None) -> list[int]:
    """The tests' own modality sends the first `count` instances; the C-STORE statuses."""
    assoc = associate(port)
    assert assoc.is_established
    try:
        return [assoc.send_c_store(ds).Status for ds in series.datasets[:count]]
    finally:
        assoc.release()


def test_a_series_matching_no_rule_is_logged_and_dropped(tmp_path):
    port = free_port()
    rules = [{"server": "http://127.0.0.1:9", "match": {"modality": "MR"}}]
    gateway = Gateway(gateway_config(tmp_path, port, None, rules, unmatched="drop"), tmp_path)
    try:
        series = make_ct_series(seed=4)
        assert send_series(port, series) == [0] * len(series.datasets)
        wait_for(
            lambda: f"series {series.series_uid} from ORTHANC matched no rule: dropped" in gateway.output(),
            30,
            "the drop logged",
        )
        assert spool_empty(gateway)
        assert not list((tmp_path / "spool" / "series").iterdir())
    finally:
        gateway.stop()


def test_a_series_matching_no_rule_is_held_when_the_configuration_says_so(tmp_path):
    port = free_port()
    rules = [{"server": "http://127.0.0.1:9", "match": {"modality": "MR"}}]
    gateway = Gateway(gateway_config(tmp_path, port, None, rules, unmatched="hold"), tmp_path)
    try:
        series = make_ct_series(seed=10)
        assert send_series(port, series) == [0] * len(series.datasets)
        (row,) = wait_for(lambda: [r for r in gateway.status() if r["state"] == "held"], 30, "the series held")
        assert row["series_uid"] == series.series_uid and row["instances"] == len(series.datasets)
        assert f"series {series.series_uid} from ORTHANC matched no rule: held in the spool" in gateway.output()
    finally:
        gateway.stop()


def test_a_full_spool_answers_out_of_resources(tmp_path):
    port = free_port()
    series = make_ct_series(seed=5)
    size = len(to_bytes(series.datasets[0]))
    config = gateway_config(tmp_path, port, None, [{"server": "http://127.0.0.1:9", "match": {}}], quiet_seconds=600,
                            spool={"folder": str(tmp_path / "spool"), "max_bytes": 4 * size})  # fmt: skip
    gateway = Gateway(config, tmp_path)
    try:
        statuses = send_series(port, series)
        assert statuses[:3] == [0, 0, 0] and set(statuses[3:]) == {0xA700}  # the journal takes a little room too
        (row,) = gateway.status()
        assert row["state"] == "receiving" and row["instances"] == 3
    finally:
        gateway.stop()


def test_dicom_tls_takes_only_peers_with_a_certificate_of_its_authority(tmp_path):
    from gateway_support import authority, echo, tls_echo

    ours, theirs = authority(tmp_path, "hospital"), authority(tmp_path, "elsewhere")
    port = free_port()
    tls = {"certificate": ours["certificate"], "key": ours["key"], "ca": ours["ca"]}
    config = gateway_config(tmp_path, port, None, [{"server": "http://127.0.0.1:9"}], tls=tls)
    gateway = Gateway(config, tmp_path, ready=lambda p: tls_echo(p, ours, ours["ca"]))
    try:
        assert tls_echo(port, ours, ours["ca"])
        assert not tls_echo(port, theirs, ours["ca"])  # a certificate from another authority
        assert not tls_echo(port, None, ours["ca"])  # none at all
        assert not echo(port)  # plain DICOM
        assert "(TLS)" in gateway.output()
    finally:
        gateway.stop()


def test_an_instance_without_its_uids_is_refused_and_nothing_spooled(tmp_path):
    port = free_port()
    gateway = Gateway(
        gateway_config(tmp_path, port, None, [{"server": "http://127.0.0.1:9"}], quiet_seconds=600), tmp_path
    )
    try:
        dataset = make_ct_series(seed=6).datasets[0]
        del dataset.SeriesInstanceUID  # the modality sends it anyway; pynetdicom needs only the SOP class and instance
        assoc = associate(port)
        assert assoc.send_c_store(dataset).Status == 0xC000  # cannot understand
        assoc.release()
        assert gateway.status() == []
        assert "refused an instance from ORTHANC: no SeriesInstanceUID" in gateway.output()
    finally:
        gateway.stop()


def test_results_go_out_over_tls_to_a_destination_that_requires_it(threshold_server, tmp_path):
    """The destination is a second gateway listening only for TLS: the SEG arrives in its spool."""
    from gateway_support import authority, tls_echo

    ours = authority(tmp_path, "hospital")
    tls = {"certificate": ours["certificate"], "key": ours["key"], "ca": ours["ca"]}
    (tmp_path / "archive").mkdir()
    archive_port, port = free_port(), free_port()
    archive = Gateway(
        gateway_config(tmp_path / "archive", archive_port, None, [{"server": "http://127.0.0.1:9"}], quiet_seconds=600,
                       ae_title="ARCHIVE", callers={"TOMAAT": {}}, tls=tls),
        tmp_path / "archive",
        ready=lambda p: tls_echo(p, ours, ours["ca"], calling="TOMAAT"),
    )  # fmt: skip
    destinations = {"archive": {"ae_title": "ARCHIVE", "host": "127.0.0.1", "port": archive_port}}
    config = gateway_config(tmp_path, port, None, [ct_rule(threshold_server, send_to="archive")], tls=tls,
                            destinations=destinations)  # fmt: skip
    gateway = Gateway(config, tmp_path, ready=lambda p: tls_echo(p, ours, ours["ca"]))
    try:
        series = make_ct_series(seed=8)
        assoc = associate_tls(port, ours)
        assert [assoc.send_c_store(ds).Status for ds in series.datasets] == [0] * len(series.datasets)
        assoc.release()
        wait_for(lambda: spool_empty(gateway), 60, "the results sent")
        (row,) = wait_for(archive.status, 30, "the SEG in the archive's spool")
        assert row["calling_ae"] == "TOMAAT" and row["instances"] == 1 and row["series_uid"] != series.series_uid
    finally:
        gateway.stop()
        archive.stop()


def associate_tls(port: int, pem: dict):
    import ssl

    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=pem["ca"])
    context.load_cert_chain(pem["certificate"], pem["key"])
    ae = AE(ae_title=ORTHANC_AET)
    ae.add_requested_context(CTImageStorage)
    return ae.associate("127.0.0.1", port, ae_title="TOMAAT", tls_args=(context, "127.0.0.1"))


def opens(port: int) -> bool:
    """Whether the gateway accepts an association (its C-ECHO may be refused)."""
    assoc = associate(port)
    established = assoc.is_established
    if established:
        assoc.release()
    return established


def test_a_known_ae_title_calling_from_another_host_is_not_authorized(tmp_path):
    """callers.ORTHANC names host 127.0.0.2; the tests' sender calls from 127.0.0.1."""
    port = free_port()
    callers = {ORTHANC_AET: {"host": "127.0.0.2", "port": 104}}
    gateway = Gateway(gateway_config(tmp_path, port, None, [{"server": "http://127.0.0.1:9"}], callers=callers), tmp_path,
                      ready=opens)  # fmt: skip
    try:
        assoc = associate(port)
        assert assoc.send_c_store(make_ct_series(seed=9).datasets[0]).Status == 0x0124
        assoc.release()
        assert gateway.status() == []
        assert "refused a C-STORE from ORTHANC at 127.0.0.1: callers.ORTHANC names host 127.0.0.2" in gateway.output()
    finally:
        gateway.stop()
