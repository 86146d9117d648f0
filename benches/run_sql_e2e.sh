#!/usr/bin/env bash
# End-to-end Flight SQL benchmark: astroflight (release, Flight SQL on 127.0.0.1, read through
# ADBC) next to DuckDB and pyarrow.dataset on the alert batch benchmark's generated lake, in one
# run. Extra arguments go to benches/sql_e2e.py (see --help). The first run generates ~5 GB of
# lake in bench-data/alerts and indexes it; later runs (and benches/run_alerts_e2e.sh) reuse both.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
venv="$(bash tests/setup_python.sh | tail -n 1)"
cargo build --release -p astroflight-server --bin astroflight
exec "$venv/bin/python" benches/sql_e2e.py --bin target/release/astroflight "$@"
