"""Retention: failed and held series stay in the spool, listed by `gateway status` and counted in the metrics, for
`retention` seconds; then they are deleted, journal and all, with a log line naming the series by its UID only."""

from __future__ import annotations

import requests
from browser_support import free_port
from gateway_support import TIMEOUT, Gateway, gateway_config, wait_for
from orthanc_support import make_ct_series
from test_gateway import send_series

RETENTION = 5


def metric(port: int, name: str) -> float:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=TIMEOUT).text
    (line,) = [line for line in text.splitlines() if line.startswith(name + " ")]
    return float(line.split()[1])


def test_failed_and_held_series_are_shown_until_the_retention_passes_then_deleted(tmp_path):
    port, status_port = free_port(), free_port()
    rules = [{"server": "http://127.0.0.1:9", "match": {"modality": "CT"}}]  # nothing listens: the CT series fails
    config = gateway_config(tmp_path, port, None, rules, unmatched="hold", retention=RETENTION,
                            retry={"attempts": 2, "first_delay": 0.2, "max_delay": 0.2}, status={"port": status_port})  # fmt: skip
    failing, held = make_ct_series(seed=41), make_ct_series(seed=42)
    for dataset in held.datasets:
        dataset.Modality = "MR"  # matches no rule
    gateway = Gateway(config, tmp_path)
    try:
        assert send_series(port, failing) == [0] * len(failing.datasets)
        assert send_series(port, held) == [0] * len(held.datasets)
        rows = wait_for(
            lambda: {"failed", "held"} <= set(found := {r["state"]: r for r in gateway.status()}) and found,
            RETENTION,
            "a failed and a held series listed",
        )
        assert rows["failed"]["series_uid"] == failing.series_uid and rows["held"]["series_uid"] == held.series_uid
        assert 0 < rows["held"]["deleted_in_s"] <= RETENTION and rows["held"]["instances"] == len(held.datasets)
        assert metric(status_port, "tomaat_gateway_series_held_kept") == 1
        assert metric(status_port, "tomaat_gateway_series_failed_kept") == 1

        wait_for(lambda: gateway.status() == [], RETENTION + 20, "both deleted after the retention")
        assert list((tmp_path / "spool" / "series").iterdir()) == []
        assert metric(status_port, "tomaat_gateway_series_expired_total") == 2
        assert metric(status_port, "tomaat_gateway_series_held_kept") == 0
        assert metric(status_port, "tomaat_gateway_series_failed_kept") == 0
        assert metric(status_port, "tomaat_gateway_spool_bytes") == 0
    finally:
        log = gateway.stop()
    for uid, state in ((failing.series_uid, "failed"), (held.series_uid, "held")):
        (line,) = [line for line in log.splitlines() if "deleted from the spool" in line and uid in line]
        assert f"series {uid}: {state} " in line and f"(retention {RETENTION} s)" in line
        assert failing.study_uid not in line and held.study_uid not in line and "Test^Phantom" not in line
