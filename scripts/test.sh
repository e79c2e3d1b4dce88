#!/usr/bin/env bash
# Everything CI checks: lint, the test suite, and the benchmarks in quick mode.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# strace, DCMTK and GDCM's tools: what other tools' files and the real readers' file opens are tested with.
bash scripts/test-tools.sh
# The registry's store tests run on SQLite and on a real PostgreSQL that this script installs and starts.
TOMAAT_TEST_POSTGRES_URL=$(bash scripts/postgres.sh | tail -n 1)
export TOMAAT_TEST_POSTGRES_URL
# The browser page's tests drive Debian's headless Chromium, which this script installs when missing.
TOMAAT_TEST_CHROMEDRIVER=$(bash scripts/chromium.sh | tail -n 1)
export TOMAAT_TEST_CHROMEDRIVER
# The PACS loop's tests run against a real Orthanc with DICOMweb, one open and one with basic authentication.
TOMAAT_TEST_DICOMWEB_URL=$(bash scripts/orthanc.sh | tail -n 1)
export TOMAAT_TEST_DICOMWEB_URL
TOMAAT_TEST_DICOMWEB_AUTH_URL=$(TOMAAT_ORTHANC_DIR=/tmp/tomaat-orthanc-auth TOMAAT_ORTHANC_PORT=18043 TOMAAT_ORTHANC_USER=tomaat TOMAAT_ORTHANC_PASSWORD=tomaat-test bash scripts/orthanc.sh | tail -n 1)
export TOMAAT_TEST_DICOMWEB_AUTH_URL
.venv/bin/ruff check tomaat tests examples benchmarks
.venv/bin/ruff format --check tomaat tests examples benchmarks
.venv/bin/mypy  # the files listed in pyproject.toml's [tool.mypy]
.venv/bin/pytest "$@"
