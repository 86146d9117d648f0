#!/usr/bin/env bash
# End-to-end cutout benchmark: astroflight (release, over Flight on 127.0.0.1) next to pyarrow's
# filter read (how Fink's cutout API works) and a DuckDB point query, on the same generated
# Spark-like lake, in one run. Extra arguments go to benches/cutout_e2e.py (see --help).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
venv="$(bash tests/setup_python.sh | tail -n 1)"
cargo build --release -p astroflight-server --bin astroflight --example latency
exec "$venv/bin/python" benches/cutout_e2e.py --bin target/release/astroflight \
  --latency-bin target/release/examples/latency "$@"
