#!/usr/bin/env bash
# Everything CI checks: lint, the test suite, and the benchmarks in quick mode.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The registry's store tests run on SQLite and on a real PostgreSQL that this script installs and starts.
TOMAAT_TEST_POSTGRES_URL=$(bash scripts/postgres.sh | tail -n 1)
export TOMAAT_TEST_POSTGRES_URL
# The browser page's tests drive Debian's headless Chromium, which this script installs when missing.
TOMAAT_TEST_CHROMEDRIVER=$(bash scripts/chromium.sh | tail -n 1)
export TOMAAT_TEST_CHROMEDRIVER
.venv/bin/ruff check tomaat tests examples benchmarks
.venv/bin/ruff format --check tomaat tests examples benchmarks
.venv/bin/mypy  # the files listed in pyproject.toml's [tool.mypy]
.venv/bin/pytest "$@"
