#!/usr/bin/env bash
# Everything CI checks: lint, the test suite, and the benchmarks in quick mode.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check tomaat tests examples benchmarks
.venv/bin/ruff format --check tomaat tests examples benchmarks
.venv/bin/pytest "$@"
