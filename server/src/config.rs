//! Configuration: one TOML file, with environment overrides.
//!
//! Precedence: environment variable > file > default. The variables are listed in [`ENV_VARS`]
//! and in the README:
//!
//! | variable                  | overrides   |
//! |---------------------------|-------------|
//! | `ASTROFLIGHT_CONFIG`      | the config file path (when `--config` is not given) |
//! | `ASTROFLIGHT_LISTEN`      | `listen`    |
//! | `ASTROFLIGHT_INDEX_DIR`   | `index_dir` |
//! | `ASTROFLIGHT_LOG_FORMAT`  | `log_format` (`text` or `json`) |
//!
//! Relative paths in the file (`index_dir`, a `root` without a scheme) are relative to the
//! file's directory, so a config and its lake can move together.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use astroflight_index::SurveyKind;

use crate::error::{Error, Result};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8815";
pub const ENV_VARS: [&str; 4] = [
    "ASTROFLIGHT_CONFIG",
    "ASTROFLIGHT_LISTEN",
    "ASTROFLIGHT_INDEX_DIR",
    "ASTROFLIGHT_LOG_FORMAT",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address to serve on.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Directory of the sled index.
    #[serde(default = "default_index_dir")]
    pub index_dir: PathBuf,
    /// Bytes of the index kept in memory (sled's page cache).
    #[serde(default = "default_index_cache_bytes")]
    pub index_cache_bytes: u64,
    /// Parquet footers (with their offset index) kept in memory, at most this many files...
    #[serde(default = "default_footer_cache")]
    pub footer_cache_files: usize,
    /// ...and at most this many bytes (as the decoded metadata measures itself).
    #[serde(default = "default_footer_cache_bytes")]
    pub footer_cache_bytes: u64,
    /// Most alerts one ticket may resolve to (after `all` expands objects); past it the ticket
    /// is refused with RESOURCE_EXHAUSTED before anything is read.
    #[serde(default = "default_max_ticket_alerts")]
    pub max_ticket_alerts: usize,
    /// Most bytes one ticket may be estimated to return (from the catalog: the stored bytes of
    /// the alerts' rows, pro rata of the stamp kinds asked); past it, RESOURCE_EXHAUSTED.
    #[serde(default = "default_max_ticket_bytes")]
    pub max_ticket_bytes: u64,
    /// Publish each dataset's root (bucket, NameNode, path) in ListFlights and `stats`.
    /// Off by default: storage addresses are the operator's business, not the clients'.
    #[serde(default)]
    pub publish_roots: bool,
    /// Who may call the `reindex` action: `local` (clients on a loopback address, the
    /// default), `any`, or `off`.
    #[serde(default)]
    pub reindex_action: ReindexAction,
    /// Re-index every dataset this often, in seconds, in the background (0: only at start and
    /// on the `reindex` action). Builds never overlap. On a follower (`index_role =
    /// "follow"`), how often it looks for a newer published generation. Default: 0 on a
    /// builder, 30 on a follower ([`Config::reindex_interval`]).
    #[serde(default)]
    pub reindex_interval_secs: Option<f64>,
    /// `build` (the default): this process reads the lake and builds the id index (and, for
    /// the datasets with an `index_root`, publishes each generation there). `follow`: it never
    /// builds; it loads the index each dataset's builder published at its `index_root`.
    #[serde(default)]
    pub index_role: IndexRole,
    /// How long a published generation stays after a newer one replaced it, in seconds, so
    /// that a follower still loading it is not cut off (default 3600).
    #[serde(default = "default_index_retain")]
    pub index_retain_secs: f64,
    /// Run an incremental index build of every dataset when the server starts.
    #[serde(default = "default_true")]
    pub index_on_start: bool,
    /// Longest a DoGet may take, in seconds, start to last byte (a client's shorter
    /// `grpc-timeout` wins). Past it the stream ends with DEADLINE_EXCEEDED, so a stuck storage
    /// read never hangs a client. Storage retry budgets should be shorter.
    #[serde(default = "default_deadline")]
    pub deadline_secs: f64,
    /// Alert batch queries are split into endpoints of about this many output bytes each
    /// (estimated from the catalog and the files' column sizes). Default 256 MiB.
    #[serde(default = "default_endpoint_bytes")]
    pub endpoint_bytes: u64,
    /// Addresses put in the endpoints' locations (`grpc://host:port`, `grpc+tls://host:port`),
    /// for clients to spread parallel pulls over replicas: endpoint i lists them starting at
    /// the i-th (round robin). Empty (the default): no locations, the client reuses the
    /// connection it planned on.
    #[serde(default)]
    pub advertise: Vec<String>,
    /// Flight SQL (the `[sql]` table).
    #[serde(default)]
    pub sql: SqlConfig,
    /// FITS datasets (the `[fits]` table): header scans and header tables.
    #[serde(default)]
    pub fits: FitsConfig,
    #[serde(default, rename = "dataset")]
    pub datasets: Vec<DatasetConfig>,
    /// TLS (the `[tls]` table): off (plain TCP, the demo) when absent.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Authentication (the `[auth]` table): with it every RPC but Handshake needs credentials;
    /// without it (and without `tls.client_ca`) the server is open.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// Which identity reads which datasets (`[[grant]]`), once callers are identified.
    #[serde(default, rename = "grant")]
    pub grants: Vec<GrantConfig>,
    /// Limits on concurrent streams, responses, messages and connections (`[limits]`).
    #[serde(default)]
    pub limits: LimitsConfig,
    /// OpenTelemetry and Prometheus (`[telemetry]`).
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// Log lines as `text` (the default) or `json` (one object per line, for log shippers).
    #[serde(default)]
    pub log_format: LogFormat,
    /// A second, plain-TCP address that serves the gRPC health service only (no credentials,
    /// no TLS): for probes that cannot speak TLS (Kubernetes' gRPC probes) when `listen` is
    /// TLS. Off by default; the health service is always on `listen` too.
    #[serde(default)]
    pub health_listen: Option<String>,
    /// How long a graceful shutdown (SIGTERM, ctrl-c) lets open streams run before they are
    /// cut, in seconds. New calls are refused from the signal on.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace_secs: f64,
    /// The process's memory budget, in bytes: every request's large buffers (reads, the arrays
    /// expressions build, DataFusion's operators, batches being encoded) count against it, and
    /// a request that would pass it (or its share, `limits.max_request_memory_bytes`) fails with
    /// RESOURCE_EXHAUSTED. Default: 70% of the machine's memory, or of the container's (cgroup)
    /// limit when that is lower.
    #[serde(default)]
    pub max_memory_bytes: Option<u64>,
}

/// `[tls]`: the server's certificate chain and key (PEM), and for mutual TLS the CA of the
/// client certificates. The files are read again when they change (every `reload_secs`), so a
/// renewed certificate is served without a restart; a change that does not load (a half-written
/// file) is logged and the previous certificate kept.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, the server's certificate first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificates of the clients: set, every client must present a certificate it
    /// signed (mutual TLS), and the certificate's subject CN (else its first SAN) is the
    /// caller's identity.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// How often the files are checked for changes, in seconds.
    #[serde(default = "default_reload_secs")]
    pub reload_secs: f64,
    /// A TLS handshake that takes longer than this, in seconds, is dropped.
    #[serde(default = "default_handshake_secs")]
    pub handshake_timeout_secs: f64,
}

/// `[auth]`: who the callers are. Credentials: tokens from `tokens_file`, users (name and
/// argon2 password hash) from `users_file`, whose Handshake with basic credentials returns a
/// session token, and (with `tls.client_ca`) client certificates.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Static bearer tokens: `[[token]] token = "...", identity = "..."`.
    #[serde(default)]
    pub tokens_file: Option<PathBuf>,
    /// Users: `[[user]] name = "...", password_hash = "$argon2id$..."`.
    #[serde(default)]
    pub users_file: Option<PathBuf>,
    /// Lifetime of the session tokens Handshake returns, in seconds (default 8 hours).
    #[serde(default = "default_session_secs")]
    pub session_secs: f64,
    /// The key session tokens are signed with (any bytes, at least 32). Replicas behind one
    /// address must share it, so a token from one is good on all; absent, each process draws
    /// its own key at start (tokens then die with the process).
    #[serde(default)]
    pub session_key_file: Option<PathBuf>,
    /// How often `tokens_file` and `users_file` are checked for changes, in seconds.
    #[serde(default = "default_reload_secs")]
    pub reload_secs: f64,
}

/// `[[grant]]`: the datasets an identity may read (`["*"]`: every dataset). An identity
/// matches a user name, a token's identity or a client certificate's identity; `identity = "*"`
/// grants to every authenticated caller. Grants add up.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantConfig {
    pub identity: String,
    pub datasets: Vec<String>,
}

/// The per-request limits of the configuration, in one place: what a ticket may resolve to
/// (`max_ticket_alerts`, `max_ticket_bytes`, `limits.max_ticket_ids`), what one response stream
/// may carry (`limits.max_response_bytes`, messages of at most `limits.max_message_bytes`), and
/// what a Flight SQL result may hold (`sql.max_rows`, `sql.max_bytes`). 0 in a byte or row
/// limit of a stream: none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most alerts a ticket may resolve to (checked on the plan, before anything is read).
    pub max_ticket_alerts: usize,
    /// Most bytes a ticket may be estimated to return.
    pub max_ticket_bytes: u64,
    /// Most ids one ticket may name.
    pub max_ticket_ids: usize,
    /// Most Flight data bytes one response stream may carry.
    pub max_response_bytes: u64,
    /// Largest gRPC message.
    pub max_message_bytes: usize,
    /// Most rows of a Flight SQL result stream.
    pub sql_max_rows: u64,
    /// Most bytes (Arrow memory) of a Flight SQL result stream.
    pub sql_max_bytes: u64,
}

/// `[limits]`: what one caller, and all together, may hold at once.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Most response streams (DoGet) open at once, all callers together.
    #[serde(default = "default_max_streams")]
    pub max_streams: usize,
    /// Most response streams one identity may have open at once.
    #[serde(default = "default_max_streams_per_identity")]
    pub max_streams_per_identity: usize,
    /// How long a DoGet waits in line for a free stream slot before RESOURCE_EXHAUSTED, in
    /// seconds.
    #[serde(default = "default_queue_secs")]
    pub queue_secs: f64,
    /// Most ids (objectIds, candids, diaSourceIds) one ticket may name (at most 100000, the
    /// decoder's own bound); past it, RESOURCE_EXHAUSTED before anything is looked up.
    #[serde(default = "default_max_ticket_ids")]
    pub max_ticket_ids: usize,
    /// Most bytes (Flight data as sent) one response stream may carry; past it the stream ends
    /// with RESOURCE_EXHAUSTED. 0: no limit.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: u64,
    /// Largest gRPC message the server accepts (tickets, commands, DoPut data) and sends:
    /// responses are split into messages of about 2 MiB, and a row that alone passes this
    /// (a large image section, a huge SQL value) is refused with RESOURCE_EXHAUSTED naming it.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// HTTP/2 keep-alive: a ping every this many seconds on an idle connection (0: off)...
    #[serde(default = "default_keepalive_secs")]
    pub keepalive_secs: f64,
    /// ...and the connection is closed when a ping is not answered within this many seconds.
    #[serde(default = "default_keepalive_timeout_secs")]
    pub keepalive_timeout_secs: f64,
    /// Most concurrent HTTP/2 streams (calls) on one connection.
    #[serde(default = "default_max_concurrent_calls")]
    pub max_calls_per_connection: u32,
    /// Most memory one request may hold (its share of `max_memory_bytes`): reads, the arrays its
    /// expressions build, its DataFusion operators, its batches being encoded. Default: an eighth
    /// of the budget, at least 64 MiB.
    #[serde(default)]
    pub max_request_memory_bytes: Option<u64>,
    /// Largest value (a string, a binary, a list with all it holds) a SQL function or operator
    /// may build: `repeat`, `lpad`, `array_repeat`, `string_agg`, `array_agg`, `||`... are refused
    /// before they allocate more. At most `max_message_bytes` (a value must fit in a message).
    /// Default 64 MiB.
    #[serde(default = "default_max_value_bytes")]
    pub max_value_bytes: u64,
    /// Most bytes one function call may build for one batch of rows. Default 256 MiB (at most the
    /// request's share).
    #[serde(default = "default_max_expression_batch_bytes")]
    pub max_expression_batch_bytes: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

/// `[telemetry]`: OpenTelemetry over OTLP/gRPC, and a Prometheus text endpoint.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// OTLP/gRPC collector for traces and metrics (`http://host:4317`).
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// Address of the Prometheus text endpoint (`GET /metrics`).
    #[serde(default)]
    pub prometheus_listen: Option<String>,
    /// `service.name` of the traces and metrics (default `astroflight`).
    #[serde(default)]
    pub service_name: Option<String>,
    /// How often metrics are pushed over OTLP, in seconds (default 10).
    #[serde(default)]
    pub export_interval_secs: Option<f64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Flight SQL: how scans are split into endpoints, and the limits of one query.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlConfig {
    /// A query that scans one table with filters and projections only (no aggregate, join,
    /// sort or limit) is split into endpoints of about this many stored (parquet) bytes of the
    /// files and row groups it reads. Default 128 MiB.
    #[serde(default = "default_sql_endpoint_bytes")]
    pub endpoint_bytes: u64,
    /// Most rows one Flight SQL stream (one endpoint) may return; past it the stream ends with
    /// RESOURCE_EXHAUSTED. A query known in advance to return more is refused by GetFlightInfo.
    /// 0 (the default): no limit.
    #[serde(default)]
    pub max_rows: u64,
    /// Most bytes (Arrow, in memory) one Flight SQL stream may return; past it,
    /// RESOURCE_EXHAUSTED. 0 (the default): no limit.
    #[serde(default)]
    pub max_bytes: u64,
    /// Memory DataFusion may hold for all queries together (sorts, aggregates, joins); a query
    /// that needs more spills to disk where it can, or fails with RESOURCE_EXHAUSTED. Default
    /// 2 GiB.
    #[serde(default = "default_sql_memory_bytes")]
    pub memory_bytes: u64,
}

impl Default for SqlConfig {
    fn default() -> Self {
        SqlConfig {
            endpoint_bytes: default_sql_endpoint_bytes(),
            max_rows: 0,
            max_bytes: 0,
            memory_bytes: default_sql_memory_bytes(),
        }
    }
}

/// FITS datasets: how headers are read and header tables split.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FitsConfig {
    /// Bytes read at the start of each HDU, in one request, hoping to hold its whole header
    /// (most headers are under 100 cards, 8 KiB). A longer header is read on in doubling steps.
    /// Default 32 KiB.
    #[serde(default = "default_header_read_bytes")]
    pub header_read_bytes: u64,
    /// Largest externally gzipped file (`.fits.gz`) whose headers are read: such files cannot
    /// be read by range, so they are fetched whole (and decompressed as a stream). Default 1 GiB.
    #[serde(default = "default_max_gzip_bytes")]
    pub max_gzip_bytes: u64,
    /// Files whose headers are read at once while the header catalog is refreshed.
    #[serde(default = "default_header_concurrency")]
    pub concurrency: usize,
    /// A header table is split into endpoints of about this many HDUs. Default 50,000.
    #[serde(default = "default_endpoint_hdus")]
    pub endpoint_hdus: u64,
    /// Most bytes of image rows one section may read (a section reads whole rows and answers
    /// in one batch); past it, RESOURCE_EXHAUSTED. Default 256 MiB.
    #[serde(default = "default_max_section_bytes")]
    pub max_section_bytes: u64,
}

impl Default for FitsConfig {
    fn default() -> Self {
        FitsConfig {
            header_read_bytes: default_header_read_bytes(),
            max_gzip_bytes: default_max_gzip_bytes(),
            concurrency: default_header_concurrency(),
            endpoint_hdus: default_endpoint_hdus(),
            max_section_bytes: default_max_section_bytes(),
        }
    }
}

fn default_header_read_bytes() -> u64 {
    32 << 10
}
fn default_max_gzip_bytes() -> u64 {
    1 << 30
}
fn default_header_concurrency() -> usize {
    16
}
fn default_endpoint_hdus() -> u64 {
    50_000
}
fn default_max_section_bytes() -> u64 {
    256 << 20
}

fn default_sql_endpoint_bytes() -> u64 {
    128 << 20
}
fn default_sql_memory_bytes() -> u64 {
    2 << 30
}

/// One dataset. Only `name`, `kind` and `root` are required; the rest are storage options,
/// each valid for some root schemes only (a misplaced one is an error, not silently ignored).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetConfig {
    pub name: String,
    pub kind: DatasetKind,
    /// The class of an alert, for the `classes` of alert queries and the per-night class
    /// counts: a column (`cdsxmatch`) or a SQL expression over the alert's fields. Default for
    /// `ztf` datasets: `cdsxmatch` (Fink's CDS cross-match label, present in its science
    /// lake); none for `lsst`. `class = ""` turns classes off.
    pub class: Option<String>,
    /// `file:///abs/path` or a plain path (relative to the config file), `s3://bucket/prefix`,
    /// `hdfs://namenode:port/path` (or `hdfs://nameservice/path`), `http(s)://host/path`.
    pub root: String,
    /// Where this dataset's published index lives (`file://`, a plain path, `s3://`,
    /// `hdfs://`; also `http(s)://` on a follower), with the dataset's storage options. A
    /// builder publishes every generation there; a follower loads from there. Alert datasets
    /// only: a FITS dataset's header catalog is read by every server itself.
    pub index_root: Option<String>,

    // S3 (`s3://`). Unset options come from the usual AWS_* environment variables.
    /// Custom endpoint (MinIO, Ceph, moto...): requests are path-style unless
    /// `virtual_hosted_style = true`.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<Secret>,
    pub session_token: Option<Secret>,
    /// Allow a plain `http://` endpoint.
    pub allow_http: Option<bool>,
    pub virtual_hosted_style: Option<bool>,
    /// Unsigned requests (public buckets): no credentials are looked up or sent.
    pub anonymous: Option<bool>,
    /// Requester-pays buckets: every request carries `x-amz-request-payer: requester`, so the
    /// reads are billed to the credentials' account (needs signed requests: not with
    /// `anonymous`).
    pub requester_pays: Option<bool>,

    // HDFS (`hdfs://`).
    /// Hadoop client settings (e.g. `dfs.ha.namenodes.<ns>` for an HA nameservice); they
    /// override the files of $HADOOP_CONF_DIR.
    #[serde(default)]
    pub hdfs: BTreeMap<String, String>,

    // HTTP(S) (`http://`, `https://`): HTTP cannot list, so the files are named here or in a
    // manifest at the root.
    /// The data files, relative to the root.
    pub files: Option<Vec<String>>,
    /// A text file at the root listing the data files, one relative path per line
    /// (default `_manifest`, used when `files` is not given).
    pub manifest: Option<String>,

    // Remote stores (S3, HDFS, HTTP): every request has a timeout, and a failed or timed-out
    // request is retried with exponential backoff within a bounded budget.
    /// Retries of one request (default 3).
    pub retries: Option<usize>,
    /// Total time one request may spend retrying, in seconds (default 15).
    pub retry_timeout_secs: Option<f64>,
    /// Timeout of one storage request, connect to last byte, in seconds (default 20).
    pub request_timeout_secs: Option<f64>,
    /// Connect timeout, in seconds (default 5; S3 and HTTP).
    pub connect_timeout_secs: Option<f64>,
}

impl DatasetConfig {
    /// A dataset with no storage options.
    pub fn new(name: impl Into<String>, kind: DatasetKind, root: impl Into<String>) -> Self {
        DatasetConfig {
            name: name.into(),
            kind,
            root: root.into(),
            ..Default::default()
        }
    }
}

/// A credential: deserialized like a string, but never printed (Debug shows `***`), so
/// secrets cannot reach logs through a configuration dump or an error message.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// What a server does with the id index.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IndexRole {
    /// Read the lake and build; publish to `index_root` where set.
    #[default]
    Build,
    /// Load what a builder published at each dataset's `index_root`.
    Follow,
}

impl IndexRole {
    pub fn name(self) -> &'static str {
        match self {
            IndexRole::Build => "build",
            IndexRole::Follow => "follow",
        }
    }
}

/// Who may call the `reindex` action.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReindexAction {
    /// Clients connecting from a loopback address only.
    #[default]
    Local,
    /// Every client.
    Any,
    /// Nobody: the index is built at start and on the schedule only.
    Off,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetKind {
    #[default]
    Ztf,
    Lsst,
    /// FITS files (`.fits`, `.fit`, `.fts`, `.fits.fz`, their `.gz`): header tables and image
    /// sections.
    Fits,
}

impl DatasetKind {
    pub fn of_survey(s: SurveyKind) -> Self {
        match s {
            SurveyKind::Ztf => DatasetKind::Ztf,
            SurveyKind::Lsst => DatasetKind::Lsst,
        }
    }

    /// The alert survey of an alert dataset; None for FITS datasets.
    pub fn survey(self) -> Option<SurveyKind> {
        match self {
            DatasetKind::Ztf => Some(SurveyKind::Ztf),
            DatasetKind::Lsst => Some(SurveyKind::Lsst),
            DatasetKind::Fits => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Ztf => "ztf",
            DatasetKind::Lsst => "lsst",
            DatasetKind::Fits => "fits",
        }
    }
}

fn default_index_retain() -> f64 {
    3600.0
}
fn default_listen() -> String {
    DEFAULT_LISTEN.to_string()
}
fn default_index_dir() -> PathBuf {
    PathBuf::from("astroflight-index")
}
fn default_footer_cache() -> usize {
    1024
}
fn default_index_cache_bytes() -> u64 {
    astroflight_index::DEFAULT_CACHE_BYTES
}
fn default_footer_cache_bytes() -> u64 {
    256 << 20
}
fn default_max_ticket_alerts() -> usize {
    100_000
}
fn default_max_ticket_bytes() -> u64 {
    4 << 30
}
fn default_true() -> bool {
    true
}
fn default_endpoint_bytes() -> u64 {
    256 << 20
}

fn default_deadline() -> f64 {
    120.0
}
fn default_shutdown_grace() -> f64 {
    30.0
}
fn default_reload_secs() -> f64 {
    5.0
}
fn default_handshake_secs() -> f64 {
    10.0
}
fn default_session_secs() -> f64 {
    8.0 * 3600.0
}
fn default_max_streams() -> usize {
    256
}
fn default_max_streams_per_identity() -> usize {
    32
}
fn default_queue_secs() -> f64 {
    10.0
}
fn default_max_ticket_ids() -> usize {
    100_000
}
fn default_max_response_bytes() -> u64 {
    64 << 30
}
fn default_max_message_bytes() -> usize {
    64 << 20
}
fn default_max_value_bytes() -> u64 {
    64 << 20
}
fn default_max_expression_batch_bytes() -> u64 {
    256 << 20
}
fn default_keepalive_secs() -> f64 {
    30.0
}
fn default_keepalive_timeout_secs() -> f64 {
    20.0
}
fn default_max_concurrent_calls() -> u32 {
    256
}

impl Default for Config {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

/// The smallest `max_memory_bytes` a server starts with.
pub const MIN_MEMORY_BYTES: u64 = 64 << 20;

/// The memory settings with their defaults resolved (`max_memory_bytes` from the machine).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLimits {
    pub budget: u64,
    pub request: u64,
    pub value: u64,
    pub batch: u64,
    /// DataFusion's operators, all queries together (`sql.memory_bytes`, within the budget).
    pub sql_pool: u64,
}

impl Config {
    /// `reindex_interval_secs` with its default: 0 (off) on a builder, 30 on a follower.
    pub fn reindex_interval(&self) -> f64 {
        self.reindex_interval_secs.unwrap_or(match self.index_role {
            IndexRole::Build => 0.0,
            IndexRole::Follow => 30.0,
        })
    }

    /// The limits every request is held to, resolved once (the lake holds them; the ticket
    /// service, the ticket kinds and the Flight SQL service read them from there).
    pub fn resolved_limits(&self) -> Limits {
        Limits {
            max_ticket_alerts: self.max_ticket_alerts,
            max_ticket_bytes: self.max_ticket_bytes,
            max_ticket_ids: self.limits.max_ticket_ids,
            max_response_bytes: self.limits.max_response_bytes,
            max_message_bytes: self.limits.max_message_bytes,
            sql_max_rows: self.sql.max_rows,
            sql_max_bytes: self.sql.max_bytes,
        }
    }

    /// The memory budget and the bounds under it, defaults resolved: the budget from the
    /// machine (or cgroup) when not set; a request's share an eighth of it (at least 64 MiB);
    /// a value at most a message; everything at most the budget.
    pub fn memory(&self) -> MemoryLimits {
        let budget = self
            .max_memory_bytes
            .unwrap_or_else(crate::memory::default_budget)
            .max(MIN_MEMORY_BYTES);
        let l = &self.limits;
        let request = l
            .max_request_memory_bytes
            .unwrap_or_else(|| (budget / 8).max(64 << 20))
            .min(budget);
        MemoryLimits {
            budget,
            request,
            value: l.max_value_bytes.min(l.max_message_bytes as u64).min(request),
            batch: l.max_expression_batch_bytes.min(request),
            sql_pool: self.sql.memory_bytes.min(budget),
        }
    }

    /// Parse a config text; relative paths are resolved against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Config> {
        let mut c: Config =
            toml::from_str(text).map_err(|e| Error::InvalidArgument(format!("invalid configuration: {e}")))?;
        c.index_dir = base.join(&c.index_dir);
        for d in &mut c.datasets {
            if !d.root.contains("://") {
                d.root = base.join(&d.root).to_string_lossy().into_owned();
            }
            if let Some(r) = &mut d.index_root {
                if !r.contains("://") {
                    *r = base.join(&*r).to_string_lossy().into_owned();
                }
            }
        }
        if let Some(t) = &mut c.tls {
            t.cert = base.join(&t.cert);
            t.key = base.join(&t.key);
            t.client_ca = t.client_ca.as_ref().map(|p| base.join(p));
        }
        if let Some(a) = &mut c.auth {
            for p in [&mut a.tokens_file, &mut a.users_file, &mut a.session_key_file]
                .into_iter()
                .flatten()
            {
                *p = base.join(&*p);
            }
        }
        c.validate()?;
        Ok(c)
    }

    /// Load a file (or `$ASTROFLIGHT_CONFIG`), then apply the environment overrides.
    pub fn load(path: Option<&Path>) -> Result<Config> {
        let env_path = std::env::var_os("ASTROFLIGHT_CONFIG").map(PathBuf::from);
        let mut c = match path.map(Path::to_path_buf).or(env_path) {
            Some(p) => {
                let text = std::fs::read_to_string(&p)
                    .map_err(|e| Error::InvalidArgument(format!("cannot read configuration {}: {e}", p.display())))?;
                let base = p.parent().map(Path::to_path_buf).unwrap_or_default();
                let base = if base.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    base
                };
                Config::parse(&text, &base)?
            }
            None => Config::default(),
        };
        c.apply_env(|k| std::env::var(k).ok());
        Ok(c)
    }

    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) {
        if let Some(v) = get("ASTROFLIGHT_LISTEN") {
            self.listen = v;
        }
        if let Some(v) = get("ASTROFLIGHT_INDEX_DIR") {
            self.index_dir = PathBuf::from(v);
        }
        match get("ASTROFLIGHT_LOG_FORMAT").as_deref() {
            Some("json") => self.log_format = LogFormat::Json,
            Some("text") => self.log_format = LogFormat::Text,
            _ => {}
        }
    }

    pub fn validate(&self) -> Result<()> {
        if !(self.deadline_secs > 0.0 && self.deadline_secs.is_finite()) {
            return Err(Error::InvalidArgument(format!(
                "deadline_secs must be a positive number of seconds (got {})",
                self.deadline_secs
            )));
        }
        let every = self.reindex_interval();
        if !(every >= 0.0 && every.is_finite()) {
            return Err(Error::InvalidArgument(format!(
                "reindex_interval_secs must be 0 (off) or a positive number of seconds (got {every})"
            )));
        }
        if !(self.index_retain_secs >= 0.0 && self.index_retain_secs.is_finite()) {
            return Err(Error::InvalidArgument(format!(
                "index_retain_secs must be 0 or a positive number of seconds (got {})",
                self.index_retain_secs
            )));
        }
        if self.max_ticket_alerts == 0 || self.max_ticket_bytes == 0 || self.footer_cache_bytes == 0 {
            return Err(Error::InvalidArgument(
                "max_ticket_alerts, max_ticket_bytes and footer_cache_bytes must be positive".into(),
            ));
        }
        if self.sql.endpoint_bytes == 0 || self.sql.memory_bytes == 0 {
            return Err(Error::InvalidArgument(
                "sql.endpoint_bytes and sql.memory_bytes must be positive".into(),
            ));
        }
        if self.endpoint_bytes == 0 {
            return Err(Error::InvalidArgument("endpoint_bytes must be positive".into()));
        }
        if self.fits.header_read_bytes < 2880
            || self.fits.concurrency == 0
            || self.fits.endpoint_hdus == 0
            || self.fits.max_gzip_bytes == 0
            || self.fits.max_section_bytes == 0
        {
            return Err(Error::InvalidArgument(
                "fits.header_read_bytes must be at least 2880 (one FITS block); fits.concurrency, fits.endpoint_hdus, fits.max_gzip_bytes and fits.max_section_bytes must be positive".into(),
            ));
        }
        for a in &self.advertise {
            let ok = a
                .strip_prefix("grpc://")
                .or_else(|| a.strip_prefix("grpc+tcp://"))
                .or_else(|| a.strip_prefix("grpc+tls://"))
                .and_then(|rest| rest.rsplit_once(':'))
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !ok {
                return Err(Error::InvalidArgument(format!(
                    "advertise entry {a:?} is not an address such as grpc://host:8815"
                )));
            }
        }
        self.validate_operations()?;
        let mut names = std::collections::HashSet::new();
        let mut index_roots = std::collections::HashMap::new();
        for d in &self.datasets {
            if let Some(r) = &d.index_root {
                let key = r.trim_end_matches('/');
                if let Some(other) = index_roots.insert(key.to_string(), d.name.clone()) {
                    return Err(Error::InvalidArgument(format!(
                        "datasets {other:?} and {:?} have the same index_root {r:?}; each dataset publishes its own index (e.g. .../{{dataset}})",
                        d.name
                    )));
                }
            }
            if d.name.is_empty()
                || !d
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(Error::InvalidArgument(format!(
                    "dataset name {:?} is invalid: use letters, digits, '_' and '-'",
                    d.name
                )));
            }
            if d.kind == DatasetKind::Fits && d.class.is_some() {
                return Err(Error::InvalidArgument(format!(
                    "dataset {:?}: `class` is an option of alert datasets, not of kind = \"fits\"",
                    d.name
                )));
            }
            match (&d.index_root, d.kind, self.index_role) {
                (Some(_), DatasetKind::Fits, _) => {
                    return Err(Error::InvalidArgument(format!(
                        "dataset {:?}: index_root is an option of alert datasets; a FITS dataset's header catalog is not published (every server reads the headers itself)",
                        d.name
                    )))
                }
                (None, DatasetKind::Ztf | DatasetKind::Lsst, IndexRole::Follow) => {
                    return Err(Error::InvalidArgument(format!(
                        "dataset {:?}: index_role = \"follow\" loads each alert dataset's index from its index_root, and this dataset has none (set index_root to where its builder publishes)",
                        d.name
                    )))
                }
                (Some(r), _, IndexRole::Build) if r.starts_with("http://") || r.starts_with("https://") => {
                    return Err(Error::InvalidArgument(format!(
                        "dataset {:?}: index_root {r:?} is HTTP, which a builder cannot write; publish to file://, s3:// or hdfs:// (followers may read it over HTTP)",
                        d.name
                    )))
                }
                _ => {}
            }
            if !names.insert(d.name.as_str()) {
                return Err(Error::InvalidArgument(format!(
                    "dataset {:?} is configured twice",
                    d.name
                )));
            }
        }
        Ok(())
    }

    /// The production tables: TLS, auth, grants, limits, telemetry.
    fn validate_operations(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        let secs = |name: &str, v: f64, zero_ok: bool| -> Result<()> {
            if v.is_finite() && (v > 0.0 || (zero_ok && v == 0.0)) {
                Ok(())
            } else {
                Err(Error::InvalidArgument(format!(
                    "{name} must be a positive number of seconds{} (got {v})",
                    if zero_ok { " or 0" } else { "" }
                )))
            }
        };
        secs("shutdown_grace_secs", self.shutdown_grace_secs, true)?;
        if let Some(t) = &self.tls {
            secs("tls.reload_secs", t.reload_secs, false)?;
            secs("tls.handshake_timeout_secs", t.handshake_timeout_secs, false)?;
        }
        if let Some(a) = &self.auth {
            if a.tokens_file.is_none()
                && a.users_file.is_none()
                && self.tls.as_ref().is_none_or(|t| t.client_ca.is_none())
            {
                return bad(
                    "[auth] needs tokens_file or users_file (or tls.client_ca): otherwise nobody could sign in".into(),
                );
            }
            secs("auth.session_secs", a.session_secs, false)?;
            secs("auth.reload_secs", a.reload_secs, false)?;
        }
        for g in &self.grants {
            if g.identity.trim().is_empty() {
                return bad("a [[grant]] has an empty identity".into());
            }
            for d in &g.datasets {
                if d != "*" && !self.datasets.iter().any(|c| &c.name == d) {
                    return bad(format!(
                        "the [[grant]] of {:?} names dataset {d:?}, which is not configured",
                        g.identity
                    ));
                }
            }
        }
        let l = &self.limits;
        if l.max_streams == 0
            || l.max_streams_per_identity == 0
            || l.max_ticket_ids == 0
            || l.max_calls_per_connection == 0
        {
            return bad("limits.max_streams, limits.max_streams_per_identity, limits.max_ticket_ids and limits.max_calls_per_connection must be positive".into());
        }
        if l.max_ticket_ids > astroflight_proto::MAX_IDS_PER_TICKET {
            return bad(format!(
                "limits.max_ticket_ids is at most {} (the ticket decoder's own bound; got {})",
                astroflight_proto::MAX_IDS_PER_TICKET,
                l.max_ticket_ids
            ));
        }
        if l.max_message_bytes < 1024 {
            return bad(format!(
                "limits.max_message_bytes must be at least 1024 (got {})",
                l.max_message_bytes
            ));
        }
        if let Some(m) = self.max_memory_bytes {
            if m < MIN_MEMORY_BYTES {
                return bad(format!(
                    "max_memory_bytes must be at least {MIN_MEMORY_BYTES} (64 MiB; got {m})"
                ));
            }
        }
        if l.max_request_memory_bytes.is_some_and(|r| r < 1 << 20)
            || l.max_value_bytes < 1024
            || l.max_expression_batch_bytes < 1024
        {
            return bad("limits.max_request_memory_bytes must be at least 1 MiB, limits.max_value_bytes and limits.max_expression_batch_bytes at least 1024".into());
        }
        secs("limits.queue_secs", l.queue_secs, true)?;
        secs("limits.keepalive_secs", l.keepalive_secs, true)?;
        secs("limits.keepalive_timeout_secs", l.keepalive_timeout_secs, false)?;
        let t = &self.telemetry;
        if let Some(e) = &t.otlp_endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) || url::Url::parse(e).is_err() {
                return bad(format!(
                    "telemetry.otlp_endpoint {e:?} is not a URL such as http://127.0.0.1:4317"
                ));
            }
        }
        if let Some(p) = &t.prometheus_listen {
            if p.parse::<std::net::SocketAddr>().is_err() {
                return bad(format!(
                    "telemetry.prometheus_listen {p:?} is not an address such as 127.0.0.1:9464"
                ));
            }
        }
        if let Some(i) = t.export_interval_secs {
            secs("telemetry.export_interval_secs", i, false)?;
        }
        Ok(())
    }

    /// Whether callers are identified (and grants apply): `[auth]` or mutual TLS is configured.
    pub fn access_controlled(&self) -> bool {
        self.auth.is_some() || self.tls.as_ref().is_some_and(|t| t.client_ca.is_some())
    }

    pub fn dataset(&self, name: &str) -> Option<&DatasetConfig> {
        self.datasets.iter().find(|d| d.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_resolve_and_override() {
        let c = Config::parse(
            r#"
            listen = "127.0.0.1:9000"
            index_dir = "idx"
            [[dataset]]
            name = "ztf"
            kind = "ztf"
            root = "lake/ztf"
            [[dataset]]
            name = "lsst"
            kind = "lsst"
            root = "file:///data/lsst"
            "#,
            Path::new("/etc/af"),
        )
        .unwrap();
        assert_eq!(c.index_dir, PathBuf::from("/etc/af/idx"));
        assert_eq!(c.datasets[0].root, "/etc/af/lake/ztf");
        assert_eq!(c.datasets[1].root, "file:///data/lsst");
        assert_eq!(c.datasets[1].kind, DatasetKind::Lsst);
        assert!(c.index_on_start);
        let mut c = c;
        c.apply_env(|k| (k == "ASTROFLIGHT_LISTEN").then(|| "127.0.0.1:1".to_string()));
        assert_eq!(c.listen, "127.0.0.1:1");
        assert_eq!(Config::default().listen, DEFAULT_LISTEN);
    }

    #[test]
    fn bad_configs_say_why() {
        let e = |t: &str| Config::parse(t, Path::new(".")).unwrap_err().to_string();
        assert!(e("lisen = 1").contains("unknown field `lisen`"));
        assert!(e("[[dataset]]\nname='a'\nkind='fit'\nroot='x'").contains("unknown variant `fit`"));
        assert!(e("[[dataset]]\nname='a'\nkind='fits'\nroot='x'\nclass='c'").contains("not of kind = \"fits\""));
        assert!(e("[fits]\nheader_read_bytes = 100").contains("header_read_bytes"));
        assert!(e("[[dataset]]\nname='a/b'\nkind='ztf'\nroot='x'").contains("invalid"));
        assert!(
            e("[[dataset]]\nname='a'\nkind='ztf'\nroot='x'\n[[dataset]]\nname='a'\nkind='ztf'\nroot='y'")
                .contains("twice")
        );
        assert!(e("deadline_secs = 0\n[[dataset]]\nname='a'\nkind='ztf'\nroot='x'").contains("deadline_secs"));
        assert!(e("reindex_action = 'sometimes'").contains("unknown variant `sometimes`"));
        assert!(e("max_ticket_alerts = 0").contains("max_ticket_alerts"));
        assert!(e("reindex_interval_secs = -1").contains("reindex_interval_secs"));
        assert!(e("index_role = 'lead'").contains("unknown variant `lead`"));
        assert!(e("index_role = 'follow'\n[[dataset]]\nname='a'\nkind='ztf'\nroot='x'")
            .contains("has none (set index_root"));
        assert!(e("[[dataset]]\nname='a'\nkind='ztf'\nroot='x'\nindex_root='https://h/ix'").contains("cannot write"));
        assert!(e("[[dataset]]\nname='a'\nkind='fits'\nroot='x'\nindex_root='ix'").contains("not published"));
        assert!(e("index_retain_secs = -5").contains("index_retain_secs"));
        assert!(e("[[dataset]]\nname='a'\nkind='ztf'\nroot='x'\nindex_root='s3://b/ix'\n[[dataset]]\nname='b'\nkind='ztf'\nroot='y'\nindex_root='s3://b/ix/'").contains("the same index_root"));
    }

    #[test]
    fn followers_have_their_own_defaults_and_index_roots_resolve_like_roots() {
        let c = Config::parse(
            "index_role = 'follow'\n[[dataset]]\nname='a'\nkind='ztf'\nroot='lake'\nindex_root='published/a'\n[[dataset]]\nname='b'\nkind='ztf'\nroot='s3://b/lake'\nindex_root='https://cdn.example/ix/b'",
            Path::new("/etc/af"),
        )
        .unwrap();
        assert_eq!(
            (c.index_role, c.reindex_interval(), c.index_retain_secs),
            (IndexRole::Follow, 30.0, 3600.0)
        );
        assert_eq!(c.datasets[0].index_root.as_deref(), Some("/etc/af/published/a"));
        assert_eq!(c.datasets[1].index_root.as_deref(), Some("https://cdn.example/ix/b"));
        let b = Config::parse("reindex_interval_secs = 0\nindex_role = 'follow'", Path::new(".")).unwrap();
        assert_eq!(b.reindex_interval(), 0.0, "an explicit value wins");
        assert_eq!(Config::default().reindex_interval(), 0.0);
        assert_eq!(Config::default().index_role, IndexRole::Build);
    }

    #[test]
    fn the_deploy_example_parses() {
        let c = Config::parse(
            include_str!("../../deploy/astroflight.toml"),
            Path::new("/etc/astroflight"),
        )
        .unwrap();
        assert_eq!(c.datasets.len(), 2);
        assert_eq!(c.deadline_secs, 120.0);
        assert_eq!(c.reindex_action, ReindexAction::Local);
        assert_eq!(c.reindex_interval(), 3600.0);
        assert!(!c.publish_roots);
    }

    #[test]
    fn storage_options_parse_and_secrets_stay_hidden() {
        let c = Config::parse(
            r#"
            [[dataset]]
            name = "ztf"
            kind = "ztf"
            root = "s3://bucket/lake"
            endpoint = "http://127.0.0.1:9000"
            access_key_id = "AKIDEXAMPLE"
            secret_access_key = "very-secret-value"
            allow_http = true
            retries = 2
            [[dataset]]
            name = "fink"
            kind = "ztf"
            root = "hdfs://ns/user/fink"
            [dataset.hdfs]
            "dfs.ha.namenodes.ns" = "nn1,nn2"
            "#,
            Path::new("."),
        )
        .unwrap();
        let s3 = &c.datasets[0];
        assert_eq!(s3.secret_access_key.as_ref().unwrap().expose(), "very-secret-value");
        assert_eq!(s3.retries, Some(2));
        assert_eq!(c.datasets[1].hdfs["dfs.ha.namenodes.ns"], "nn1,nn2");
        let dump = format!("{c:?}");
        assert!(!dump.contains("very-secret-value"), "{dump}");
        assert!(dump.contains("AKIDEXAMPLE"));
    }
}
