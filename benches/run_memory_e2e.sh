#!/usr/bin/env bash
# Server memory under slow readers: peak RSS of the release server with 32 concurrent clients
# each reading a 1,000-alert ticket slowly. Extra arguments go to benches/memory_e2e.py.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
venv="$(bash tests/setup_python.sh | tail -n 1)"
cargo build --release -p astroflight-server --bin astroflight
exec "$venv/bin/python" benches/memory_e2e.py --bin target/release/astroflight "$@"
