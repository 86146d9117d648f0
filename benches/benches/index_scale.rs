//! The id index at lake scale, end to end through `astroflight_index` (the builder the server
//! and `astroflight index` run, the lookups the tickets make): first build in one go, a nightly
//! build into it, bytes on disk per alert, peak memory, time to open, and lookups warm and cold.
//! Projects the costs per alert to Fink's ZTF history and a year of Rubin.
//!
//!     bash benches/run_index_scale.sh                    # 100 M ZTF-shaped alerts
//!     SURVEY=lsst ALERTS=20000000 bash benches/run_index_scale.sh
//!
//! The lake is id-only (`astroflight_gen::idlake`: the id shapes of the real streams, objects
//! recurring over nights, ~10 alerts each), written once into `DATA` (default the repository's
//! `bench-data-index/`) and reused. `ALERTS` alerts in files of `ALERTS_PER_FILE` form the lake
//! of the first build; the next `NIGHTLY` alerts (the following night's files) are the nightly
//! build. Peak RSS is the process's VmHWM over the builds (reset with `/proc/self/clear_refs`
//! after the lake is generated). Cold lookups drop the segments' pages from the mapping
//! (`madvise(DONTNEED)`) and the page cache (`posix_fadvise(DONTNEED)`) before each lookup.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use astroflight_index::{DatasetIndex, Index, IndexBuilder, SurveyKind};
use object_store::local::LocalFileSystem;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

mod common;
use common::{data_root, drop_cache, env, id_lake, pct, status_mb, survey};

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

/// Files under `dir` ending in `.seg`.
fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(segment_files(&p));
        } else if p.extension().is_some_and(|x| x == "seg") {
            out.push(p);
        }
    }
    out
}

/// Hard-link `files` of the lake into `view` (the lake as the server would see it).
fn link(lake: &Path, view: &Path, files: &[PathBuf]) {
    for f in files {
        let rel = f.strip_prefix(lake).unwrap();
        std::fs::create_dir_all(view.join(rel).parent().unwrap()).unwrap();
        let _ = std::fs::hard_link(f, view.join(rel));
    }
}

/// A sample of (objectId or diaObjectId, candid or diaSourceId) of a file.
fn sample_ids(path: &Path, kind: SurveyKind, every: usize, out: &mut Vec<(String, i64)>) {
    let b = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap()).unwrap();
    let mut i = 0usize;
    for batch in b.with_batch_size(65_536).build().unwrap() {
        let batch = batch.unwrap();
        for r in 0..batch.num_rows() {
            i += 1;
            if !i.is_multiple_of(every) {
                continue;
            }
            out.push(match kind {
                SurveyKind::Ztf => (
                    batch.column(0).as_string::<i32>().value(r).to_string(),
                    batch.column(1).as_primitive::<Int64Type>().value(r),
                ),
                SurveyKind::Lsst => {
                    let s = batch.column(0).as_struct();
                    (
                        s.column(1).as_primitive::<Int64Type>().value(r).to_string(),
                        s.column(0).as_primitive::<Int64Type>().value(r),
                    )
                }
            });
        }
    }
}

fn main() {
    let kind = survey();
    let alerts = env("ALERTS", 100_000_000);
    let per_file = env("ALERTS_PER_FILE", 1_000_000).min(alerts) as u32;
    let nightly = env("NIGHTLY", 1_000_000);
    let samples = env("SAMPLES", 5_000) as usize;
    let files = alerts.div_ceil(per_file as u64) as u32;
    let night_files = nightly.div_ceil(per_file as u64) as u32;
    let root = data_root();
    // The first build's files, then the night's: one lake, generated once.
    let lake = id_lake(&root, kind, files + night_files, per_file);
    let all_files = astroflight_gen::lake_files(&lake);
    let (base_files, night) = all_files.split_at(files as usize);
    let work = root.join(format!("index-scale-{}", kind.name()));
    let _ = std::fs::remove_dir_all(&work);
    let (view, ix_dir) = (work.join("lake"), work.join("index"));
    link(&lake, &view, base_files);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let build = |ds: &DatasetIndex| {
        let store = Arc::new(LocalFileSystem::new_with_prefix(&view).unwrap());
        rt.block_on(IndexBuilder::new(store, None, kind, ds.clone()).run())
            .unwrap()
    };

    // The first build, in one go, as `astroflight index` runs it on a lake.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let rss_before = status_mb("VmRSS:");
    let index = Index::open(&ix_dir).map_err(|e| e.to_string()).unwrap();
    let ds = index.dataset(kind.name()).unwrap();
    let t = Instant::now();
    let first = build(&ds);
    let first_s = t.elapsed().as_secs_f64();
    assert_eq!(first.rows, alerts);
    let first_hwm = status_mb("VmHWM:");

    // A new night lands: the next build reads its files only (and merges if a level fills).
    link(&lake, &view, night);
    let t = Instant::now();
    let second = build(&ds);
    let nightly_s = t.elapsed().as_secs_f64();
    assert_eq!((second.indexed, second.rows), (night.len(), nightly));
    let hwm = status_mb("VmHWM:");
    // The bound the README states (and issue 21 sets): whatever the lake's size.
    assert!(
        hwm <= 1500.0,
        "peak RSS of the builds {hwm:.0} MB is over the 1,500 MB bound"
    );
    let st = ds.index_stats();
    drop(ds);
    drop(index);
    let total = alerts + nightly;
    let disk = dir_bytes(&ix_dir);
    let seg_bytes: u64 = segment_files(&ix_dir)
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();

    // Reopen, as a restarted server does: sled's catalog and manifest, the segments mapped.
    let t = Instant::now();
    let index = Index::open(&ix_dir).map_err(|e| e.to_string()).unwrap();
    let ds = index.dataset(kind.name()).unwrap();
    let open_ms = t.elapsed().as_secs_f64() * 1e3;

    let mut ids = Vec::new();
    let every = ((per_file as usize * 2) / samples).max(1);
    for f in [&base_files[0], &base_files[base_files.len() / 2], &night[0]] {
        sample_ids(f, kind, every * 3 / 2, &mut ids);
    }
    ids.truncate(samples);
    let segs = segment_files(&ix_dir);
    let time = |cold: bool, f: &mut dyn FnMut(usize) -> usize| {
        let mut lat = Vec::with_capacity(ids.len());
        let mut found = 0;
        for i in 0..ids.len() {
            if cold {
                ds.drop_cached_pages();
                for p in &segs {
                    drop_cache(p);
                }
            }
            let t = Instant::now();
            found += f(i);
            lat.push(t.elapsed().as_secs_f64() * 1e6);
        }
        (lat, found)
    };
    let ztf = kind == SurveyKind::Ztf;
    let latest = |i: usize| -> usize {
        if ztf {
            ds.latest_alert(&ids[i].0).unwrap().is_some() as usize
        } else {
            ds.dia_object_sources(ids[i].0.parse().unwrap())
                .unwrap()
                .last()
                .is_some() as usize
        }
    };
    let all = |i: usize| -> usize {
        if ztf {
            ds.object_alerts(&ids[i].0).unwrap().len()
        } else {
            ds.dia_object_sources(ids[i].0.parse().unwrap()).unwrap().len()
        }
    };
    let by_id = |i: usize| -> usize {
        if ztf {
            ds.candid(ids[i].1).unwrap().is_some() as usize
        } else {
            ds.dia_source(ids[i].1).unwrap().is_some() as usize
        }
    };
    // One pass to warm the pages, then measured passes.
    time(false, &mut |i| all(i));
    let mut rows = Vec::new();
    let mut per_object = 0.0;
    for cold in [false, true] {
        let (mut l, f1) = time(cold, &mut |i| latest(i));
        let (mut a, f2) = time(cold, &mut |i| all(i));
        let (mut c, f3) = time(cold, &mut |i| by_id(i));
        assert!(
            f1 == ids.len() && f3 == ids.len(),
            "lookups find the alerts ({f1}, {f3} of {})",
            ids.len()
        );
        per_object = f2 as f64 / ids.len() as f64;
        let by = if ztf { "candid" } else { "diaSourceId" };
        let latest_name = if ztf {
            "latest alert"
        } else {
            "diaObject's sources (latest)"
        };
        for (name, v) in [(latest_name, &mut l), ("all alerts of an object", &mut a), (by, &mut c)] {
            rows.push(format!(
                "| lookup {}: {name} | p50 {:.1} us, p99 {:.1} us | {} |",
                if cold { "cold" } else { "warm" },
                pct(v, 0.5),
                pct(v, 0.99),
                if cold {
                    "p99 <= 1 ms"
                } else {
                    "p50 <= 5 us, p99 <= 50 us"
                }
            ));
        }
    }

    let rate = alerts as f64 / first_s;
    let per_alert = disk as f64 / total as f64;
    println!(
        "index scale: {} lake, {alerts} alerts in {files} files of {per_file}, then a night of {nightly}",
        kind.name()
    );
    println!("| measure | figure | target |");
    println!("|---|---|---|");
    println!("| first build, one go | {rate:.0} alerts/s ({first_s:.1} s) | >= 1,000,000 alerts/s |");
    println!(
        "| peak RSS of the process (VmHWM) | {first_hwm:.0} MB first build, {hwm:.0} MB with the nightly ({rss_before:.0} MB before) | <= 1,500 MB |"
    );
    println!(
        "| nightly build: {nightly} new alerts into {alerts} | {nightly_s:.2} s ({} merged) | <= 2 s |",
        second.merged
    );
    println!(
        "| bytes on disk per alert (everything under index_dir) | {per_alert:.2} ({:.2} in segments; {:.0} MB) | <= 16 |",
        seg_bytes as f64 / total as f64,
        disk as f64 / 1e6
    );
    println!(
        "| segments, generation | {} segments, generation {} | |",
        st.segments, st.generation
    );
    println!(
        "| open the index (sled + segments; what a restarted server does before ready) | {open_ms:.1} ms | <= 2 s |"
    );
    for r in rows {
        println!("{r}");
    }
    println!("(all alerts of an object: {per_object:.1} alerts on average)");
    println!();
    println!("Projected from the measured costs per alert (memory does not grow with the lake):");
    println!("| lake | alerts | index on disk | first build |");
    println!("|---|---|---|---|");
    for (name, n) in [
        ("Fink's ZTF history (Nov 2024)", 180e6),
        ("1 billion alerts", 1e9),
        ("a year of Rubin (10 M a night, 300 nights)", 3e9),
        ("10 billion alerts", 1e10),
    ] {
        println!(
            "| {name} | {:.2e} | {:.1} GB | {:.1} h |",
            n,
            n * per_alert / 1e9,
            n / rate / 3600.0
        );
    }
    let _ = std::fs::remove_dir_all(&work);
}
