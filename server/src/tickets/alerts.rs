//! Alert batches: every alert of a dataset that matches nights, classes and SQL conditions,
//! in a content preset, split into endpoints that clients pull in parallel.
//!
//! ```text
//!  AlertsQuery ─> catalog: files whose per-night/per-class counts match (no file is opened)
//!     ─> one footer (the schema; the where clause is type-checked against it; bytes per row)
//!     ─> units: whole files, or single row groups of files larger than an endpoint
//!     ─> [exact or limit] count each unit, reading only the condition's columns
//!     ─> endpoints of ~endpoint_bytes, each an AlertsPart ticket naming its files, versions,
//!        row groups, the output schema and (when counted) its rows and limit
//!  AlertsPart ─> scan each file in order (crate::scan), under one running limit
//! ```
//!
//! The estimate (`total_records` when not exact) counts the alerts of the matching nights and
//! classes: an upper bound of the result when there is a `where`.

use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use arrow::ipc::CompressionType;
use arrow_schema::{Schema, SchemaRef};
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use parquet::arrow::arrow_reader::ArrowReaderMetadata;
use serde_json::json;

use astroflight_index::{FileEntry, SurveyKind};
use astroflight_proto::alerts::night_name;
use astroflight_proto::{AlertsPartRequest, AlertsRequest, Annotation, Compression, PartFile, TimeRange};

use crate::error::{quoted, Error, Result};
use crate::lake::{Dataset, Lake};
use crate::scan::{self, expr, FileFilter, FileScan, Mode, ScanCtx, ScanSpec};
use crate::storage::IoStats;
use crate::tickets::{decode_schema, encode_schema, Planned};

const DAY_MS: f64 = 86_400_000.0;

/// Files counted at once by `exact` and `limit` plans.
const COUNT_CONCURRENCY: usize = 4;

/// One unit of work: a file, or some of its row groups.
#[derive(Debug, Clone)]
struct Unit {
    file: PartFile,
    /// Estimated matching rows (an upper bound with a `where`), then the exact count when counted.
    rows: u64,
    counted: bool,
    /// Rows to take (a plan with a limit takes fewer from its last unit).
    take: Option<u64>,
}

/// One endpoint.
#[derive(Debug, Clone)]
pub struct Part {
    pub files: Vec<PartFile>,
    pub limit: Option<u64>,
    pub rows: Option<u64>,
    pub est_bytes: u64,
    pub est_rows: u64,
}

pub struct AlertsPlan {
    lake: Arc<Lake>,
    ds: Arc<Dataset>,
    request: AlertsRequest,
    spec: Arc<ScanSpec>,
    schema_ipc: Vec<u8>,
    parts: Vec<Part>,
    /// The limit of the whole stream (a one-shot query's own, or a part's).
    limit: Option<u64>,
    /// Exact rows of the whole stream, when counted.
    rows: Option<u64>,
    est_rows: u64,
    est_bytes: u64,
    /// A single part from an endpoint ticket (its own ticket is the command).
    command: Option<Vec<u8>>,
}

impl Planned for AlertsPlan {
    fn bulk(&self) -> bool {
        true
    }
    fn dataset(&self) -> &str {
        &self.ds.name
    }
    fn schema(&self) -> SchemaRef {
        self.spec.schema.clone()
    }
    fn rows(&self) -> Option<u64> {
        self.rows
    }
    fn estimated_rows(&self) -> i64 {
        self.rows.unwrap_or(self.est_rows) as i64
    }
    fn alerts(&self) -> usize {
        self.rows.unwrap_or(self.est_rows) as usize
    }
    fn estimated_bytes(&self) -> u64 {
        self.est_bytes
    }
    fn limited(&self) -> bool {
        // Batches stream with backpressure, in endpoints of bounded size; the per-ticket
        // limits guard id-resolved kinds.
        false
    }
    fn endpoint_tickets(&self) -> Vec<Vec<u8>> {
        if let Some(c) = &self.command {
            return vec![c.clone()];
        }
        let count = self.parts.len() as u32;
        self.parts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                AlertsPartRequest {
                    request: self.request.clone(),
                    files: p.files.clone(),
                    limit: p.limit,
                    index: i as u32,
                    count,
                    schema: self.schema_ipc.clone(),
                    rows: p.rows,
                }
                .encode()
            })
            .collect()
    }
    fn app_metadata(&self) -> Option<serde_json::Value> {
        Some(json!({
            "exact": self.rows.is_some(),
            "estimated_records": self.est_rows,
            "records_are_upper_bound": self.rows.is_none() && !self.request.conditions.is_empty(),
            "endpoints": self.parts.len(),
            "files": self.parts.iter().map(|p| p.files.len()).sum::<usize>(),
            "content": self.request.content.name(),
        }))
    }
    fn compression(&self) -> Option<CompressionType> {
        match self.request.compression {
            Compression::None => None,
            Compression::Lz4 => Some(CompressionType::LZ4_FRAME),
            Compression::Zstd => Some(CompressionType::ZSTD),
        }
    }
    fn execute(self: Arc<Self>, io: Arc<IoStats>) -> BoxStream<'static, Result<RecordBatch>> {
        execute(self, io)
    }
}

/// The time windows of a request in the dataset's time unit.
fn time_windows(kind: SurveyKind, window: &Option<Vec<TimeRange>>) -> Option<Vec<(f64, f64)>> {
    let epoch = kind.time_epoch();
    let t = |ms: i64| match ms {
        i64::MIN => f64::NEG_INFINITY,
        i64::MAX => f64::INFINITY,
        ms => epoch + ms as f64 / DAY_MS,
    };
    window
        .as_ref()
        .map(|w| w.iter().map(|r| (t(r.start_ms), t(r.end_ms))).collect())
}

/// The row filter every file of a request gets (time and class are always checked on the
/// rows: a part is self-contained, and checking the alert time costs one 8-byte column).
fn file_filter(ds: &Dataset, req: &AlertsRequest) -> FileFilter {
    FileFilter {
        time: time_windows(ds.kind, &req.window),
        classes: (!req.classes.is_empty()).then(|| req.classes.clone()),
    }
}

/// Does a night (day number) overlap the request's window?
fn night_in(window: &Option<Vec<TimeRange>>, night: Option<i32>) -> bool {
    match (window, night) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(w), Some(d)) => {
            let r = TimeRange::night(d);
            w.iter().any(|x| x.start_ms < r.end_ms && r.start_ms < x.end_ms)
        }
    }
}

/// The night of a Hive-partitioned path (`year=2019/month=09/day=03/...`).
pub fn hive_night(path: &str) -> Option<i32> {
    let (mut y, mut m, mut d) = (None, None, None);
    for part in path.split('/') {
        if let Some((k, v)) = part.split_once('=') {
            match k {
                "year" => y = v.parse::<i64>().ok(),
                "month" => m = v.parse::<u32>().ok(),
                "day" => d = v.parse::<u32>().ok(),
                _ => {}
            }
        }
    }
    astroflight_proto::alerts::parse_night(&format!("{:04}-{:02}-{:02}", y?, m?, d?))
}

/// Estimated matching rows of a file from the catalog (upper bound: conditions not applied).
fn estimate(ds: &Dataset, e: &FileEntry, req: &AlertsRequest) -> u64 {
    let class_key = ds.class_sql.as_deref().unwrap_or("");
    match &e.stats {
        Some(st) if st.class_key == class_key || req.classes.is_empty() => st
            .counts
            .iter()
            .filter(|c| night_in(&req.window, c.night))
            .filter(|c| req.classes.is_empty() || c.class.as_ref().is_some_and(|k| req.classes.contains(k)))
            .map(|c| c.rows)
            .sum(),
        _ => match (&req.window, hive_night(&e.path)) {
            (Some(_), Some(n)) if !night_in(&req.window, Some(n)) => 0,
            _ => e.rows(),
        },
    }
}

fn part_file(e: &FileEntry, row_groups: Vec<u32>) -> PartFile {
    PartFile {
        path: e.path.clone(),
        size: e.size,
        e_tag: e.e_tag.clone(),
        last_modified_ms: e.last_modified_ms,
        row_groups,
        metadata_len: e.metadata_len,
    }
}

fn check_dataset(lake: &Lake, req: &AlertsRequest) -> Result<Arc<Dataset>> {
    let ds = lake.dataset(&req.dataset)?.clone();
    if ds.class_sql.is_none() && (!req.classes.is_empty() || req.annotate.contains(&Annotation::Class)) {
        return Err(Error::InvalidArgument(format!(
            "dataset {:?} has no class (set `class` in its configuration to a column or SQL expression)",
            ds.name
        )));
    }
    Ok(ds)
}

/// The scan spec of a request, shaping its output to `schema`.
fn scan_spec(ds: &Dataset, req: &AlertsRequest, schema: SchemaRef) -> ScanSpec {
    ScanSpec {
        kind: ds.kind,
        columns: scan::preset_columns(ds.kind, req.content, &req.columns),
        stamps: req.stamps,
        annotate: req.annotate.clone(),
        where_sql: req.where_sql(),
        class_sql: ds.class_sql.clone(),
        schema,
    }
}

/// The scan spec of a request with the schema from `sample`'s footer (checks the columns and
/// type-checks the conditions against it), and that footer.
async fn spec_from_sample(
    lake: &Arc<Lake>,
    ds: &Arc<Dataset>,
    req: &AlertsRequest,
    sample: &PartFile,
) -> Result<(ScanSpec, ArrowReaderMetadata)> {
    let mut spec = scan_spec(ds, req, Arc::new(Schema::empty()));
    let md = scan::footer(lake, ds, &lake.io, sample).await?;
    spec.schema = scan::output_schema(&spec, &md)?;
    // Type-check the whole condition (where, and the class filter) on the file's schema.
    if let Some(sql) = spec.condition_sql(&file_filter(ds, req)) {
        let e = lake.engine.parse(&sql, md.schema(), "where")?;
        let needed: Vec<String> = expr::column_paths(&e).into_iter().collect();
        scan::leaves_of(md.metadata().file_metadata().schema_descr(), &needed)
            .map_err(|p| Error::InvalidArgument(format!("where: no column {}", quoted(&p))))?;
        lake.engine.compile_condition(&e, md.schema(), "where")?;
    }
    Ok((spec, md))
}

/// Plan a query. `for_info`: GetFlightInfo (count when `exact` or `limit` asks; many
/// endpoints); otherwise a one-shot DoGet (one stream, the limit applied while streaming).
pub async fn plan(lake: &Arc<Lake>, req: AlertsRequest, for_info: bool, io: &Arc<IoStats>) -> Result<AlertsPlan> {
    let ds = check_dataset(lake, &req)?;
    let index = ds.index.clone();
    let mut entries = tokio::task::spawn_blocking(move || index.catalog().files())
        .await
        .map_err(|e| Error::Internal(e.to_string()))??;
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    let Some(first) = entries.first() else {
        return Err(if ds.build.first_build_pending() {
            Error::Unavailable(format!("dataset {:?} is still being indexed; retry shortly", ds.name))
        } else {
            Error::NotFound(format!("dataset {:?} has no files", ds.name))
        });
    };
    let candidates: Vec<(FileEntry, u64)> = entries
        .iter()
        .map(|e| (e.clone(), estimate(&ds, e, &req)))
        .filter(|(_, n)| *n > 0)
        .collect();
    let sample = part_file(candidates.first().map(|c| &c.0).unwrap_or(first), Vec::new());
    let (spec, sample_md) = spec_from_sample(lake, &ds, &req, &sample).await?;
    let spec = Arc::new(spec);
    let ctx = ScanCtx {
        lake: lake.clone(),
        ds: ds.clone(),
        io: io.clone(),
        spec: spec.clone(),
    };
    let per_row = scan::bytes_per_row(
        sample_md.metadata(),
        &scan::estimate_leaves(&spec, sample_md.metadata()),
    );
    let bytes_of = |rows: u64| (rows as f64 * per_row) as u64;
    let target = lake.endpoint_bytes;

    // Units: whole files, or single row groups of files estimated past one endpoint.
    let mut units = Vec::new();
    for (e, est) in &candidates {
        let rgs = e.row_groups.len();
        if bytes_of(*est) > target && rgs > 1 {
            let total = e.rows().max(1);
            for (i, n) in e.row_groups.iter().enumerate() {
                units.push(Unit {
                    file: part_file(e, vec![i as u32]),
                    rows: (est * n).div_ceil(total),
                    counted: false,
                    take: None,
                });
            }
        } else {
            units.push(Unit {
                file: part_file(e, (0..rgs as u32).collect()),
                rows: *est,
                counted: false,
                take: None,
            });
        }
    }

    let filter = file_filter(&ds, &req);
    let count = for_info && (req.exact || req.limit.is_some());
    if count {
        let mut remaining = req.limit;
        let mut counted = Vec::with_capacity(units.len());
        // Counting reads and evaluates the condition: bulk work, on the bulk runtime (cancelled
        // when the caller stops waiting).
        let mut counts = stream::iter(units.into_iter().map(|u| {
            let (ctx, filter) = (ctx.clone(), filter.clone());
            async move {
                let bulk = ctx.lake.clone();
                let file = u.file.clone();
                let n = crate::runtime::on_runtime(&bulk.bulk, count_unit(ctx, file, filter)).await??;
                Ok::<_, Error>((u, n))
            }
        }))
        .buffered(COUNT_CONCURRENCY);
        while let Some(r) = counts.next().await {
            let (mut u, n) = r?;
            u.rows = n;
            u.counted = true;
            if let Some(left) = remaining.as_mut() {
                u.take = Some(n.min(*left));
                *left -= n.min(*left);
            }
            if u.take.unwrap_or(n) > 0 {
                counted.push(u);
            }
            if remaining == Some(0) {
                break;
            }
        }
        units = counted;
    }

    // Endpoints of about `endpoint_bytes` each.
    let mut parts: Vec<Part> = Vec::new();
    let mut cur: Option<Part> = None;
    for u in units {
        let rows = u.take.unwrap_or(u.rows);
        let b = bytes_of(rows);
        if let Some(p) = &cur {
            if p.est_bytes + b > target && !p.files.is_empty() {
                parts.push(cur.take().expect("some"));
            }
        }
        let p = cur.get_or_insert(Part {
            files: Vec::new(),
            limit: None,
            rows: Some(0),
            est_bytes: 0,
            est_rows: 0,
        });
        // Units of one file that follow each other in one part merge back into one file entry.
        match p.files.last_mut() {
            Some(last) if last.path == u.file.path && last.size == u.file.size => {
                last.row_groups.extend(u.file.row_groups.iter().copied())
            }
            _ => p.files.push(u.file.clone()),
        }
        p.est_bytes += b;
        p.est_rows += rows;
        p.rows = match (p.rows, u.counted) {
            (Some(r), true) => Some(r + rows),
            _ => None,
        };
        if u.take.is_some() {
            p.limit = Some(p.limit.unwrap_or(0) + rows);
        }
    }
    if let Some(p) = cur {
        parts.push(p);
    }
    // Not counted: no part knows its rows. A one-shot query's own limit bounds the stream.
    let exact_rows = if count {
        Some(parts.iter().map(|p| p.rows.unwrap_or(0)).sum())
    } else {
        for p in &mut parts {
            p.rows = None;
        }
        None
    };
    let est_rows = match exact_rows {
        Some(r) => r,
        None => {
            let n: u64 = parts.iter().map(|p| p.est_rows).sum();
            req.limit.map_or(n, |l| n.min(l))
        }
    };
    let limit = if for_info { None } else { req.limit };
    Ok(AlertsPlan {
        schema_ipc: encode_schema(&spec.schema)?,
        est_bytes: bytes_of(est_rows),
        lake: lake.clone(),
        ds,
        request: req,
        spec,
        parts,
        limit,
        rows: exact_rows,
        est_rows,
        command: None,
    })
}

/// Count the matching rows of a unit, reading only the condition's columns.
async fn count_unit(ctx: ScanCtx, file: PartFile, filter: FileFilter) -> Result<u64> {
    let s = scan::scan_file(ctx, FileScan { file, filter }, None, Mode::Count).await?;
    s.try_fold(0u64, |n, b| futures::future::ready(Ok(n + b.num_rows() as u64)))
        .await
}

/// The plan of one endpoint ticket: nothing to look up, everything is in the ticket.
pub fn plan_part(lake: &Arc<Lake>, part: AlertsPartRequest, command: &[u8]) -> Result<AlertsPlan> {
    let ds = check_dataset(lake, &part.request)?;
    let schema = decode_schema(&part.schema)?;
    let req = part.request;
    let spec = Arc::new(scan_spec(&ds, &req, schema));
    let est_rows = part.rows.or(part.limit).unwrap_or(0);
    Ok(AlertsPlan {
        schema_ipc: part.schema,
        lake: lake.clone(),
        ds,
        spec,
        parts: vec![Part {
            files: part.files,
            limit: part.limit,
            rows: part.rows,
            est_bytes: 0,
            est_rows,
        }],
        limit: part.limit,
        rows: part.rows,
        est_rows,
        est_bytes: 0,
        request: req,
        command: Some(command.to_vec()),
    })
}

/// Stream the plan's parts, file after file, under one running limit. Each file is opened
/// only when the previous one is done, so a slow client slows the reads.
fn execute(plan: Arc<AlertsPlan>, io: Arc<IoStats>) -> BoxStream<'static, Result<RecordBatch>> {
    let ctx = ScanCtx {
        lake: plan.lake.clone(),
        ds: plan.ds.clone(),
        io,
        spec: plan.spec.clone(),
    };
    let filter = file_filter(&plan.ds, &plan.request);
    let files: Vec<PartFile> = plan.parts.iter().flat_map(|p| p.files.iter().cloned()).collect();
    let remaining = Arc::new(Mutex::new(plan.limit));
    let lake = plan.lake.clone();
    let inner = stream::iter(files)
        .then(move |file| {
            let (ctx, filter, remaining) = (ctx.clone(), filter.clone(), remaining.clone());
            async move {
                let left = *remaining.lock().expect("limit lock");
                if left == Some(0) {
                    return Ok(stream::empty().boxed());
                }
                let s = scan::scan_file(ctx, FileScan { file, filter }, left, Mode::Output).await?;
                Ok::<_, Error>(
                    s.map_ok(move |b| {
                        if let Some(l) = remaining.lock().expect("limit lock").as_mut() {
                            *l = l.saturating_sub(b.num_rows() as u64);
                        }
                        b
                    })
                    .boxed(),
                )
            }
        })
        .try_flatten()
        .boxed();
    crate::runtime::on_cpu_stream(&lake.bulk, inner)
}

/// The `classes` action: alerts per night and class of a dataset, from the catalog.
pub fn classes_action(lake: &Lake, dataset: &str) -> Result<serde_json::Value> {
    let ds = lake.dataset(dataset)?;
    let class_key = ds.class_sql.clone().unwrap_or_default();
    let mut counts: std::collections::BTreeMap<(Option<i32>, Option<String>), u64> = Default::default();
    let mut unknown_files = 0usize;
    for e in ds.index.catalog().files()? {
        match &e.stats {
            Some(st) if st.class_key == class_key => {
                for c in &st.counts {
                    *counts.entry((c.night, c.class.clone())).or_default() += c.rows;
                }
            }
            _ => unknown_files += 1,
        }
    }
    let rows: Vec<serde_json::Value> = counts
        .into_iter()
        .map(|((night, class), n)| json!({"night": night.map(night_name), "class": class, "alerts": n}))
        .collect();
    Ok(json!({
        "dataset": ds.name,
        "class": ds.class_sql,
        "counts": rows,
        "files_not_counted": unknown_files,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hive_nights() {
        assert_eq!(
            hive_night("science/year=2019/month=09/day=03/part-0.parquet").map(night_name),
            Some("2019-09-03".to_string())
        );
        assert_eq!(
            hive_night("year=2019/month=9/day=3/x.parquet").map(night_name),
            Some("2019-09-03".into())
        );
        assert_eq!(hive_night("online/20200101/x.parquet"), None);
    }

    #[test]
    fn windows_in_time_units() {
        let w = Some(vec![TimeRange::night(18142)]);
        let t = time_windows(SurveyKind::Ztf, &w).unwrap();
        assert_eq!(t, vec![(2440587.5 + 18142.0, 2440587.5 + 18143.0)]);
        assert!(night_in(&w, Some(18142)) && !night_in(&w, Some(18143)) && !night_in(&w, None));
        let open = Some(vec![TimeRange {
            start_ms: i64::MIN,
            end_ms: 0,
        }]);
        assert_eq!(time_windows(SurveyKind::Lsst, &open).unwrap()[0].0, f64::NEG_INFINITY);
    }

    #[test]
    fn schemas_travel_in_tickets() {
        let s = Schema::new(vec![arrow_schema::Field::new("a", arrow_schema::DataType::Int64, true)]);
        assert_eq!(*decode_schema(&encode_schema(&s).unwrap()).unwrap(), s);
        assert!(decode_schema(b"garbage").is_err());
    }
}
