//! What the id-index scale benchmarks (`segment_scale`, `index_scale`) share: their settings
//! from the environment, the id-only lake generated once, and the measures of memory, cache and
//! latency.

use std::path::{Path, PathBuf};
use std::time::Instant;

use astroflight_gen::idlake::{generate_id_lake, IdLake};
use astroflight_index::SurveyKind;

/// A numeric setting from the environment.
pub fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// `SURVEY=lsst` for Rubin's id shapes, ZTF's otherwise.
pub fn survey() -> SurveyKind {
    match std::env::var("SURVEY").as_deref() {
        Ok("lsst") => SurveyKind::Lsst,
        _ => SurveyKind::Ztf,
    }
}

/// `DATA`, or the repository's `bench-data-index/` (ignored by git).
pub fn data_root() -> PathBuf {
    std::env::var("DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench-data-index"))
}

/// The id-only lake of `files` files of `per_file` alerts under `root`, generated the first
/// time it is asked for and reused after (a `done` marker says it is whole).
pub fn id_lake(root: &Path, kind: SurveyKind, files: u32, per_file: u32) -> PathBuf {
    let alerts = files as u64 * per_file as u64;
    let lake = root.join(format!("idlake-{}-{alerts}-{per_file}", kind.name()));
    if !lake.join("done").exists() {
        let _ = std::fs::remove_dir_all(&lake);
        let t = Instant::now();
        generate_id_lake(&lake, &IdLake::new(kind, files, per_file)).expect("generate");
        std::fs::write(lake.join("done"), b"").unwrap();
        eprintln!(
            "generated {files} files ({alerts} alerts) in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    lake
}

/// The `q` quantile of `v` (sorted in place).
pub fn pct(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * q).round() as usize]
}

/// A `/proc/self/status` memory field (`VmHWM:`, `VmRSS:`) in MB.
pub fn status_mb(field: &str) -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Drop a file's pages from the page cache.
pub fn drop_cache(path: &Path) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).unwrap();
    // SAFETY: a plain syscall on an open descriptor.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}
