//! The demo lake: with no configuration, `astroflight serve` builds a small lake (ZTF and Rubin
//! alerts, and a few FITS files) in a directory, indexes it and serves it. This module only writes the lake; the binary turns
//! it into a configuration.

use std::path::{Path, PathBuf};

use astroflight_index::SurveyKind;

use crate::{generate, lake_exists, GenError, GenOptions};

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

/// One dataset of the demo lake.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoDataset {
    pub name: &'static str,
    /// The alert survey; None for the FITS dataset.
    pub survey: Option<SurveyKind>,
    pub root: PathBuf,
}

/// FITS files of the demo's `images` dataset (every kind of [`crate::fitslake`], twice).
pub const DEMO_FITS_FILES: usize = 12;

/// Generate the demo lake in `dir` unless it is there; returns its datasets. The index belongs
/// in `dir/index`.
pub fn prepare(dir: &Path, alerts_per_file: u32) -> Result<Vec<DemoDataset>, GenError> {
    let mut out = Vec::new();
    for (name, survey) in [("ztf", SurveyKind::Ztf), ("lsst", SurveyKind::Lsst)] {
        let root = dir.join(name);
        if !lake_exists(&root) {
            tracing::info!(dir = %root.display(), "generating the demo lake");
            generate(&GenOptions {
                survey,
                out: root.clone(),
                nights: 3,
                files_per_night: 2,
                alerts_per_file,
                ..Default::default()
            })?;
        }
        out.push(DemoDataset {
            name,
            survey: Some(survey),
            root,
        });
    }
    let root = dir.join("images");
    if !root.join("img").is_dir() {
        tracing::info!(dir = %root.display(), "generating the demo FITS files");
        crate::fitslake::generate_fits_lake(&crate::fitslake::FitsLakeOptions {
            out: root.clone(),
            files: DEMO_FITS_FILES,
            side: 256,
            seed: 42,
        })?;
    }
    out.push(DemoDataset {
        name: "images",
        survey: None,
        root,
    });
    Ok(out)
}
