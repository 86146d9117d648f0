#!/usr/bin/env bash
# End-to-end cutout benchmark across storage backends (file, S3, HDFS, HTTP) with pyarrow's S3
# filesystem as the peer, in one run. Starts moto's S3 server, a MiniDFSCluster and a range
# HTTP server on 127.0.0.1 through the test scripts, and stops them at the end. Extra arguments
# go to benches/storage_e2e.py (see --help).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
venv="$(bash tests/setup_python.sh | tail -n 1)"
cargo build --release -p astroflight-server --bin astroflight
exec "$venv/bin/python" benches/storage_e2e.py --bin target/release/astroflight "$@"
