#!/usr/bin/env bash
# Creates .venv and installs tomaat with its test extras; quick when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.tomaat-installed
want=$(cat setup.py | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "installing tomaat and its dependencies into .venv (log: .venv/install.log)"
    if ! .venv/bin/python -m pip install -e '.[test,tensorflow,torch,vtk]' > .venv/install.log 2>&1; then
        tail -n 30 .venv/install.log
        exit 1
    fi
    .venv/bin/python -c "import tomaat, SimpleITK, klein, treq" # fail loudly if the install did not take
    echo "$want" > "$stamp"
fi
