//! Lakes of id columns only, with the shapes of the real streams, for measuring the index at
//! the scale of Fink's lake (hundreds of millions of alerts in a few GB of parquet).
//!
//! One file per night, in the lake's hive layout. A night is a run of exposures; each alert of an
//! exposure is on one of its detectors, and rows are in arrival order (exposure by exposure, the
//! detectors interleaved, as Kafka partitions deliver them). Objects recur over nights: an alert
//! is of a new object with probability 1/`alerts_per_object`, otherwise of an object first seen
//! in the last `recur_nights` nights, so an object has about `alerts_per_object` alerts.
//!
//! * **ZTF**: `objectId` (`ZTF` + the two digits of the year of the object's first night + 7
//!   letters), `candid` built as ZTF builds it (`pid` x 10^6 + 10,000 + the candidate's number
//!   on its quadrant, with `pid` from the night id, the exposure and the quadrant `rcid`), and
//!   `candidate.jd` of the exposure with 7 decimals (as ZTF's are). About 1,500 alerts per
//!   exposure, 64 quadrants.
//! * **Rubin**: `diaSource.diaSourceId` (from the visit, the detector of 189 and the source's
//!   number), `diaSource.diaObjectId` and `diaSource.midpointMjdTai` of the visit (not rounded).

use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayBuilder, Float64Builder, Int64Builder, RecordBatch, StringBuilder, StructArray};
use arrow_schema::{DataType, Field, Fields, Schema};

use astroflight_index::SurveyKind;

use crate::{civil_from_jd, GenError, GeneratedFile, IdFile, Rng};

/// The shape of an id-only lake.
#[derive(Debug, Clone)]
pub struct IdLake {
    pub kind: SurveyKind,
    pub files: u32,
    pub alerts_per_file: u32,
    /// The mean number of alerts of an object.
    pub alerts_per_object: u32,
    /// Objects recur over this many nights.
    pub recur_nights: u32,
    pub seed: u64,
}

impl IdLake {
    pub fn new(kind: SurveyKind, files: u32, alerts_per_file: u32) -> Self {
        IdLake {
            kind,
            files,
            alerts_per_file,
            alerts_per_object: 10,
            recur_nights: 60,
            seed: 7,
        }
    }
}

/// Alerts per exposure (ZTF's ~1 M alerts a night over ~700 exposures).
const PER_EXPOSURE: u32 = 1_500;
const ZTF_QUADRANTS: u64 = 64;
const RUBIN_DETECTORS: u64 = 189;
const LETTERS: u64 = 26u64.pow(7);

/// The objectId of ZTF object `n` first seen in `year`: 7 letters counted up within the year.
pub fn ztf_name(year: u32, n: u64) -> String {
    let mut v = n % LETTERS;
    let mut letters = [b'a'; 7];
    for l in letters.iter_mut().rev() {
        *l = b'a' + (v % 26) as u8;
        v /= 26;
    }
    format!("ZTF{:02}{}", year % 100, std::str::from_utf8(&letters).expect("ascii"))
}

/// Write the lake under `out`; deterministic for a shape.
pub fn generate_id_lake(out: &Path, lake: &IdLake) -> Result<Vec<GeneratedFile>, GenError> {
    let ztf = lake.kind == SurveyKind::Ztf;
    let schema = Arc::new(if ztf {
        Schema::new(vec![
            Field::new("objectId", DataType::Utf8, false),
            Field::new("candid", DataType::Int64, false),
            Field::new("candidate", DataType::Struct(jd_fields()), false),
        ])
    } else {
        Schema::new(vec![Field::new("diaSource", DataType::Struct(dia_fields()), false)])
    });
    let mut rng = Rng::new(lake.seed);
    // Every object's name (ZTF) is `ZTF{year}` + its number within that year.
    let mut objects: Vec<(u32, u64)> = Vec::new();
    let mut per_year: std::collections::HashMap<u32, u64> = Default::default();
    // The first object first seen on each night: recurrences pick from the last nights'.
    let mut night_start: Vec<usize> = Vec::new();
    let mut done = Vec::new();
    for night in 0..lake.files {
        night_start.push(objects.len());
        let (epoch_day, jd0) = (18_262 + night as i64, 2_458_849.5 + night as f64);
        let (y, _, _) = civil_from_jd(jd0);
        let mut w = IdFile::create(out, night, jd0, schema.clone())?;
        let exposures = lake.alerts_per_file.div_ceil(PER_EXPOSURE).max(1);
        let recur_from = night_start[night.saturating_sub(lake.recur_nights) as usize];
        let (mut names, mut ids, mut groups, mut times) = (
            StringBuilder::new(),
            Int64Builder::new(),
            Int64Builder::new(),
            Float64Builder::new(),
        );
        let mut rows = 0u32;
        for e in 0..exposures {
            let n = PER_EXPOSURE.min(lake.alerts_per_file - e * PER_EXPOSURE);
            let frac = 0.1 + 0.35 * e as f64 / exposures as f64;
            let mut counters = vec![0u64; if ztf { ZTF_QUADRANTS } else { RUBIN_DETECTORS } as usize];
            for _ in 0..n {
                let new = objects.len() == recur_from || rng.below(lake.alerts_per_object as u64) == 0;
                let object = if new {
                    let year = y as u32;
                    let k = per_year.entry(year).or_default();
                    objects.push((year, *k));
                    *k += 1;
                    objects.len() - 1
                } else {
                    recur_from + rng.below((objects.len() - recur_from) as u64) as usize
                };
                let det = rng.below(counters.len() as u64);
                let k = counters[det as usize];
                counters[det as usize] += 1;
                if ztf {
                    let (year, n) = objects[object];
                    names.append_value(ztf_name(year, n));
                    let nid = 1_000 + night as u64;
                    let pid = ((nid * 100_000 + 57_000 + e as u64) * 100 + det) * 100 + 15;
                    ids.append_value((pid * 1_000_000 + 10_000 + k) as i64);
                    times.append_value(((jd0 + frac) * 1e7).round() / 1e7);
                } else {
                    let visit = epoch_day as u64 * 1_000 + e as u64;
                    ids.append_value((600_000_000_000_000_000 + (visit * RUBIN_DETECTORS + det) * 4_096 + k) as i64);
                    groups.append_value(610_000_000_000_000_000 + object as i64 * 7);
                    times.append_value(40_587.0 + epoch_day as f64 + frac);
                }
                rows += 1;
            }
            if ids.len() >= 65_536 || e + 1 == exposures {
                let columns: Vec<arrow::array::ArrayRef> = if ztf {
                    vec![
                        Arc::new(names.finish()),
                        Arc::new(ids.finish()),
                        Arc::new(StructArray::new(jd_fields(), vec![Arc::new(times.finish())], None)),
                    ]
                } else {
                    vec![Arc::new(StructArray::new(
                        dia_fields(),
                        vec![
                            Arc::new(ids.finish()),
                            Arc::new(groups.finish()),
                            Arc::new(times.finish()),
                        ],
                        None,
                    ))]
                };
                w.write(&RecordBatch::try_new(schema.clone(), columns)?)?;
            }
        }
        done.push(w.finish(rows)?);
    }
    Ok(done)
}

fn jd_fields() -> Fields {
    Fields::from(vec![Field::new("jd", DataType::Float64, false)])
}

fn dia_fields() -> Fields {
    Fields::from(vec![
        Field::new("diaSourceId", DataType::Int64, false),
        Field::new("diaObjectId", DataType::Int64, false),
        Field::new("midpointMjdTai", DataType::Float64, false),
    ])
}
