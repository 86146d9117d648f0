//! Index lookups: latest alert of an object, all alerts of an object, alert by candid, on an
//! index of 100,000 alerts (20 files x 5,000) built by the real builder.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, StructArray};
use arrow::datatypes::{DataType, Field, Fields, Schema};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use object_store::local::LocalFileSystem;
use parquet::arrow::ArrowWriter;

use astroflight_gen::ztf_object_id;
use astroflight_index::{Index, IndexBuilder, SurveyKind};

const FILES: usize = 20;
const ROWS: usize = 5_000;
const OBJECTS: u64 = 30_000;

fn write_lake(dir: &std::path::Path) {
    let cand = Fields::from(vec![Field::new("jd", DataType::Float64, false)]);
    let schema = Arc::new(Schema::new(vec![
        Field::new("objectId", DataType::Utf8, false),
        Field::new("candid", DataType::Int64, false),
        Field::new("candidate", DataType::Struct(cand.clone()), false),
    ]));
    for f in 0..FILES {
        let ids: Vec<u64> = (0..ROWS).map(|i| ((f * ROWS + i) as u64 * 7919) % OBJECTS).collect();
        let jd: ArrayRef = Arc::new(Float64Array::from_iter_values(
            (0..ROWS).map(|i| 2459000.5 + f as f64 + i as f64 * 1e-5),
        ));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from_iter_values(ids.iter().map(|o| ztf_object_id(*o)))),
                Arc::new(Int64Array::from_iter_values(
                    (0..ROWS).map(|i| 1_000_000_000_000 + (f * ROWS + i) as i64),
                )),
                Arc::new(StructArray::new(cand.clone(), vec![jd], None)),
            ],
        )
        .unwrap();
        let mut w = ArrowWriter::try_new(
            std::fs::File::create(dir.join(format!("part-{f:05}.parquet"))).unwrap(),
            schema.clone(),
            None,
        )
        .unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    }
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    write_lake(dir.path());
    let index = Index::open(&dir.path().join("index")).unwrap();
    let ds = index.dataset("ztf").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
    let stats = rt
        .block_on(IndexBuilder::new(store, None, SurveyKind::Ztf, ds.clone()).run())
        .unwrap();
    assert_eq!(stats.rows as usize, FILES * ROWS);

    let mut g = c.benchmark_group("index_lookup");
    g.throughput(Throughput::Elements(1));
    let mut n = 0u64;
    g.bench_function("latest_alert_by_objectId", |b| {
        b.iter(|| {
            n = (n + 7) % OBJECTS;
            ds.latest_alert(&ztf_object_id(n)).unwrap().unwrap()
        })
    });
    g.bench_function("all_alerts_by_objectId", |b| {
        b.iter(|| {
            n = (n + 7) % OBJECTS;
            ds.object_alerts(&ztf_object_id(n)).unwrap()
        })
    });
    let mut k = 0i64;
    g.bench_function("alert_by_candid", |b| {
        b.iter(|| {
            k = (k + 7919) % (FILES * ROWS) as i64;
            ds.candid(1_000_000_000_000 + k).unwrap().unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
