//! `astroflight transfer`: pull an alert batch query into a folder of parquet files, endpoint by
//! endpoint, in parallel, resumably.
//!
//! Layout of the output folder `DIR`:
//! - `DIR/year=YYYY/month=MM/day=DD/part-NNNNN.parquet` (`--partition-by time`), or
//!   `DIR/class=<class>/part-NNNNN.parquet` (`--partition-by class`), or `DIR/part-NNNNN.parquet`
//!   (`none`); `NNNNN` is the endpoint's index in the plan, and one endpoint writes at most one
//!   file per folder.
//!
//!   The folders are the Hive layout Fink's transfer client writes
//!   (`pyarrow.parquet.write_to_dataset(partition_cols=["year", "month", "day"])` or
//!   `["finkclass"]`), spelled as pyarrow spells them: zero-padded `month=01`, `day=03` (Fink's
//!   values are the `%Y-%m-%d` parts of the alert's date, as strings), a class percent-encoded
//!   except for `A-Z a-z 0-9 - . _ ~` (`class=EB%2A`), and `__HIVE_DEFAULT_PARTITION__` for a
//!   null. So `pandas.read_parquet(DIR)`, `pyarrow.dataset(DIR, partitioning="hive")` and Spark
//!   give back `year`, `month` and `day` (or `class`) columns. As in Fink's output, the `class`
//!   column is in the folder name only, never also in the files (a reader would see it twice);
//!   the `night` column (a date: the query's `annotate`) stays in the files. Every other column
//!   keeps its Arrow type (the Arrow schema is stored in each file).
//! - `DIR/.astroflight/plan.json`: the plan being pulled (the same format as `--plan-out`).
//! - `DIR/.astroflight/done/NNNNN.json`: the commit record of a finished endpoint.
//!
//! An endpoint is written to hidden temporary files (`.part-NNNNN.parquet.tmp`, which parquet
//! readers skip), synced, committed by writing its record (atomically, by rename), and only then
//! renamed to its final names. A run that stops anywhere leaves either a committed endpoint
//! (whose renames a re-run completes) or temporary files that a re-run deletes and pulls again:
//! never a half-written file under a final name. A re-run of the same command reuses the saved
//! plan, so it skips finished endpoints even if the lake has grown since.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Date32Type, SchemaRef};
use arrow_flight::decode::DecodedPayload;
use arrow_flight::{FlightDescriptor, FlightInfo, Ticket};
use base64::Engine as _;
use futures::{StreamExt, TryStreamExt};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use crate::{Client, ClientError, ConnectOptions};

/// Version of the plan file format.
const PLAN_FORMAT: u32 = 1;
/// A row group is flushed once its encoded size passes this, so that a `full` pull of large
/// alerts holds a bounded amount per open file.
const FLUSH_BYTES: usize = 64 << 20;
const STATE_DIR: &str = ".astroflight";

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{0}")]
    Plan(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Parquet {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TransferError + '_ {
    move |source| TransferError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How the output folder is split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartitionBy {
    /// `year=YYYY/month=MM/day=DD/` of the alert's night (the `night` annotation).
    Time,
    /// `class=<class>/`, one folder per class (the `class` annotation).
    Class,
    /// One folder.
    None,
}

impl PartitionBy {
    /// The annotation column the server must add for this layout.
    pub fn annotation(self) -> Option<&'static str> {
        match self {
            PartitionBy::Time => Some("night"),
            PartitionBy::Class => Some("class"),
            PartitionBy::None => None,
        }
    }

    /// The column that is written in the folder names only (Hive style), not in the files.
    fn folder_only(self) -> Option<&'static str> {
        match self {
            PartitionBy::Class => Some("class"),
            PartitionBy::Time | PartitionBy::None => None,
        }
    }

    /// Where the folder-only column is in `schema`, if it is there.
    fn folder_only_index(self, schema: &arrow::datatypes::Schema) -> Option<usize> {
        self.folder_only().and_then(|c| schema.index_of(c).ok())
    }

    /// The schema of the files: the stream's, less the folder-only column.
    fn file_schema(self, schema: &SchemaRef) -> SchemaRef {
        match self.folder_only_index(schema) {
            Some(i) => {
                let mut fields: Vec<_> = schema.fields().iter().cloned().collect();
                fields.remove(i);
                Arc::new(arrow::datatypes::Schema::new_with_metadata(
                    fields,
                    schema.metadata().clone(),
                ))
            }
            None => schema.clone(),
        }
    }
}

/// One endpoint of a saved plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedEndpoint {
    /// The ticket, base64.
    pub ticket: String,
    /// Where to pull it; empty: from the server that planned it.
    pub locations: Vec<String>,
}

/// A planned transfer: what `--plan-out` writes and `--plan` reads. Self-contained: the tickets
/// name the files and versions they cover, so anyone who can reach the server can pull it later.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransferPlan {
    pub format: u32,
    /// The server that planned it (`grpc://host:port`).
    pub server: String,
    /// The command, `{"alerts": {...}}`.
    pub query: serde_json::Value,
    pub partition_by: PartitionBy,
    /// `total_records` of the plan: exact when `exact` is true, else an estimate (an upper
    /// bound when the query has conditions).
    pub total_records: i64,
    pub total_bytes: i64,
    pub exact: bool,
    /// The output schema (Arrow IPC, base64), for an empty result's file.
    pub schema: String,
    pub endpoints: Vec<PlannedEndpoint>,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

impl TransferPlan {
    /// Plan `query` (`{"alerts": {...}}`) on `server` (GetFlightInfo; reads no data file unless
    /// the query is `exact`). The annotation `partition_by` needs is added to the query.
    pub async fn create(
        server: &str,
        query: serde_json::Value,
        partition_by: PartitionBy,
    ) -> Result<TransferPlan, TransferError> {
        Self::create_with(server, query, partition_by, &ConnectOptions::default()).await
    }

    /// [`TransferPlan::create`] on a server that needs TLS roots or a token (neither is saved
    /// in the plan).
    pub async fn create_with(
        server: &str,
        mut query: serde_json::Value,
        partition_by: PartitionBy,
        connect: &ConnectOptions,
    ) -> Result<TransferPlan, TransferError> {
        let alerts = query
            .get_mut("alerts")
            .and_then(|a| a.as_object_mut())
            .ok_or_else(|| TransferError::Plan("the query must be {\"alerts\": {...}}".into()))?;
        if let Some(a) = partition_by.annotation() {
            let list = alerts.entry("annotate").or_insert_with(|| serde_json::json!([]));
            let arr = list
                .as_array_mut()
                .ok_or_else(|| TransferError::Plan("`annotate` must be a list".into()))?;
            if !arr.iter().any(|v| v == a) {
                arr.push(a.into());
            }
        }
        let cmd = serde_json::to_vec(&query).map_err(|e| TransferError::Plan(e.to_string()))?;
        let mut client = Client::connect_with(server, connect).await?;
        let info = client
            .inner
            .get_flight_info(FlightDescriptor::new_cmd(cmd))
            .await
            .map_err(ClientError::from)?;
        Self::from_info(server, query, partition_by, info)
    }

    fn from_info(
        server: &str,
        query: serde_json::Value,
        partition_by: PartitionBy,
        info: FlightInfo,
    ) -> Result<TransferPlan, TransferError> {
        let meta: serde_json::Value = serde_json::from_slice(&info.app_metadata).unwrap_or_default();
        let endpoints =
            info.endpoint
                .iter()
                .map(|e| {
                    let ticket = e.ticket.as_ref().ok_or_else(|| {
                        TransferError::Plan("the server returned an endpoint without a ticket".into())
                    })?;
                    Ok(PlannedEndpoint {
                        ticket: b64().encode(&ticket.ticket),
                        locations: e.location.iter().map(|l| l.uri.clone()).collect(),
                    })
                })
                .collect::<Result<Vec<_>, TransferError>>()?;
        Ok(TransferPlan {
            format: PLAN_FORMAT,
            server: server.to_string(),
            query,
            partition_by,
            total_records: info.total_records,
            total_bytes: info.total_bytes,
            exact: meta.get("exact").and_then(|v| v.as_bool()).unwrap_or(false),
            schema: b64().encode(&info.schema),
            endpoints,
        })
    }

    pub fn load(path: &Path) -> Result<TransferPlan, TransferError> {
        let text = std::fs::read(path).map_err(io(path))?;
        let plan: TransferPlan = serde_json::from_slice(&text)
            .map_err(|e| TransferError::Plan(format!("{} is not a transfer plan: {e}", path.display())))?;
        if plan.format != PLAN_FORMAT {
            return Err(TransferError::Plan(format!(
                "{} is a plan of format {}; this client reads format {PLAN_FORMAT}",
                path.display(),
                plan.format
            )));
        }
        Ok(plan)
    }

    /// Write atomically (temporary file, then rename).
    pub fn save(&self, path: &Path) -> Result<(), TransferError> {
        let text = serde_json::to_vec_pretty(self).map_err(|e| TransferError::Plan(e.to_string()))?;
        write_atomic(path, &text)
    }

    fn schema_ref(&self) -> Result<SchemaRef, TransferError> {
        let bytes = b64()
            .decode(&self.schema)
            .map_err(|e| TransferError::Plan(format!("the plan's schema is not base64: {e}")))?;
        let info = FlightInfo {
            schema: bytes.into(),
            ..Default::default()
        };
        let schema = info
            .try_decode_schema()
            .map_err(|e| TransferError::Plan(format!("the plan's schema cannot be decoded: {e}")))?;
        Ok(Arc::new(schema))
    }

    /// One line for people: alerts, size and endpoints.
    pub fn describe(&self) -> String {
        let records = if self.exact {
            format!("{} alerts", thousands(self.total_records.max(0) as u64))
        } else if self.query["alerts"]
            .get("where")
            .is_some_and(|w| !w.as_str().unwrap_or("").trim().is_empty())
        {
            format!(
                "at most {} alerts (estimate; --exact counts them)",
                thousands(self.total_records.max(0) as u64)
            )
        } else {
            format!("~{} alerts", thousands(self.total_records.max(0) as u64))
        };
        format!(
            "{records}, ~{} in {} endpoint{}",
            human_bytes(self.total_bytes.max(0) as u64),
            self.endpoints.len(),
            if self.endpoints.len() == 1 { "" } else { "s" }
        )
    }
}

/// Options of a pull.
#[derive(Debug, Clone)]
pub struct PullOptions {
    pub out: PathBuf,
    /// Endpoints pulled at once.
    pub parallel: usize,
    /// Draw a progress bar on stderr (when it is a terminal).
    pub progress: bool,
    /// Pull from this server instead of the plan's (for endpoints without locations).
    pub server: Option<String>,
    /// TLS roots and the bearer token of every pull.
    pub connect: ConnectOptions,
}

/// What a pull did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PullSummary {
    pub endpoints: usize,
    /// Pulled in this run.
    pub pulled: usize,
    /// Finished by an earlier run.
    pub skipped: usize,
    pub failed: usize,
    /// Alerts written by this run.
    pub rows: u64,
    /// Alerts in the folder (every finished endpoint).
    pub total_rows: u64,
    /// Arrow IPC bytes received in this run.
    pub bytes: u64,
    pub seconds: f64,
    /// One message per failed endpoint.
    pub errors: Vec<String>,
}

/// The commit record of a finished endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Done {
    rows: u64,
    bytes: u64,
    /// Final paths, relative to the output folder.
    files: Vec<String>,
}

fn state_dir(out: &Path) -> PathBuf {
    out.join(STATE_DIR)
}

fn done_path(out: &Path, index: usize) -> PathBuf {
    state_dir(out).join("done").join(format!("{index:05}.json"))
}

fn tmp_name(final_name: &str) -> String {
    format!(".{final_name}.tmp")
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TransferError> {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Bring an output folder to a consistent state before a pull: finish the renames of committed
/// endpoints, forget commit records whose files are gone, delete every other temporary file.
/// Returns the finished endpoints.
fn recover(out: &Path, plan: &TransferPlan) -> Result<BTreeMap<usize, Done>, TransferError> {
    let mut done = BTreeMap::new();
    for index in 0..plan.endpoints.len() {
        let p = done_path(out, index);
        let Ok(text) = std::fs::read(&p) else { continue };
        let Ok(record) = serde_json::from_slice::<Done>(&text) else {
            std::fs::remove_file(&p).map_err(io(&p))?;
            continue;
        };
        let mut whole = true;
        for f in &record.files {
            let fin = out.join(f);
            if fin.exists() {
                continue;
            }
            let name = fin.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let tmp = fin.with_file_name(tmp_name(name));
            if tmp.exists() {
                std::fs::rename(&tmp, &fin).map_err(io(&fin))?;
            } else {
                whole = false;
            }
        }
        if whole {
            done.insert(index, record);
        } else {
            // Files of a committed endpoint were deleted by hand: pull it again.
            for f in &record.files {
                let _ = std::fs::remove_file(out.join(f));
            }
            std::fs::remove_file(&p).map_err(io(&p))?;
        }
    }
    remove_temporaries(out)?;
    Ok(done)
}

fn remove_temporaries(dir: &Path) -> Result<(), TransferError> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries {
        let e = e.map_err(io(dir))?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        let path = e.path();
        let ft = e.file_type().map_err(io(&path))?;
        if ft.is_dir() && name != STATE_DIR {
            remove_temporaries(&path)?;
        } else if ft.is_file() && name.starts_with(".part-") && name.ends_with(".tmp") {
            std::fs::remove_file(&path).map_err(io(&path))?;
        }
    }
    Ok(())
}

/// Pull every unfinished endpoint of `plan` into `opts.out`. Needs a multi-threaded tokio runtime
/// (parquet encoding runs in `block_in_place`).
pub async fn pull(plan: &TransferPlan, opts: &PullOptions) -> Result<PullSummary, TransferError> {
    let out = &opts.out;
    std::fs::create_dir_all(state_dir(out).join("done")).map_err(io(out))?;
    // One transfer per folder at a time: a second one would delete the first one's temporary
    // files as leftovers. The lock goes with the process (also when it is killed).
    let lock_path = state_dir(out).join("lock");
    let lock = std::fs::File::create(&lock_path).map_err(io(&lock_path))?;
    if lock.try_lock().is_err() {
        return Err(TransferError::Plan(format!(
            "another transfer is writing into {}; wait for it to end",
            out.display()
        )));
    }
    let saved = state_dir(out).join("plan.json");
    match std::fs::metadata(&saved) {
        Ok(_) => {
            let previous = TransferPlan::load(&saved)?;
            if previous.endpoints != plan.endpoints || previous.partition_by != plan.partition_by {
                return Err(TransferError::Plan(format!(
                    "{} holds a transfer of another plan ({}); pull into another folder, or delete it to start over",
                    out.display(),
                    saved.display()
                )));
            }
        }
        Err(_) => plan.save(&saved)?,
    }
    let schema = plan.schema_ref()?;
    if let Some(a) = plan.partition_by.annotation() {
        if schema.column_with_name(a).is_none() {
            return Err(TransferError::Plan(format!(
                "the plan's schema has no `{a}` column for --partition-by; plan again with it"
            )));
        }
    }
    let done = recover(out, plan)?;
    let started = Instant::now();
    let mut summary = PullSummary {
        endpoints: plan.endpoints.len(),
        skipped: done.len(),
        total_rows: done.values().map(|d| d.rows).sum(),
        ..Default::default()
    };
    let progress = Progress {
        bar: progress_bar(plan, opts.progress, summary.total_rows),
        bytes: Default::default(),
        started: Instant::now(),
    };
    let server = opts.server.clone().unwrap_or_else(|| plan.server.clone());
    let pending: Vec<usize> = (0..plan.endpoints.len()).filter(|i| !done.contains_key(i)).collect();
    let busy = Busy::default();
    let results = futures::stream::iter(pending)
        .map(|index| {
            let (server, schema, progress, busy) = (&server, &schema, &progress, &busy);
            let connect = &opts.connect;
            async move {
                (
                    index,
                    pull_endpoint(plan, index, server, out, schema, progress, connect, busy).await,
                )
            }
        })
        .buffer_unordered(opts.parallel.max(1))
        .collect::<Vec<_>>()
        .await;
    // Every pull has ended (committed endpoints have their final names): what is left under a
    // temporary name is the half-written output of failed endpoints.
    remove_temporaries(out)?;
    let mut failures = Vec::new();
    for (index, r) in results {
        match r {
            Ok(d) => {
                summary.pulled += 1;
                summary.rows += d.rows;
                summary.total_rows += d.rows;
                summary.bytes += d.bytes;
            }
            Err(e) => failures.push((index, e)),
        }
    }
    failures.sort_by_key(|f| f.0);
    summary.failed = failures.len();
    summary.errors = failures
        .iter()
        .map(|(i, e)| {
            let hint = if is_data_loss(e) {
                " (the lake changed since planning: plan again into a new folder)"
            } else {
                ""
            };
            format!("endpoint {i} of {}: {e}{hint}", plan.endpoints.len())
        })
        .collect();
    // A result with no row still gets a file: readers then see the schema.
    if failures.is_empty() && summary.total_rows == 0 {
        let path = out.join("empty.parquet");
        write_empty(&path, &schema)?;
    }
    progress.bar.finish_and_clear();
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

fn is_data_loss(e: &TransferError) -> bool {
    matches!(e, TransferError::Client(ClientError::Flight(arrow_flight::error::FlightError::Tonic(s)))
        if s.code() == tonic::Code::DataLoss)
}

fn write_empty(path: &Path, schema: &SchemaRef) -> Result<(), TransferError> {
    let tmp = path.with_file_name(tmp_name("empty.parquet"));
    let f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    let w = ArrowWriter::try_new(f, schema.clone(), Some(props())).map_err(|source| TransferError::Parquet {
        path: path.to_path_buf(),
        source,
    })?;
    let f = w.into_inner().map_err(|source| TransferError::Parquet {
        path: path.to_path_buf(),
        source,
    })?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

fn props() -> WriterProperties {
    WriterProperties::builder().set_compression(Compression::SNAPPY).build()
}

fn progress_bar(plan: &TransferPlan, enabled: bool, already: u64) -> indicatif::ProgressBar {
    if !enabled {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(plan.total_records.max(0) as u64);
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr_with_hz(4));
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{elapsed_precise} [{bar:30}] {human_pos}/{human_len} alerts, {msg}, {rate} alerts/s, ETA {eta}",
    ) {
        let style = style
            .with_key("rate", |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{}", thousands(s.per_sec() as u64));
            })
            .progress_chars("=> ");
        bar.set_style(style);
    }
    bar.set_position(already);
    bar.set_message("0 B");
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}

/// The path of endpoint `index`'s file in `folder`, relative to the output folder.
fn final_rel(index: usize, folder: &str) -> String {
    let name = format!("part-{index:05}.parquet");
    if folder.is_empty() {
        name
    } else {
        format!("{folder}/{name}")
    }
}

/// The open files of one endpoint: one per partition folder.
struct Files {
    index: usize,
    out: PathBuf,
    schema: SchemaRef,
    open: HashMap<String, (ArrowWriter<std::fs::File>, PathBuf)>,
}

impl Files {
    fn final_rel(&self, folder: &str) -> String {
        final_rel(self.index, folder)
    }

    fn write(&mut self, folder: &str, batch: &RecordBatch) -> Result<(), TransferError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if !self.open.contains_key(folder) {
            let fin = self.out.join(self.final_rel(folder));
            let dir = fin.parent().unwrap_or(&self.out).to_path_buf();
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
            let name = fin.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let tmp = fin.with_file_name(tmp_name(name));
            let f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
            let w = ArrowWriter::try_new(f, self.schema.clone(), Some(props())).map_err(|source| {
                TransferError::Parquet {
                    path: tmp.clone(),
                    source,
                }
            })?;
            self.open.insert(folder.to_string(), (w, tmp));
        }
        let (w, tmp) = self.open.get_mut(folder).expect("inserted above");
        let pq = |source| TransferError::Parquet {
            path: tmp.clone(),
            source,
        };
        w.write(batch).map_err(pq)?;
        if w.in_progress_size() > FLUSH_BYTES {
            w.flush().map_err(|source| TransferError::Parquet {
                path: tmp.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// Close and sync every file, commit the endpoint, then give the files their final names.
    fn commit(self, rows: u64, bytes: u64) -> Result<Done, TransferError> {
        let mut files = Vec::new();
        let mut renames = Vec::new();
        for (folder, (w, tmp)) in self.open {
            let f = w.into_inner().map_err(|source| TransferError::Parquet {
                path: tmp.clone(),
                source,
            })?;
            f.sync_all().map_err(io(&tmp))?;
            let rel = final_rel(self.index, &folder);
            renames.push((tmp, self.out.join(&rel)));
            files.push(rel);
        }
        files.sort();
        let done = Done { rows, bytes, files };
        let text = serde_json::to_vec(&done).map_err(|e| TransferError::Plan(e.to_string()))?;
        write_atomic(&done_path(&self.out, self.index), &text)?;
        for (tmp, fin) in renames {
            std::fs::rename(&tmp, &fin).map_err(io(&fin))?;
        }
        Ok(done)
    }
}

/// Pulls in flight per location (an endpoint goes to the least busy of its locations), and the
/// locations that failed during this pull (tried last from then on).
#[derive(Default)]
struct Busy(std::sync::Mutex<(HashMap<String, usize>, HashSet<String>)>);

impl Busy {
    /// The locations, working ones first, then least busy first (ties keep the server's order,
    /// which it rotates per endpoint).
    fn order<'a>(&self, locations: &[&'a str]) -> Vec<&'a str> {
        let g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut v = locations.to_vec();
        v.sort_by_key(|l| (g.1.contains(*l), g.0.get(*l).copied().unwrap_or(0)));
        v
    }

    fn add(&self, location: &str, n: isize) {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let c = g.0.entry(location.to_string()).or_default();
        *c = c.saturating_add_signed(n);
    }

    fn failed(&self, location: &str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .insert(location.to_string());
    }
}

/// True when an error is the location's (down, unreachable, the connection lost), so that
/// another location may serve the endpoint; false for the request's own (a bad ticket, no
/// permission), which every replica would refuse alike.
fn location_failed(e: &TransferError) -> bool {
    use arrow_flight::error::FlightError;
    match e {
        TransferError::Client(ClientError::Connect { .. }) => true,
        TransferError::Client(ClientError::Flight(FlightError::Tonic(s))) => matches!(
            s.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal | tonic::Code::Cancelled
        ),
        _ => false,
    }
}

/// Pull one endpoint from the least busy of its locations (none: the server the plan came
/// from). When a location fails, the endpoint is pulled again from the next one: its files
/// are rewritten from the start (they commit only when the endpoint is whole), so every row
/// is written once.
#[allow(clippy::too_many_arguments)]
async fn pull_endpoint(
    plan: &TransferPlan,
    index: usize,
    server: &str,
    out: &Path,
    schema: &SchemaRef,
    progress: &Progress,
    connect: &ConnectOptions,
    busy: &Busy,
) -> Result<Done, TransferError> {
    let e = &plan.endpoints[index];
    let ticket = b64()
        .decode(&e.ticket)
        .map_err(|err| TransferError::Plan(format!("ticket of endpoint {index} is not base64: {err}")))?;
    let listed = crate::endpoint_locations(e.locations.iter().map(String::as_str), server);
    let mut last = None;
    for at in busy.order(&listed) {
        busy.add(at, 1);
        let (mut rows, mut bytes) = (0u64, 0u64);
        let r = pull_from(
            plan, index, at, &ticket, out, schema, progress, connect, &mut rows, &mut bytes,
        )
        .await;
        busy.add(at, -1);
        match r {
            Ok(d) => return Ok(d),
            Err(err) if location_failed(&err) => {
                eprintln!("endpoint {index}: {at} failed ({err}); pulling it from the next location");
                busy.failed(at);
                progress.undo(rows, bytes);
                last = Some(err);
            }
            Err(err) => return Err(err),
        }
    }
    Err(last.expect("at least one location was tried"))
}

/// One attempt of an endpoint at one location; `rows` and `bytes` count what it received.
#[allow(clippy::too_many_arguments)]
async fn pull_from(
    plan: &TransferPlan,
    index: usize,
    at: &str,
    ticket: &[u8],
    out: &Path,
    schema: &SchemaRef,
    progress: &Progress,
    connect: &ConnectOptions,
    rows: &mut u64,
    bytes: &mut u64,
) -> Result<Done, TransferError> {
    let mut client = Client::connect_with(at, connect).await?;
    let mut stream = client
        .inner
        .do_get(Ticket::new(ticket.to_vec()))
        .await
        .map_err(ClientError::from)?
        .into_inner();
    let mut files = Files {
        index,
        out: out.to_path_buf(),
        schema: plan.partition_by.file_schema(schema),
        open: HashMap::new(),
    };
    while let Some(data) = stream.try_next().await.map_err(ClientError::from)? {
        let wire = (data.inner.data_header.len() + data.inner.data_body.len()) as u64;
        *bytes += wire;
        let DecodedPayload::RecordBatch(batch) = data.payload else {
            progress.add(0, wire);
            continue;
        };
        if batch.schema().fields() != schema.fields() {
            return Err(TransferError::Plan(format!(
                "endpoint {index} sent a schema other than the plan's: {:?}",
                batch.schema()
            )));
        }
        let n = batch.num_rows() as u64;
        // Parquet encoding is CPU work: keep it off the runtime's async threads.
        tokio::task::block_in_place(|| split_and_write(&mut files, plan.partition_by, &batch))?;
        *rows += n;
        progress.add(n, wire);
    }
    let (r, b) = (*rows, *bytes);
    tokio::task::block_in_place(|| files.commit(r, b))
}

/// The progress bar, and the bytes received by every endpoint of this pull.
struct Progress {
    bar: indicatif::ProgressBar,
    bytes: std::sync::atomic::AtomicU64,
    started: Instant,
}

impl Progress {
    /// Take back what a failed attempt counted (its endpoint is pulled again).
    fn undo(&self, rows: u64, bytes: u64) {
        self.bytes.fetch_sub(bytes, std::sync::atomic::Ordering::Relaxed);
        self.bar.set_position(self.bar.position().saturating_sub(rows));
    }

    fn add(&self, rows: u64, bytes: u64) {
        let total = self.bytes.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed) + bytes;
        self.bar.inc(rows);
        let rate = total as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
        self.bar
            .set_message(format!("{} ({}/s)", human_bytes(total), human_bytes(rate as u64)));
    }
}

fn split_and_write(files: &mut Files, by: PartitionBy, batch: &RecordBatch) -> Result<(), TransferError> {
    let Some(col) = by.annotation() else {
        return files.write("", batch);
    };
    let keys = folder_keys(batch, col)?;
    let batch = &match by.folder_only_index(batch.schema_ref()) {
        Some(i) => {
            let mut b = batch.clone();
            b.remove_column(i);
            b
        }
        None => batch.clone(),
    };
    let mut distinct: Vec<&String> = keys.iter().collect();
    distinct.sort();
    distinct.dedup();
    if distinct.len() == 1 {
        let k = distinct[0].clone();
        return files.write(&k, batch);
    }
    for k in distinct {
        let mask = BooleanArray::from(keys.iter().map(|x| x == k).collect::<Vec<_>>());
        let part = filter_record_batch(batch, &mask).map_err(|e| TransferError::Plan(e.to_string()))?;
        files.write(k, &part)?;
    }
    Ok(())
}

/// Hive's (and pyarrow's) folder value for a null.
pub const HIVE_NULL: &str = "__HIVE_DEFAULT_PARTITION__";

/// The folder of each row, Hive style: `year=YYYY/month=MM/day=DD` of the `night` column, or
/// `class=<the class column's value, percent-encoded>`.
fn folder_keys(batch: &RecordBatch, col: &str) -> Result<Vec<String>, TransferError> {
    let a = batch
        .column_by_name(col)
        .ok_or_else(|| TransferError::Plan(format!("the stream has no `{col}` column")))?;
    match a.data_type() {
        DataType::Date32 => {
            let d = a.as_primitive::<Date32Type>();
            Ok((0..d.len())
                .map(|i| {
                    if d.is_null(i) {
                        format!("year={HIVE_NULL}/month={HIVE_NULL}/day={HIVE_NULL}")
                    } else {
                        let (y, m, day) = astroflight_proto::alerts::civil_from_days(d.value(i) as i64);
                        format!("year={y:04}/month={m:02}/day={day:02}")
                    }
                })
                .collect())
        }
        DataType::Utf8 => Ok(class_keys(a.as_string::<i32>())),
        DataType::LargeUtf8 => Ok(class_keys(a.as_string::<i64>())),
        other => Err(TransferError::Plan(format!(
            "column `{col}` is {other}, not a night or a class"
        ))),
    }
}

fn class_keys<O: arrow::array::OffsetSizeTrait>(s: &arrow::array::GenericStringArray<O>) -> Vec<String> {
    s.iter()
        .map(|v| format!("class={}", v.map(hive_value).unwrap_or_else(|| HIVE_NULL.to_string())))
        .collect()
}

/// A partition value as pyarrow's `write_to_dataset` writes it into a folder name (its "uri"
/// segment encoding, which Spark and Hive also decode): every byte of the UTF-8 text other than
/// `A-Z a-z 0-9 - . _ ~` as `%XX`. The folder's `key=` prefix keeps a leading `.` or `_` of the
/// value from hiding it from parquet readers.
pub fn hive_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Nights as the command line writes them: `2019-09-03`, `2019-09-03..2019-09-05` (inclusive),
/// or a comma-separated list of both.
pub fn expand_nights(spec: &str) -> Result<Vec<String>, String> {
    use astroflight_proto::alerts::{night_name, parse_night, MAX_LIST};
    let mut out = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let parse = |s: &str| parse_night(s.trim()).ok_or_else(|| format!("night {s:?} is not a date (YYYY-MM-DD)"));
        match item.split_once("..") {
            Some((a, b)) => {
                let (a, b) = (parse(a)?, parse(b)?);
                if a > b {
                    return Err(format!("night range {item:?} ends before it starts"));
                }
                if (b - a) as usize >= MAX_LIST {
                    return Err(format!("night range {item:?} has more than {MAX_LIST} nights"));
                }
                out.extend((a..=b).map(night_name));
            }
            None => out.push(night_name(parse(item)?)),
        }
    }
    if out.is_empty() {
        return Err("no night given".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nights_expand() {
        assert_eq!(
            expand_nights("2019-09-03..2019-09-05").unwrap(),
            ["2019-09-03", "2019-09-04", "2019-09-05"]
        );
        assert_eq!(
            expand_nights("2019-12-31..2020-01-01, 2021-02-03").unwrap(),
            ["2019-12-31", "2020-01-01", "2021-02-03"]
        );
        assert!(expand_nights("2019-09-05..2019-09-03")
            .unwrap_err()
            .contains("ends before"));
        assert!(expand_nights("yesterday").unwrap_err().contains("not a date"));
        assert!(expand_nights("").is_err());
    }

    #[test]
    fn folders_are_hive_partitions_with_nulls_as_hive_writes_them() {
        use arrow::array::{Date32Array, StringArray};
        let batch = RecordBatch::try_from_iter([
            (
                "night",
                Arc::new(Date32Array::from(vec![Some(18_264), None])) as arrow::array::ArrayRef,
            ),
            (
                "class",
                Arc::new(StringArray::from(vec![Some("EB*"), None])) as arrow::array::ArrayRef,
            ),
        ])
        .unwrap();
        assert_eq!(
            folder_keys(&batch, "night").unwrap(),
            [
                "year=2020/month=01/day=03".to_string(),
                format!("year={HIVE_NULL}/month={HIVE_NULL}/day={HIVE_NULL}")
            ]
        );
        assert_eq!(
            folder_keys(&batch, "class").unwrap(),
            ["class=EB%2A".to_string(), format!("class={HIVE_NULL}")]
        );
        // The class is written in the folder names only.
        let schema = PartitionBy::Class.file_schema(&batch.schema());
        assert_eq!(schema.fields().len(), 1);
        assert_eq!(schema.field(0).name(), "night");
        assert_eq!(PartitionBy::Time.file_schema(&batch.schema()).fields().len(), 2);
    }

    #[test]
    fn hive_values_are_spelled_as_pyarrow_writes_them() {
        // The folder names pyarrow 21's write_to_dataset gave for the same values.
        assert_eq!(hive_value("EB*"), "EB%2A");
        assert_eq!(hive_value("Early SN Ia candidate"), "Early%20SN%20Ia%20candidate");
        assert_eq!(hive_value("a/b"), "a%2Fb");
        assert_eq!(hive_value("_x"), "_x");
        assert_eq!(hive_value("50%"), "50%25");
        assert_eq!(hive_value(""), "");
        assert_eq!(hive_value("é=:"), "%C3%A9%3D%3A");
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1_500_000), "1.5 MB");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(12), "12");
    }
}
