//! Where the real alert samples are: `$ASTROFLIGHT_SHARED_DATA`, else `../shared/data` beside
//! the checkout. Tests that need them say so loudly when they are absent: outside CI they are
//! skipped with a notice; with `CI=true` the test fails, because CI always has them.

use std::path::PathBuf;

pub fn shared_data_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("ASTROFLIGHT_SHARED_DATA") {
        Some(d) => PathBuf::from(d),
        // This crate is server/gen: the checkout is two levels up, and shared/ is beside it.
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"),
    };
    dir.join("README.md").exists().then_some(dir)
}

/// True when running under CI (`CI=true`), where the real samples must be present.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// The shared data directory, or a loud skip notice (the caller returns). Under CI, absent
/// data is a failure, not a skip.
pub fn shared_data_or_skip(test: &str) -> Option<PathBuf> {
    let d = shared_data_dir();
    if d.is_none() {
        assert!(
            !in_ci(),
            "{test}: ../shared/data is absent and CI=true: the real-sample tests must run in CI \
             (set ASTROFLIGHT_SHARED_DATA if it lives elsewhere)"
        );
        eprintln!("SKIPPED {test}: ../shared/data is absent (set ASTROFLIGHT_SHARED_DATA to run it)");
    }
    d
}
