#!/usr/bin/env bash
# The main job on embedded defaults: the threshold example served locally and a request sent to it.
# Usage: bash scripts/demo.sh [IMAGE_FILE]   (default: a generated phantom)
# Installs tomaat alone into .venv (no extras: the demo needs none); in a terminal the demo's servers keep
# running after it, so that the browser page it prints last can be opened, until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python examples/demo.py "$@"
