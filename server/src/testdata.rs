//! Where the real alert samples are: `$ASTROFLIGHT_SHARED_DATA`, else `../shared/data` beside
//! the checkout. Tests that need them print that they were skipped when they are absent.

use std::path::PathBuf;

pub fn shared_data_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("ASTROFLIGHT_SHARED_DATA") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"),
    };
    dir.join("README.md").exists().then_some(dir)
}

/// The shared data directory, or a loud skip notice (the caller returns).
pub fn shared_data_or_skip(test: &str) -> Option<PathBuf> {
    let d = shared_data_dir();
    if d.is_none() {
        eprintln!("SKIPPED {test}: ../shared/data is absent (set ASTROFLIGHT_SHARED_DATA to run it)");
    }
    d
}
