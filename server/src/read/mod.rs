//! Reading rows at known locations: what every ticket kind that starts from the index (cutouts
//! today; alert batches and headers later) uses to turn (file, row group, rows) into batches.
//!
//! ```text
//!  RowsAt { file, row group, rows, the id each row must hold }
//!    ─> footer (cache, or one versioned read of the file's metadata suffix, decoded on the CPU runtime)
//!    ─> RowSelection over the row group, one projection per column group (each its own parquet
//!       stream, read and decompressed in parallel; with an offset index only the pages holding
//!       the rows are fetched, every read carrying the indexed version of the file)
//!    ─> [CPU runtime] zip the column groups, check every row's id, `convert` into output rows
//!    ─> one-batch channel ─> the caller (the gRPC side)
//! ```
//!
//! Nothing partial leaves as whole: a panic in a reading task or in `convert` becomes an error,
//! and a read that ends before every planned row was produced is an error too.

use std::ops::Range;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use tracing::Instrument;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use arrow_schema::{DataType, Schema};
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use futures::FutureExt;
use object_store::path::Path;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions, RowSelection, RowSelector};
use parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;
use parquet::arrow::ProjectionMask;

use crate::storage::{FileVersion, StoreReader};
use astroflight_index::FileEntry;

use crate::error::{Error, Result};
use crate::lake::{Dataset, Lake};
use crate::runtime::{on_cpu, panicked};
use crate::storage::{IoStats, RangeReads};

/// Rows decoded per parquet batch (and so per output batch).
pub const BATCH_ROWS: usize = 32;

/// Rows of a file with an offset index read at once: each may need its own ~1 MB page per
/// column, and the reader holds all the pages of what it reads, so this bounds a request's
/// memory (8 rows x 3 stamp columns: ~24 MB of pages for an `All` cutout ticket).
pub const READ_ROWS: usize = 8;

/// What one request reads through: the lake, one dataset, and the request's I/O counters.
#[derive(Clone)]
pub struct ReadCtx {
    pub lake: Arc<Lake>,
    pub ds: Arc<Dataset>,
    pub io: Arc<IoStats>,
}

impl ReadCtx {
    fn reader(&self, entry: &FileEntry) -> StoreReader {
        file_reader(&self.lake, &self.ds, &self.io, &entry.path, entry.version())
    }

    /// How a file is named in messages.
    pub fn what(&self, entry: &FileEntry) -> String {
        format!("file {} of dataset {:?}", entry.path, self.ds.name)
    }

    /// The footer of an indexed file, from the cache or read: one versioned suffix read holding
    /// the footer and the offset index, sized from the index, decoded on the CPU runtime. A
    /// footer whose row groups disagree with the index means the file changed since it was
    /// indexed.
    pub async fn footer(&self, entry: &FileEntry) -> Result<ArrowReaderMetadata> {
        let (what, expect) = (self.what(entry), entry.row_groups.clone());
        cached_footer(
            &self.lake,
            (self.ds.number, entry.file_id),
            || self.reader(entry).with_offset_index(),
            entry.metadata_len,
            what.clone(),
            move |md| {
                let rows: Vec<u64> = md.row_groups().iter().map(|r| r.num_rows() as u64).collect();
                if rows != expect {
                    return Err(Error::DataLoss(format!(
                        "{what} changed since it was indexed (row groups {rows:?}, index has {expect:?}): re-run `astroflight index`"
                    )));
                }
                Ok(())
            },
        )
        .await
    }
}

/// A reader of one version of a file of `ds`, counting into `io`: every read carries the
/// version, and ranges are coalesced or exact as the dataset's storage wants.
pub fn file_reader(lake: &Lake, ds: &Dataset, io: &Arc<IoStats>, path: &str, version: FileVersion) -> StoreReader {
    let reader = StoreReader::new(lake.store_for(ds, io), Path::from(path), version.size).with_version(version);
    match ds.range_reads {
        RangeReads::Exact => reader.with_coalesce(0),
        RangeReads::Coalesced => reader,
    }
}

/// A footer through the lake's cache: on a miss, one versioned read of the metadata suffix
/// (`metadata_len` bytes when known, else the reader's default prefetch), decoded and
/// checked by `check` on the CPU runtime.
pub async fn cached_footer(
    lake: &Lake,
    key: crate::runtime::footer::FileKey,
    reader: impl FnOnce() -> StoreReader,
    metadata_len: u64,
    what: String,
    check: impl FnOnce(&parquet::file::metadata::ParquetMetaData) -> Result<()> + Send + 'static,
) -> Result<ArrowReaderMetadata> {
    lake.footers
        .get_or_load(key, || {
            let mut reader = reader();
            if metadata_len > 0 {
                reader = reader.with_prefetch(metadata_len as usize);
            }
            let load = async move {
                let md = reader.load_metadata().await.map_err(|e| Error::parquet(&what, e))?;
                check(&md)?;
                ArrowReaderMetadata::try_new(md, ArrowReaderOptions::new()).map_err(|e| Error::parquet(&what, e))
            };
            let handle = lake.cpu.handle();
            // The request's span goes along, so the reads are its children in traces.
            async move { handle.spawn(load.in_current_span()).await? }
        })
        .await
}

/// Rows of one row group of one file, and the id each must hold.
#[derive(Debug, Clone)]
pub struct RowsAt {
    pub file_id: u64,
    pub row_group: u32,
    /// Ascending, distinct row numbers within the row group.
    pub rows: Vec<u32>,
    /// The id stored in each row (its `id_leaf` column), checked on every read.
    pub ids: Vec<i64>,
}

/// Read `at.rows` of `columns` (leaf paths; each inner list is one parallel stream) plus the id
/// leaf, check each row's id, and turn each batch into output with `convert(raw, range)`, where
/// `range` indexes `at.rows`. Runs on the CPU runtime; the returned stream stays one batch ahead
/// of its consumer and stops reading when it is dropped.
pub async fn read_rows<F>(
    ctx: &ReadCtx,
    at: RowsAt,
    id_leaf: &str,
    columns: &[Vec<String>],
    mut convert: F,
) -> Result<BoxStream<'static, Result<RecordBatch>>>
where
    F: FnMut(&RecordBatch, Range<usize>) -> Result<RecordBatch> + Send + 'static,
{
    let entry = ctx.ds.index.file(at.file_id)?.ok_or_else(|| {
        Error::Unavailable(format!(
            "a file of dataset {:?} was dropped from the index during the request; retry",
            ctx.ds.name
        ))
    })?;
    let arrow_md = ctx.footer(&entry).await?;
    let md = arrow_md.metadata().clone();
    let what = ctx.what(&entry);
    let schema = md.file_metadata().schema_descr();
    let leaf = |name: &str| {
        (0..schema.num_columns())
            .find(|&i| schema.column(i).path().string() == name)
            .ok_or_else(|| Error::DataLoss(format!("{what} has no column {name}")))
    };
    let mut projections = Vec::with_capacity(columns.len().max(1));
    for (i, group) in columns.iter().enumerate() {
        let mut leaves = if i == 0 { vec![leaf(id_leaf)?] } else { Vec::new() };
        for c in group {
            leaves.push(leaf(c)?);
        }
        projections.push(leaves);
    }
    if projections.is_empty() {
        projections.push(vec![leaf(id_leaf)?]);
    }

    let rg = at.row_group as usize;
    let rg_rows = md
        .row_groups()
        .get(rg)
        .ok_or_else(|| {
            Error::DataLoss(format!(
                "{what} has no row group {rg} (the index is stale: re-run `astroflight index`)"
            ))
        })?
        .num_rows() as usize;
    if at.rows.len() != at.ids.len() || at.rows.windows(2).any(|w| w[0] >= w[1]) {
        return Err(Error::Internal(format!(
            "{what}: rows to read are not ascending and distinct"
        )));
    }
    if let Some(&r) = at.rows.iter().find(|&&r| r as usize >= rg_rows) {
        return Err(Error::DataLoss(format!(
            "{what}: row {r} is past the end of row group {rg} (the index is stale)"
        )));
    }
    // With an offset index, each row costs the pages that hold it (~1 MB per stamp column in
    // Spark files), and the parquet reader holds every page of its selection at once: rows are
    // read a few at a time, so a request holds at most READ_ROWS pages per column. Without one,
    // every read costs the whole column chunks, so the rows are read in one go.
    let chunk = if md.offset_index().is_some() {
        READ_ROWS
    } else {
        at.rows.len().max(1)
    };
    let selections: Vec<RowSelection> = at.rows.chunks(chunk).map(|c| selection(c, rg_rows)).collect();
    let (reader_ctx, reader_entry, reader_what) = (ctx.clone(), entry.clone(), what.clone());
    let open = move |sel: RowSelection| -> Result<BoxStream<'static, Result<RecordBatch>>> {
        let schema = md.file_metadata().schema_descr();
        let mut parts = Vec::with_capacity(projections.len());
        for leaves in &projections {
            let reader = reader_ctx.reader(&reader_entry).with_metadata(md.clone());
            let what = reader_what.clone();
            let stream = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, arrow_md.clone())
                .with_row_groups(vec![rg])
                .with_row_selection(sel.clone())
                .with_projection(ProjectionMask::leaves(schema, leaves.clone()))
                .with_batch_size(BATCH_ROWS)
                .build()
                .map_err(|e| Error::parquet(&what, e))?
                .map_err(move |e| Error::parquet(&what, e));
            parts.push(stream.boxed());
        }
        Ok(zip_columns(parts))
    };
    let id_leaf = id_leaf.to_string();
    let planned = at.rows.len();
    Ok(on_cpu(
        &ctx.lake.cpu,
        move || stream::iter(selections).map(open).try_flatten().boxed(),
        move |raw, offset| {
            let range = *offset..*offset + raw.num_rows();
            *offset = range.end;
            if range.end > planned {
                return Err(Error::Internal(format!(
                    "{what}: the reader returned rows {range:?} of {planned}"
                )));
            }
            check_ids(&raw, &id_leaf, &at, range.clone(), &what)?;
            convert(&raw, range)
        },
        move |offset| {
            (offset != planned).then(|| Error::Internal(format!("a read ended after {offset} of {planned} rows")))
        },
    ))
}

/// The selection of `rows` (ascending, inside the row group) in a row group of `total` rows.
fn selection(rows: &[u32], total: usize) -> RowSelection {
    let mut selectors = Vec::with_capacity(2 * rows.len() + 1);
    let mut next = 0usize;
    for &r in rows {
        let r = r as usize;
        if r > next {
            selectors.push(RowSelector::skip(r - next));
        }
        selectors.push(RowSelector::select(1));
        next = r + 1;
    }
    if total > next {
        selectors.push(RowSelector::skip(total - next));
    }
    RowSelection::from(selectors)
}

/// A column by dotted leaf path (`candid`, `diaSource.diaSourceId`).
pub fn column_at(batch: &RecordBatch, path: &str) -> Option<ArrayRef> {
    let mut parts = path.split('.');
    let mut col = batch.column_by_name(parts.next()?)?.clone();
    for p in parts {
        col = col.as_struct_opt()?.column_by_name(p)?.clone();
    }
    Some(col)
}

fn check_ids(raw: &RecordBatch, id_leaf: &str, at: &RowsAt, range: Range<usize>, what: &str) -> Result<()> {
    let col = column_at(raw, id_leaf).ok_or_else(|| Error::DataLoss(format!("{what}: id column {id_leaf} missing")))?;
    let col = arrow::compute::cast(&col, &DataType::Int64)
        .map_err(|e| Error::DataLoss(format!("{what}: id column {id_leaf}: {e}")))?;
    let ids = col.as_primitive::<Int64Type>();
    for (i, k) in range.enumerate() {
        if ids.is_null(i) || ids.value(i) != at.ids[k] {
            return Err(Error::DataLoss(format!(
                "{what} no longer matches the index (row {} of row group {} should hold id {}): re-run `astroflight index`",
                at.rows[k], at.row_group, at.ids[k]
            )));
        }
    }
    Ok(())
}

/// Zip column streams over the same rows into batches holding all their columns. Each stream
/// runs on its own task of the current (CPU) runtime, behind a one-batch channel: the columns
/// are read and decompressed in parallel, and the next batch is decoded while this one is
/// converted. A panicking task sends an error; streams that end apart are an error.
fn zip_columns(parts: Vec<BoxStream<'static, Result<RecordBatch>>>) -> BoxStream<'static, Result<RecordBatch>> {
    let receivers: Vec<tokio::sync::mpsc::Receiver<Result<RecordBatch>>> = parts
        .into_iter()
        .map(|mut part| {
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            tokio::spawn(
                async move {
                    loop {
                        let b = match AssertUnwindSafe(part.next()).catch_unwind().await {
                            Ok(Some(b)) => b,
                            Ok(None) => break,
                            Err(p) => Err(panicked("reading a column", p)),
                        };
                        let failed = b.is_err();
                        if tx.send(b).await.is_err() || failed {
                            break;
                        }
                    }
                }
                .in_current_span(),
            );
            rx
        })
        .collect();
    stream::unfold(receivers, |mut rx| async move {
        let mut batches = Vec::with_capacity(rx.len());
        let mut ended = 0;
        for r in rx.iter_mut() {
            match r.recv().await {
                Some(Ok(b)) => batches.push(b),
                Some(Err(e)) => return Some((Err(e), rx)),
                None => ended += 1,
            }
        }
        if ended == rx.len() {
            return None;
        }
        if ended > 0 {
            return Some((
                Err(Error::Internal("column streams of one row group ended apart".into())),
                rx,
            ));
        }
        Some((merge_columns(&batches), rx))
    })
    .boxed()
}

fn merge_columns(batches: &[RecordBatch]) -> Result<RecordBatch> {
    let rows = batches[0].num_rows();
    if batches.iter().any(|b| b.num_rows() != rows) {
        return Err(Error::Internal("column streams returned different row counts".into()));
    }
    let mut fields = Vec::new();
    let mut columns = Vec::new();
    for b in batches {
        fields.extend(b.schema().fields().iter().cloned());
        columns.extend(b.columns().iter().cloned());
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| Error::Internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow_schema::Field;

    fn batch(v: Vec<i64>) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("candid", DataType::Int64, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(v))]).unwrap()
    }

    async fn run(
        parts: Vec<BoxStream<'static, Result<RecordBatch>>>,
        planned: usize,
        panic_at: Option<i64>,
    ) -> Vec<Result<RecordBatch>> {
        let cpu = crate::runtime::cpu::CpuPool::new(1).unwrap();
        let out = on_cpu(
            &cpu,
            move || zip_columns(parts),
            move |raw, offset| {
                *offset += raw.num_rows();
                let ids = raw.column(0).as_primitive::<Int64Type>();
                if panic_at.is_some_and(|p| ids.values().contains(&p)) {
                    panic!("forced failure in a conversion");
                }
                Ok(raw)
            },
            move |n| (n != planned).then(|| Error::Internal(format!("a read ended after {n} of {planned} rows"))),
        );
        out.collect().await
    }

    #[tokio::test]
    async fn a_panic_or_an_early_end_is_an_error_never_a_short_ok() {
        // A reading task that panics after its first batch: the stream ends with an error.
        let panicking = stream::iter(vec![Ok(batch(vec![1, 2]))])
            .chain(stream::once(async { panic!("forced failure in a reading task") }))
            .boxed();
        let got = run(vec![panicking], 4, None).await;
        assert!(got[0].is_ok());
        let e = got.last().unwrap().as_ref().unwrap_err().to_string();
        assert!(e.contains("forced failure in a reading task"), "{e}");

        // A conversion that panics.
        let got = run(
            vec![stream::iter(vec![Ok(batch(vec![1])), Ok(batch(vec![7]))]).boxed()],
            2,
            Some(7),
        )
        .await;
        assert!(got[1]
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("forced failure in a conversion"));

        // A stream that ends early, without any panic: the planned count is not met.
        let got = run(vec![stream::iter(vec![Ok(batch(vec![1, 2]))]).boxed()], 3, None).await;
        assert_eq!(got.len(), 2);
        assert!(got[1]
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("ended after 2 of 3 rows"));

        // Two column streams that end apart.
        let a = stream::iter(vec![Ok(batch(vec![1])), Ok(batch(vec![2]))]).boxed();
        let b = stream::iter(vec![Ok(batch(vec![1]))]).boxed();
        let got = run(vec![a, b], 2, None).await;
        assert!(got
            .last()
            .unwrap()
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("ended apart"));

        // And a whole read is fine.
        let got = run(
            vec![stream::iter(vec![Ok(batch(vec![1, 2])), Ok(batch(vec![3]))]).boxed()],
            3,
            None,
        )
        .await;
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|r| r.is_ok()));
    }
}
