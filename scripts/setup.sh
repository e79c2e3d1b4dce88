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
# pyproject.toml holds every dependency and extra: reinstall when it changes (new code needs none: -e).
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "installing tomaat and its dependencies into .venv (log: .venv/install.log)"
    if ! .venv/bin/python -m pip install -e '.[test,postgres,tensorflow,torch,vtk,dicom]' > .venv/install.log 2>&1; then
        tail -n 30 .venv/install.log
        exit 1
    fi
    .venv/bin/python -c "import tomaat, SimpleITK, klein, treq, psycopg" # fail loudly if the install did not take
    echo "$want" > "$stamp"
fi
# The version is written in tomaat/__init__.py alone; after a bump the installed metadata would lag behind it
# (the tests compare the two), so register the package again: seconds, nothing downloaded.
if ! .venv/bin/python -c "import importlib.metadata as m, tomaat; raise SystemExit(m.version('tomaat') != tomaat.__version__)" 2>/dev/null; then
    .venv/bin/python -m pip install -e . --no-deps >> .venv/install.log 2>&1
fi
