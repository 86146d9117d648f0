//! The `astroflight` binary: serve, gen, index, cutout.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float32Type, Int32Type, Int64Type};
use clap::{Parser, Subcommand, ValueEnum};
use futures::TryStreamExt;

use astroflight_client::{Client, CutoutRequest, Selector};
use astroflight_gen::{self as gen, demo, GenOptions, LsstSchema};
use astroflight_index::SurveyKind;
use astroflight_proto::json::{parse_format, parse_kind};
use astroflight_server::config::{DatasetConfig, DatasetKind};
use astroflight_server::lake::Lake;
use astroflight_server::{App, Config};

/// mimalloc keeps freed pages for reuse: with the system allocator every cutout's multi-MB page
/// buffers went back to the OS and were faulted in (and zeroed) again by the next request, which
/// cost more than reading the pages.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "astroflight",
    version,
    about = "Arrow Flight service for astronomical alert lakes"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the datasets of a configuration; with none, a demo lake it generates and indexes.
    Serve {
        /// Configuration file (default: $ASTROFLIGHT_CONFIG, else the demo lake).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Address to listen on (overrides the file and $ASTROFLIGHT_LISTEN).
        #[arg(long)]
        listen: Option<String>,
        /// Where the demo lake lives (default: $ASTROFLIGHT_DEMO_DIR, else ./astroflight-demo).
        #[arg(long)]
        demo_dir: Option<PathBuf>,
        /// Alerts per demo file (3 nights x 2 files per survey).
        #[arg(long, default_value_t = demo::DEMO_ALERTS_PER_FILE)]
        demo_alerts_per_file: u32,
        /// Do not bring the index up to date before serving.
        #[arg(long)]
        no_index: bool,
    },
    /// Generate a Fink-like alert lake (year=/month=/day= parquet files).
    Gen {
        #[arg(long, value_enum, default_value_t = Survey::Ztf)]
        survey: Survey,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 3)]
        nights: u32,
        #[arg(long, default_value_t = 2)]
        files_per_night: u32,
        #[arg(long, default_value_t = 2500)]
        alerts_per_file: u32,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Write files like old parquet-mr (no page index / offset index).
        #[arg(long)]
        no_page_index: bool,
        /// Rubin schema version.
        #[arg(long, value_enum, default_value_t = RubinSchema::V9_0)]
        lsst_schema: RubinSchema,
        /// Stamp side in pixels (default: ZTF 63, Rubin 51); smaller keeps big lakes small.
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
        stamp_side: Option<u16>,
    },
    /// Generate a folder of FITS files (images with WCS, multi-extension files, binary and
    /// ASCII tables, gzipped files) for a `kind = "fits"` dataset.
    GenFits {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 12)]
        files: usize,
        /// Image side in pixels.
        #[arg(long, default_value_t = 256)]
        side: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Validate a configuration and reach every root, TLS file, credentials file and collector
    /// it names, without serving or writing anything; exits 1 if anything fails.
    Check {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Validate the configuration only (no file, storage or network access) and print it,
        /// resolved, as JSON.
        #[arg(long)]
        offline: bool,
    },
    /// Ask a server's gRPC health service (plain TCP: `listen`, or `health_listen` when
    /// `listen` is TLS); exits 0 when SERVING. For container health checks.
    Health {
        #[arg(long, default_value = "grpc://127.0.0.1:8815")]
        server: String,
        /// The service: "" (readiness), "liveness", or a dataset name.
        #[arg(long, default_value = "")]
        service: String,
    },
    /// Print the argon2id hash of a password read from standard input, for `users_file`.
    HashPassword,
    /// Bring the index of every configured dataset up to date (the server must not be running
    /// on the same index_dir; use the `reindex` action then).
    Index {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Build nothing: print every entry of each dataset's index, file ids replaced by paths
        /// (two indexes of the same lake print the same lines).
        #[arg(long)]
        dump: bool,
    },
    /// Fetch cutouts from a server and write them as files.
    Cutout {
        #[arg(long, default_value = "grpc://127.0.0.1:8815")]
        server: String,
        #[arg(long)]
        dataset: String,
        /// ZTF objectId (repeatable).
        #[arg(long = "object")]
        objects: Vec<String>,
        /// ZTF candid (repeatable; with one --object, the alert must be that object's).
        #[arg(long = "candid")]
        candids: Vec<i64>,
        /// Rubin diaSourceId (repeatable).
        #[arg(long = "dia-source")]
        dia_sources: Vec<i64>,
        /// Every alert of each object instead of the latest.
        #[arg(long)]
        all: bool,
        /// Science, Template, Difference or All.
        #[arg(long, default_value = "All")]
        kind: String,
        /// fits (FITS files), gzip (bytes as stored), or array (.npy float32 files).
        #[arg(long, default_value = "fits")]
        format: String,
        /// With --format array: the HDU of each stamp decoded (Rubin stamps: 0 image,
        /// 1 uncertainty, 2 PSF).
        #[arg(long, default_value_t = 0)]
        hdu: u32,
        #[arg(short = 'o', long, default_value = ".")]
        out: PathBuf,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Pull an alert batch query into a folder of parquet files: endpoints in parallel, with a
    /// progress bar, resumable (re-run the same command to finish an interrupted transfer).
    Transfer(TransferArgs),
}

/// How the client commands reach a server with TLS or `[auth]`.
#[derive(clap::Args)]
struct ConnectArgs {
    /// Bearer token for a server with [auth] (sent on every call; never saved in a plan).
    #[arg(long, env = "ASTROFLIGHT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PEM CA certificates of a grpc+tls:// server (default: the system's CAs).
    #[arg(long, env = "ASTROFLIGHT_TLS_CA")]
    tls_ca: Option<PathBuf>,
}

impl ConnectArgs {
    fn options(&self) -> AnyResult<astroflight_client::ConnectOptions> {
        Ok(astroflight_client::ConnectOptions {
            token: self.token.clone().filter(|t| !t.is_empty()),
            tls_ca_pem: match &self.tls_ca {
                Some(p) => Some(std::fs::read(p).map_err(|e| format!("cannot read --tls-ca {}: {e}", p.display()))?),
                None => None,
            },
        })
    }
}

#[derive(clap::Args)]
struct TransferArgs {
    #[arg(long, default_value = "grpc://127.0.0.1:8815")]
    server: String,
    #[command(flatten)]
    connect: ConnectArgs,
    #[arg(long)]
    dataset: Option<String>,
    /// Nights: 2019-09-03, 2019-09-03..2019-09-05 (inclusive), or a comma-separated list.
    #[arg(long)]
    nights: Option<String>,
    /// Start of the time window (a night or a UTC instant; instead of --nights).
    #[arg(long)]
    from: Option<String>,
    /// End of the time window (a night is included whole; an instant is excluded).
    #[arg(long)]
    to: Option<String>,
    /// A class to keep (repeatable).
    #[arg(long = "class")]
    classes: Vec<String>,
    /// Conditions, Fink style: SQL, `;` or newline separated (repeatable; all must hold).
    #[arg(long = "where")]
    conditions: Vec<String>,
    /// lightcurve, cutouts, full or columns.
    #[arg(long, default_value = "lightcurve")]
    content: String,
    /// Columns (comma-separated) for --content columns.
    #[arg(long, value_delimiter = ',')]
    columns: Vec<String>,
    /// Stamp format: fits, gzip or array.
    #[arg(long)]
    stamps: Option<String>,
    #[arg(long)]
    limit: Option<u64>,
    /// Count the matching alerts exactly before pulling (reads the conditions' columns).
    #[arg(long)]
    exact: bool,
    /// Arrow IPC compression of the streams: lz4 or zstd (for slow links).
    #[arg(long)]
    compression: Option<String>,
    /// Output folder.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Folders, Hive style as Fink's transfer client writes them: time
    /// (year=YYYY/month=MM/day=DD/), class (class=<class>/) or none.
    #[arg(long, value_enum, default_value_t = PartitionArg::Time)]
    partition_by: PartitionArg,
    /// Plan only: write the plan to this file and pull nothing.
    #[arg(long, conflicts_with = "plan")]
    plan_out: Option<PathBuf>,
    /// Pull a plan saved with --plan-out (the query options must then be left out).
    #[arg(long, conflicts_with_all = ["dataset", "nights", "from", "to", "classes", "conditions", "columns", "stamps", "limit", "exact", "compression"])]
    plan: Option<PathBuf>,
    /// Endpoints pulled at once.
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PartitionArg {
    Time,
    Class,
    None,
}

#[derive(Clone, Copy, ValueEnum)]
enum Survey {
    Ztf,
    Lsst,
}

#[derive(Clone, Copy, ValueEnum)]
enum RubinSchema {
    #[value(name = "v9_0")]
    V9_0,
    #[value(name = "v10_0")]
    V10_0,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `serve` sets up its logging (text or JSON) and telemetry from its configuration.
    if !matches!(cli.cmd, Cmd::Serve { .. }) {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
            .with_writer(std::io::stderr)
            .init();
    }
    // An idle worker gives the allocator's free memory back (see memory::on_park).
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(astroflight_server::memory::on_park)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli.cmd)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

async fn run(cmd: Cmd) -> AnyResult<ExitCode> {
    match cmd {
        Cmd::Serve {
            config,
            listen,
            demo_dir,
            demo_alerts_per_file,
            no_index,
        } => {
            let is_demo = config.is_none() && std::env::var_os("ASTROFLIGHT_CONFIG").is_none();
            let mut telemetry = None;
            if is_demo {
                let mut env = Config::default();
                env.apply_env(|k| std::env::var(k).ok());
                telemetry = Some(astroflight_server::telemetry::install(&env.telemetry, env.log_format).await?);
            }
            let mut cfg = if is_demo {
                let dir = demo_dir.unwrap_or_else(demo::default_dir);
                let d = dir.clone();
                let datasets = tokio::task::spawn_blocking(move || demo::prepare(&d, demo_alerts_per_file)).await??;
                let cfg = demo_config(&dir, &datasets);
                if demo_alerts_per_file == demo::DEMO_ALERTS_PER_FILE {
                    eprintln!(
                        "demo lake in {}: try {{\"cutout\": {{\"dataset\": \"ztf\", \"objectId\": \"{}\"}}}} or {{\"cutout\": {{\"dataset\": \"lsst\", \"diaSourceId\": {}}}}}",
                        dir.display(),
                        demo::DEMO_OBJECT_ID,
                        demo::DEMO_DIA_SOURCE_ID
                    );
                }
                cfg
            } else {
                Config::load(config.as_deref())?
            };
            if telemetry.is_none() {
                telemetry = Some(astroflight_server::telemetry::install(&cfg.telemetry, cfg.log_format).await?);
            }
            if let Some(l) = listen {
                cfg.listen = l;
            }
            if no_index {
                cfg.index_on_start = false;
            }
            let app = App::build(cfg).await?;
            if let Some(addr) = telemetry.as_ref().and_then(|t| t.prometheus_addr()) {
                println!("astroflight metrics on http://{addr}/metrics");
            }
            if let Some(addr) = app.health_addr() {
                println!("astroflight health on {addr}");
            }
            println!("astroflight listening on {}", app.local_addr());
            std::io::stdout().flush()?;
            // Readiness for scripts: a line once the first index build of every dataset ended.
            let lake = app.lake().clone();
            tokio::spawn(async move {
                lake.ready().await;
                println!("astroflight ready");
                let _ = std::io::stdout().flush();
            });
            let served = app.run_until_stopped().await;
            if let Some(t) = telemetry {
                t.shutdown().await;
            }
            served?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::GenFits { out, files, side, seed } => {
            let opts = gen::fitslake::FitsLakeOptions {
                out: out.clone(),
                files,
                side,
                seed,
            };
            let written = tokio::task::spawn_blocking(move || gen::fitslake::generate_fits_lake(&opts)).await??;
            println!("wrote {} FITS files to {}", written.len(), out.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Gen {
            survey,
            out,
            nights,
            files_per_night,
            alerts_per_file,
            seed,
            no_page_index,
            lsst_schema,
            stamp_side,
        } => {
            let opts = GenOptions {
                survey: match survey {
                    Survey::Ztf => SurveyKind::Ztf,
                    Survey::Lsst => SurveyKind::Lsst,
                },
                out,
                nights,
                files_per_night,
                alerts_per_file,
                seed,
                page_index: !no_page_index,
                lsst_schema: match lsst_schema {
                    RubinSchema::V9_0 => LsstSchema::V9_0,
                    RubinSchema::V10_0 => LsstSchema::V10_0,
                },
                stamp_side: stamp_side.map(usize::from),
                ..Default::default()
            };
            let started = std::time::Instant::now();
            let files = tokio::task::spawn_blocking(move || gen::generate(&opts)).await??;
            let bytes: u64 = files.iter().map(|f| f.bytes).sum();
            for f in &files {
                println!("{}\t{} alerts\t{} bytes", f.path.display(), f.alerts, f.bytes);
            }
            println!(
                "generated {} files, {} alerts, {:.1} MB in {:.1} s",
                files.len(),
                files.iter().map(|f| f.alerts as u64).sum::<u64>(),
                bytes as f64 / 1e6,
                started.elapsed().as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Health { server, service } => {
            use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
            let url = server
                .replacen("grpc://", "http://", 1)
                .replacen("grpc+tcp://", "http://", 1);
            let channel = tonic::transport::Endpoint::from_shared(url)?
                .connect_timeout(std::time::Duration::from_secs(5))
                .timeout(std::time::Duration::from_secs(5))
                .connect()
                .await?;
            let status = HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: service.clone(),
                })
                .await?
                .into_inner()
                .status();
            println!(
                "{}: {}",
                if service.is_empty() { "(server)" } else { &service },
                status.as_str_name()
            );
            Ok(
                if status == tonic_health::pb::health_check_response::ServingStatus::Serving {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                },
            )
        }
        Cmd::Check { config, offline } => {
            let cfg = Config::load(config.as_deref())?;
            if offline {
                println!("{}", astroflight_server::check::summary(&cfg));
                println!("configuration valid");
                return Ok(ExitCode::SUCCESS);
            }
            let findings = astroflight_server::check::check(&cfg).await;
            for f in &findings {
                println!("{f}");
            }
            let failed = findings.iter().filter(|f| !f.ok).count();
            if failed > 0 {
                println!("{failed} of {} checks failed", findings.len());
                return Ok(ExitCode::FAILURE);
            }
            println!("all {} checks passed", findings.len());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::HashPassword => {
            let mut password = String::new();
            std::io::stdin().read_line(&mut password)?;
            let password = password.trim_end_matches(['\r', '\n']);
            if password.is_empty() {
                return Err("no password on standard input".into());
            }
            println!("{}", astroflight_server::auth::hash_password(password)?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Index { config, dump } => {
            let cfg = Config::load(config.as_deref())?;
            if cfg.datasets.is_empty() {
                return Err("the configuration names no [[dataset]]".into());
            }
            let lake = Lake::open(&cfg)?;
            if dump {
                let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                for d in lake.datasets() {
                    for line in d.index.canonical_dump()? {
                        writeln!(out, "{} {line}", d.name)?;
                    }
                }
                out.flush()?;
                return Ok(ExitCode::SUCCESS);
            }
            let mut failed = 0;
            for (name, result) in lake.reindex().await {
                let r = match result {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!("{name}: index not updated (the previous index is kept): {e}");
                        failed += 1;
                        continue;
                    }
                };
                if let Some(s) = &r.build {
                    println!(
                        "{name}: {} files listed, {} indexed, {} unchanged, {} removed, {} repaired, {} alerts written, {} failed, {} segments merged",
                        s.listed,
                        s.indexed,
                        s.unchanged,
                        s.removed,
                        s.repaired,
                        s.rows,
                        s.failed.len(),
                        s.merged
                    );
                    for (path, err) in &s.failed {
                        eprintln!("  not indexed: {path}: {err}");
                    }
                    failed += s.failed.len();
                }
                match &r.published {
                    Some(Ok(p)) => match &p.published {
                        Some(id) => println!(
                            "{name}: published {id} ({} segments, {} bytes uploaded; {} old generations deleted)",
                            p.segments_uploaded, p.bytes_uploaded, p.generations_deleted
                        ),
                        None => println!("{name}: the published index is up to date"),
                    },
                    Some(Err(e)) => {
                        eprintln!("{name}: the index could not be published: {e}");
                        failed += 1;
                    }
                    None => {}
                }
                if let Some(l) = &r.loaded {
                    match &l.installed {
                        Some(id) => println!(
                            "{name}: loaded {id} ({} segments, {} bytes downloaded)",
                            l.segments_downloaded, l.bytes_downloaded
                        ),
                        None => println!("{name}: the newest published generation is loaded already"),
                    }
                }
            }
            lake.flush()?;
            Ok(if failed > 0 {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            })
        }
        Cmd::Transfer(args) => transfer(args, cli_server_given()).await,
        Cmd::Cutout {
            server,
            dataset,
            objects,
            candids,
            dia_sources,
            all,
            kind,
            format,
            hdu,
            out,
            connect,
        } => {
            let ticket = astroflight_proto::CutoutTicket {
                dataset,
                object_ids: objects,
                candids,
                dia_source_ids: dia_sources,
                kind: parse_kind(&kind)? as i32,
                format: parse_format(&format)? as i32,
                all,
                hdu,
            };
            let req: CutoutRequest = ticket.validate()?;
            std::fs::create_dir_all(&out)?;
            let mut client = Client::connect_with(&server, &connect.options()?).await?;
            let mut stream = client.cutouts(&req).await?;
            let mut n = 0;
            while let Some(batch) = stream.try_next().await? {
                n += write_stamps(&batch, &req, &out)?;
            }
            println!("wrote {n} files to {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The configuration of the demo lake: its datasets, and its index in `dir/index`.
fn demo_config(dir: &Path, datasets: &[demo::DemoDataset]) -> Config {
    let mut config = Config {
        datasets: datasets
            .iter()
            .map(|d| {
                let kind = d.survey.map_or(DatasetKind::Fits, DatasetKind::of_survey);
                DatasetConfig::new(d.name, kind, d.root.to_string_lossy())
            })
            .collect(),
        index_dir: dir.join("index"),
        ..Config::default()
    };
    config.apply_env(|k| std::env::var(k).ok());
    config
}

/// A file name made from ids the server sent: only ASCII letters, digits, `-`, `_` and `.`
/// (anything else becomes `_`), never starting with a dot, at most 200 bytes. Whatever the
/// server sends, the name is one plain component: no separator, no `..`, no absolute path.
fn safe_file_name(parts: &[&str], ext: &str) -> String {
    let mut name: String = parts
        .join("_")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    name.truncate(200);
    if name.is_empty() || name.starts_with('.') {
        name.insert(0, '_');
    }
    format!("{name}.{ext}")
}

/// Write each row of a cutout batch as a file; returns how many were written.
fn write_stamps(batch: &arrow::record_batch::RecordBatch, req: &CutoutRequest, out: &Path) -> AnyResult<usize> {
    let kinds = batch.column_by_name("kind").ok_or("no kind column")?.as_string::<i32>();
    let name = |i: usize, ext: &str| -> AnyResult<std::path::PathBuf> {
        let file = match &req.selector {
            Selector::DiaSources { .. } => {
                let id = batch
                    .column_by_name("diaSourceId")
                    .ok_or("no diaSourceId")?
                    .as_primitive::<Int64Type>();
                safe_file_name(&[&id.value(i).to_string(), kinds.value(i)], ext)
            }
            _ => {
                let oid = batch
                    .column_by_name("objectId")
                    .ok_or("no objectId")?
                    .as_string::<i32>();
                let cand = batch
                    .column_by_name("candid")
                    .ok_or("no candid")?
                    .as_primitive::<Int64Type>();
                safe_file_name(&[oid.value(i), &cand.value(i).to_string(), kinds.value(i)], ext)
            }
        };
        Ok(out.join(file))
    };
    let mut n = 0;
    if let Some(stamps) = batch.column_by_name("stamp") {
        let stamps = stamps.as_binary::<i32>();
        let ext = if req.format == astroflight_proto::StampFormat::Gzip {
            "fits.gz"
        } else {
            "fits"
        };
        for i in 0..batch.num_rows() {
            if stamps.is_valid(i) {
                std::fs::write(name(i, ext)?, stamps.value(i))?;
                n += 1;
            }
        }
    } else {
        let px = batch.column_by_name("pixels").ok_or("no pixels")?.as_list::<i32>();
        let w = batch
            .column_by_name("width")
            .ok_or("no width")?
            .as_primitive::<Int32Type>();
        let h = batch
            .column_by_name("height")
            .ok_or("no height")?
            .as_primitive::<Int32Type>();
        for i in 0..batch.num_rows() {
            if px.is_valid(i) {
                let values = px.value(i);
                let values = values.as_primitive::<Float32Type>();
                std::fs::write(
                    name(i, "npy")?,
                    npy_f32(h.value(i) as usize, w.value(i) as usize, values.values()),
                )?;
                n += 1;
            }
        }
    }
    Ok(n)
}

/// A NumPy .npy (version 1.0) file of a float32 2-D array.
fn npy_f32(rows: usize, cols: usize, v: &[f32]) -> Vec<u8> {
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat(total.div_ceil(64) * 64 - total));
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// Whether --server was given on the command line (a saved plan keeps its own server otherwise).
fn cli_server_given() -> bool {
    std::env::args().any(|a| a == "--server" || a.starts_with("--server="))
}

/// The `{"alerts": {...}}` command of the transfer options.
fn transfer_query(a: &TransferArgs) -> AnyResult<serde_json::Value> {
    let dataset = a
        .dataset
        .clone()
        .ok_or("--dataset is required (or --plan FILE to pull a saved plan)")?;
    let mut q = serde_json::Map::new();
    q.insert("dataset".into(), dataset.into());
    if let Some(n) = &a.nights {
        let nights = astroflight_client::transfer::expand_nights(n)?;
        q.insert("nights".into(), nights.into());
    }
    if let Some(f) = &a.from {
        q.insert("from".into(), f.clone().into());
    }
    if let Some(t) = &a.to {
        q.insert("to".into(), t.clone().into());
    }
    if !a.classes.is_empty() {
        q.insert("classes".into(), a.classes.clone().into());
    }
    if !a.conditions.is_empty() {
        q.insert("where".into(), a.conditions.join("; ").into());
    }
    q.insert("content".into(), a.content.clone().into());
    if !a.columns.is_empty() {
        q.insert("columns".into(), a.columns.clone().into());
    }
    if let Some(s) = &a.stamps {
        q.insert("stamps".into(), s.clone().into());
    }
    if let Some(l) = a.limit {
        q.insert("limit".into(), l.into());
    }
    if a.exact {
        q.insert("exact".into(), true.into());
    }
    if let Some(c) = &a.compression {
        q.insert("compression".into(), c.clone().into());
    }
    Ok(serde_json::json!({ "alerts": q }))
}

async fn transfer(a: TransferArgs, server_given: bool) -> AnyResult<ExitCode> {
    use astroflight_client::transfer::{self as t, PartitionBy, PullOptions, TransferPlan};
    let partition_by = match a.partition_by {
        PartitionArg::Time => PartitionBy::Time,
        PartitionArg::Class => PartitionBy::Class,
        PartitionArg::None => PartitionBy::None,
    };
    let out = a.out.clone();
    if out.is_none() && a.plan_out.is_none() {
        return Err("--out DIR is required (or --plan-out FILE to only plan)".into());
    }
    let saved_state = out.as_ref().map(|o| o.join(".astroflight").join("plan.json"));
    let plan = if let Some(file) = &a.plan {
        let plan = TransferPlan::load(file)?;
        if partition_by != plan.partition_by && std::env::args().any(|x| x.starts_with("--partition-by")) {
            return Err(format!(
                "the plan {} is partitioned by {:?}; leave out --partition-by",
                file.display(),
                plan.partition_by
            )
            .into());
        }
        plan
    } else {
        let query = transfer_query(&a)?;
        // A re-run of the same command resumes the plan saved in the folder rather than planning
        // again (the lake may have grown; the finished endpoints are those of the first plan).
        match saved_state.as_ref().filter(|p| p.exists()) {
            Some(p) => {
                let saved = TransferPlan::load(p)?;
                let mut asked = query.clone();
                if let Some(ann) = partition_by.annotation() {
                    asked["alerts"]["annotate"] = serde_json::json!([ann]);
                }
                if saved.query != asked || saved.partition_by != partition_by {
                    return Err(format!(
                        "{} holds a transfer of another query ({}); use another --out, or delete it to start over",
                        out.as_ref().map(|o| o.display().to_string()).unwrap_or_default(),
                        saved.query
                    )
                    .into());
                }
                eprintln!("resuming the transfer planned in {}", p.display());
                saved
            }
            None => TransferPlan::create_with(&a.server, query, partition_by, &a.connect.options()?).await?,
        }
    };
    eprintln!("plan: {}", plan.describe());
    if let Some(file) = &a.plan_out {
        plan.save(file)?;
        eprintln!(
            "plan written to {}; pull it with: astroflight transfer --plan {} --out DIR",
            file.display(),
            file.display()
        );
        if out.is_none() {
            return Ok(ExitCode::SUCCESS);
        }
    }
    let Some(out) = out else { return Ok(ExitCode::SUCCESS) };
    let opts = PullOptions {
        out: out.clone(),
        parallel: a.parallel,
        progress: !a.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        server: (a.plan.is_some() && server_given).then(|| a.server.clone()),
        connect: a.connect.options()?,
    };
    let s = t::pull(&plan, &opts).await?;
    eprintln!(
        "{}: {} alerts, {} received in {:.1} s ({:.0} alerts/s); {} endpoint(s) pulled, {} already done, {} failed; {} alerts in the folder",
        out.display(),
        t::thousands(s.rows),
        t::human_bytes(s.bytes),
        s.seconds,
        s.rows as f64 / s.seconds.max(1e-9),
        s.pulled,
        s.skipped,
        s.failed,
        t::thousands(s.total_rows)
    );
    for e in &s.errors {
        eprintln!("error: {e}");
    }
    println!("{}", serde_json::to_string(&s)?);
    if s.failed > 0 {
        eprintln!("re-run the same command to pull the failed endpoints (finished ones are kept)");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use arrow::array::{BinaryArray, Int64Array, RecordBatch, StringArray};
    use arrow_schema::{DataType, Field, Schema};

    #[test]
    fn file_names_from_hostile_ids_stay_in_the_output_directory() {
        for hostile in [
            "../../etc/passwd",
            "/abs/path",
            "..",
            ".hidden",
            "a/b\\c",
            "",
            "\u{0}x",
            "ZTF\u{e9}",
        ] {
            let n = safe_file_name(&[hostile, "1", "Science"], "fits");
            assert!(
                !n.contains('/') && !n.contains('\\') && !n.starts_with('.'),
                "{hostile:?} -> {n}"
            );
            assert_eq!(std::path::Path::new(&n).components().count(), 1, "{n}");
        }
        assert_eq!(
            safe_file_name(&["ZTF20aabaesm", "1", "Science"], "fits"),
            "ZTF20aabaesm_1_Science.fits"
        );
        assert!(safe_file_name(&[&"x".repeat(10_000)], "fits").len() < 256);

        // A batch as a hostile server could send it: every file lands inside `out`.
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("objectId", DataType::Utf8, false),
            Field::new("candid", DataType::Int64, false),
            Field::new("kind", DataType::Utf8, false),
            Field::new("stamp", DataType::Binary, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["../escaped", "/tmp/abs"])),
                Arc::new(Int64Array::from(vec![1, 2])),
                Arc::new(StringArray::from(vec!["../../x", "Science"])),
                Arc::new(BinaryArray::from(vec![b"a".as_ref(), b"b".as_ref()])),
            ],
        )
        .unwrap();
        let req = CutoutRequest {
            dataset: "ztf".into(),
            selector: Selector::Candids {
                candids: vec![1, 2],
                object_id: None,
            },
            kind: astroflight_proto::StampKind::All,
            format: astroflight_proto::StampFormat::Fits,
            hdu: 0,
        };
        assert_eq!(write_stamps(&batch, &req, &out).unwrap(), 2);
        let mut written: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        written.sort();
        assert_eq!(written.len(), 2, "{written:?}");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "nothing written beside `out`"
        );
    }
}
