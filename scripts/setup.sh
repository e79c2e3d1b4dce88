#!/usr/bin/env bash
# Creates .venv and installs tomaat from this checkout with the extras asked for, and keeps what is there.
#
#   bash scripts/setup.sh                 # tomaat alone: what the demo runs (scripts/demo.sh)
#   bash scripts/setup.sh test dicom ...  # and these extras of pyproject.toml (scripts/test.sh asks for its own)
#
# The demo and the tests share .venv. Its stamp records pyproject.toml's hash and the extras installed, so a
# call whose extras are all there already (the demo after the tests, the tests run again) installs nothing, and
# one that wants more (the tests after the demo) installs the union: nothing already there is taken away.
# A changed pyproject.toml reinstalls the union, as new dependencies may have come with it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# One setup at a time in this checkout (a demo and the tests started together would install over each other).
exec 8>.venv/.setup.lock
flock 8

stamp=.venv/.tomaat-installed
# The stamp's lines: "pyproject SHA256" and "extras NAME ...". A stamp of one bare hash is from before extras
# were chosen, when every setup installed the set below.
read -r stamped_hash stamped_extras < <(
    .venv/bin/python - "$stamp" <<'PY'
import re, sys

try:
    lines = open(sys.argv[1]).read().split("\n")
except FileNotFoundError:
    lines = []
fields = dict(line.split(" ", 1) for line in lines if " " in line)
if len(lines) >= 1 and re.fullmatch(r"[0-9a-f]{64}", lines[0]):
    fields = {"pyproject": lines[0], "extras": "test postgres tensorflow torch vtk dicom"}
print(fields.get("pyproject", "-"), fields.get("extras", ""))
PY
)
want_hash=$(sha256sum pyproject.toml | cut -d' ' -f1)

# The extras asked for, checked against pyproject.toml's; the union with what is installed, in a stable order.
extras=$(STAMPED_EXTRAS=$stamped_extras .venv/bin/python - "$@" <<'PY'
import os, sys, tomllib

defined = tomllib.load(open("pyproject.toml", "rb"))["project"].get("optional-dependencies", {})
asked = sys.argv[1:]
for name in asked:
    if name not in defined:
        sys.exit(f"setup.sh: no extra '{name}' in pyproject.toml; its extras are: {', '.join(sorted(defined))}")
installed = [name for name in os.environ["STAMPED_EXTRAS"].split() if name in defined]
print(" ".join(sorted(set(asked) | set(installed))))
PY
)

missing=false
for name in "$@"; do
    [[ " $stamped_extras " == *" $name "* ]] || missing=true
done
if [ "$stamped_hash" != "$want_hash" ] || $missing; then
    target=.
    [ -z "$extras" ] || target=".[${extras// /,}]"
    echo "installing tomaat${extras:+ with its extras $extras} into .venv (log: .venv/install.log)"
    if ! .venv/bin/python -m pip install -e "$target" >.venv/install.log 2>&1; then
        tail -n 30 .venv/install.log
        exit 1
    fi
    .venv/bin/python -c "import tomaat, SimpleITK, klein, treq" # fail loudly if the install did not take
    printf 'pyproject %s\nextras %s\n' "$want_hash" "$extras" >"$stamp"
fi
# The version is written in tomaat/__init__.py alone; after a bump the installed metadata would lag behind it
# (the tests compare the two), so register the package again: seconds, nothing downloaded.
if ! .venv/bin/python -c "import importlib.metadata as m, tomaat; raise SystemExit(m.version('tomaat') != tomaat.__version__)" 2>/dev/null; then
    .venv/bin/python -m pip install -e . --no-deps >>.venv/install.log 2>&1
fi
