//! Index scale: build rate, bytes on disk per alert, and lookup latency (latest alert, all
//! alerts, candid) on an index of millions of alerts, with the index larger than its cache.
//! Projects the figures to Fink's ~500 million alerts.
//!
//!     bash benches/run_index_scale.sh            # 10 million alerts (the floor)
//!     ALERTS=2000000 bash benches/run_index_scale.sh
//!
//! The lake holds the id columns only (`astroflight-gen`'s ids-only mode), written once into
//! `bench-data-index/` and reused. Lookups run on a cold process-level cache: the index is
//! reopened with `INDEX_CACHE_MB` (default 64) of cache, far below its size on disk.
//!
//! `INCREMENTAL=1` builds the index as a lake grows: one file lands, one incremental build runs,
//! the index is closed, and so on (as `astroflight index` runs after each night). sled's memory
//! while building grows with what one build writes, so this is how an index of 10 million alerts
//! can be built on this machine at all; the build rate is the total over all builds.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use astroflight_gen::generate_ids_only;
use astroflight_index::{Index, IndexBuilder, SurveyKind};
use object_store::local::LocalFileSystem;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn dir_bytes(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                dir_bytes(&e.path())
            } else {
                m.len()
            }
        })
        .sum()
}

fn pct(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * q).round() as usize]
}

fn main() {
    // `cargo bench` passes --bench; this program takes its settings from the environment.
    let alerts = env("ALERTS", 10_000_000);
    let per_file = env("ALERTS_PER_FILE", 1_000_000).min(alerts);
    let files = alerts.div_ceil(per_file) as u32;
    let cache_mb = env("INDEX_CACHE_MB", 64);
    let samples = env("SAMPLES", 20_000) as usize;
    let root = std::path::PathBuf::from(std::env::var("DATA").unwrap_or_else(|_| "bench-data-index".into()));
    let lake = root.join(format!("lake-{alerts}-{per_file}"));
    if !lake.join("done").exists() {
        let _ = std::fs::remove_dir_all(&lake);
        let t = Instant::now();
        generate_ids_only(&lake, files, per_file as u32, 7).expect("generate");
        std::fs::write(lake.join("done"), b"").unwrap();
        eprintln!(
            "generated {files} id-only files ({alerts} alerts) in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    let lake_bytes = dir_bytes(&lake);
    let ix_dir = root.join(format!("index-{alerts}"));
    let _ = std::fs::remove_dir_all(&ix_dir);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();

    // Build, as the server does (local store, 4 files in flight).
    let incremental = std::env::var("INCREMENTAL").is_ok_and(|v| v == "1");
    let build = |root: &Path| {
        let index = Index::open_with_cache(&ix_dir, cache_mb << 20)
            .map_err(|e| e.to_string())
            .unwrap();
        let ds = index.dataset("ztf").unwrap();
        let store = Arc::new(LocalFileSystem::new_with_prefix(root).unwrap());
        let stats = rt
            .block_on(IndexBuilder::new(store, None, SurveyKind::Ztf, ds.clone()).run())
            .unwrap();
        index.flush().unwrap();
        stats.rows
    };
    let t = Instant::now();
    let rows = if incremental {
        // The lake grows a file at a time: a view holding the first k files, one build each.
        let view = root.join(format!("view-{alerts}-{per_file}"));
        let _ = std::fs::remove_dir_all(&view);
        let files_sorted = astroflight_gen::lake_files(&lake);
        let mut rows = 0;
        for (k, f) in files_sorted.iter().enumerate() {
            let rel = f.strip_prefix(&lake).unwrap();
            std::fs::create_dir_all(view.join(rel).parent().unwrap()).unwrap();
            std::fs::hard_link(f, view.join(rel)).unwrap();
            rows += build(&view);
            eprintln!(
                "build {} of {}: {rows} alerts indexed, {:.0} s",
                k + 1,
                files_sorted.len(),
                t.elapsed().as_secs_f64()
            );
        }
        let _ = std::fs::remove_dir_all(&view);
        rows
    } else {
        build(&lake)
    };
    let build_s = t.elapsed().as_secs_f64();
    assert_eq!(rows, alerts);
    let disk = dir_bytes(&ix_dir);

    // Lookups on a freshly opened index with a small cache.
    let index = Index::open_with_cache(&ix_dir, cache_mb << 20)
        .map_err(|e| e.to_string())
        .unwrap();
    let ds = index.dataset("ztf").unwrap();
    let n_objects = (alerts / 3).max(1);
    let mut rng = astroflight_gen::Rng::new(99);
    let objects: Vec<String> = (0..samples)
        .map(|_| astroflight_gen::ztf_object_id(rng.below(n_objects)))
        .collect();
    let candids: Vec<i64> = (0..samples)
        .map(|_| {
            let f = rng.below(files as u64) as i64;
            1_100_000_000_000_000_000 + f * 100_000_000 + rng.below(per_file) as i64
        })
        .collect();
    let time = |f: &mut dyn FnMut(usize) -> usize| {
        let mut lat = Vec::with_capacity(samples);
        let mut found = 0;
        for i in 0..samples {
            let t = Instant::now();
            found += f(i);
            lat.push(t.elapsed().as_secs_f64() * 1e6);
        }
        (lat, found)
    };
    let (mut latest, f1) = time(&mut |i| ds.latest_alert(&objects[i]).unwrap().is_some() as usize);
    let (mut all, f2) = time(&mut |i| ds.object_alerts(&objects[i]).unwrap().len());
    let (mut cand, f3) = time(&mut |i| ds.candid(candids[i]).unwrap().is_some() as usize);
    assert!(
        f1 > samples / 2 && f3 == samples,
        "lookups find the alerts ({f1}, {f3})"
    );

    let rate = alerts as f64 / build_s;
    let per_alert = disk as f64 / alerts as f64;
    println!(
        "index scale: {alerts} alerts in {files} files ({:.0} MB of id columns), index cache {cache_mb} MiB",
        lake_bytes as f64 / 1e6
    );
    println!("| measure | figure | target | at 500 M alerts |");
    println!("|---|---|---|---|");
    println!(
        "| build rate | {:.0} alerts/s ({build_s:.1} s) | >= 300,000 alerts/s | {:.1} h for a full build |",
        rate,
        500e6 / rate / 3600.0
    );
    println!(
        "| index on disk | {:.0} bytes/alert ({:.2} GB) | <= 100 bytes/alert | {:.0} GB |",
        per_alert,
        disk as f64 / 1e9,
        per_alert * 500e6 / 1e9
    );
    for (name, v) in [
        ("latest alert", &mut latest),
        ("all alerts", &mut all),
        ("candid", &mut cand),
    ] {
        let (p50, p99) = (pct(v, 0.5), pct(v, 0.99));
        println!("| lookup: {name} | p50 {p50:.1} us, p99 {p99:.1} us | p50 <= 20 us, p99 <= 200 us | (depends on cache hit rate) |");
    }
    println!(
        "(all alerts: {:.1} alerts per object on average)",
        f2 as f64 / samples as f64
    );
    let _ = std::fs::remove_dir_all(&ix_dir);
}
