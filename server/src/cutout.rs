//! Cutout tickets: resolve ids through the index, read only the pages that hold the rows, and
//! stream the stamps as Arrow batches.
//!
//! ```text
//!  ticket ─> plan (index lookups; spawn_blocking past a few ids) ─> targets grouped by (file, row group)
//!        ─> per group: RowSelection over the row group + projection of the id and stamp leaves
//!           (with the offset index, only the pages holding the rows are fetched)
//!        ─> per batch: check ids, gunzip / decode FITS ─> output batch
//!  (reads, page decompression and stamp decoding run on the CPU runtime, `crate::cpu`)
//! ```
//!
//! Every id is resolved before the first byte is sent: an unknown id fails the whole request
//! with NOT_FOUND instead of a partial answer. Rows come grouped by file (in file and row
//! order), one row per (alert, stamp kind); the id columns say which is which.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BinaryBuilder, Float32Builder, Int32Builder, Int64Builder, ListBuilder,
    RecordBatch, StringBuilder,
};
use arrow::datatypes::Int64Type;
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use object_store::path::Path;
use parquet::arrow::arrow_reader::{RowSelection, RowSelector};
use parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;
use parquet::arrow::ProjectionMask;

use astroflight_index::reader::StoreReader;
use astroflight_index::{Location, SurveyKind};
use astroflight_proto::{CutoutRequest, Selector, StampFormat, StampKind};

use crate::error::{Error, Result};
use crate::fits;
use crate::lake::{Dataset, Lake};
use crate::storage::IoStats;

/// Alerts decoded per parquet batch (and so per output batch, times the stamp kinds).
const BATCH_ROWS: usize = 32;

/// A plan naming this few ids runs its sled lookups on the gRPC worker itself: tens of
/// microseconds, far below the ~500 us a poll may block, and cheaper than a hop to the
/// blocking pool (a thread wake-up each way). Larger plans go to `spawn_blocking`.
pub const INLINE_IDS: usize = 16;

/// The ids of one alert, as they appear in the output.
#[derive(Debug, Clone, PartialEq)]
pub enum AlertIds {
    Ztf { object_id: String, candid: i64 },
    Lsst { dia_source_id: i64, dia_object_id: i64 },
}

impl AlertIds {
    /// The id stored in the row itself, checked against the index on every read.
    fn row_id(&self) -> i64 {
        match self {
            AlertIds::Ztf { candid, .. } => *candid,
            AlertIds::Lsst { dia_source_id, .. } => *dia_source_id,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Target {
    pub ids: AlertIds,
    pub location: Location,
}

/// A planned cutout request.
pub struct CutoutPlan {
    pub dataset: Arc<Dataset>,
    pub dataset_no: usize,
    pub kinds: &'static [StampKind],
    pub format: StampFormat,
    /// Sorted by location, one per alert.
    pub targets: Vec<Target>,
}

impl CutoutPlan {
    pub fn rows(&self) -> usize {
        self.targets.len() * self.kinds.len()
    }
    pub fn schema(&self) -> SchemaRef {
        cutout_schema(self.dataset.kind, self.format)
    }
}

/// The result schema of a cutout ticket.
pub fn cutout_schema(kind: SurveyKind, format: StampFormat) -> SchemaRef {
    let mut fields = match kind {
        SurveyKind::Ztf => vec![
            Field::new("objectId", DataType::Utf8, false),
            Field::new("candid", DataType::Int64, false),
        ],
        SurveyKind::Lsst => vec![
            Field::new("diaSourceId", DataType::Int64, false),
            Field::new("diaObjectId", DataType::Int64, false),
        ],
    };
    fields.push(Field::new("kind", DataType::Utf8, false));
    match format {
        StampFormat::Fits | StampFormat::Gzip => fields.push(Field::new("stamp", DataType::Binary, true)),
        StampFormat::Array => {
            fields.push(Field::new(
                "pixels",
                DataType::List(Arc::new(Field::new_list_field(DataType::Float32, false))),
                true,
            ));
            fields.push(Field::new("width", DataType::Int32, true));
            fields.push(Field::new("height", DataType::Int32, true));
        }
    }
    Arc::new(Schema::new(fields))
}

fn not_found(what: &str, ds: &str, missing: &[String]) -> Error {
    let shown: Vec<&str> = missing.iter().take(10).map(String::as_str).collect();
    let more = if missing.len() > 10 {
        format!(" (and {} more)", missing.len() - 10)
    } else {
        String::new()
    };
    Error::NotFound(format!(
        "no alert with {what} {}{more} in dataset {ds:?}",
        shown.join(", ")
    ))
}

/// Check the request against the dataset's survey without touching the index.
pub fn check_request(lake: &Lake, req: &CutoutRequest) -> Result<(usize, Arc<Dataset>)> {
    let (no, ds) = lake.dataset(&req.dataset)?;
    match (&req.selector, ds.kind) {
        (Selector::DiaSources { .. }, SurveyKind::Ztf) => Err(Error::InvalidArgument(format!(
            "dataset {:?} holds ZTF alerts: name them with objectId/objectIds or candid/candids",
            ds.name
        ))),
        (Selector::Objects { .. } | Selector::Candids { .. }, SurveyKind::Lsst) => {
            Err(Error::InvalidArgument(format!(
                "dataset {:?} holds Rubin alerts: name them with diaSourceId/diaSourceIds",
                ds.name
            )))
        }
        _ => Ok((no, ds.clone())),
    }
}

/// Resolve every id through the index (blocking: call from `spawn_blocking` unless the request
/// names at most [`INLINE_IDS`] ids).
pub fn plan(lake: &Lake, req: &CutoutRequest) -> Result<CutoutPlan> {
    let (dataset_no, ds) = check_request(lake, req)?;
    let ix = &ds.index;
    let mut targets = Vec::new();
    let mut missing = Vec::new();
    let ztf = |h: astroflight_index::ZtfHit| Target {
        ids: AlertIds::Ztf {
            object_id: h.object_id,
            candid: h.candid,
        },
        location: h.location,
    };
    match &req.selector {
        Selector::Objects { object_ids, all } => {
            for oid in object_ids {
                let mut hits = ix.object_alerts(oid)?;
                if hits.is_empty() {
                    missing.push(oid.clone());
                } else if *all {
                    targets.extend(hits.into_iter().map(ztf));
                } else {
                    targets.extend(hits.pop().map(ztf));
                }
            }
            if !missing.is_empty() {
                return Err(not_found("objectId", &ds.name, &missing));
            }
        }
        Selector::Candids { candids, object_id } => {
            for c in candids {
                match ix.candid(*c)? {
                    Some(h) => {
                        if let Some(oid) = object_id {
                            if &h.object_id != oid {
                                return Err(Error::NotFound(format!(
                                    "objectId {oid} has no alert with candid {c} in dataset {:?} (that candid belongs to {})",
                                    ds.name, h.object_id
                                )));
                            }
                        }
                        targets.push(ztf(h));
                    }
                    None => missing.push(c.to_string()),
                }
            }
            if !missing.is_empty() {
                return Err(not_found("candid", &ds.name, &missing));
            }
        }
        Selector::DiaSources { ids } => {
            for id in ids {
                match ix.dia_source(*id)? {
                    Some(h) => targets.push(Target {
                        ids: AlertIds::Lsst {
                            dia_source_id: h.dia_source_id,
                            dia_object_id: h.dia_object_id,
                        },
                        location: h.location,
                    }),
                    None => missing.push(id.to_string()),
                }
            }
            if !missing.is_empty() {
                return Err(not_found("diaSourceId", &ds.name, &missing));
            }
        }
    }
    targets.sort_by_key(|t| t.location);
    targets.dedup_by_key(|t| t.location);
    Ok(CutoutPlan {
        dataset: ds,
        dataset_no,
        kinds: req.kind.expand(),
        format: req.format,
        targets,
    })
}

/// Stream the plan's stamps. Nothing is read until the stream is polled, and each group is
/// opened only when the previous one is done, so a slow client slows the reads.
pub fn execute(lake: Arc<Lake>, plan: CutoutPlan, request_io: Arc<IoStats>) -> BoxStream<'static, Result<RecordBatch>> {
    let plan = Arc::new(plan);
    let mut groups: Vec<Vec<Target>> = Vec::new();
    for t in &plan.targets {
        match groups.last_mut() {
            Some(g)
                if g[0].location.file_id == t.location.file_id && g[0].location.row_group == t.location.row_group =>
            {
                g.push(t.clone())
            }
            _ => groups.push(vec![t.clone()]),
        }
    }
    stream::iter(groups)
        .then(move |g| {
            let (lake, plan, io) = (lake.clone(), plan.clone(), request_io.clone());
            async move { read_group(lake, plan, io, g).await }
        })
        .try_flatten()
        .boxed()
}

fn stamp_leaf(kind: SurveyKind, stamp: StampKind) -> String {
    match kind {
        SurveyKind::Ztf => format!("cutout{}.stampData", stamp.name()),
        SurveyKind::Lsst => format!("cutout{}", stamp.name()),
    }
}

async fn read_group(
    lake: Arc<Lake>,
    plan: Arc<CutoutPlan>,
    io: Arc<IoStats>,
    targets: Vec<Target>,
) -> Result<BoxStream<'static, Result<RecordBatch>>> {
    let ds = &plan.dataset;
    let loc = targets[0].location;
    let ix = ds.index.clone();
    // One sled point read: microseconds, done inline.
    let entry = ix.file(loc.file_id)?.ok_or_else(|| {
        Error::Unavailable(format!(
            "a file of dataset {:?} was dropped from the index during the request; retry",
            ds.name
        ))
    })?;
    let store = lake.store_for(ds, &io);
    let arrow_md = lake.footer(plan.dataset_no, store.clone(), &entry).await?;
    let md = arrow_md.metadata().clone();
    let what = format!("file {} of dataset {:?}", entry.path, ds.name);

    let schema = md.file_metadata().schema_descr();
    let leaf = |name: &str| {
        (0..schema.num_columns())
            .find(|&i| schema.column(i).path().string() == name)
            .ok_or_else(|| Error::DataLoss(format!("{what} has no column {name}")))
    };
    let id_leaf = match ds.kind {
        SurveyKind::Ztf => "candid",
        SurveyKind::Lsst => "diaSource.diaSourceId",
    };
    // One projection per stamp column (the first also carries the id column): each becomes its
    // own parquet stream, so the pages of several stamp kinds are read and decompressed in
    // parallel.
    let mut projections = Vec::new();
    for (i, k) in plan.kinds.iter().enumerate() {
        let stamp = leaf(&stamp_leaf(ds.kind, *k))?;
        projections.push(if i == 0 {
            vec![leaf(id_leaf)?, stamp]
        } else {
            vec![stamp]
        });
    }

    let rg = loc.row_group as usize;
    let rg_rows = md
        .row_groups()
        .get(rg)
        .ok_or_else(|| {
            Error::DataLoss(format!(
                "{what} has no row group {rg} (the index is stale: re-run `astroflight index`)"
            ))
        })?
        .num_rows() as usize;
    let mut selectors = Vec::new();
    let mut at = 0usize;
    for t in &targets {
        let r = t.location.row as usize;
        if r >= rg_rows {
            return Err(Error::DataLoss(format!(
                "{what}: row {r} is past the end of row group {rg} (the index is stale)"
            )));
        }
        if r > at {
            selectors.push(RowSelector::skip(r - at));
        }
        selectors.push(RowSelector::select(1));
        at = r + 1;
    }
    let selection = RowSelection::from(selectors);

    let path = Path::from(entry.path.as_str());
    let mut parts = Vec::with_capacity(projections.len());
    for leaves in projections {
        let reader = StoreReader::new(store.clone(), path.clone(), entry.size).with_metadata(md.clone());
        let what = what.clone();
        let stream = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, arrow_md.clone())
            .with_row_groups(vec![rg])
            .with_row_selection(selection.clone())
            .with_projection(ProjectionMask::leaves(schema, leaves))
            .with_batch_size(BATCH_ROWS)
            .build()
            .map_err(|e| Error::parquet(&what, e))?
            .map_err(move |e| Error::parquet(&what, e));
        parts.push(stream.boxed());
    }
    // Everything from here runs on the CPU runtime: the parquet streams (page decompression
    // and decoding happen inside their polls), the zip, and the stamp conversion. The gRPC side
    // receives finished batches through a one-batch channel, so the work stays at most one batch
    // ahead of the client and stops when the client goes away (the send fails).
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<RecordBatch>>(1);
    lake.cpu.handle().spawn(async move {
        let mut stream = zip_columns(parts);
        let mut offset = 0usize;
        while let Some(raw) = stream.next().await {
            let out = raw.and_then(|raw| {
                let range = offset..offset + raw.num_rows();
                offset = range.end;
                match targets.get(range.clone()) {
                    Some(batch_targets) => convert(&plan, batch_targets, &raw, &what),
                    None => Err(Error::Internal(format!(
                        "{what}: the reader returned rows {range:?} of {}",
                        targets.len()
                    ))),
                }
            });
            let failed = out.is_err();
            if tx.send(out).await.is_err() || failed {
                break;
            }
        }
    });
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
}

/// Zip column streams over the same rows into batches holding all their columns. Each stream
/// runs on its own task of the current (CPU) runtime, behind a one-batch channel: the stamp
/// columns of a multi-kind ticket are read and decompressed in parallel, and the next batch is
/// decoded while this one is converted. The tasks stay one batch ahead and stop when the zipped
/// stream is dropped.
fn zip_columns(parts: Vec<BoxStream<'static, Result<RecordBatch>>>) -> BoxStream<'static, Result<RecordBatch>> {
    let receivers: Vec<tokio::sync::mpsc::Receiver<Result<RecordBatch>>> = parts
        .into_iter()
        .map(|mut part| {
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            tokio::spawn(async move {
                while let Some(b) = part.next().await {
                    let failed = b.is_err();
                    if tx.send(b).await.is_err() || failed {
                        break;
                    }
                }
            });
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

/// Turn a batch of lake rows (id column, then one stamp column per kind) into output rows.
fn convert(plan: &CutoutPlan, targets: &[Target], raw: &RecordBatch, what: &str) -> Result<RecordBatch> {
    if targets.len() != raw.num_rows() {
        return Err(Error::Internal(format!(
            "{what}: read {} rows for {} alerts",
            raw.num_rows(),
            targets.len()
        )));
    }
    // The projected batch holds the id column (nested for Rubin), then the stamp columns.
    let kind = plan.dataset.kind;
    let id_col = match kind {
        SurveyKind::Ztf => raw.column_by_name("candid").cloned(),
        SurveyKind::Lsst => raw
            .column_by_name("diaSource")
            .and_then(|c| c.as_struct_opt())
            .and_then(|s| s.column_by_name("diaSourceId").cloned()),
    }
    .ok_or_else(|| Error::DataLoss(format!("{what}: id column missing")))?;
    let id_col = arrow::compute::cast(&id_col, &DataType::Int64)
        .map_err(|e| Error::DataLoss(format!("{what}: id column: {e}")))?;
    let ids = id_col.as_primitive::<Int64Type>();
    for (i, t) in targets.iter().enumerate() {
        if ids.is_null(i) || ids.value(i) != t.ids.row_id() {
            return Err(Error::DataLoss(format!(
                "{what} no longer matches the index (row {} of row group {} should hold id {}): re-run `astroflight index`",
                t.location.row,
                t.location.row_group,
                t.ids.row_id()
            )));
        }
    }
    let stamps: Vec<BinaryArray> = plan
        .kinds
        .iter()
        .map(|k| {
            let col = match kind {
                SurveyKind::Ztf => raw
                    .column_by_name(&format!("cutout{}", k.name()))
                    .and_then(|c| c.as_struct_opt())
                    .and_then(|s| s.column_by_name("stampData").cloned()),
                SurveyKind::Lsst => raw.column_by_name(&format!("cutout{}", k.name())).cloned(),
            }
            .ok_or_else(|| Error::DataLoss(format!("{what}: stamp column cutout{} missing", k.name())))?;
            let col = arrow::compute::cast(&col, &DataType::Binary)
                .map_err(|e| Error::DataLoss(format!("{what}: cutout{}: {e}", k.name())))?;
            Ok(col.as_binary::<i32>().clone())
        })
        .collect::<Result<_>>()?;

    let n = targets.len() * plan.kinds.len();
    let mut ids_a = StringBuilder::with_capacity(n, n * 12);
    let mut ids_b = Int64Builder::with_capacity(n);
    let mut ids_c = Int64Builder::with_capacity(n);
    let mut kinds = StringBuilder::with_capacity(n, n * 10);
    let mut stamp_out = BinaryBuilder::with_capacity(n, n * 20_000);
    let mut pixels = ListBuilder::with_capacity(Float32Builder::with_capacity(n * 63 * 63), n)
        .with_field(Arc::new(Field::new_list_field(DataType::Float32, false)));
    let mut width = Int32Builder::with_capacity(n);
    let mut height = Int32Builder::with_capacity(n);

    for (i, t) in targets.iter().enumerate() {
        for (k, stamp) in plan.kinds.iter().zip(&stamps) {
            match &t.ids {
                AlertIds::Ztf { object_id, candid } => {
                    ids_a.append_value(object_id);
                    ids_b.append_value(*candid);
                }
                AlertIds::Lsst {
                    dia_source_id,
                    dia_object_id,
                } => {
                    ids_b.append_value(*dia_source_id);
                    ids_c.append_value(*dia_object_id);
                }
            }
            kinds.append_value(k.name());
            let bytes = (!stamp.is_null(i)).then(|| stamp.value(i));
            let bad = |e: fits::FitsError| {
                Error::DataLoss(format!(
                    "{what}: the {} stamp of alert {} is not a valid FITS image: {e}",
                    k.name(),
                    t.ids.row_id()
                ))
            };
            match (plan.format, bytes) {
                (StampFormat::Gzip, b) => stamp_out.append_option(b),
                (StampFormat::Fits, Some(b)) => stamp_out.append_value(fits::maybe_gunzip(b).map_err(bad)?),
                (StampFormat::Fits, None) => stamp_out.append_null(),
                (StampFormat::Array, Some(b)) => {
                    let img = fits::decode_image(b).map_err(bad)?;
                    pixels.values().append_slice(&img.pixels);
                    pixels.append(true);
                    width.append_value(img.width as i32);
                    height.append_value(img.height as i32);
                }
                (StampFormat::Array, None) => {
                    pixels.append(false);
                    width.append_null();
                    height.append_null();
                }
            }
        }
    }
    let mut cols: Vec<ArrayRef> = match kind {
        SurveyKind::Ztf => vec![Arc::new(ids_a.finish()), Arc::new(ids_b.finish())],
        SurveyKind::Lsst => vec![Arc::new(ids_b.finish()), Arc::new(ids_c.finish())],
    };
    cols.push(Arc::new(kinds.finish()));
    match plan.format {
        StampFormat::Fits | StampFormat::Gzip => cols.push(Arc::new(stamp_out.finish())),
        StampFormat::Array => {
            cols.push(Arc::new(pixels.finish()));
            cols.push(Arc::new(width.finish()));
            cols.push(Arc::new(height.finish()));
        }
    }
    RecordBatch::try_new(plan.schema(), cols).map_err(|e| Error::Internal(format!("building the result batch: {e}")))
}
