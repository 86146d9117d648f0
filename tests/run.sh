#!/usr/bin/env bash
# The whole test suite: formatting, lints, Rust unit and integration tests, then the Python
# client tests (pyarrow.flight, astropy) against the real server binary on 127.0.0.1.
# Installs what it needs (the Python environment in .venv) through the project's own scripts.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n=== %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all --check
step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings
step "cargo test (unit and in-process integration tests)"
cargo test --workspace
step "python environment"
venv="$(bash tests/setup_python.sh | tail -n 1)"
step "build the server binary"
cargo build -p astroflight-server --bin astroflight
step "pytest tests/python (pyarrow.flight against the real server)"
ASTROFLIGHT_BIN="$PWD/target/debug/astroflight" "$venv/bin/python" -m pytest tests/python -v -rs
