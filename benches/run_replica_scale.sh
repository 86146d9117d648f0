#!/usr/bin/env bash
# A follower of a published index at lake scale (issue 23): the builder indexes an id-only lake
# (default 20 M ZTF-shaped alerts; ALERTS to change it) and publishes it to moto's S3 on
# 127.0.0.1; a follower server starts on it, and its time to ready, lake requests, download and
# peak RSS are printed beside the builder's lookup footprint (benches/benches/replica_scale.rs).
# LOCAL=1 publishes to a local folder instead. The lake is generated once into bench-data-index/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
mkdir -p bench-data-index
if [ "${LOCAL:-0}" = 1 ]; then
  exec env DATA="$PWD/bench-data-index" cargo bench -p astroflight-benches --bench replica_scale
fi
venv="$(bash tests/setup_python.sh | tail -n 1)"
port="$("$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$venv/bin/python" -m moto.server -H 127.0.0.1 -p "$port" > bench-data-index/moto.log 2>&1 &
moto=$!
trap 'kill $moto 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$port/moto-api/data.json" >/dev/null && break
  sleep 0.2
done
"$venv/bin/python" -c "import boto3; boto3.client('s3', endpoint_url='http://127.0.0.1:$port', region_name='us-east-1', aws_access_key_id='testing', aws_secret_access_key='testing').create_bucket(Bucket='replica')"
DATA="$PWD/bench-data-index" S3_ENDPOINT="http://127.0.0.1:$port" S3_BUCKET=replica \
  cargo bench -p astroflight-benches --bench replica_scale
