//! Scans of alert files for alert batches: which columns a content preset reads, the output
//! schema, and the scan of one file's row groups with pruning and late materialization.
//!
//! ```text
//!  file (path + version) ─> footer with page index (cache, one versioned suffix read)
//!    ─> row groups kept by the condition's row-group statistics (DataFusion PruningPredicate)
//!    ─> per row group: pages kept by the page index, in slices of rows (bounded memory)
//!    ─> parquet RowFilter: the condition's columns only, evaluated by DataFusion
//!    ─> the output columns, decoded only on the pages of the rows that matched
//!    ─> [CPU runtime] stamps converted, `night`/`class` added, pruned to the plan's schema
//! ```

pub mod prune;

use std::sync::{Arc, Mutex};

use arrow::array::{
    new_null_array, Array, ArrayRef, AsArray, BinaryBuilder, Date32Array, Float32Builder, Int32Builder, ListArray,
    ListBuilder, RecordBatch, StructArray,
};
use arrow::datatypes::Float64Type;
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef};
use datafusion::logical_expr::Expr;
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use parquet::arrow::arrow_reader::{ArrowPredicateFn, ArrowReaderMetadata, RowFilter, RowSelection, RowSelector};
use parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;
use parquet::arrow::ProjectionMask;
use parquet::file::metadata::ParquetMetaData;
use parquet::schema::types::{SchemaDescriptor, Type};

use crate::storage::{FileVersion, StoreReader};
use astroflight_fits as fits;
use astroflight_index::SurveyKind;
use astroflight_proto::{Annotation, Content, PartFile, StampFormat};

use crate::error::{Error, Result};
use crate::lake::{Dataset, Lake};
use crate::storage::IoStats;

pub use crate::expr::{self, Engine};

/// The three stamp columns of an alert.
pub const STAMPS: [&str; 3] = ["cutoutScience", "cutoutTemplate", "cutoutDifference"];

/// Output bytes a decoded batch aims at (rows per batch follow from the columns' sizes).
const BATCH_BYTES: usize = 8 << 20;
/// Compressed bytes of the output columns read at once from one row group (files with a page
/// index are read in slices of rows; without one, a column chunk is read whole anyway).
const SLICE_BYTES: u64 = 32 << 20;

/// The columns of a content preset, as dotted paths (every leaf under a path is read).
/// `None`: every column.
pub fn preset_columns(kind: SurveyKind, content: Content, columns: &[String]) -> Option<Vec<String>> {
    let v = |s: &[&str]| Some(s.iter().map(|c| c.to_string()).collect());
    match (kind, content) {
        (_, Content::Full) => None,
        (_, Content::Columns) => Some(columns.to_vec()),
        (SurveyKind::Ztf, Content::Lightcurve) => v(&[
            "objectId",
            "candid",
            "candidate.jd",
            "candidate.fid",
            "candidate.magpsf",
            "candidate.sigmapsf",
            "candidate.diffmaglim",
            "prv_candidates.jd",
            "prv_candidates.fid",
            "prv_candidates.magpsf",
            "prv_candidates.sigmapsf",
            "prv_candidates.diffmaglim",
        ]),
        (SurveyKind::Ztf, Content::Cutouts) => v(&[
            "objectId",
            "candid",
            "cutoutScience",
            "cutoutTemplate",
            "cutoutDifference",
        ]),
        (SurveyKind::Lsst, Content::Lightcurve) => v(&[
            "diaSource.diaSourceId",
            "diaSource.diaObjectId",
            "diaSource.midpointMjdTai",
            "diaSource.band",
            "diaSource.psfFlux",
            "diaSource.psfFluxErr",
            "prvDiaSources.diaSourceId",
            "prvDiaSources.midpointMjdTai",
            "prvDiaSources.band",
            "prvDiaSources.psfFlux",
            "prvDiaSources.psfFluxErr",
        ]),
        (SurveyKind::Lsst, Content::Cutouts) => v(&[
            "diaSource.diaSourceId",
            "diaSource.diaObjectId",
            "cutoutScience",
            "cutoutTemplate",
            "cutoutDifference",
        ]),
    }
}

/// The logical path of every parquet leaf (`prv_candidates.jd` for the parquet path
/// `prv_candidates.list.element.jd`): list levels (3-level and legacy 2-level) are left out.
pub fn logical_leaf_paths(sd: &SchemaDescriptor) -> Vec<String> {
    fn is_list(t: &Type) -> bool {
        let info = t.get_basic_info();
        matches!(info.logical_type_ref(), Some(parquet::basic::LogicalType::List))
            || info.converted_type() == parquet::basic::ConvertedType::LIST
    }
    fn walk(t: &Type, prefix: &str, out: &mut Vec<String>) {
        let name = t.name();
        let here = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}.{name}")
        };
        if !t.is_group() {
            out.push(here);
            return;
        }
        if is_list(t) {
            // LIST group -> repeated child: a group of one field named element/item/array
            // (3-level: skip it and its child's name), or the element itself (2-level).
            for rep in t.get_fields() {
                if rep.is_group() && rep.get_fields().len() == 1 && !is_list(rep) {
                    let el = &rep.get_fields()[0];
                    if el.is_group() {
                        for c in el.get_fields() {
                            walk(c, &here, out);
                        }
                    } else {
                        out.push(here.clone());
                    }
                } else if rep.is_group() {
                    for c in rep.get_fields() {
                        walk(c, &here, out);
                    }
                } else {
                    out.push(here.clone());
                }
            }
            return;
        }
        for c in t.get_fields() {
            walk(c, &here, out);
        }
    }
    let mut out = Vec::with_capacity(sd.num_columns());
    for f in sd.root_schema().get_fields() {
        walk(f, "", &mut out);
    }
    out
}

/// Leaf indices under each of `paths` (a path names a column, a struct field or a field of
/// list elements); the first path without any leaf is the error.
pub fn leaves_of(sd: &SchemaDescriptor, paths: &[String]) -> std::result::Result<Vec<usize>, String> {
    let logical = logical_leaf_paths(sd);
    let mut out = Vec::new();
    for p in paths {
        let before = out.len();
        let prefix = format!("{p}.");
        out.extend(
            logical
                .iter()
                .enumerate()
                .filter(|(_, l)| *l == p || l.starts_with(&prefix))
                .map(|(i, _)| i),
        );
        if out.len() == before {
            return Err(p.clone());
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// What to read from each file of a query and how to shape it; the same for every file.
#[derive(Clone)]
pub struct ScanSpec {
    pub kind: SurveyKind,
    /// Output column paths (None: every column).
    pub columns: Option<Vec<String>>,
    pub stamps: StampFormat,
    pub annotate: Vec<Annotation>,
    /// The where conditions as one SQL expression.
    pub where_sql: Option<String>,
    /// The dataset's class expression (SQL), when it has one.
    pub class_sql: Option<String>,
    /// The output schema every batch is shaped to.
    pub schema: SchemaRef,
}

/// Per-file additions to the condition: the rows of a file are filtered on time and class only
/// when the catalog does not already say that all of the file's alerts qualify.
#[derive(Debug, Clone, Default)]
pub struct FileFilter {
    /// Half-open alert-time windows, in the time column's unit (JD or MJD).
    pub time: Option<Vec<(f64, f64)>>,
    pub classes: Option<Vec<String>>,
}

fn sql_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl ScanSpec {
    /// The condition of one file, as SQL: the query's `where`, and the time and class filters
    /// the file needs.
    pub fn condition_sql(&self, f: &FileFilter) -> Option<String> {
        let mut parts = Vec::new();
        if let Some(w) = &self.where_sql {
            parts.push(format!("({w})"));
        }
        if let Some(windows) = &f.time {
            let t = self.kind.time_leaf();
            let ors: Vec<String> = windows
                .iter()
                .map(|(lo, hi)| match (lo.is_finite(), hi.is_finite()) {
                    (true, true) => format!("({t} >= {lo:?} AND {t} < {hi:?})"),
                    (true, false) => format!("({t} >= {lo:?})"),
                    (false, true) => format!("({t} < {hi:?})"),
                    (false, false) => format!("({t} IS NOT NULL)"),
                })
                .collect();
            parts.push(format!("({})", ors.join(" OR ")));
        }
        if let (Some(classes), Some(c)) = (&f.classes, &self.class_sql) {
            let list: Vec<String> = classes.iter().map(|k| sql_string(k)).collect();
            parts.push(format!("(({c}) IN ({}))", list.join(", ")));
        }
        (!parts.is_empty()).then(|| parts.join(" AND "))
    }

    /// The output column paths in a file (`None` columns: every top-level column).
    fn column_paths(&self, sd: &SchemaDescriptor) -> Vec<String> {
        match &self.columns {
            Some(c) => c.clone(),
            None => sd
                .root_schema()
                .get_fields()
                .iter()
                .map(|f| f.name().to_string())
                .collect(),
        }
    }

    /// Leaves read for the output (output columns, plus the time or class columns of the
    /// annotations).
    fn output_leaves(&self, sd: &SchemaDescriptor) -> Result<Vec<usize>> {
        let mut paths = self.column_paths(sd);
        for a in &self.annotate {
            match a {
                Annotation::Night => paths.push(self.kind.time_leaf().to_string()),
                Annotation::Class => {
                    let logical = logical_leaf_paths(sd);
                    for w in expr::words(self.class_sql.as_deref().unwrap_or_default()) {
                        if logical.iter().any(|l| *l == w || l.starts_with(&format!("{w}."))) {
                            paths.push(w);
                        }
                    }
                }
            }
        }
        leaves_of(sd, &paths).map_err(|p| Error::InvalidArgument(format!("no column {p:?} in the dataset's files")))
    }
}

/// The output schema of a query, from one file's footer: the projected columns, stamps in
/// their output form, annotations last.
pub fn output_schema(spec: &ScanSpec, md: &ArrowReaderMetadata) -> Result<SchemaRef> {
    let sd = md.metadata().file_metadata().schema_descr();
    let leaves = leaves_of(sd, &spec.column_paths(sd)).map_err(|p| {
        Error::InvalidArgument(format!(
            "no column {} in the dataset's files (columns are dotted paths such as candidate.magpsf)",
            crate::error::quoted(&p)
        ))
    })?;
    let projected = projected_schema(md, ProjectionMask::leaves(sd, leaves))?;
    let mut fields: Vec<Field> = projected
        .fields()
        .iter()
        .map(|f| match stamp_output_type(spec.kind, f, spec.stamps) {
            Some(t) => Field::new(f.name(), t, true),
            None => f.as_ref().clone(),
        })
        .collect();
    for a in &spec.annotate {
        fields.push(match a {
            Annotation::Night => Field::new("night", DataType::Date32, true),
            Annotation::Class => Field::new("class", DataType::Utf8, true),
        });
    }
    Ok(Arc::new(Schema::new(fields)))
}

/// The Arrow schema a projection of the file reads as.
fn projected_schema(md: &ArrowReaderMetadata, mask: ProjectionMask) -> Result<SchemaRef> {
    let sd = md.metadata().file_metadata().schema_descr();
    let s = parquet::arrow::parquet_to_arrow_schema_by_columns(
        sd,
        mask,
        md.metadata().file_metadata().key_value_metadata(),
    )
    .map_err(|e| Error::Internal(format!("projecting the file schema: {e}")))?;
    Ok(Arc::new(s))
}

/// The pixel array type of `stamps: "array"`.
fn pixels_type() -> DataType {
    DataType::Struct(Fields::from(vec![
        Field::new(
            "pixels",
            DataType::List(Arc::new(Field::new_list_field(DataType::Float32, false))),
            true,
        ),
        Field::new("width", DataType::Int32, true),
        Field::new("height", DataType::Int32, true),
    ]))
}

/// The output type of a stamp column (None for other columns).
fn stamp_output_type(_kind: SurveyKind, f: &Field, stamps: StampFormat) -> Option<DataType> {
    if !STAMPS.contains(&f.name().as_str()) {
        return None;
    }
    match stamps {
        StampFormat::Array => Some(pixels_type()),
        _ => None,
    }
}

/// The stamp bytes of a stamp column (ZTF: the `stampData` field of the struct; Rubin: the
/// column itself).
fn stamp_bytes(col: &ArrayRef) -> Option<ArrayRef> {
    match col.data_type() {
        DataType::Struct(_) => {
            let s = col.as_struct();
            let data = s.column_by_name("stampData")?.clone();
            // A null struct is a null stamp.
            Some(match s.nulls() {
                Some(n) => with_nulls(&data, n),
                None => data,
            })
        }
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => Some(col.clone()),
        _ => None,
    }
}

fn with_nulls(a: &ArrayRef, n: &arrow::buffer::NullBuffer) -> ArrayRef {
    let merged = arrow::buffer::NullBuffer::union(a.nulls(), Some(n));
    let data = a.to_data().into_builder().nulls(merged);
    arrow::array::make_array(data.build().expect("same length"))
}

/// Convert one stamp column to the output format.
fn convert_stamp(col: &ArrayRef, stamps: StampFormat, what: &str, name: &str) -> Result<ArrayRef> {
    let bad = |e: fits::FitsError| Error::DataLoss(format!("{what}: a {name} stamp is not a valid FITS image: {e}"));
    let bytes = stamp_bytes(col)
        .ok_or_else(|| Error::DataLoss(format!("{what}: column {name} is not a stamp ({})", col.data_type())))?;
    let bytes =
        arrow::compute::cast(&bytes, &DataType::Binary).map_err(|e| Error::DataLoss(format!("{what}: {name}: {e}")))?;
    let bytes = bytes.as_binary::<i32>();
    match stamps {
        StampFormat::Gzip => Ok(col.clone()),
        StampFormat::Fits => {
            let mut out = BinaryBuilder::with_capacity(bytes.len(), bytes.value_data().len() * 3);
            for v in bytes.iter() {
                match v {
                    Some(b) => out.append_value(fits::maybe_gunzip(b).map_err(bad)?),
                    None => out.append_null(),
                }
            }
            let out: ArrayRef = Arc::new(out.finish());
            // ZTF keeps its struct (fileName, stampData) with the FITS bytes in stampData.
            Ok(match col.data_type() {
                DataType::Struct(fields) => {
                    let s = col.as_struct();
                    let cols: Vec<ArrayRef> = fields
                        .iter()
                        .zip(s.columns())
                        .map(|(f, c)| {
                            if f.name() == "stampData" {
                                arrow::compute::cast(&out, f.data_type()).unwrap_or_else(|_| out.clone())
                            } else {
                                c.clone()
                            }
                        })
                        .collect();
                    let fields: Fields = fields
                        .iter()
                        .zip(&cols)
                        .map(|(f, c)| Arc::new(Field::new(f.name(), c.data_type().clone(), true)))
                        .collect();
                    Arc::new(
                        StructArray::try_new(fields, cols, s.nulls().cloned())
                            .map_err(|e| Error::Internal(format!("{what}: {name}: {e}")))?,
                    )
                }
                _ => out,
            })
        }
        StampFormat::Array => {
            let n = bytes.len();
            let mut pixels = ListBuilder::with_capacity(Float32Builder::with_capacity(n * 63 * 63), n)
                .with_field(Arc::new(Field::new_list_field(DataType::Float32, false)));
            let mut width = Int32Builder::with_capacity(n);
            let mut height = Int32Builder::with_capacity(n);
            for v in bytes.iter() {
                match v {
                    Some(b) => {
                        let img = fits::decode_image(b).map_err(bad)?;
                        pixels.values().append_slice(&img.pixels);
                        pixels.append(true);
                        width.append_value(img.width as i32);
                        height.append_value(img.height as i32);
                    }
                    None => {
                        pixels.append(false);
                        width.append_null();
                        height.append_null();
                    }
                }
            }
            let DataType::Struct(fields) = pixels_type() else {
                unreachable!()
            };
            Ok(Arc::new(
                StructArray::try_new(
                    fields,
                    vec![
                        Arc::new(pixels.finish()),
                        Arc::new(width.finish()),
                        Arc::new(height.finish()),
                    ],
                    None,
                )
                .map_err(|e| Error::Internal(format!("{what}: {name}: {e}")))?,
            ))
        }
    }
}

/// Shape an array to `target` (the plan's type): struct fields are picked by name (extra ones
/// dropped), recursively through lists. A missing field or another type is an error naming it.
pub fn shape_to(a: &ArrayRef, target: &DataType, path: &str) -> std::result::Result<ArrayRef, String> {
    if a.data_type() == target {
        return Ok(a.clone());
    }
    match (a.data_type(), target) {
        (DataType::Struct(_), DataType::Struct(tf)) => {
            let s = a.as_struct();
            let cols = tf
                .iter()
                .map(|f| {
                    let p = format!("{path}.{}", f.name());
                    match s.column_by_name(f.name()) {
                        Some(c) => shape_to(c, f.data_type(), &p),
                        None if f.is_nullable() => Ok(new_null_array(f.data_type(), s.len())),
                        None => Err(format!("no field {p}")),
                    }
                })
                .collect::<std::result::Result<Vec<_>, _>>()?;
            StructArray::try_new(tf.clone(), cols, s.nulls().cloned())
                .map(|s| Arc::new(s) as ArrayRef)
                .map_err(|e| format!("{path}: {e}"))
        }
        (DataType::List(_), DataType::List(tf)) => {
            let l = a.as_list::<i32>();
            let values = shape_to(l.values(), tf.data_type(), path)?;
            ListArray::try_new(tf.clone(), l.offsets().clone(), values, l.nulls().cloned())
                .map(|l| Arc::new(l) as ArrayRef)
                .map_err(|e| format!("{path}: {e}"))
        }
        (from, to) => arrow::compute::cast(a, to).map_err(|e| format!("{path} is {from}, expected {to}: {e}")),
    }
}

/// One file to scan, with the version it was planned against.
#[derive(Debug, Clone)]
pub struct FileScan {
    pub file: PartFile,
    pub filter: FileFilter,
}

/// Everything one scan shares.
#[derive(Clone)]
pub struct ScanCtx {
    pub lake: Arc<Lake>,
    pub ds: Arc<Dataset>,
    pub io: Arc<IoStats>,
    pub spec: Arc<ScanSpec>,
}

/// The footer cache key of a file version: footers of scans are keyed by what the ticket names
/// (path and version), so that any replica, whatever its file ids, caches them; the top bit
/// keeps them apart from the index's file ids.
fn version_key(f: &PartFile) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (&f.path, f.size, &f.e_tag, f.last_modified_ms, "page-index").hash(&mut h);
    h.finish() | (1 << 63)
}

impl ScanCtx {
    fn what(&self, f: &PartFile) -> String {
        format!("file {} of dataset {:?}", f.path, self.ds.name)
    }

    fn reader(&self, f: &PartFile) -> StoreReader {
        crate::read::file_reader(&self.lake, &self.ds, &self.io, &f.path, file_version(f))
    }

    /// The footer of a file version with its page index (cached).
    pub async fn footer(&self, f: &PartFile) -> Result<ArrowReaderMetadata> {
        footer(&self.lake, &self.ds, &self.io, f).await
    }
}

fn file_version(f: &PartFile) -> FileVersion {
    FileVersion {
        size: f.size,
        e_tag: f.e_tag.clone(),
        last_modified_ms: f.last_modified_ms,
    }
}

/// The footer of a file version named in a ticket, with its page index (cached under the
/// version's key).
pub async fn footer(lake: &Lake, ds: &Dataset, io: &Arc<IoStats>, f: &PartFile) -> Result<ArrowReaderMetadata> {
    crate::read::cached_footer(
        lake,
        (ds.number, version_key(f)),
        || crate::read::file_reader(lake, ds, io, &f.path, file_version(f)).with_page_index(),
        f.metadata_len,
        format!("file {} of dataset {:?}", f.path, ds.name),
        |_| Ok(()),
    )
    .await
}

/// A condition compiled for one file: the leaves it reads, and its logical form (compiled on
/// the first batch the parquet reader hands the row filter).
struct FileCondition {
    leaves: Vec<usize>,
    expr: Expr,
    pruner: prune::Pruner,
}

fn file_condition(ctx: &ScanCtx, md: &ArrowReaderMetadata, sql: &str, what: &str) -> Result<FileCondition> {
    let engine = &ctx.lake.engine;
    let schema = md.schema();
    let expr = engine.parse(sql, schema, "the condition")?;
    let paths: Vec<String> = expr::column_paths(&expr).into_iter().collect();
    let sd = md.metadata().file_metadata().schema_descr();
    let leaves = leaves_of(sd, &paths).map_err(|p| Error::DataLoss(format!("{what} has no column {p:?}")))?;
    let flat = expr::flat_schema(schema);
    let pruner = prune::Pruner::new(engine, &expr::flatten(&expr, &flat), flat);
    Ok(FileCondition { leaves, expr, pruner })
}

/// The row groups of a file the condition may match.
fn kept_row_groups(
    md: &ParquetMetaData,
    planned: &[u32],
    cond: Option<&FileCondition>,
    what: &str,
) -> Result<Vec<usize>> {
    let n = md.num_row_groups();
    let rgs: Vec<usize> = planned.iter().map(|r| *r as usize).collect();
    if let Some(bad) = rgs.iter().find(|r| **r >= n) {
        return Err(Error::DataLoss(format!(
            "{what} has no row group {bad} (it has {n}): it changed since the query was planned"
        )));
    }
    Ok(match cond {
        None => rgs,
        Some(c) => {
            let keep = c.pruner.row_groups(md, &rgs);
            rgs.into_iter().zip(keep).filter(|(_, k)| *k).map(|(r, _)| r).collect()
        }
    })
}

/// Slices of a row group's rows (intersected with the page selection), each read as its own
/// parquet stream so that one stream holds at most ~SLICE_BYTES of pages.
fn slices(md: &ParquetMetaData, rg: usize, leaves: &[usize], pages: Option<RowSelection>) -> Vec<RowSelection> {
    let rows = md.row_group(rg).num_rows() as usize;
    let bytes: u64 = leaves
        .iter()
        .map(|l| md.row_group(rg).column(*l).compressed_size().max(0) as u64)
        .sum();
    let per_slice = if md.offset_index().is_some() && bytes > SLICE_BYTES {
        ((rows as u64 * SLICE_BYTES / bytes) as usize).max(1)
    } else {
        rows.max(1)
    };
    let mut out = Vec::new();
    let mut start = 0;
    while start < rows {
        let end = (start + per_slice).min(rows);
        let mut sel = Vec::with_capacity(3);
        if start > 0 {
            sel.push(RowSelector::skip(start));
        }
        sel.push(RowSelector::select(end - start));
        if end < rows {
            sel.push(RowSelector::skip(rows - end));
        }
        let mut s = RowSelection::from(sel);
        if let Some(p) = &pages {
            s = s.intersection(p);
        }
        if s.selects_any() {
            out.push(s);
        }
        start = end;
    }
    out
}

/// Rows per decoded batch for these leaves (about BATCH_BYTES of uncompressed data).
fn batch_rows(md: &ParquetMetaData, leaves: &[usize]) -> usize {
    ((BATCH_BYTES as f64 / bytes_per_row(md, leaves).max(1.0)) as usize).clamp(16, 8192)
}

/// What a scan of one file yields: output batches (or, counting, batches of the condition's
/// columns only, whose row counts are what matters).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Output,
    Count,
}

/// Stream the matching rows of one file (at most `limit`), in file order.
pub async fn scan_file(
    ctx: ScanCtx,
    f: FileScan,
    limit: Option<u64>,
    mode: Mode,
) -> Result<BoxStream<'static, Result<RecordBatch>>> {
    let what = ctx.what(&f.file);
    let md = ctx.footer(&f.file).await?;
    let meta = md.metadata().clone();
    let sd = meta.file_metadata().schema_descr();
    let cond = match ctx.spec.condition_sql(&f.filter) {
        Some(sql) => Some(file_condition(&ctx, &md, &sql, &what)?),
        None => None,
    };
    let rgs = kept_row_groups(&meta, &f.file.row_groups, cond.as_ref(), &what)?;
    let out_leaves = match mode {
        Mode::Output => ctx.spec.output_leaves(sd)?,
        // Counting reads the condition's columns (or, without one, the smallest leaf).
        Mode::Count => match &cond {
            Some(c) => c.leaves.clone(),
            None => vec![0],
        },
    };
    if mode == Mode::Count && cond.is_none() {
        // Every row of the kept row groups matches: the footer says how many.
        let n: u64 = rgs.iter().map(|r| meta.row_group(*r).num_rows() as u64).sum();
        let n = limit.map_or(n, |l| n.min(l));
        let empty = RecordBatch::try_new_with_options(
            Arc::new(Schema::empty()),
            vec![],
            &arrow::array::RecordBatchOptions::new().with_row_count(Some(n as usize)),
        )
        .map_err(|e| Error::Internal(e.to_string()))?;
        return Ok(stream::iter([Ok(empty)]).boxed());
    }
    let batch = batch_rows(&meta, &out_leaves);
    let mut work: Vec<(usize, RowSelection)> = Vec::new();
    for rg in rgs {
        let pages = cond.as_ref().and_then(|c| c.pruner.pages(&meta, rg));
        let all_leaves: Vec<usize> = out_leaves
            .iter()
            .chain(cond.iter().flat_map(|c| c.leaves.iter()))
            .copied()
            .collect();
        for s in slices(&meta, rg, &all_leaves, pages) {
            work.push((rg, s));
        }
    }
    let remaining = Arc::new(Mutex::new(limit));
    let cond_parts = cond.map(|c| (c.leaves, c.expr));
    let (ctx2, what2, file2) = (ctx.clone(), what.clone(), f.file.clone());
    let open = move |(rg, sel): (usize, RowSelection)| {
        let left = *remaining.lock().expect("limit lock");
        if left == Some(0) {
            return Ok(stream::empty().boxed());
        }
        let sd = meta.file_metadata().schema_descr();
        let reader = ctx2.reader(&file2).with_metadata(meta.clone());
        let mut b = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, md.clone())
            .with_row_groups(vec![rg])
            .with_row_selection(sel)
            .with_projection(ProjectionMask::leaves(sd, out_leaves.clone()))
            .with_batch_size(batch);
        if let Some((leaves, expr)) = &cond_parts {
            b = b.with_row_filter(RowFilter::new(vec![Box::new(predicate(
                &ctx2,
                ProjectionMask::leaves(sd, leaves.clone()),
                expr.clone(),
                what2.clone(),
            ))]));
        }
        if let Some(l) = left {
            b = b.with_limit(l as usize);
        }
        let what = what2.clone();
        let remaining = remaining.clone();
        let s = b.build().map_err(|e| Error::parquet(&what2, e))?.map(move |r| {
            let b = r.map_err(|e| parquet_or_condition(&what, e))?;
            if let Some(l) = remaining.lock().expect("limit lock").as_mut() {
                *l = l.saturating_sub(b.num_rows() as u64);
            }
            Ok(b)
        });
        Ok::<_, Error>(s.boxed())
    };
    let raw = stream::iter(work).map(open).try_flatten();
    match mode {
        Mode::Count => Ok(raw.boxed()),
        Mode::Output => {
            let spec = ctx.spec.clone();
            let class_expr: Arc<expr::PerSchema> = Arc::default();
            let lake = ctx.lake.clone();
            let account = ctx.io.memory().cloned();
            Ok(raw
                .and_then(move |b| {
                    let r = shape_output(&lake, &spec, &b, &what, &class_expr, account.as_ref());
                    futures::future::ready(r)
                })
                .boxed())
        }
    }
}

/// A condition failed while evaluated on data (a cast that fails on a value): the client's
/// query, INVALID_ARGUMENT; one that passed a memory bound, RESOURCE_EXHAUSTED; other failures
/// are the file's. (The parquet reader keeps a row filter's error as text only: its kind
/// travels as a prefix.)
fn parquet_or_condition(what: &str, e: parquet::errors::ParquetError) -> Error {
    let text = match &e {
        parquet::errors::ParquetError::ArrowError(m) => Some(m.clone()),
        parquet::errors::ParquetError::External(inner) => {
            inner.downcast_ref::<arrow::error::ArrowError>().map(|a| a.to_string())
        }
        _ => None,
    };
    match text.and_then(|m| condition_error(&m)) {
        Some(c) => c,
        None => Error::parquet(what, e),
    }
}

const CONDITION_ERROR: &str = "astroflight condition: ";
const CONDITION_RESOURCES: &str = "astroflight condition resources: ";

/// A condition's error as the row filter hands it to the parquet reader.
fn to_row_filter_error(what: &str, e: Error) -> arrow::error::ArrowError {
    let prefix = match e {
        Error::ResourceExhausted(_) => CONDITION_RESOURCES,
        _ => CONDITION_ERROR,
    };
    arrow::error::ArrowError::ComputeError(format!("{prefix}{what}: {e}"))
}

/// Back from the row filter's text to the condition's error.
fn condition_error(m: &str) -> Option<Error> {
    let at = |p: &str| m.find(p).map(|i| m[i + p.len()..].to_string());
    if let Some(rest) = at(CONDITION_RESOURCES) {
        return Some(Error::ResourceExhausted(rest));
    }
    at(CONDITION_ERROR).map(Error::InvalidArgument)
}

/// The parquet row filter of a condition: compiled by DataFusion on the first batch's schema
/// (the condition's columns, pruned to the leaves it names), evaluated on every batch.
fn predicate(
    ctx: &ScanCtx,
    mask: ProjectionMask,
    expr: Expr,
    what: String,
) -> ArrowPredicateFn<
    impl FnMut(RecordBatch) -> std::result::Result<arrow::array::BooleanArray, arrow::error::ArrowError>,
> {
    let lake = ctx.lake.clone();
    let account = ctx.io.memory().cloned();
    let compiled = expr::PerSchema::default();
    ArrowPredicateFn::new(mask, move |batch: RecordBatch| {
        let fail = |e: Error| to_row_filter_error(&what, e);
        let phys = compiled
            .get(&batch.schema(), || {
                lake.engine
                    .compile(&expr, &batch.schema(), "the condition", account.as_ref())
            })
            .map_err(fail)?;
        expr::evaluate_condition(&phys, &batch, "the condition").map_err(fail)
    })
}

/// Turn a decoded batch into output: stamps converted, annotations computed, every column
/// shaped to the plan's schema.
fn shape_output(
    lake: &Lake,
    spec: &ScanSpec,
    b: &RecordBatch,
    what: &str,
    class_expr: &expr::PerSchema,
    account: Option<&Arc<crate::memory::Account>>,
) -> Result<RecordBatch> {
    let mut cols = Vec::with_capacity(spec.schema.fields().len());
    for f in spec.schema.fields() {
        let col = match f.name().as_str() {
            "night" if spec.annotate.contains(&Annotation::Night) && b.column_by_name("night").is_none() => {
                let t = crate::read::column_at(b, spec.kind.time_leaf())
                    .ok_or_else(|| Error::DataLoss(format!("{what}: no time column")))?;
                let t = arrow::compute::cast(&t, &DataType::Float64).map_err(|e| Error::DataLoss(e.to_string()))?;
                let t = t.as_primitive::<Float64Type>();
                let kind = spec.kind;
                Arc::new(Date32Array::from_iter(
                    t.iter().map(|v| v.and_then(|v| kind.night_of(v))),
                )) as ArrayRef
            }
            "class" if spec.annotate.contains(&Annotation::Class) && b.column_by_name("class").is_none() => {
                match &spec.class_sql {
                    None => new_null_array(&DataType::Utf8, b.num_rows()),
                    Some(sql) => {
                        let phys = class_expr.get(&b.schema(), || {
                            lake.engine
                                .compile_sql(sql, &b.schema(), "the dataset's class", account)
                        })?;
                        let v = expr::evaluate(&phys, b, "the dataset's class")?;
                        arrow::compute::cast(&v, &DataType::Utf8).map_err(|e| Error::Internal(e.to_string()))?
                    }
                }
            }
            name => {
                let c = b
                    .column_by_name(name)
                    .ok_or_else(|| Error::DataLoss(format!("{what} has no column {name}")))?;
                let c = if STAMPS.contains(&name) {
                    convert_stamp(c, spec.stamps, what, name)?
                } else {
                    c.clone()
                };
                shape_to(&c, f.data_type(), name).map_err(|e| {
                    Error::DataLoss(format!(
                        "{what} does not have the schema the query was planned with: {e}"
                    ))
                })?
            }
        };
        cols.push(col);
    }
    RecordBatch::try_new(spec.schema.clone(), cols).map_err(|e| Error::Internal(format!("{what}: {e}")))
}

/// Uncompressed bytes per row of some leaves, over a file's row groups (estimates).
pub fn bytes_per_row(md: &ParquetMetaData, leaves: &[usize]) -> f64 {
    let (mut bytes, mut rows) = (0u64, 0u64);
    for rg in md.row_groups() {
        rows += rg.num_rows() as u64;
        bytes += leaves
            .iter()
            .map(|l| rg.column(*l).uncompressed_size().max(0) as u64)
            .sum::<u64>();
    }
    bytes as f64 / rows.max(1) as f64
}

/// Leaves of the output of a spec, for estimates.
pub fn estimate_leaves(spec: &ScanSpec, md: &ParquetMetaData) -> Vec<usize> {
    spec.output_leaves(md.file_metadata().schema_descr())
        .unwrap_or_default()
}
