#!/usr/bin/env bash
# End-to-end FITS header and section benchmark on S3 (moto on 127.0.0.1 behind a counting proxy):
# astroflight's header catalog next to astropy over fsspec (s3fs, default and tuned block size)
# and a whole-file GET, then a section of a large image next to astropy's `.section`. Extra
# arguments go to benches/fits_e2e.py (see --help). Generated files live in bench-data-fits/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
venv="$(bash tests/setup_python.sh | tail -n 1)"
cargo build --release -p astroflight-server --bin astroflight
exec "$venv/bin/python" benches/fits_e2e.py --bin target/release/astroflight "$@"
