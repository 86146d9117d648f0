#!/usr/bin/env bash
# The whole test suite: formatting, lints, Rust unit and integration tests, then the Python
# client tests (pyarrow.flight, astropy) against the real server binary on 127.0.0.1.
# Installs what it needs (the Python environment in .venv with moto's S3 server and ADBC,
# Hadoop's jars for MiniDFSCluster, Arrow's Flight SQL JDBC driver) through the project's own
# scripts; the storage tests start moto, a
# MiniDFSCluster, a Range HTTP server and a fault proxy on 127.0.0.1 and stop them at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Each step's wall time, printed at the end (also when a step fails), so that a slow CI run
# says where its time went.
phases=()
phase_name=""
phase_start=$SECONDS
run_start=$SECONDS
end_phase() {
    if [ -n "$phase_name" ]; then phases+=("$(printf '%6d s  %s' $((SECONDS - phase_start)) "$phase_name")"); fi
}
step() {
    end_phase
    phase_name="$*"
    phase_start=$SECONDS
    printf '\n=== %s\n' "$*"
}
report() {
    local rc=$?
    end_phase
    printf '\n=== phase times (exit %d)\n' "$rc"
    printf '%s\n' "${phases[@]}"
    printf '%6d s  total\n' $((SECONDS - run_start))
}
trap report EXIT

# A CI run builds once from a fresh clone: incremental compilation state (several GB under
# target/debug/incremental) would only cost disk and time there.
if [ "${CI:-}" = true ]; then export CARGO_INCREMENTAL=0; fi

step "cargo fmt --check"
cargo fmt --all --check
step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings
step "cargo test (unit and in-process integration tests)"
cargo test --workspace
step "python environment"
venv="$(bash tests/setup_python.sh | tail -n 1)"
step "Hadoop jars for the MiniDFSCluster launcher (Maven Central, cached)"
bash tests/hdfs/minihdfs.sh --classpath-only
step "the Flight SQL JDBC driver for the JDBC client test (Maven Central, cached)"
bash tests/jdbc/jdbc.sh --classpath-only
step "the server binary (built by cargo test for the integration tests; this is a no-op check)"
# Not `cargo build -p astroflight-server`: selecting one package resolves features without the
# workspace's dev-dependencies, which rebuilds every dependency (DataFusion included) a second time.
cargo test --workspace --no-run
test -x target/debug/astroflight
step "pytest tests/python (pyarrow.flight against the real server)"
ASTROFLIGHT_BIN="$PWD/target/debug/astroflight" "$venv/bin/python" -m pytest tests/python -v -rs
