#!/usr/bin/env bash
# The id index at lake scale (issue 21's table): first build in one go, a nightly build into it,
# bytes on disk per alert, peak RSS, time to open, lookups warm and cold, and projections to
# 1 B and 10 B alerts. Defaults: 100 M ZTF-shaped alerts in files of 1 M, then a night of 1 M
# (SURVEY=lsst for Rubin's shapes; ALERTS, ALERTS_PER_FILE, NIGHTLY, SAMPLES to change them).
# The id-only lake is generated once into bench-data-index/ (~1.6 GB for 100 M ZTF alerts).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
mkdir -p bench-data-index
DATA="$PWD/bench-data-index" cargo bench -p astroflight-benches --bench index_scale
