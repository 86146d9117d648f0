#!/usr/bin/env bash
# The replica benchmark (issue 23): one alert-batch pull from one process and from three (a
# builder and two followers of its published index) on this machine, in one run. Extra arguments
# go to benches/replicas_e2e.py (see --help). The lake is generated once into bench-data/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
venv="$(bash tests/setup_python.sh | tail -n 1)"
cargo build --release -p astroflight-server --bin astroflight
exec "$venv/bin/python" benches/replicas_e2e.py --bin target/release/astroflight "$@"
