//! The read path of one cutout without gRPC: plan (index lookup) and execute (footer from the
//! cache, page reads through the offset index, decode) on a Spark-like 2,500-alert file, for
//! each output format. Throughput is one stamp per iteration.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use futures::TryStreamExt;

use astroflight_gen::{generate, GenOptions};
use astroflight_index::SurveyKind;
use astroflight_proto::{Command, CutoutRequest, Selector, StampFormat, StampKind};
use astroflight_server::config::{Config, DatasetConfig, DatasetKind};
use astroflight_server::lake::Lake;
use astroflight_server::storage::IoStats;
use astroflight_server::tickets;

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let lake_dir = dir.path().join("lake");
    let files = generate(&GenOptions {
        survey: SurveyKind::Ztf,
        out: lake_dir.clone(),
        nights: 1,
        files_per_night: 1,
        alerts_per_file: 2500,
        ..Default::default()
    })
    .unwrap();
    let mut config = Config {
        index_dir: dir.path().join("index"),
        ..Config::default()
    };
    config
        .datasets
        .push(DatasetConfig::new("ztf", DatasetKind::Ztf, lake_dir.to_string_lossy()));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let lake = Arc::new(Lake::open(&config).unwrap());
    for (name, result) in rt.block_on(lake.reindex()) {
        result.unwrap_or_else(|e| panic!("indexing {name}: {e}"));
    }
    let ds = lake.dataset("ztf").unwrap();
    let candids: Vec<i64> = {
        let f = ds.index.catalog().files().unwrap();
        assert_eq!(f.len(), files.len());
        // Every candid of the file, through the object index.
        let mut v = Vec::new();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            std::fs::File::open(&files[0].path).unwrap(),
        )
        .unwrap();
        let mask = parquet::arrow::ProjectionMask::columns(reader.parquet_schema(), ["candid"]);
        for b in reader.with_projection(mask).build().unwrap() {
            let b = b.unwrap();
            let a = b
                .column(0)
                .as_any()
                .downcast_ref::<arrow::array::Int64Array>()
                .unwrap()
                .clone();
            v.extend(a.values().iter().copied());
        }
        v
    };

    let mut g = c.benchmark_group("page_read");
    g.throughput(Throughput::Elements(1));
    let cases = [
        (StampKind::Science, StampFormat::Gzip),
        (StampKind::Science, StampFormat::Fits),
        (StampKind::Science, StampFormat::Array),
        (StampKind::All, StampFormat::Fits),
    ];
    for (kind, format) in cases {
        let mut i = 0usize;
        g.bench_function(format!("one_alert_{}_{}", kind.name(), format.name()), |b| {
            b.iter(|| {
                i = (i + 373) % candids.len();
                let req = CutoutRequest {
                    dataset: "ztf".into(),
                    selector: Selector::Candids {
                        candids: vec![candids[i]],
                        object_id: None,
                    },
                    kind,
                    format,
                    hdu: 0,
                };
                let out: Vec<_> = rt
                    .block_on(async {
                        let io = Arc::new(IoStats::default());
                        let plan = tickets::plan(&lake, Command::Cutout(req), b"", false, &io).await?;
                        plan.execute(io).try_collect().await
                    })
                    .unwrap();
                assert_eq!(out.iter().map(|b| b.num_rows()).sum::<usize>(), kind.expand().len());
                out
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
