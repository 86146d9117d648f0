//! The embedded default: with no configuration, `astroflight serve` builds a small demo lake
//! (ZTF and Rubin) in a directory, indexes it and serves it.

use std::path::{Path, PathBuf};

use astroflight_index::SurveyKind;

use crate::config::{Config, DatasetConfig, DatasetKind};
use crate::error::{Error, Result};
use crate::gen::{self, GenOptions};

/// Alerts per file of the default demo lake (3 nights x 2 files per survey).
pub const DEMO_ALERTS_PER_FILE: u32 = 200;
/// Ids that exist in the default demo lake (seed 42), quoted in the README; the `demo` test
/// checks them.
pub const DEMO_OBJECT_ID: &str = "ZTF18klvscig";
pub const DEMO_CANDID: i64 = 1100000000000000138;
pub const DEMO_DIA_SOURCE_ID: i64 = 170000000000001000;

/// `$ASTROFLIGHT_DEMO_DIR`, else `./astroflight-demo`.
pub fn default_dir() -> PathBuf {
    std::env::var_os("ASTROFLIGHT_DEMO_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("astroflight-demo"))
}

/// Generate the demo lake in `dir` unless it is there, and return its configuration.
pub fn prepare(dir: &Path, alerts_per_file: u32) -> Result<Config> {
    let mut config = Config::default();
    for (name, survey, kind) in [
        ("ztf", SurveyKind::Ztf, DatasetKind::Ztf),
        ("lsst", SurveyKind::Lsst, DatasetKind::Lsst),
    ] {
        let out = dir.join(name);
        if !gen::lake_exists(&out) {
            tracing::info!(dir = %out.display(), "generating the demo lake");
            gen::generate(&GenOptions {
                survey,
                out: out.clone(),
                nights: 3,
                files_per_night: 2,
                alerts_per_file,
                ..Default::default()
            })
            .map_err(|e| Error::Internal(format!("cannot generate the demo lake: {e}")))?;
        }
        config
            .datasets
            .push(DatasetConfig::new(name, kind, out.to_string_lossy()));
    }
    config.index_dir = dir.join("index");
    config.apply_env(|k| std::env::var(k).ok());
    Ok(config)
}
