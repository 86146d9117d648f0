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
# The Compose specification's JSON schema, as docker-compose 1.29.2 ships it
# (compose/config/compose_spec.json): the wheel alone, never installed (its pins are old).
if ! ls "$venv/schemas/"docker_compose-*.whl >/dev/null 2>&1; then
  "$venv/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps "docker-compose==1.29.2" -d "$venv/schemas" >&2
fi
echo "$venv"
