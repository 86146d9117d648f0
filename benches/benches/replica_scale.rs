//! A follower of a published index at lake scale: a builder indexes an id-only lake of `ALERTS`
//! alerts (default 20 M, ZTF-shaped) and publishes it to a local `index_root`, which is then
//! copied to S3 when `S3_ENDPOINT` is set (as `benches/run_replica_scale.sh` does with moto: a
//! dataset's storage options serve its root and its index_root alike, and the lake stays on the
//! local disk here); then, each in a process of its own, a follower server starts on that
//! index_root (its dataset root on S3 too, never read: the lake requests it makes are counted)
//! and the builder's server restarts on its own index (no build at start), and both answer the
//! same `SAMPLES` candid lookups.
//!
//!     bash benches/run_replica_scale.sh                 # 20 M alerts, index_root on moto S3
//!     ALERTS=5000000 bash benches/run_replica_scale.sh
//!
//! Reported: the build and publication, the follower's time to ready (the real server: App,
//! `index_role = "follow"`, the `ready` it reports), the lake requests it made before ready
//! (must be 0: its lake store is counted), the bytes it downloaded, and the peak RSS (VmHWM) of
//! each server process, so that the follower's footprint is compared with the builder's.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use astroflight_index::SurveyKind;
use astroflight_server::config::{Config, DatasetConfig, DatasetKind, IndexRole, Secret};
use astroflight_server::App;

#[allow(dead_code)]
mod common;
use common::{data_root, env, id_lake, status_mb};

fn dataset(root: &str, index_root: &str) -> DatasetConfig {
    let mut d = DatasetConfig::new("ztf", DatasetKind::Ztf, root);
    d.index_root = Some(index_root.to_string());
    if let (Some(endpoint), true) = (std::env::var("S3_ENDPOINT").ok(), index_root.starts_with("s3://")) {
        d.endpoint = Some(endpoint);
        d.region = Some("us-east-1".into());
        d.access_key_id = Some("testing".into());
        d.secret_access_key = Some(Secret::new("testing"));
        d.allow_http = Some(true);
    }
    d
}

fn config(index_dir: &Path, root: &str, index_root: &str, role: IndexRole) -> Config {
    Config {
        listen: "127.0.0.1:0".into(),
        index_dir: index_dir.to_path_buf(),
        index_role: role,
        datasets: vec![dataset(root, index_root)],
        ..Config::default()
    }
}

/// Every `every`-th candid of the lake's first file (the lookups both sides answer).
fn sample_candids(lake: &Path, n: usize) -> Vec<i64> {
    use arrow::array::AsArray;
    use arrow::datatypes::Int64Type;
    let f = &astroflight_gen::lake_files(lake)[0];
    let r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(f).unwrap())
        .unwrap()
        .with_batch_size(65_536)
        .build()
        .unwrap();
    let all: Vec<i64> = r
        .flat_map(|b| b.unwrap().column(1).as_primitive::<Int64Type>().values().to_vec())
        .collect();
    let step = (all.len() / n.max(1)).max(1);
    all.into_iter().step_by(step).take(n).collect()
}

/// A child process: the follower server, or the restarted builder's index; prints one line.
fn child(role: &str) {
    let lake = PathBuf::from(std::env::var("LAKE").unwrap());
    let index_dir = PathBuf::from(std::env::var("INDEX_DIR").unwrap());
    let index_root = std::env::var("INDEX_ROOT").unwrap();
    let root = std::env::var("ROOT").unwrap();
    let samples = sample_candids(&lake, env("SAMPLES", 2000) as usize);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let base = status_mb("VmRSS:");
    // Both are the real server: a follower, or the builder restarted on its own index_dir (no
    // build at start), so that their footprints compare process for process.
    let (ready_s, lake_requests, found) = rt.block_on(async {
        let mut c = if role == "follower" {
            config(&index_dir, &root, &index_root, IndexRole::Follow)
        } else {
            // It published to a local folder (the copy on S3 is the followers').
            config(
                &index_dir,
                &lake.to_string_lossy(),
                &std::env::var("PUBLISHED").unwrap(),
                IndexRole::Build,
            )
        };
        c.index_on_start = role == "follower";
        let t = Instant::now();
        let app = App::build(c).await.unwrap();
        let lake_handle = app.lake().clone();
        let (_addr, stop, join) = app.spawn();
        lake_handle.ready().await;
        let ready = t.elapsed().as_secs_f64();
        let requests = lake_handle.io.snapshot().requests;
        let ix = &lake_handle.dataset("ztf").unwrap().index;
        let found = samples.iter().filter(|c| ix.candid(**c).unwrap().is_some()).count();
        stop.stop();
        join.await.unwrap().unwrap();
        (ready, requests, found)
    });
    println!(
        "{role} ready_s={ready_s:.3} lake_requests={lake_requests} found={found}/{} peak_rss_mb={:.0} rss_before_mb={base:.0}",
        samples.len(),
        status_mb("VmHWM:")
    );
}

/// Copy a local published index to an S3 index_root, object by object.
async fn copy_to(local: &Path, index_root: &str) {
    use object_store::ObjectStoreExt;
    let d = dataset("s3://unused/x", index_root);
    let store = astroflight_server::storage::open_index_root(&d, index_root, false)
        .unwrap()
        .store;
    let mut stack = vec![local.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let rel = p.strip_prefix(local).unwrap().to_string_lossy().into_owned();
            let bytes = std::fs::read(&p).unwrap();
            store
                .put(&object_store::path::Path::from(rel), bytes.into())
                .await
                .unwrap();
        }
    }
}

fn field(line: &str, key: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or("?")
        .to_string()
}

fn main() {
    if let Ok(role) = std::env::var("REPLICA_ROLE") {
        return child(&role);
    }
    let alerts = env("ALERTS", 20_000_000);
    let per_file = env("ALERTS_PER_FILE", 1_000_000).min(alerts) as u32;
    let files = alerts.div_ceil(per_file as u64) as u32;
    let root = data_root();
    let lake = id_lake(&root, SurveyKind::Ztf, files, per_file);
    let work = root.join("replica-scale");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let published = work.join("published").to_string_lossy().into_owned();
    let lake_root = lake.to_string_lossy().into_owned();
    let (root, index_root) = match std::env::var("S3_BUCKET") {
        Ok(b) => (
            format!("s3://{b}/lake-not-read"),
            format!("s3://{b}/index-{alerts}-{}", std::process::id()),
        ),
        Err(_) => (lake_root.clone(), published.clone()),
    };
    let builder_dir = work.join("builder-index");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (build_s, uploaded) = rt.block_on(async {
        let lake_handle =
            astroflight_server::lake::Lake::open(&config(&builder_dir, &lake_root, &published, IndexRole::Build))
                .unwrap();
        let t = Instant::now();
        let out = lake_handle.reindex().await;
        let (_, r) = &out[0];
        let r = r.as_ref().expect("build");
        let published = r.published.as_ref().unwrap().as_ref().expect("published");
        (t.elapsed().as_secs_f64(), published.bytes_uploaded)
    });
    let builder_peak = status_mb("VmHWM:");
    let copy_s = if index_root.starts_with("s3://") {
        let t = Instant::now();
        rt.block_on(copy_to(&work.join("published"), &index_root));
        Some(t.elapsed().as_secs_f64())
    } else {
        None
    };
    let run = |role: &str, dir: &Path| {
        let out = Command::new(std::env::current_exe().unwrap())
            .env("REPLICA_ROLE", role)
            .env("LAKE", &lake)
            .env("INDEX_DIR", dir)
            .env("INDEX_ROOT", &index_root)
            .env("ROOT", &root)
            .env("PUBLISHED", &published)
            .output()
            .unwrap();
        assert!(out.status.success(), "{role}: {}", String::from_utf8_lossy(&out.stderr));
        let line = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .to_string();
        println!("{line}");
        line
    };
    let f = run("follower", &work.join("follower-index"));
    let b = run("builder", &builder_dir);
    let f_again = run("follower", &work.join("follower-index"));
    println!();
    println!(
        "| measure | {} M alerts, index_root on {} |",
        alerts / 1_000_000,
        if index_root.starts_with("s3://") {
            "S3 (moto)"
        } else {
            "a local folder"
        }
    );
    println!("|---|---|");
    println!(
        "| build + publish (one go) | {build_s:.1} s, {:.0} MB published, builder peak RSS {builder_peak:.0} MB |",
        uploaded as f64 / 1e6
    );
    if let Some(c) = copy_s {
        println!("| copy of the published index to S3 (moto) | {c:.1} s |");
    }
    println!(
        "| follower: start to ready (first start: downloads the index) | {} s |",
        field(&f, "ready_s")
    );
    println!(
        "| follower: restart to ready (its index_dir cache is current) | {} s |",
        field(&f_again, "ready_s")
    );
    println!(
        "| follower: lake requests before ready | {} |",
        field(&f, "lake_requests")
    );
    println!(
        "| candid lookups answered (follower / builder) | {} / {} |",
        field(&f, "found"),
        field(&b, "found")
    );
    println!(
        "| builder's server restarted on its own index: start to ready | {} s |",
        field(&b, "ready_s")
    );
    println!(
        "| peak RSS, start + lookups: follower server / builder server | {} / {} MB |",
        field(&f, "peak_rss_mb"),
        field(&b, "peak_rss_mb")
    );
}
