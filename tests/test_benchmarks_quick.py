"""The load benchmark in quick mode, so CI notices when it stops passing (the full run is benchmarks/load.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_load_benchmark_quick_mode_passes():
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.load", "--quick"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert " 0 errors" in done.stdout and done.stdout.strip().endswith("OK")


def _quick(module: str, *extra: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", module, "--quick", *extra], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().endswith("OK"), done.stdout
    return done.stdout


def test_latency_benchmark_quick_mode_runs_all_three_clients():
    out = _quick("benchmarks.latency")
    for row in ("(a) tomaat client", "(b) v1 client", "(c) floor", "lock_wait", "send", "peak memory growth"):
        assert row in out


def test_throughput_benchmark_quick_mode_answers_every_request_over_http_and_https():
    out = _quick("benchmarks.throughput")
    assert " 0 errors" in out and "GPU-bound maximum" in out
    for scheme in ("HTTP", "HTTPS"):  # requests/s, fraction of the maximum, median latency ms, errors
        assert re.search(rf"^{scheme}\s+[0-9.]+\s+[0-9]+%\s+[0-9.]+\s+0$", out, re.M), out
    assert re.search(r"^HTTPS/HTTP\s+[0-9.]+\s+[0-9.]+$", out, re.M), out


def test_batching_benchmark_quick_mode_answers_every_request_in_batches():
    out = _quick("benchmarks.batching")
    assert " 0 errors" in out
    [mean_batch] = re.findall(r"^mean batch size\s+1\.00\s+([0-9.]+)$", out, re.M)
    assert float(mean_batch) > 1.5, out  # 8 clients on a 200 ms pass: batches do form


@pytest.mark.skipif(not os.environ.get("TOMAAT_TEST_CHROMEDRIVER"), reason="TOMAAT_TEST_CHROMEDRIVER is unset")
def test_browser_benchmark_quick_mode_times_a_drop_to_overlay():
    out = _quick("benchmarks.browser")
    assert re.search(r"^32\^3\s+[0-9.]+ s\s+[0-9.]+ s\s+[0-9.]+ s, [0-9.]+ s$", out, re.M), out


def test_replicas_benchmark_quick_mode_goes_through_ray():
    pytest.importorskip("ray")
    out = _quick("benchmarks.replicas")
    assert "added by Ray" in out and "2 replicas / 1 replica" in out and "(0 errors" in out


def test_links_benchmark_quick_mode_times_all_three_requests_through_the_link_over_http_and_https():
    out = _quick("benchmarks.links", "--tls")
    cells = r"\s+[0-9.]+\s+[0-9,]+\s+[0-9,]+\s+[0-9.]+x"  # seconds, bytes up, bytes down, vs (a)
    for row in ("(a) v1, base64 MHA multipart", "(b) our client, first request", "(c) same client, new threshold"):
        assert re.search(rf"^dsl\s+HTTP\s+{re.escape(row)}{cells}$", out, re.M), out
        assert re.search(rf"^dsl\s+HTTPS\s+{re.escape(row)}{cells}\s+[0-9.]+$", out, re.M), out  # and HTTPS/HTTP
    assert "goals: (b) >= 3x faster than (a) on dsl" in out
    assert "goals over HTTPS: (b) >= 3x faster than (a) on dsl" in out


def test_first_request_benchmark_quick_mode_times_a_fresh_server():
    out = _quick("benchmarks.first_request")
    assert "first/tenth" in out and "median first/tenth" in out


def test_brain_extraction_benchmark_quick_mode_matches_deepbet():
    out = _quick("benchmarks.brain_extraction")
    assert "masks equal voxel for voxel" in out
