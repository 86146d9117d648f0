//! `astroflight gen`: a deterministic generator of Fink-like alert lakes, for the demo, the tests
//! and the benchmarks.
//!
//! Files are laid out as Fink's lake (`year=YYYY/month=MM/day=DD/part-NNNNN-….c000.snappy.parquet`)
//! and written as Spark writes them by default: snappy, one row group per file, ~1 MB pages,
//! an offset index; or, with `page_index: false`, like old parquet-mr files (no page index).
//! The stamp columns are written without dictionary encoding (stamps never repeat, and Spark
//! abandons the dictionary after the first page anyway).
//!
//! ZTF rows follow the raw alert schema 3.3 (all 103 `candidate` fields, `prv_candidates`, and
//! the three cutouts as gzipped 63x63 float32 FITS stamps, distinct per row); Rubin rows follow
//! Fink's `lsst.v9_0` (or `v10_0`) schema with plain FITS cutouts. Values are plausible, not
//! physical: positions are fixed per object, times increase, histories precede the alert.

pub mod demo;
pub mod fitslake;
pub mod idlake;
pub mod schema;
pub mod testdata;
#[cfg(test)]
mod tests;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    new_null_array, ArrayRef, BinaryBuilder, BooleanBuilder, Float32Builder, Float64Builder, Int32Builder,
    Int64Builder, ListArray, RecordBatch, StringBuilder, StructArray, TimestampNanosecondBuilder,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::arrow::arrow_writer::ArrowWriterOptions;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use astroflight_index::SurveyKind;

use astroflight_fits as fits;

/// Which Rubin schema to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LsstSchema {
    V9_0,
    V10_0,
}

#[derive(Debug, Clone)]
pub struct GenOptions {
    pub survey: SurveyKind,
    pub out: PathBuf,
    pub nights: u32,
    pub files_per_night: u32,
    pub alerts_per_file: u32,
    pub seed: u64,
    /// Write an offset index (Spark >= 3 / parquet-mr >= 1.11). false: like old parquet-mr files.
    pub page_index: bool,
    pub lsst_schema: LsstSchema,
    /// First night, as a Julian date at 0h UT (default 2020-01-01).
    pub first_night_jd: f64,
    /// Side of the square stamps in pixels; None: the survey's (ZTF 63, Rubin 51). Benchmarks
    /// shrink them to keep million-alert lakes small on disk.
    pub stamp_side: Option<usize>,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions {
            survey: SurveyKind::Ztf,
            out: PathBuf::from("lake"),
            nights: 3,
            files_per_night: 2,
            alerts_per_file: 2500,
            seed: 42,
            page_index: true,
            lsst_schema: LsstSchema::V9_0,
            first_night_jd: 2458849.5,
            stamp_side: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedFile {
    pub path: PathBuf,
    pub bytes: u64,
    pub alerts: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum GenError {
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot encode parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("cannot build arrays: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("invalid options: {0}")]
    Options(String),
}

/// SplitMix64: tiny, fast, and the same stream on every platform and version.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn normal(&mut self) -> f64 {
        let u = self.f64().max(1e-300);
        let v = self.f64();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
    pub fn chance(&mut self, p: f64) -> bool {
        self.f64() < p
    }
}

/// Proleptic Gregorian date of a Julian date.
pub fn civil_from_jd(jd: f64) -> (i32, u32, u32) {
    let (y, m, d) = astroflight_proto::alerts::civil_from_days((jd - 2440587.5).floor() as i64);
    (y as i32, m, d)
}

/// The objectId of the n-th generated ZTF object: `ZTF` + 2-digit year + 7 letters.
pub fn ztf_object_id(n: u64) -> String {
    const SPACE: u64 = 26u64.pow(7);
    // Multiplying by an odd number coprime to 26 permutes [0, 26^7): distinct and scattered.
    let mut v = (n % SPACE).wrapping_mul(1_103_515_245) % SPACE;
    let mut letters = [b'a'; 7];
    for l in letters.iter_mut().rev() {
        *l = b'a' + (v % 26) as u8;
        v /= 26;
    }
    format!(
        "ZTF{}{}",
        18 + (n / SPACE) % 4,
        std::str::from_utf8(&letters).expect("ascii")
    )
}

/// One alert to generate: the values its columns derive from.
#[derive(Clone)]
struct Alert {
    object: u64,
    object_id: String,
    candid: i64,
    dia_object_id: i64,
    jd: f64,
    ra: f64,
    dec: f64,
    mag: f64,
    fid: i32,
    n_prv: usize,
    n_forced: usize,
    seed: u64,
}

/// What a generated value belongs to: an alert, or the k-th element of one of its histories.
#[derive(Clone, Copy)]
enum Item<'a> {
    Alert(&'a Alert),
    History(&'a Alert, usize),
}

impl<'a> Item<'a> {
    fn alert(&self) -> &'a Alert {
        match self {
            Item::Alert(a) | Item::History(a, _) => a,
        }
    }
    /// 0 for the alert itself, k+1 for the k-th history entry (older as k grows).
    fn depth(&self) -> usize {
        match self {
            Item::Alert(_) => 0,
            Item::History(_, k) => k + 1,
        }
    }
}

struct FileGen<'o> {
    opts: &'o GenOptions,
    schema: SchemaRef,
    rng: Rng,
}

const STAMP_KINDS: [&str; 3] = ["Science", "Template", "Difference"];

/// Rows per writer call; with ~15 KB stamps a page ends within ~16 rows past 1 MB.
const PAGE_CHECK_ROWS: usize = 16;

impl FileGen<'_> {
    fn survey(&self) -> SurveyKind {
        self.opts.survey
    }

    fn batch(&mut self, alerts: &[Alert]) -> Result<RecordBatch, GenError> {
        let items: Vec<Item> = alerts.iter().map(Item::Alert).collect();
        let schema = self.schema.clone();
        let cols = schema
            .fields()
            .iter()
            .map(|f| self.column(f.name(), f, &items))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RecordBatch::try_new(schema, cols)?)
    }

    fn column(&mut self, path: &str, field: &Field, items: &[Item]) -> Result<ArrayRef, GenError> {
        let n = items.len();
        Ok(match field.data_type() {
            DataType::Struct(fields) => {
                let nulls = self.struct_nulls(path, field, items);
                let children = fields
                    .iter()
                    .map(|f| self.column(&format!("{path}.{}", f.name()), f, items))
                    .collect::<Result<Vec<_>, _>>()?;
                Arc::new(StructArray::try_new(fields.clone(), children, nulls)?)
            }
            DataType::List(child) => {
                let mut lens = Vec::with_capacity(n);
                let mut child_items = Vec::new();
                for it in items {
                    let a = it.alert();
                    let len = match (path, it) {
                        ("prv_candidates" | "prvDiaSources", Item::Alert(_)) => a.n_prv,
                        ("prvDiaForcedSources", Item::Alert(_)) => a.n_forced,
                        _ => self.rng.below(3) as usize,
                    };
                    lens.push(len);
                    child_items.extend((0..len).map(|k| Item::History(a, k)));
                }
                let values = self.column(path, child, &child_items)?;
                Arc::new(ListArray::try_new(
                    child.clone(),
                    OffsetBuffer::from_lengths(lens),
                    values,
                    None,
                )?)
            }
            DataType::Float64 => {
                let mut b = Float64Builder::with_capacity(n);
                for it in items {
                    let v = self.float(path, it);
                    b.append_option(v.filter(|_| !self.null(field)));
                }
                Arc::new(b.finish())
            }
            DataType::Float32 => {
                let mut b = Float32Builder::with_capacity(n);
                for it in items {
                    let v = self.float(path, it).map(|v| v as f32);
                    b.append_option(v.filter(|_| !self.null(field)));
                }
                Arc::new(b.finish())
            }
            DataType::Int64 => {
                let mut b = Int64Builder::with_capacity(n);
                for it in items {
                    let v = self.int(path, it);
                    b.append_option(v.filter(|_| !self.null(field)));
                }
                Arc::new(b.finish())
            }
            DataType::Int32 => {
                let mut b = Int32Builder::with_capacity(n);
                for it in items {
                    let v = self.int(path, it).map(|v| v as i32);
                    b.append_option(v.filter(|_| !self.null(field)));
                }
                Arc::new(b.finish())
            }
            DataType::Boolean => {
                let mut b = BooleanBuilder::with_capacity(n);
                for _ in items {
                    let v = self.rng.chance(0.1);
                    b.append_option(Some(v).filter(|_| !self.null(field)));
                }
                Arc::new(b.finish())
            }
            DataType::Utf8 => {
                let mut b = StringBuilder::with_capacity(n, n * 12);
                for it in items {
                    let v = self.string(path, it);
                    b.append_option(v.filter(|_| !self.null(field)));
                }
                Arc::new(b.finish())
            }
            DataType::Binary => {
                let mut b = BinaryBuilder::with_capacity(n, n * 16_000);
                for it in items {
                    match self.stamp_kind(path) {
                        Some(kind) => b.append_value(self.stamp(kind, it.alert())),
                        None => b.append_null(),
                    }
                }
                Arc::new(b.finish())
            }
            DataType::Timestamp(TimeUnit::Nanosecond, _) => {
                let mut b = TimestampNanosecondBuilder::with_capacity(n);
                for it in items {
                    let unix_s = (it.alert().jd - 2440587.5) * 86400.0;
                    b.append_value((unix_s * 1e9) as i64);
                }
                Arc::new(b.finish().with_data_type(field.data_type().clone()))
            }
            other if field.is_nullable() => new_null_array(other, n),
            other => {
                return Err(GenError::Options(format!(
                    "column {path} has type {other}, which the generator cannot fill"
                )))
            }
        })
    }

    /// Whole structs that are absent for most alerts (solar-system data).
    fn struct_nulls(&mut self, path: &str, field: &Field, items: &[Item]) -> Option<NullBuffer> {
        if !field.is_nullable() || !matches!(path, "ssSource" | "MPCORB" | "mpc_orbits" | "ssObject") {
            return None;
        }
        Some(NullBuffer::from(
            items.iter().map(|_| self.rng.chance(0.05)).collect::<Vec<bool>>(),
        ))
    }

    /// A sprinkle of nulls in nullable scalar fields that carry no identity.
    fn null(&mut self, field: &Field) -> bool {
        field.is_nullable()
            && !matches!(
                field.name().as_str(),
                "objectId"
                    | "candid"
                    | "jd"
                    | "diaSourceId"
                    | "diaObjectId"
                    | "midpointMjdTai"
                    | "ra"
                    | "dec"
                    | "fid"
                    | "band"
            )
            && self.rng.chance(0.02)
    }

    fn stamp_kind(&self, path: &str) -> Option<&'static str> {
        let name = path.strip_suffix(".stampData").unwrap_or(path);
        STAMP_KINDS.iter().find(|k| name == format!("cutout{k}")).copied()
    }

    fn float(&mut self, path: &str, it: &Item) -> Option<f64> {
        let a = it.alert();
        let d = it.depth() as f64;
        let leaf = path.rsplit('.').next().unwrap_or(path);
        let rng = &mut self.rng;
        Some(match leaf {
            "jd" => a.jd - d * (1.0 + 0.3 * rng.f64()),
            "midpointMjdTai" => a.jd - 2400000.5 - d * (1.0 + 0.3 * rng.f64()),
            "jdstarthist" => a.jd - a.n_prv as f64 * 1.3,
            "jdendhist" => a.jd,
            "ra" => a.ra + rng.normal() * 1e-5,
            "dec" => a.dec + rng.normal() * 1e-5,
            "magpsf" | "magap" | "magnr" => {
                // Histories hold non-detections (null magnitude) too.
                if it.depth() > 0 && rng.chance(0.3) {
                    return None;
                }
                a.mag + 0.3 * rng.normal()
            }
            "sigmapsf" | "sigmagap" | "sigmagnr" => 0.05 + 0.1 * rng.f64(),
            "diffmaglim" => 20.0 + rng.f64(),
            "psfFlux" | "scienceFlux" => 10f64.powf((31.4 - a.mag) / 2.5) * (1.0 + 0.05 * rng.normal()),
            "psfFluxErr" | "scienceFluxErr" => 10f64.powf((31.4 - a.mag) / 2.5) * 0.05,
            "rb" | "drb" | "classtar" | "reliability" => rng.f64(),
            "distnr" | "distpsnr1" | "distpsnr2" | "distpsnr3" => 0.1 + 5.0 * rng.f64(),
            "ssdistnr" => -999.0,
            _ => (rng.f64() * 100.0 * 1000.0).round() / 1000.0,
        })
    }

    fn int(&mut self, path: &str, it: &Item) -> Option<i64> {
        let a = it.alert();
        let leaf = path.rsplit('.').next().unwrap_or(path);
        let rng = &mut self.rng;
        Some(match leaf {
            "candid" => {
                if it.depth() > 0 {
                    if rng.chance(0.3) {
                        return None;
                    }
                    a.candid - 1_000_000_000 * it.depth() as i64
                } else {
                    a.candid
                }
            }
            "diaSourceId" => a.candid - 1_000 * it.depth() as i64,
            "diaForcedSourceId" => a.candid + 500 + it.depth() as i64,
            "diaObjectId" => a.dia_object_id,
            "fid" => a.fid as i64,
            "programid" => 1,
            "pid" => a.candid / 10_000_000,
            "field" => 500 + (a.object % 300) as i64,
            "rcid" => (a.object % 64) as i64,
            "ndethist" | "ncovhist" => a.n_prv as i64 + 1,
            "nid" => ((a.jd - 2458119.5) as i64).max(0),
            "visit" => 2_024_000_000 + (a.jd * 100.0) as i64 % 1_000_000,
            "detector" => (a.object % 189) as i64,
            _ => rng.below(1000) as i64,
        })
    }

    fn string(&mut self, path: &str, it: &Item) -> Option<String> {
        let a = it.alert();
        let leaf = path.rsplit('.').next().unwrap_or(path);
        Some(match leaf {
            "objectId" => a.object_id.clone(),
            "schemavsn" => "3.3".into(),
            "publisher" => "Fink (astroflight gen)".into(),
            "isdiffpos" => if self.rng.chance(0.8) { "t" } else { "f" }.into(),
            "band" => ["u", "g", "r", "i", "z", "y"][(a.fid as usize + it.depth()) % 6].into(),
            "fileName" => {
                let kind = path
                    .strip_prefix("cutout")
                    .and_then(|p| p.split('.').next())
                    .unwrap_or("");
                let tag = match kind {
                    "Science" => "scimref",
                    "Template" => "refimg",
                    _ => "diff",
                };
                format!("candid{}_pid{}_targ_{tag}.fits.gz", a.candid, a.candid / 10_000_000)
            }
            "pdiffimfilename" => format!("ztf_{}_diff.fits", a.candid / 10_000_000),
            "cdsxmatch" => {
                // One label per object, drawn by weight from the object number.
                let total: u64 = GEN_CLASSES.iter().map(|c| c.1).sum();
                let mut x = a.object.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11;
                x %= total;
                let mut label = GEN_CLASSES[0].0;
                for (name, w) in GEN_CLASSES {
                    if x < w {
                        label = name;
                        break;
                    }
                    x -= w;
                }
                label.into()
            }
            "programpi" => "Kulkarni".into(),
            "observation_reason" => "wfd".into(),
            "target_name" => format!("field{}", a.object % 1000),
            _ => {
                let n = 3 + self.rng.below(6);
                (0..n).map(|_| (b'a' + self.rng.below(26) as u8) as char).collect()
            }
        })
    }

    /// A stamp: sky background and noise, plus the transient as a Gaussian PSF whose flux
    /// follows the alert's magnitude. ZTF: 63x63, gzipped; Rubin: 51x51, plain FITS.
    fn stamp(&self, kind: &str, a: &Alert) -> Vec<u8> {
        let k = STAMP_KINDS.iter().position(|s| *s == kind).unwrap_or(0) as u64;
        let mut rng = Rng::new(a.seed.wrapping_mul(31).wrapping_add(k));
        let side = self
            .opts
            .stamp_side
            .unwrap_or(if self.survey() == SurveyKind::Ztf { 63 } else { 51 });
        let (bkg, noise, flux) = match kind {
            "Science" => (150.0 + 50.0 * rng.f64(), 8.0, 10f64.powf((26.0 - a.mag) / 2.5)),
            "Template" => (150.0 + 50.0 * rng.f64(), 3.0, 0.0),
            _ => (0.0, 9.0, 10f64.powf((26.0 - a.mag) / 2.5)),
        };
        let c = (side as f64 - 1.0) / 2.0 + 0.5 * rng.normal();
        let sigma2 = 2.0 * 1.8f64.powi(2);
        let mut px = Vec::with_capacity(side * side);
        for y in 0..side {
            for x in 0..side {
                let r2 = (x as f64 - c).powi(2) + (y as f64 - c).powi(2);
                let v = bkg + noise * rng.normal() + flux / (std::f64::consts::PI * sigma2) * (-r2 / sigma2).exp();
                px.push(v as f32);
            }
        }
        let cards = [
            ("OBJECT", format!("'{}'", a.object_id), "astroflight gen"),
            ("CANDID", a.candid.to_string(), "alert id"),
            ("JD", format!("{:.7}", a.jd), "observation time"),
            ("STAMP", format!("'{kind}'"), "cutout kind"),
        ];
        let mut f = fits::encode_image_f32(side, side, &px, &cards);
        if self.survey() == SurveyKind::Lsst {
            // Rubin stamps hold three HDUs, as real ones do: the image, its uncertainty, and the
            // PSF (a normalised Gaussian). Drawn from no random stream, so the rest of the lake
            // (ids, images) is the same as with one-HDU stamps.
            let sigma: Vec<f32> = px
                .iter()
                .map(|v| (v.abs() + noise as f32 * noise as f32).sqrt())
                .collect();
            f.extend(fits::encode_extension_f32(
                side,
                side,
                &sigma,
                &[("EXTNAME", "'UNCERTAINTY'".into(), "1-sigma, same units as the image")],
            ));
            let p = 15usize;
            let psf: Vec<f32> = (0..p * p)
                .map(|i| {
                    let (x, y) = ((i % p) as f64 - 7.0, (i / p) as f64 - 7.0);
                    ((-(x * x + y * y) / sigma2).exp() / (std::f64::consts::PI * sigma2)) as f32
                })
                .collect();
            f.extend(fits::encode_extension_f32(
                p,
                p,
                &psf,
                &[("EXTNAME", "'PSF'".into(), "")],
            ));
            return f;
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::with_capacity(f.len()), flate2::Compression::default());
        gz.write_all(&f).expect("writing to memory");
        gz.finish().expect("writing to memory")
    }
}

fn schema_for(opts: &GenOptions) -> Schema {
    let s = schema::parse(match (opts.survey, opts.lsst_schema) {
        (SurveyKind::Ztf, _) => schema::ZTF_RAW,
        (SurveyKind::Lsst, LsstSchema::V9_0) => schema::LSST_V9_0,
        (SurveyKind::Lsst, LsstSchema::V10_0) => schema::LSST_V10_0,
    });
    match opts.survey {
        // Fink's science lake adds its classification fields to the raw alert; the generator
        // adds the one alert classes default to: `cdsxmatch`, the CDS cross-match label.
        SurveyKind::Ztf => {
            let mut fields: Vec<Field> = s.fields().iter().map(|f| f.as_ref().clone()).collect();
            fields.push(Field::new("cdsxmatch", DataType::Utf8, true));
            Schema::new_with_metadata(fields, s.metadata().clone())
        }
        SurveyKind::Lsst => s,
    }
}

/// The `cdsxmatch` labels of generated ZTF alerts and their weights (most alerts have no
/// cross-match, as in Fink's lake).
pub const GEN_CLASSES: [(&str, u64); 6] = [
    ("Unknown", 60),
    ("Star", 15),
    ("RRLyr", 10),
    ("EB*", 8),
    ("QSO", 5),
    ("SN", 2),
];

fn writer_props(opts: &GenOptions, rows: usize) -> WriterProperties {
    let mut b = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(rows.max(1)))
        .set_data_page_size_limit(1 << 20)
        .set_dictionary_page_size_limit(1 << 20)
        .set_write_batch_size(PAGE_CHECK_ROWS)
        .set_created_by("astroflight gen (parquet-rs, Spark-like layout)".into());
    for k in STAMP_KINDS {
        let col = match opts.survey {
            SurveyKind::Ztf => ColumnPath::new(vec![format!("cutout{k}"), "stampData".into()]),
            SurveyKind::Lsst => ColumnPath::new(vec![format!("cutout{k}")]),
        };
        b = b.set_column_dictionary_enabled(col, false);
    }
    if !opts.page_index {
        b = b
            .set_statistics_enabled(EnabledStatistics::Chunk)
            .set_offset_index_disabled(true);
    }
    b.build()
}

/// Generate the lake. Files are generated two at a time (they are independent: each has its
/// own seed), so the output does not depend on scheduling.
pub fn generate(opts: &GenOptions) -> Result<Vec<GeneratedFile>, GenError> {
    if opts.nights == 0 || opts.files_per_night == 0 || opts.alerts_per_file == 0 {
        return Err(GenError::Options(
            "nights, files per night and alerts per file must be at least 1".into(),
        ));
    }
    let schema: SchemaRef = Arc::new(schema_for(opts));
    let total = opts.nights as u64 * opts.files_per_night as u64 * opts.alerts_per_file as u64;
    // About three alerts per object, spread over the nights.
    let n_objects = (total / 3).max(1);
    let jobs: Vec<(u32, u32)> = (0..opts.nights)
        .flat_map(|n| (0..opts.files_per_night).map(move |f| (n, f)))
        .collect();
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(4);
    let mut out: Vec<Option<Result<GeneratedFile, GenError>>> = (0..jobs.len()).map(|_| None).collect();
    std::thread::scope(|s| {
        for (w, chunk) in out.chunks_mut(jobs.len().div_ceil(workers)).enumerate() {
            let schema = schema.clone();
            let jobs = &jobs;
            let first = w * jobs.len().div_ceil(workers);
            s.spawn(move || {
                for (i, slot) in chunk.iter_mut().enumerate() {
                    let (night, file) = jobs[first + i];
                    *slot = Some(write_file(opts, schema.clone(), night, file, n_objects));
                }
            });
        }
    });
    out.into_iter().map(|r| r.expect("every job ran")).collect()
}

fn write_file(
    opts: &GenOptions,
    schema: SchemaRef,
    night: u32,
    file: u32,
    n_objects: u64,
) -> Result<GeneratedFile, GenError> {
    let mut rng = Rng::new(opts.seed ^ ((night as u64) << 32 | file as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
    let night_jd = opts.first_night_jd + night as f64;
    let (y, m, d) = civil_from_jd(night_jd);
    let dir = opts.out.join(format!("year={y:04}/month={m:02}/day={d:02}"));
    let uuid = format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        rng.next_u64() as u32,
        rng.next_u64() as u16,
        rng.next_u64() as u16,
        rng.next_u64() as u16,
        rng.next_u64() & 0xffff_ffff_ffff
    );
    let path = dir.join(format!("part-{file:05}-{uuid}.c000.snappy.parquet"));
    let io = |source| GenError::Io {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(io)?;
    let rows = opts.alerts_per_file as usize;
    let props = writer_props(opts, rows);
    let tmp = path.with_extension("parquet.tmp");
    let f = std::fs::File::create(&tmp).map_err(io)?;
    let wopts = ArrowWriterOptions::new()
        .with_properties(props)
        .with_skip_arrow_metadata(true);
    let mut w =
        ArrowWriter::try_new_with_options(std::io::BufWriter::with_capacity(1 << 20, f), schema.clone(), wopts)?;
    let mut gen = FileGen {
        opts,
        schema,
        rng: Rng::new(rng.next_u64()),
    };
    let ztf = opts.survey == SurveyKind::Ztf;
    let chunk = 128;
    let mut done = 0;
    while done < rows {
        let n = chunk.min(rows - done);
        let alerts: Vec<Alert> = (done..done + n)
            .map(|i| {
                let object = rng.below(n_objects);
                let mut orng = Rng::new(opts.seed ^ object.wrapping_mul(0x9E37_79B9));
                let seq = (night as i64 * 10_000 + file as i64) * 1_000_000 + i as i64;
                Alert {
                    object,
                    object_id: ztf_object_id(object),
                    candid: if ztf {
                        1_100_000_000_000_000_000 + seq
                    } else {
                        170_000_000_000_000_000 + seq * 1_000
                    },
                    dia_object_id: 169_000_000_000_000_000 + object as i64,
                    jd: night_jd + 0.1 + 0.3 * (i as f64 / rows as f64),
                    ra: orng.f64() * 360.0,
                    dec: orng.f64() * 120.0 - 30.0,
                    mag: 16.0 + 4.0 * orng.f64() + 0.5 * rng.normal(),
                    fid: 1 + rng.below(2) as i32,
                    n_prv: rng.below(if ztf { 20 } else { 12 }) as usize,
                    n_forced: rng.below(6) as usize,
                    seed: rng.next_u64(),
                }
            })
            .collect();
        let batch = gen.batch(&alerts)?;
        // The writer checks the page size between write calls (for byte arrays, not between
        // its own mini-batches): small slices keep stamp pages near 1 MB, as parquet-mr's are.
        for off in (0..n).step_by(PAGE_CHECK_ROWS) {
            w.write(&batch.slice(off, PAGE_CHECK_ROWS.min(n - off)))?;
        }
        done += n;
    }
    w.close()?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    let bytes = std::fs::metadata(&path).map_err(io)?.len();
    Ok(GeneratedFile {
        path,
        bytes,
        alerts: rows as u32,
    })
}

/// A ZTF lake of id columns only (`objectId`, `candid`, `candidate.jd`), for index-scale
/// measurements: tens of millions of alerts in a few hundred MB. `files` files of
/// `alerts_per_file` alerts, one night per file, about three alerts per object, in the same hive
/// layout as [`generate`]. Deterministic for a seed.
pub fn generate_ids_only(
    out: &Path,
    files: u32,
    alerts_per_file: u32,
    seed: u64,
) -> Result<Vec<GeneratedFile>, GenError> {
    let cand = arrow_schema::Fields::from(vec![Field::new("jd", DataType::Float64, false)]);
    let schema = Arc::new(Schema::new(vec![
        Field::new("objectId", DataType::Utf8, false),
        Field::new("candid", DataType::Int64, false),
        Field::new("candidate", DataType::Struct(cand.clone()), false),
    ]));
    let n_objects = (files as u64 * alerts_per_file as u64 / 3).max(1);
    let mut rng = Rng::new(seed);
    let mut done = Vec::new();
    for file in 0..files {
        let night_jd = 2458849.5 + file as f64;
        let mut w = IdFile::create(out, file, night_jd, schema.clone())?;
        let chunk = 65_536u32;
        let mut i = 0u32;
        while i < alerts_per_file {
            let n = chunk.min(alerts_per_file - i);
            let mut oid = StringBuilder::with_capacity(n as usize, n as usize * 12);
            let mut candid = Int64Builder::with_capacity(n as usize);
            let mut jd = Float64Builder::with_capacity(n as usize);
            for k in i..i + n {
                oid.append_value(ztf_object_id(rng.below(n_objects)));
                candid.append_value(1_100_000_000_000_000_000 + file as i64 * 100_000_000 + k as i64);
                jd.append_value(night_jd + 0.1 + 0.3 * (k as f64 / alerts_per_file as f64));
            }
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(oid.finish()),
                    Arc::new(candid.finish()),
                    Arc::new(StructArray::new(cand.clone(), vec![Arc::new(jd.finish())], None)),
                ],
            )?;
            w.write(&batch)?;
            i += n;
        }
        done.push(w.finish(alerts_per_file)?);
    }
    Ok(done)
}

/// One night's file of an id-only lake (`year=/month=/day=/part-NNNNN-ids...parquet`), written
/// under a temporary name and renamed into place when finished.
pub(crate) struct IdFile {
    path: PathBuf,
    tmp: PathBuf,
    writer: ArrowWriter<std::io::BufWriter<std::fs::File>>,
}

impl IdFile {
    pub(crate) fn create(out: &Path, n: u32, night_jd: f64, schema: SchemaRef) -> Result<Self, GenError> {
        let (y, m, d) = civil_from_jd(night_jd);
        let dir = out.join(format!("year={y:04}/month={m:02}/day={d:02}"));
        let path = dir.join(format!("part-{n:05}-ids.c000.snappy.parquet"));
        let io = |source| GenError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let tmp = path.with_extension("parquet.tmp");
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(1 << 20))
            .build();
        let f = std::fs::File::create(&tmp).map_err(io)?;
        let writer = ArrowWriter::try_new(std::io::BufWriter::with_capacity(1 << 20, f), schema, Some(props))?;
        Ok(IdFile { path, tmp, writer })
    }

    pub(crate) fn write(&mut self, batch: &RecordBatch) -> Result<(), GenError> {
        self.writer.write(batch)?;
        Ok(())
    }

    pub(crate) fn finish(self, alerts: u32) -> Result<GeneratedFile, GenError> {
        let io = |source| GenError::Io {
            path: self.path.clone(),
            source,
        };
        self.writer.close()?;
        std::fs::rename(&self.tmp, &self.path).map_err(io)?;
        let bytes = std::fs::metadata(&self.path).map_err(io)?.len();
        Ok(GeneratedFile {
            path: self.path,
            bytes,
            alerts,
        })
    }
}

/// Every parquet file under `dir`, in path order.
pub fn lake_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// True if `dir` already holds a generated lake (any parquet file under it).
pub fn lake_exists(dir: &Path) -> bool {
    !lake_files(dir).is_empty()
}
