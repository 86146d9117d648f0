#!/usr/bin/env bash
# Creates (or reuses) the project's Python environment in .venv with the packages the client
# tests and the end-to-end benchmarks need. Idempotent: a second run only checks the pins.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${ASTROFLIGHT_VENV:-$here/.venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/tests/python/requirements.txt"
# The project's own Python client (pure Python, editable: tests use the checkout's code).
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -e "$here/client/python"
echo "$venv"
