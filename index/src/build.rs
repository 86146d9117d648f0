//! The incremental index builder.
//!
//! One run: repair what a killed run left, list the dataset's parquet files, skip the files
//! whose size and etag (or modification time) are those of the catalog, read the footer and the
//! id columns of new and changed files, and drop the files that are gone.
//!
//! Builds of one dataset are serialized (a lock shared by every handle of the dataset), and
//! nothing a lookup can see goes missing mid-build: a changed file's new entries are committed
//! before its old ones are dropped, and files that are gone are dropped only after every new
//! file is committed (a compaction that rewrote alerts into a new file never leaves them
//! unfindable). While both copies are committed, lookups serve the newest.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore};
use parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;
use parquet::arrow::ProjectionMask;
use tracing::{info, warn};

use crate::keys::{self, RowIds};
use crate::reader::StoreReader;
use crate::{DatasetIndex, FileEntry, IndexError, Result, SurveyKind};

/// What one build did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct BuildStats {
    /// Parquet files found under the root.
    pub listed: usize,
    /// Files read and (re)indexed.
    pub indexed: usize,
    /// Files whose catalog entry was still current.
    pub unchanged: usize,
    /// Catalog entries dropped (file deleted or changed).
    pub removed: usize,
    /// Uncommitted files left by a killed run, cleaned.
    pub repaired: usize,
    /// Alerts written.
    pub rows: u64,
    /// Rows skipped because an id was null.
    pub null_ids: u64,
    /// Files that could not be indexed, with the reason; the rest of the index is intact.
    pub failed: Vec<(String, String)>,
}

pub struct IndexBuilder {
    store: Arc<dyn ObjectStore>,
    prefix: Option<Path>,
    kind: SurveyKind,
    index: DatasetIndex,
    concurrency: usize,
    classes: Option<ClassSpec>,
}

/// Computes the class of each row of a batch that holds (at least) the spec's columns: a
/// string array (or anything castable to one), null for unclassified rows.
pub type ClassFn = Arc<dyn Fn(&RecordBatch) -> std::result::Result<arrow::array::ArrayRef, String> + Send + Sync>;

/// How a dataset's alerts are classed, for the per-night, per-class counts of the catalog.
/// The index crate knows nothing of SQL: the server compiles the dataset's `class` option
/// (a column or an expression) into `eval`.
#[derive(Clone)]
pub struct ClassSpec {
    /// Names the definition (the option as written); files counted under another key are
    /// counted again.
    pub key: String,
    /// Top-level or dotted columns `eval` reads (every leaf under each is read).
    pub columns: Vec<String>,
    pub eval: ClassFn,
}

/// The id columns of one file, in row order.
struct FileIds {
    meta: ObjectMeta,
    row_groups: Vec<u64>,
    rows: Vec<(u32, u32, RowIds, f64)>,
    null_ids: u64,
    metadata_len: u64,
    /// None when the dataset's class could not be computed on this file: its ids are indexed,
    /// its alerts are not counted by class (and it is read again at the next build).
    stats: Option<crate::FileStats>,
}

/// Bytes after the end of the last column chunk: what a reader must fetch to get the footer
/// and the page indexes in one read.
fn metadata_len(md: &parquet::file::metadata::ParquetMetaData, size: u64) -> u64 {
    let data_end = md
        .row_groups()
        .iter()
        .flat_map(|rg| rg.columns())
        .map(|c| {
            let (start, len) = c.byte_range();
            start + len
        })
        .max()
        .unwrap_or(4);
    size.saturating_sub(data_end)
}

/// True for the data files of a Spark-written lake: `*.parquet`, outside hidden or
/// temporary folders (`_temporary/`, `.spark-staging`), not markers or checksums.
pub fn is_data_file(path: &Path) -> bool {
    let mut parts = path.parts().peekable();
    while let Some(p) = parts.next() {
        let p = p.as_ref();
        if p.starts_with('_') || p.starts_with('.') {
            return false;
        }
        if parts.peek().is_none() {
            return p.ends_with(".parquet");
        }
    }
    false
}

impl IndexBuilder {
    /// `prefix` is the dataset root inside `store` (None for the store's root).
    pub fn new(store: Arc<dyn ObjectStore>, prefix: Option<Path>, kind: SurveyKind, index: DatasetIndex) -> Self {
        IndexBuilder {
            store,
            prefix,
            kind,
            index,
            concurrency: 4,
            classes: None,
        }
    }

    /// Count each file's alerts per class (and night) with this definition.
    pub fn with_classes(mut self, spec: Option<ClassSpec>) -> Self {
        self.classes = spec;
        self
    }

    fn class_key(&self) -> &str {
        self.classes.as_ref().map(|c| c.key.as_str()).unwrap_or("")
    }

    /// How many files are read at once (remote stores gain from more).
    pub fn with_concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// One incremental build. Waits for a build of the same dataset that is under way.
    pub async fn run(&self) -> Result<BuildStats> {
        let _serialized = self.index.build_lock.lock().await;
        let mut stats = BuildStats {
            repaired: self.blocking(|ix| repair(&ix)).await?,
            ..Default::default()
        };

        let listing: Vec<ObjectMeta> = self
            .store
            .list(self.prefix.as_ref())
            .try_filter(|m| futures::future::ready(is_data_file(&m.location)))
            .try_collect()
            .await
            .map_err(|source| IndexError::Storage {
                path: match &self.prefix {
                    Some(p) => format!("the listing of {p}"),
                    None => "the listing of the dataset root".to_string(),
                },
                source,
            })?;
        stats.listed = listing.len();

        let catalog: HashMap<String, FileEntry> = self
            .index
            .catalog()
            .files()?
            .into_iter()
            .map(|f| (f.path.clone(), f))
            .collect();
        let listed: HashSet<&str> = listing.iter().map(|m| m.location.as_ref()).collect();
        let gone: Vec<FileEntry> = catalog
            .values()
            .filter(|f| !listed.contains(f.path.as_str()))
            .cloned()
            .collect();

        let mut todo = Vec::new();
        for meta in listing {
            match catalog.get(meta.location.as_ref()) {
                Some(old)
                    if old.same_version(&meta)
                        && old.stats.as_ref().is_some_and(|s| s.class_key == self.class_key()) =>
                {
                    stats.unchanged += 1
                }
                old => todo.push((meta, old.map(|o| o.file_id))),
            }
        }

        let mut reads = futures::stream::iter(todo.into_iter().map(|(meta, old)| async move {
            let path = meta.location.to_string();
            (path, old, self.read_ids(meta).await)
        }))
        .buffer_unordered(self.concurrency);

        while let Some((path, old, read)) = reads.next().await {
            let ids = match read {
                Ok(ids) => ids,
                Err(e) => {
                    // The previous version (if any) stays indexed: the server checks the
                    // file's version before it trusts a location.
                    warn!(%path, error = %e, "cannot index file");
                    stats.failed.push((path, e.to_string()));
                    continue;
                }
            };
            stats.rows += ids.rows.len() as u64;
            stats.null_ids += ids.null_ids;
            // The new version is committed first, then the old one dropped: a lookup in between
            // sees both and serves the newest.
            self.blocking(move |ix| write_file(&ix, ids)).await?;
            stats.indexed += 1;
            if let Some(old_id) = old {
                self.blocking(move |ix| remove_file(&ix, old_id)).await?;
                stats.removed += 1;
            }
        }
        drop(reads);
        for f in gone {
            info!(path = %f.path, "dropping deleted file from the index");
            self.blocking(move |ix| remove_file(&ix, f.file_id)).await?;
            stats.removed += 1;
        }
        self.blocking(|ix| Ok(ix.db.flush().map(|_| ())?)).await?;
        info!(dataset = %self.index.name(), ?stats, "index build done");
        Ok(stats)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(DatasetIndex) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let ix = self.index.clone();
        tokio::task::spawn_blocking(move || f(ix))
            .await
            .map_err(|e| IndexError::Corrupt(format!("index task failed: {e}")))?
    }

    async fn read_ids(&self, meta: ObjectMeta) -> Result<FileIds> {
        let path = meta.location.to_string();
        let file_err = |message: String| IndexError::File {
            path: path.clone(),
            message,
        };
        let meta_size = meta.size;
        let reader = StoreReader::new(self.store.clone(), meta.location.clone(), meta.size)
            .with_version(crate::reader::FileVersion::of_meta(&meta));
        let builder = ParquetRecordBatchStreamBuilder::new(reader)
            .await
            .map_err(|e| storage_or_file(&path, e))?;
        let md = builder.metadata().clone();
        let schema = md.file_metadata().schema_descr();
        let wanted: &[&str] = match self.kind {
            SurveyKind::Ztf => &["objectId", "candid", "candidate.jd"],
            SurveyKind::Lsst => &[
                "diaSource.diaSourceId",
                "diaSource.diaObjectId",
                "diaSource.midpointMjdTai",
            ],
        };
        let mut leaves = Vec::new();
        for w in wanted {
            let i = (0..schema.num_columns())
                .find(|&i| schema.column(i).path().string() == *w)
                .ok_or_else(|| file_err(format!("no column `{w}`: not a {} alert file", self.kind.name())))?;
            leaves.push(i);
        }
        // The class columns, when the file has them (a file of an older schema without any of
        // them counts its alerts as unclassified). The spec's words may also name functions and
        // keywords (`CASE WHEN rf_snia_vs_nonia > 0.5 ... END`): those match no column.
        let mut has_class_columns = false;
        for c in self.classes.iter().flat_map(|c| &c.columns) {
            let under: Vec<usize> = (0..schema.num_columns())
                .filter(|&i| {
                    let p = schema.column(i).path().string();
                    p == *c || p.starts_with(&format!("{c}."))
                })
                .collect();
            has_class_columns |= !under.is_empty();
            leaves.extend(under);
        }
        leaves.sort_unstable();
        leaves.dedup();
        let mask = ProjectionMask::leaves(schema, leaves);
        let row_groups: Vec<u64> = md.row_groups().iter().map(|rg| rg.num_rows() as u64).collect();
        let mut stream = builder
            .with_projection(mask)
            .with_batch_size(8192)
            .build()
            .map_err(|e| file_err(e.to_string()))?;

        // Rows arrive in file order; map the running row number to (row group, row).
        let mut out = FileIds {
            meta,
            rows: Vec::with_capacity(row_groups.iter().sum::<u64>() as usize),
            row_groups: row_groups.clone(),
            null_ids: 0,
            metadata_len: metadata_len(&md, meta_size),
            stats: Some(crate::FileStats {
                class_key: self.class_key().to_string(),
                counts: Vec::new(),
            }),
        };
        let mut class_error: Option<String> = None;
        let mut counts: HashMap<(Option<i32>, Option<String>), u64> = HashMap::new();
        let (mut rg, mut row_in_rg) = (0usize, 0u64);
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(|e| storage_or_file(&path, e))?;
            let cols = IdColumns::new(&batch, self.kind).map_err(file_err)?;
            // A class that cannot be computed (an expression that fails on this file, or
            // passes the server's bounds) leaves the file's alerts uncounted by class; its ids are
            // indexed all the same.
            let classes = match &self.classes {
                Some(spec) if has_class_columns && class_error.is_none() => {
                    let computed = (spec.eval)(&batch).and_then(|c| {
                        let c = arrow::compute::cast(&c, &DataType::Utf8)
                            .map_err(|e| format!("the class is not a string: {e}"))?;
                        if c.len() != batch.num_rows() {
                            return Err("the class has the wrong length".to_string());
                        }
                        Ok(c)
                    });
                    match computed {
                        Ok(c) => Some(c),
                        Err(e) => {
                            class_error = Some(e);
                            None
                        }
                    }
                }
                _ => None,
            };
            let times = cols.times();
            for i in 0..batch.num_rows() {
                let night = if times.is_null(i) {
                    None
                } else {
                    self.kind.night_of(times.as_primitive::<Float64Type>().value(i))
                };
                let class = classes
                    .as_ref()
                    .filter(|c| !c.is_null(i))
                    .map(|c| c.as_string::<i32>().value(i).to_string());
                *counts.entry((night, class)).or_default() += 1;
                while rg < row_groups.len() && row_in_rg >= row_groups[rg] {
                    rg += 1;
                    row_in_rg = 0;
                }
                match cols.row(i) {
                    Some((ids, t)) => out.rows.push((rg as u32, row_in_rg as u32, ids, t)),
                    None => out.null_ids += 1,
                }
                row_in_rg += 1;
            }
        }
        if let Some(e) = class_error {
            warn!(path = %path, error = %e, "the dataset's class cannot be computed on this file: its alerts are not counted by class");
            out.stats = None;
            return Ok(out);
        }
        if let Some(stats) = out.stats.as_mut() {
            stats.counts = counts
                .into_iter()
                .map(|((night, class), rows)| crate::NightClass { night, class, rows })
                .collect();
            stats.counts.sort();
        }
        Ok(out)
    }
}

fn storage_or_file(path: &str, e: parquet::errors::ParquetError) -> IndexError {
    match e {
        parquet::errors::ParquetError::External(inner) => match inner.downcast::<object_store::Error>() {
            Ok(source) => IndexError::Storage {
                path: path.to_string(),
                source: *source,
            },
            Err(other) => IndexError::File {
                path: path.to_string(),
                message: other.to_string(),
            },
        },
        other => IndexError::File {
            path: path.to_string(),
            message: other.to_string(),
        },
    }
}

/// The id columns of a batch, typed.
enum IdColumns {
    Ztf {
        object_id: Arc<dyn Array>,
        candid: Arc<dyn Array>,
        jd: Arc<dyn Array>,
    },
    Lsst {
        source: Arc<dyn Array>,
        object: Arc<dyn Array>,
        mjd: Arc<dyn Array>,
    },
}

fn child(batch: &RecordBatch, strukt: &str, field: &str, ty: &DataType) -> Result<Arc<dyn Array>, String> {
    let s = batch
        .column_by_name(strukt)
        .ok_or_else(|| format!("missing column {strukt}"))?;
    let s = s
        .as_struct_opt()
        .ok_or_else(|| format!("column {strukt} is not a struct"))?;
    let c = s
        .column_by_name(field)
        .ok_or_else(|| format!("missing column {strukt}.{field}"))?;
    cast(c, ty, &format!("{strukt}.{field}"))
}

fn top(batch: &RecordBatch, name: &str, ty: &DataType) -> Result<Arc<dyn Array>, String> {
    let c = batch
        .column_by_name(name)
        .ok_or_else(|| format!("missing column {name}"))?;
    cast(c, ty, name)
}

fn cast(c: &Arc<dyn Array>, ty: &DataType, name: &str) -> Result<Arc<dyn Array>, String> {
    if c.data_type() == ty {
        return Ok(c.clone());
    }
    arrow::compute::cast(c, ty).map_err(|e| format!("column {name} has type {} (expected {ty}): {e}", c.data_type()))
}

impl IdColumns {
    fn new(batch: &RecordBatch, kind: SurveyKind) -> Result<Self, String> {
        Ok(match kind {
            SurveyKind::Ztf => IdColumns::Ztf {
                object_id: top(batch, "objectId", &DataType::Utf8)?,
                candid: top(batch, "candid", &DataType::Int64)?,
                jd: child(batch, "candidate", "jd", &DataType::Float64)?,
            },
            SurveyKind::Lsst => IdColumns::Lsst {
                source: child(batch, "diaSource", "diaSourceId", &DataType::Int64)?,
                object: child(batch, "diaSource", "diaObjectId", &DataType::Int64)?,
                mjd: child(batch, "diaSource", "midpointMjdTai", &DataType::Float64)?,
            },
        })
    }

    /// The ids of row `i` and its time, or None when an id is null (or an objectId holds a NUL,
    /// which the key layout cannot hold). A null time indexes as NaN: undated, never an
    /// object's latest alert.
    /// The alert time column (float64).
    fn times(&self) -> &Arc<dyn Array> {
        match self {
            IdColumns::Ztf { jd, .. } => jd,
            IdColumns::Lsst { mjd, .. } => mjd,
        }
    }

    fn row(&self, i: usize) -> Option<(RowIds, f64)> {
        let time = |a: &Arc<dyn Array>| {
            if a.is_null(i) {
                f64::NAN
            } else {
                a.as_primitive::<Float64Type>().value(i)
            }
        };
        match self {
            IdColumns::Ztf { object_id, candid, jd } => {
                if object_id.is_null(i) || candid.is_null(i) {
                    return None;
                }
                let oid = object_id.as_string::<i32>().value(i);
                if oid.is_empty() || oid.contains('\0') {
                    return None;
                }
                let jd = time(jd);
                Some((
                    RowIds::Ztf {
                        candid: candid.as_primitive::<Int64Type>().value(i),
                        jd,
                        object_id: oid.to_string(),
                    },
                    jd,
                ))
            }
            IdColumns::Lsst { source, object, mjd } => {
                if source.is_null(i) {
                    return None;
                }
                // A source with no diaObject (a solar system source) still gets its own entry.
                let obj = if object.is_null(i) {
                    0
                } else {
                    object.as_primitive::<Int64Type>().value(i)
                };
                Some((
                    RowIds::Lsst {
                        dia_source_id: source.as_primitive::<Int64Type>().value(i),
                        dia_object_id: obj,
                    },
                    time(mjd),
                ))
            }
        }
    }
}

/// Rows of one file written per sled batch.
const WRITE_SLICE_ROWS: usize = 8192;

/// Write one file's rows, flush, then its commit record.
fn write_file(ix: &DatasetIndex, ids: FileIds) -> Result<()> {
    let file_id = ix.db.generate_id()?;
    // In slices: sled holds a whole batch in memory several times over while applying it (a
    // batch of a million rows took gigabytes), so a large file is written a slice at a time.
    // Nothing of the file is visible before its commit record anyway.
    for (slice_no, slice) in ids.rows.chunks(WRITE_SLICE_ROWS).enumerate() {
        let (mut a, mut b, mut byfile) = (sled::Batch::default(), sled::Batch::default(), sled::Batch::default());
        for (k, (rg, row, rid, t)) in slice.iter().enumerate() {
            let n = slice_no * WRITE_SLICE_ROWS + k;
            match rid {
                RowIds::Ztf { candid, jd, object_id } => {
                    a.insert(
                        keys::obj_key(object_id, *jd, *candid, file_id),
                        &keys::obj_value(*rg, *row)[..],
                    );
                    b.insert(
                        &keys::id_file_key(*candid, file_id)[..],
                        keys::candid_value(*rg, *row, *t, object_id),
                    );
                }
                RowIds::Lsst {
                    dia_source_id,
                    dia_object_id,
                } => {
                    a.insert(
                        &keys::id_file_key(*dia_source_id, file_id)[..],
                        keys::dia_value(*rg, *row, *t, *dia_object_id),
                    );
                    b.insert(
                        &keys::diaobj_key(*dia_object_id, *dia_source_id, file_id)[..],
                        keys::diaobj_value(*rg, *row, *t),
                    );
                }
            }
            byfile.insert(&keys::byfile_key(file_id, n as u64)[..], keys::byfile_value(rid));
        }
        // byfile first: if we die after it, repair() knows what to remove.
        ix.byfile.apply_batch(byfile)?;
        match slice.first().map(|r| &r.2) {
            Some(RowIds::Ztf { .. }) => {
                ix.obj.apply_batch(a)?;
                ix.candid.apply_batch(b)?;
            }
            Some(RowIds::Lsst { .. }) => {
                ix.dia.apply_batch(a)?;
                ix.diaobj.apply_batch(b)?;
            }
            None => {}
        }
    }
    ix.db.flush()?;
    let entry = FileEntry {
        file_id,
        path: ids.meta.location.to_string(),
        size: ids.meta.size,
        e_tag: ids.meta.e_tag.clone(),
        last_modified_ms: ids.meta.last_modified.timestamp_millis(),
        row_groups: ids.row_groups,
        metadata_len: ids.metadata_len,
        stats: ids.stats,
    };
    ix.catalog().commit(&entry)?;
    Ok(())
}

/// Drop a file: its commit record first (readers stop seeing it at once), then its rows.
pub(crate) fn remove_file(ix: &DatasetIndex, file_id: u64) -> Result<()> {
    ix.catalog().uncommit(file_id)?;
    ix.db.flush()?;
    remove_rows(ix, file_id)
}

fn remove_rows(ix: &DatasetIndex, file_id: u64) -> Result<()> {
    let prefix = file_id.to_be_bytes();
    let mut done = sled::Batch::default();
    let (mut a, mut b) = (sled::Batch::default(), sled::Batch::default());
    let mut ztf = None;
    for kv in ix.byfile.scan_prefix(prefix) {
        let (k, v) = kv?;
        match keys::decode_byfile_value(&v)? {
            RowIds::Ztf { candid, jd, object_id } => {
                ztf = Some(true);
                a.remove(keys::obj_key(&object_id, jd, candid, file_id));
                b.remove(&keys::id_file_key(candid, file_id)[..]);
            }
            RowIds::Lsst {
                dia_source_id,
                dia_object_id,
            } => {
                ztf = Some(false);
                a.remove(&keys::id_file_key(dia_source_id, file_id)[..]);
                b.remove(&keys::diaobj_key(dia_object_id, dia_source_id, file_id)[..]);
            }
        }
        done.remove(k);
    }
    match ztf {
        Some(true) => {
            ix.obj.apply_batch(a)?;
            ix.candid.apply_batch(b)?;
        }
        Some(false) => {
            ix.dia.apply_batch(a)?;
            ix.diaobj.apply_batch(b)?;
        }
        None => {}
    }
    ix.byfile.apply_batch(done)?;
    Ok(())
}

/// Remove the rows of files that have rows but no commit record (a killed build).
pub(crate) fn repair(ix: &DatasetIndex) -> Result<usize> {
    let mut repaired = 0;
    let mut from = [0u8; 8];
    loop {
        let Some(kv) = ix.byfile.range(from..).next() else {
            break;
        };
        let (k, _) = kv?;
        let file_id = keys::u64_at(&k, 0)?;
        if !ix.catalog().contains(file_id)? {
            warn!(dataset = %ix.name(), file_id, "removing rows of a file a killed build left uncommitted");
            remove_rows(ix, file_id)?;
            repaired += 1;
        }
        match file_id.checked_add(1) {
            Some(next) => from = next.to_be_bytes(),
            None => break,
        }
    }
    if repaired > 0 {
        ix.db.flush()?;
    }
    Ok(repaired)
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// Write a file's rows without the commit record, as a build killed before it would.
    pub(crate) fn write_uncommitted(ix: &DatasetIndex, path: &str, rows: Vec<(u32, u32, RowIds, f64)>) -> Result<u64> {
        let meta = ObjectMeta {
            location: Path::from(path),
            last_modified: Default::default(),
            size: 1,
            e_tag: None,
            version: None,
        };
        let ids = FileIds {
            meta,
            row_groups: vec![rows.len() as u64],
            rows,
            null_ids: 0,
            metadata_len: 0,
            stats: Some(crate::FileStats::default()),
        };
        write_file(ix, ids)?;
        // Take the commit record back out: what a crash between rows and commit leaves.
        let id = ix
            .catalog()
            .files()?
            .into_iter()
            .find(|f| f.path == path)
            .map(|f| f.file_id)
            .expect("just written");
        ix.catalog().uncommit(id)?;
        Ok(id)
    }
}
