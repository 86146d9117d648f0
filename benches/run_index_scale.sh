#!/usr/bin/env bash
# Index scale: build rate, bytes on disk per alert and lookup latency on an index of ALERTS
# alerts (default 10 million), with the index larger than its cache; projected to 500 million.
# By default the index is built as the lake grows (INCREMENTAL=1: one build per landed file of
# ALERTS_PER_FILE=100000 alerts): a one-go sled build of 10 million alerts does not fit in
# 24 GiB. The id-only lake is generated once into bench-data-index/ (~200 MB for 10 M alerts).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
mkdir -p bench-data-index
INCREMENTAL="${INCREMENTAL:-1}" ALERTS_PER_FILE="${ALERTS_PER_FILE:-100000}" \
  DATA="$PWD/bench-data-index" cargo bench -p astroflight-benches --bench index_scale
