#!/usr/bin/env bash
# Everything CI checks: lint, the test suite, and the benchmarks in quick mode. Arguments go to pytest.
#
# It leaves three services running for the next run, which reuses them: a PostgreSQL and two Orthancs, all on
# loopback ports of this checkout's own, their state in .services/ (ignored by git). It says so at its end;
# `bash scripts/stop-services.sh` stops them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test postgres tensorflow torch vtk dicom
# strace, DCMTK and GDCM's tools: what other tools' files and the real readers' file opens are tested with.
bash scripts/test-tools.sh

services=()
left_running() {
    ((${#services[@]} > 0)) || return 0
    echo "test.sh: left running for the next run (state in .services/):"
    printf '  %s\n' "${services[@]}"
    echo "test.sh: stop them with: bash scripts/stop-services.sh (--delete also deletes their data)"
}
trap left_running EXIT

# The registry's store tests run on SQLite and on a real PostgreSQL that this script installs and starts.
TOMAAT_TEST_POSTGRES_URL=$(bash scripts/postgres.sh | tail -n 1)
export TOMAAT_TEST_POSTGRES_URL
services+=("PostgreSQL  ${TOMAAT_TEST_POSTGRES_URL#*@}")
# The browser page's tests drive Debian's headless Chromium, which this script installs when missing.
TOMAAT_TEST_CHROMEDRIVER=$(bash scripts/chromium.sh | tail -n 1)
export TOMAAT_TEST_CHROMEDRIVER
# The PACS loop's tests run against a real Orthanc with DICOMweb, one open and one with basic authentication.
TOMAAT_TEST_DICOMWEB_URL=$(TOMAAT_ORTHANC_DIR="$PWD/.services/orthanc" bash scripts/orthanc.sh | tail -n 1)
export TOMAAT_TEST_DICOMWEB_URL
services+=("Orthanc     $TOMAAT_TEST_DICOMWEB_URL")
TOMAAT_TEST_DICOMWEB_AUTH_URL=$(TOMAAT_ORTHANC_DIR="$PWD/.services/orthanc-auth" TOMAAT_ORTHANC_PORT='' \
    TOMAAT_ORTHANC_USER=tomaat TOMAAT_ORTHANC_PASSWORD=tomaat-test bash scripts/orthanc.sh | tail -n 1)
export TOMAAT_TEST_DICOMWEB_AUTH_URL
services+=("Orthanc     $TOMAAT_TEST_DICOMWEB_AUTH_URL (basic authentication)")
.venv/bin/ruff check tomaat tests examples benchmarks
.venv/bin/ruff format --check tomaat tests examples benchmarks
.venv/bin/mypy # the files listed in pyproject.toml's [tool.mypy]
.venv/bin/pytest "$@"
