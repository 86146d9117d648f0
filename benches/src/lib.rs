//! Criterion benchmarks of astroflight's stages live in `benches/benches/`; the end-to-end
//! benchmark against pyarrow and DuckDB is `benches/cutout_e2e.py` (run by `benches/run_e2e.sh`).
