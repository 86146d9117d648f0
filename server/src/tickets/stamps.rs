//! The stamps of alerts named by id, below the ticket kinds that serve them (the `cutout`
//! ticket, and the `headers` ticket of alert stamps, which parses their headers): resolve ids
//! through the index, read only the pages that hold the rows (through [`crate::read`]), and
//! stream the stamps as Arrow batches in the cutout schema.
//!
//! ```text
//!  ticket ─> plan (index lookups; spawn_blocking past a few ids; limits) ─> targets grouped by
//!        (file, row group) ─> read::read_rows (id and stamp leaves, id-checked, CPU runtime)
//!        ─> per batch: gunzip / decode FITS ─> output batch
//! ```
//!
//! Every id is resolved before the first byte is sent: an unknown id fails the whole request
//! with NOT_FOUND instead of a partial answer. Rows come grouped by file (in file and row
//! order), one row per (alert, stamp kind); the id columns say which is which.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BinaryBuilder, Float32Builder, Int32Builder, Int64Builder, ListBuilder,
    RecordBatch, StringBuilder,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};

use astroflight_fits as fits;
use astroflight_index::{Location, SurveyKind};
use astroflight_proto::{CutoutRequest, Selector, StampFormat, StampKind};

use crate::error::{quoted, Error, Result};
use crate::lake::{Dataset, Lake};
use crate::read::{self, column_at, ReadCtx, RowsAt};
use crate::storage::IoStats;
use crate::tickets::too_many_alerts;

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
    pub lake: Arc<Lake>,
    pub dataset: Arc<Dataset>,
    pub kinds: &'static [StampKind],
    pub format: StampFormat,
    /// With format `array`: the HDU of each stamp decoded.
    pub hdu: u32,
    /// Sorted by location, one per alert.
    pub targets: Vec<Target>,
    pub estimated_bytes: u64,
    /// The command, as the client sent it: the ticket of the plan's one endpoint.
    pub command: Vec<u8>,
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

/// NOT_FOUND naming up to 10 of the missing ids (already quoted where they are strings).
fn not_found(what: &str, ds: &Dataset, missing: &[String]) -> Error {
    let shown: Vec<&str> = missing.iter().take(10).map(String::as_str).collect();
    let more = if missing.len() > 10 {
        format!(" (and {} more)", missing.len() - 10)
    } else {
        String::new()
    };
    let msg = format!(
        "no alert with {what} {}{more} in dataset {:?}",
        shown.join(", "),
        ds.name
    );
    if ds.build.first_build_pending() {
        // The index is still being built since the server started: the id may be in a file
        // not indexed yet, so "not found" would be a guess.
        return Error::Unavailable(format!(
            "{msg} so far: the dataset is still being indexed since the server started; retry shortly"
        ));
    }
    Error::NotFound(msg)
}

/// Check the request against the dataset's survey without touching the index.
pub fn check_request(lake: &Lake, req: &CutoutRequest) -> Result<Arc<Dataset>> {
    let ds = lake.dataset(&req.dataset)?;
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
        _ => Ok(ds.clone()),
    }
}

/// Plan a request: every id resolved through the index, the limits checked. Lookups of a large
/// request run on the blocking pool.
pub async fn plan(lake: &Arc<Lake>, req: CutoutRequest, command: &[u8]) -> Result<CutoutPlan> {
    let command = command.to_vec();
    // A child span of the request's (traces show the lookups apart from the reads).
    let span = tracing::info_span!("index.lookup", dataset = %req.dataset, ids = req.selector.len() as i64);
    if req.selector.len() <= INLINE_IDS {
        return span.in_scope(|| resolve(lake.clone(), &req, command));
    }
    let lake = lake.clone();
    tokio::task::spawn_blocking(move || span.in_scope(|| resolve(lake, &req, command))).await?
}

/// Resolve every id through the index (blocking).
fn resolve(lake: Arc<Lake>, req: &CutoutRequest, command: Vec<u8>) -> Result<CutoutPlan> {
    let ds = check_request(&lake, req)?;
    let max = lake.limits.max_ticket_alerts;
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
                if *all {
                    let hits = ix.object_alerts(oid)?;
                    if hits.is_empty() {
                        missing.push(quoted(oid));
                    }
                    targets.extend(hits.into_iter().map(ztf));
                } else {
                    match ix.latest_alert(oid)? {
                        Some(h) => targets.push(ztf(h)),
                        None if !ix.object_alerts(oid)?.is_empty() => {
                            return Err(Error::NotFound(format!(
                                "objectId {} has alerts in dataset {:?} but none with a candidate.jd, so none is the latest: ask for all of them (`all`) or by candid",
                                quoted(oid),
                                ds.name
                            )))
                        }
                        None => missing.push(quoted(oid)),
                    }
                }
                // Stop expanding objects as soon as the limit is passed: planning stays cheap.
                if targets.len() > max {
                    return Err(too_many_alerts(targets.len(), max));
                }
            }
            if !missing.is_empty() {
                return Err(not_found("objectId", &ds, &missing));
            }
        }
        Selector::Candids { candids, object_id } => {
            for c in candids {
                match ix.candid(*c)? {
                    Some(h) => {
                        if let Some(oid) = object_id {
                            if &h.object_id != oid {
                                return Err(Error::NotFound(format!(
                                    "objectId {} has no alert with candid {c} in dataset {:?} (that candid belongs to {})",
                                    quoted(oid),
                                    ds.name,
                                    h.object_id
                                )));
                            }
                        }
                        targets.push(ztf(h));
                    }
                    None => missing.push(c.to_string()),
                }
            }
            if !missing.is_empty() {
                return Err(not_found("candid", &ds, &missing));
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
                return Err(not_found("diaSourceId", &ds, &missing));
            }
        }
    }
    targets.sort_by_key(|t| t.location);
    targets.dedup_by_key(|t| t.location);
    let kinds = req.kind.expand();
    let estimated_bytes = estimate_bytes(&ds, &targets, kinds.len())?;
    Ok(CutoutPlan {
        lake,
        dataset: ds,
        kinds,
        format: req.format,
        hdu: req.hdu,
        targets,
        estimated_bytes,
        command,
    })
}

/// The stored bytes of the targets' rows (each file's size over its rows), pro rata of the
/// stamp kinds asked (a row holds three stamps, which are most of its weight).
fn estimate_bytes(ds: &Dataset, targets: &[Target], kinds: usize) -> Result<u64> {
    let mut per_row: HashMap<u64, u64> = HashMap::new();
    let mut total = 0u64;
    for t in targets {
        let f = t.location.file_id;
        let bytes = match per_row.get(&f) {
            Some(b) => *b,
            None => {
                let b = match ds.index.file(f)? {
                    Some(e) => e.size / e.rows().max(1),
                    None => 0,
                };
                per_row.insert(f, b);
                b
            }
        };
        total = total.saturating_add(bytes * kinds as u64 / 3);
    }
    Ok(total)
}

/// Stream the plan's stamps. Nothing is read until the stream is polled, and each group is
/// opened only when the previous one is done, so a slow client slows the reads.
pub fn execute(plan: Arc<CutoutPlan>, io: Arc<IoStats>) -> BoxStream<'static, Result<RecordBatch>> {
    let mut groups: Vec<Range<usize>> = Vec::new();
    for (i, t) in plan.targets.iter().enumerate() {
        match groups.last_mut() {
            Some(g)
                if plan.targets[g.start].location.file_id == t.location.file_id
                    && plan.targets[g.start].location.row_group == t.location.row_group =>
            {
                g.end = i + 1
            }
            _ => groups.push(i..i + 1),
        }
    }
    let ctx = ReadCtx {
        lake: plan.lake.clone(),
        ds: plan.dataset.clone(),
        io,
    };
    stream::iter(groups)
        .then(move |g| {
            let (ctx, plan) = (ctx.clone(), plan.clone());
            async move { read_group(ctx, plan, g).await }
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

fn id_leaf(kind: SurveyKind) -> &'static str {
    match kind {
        SurveyKind::Ztf => "candid",
        SurveyKind::Lsst => "diaSource.diaSourceId",
    }
}

async fn read_group(
    ctx: ReadCtx,
    plan: Arc<CutoutPlan>,
    group: Range<usize>,
) -> Result<BoxStream<'static, Result<RecordBatch>>> {
    let targets = &plan.targets[group.clone()];
    let loc = targets[0].location;
    let kind = plan.dataset.kind;
    let at = RowsAt {
        file_id: loc.file_id,
        row_group: loc.row_group,
        rows: targets.iter().map(|t| t.location.row).collect(),
        ids: targets.iter().map(|t| t.ids.row_id()).collect(),
    };
    // One stream per stamp column: the pages of several stamp kinds are read and decompressed
    // in parallel.
    let columns: Vec<Vec<String>> = plan.kinds.iter().map(|k| vec![stamp_leaf(kind, *k)]).collect();
    let what = format!("dataset {:?}", plan.dataset.name);
    let conv_plan = plan.clone();
    read::read_rows(&ctx, at, id_leaf(kind), &columns, move |raw, range| {
        let batch_targets = &conv_plan.targets[group.start + range.start..group.start + range.end];
        convert(&conv_plan, batch_targets, raw, &what)
    })
    .await
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
    // The read checked every row's id against the index; the stamp columns follow it.
    let kind = plan.dataset.kind;
    let stamps: Vec<BinaryArray> = plan
        .kinds
        .iter()
        .map(|k| {
            let col = column_at(raw, &stamp_leaf(kind, *k))
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
                if let fits::FitsError::NoSuchHdu(..) = e {
                    return Error::InvalidArgument(format!(
                        "`hdu` {}: the {} stamp of alert {}: {e}",
                        plan.hdu,
                        k.name(),
                        t.ids.row_id()
                    ));
                }
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
                    let img = fits::decode_image_hdu(b, plan.hdu as usize).map_err(bad)?;
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
    RecordBatch::try_new(cutout_schema(kind, plan.format), cols)
        .map_err(|e| Error::Internal(format!("building the result batch: {e}")))
}
