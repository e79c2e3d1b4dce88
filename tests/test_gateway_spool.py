"""The spool on its own: the cap, batches per series, and what a restart finds."""

from __future__ import annotations

import os

import pytest

from tomaat.gateway.spool import Full, Spool


def header(series: str, sop: str) -> dict:
    return {
        "series_uid": series,
        "study_uid": "1.2",
        "sop_uid": sop,
        "modality": "CT",
        "series_description": "",
        "body_part": "",
    }


def test_instances_of_a_series_share_a_batch_until_it_is_closed(tmp_path):
    spool = Spool(str(tmp_path), 1 << 20)
    first = spool.put(header("1.1", "1.1.1"), "ORTHANC", b"a" * 100)
    assert spool.put(header("1.1", "1.1.2"), "ORTHANC", b"b" * 100) == first
    assert spool.put(header("1.1", "1.1.2"), "ORTHANC", b"c" * 100) == first  # the same instance again: replaced
    assert [os.path.basename(p) for p in spool.instances(first)] == ["1.1.1.dcm", "1.1.2.dcm"]
    other = spool.put(header("1.9", "1.9.1"), "ORTHANC", b"d" * 100)
    assert other != first
    assert spool.quiet(0) and spool.close(first)["state"] == "received"
    later = spool.put(header("1.1", "1.1.3"), "ORTHANC", b"e" * 100)  # after closing: a new batch
    assert later not in (first, other)


def test_the_cap_counts_what_is_on_disk_and_frees_what_is_removed(tmp_path):
    spool = Spool(str(tmp_path), 5000)
    batch = spool.put(header("1.1", "1.1.1"), "ORTHANC", b"a" * 3000)
    with pytest.raises(Full):
        spool.put(header("1.1", "1.1.2"), "ORTHANC", b"b" * 3000)
    assert len(spool.instances(batch)) == 1 and not [
        n for n in os.listdir(spool.path(batch, "instances")) if ".part" in n
    ]
    spool.remove(batch)
    assert spool.bytes == 0
    spool.put(header("1.1", "1.1.2"), "ORTHANC", b"b" * 3000)


def test_a_restart_finds_receiving_batches_open_and_drops_folders_never_journalled(tmp_path):
    spool = Spool(str(tmp_path), 1 << 20)
    batch = spool.put(header("1.1", "1.1.1"), "ORTHANC", b"a" * 100)
    os.makedirs(os.path.join(spool.series, "half-made", "instances"))  # killed between mkdir and its journal
    again = Spool(str(tmp_path), 1 << 20)
    assert again.batches() == [batch] and not os.path.exists(os.path.join(spool.series, "half-made"))
    assert again.bytes == spool.bytes
    assert again.put(header("1.1", "1.1.2"), "ORTHANC", b"b" * 100) == batch  # still receiving the same series
    assert again.quiet(3600) == []  # its quiet time started again at the restart
