//! The segment layer of the id index at scale: build rate, bytes per alert, memory and lookup
//! latency of the id maps (`astroflight_index::idmap`) on an id-only lake with the shapes of the
//! real streams (`astroflight_gen::idlake`: ~10 alerts per object recurring over nights).
//!
//!     SURVEY=ztf ALERTS=10000000 cargo bench -p astroflight-benches --bench segment_scale
//!
//! The lake is written once into `DATA` (default the repository's `bench-data-index/`). The build reads the id
//! columns of every file (parquet decode included, as an index build does) and writes one
//! segment, sorting in `SORT_MB` (default 256) of memory. Lookups: `SAMPLES` random objects and
//! ids, warm (the segment's pages in memory) and cold (dropped from the mapping with
//! `madvise(DONTNEED)` and from the page cache with `posix_fadvise(DONTNEED)` before each lookup:
//! every block and index page it touches is read from the disk).
//!
//! This measures the layer before it is wired into the index: it is the evidence for the
//! segment layout, not the index's end-to-end figure (that is `run_index_scale.sh`).

use std::path::Path;
use std::time::Instant;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float64Type, Int64Type};
use astroflight_index::idmap::{AlertIds, SegmentBuilder, SegmentSet};
use astroflight_index::objkey::ObjectKey;
use astroflight_index::segment::Segment;
use astroflight_index::SurveyKind;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;

mod common;
use common::{data_root, drop_cache, env, id_lake, pct, status_mb, survey};

/// Every alert of a file: (id, group, time) in row order.
fn read_ids(path: &Path, kind: SurveyKind, mut f: impl FnMut(i64, u64, f64)) {
    let b = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap()).unwrap();
    let mask = ProjectionMask::all();
    for batch in b.with_projection(mask).with_batch_size(65_536).build().unwrap() {
        let batch = batch.unwrap();
        match kind {
            SurveyKind::Ztf => {
                let names = batch.column(0).as_string::<i32>();
                let ids = batch.column(1).as_primitive::<Int64Type>();
                let times = batch.column(2).as_struct().column(0).as_primitive::<Float64Type>();
                for i in 0..batch.num_rows() {
                    let t = if times.is_null(i) { f64::NAN } else { times.value(i) };
                    f(ids.value(i), ObjectKey::of(names.value(i)).0, t);
                }
            }
            SurveyKind::Lsst => {
                let s = batch.column(0).as_struct();
                let ids = s.column(0).as_primitive::<Int64Type>();
                let objects = s.column(1).as_primitive::<Int64Type>();
                let times = s.column(2).as_primitive::<Float64Type>();
                for i in 0..batch.num_rows() {
                    f(
                        ids.value(i),
                        astroflight_index::idmap::id_key(objects.value(i)),
                        times.value(i),
                    );
                }
            }
        }
    }
}

fn main() {
    let kind = survey();
    let alerts = env("ALERTS", 10_000_000);
    let per_file = env("ALERTS_PER_FILE", 1_000_000).min(alerts) as u32;
    let files = alerts.div_ceil(per_file as u64) as u32;
    let samples = env("SAMPLES", 20_000) as usize;
    let sort_mb = env("SORT_MB", 256) as usize;
    let root = data_root();
    let lake_dir = id_lake(&root, kind, files, per_file);
    let paths = astroflight_gen::lake_files(&lake_dir);
    let work = root.join(format!("segments-{}-{alerts}", kind.name()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let seg_path = work.join("g1.seg");

    // Build: read every id column, write one segment.
    let hwm_before = status_mb("VmHWM:");
    let t = Instant::now();
    let mut b = SegmentBuilder::new(&seg_path, &work.join("scratch"), sort_mb << 20).unwrap();
    let mut ordinal = 0u64;
    // Keep a sample of what was indexed, for the lookups.
    let mut rng = astroflight_gen::Rng::new(5);
    let every = (alerts / samples as u64).max(1);
    let (mut groups, mut ids) = (Vec::with_capacity(samples), Vec::with_capacity(samples));
    for p in &paths {
        read_ids(p, kind, |id, group, time| {
            b.push(AlertIds {
                ordinal,
                id,
                group,
                time,
            })
            .unwrap();
            if rng.below(every) == 0 && groups.len() < samples {
                groups.push(group);
                ids.push(id);
            }
            ordinal += 1;
        });
    }
    let read_s = t.elapsed().as_secs_f64();
    let (bytes, n) = b.finish(b"").unwrap();
    let build_s = t.elapsed().as_secs_f64();
    assert_eq!(n, alerts);
    let hwm = status_mb("VmHWM:");

    let t = Instant::now();
    let seg = Segment::open(&seg_path).unwrap();
    let open_ms = t.elapsed().as_secs_f64() * 1e3;
    let set = SegmentSet::new(vec![seg]).unwrap();
    let live = |_: u64| true;
    let time = |cold: bool, f: &mut dyn FnMut(usize) -> usize| {
        let mut lat = Vec::with_capacity(groups.len());
        let mut found = 0;
        for i in 0..groups.len() {
            if cold {
                // Out of the process's mapping, then out of the page cache.
                set.segments()[0].drop_pages();
                drop_cache(&seg_path);
            }
            let t = Instant::now();
            found += f(i);
            lat.push(t.elapsed().as_secs_f64() * 1e6);
        }
        (lat, found)
    };
    // Warm the pages first (one pass), then measure.
    set.segments()[0].verify().unwrap();
    let mut rows = Vec::new();
    for cold in [false, true] {
        let (mut latest, f1) = time(cold, &mut |i| set.latest(groups[i], &live).unwrap().is_some() as usize);
        let (mut all, f2) = time(cold, &mut |i| set.group_alerts(groups[i], &live).unwrap().len());
        let (mut by_id, f3) = time(cold, &mut |i| set.by_id(ids[i], &live).unwrap().is_some() as usize);
        assert!(f1 == groups.len() && f3 == groups.len() && f2 >= groups.len());
        for (name, v) in [
            ("latest", &mut latest),
            ("all of an object", &mut all),
            ("by id", &mut by_id),
        ] {
            rows.push(format!(
                "| lookup {} ({name}) | p50 {:.1} us, p99 {:.1} us |",
                if cold { "cold" } else { "warm" },
                pct(v, 0.5),
                pct(v, 0.99)
            ));
        }
        if !cold {
            rows.push(format!(
                "| alerts per object looked up | {:.1} |",
                f2 as f64 / groups.len() as f64
            ));
        }
    }
    println!(
        "segment scale: {} lake, {alerts} alerts in {files} files, one segment, sort memory {sort_mb} MiB",
        kind.name()
    );
    println!("| measure | figure |");
    println!("|---|---|");
    println!(
        "| build (read id columns + write segment) | {:.0} alerts/s ({build_s:.1} s; reading {read_s:.1} s of it) |",
        alerts as f64 / build_s
    );
    println!(
        "| segment on disk | {:.2} bytes/alert ({:.1} MB) |",
        bytes as f64 / alerts as f64,
        bytes as f64 / 1e6
    );
    println!("| peak RSS of the process (VmHWM) | {hwm:.0} MB ({hwm_before:.0} MB before the build) |");
    println!("| open the segment | {open_ms:.2} ms |");
    for r in rows {
        println!("{r}");
    }
    for name in ["rows", "group", "id"] {
        let t = set.segments()[0].table(name).unwrap();
        println!(
            "| table {name} | {:.2} bytes/alert ({} rows in {} blocks) |",
            t.bytes() as f64 / alerts as f64,
            t.rows(),
            t.blocks()
        );
    }
    let _ = std::fs::remove_dir_all(&work);
}
