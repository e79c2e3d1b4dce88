"""The load benchmark in quick mode, so CI notices when it stops passing (the full run is benchmarks/load.py)."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_load_benchmark_quick_mode_passes():
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.load", "--quick"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert " 0 errors" in done.stdout and done.stdout.strip().endswith("OK")
