#!/usr/bin/env bash
# The main job on embedded defaults: the threshold example served locally and a request sent to it.
# Usage: bash scripts/demo.sh [IMAGE_FILE]   (default: a generated phantom)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python examples/demo.py "$@"
