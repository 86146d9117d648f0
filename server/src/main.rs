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
    },
    /// Bring the index of every configured dataset up to date (the server must not be running
    /// on the same index_dir; use the `reindex` action then).
    Index {
        #[arg(long)]
        config: Option<PathBuf>,
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
        #[arg(short = 'o', long, default_value = ".")]
        out: PathBuf,
    },
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
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
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
            if let Some(l) = listen {
                cfg.listen = l;
            }
            if no_index {
                cfg.index_on_start = false;
            }
            let app = App::build(cfg).await?;
            println!("astroflight listening on {}", app.local_addr());
            std::io::stdout().flush()?;
            // Readiness for scripts: a line once the first index build of every dataset ended.
            let lake = app.lake().clone();
            tokio::spawn(async move {
                lake.ready().await;
                println!("astroflight ready");
                let _ = std::io::stdout().flush();
            });
            app.run_until_stopped().await?;
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
        Cmd::Index { config } => {
            let cfg = Config::load(config.as_deref())?;
            if cfg.datasets.is_empty() {
                return Err("the configuration names no [[dataset]]".into());
            }
            let lake = Lake::open(&cfg)?;
            let mut failed = 0;
            for (name, result) in lake.reindex().await {
                let s = match result {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("{name}: index not updated (the previous index is kept): {e}");
                        failed += 1;
                        continue;
                    }
                };
                println!(
                    "{name}: {} files listed, {} indexed, {} unchanged, {} removed, {} repaired, {} alerts written, {} failed",
                    s.listed,
                    s.indexed,
                    s.unchanged,
                    s.removed,
                    s.repaired,
                    s.rows,
                    s.failed.len()
                );
                for (path, err) in &s.failed {
                    eprintln!("  not indexed: {path}: {err}");
                }
                failed += s.failed.len();
            }
            lake.flush()?;
            Ok(if failed > 0 {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            })
        }
        Cmd::Cutout {
            server,
            dataset,
            objects,
            candids,
            dia_sources,
            all,
            kind,
            format,
            out,
        } => {
            let ticket = astroflight_proto::CutoutTicket {
                dataset,
                object_ids: objects,
                candids,
                dia_source_ids: dia_sources,
                kind: parse_kind(&kind)? as i32,
                format: parse_format(&format)? as i32,
                all,
            };
            let req: CutoutRequest = ticket.validate()?;
            std::fs::create_dir_all(&out)?;
            let mut client = Client::connect(&server).await?;
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
            .map(|d| DatasetConfig::new(d.name, DatasetKind::of_survey(d.survey), d.root.to_string_lossy()))
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
