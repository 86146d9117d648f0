//! The incremental index builder.
//!
//! One run:
//! 1. **repair**: delete what a killed build or merge left (files no generation names), and
//!    drop the segments found corrupt, with the catalog entries of their files (which are then
//!    read again, as new);
//! 2. list the dataset's parquet files; skip those whose size and etag (or modification time)
//!    are the catalog's; read the footer and the id columns of new and changed files, a few at
//!    once;
//! 3. give each file read a base ordinal (its rows are base + position) and push its rows into
//!    one [`SegmentBuilder`], which sorts the id and object tables in bounded memory (an
//!    external sort past [`BUILD_MEMORY_BYTES`]) and writes them sequentially;
//! 4. **commit** the segment with the catalog's changes (new entries, the entries of changed
//!    and deleted files removed) as one new generation ([`SegmentDir::commit`]); a build of
//!    more than [`COMMIT_ALERTS`] alerts commits a segment each time it has that many;
//! 5. **merge**: when the newest [`MERGE_FANIN`] segments are of one level, merge them into
//!    one of the next level (leaving out the entries of files the catalog no longer holds),
//!    and again, so that a lake of n alerts has O(log n) segments and every entry is rewritten
//!    O(log n) times.
//!
//! Builds of one dataset are serialized (a lock shared by every handle of the dataset). Lookups
//! see a generation whole: before a commit the old one, after it the new one. A changed file's
//! old entries are masked from the commit that adds its new ones.

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

use crate::idmap::{self, AlertIds, SegmentBuilder};
use crate::keys;
use crate::manifest::{CatalogChange, Manifest, SegmentDir, SegmentRef};
use crate::objkey::ObjectKey;
use crate::segment::Segment;
use crate::{DatasetIndex, FileEntry, IndexError, Result, SurveyKind};
use astroflight_reader::StoreReader;

/// Memory a build's sorts may hold before they spill sorted runs to disk.
pub const BUILD_MEMORY_BYTES: usize = 256 << 20;

/// A build commits a segment each time it has pushed this many alerts (a first build of a
/// large lake is then visible, and resumable, in steps).
pub const COMMIT_ALERTS: u64 = 50_000_000;

/// How many segments of one level are merged into one of the next.
pub const MERGE_FANIN: usize = 4;

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
    /// Segments found corrupt and dropped (their files were read again), and leftovers of a
    /// killed build or merge removed.
    pub repaired: usize,
    /// Segments merged into others.
    pub merged: usize,
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
    /// Rows with ids: (position in the file, id, group, time); ordinals are given at commit.
    rows: Vec<(u64, i64, u64, f64)>,
    /// The objectIds of the file that are not ZTF-shaped, by their hashed key.
    names: HashMap<u64, String>,
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

        let mut pending = Some(self.blocking(Pending::start).await?);
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
            let (rows, null_ids) = (ids.rows.len() as u64, ids.null_ids);
            let mut p = pending.take().expect("a pending segment");
            let (p, added) = self
                .blocking(move |ix| {
                    let r = p.add(&ix, ids, old);
                    Ok((p, r))
                })
                .await?;
            match added {
                Ok(()) => {
                    stats.rows += rows;
                    stats.null_ids += null_ids;
                    stats.indexed += 1;
                    stats.removed += usize::from(old.is_some());
                }
                Err(e @ IndexError::File { .. }) => {
                    warn!(%path, error = %e, "cannot index file");
                    stats.failed.push((path, e.to_string()));
                }
                Err(e) => return Err(e),
            }
            pending = Some(if p.alerts() >= COMMIT_ALERTS {
                self.blocking(move |ix| {
                    p.commit(&ix, Vec::new())?;
                    Pending::start(ix)
                })
                .await?
            } else {
                p
            });
        }
        drop(reads);
        for f in &gone {
            info!(path = %f.path, "dropping deleted file from the index");
        }
        stats.removed += gone.len();
        let dropped: Vec<u64> = gone.iter().map(|f| f.file_id).collect();
        let p = pending.take().expect("a pending segment");
        self.blocking(move |ix| p.commit(&ix, dropped)).await?;
        stats.merged = self.blocking(|ix| merge_levels(&ix)).await?;
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
            .with_version(astroflight_reader::FileVersion::of_meta(&meta));
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
            names: HashMap::new(),
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
        let mut position = 0u64;
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
                match cols.row(i) {
                    Some((id, group, t, name)) => {
                        if let Some(name) = name {
                            out.names.entry(group).or_insert_with(|| name.to_string());
                        }
                        out.rows.push((position, id, group, t))
                    }
                    None => out.null_ids += 1,
                }
                position += 1;
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

    /// The alert time column (float64).
    fn times(&self) -> &Arc<dyn Array> {
        match self {
            IdColumns::Ztf { jd, .. } => jd,
            IdColumns::Lsst { mjd, .. } => mjd,
        }
    }

    /// Row `i`'s id, group (the objectId's key, or the diaObjectId's) and time, and the
    /// objectId when it is not ZTF-shaped (its key is a hash, whose string the index keeps);
    /// None when an id is null or an objectId is empty. A null time indexes as NaN: undated,
    /// never an object's latest alert.
    fn row(&self, i: usize) -> Option<(i64, u64, f64, Option<&str>)> {
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
                if oid.is_empty() {
                    return None;
                }
                let key = ObjectKey::of(oid);
                Some((
                    candid.as_primitive::<Int64Type>().value(i),
                    key.0,
                    time(jd),
                    key.is_hashed().then_some(oid),
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
                    source.as_primitive::<Int64Type>().value(i),
                    idmap::id_key(obj),
                    time(mjd),
                    None,
                ))
            }
        }
    }
}

/// The segment a build is writing, and the catalog changes that commit with it.
struct Pending {
    base: Manifest,
    name: String,
    /// Created with the first file that has rows.
    builder: Option<SegmentBuilder>,
    next: u64,
    changes: Vec<CatalogChange>,
}

impl Pending {
    fn start(ix: DatasetIndex) -> Result<Self> {
        let base = ix.segdir.manifest()?;
        Ok(Pending {
            next: base.next_ordinal,
            name: SegmentDir::new_name(&base, 0),
            base,
            builder: None,
            changes: Vec::new(),
        })
    }

    fn alerts(&self) -> u64 {
        self.builder.as_ref().map_or(0, SegmentBuilder::alerts)
    }

    fn scratch(&self, ix: &DatasetIndex) -> std::path::PathBuf {
        ix.segdir.dir().join(format!("scratch-{}", self.name))
    }

    /// Push a file's rows under the next base ordinal; its catalog entry (and the removal of
    /// its old version's) commit with the segment. A file whose non-ZTF objectId hashes to the
    /// key of another objectId is refused (an answer for one must never hold the other's
    /// alerts); nothing of it is pushed.
    fn add(&mut self, ix: &DatasetIndex, ids: FileIds, old: Option<u64>) -> Result<()> {
        let path = ids.meta.location.to_string();
        for (key, name) in &ids.names {
            let k = key.to_be_bytes();
            if let Err(current) = ix
                .names
                .compare_and_swap(k, None as Option<&[u8]>, Some(name.as_bytes()))?
            {
                let other = current
                    .current
                    .as_deref()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default();
                if other != name.as_str() {
                    return Err(IndexError::File {
                        path,
                        message: format!(
                            "objectId {name:?} has the same 63-bit key as {other:?}, which is indexed already: the file is not indexed"
                        ),
                    });
                }
            }
        }
        let base = self.next;
        if self.builder.is_none() && !ids.rows.is_empty() {
            let staged = ix.segdir.staging_path(&self.name);
            self.builder = Some(SegmentBuilder::new(&staged, &self.scratch(ix), BUILD_MEMORY_BYTES)?);
        }
        for &(pos, id, group, time) in &ids.rows {
            let b = self.builder.as_mut().expect("created above");
            b.push(AlertIds {
                ordinal: base + pos,
                id,
                group,
                time,
            })?;
        }
        self.next = base + ids.row_groups.iter().sum::<u64>();
        let entry = FileEntry {
            file_id: ix.db.generate_id()?,
            base_ordinal: base,
            path,
            size: ids.meta.size,
            e_tag: ids.meta.e_tag.clone(),
            last_modified_ms: ids.meta.last_modified.timestamp_millis(),
            row_groups: ids.row_groups,
            metadata_len: ids.metadata_len,
            stats: ids.stats,
        };
        self.changes.push((
            entry.file_id.to_be_bytes().to_vec(),
            Some(keys::encode_file_entry(&entry)),
        ));
        if let Some(old) = old {
            self.changes.push((old.to_be_bytes().to_vec(), None));
        }
        Ok(())
    }

    /// Write the segment and commit it, with the catalog's changes and the removal of the
    /// `dropped` files, as the next generation; then show it to lookups. Nothing is committed
    /// when nothing changed; a segment is added only when it holds alerts.
    fn commit(mut self, ix: &DatasetIndex, dropped: Vec<u64>) -> Result<()> {
        self.changes
            .extend(dropped.into_iter().map(|id| (id.to_be_bytes().to_vec(), None)));
        if self.changes.is_empty() {
            return Ok(());
        }
        let mut add = Vec::new();
        if let Some(builder) = self.builder.take() {
            let (bytes, alerts) = builder.finish(b"")?;
            add.push(SegmentRef {
                name: self.name,
                bytes,
                alerts,
                level: 0,
                first: self.base.next_ordinal,
                end: self.next,
            });
        }
        ix.segdir.commit(&self.base, add, &[], self.next, self.changes)?;
        ix.reload()
    }
}

/// Merge the newest [`MERGE_FANIN`] segments while they are of one level (each merge makes one
/// of the next level, so levels never increase towards the newest). Returns how many segments
/// were merged away.
fn merge_levels(ix: &DatasetIndex) -> Result<usize> {
    let mut merged = 0;
    loop {
        let m = ix.segdir.manifest()?;
        let n = m.segments.len();
        if n < MERGE_FANIN {
            return Ok(merged);
        }
        let tail = &m.segments[n - MERGE_FANIN..];
        if tail.iter().any(|s| s.level != tail[0].level) {
            return Ok(merged);
        }
        let view = ix.view.get();
        let segments = tail
            .iter()
            .map(|r| Segment::open(&ix.segdir.path(&r.name)))
            .collect::<Result<Vec<_>>>()?;
        let name = SegmentDir::new_name(&m, 0);
        let staged = ix.segdir.staging_path(&name);
        let (bytes, alerts) = idmap::merge(&segments, &|o| view.live(o), &staged, b"")?;
        drop(segments);
        let out = SegmentRef {
            name,
            bytes,
            alerts,
            level: tail[0].level.saturating_add(1),
            first: tail.iter().map(|s| s.first).min().unwrap_or(0),
            end: tail.iter().map(|s| s.end).max().unwrap_or(0),
        };
        let removed: Vec<String> = tail.iter().map(|s| s.name.clone()).collect();
        info!(dataset = %ix.name(), segments = MERGE_FANIN, level = out.level, alerts, bytes, "merged index segments");
        ix.segdir.commit(&m, vec![out], &removed, m.next_ordinal, Vec::new())?;
        ix.reload()?;
        merged += MERGE_FANIN;
    }
}

/// Remove what a killed build or merge left, and drop the segments that cannot be read (found
/// at load or by a lookup) with the catalog entries of their files, which the build then reads
/// again from the lake. Returns how many things were repaired.
pub(crate) fn repair(ix: &DatasetIndex) -> Result<usize> {
    let mut repaired = ix.segdir.remove_unnamed()?;
    let view = ix.view.get();
    let mut broken: HashSet<std::path::PathBuf> = view.broken.iter().map(|(p, _)| p.into()).collect();
    if let Ok(b) = ix.broken.lock() {
        broken.extend(b.iter().cloned());
    }
    if broken.is_empty() {
        return Ok(repaired);
    }
    let m = ix.segdir.manifest()?;
    let bad: Vec<&SegmentRef> = m
        .segments
        .iter()
        .filter(|s| broken.contains(&ix.segdir.path(&s.name)))
        .collect();
    let mut changes = Vec::new();
    for f in ix.catalog().files()? {
        if bad.iter().any(|s| (s.first..s.end).contains(&f.base_ordinal)) {
            changes.push((f.file_id.to_be_bytes().to_vec(), None));
        }
    }
    for s in &bad {
        warn!(dataset = %ix.name(), path = %ix.segdir.path(&s.name).display(), "dropping a corrupt index segment; its files are read again from the lake");
    }
    let names: Vec<String> = bad.iter().map(|s| s.name.clone()).collect();
    repaired += names.len();
    ix.segdir.commit(&m, Vec::new(), &names, m.next_ordinal, changes)?;
    if let Ok(mut b) = ix.broken.lock() {
        b.clear();
    }
    ix.reload()?;
    Ok(repaired)
}
