//! DataFusion as a client of astroflight's Flight SQL service: the server's `ztf` table is
//! registered in a local DataFusion session as a remote table
//! (`astroflight_client::datafusion::FlightSqlTable`, one partition per endpoint) and joined with a
//! local table; the result equals the same join run by DataFusion directly on the files.

mod common;

use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use astroflight_client::datafusion::FlightSqlTable;
use astroflight_gen::{generate, GenOptions};
use astroflight_index::SurveyKind;
use astroflight_server::config::DatasetKind;
use common::*;
use datafusion::datasource::MemTable;
use datafusion::prelude::{ParquetReadOptions, SessionContext};

/// (label, count, sum of candids) per label, sorted.
async fn labelled(ctx: &SessionContext) -> Vec<(String, i64, i64)> {
    let batches = ctx
        .sql(
            "SELECT w.label, count(*) AS n, sum(r.candid) AS s FROM remote r JOIN watch w ON r.\"objectId\" = w.\"objectId\" \
             WHERE r.magpsf > 0 GROUP BY w.label ORDER BY w.label",
        )
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let mut out = Vec::new();
    for b in &batches {
        for i in 0..b.num_rows() {
            out.push((
                b.column(0).as_string::<i32>().value(i).to_string(),
                b.column(1).as_primitive::<Int64Type>().value(i),
                b.column(2).as_primitive::<Int64Type>().value(i),
            ));
        }
    }
    out
}

/// A local table naming some objects.
fn watch(objects: &[String]) -> Arc<MemTable> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("objectId", DataType::Utf8, false),
        Field::new("label", DataType::Utf8, false),
    ]));
    let labels: Vec<String> = (0..objects.len()).map(|i| format!("group{}", i % 3)).collect();
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(objects.to_vec())),
            Arc::new(StringArray::from(labels)),
        ],
    )
    .unwrap();
    Arc::new(MemTable::try_new(schema, vec![vec![batch]]).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datafusion_joins_astroflight_as_a_remote_table_with_a_local_one() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("ztf");
    generate(&GenOptions {
        survey: SurveyKind::Ztf,
        out: lake.clone(),
        nights: 3,
        files_per_night: 2,
        alerts_per_file: 60,
        ..Default::default()
    })
    .unwrap();
    let mut config = config(&[("ztf", DatasetKind::Ztf, &lake)], &dir.path().join("index"));
    config.sql.endpoint_bytes = 20_000; // every file its own endpoint
    let server = Server::start_with(config).await;
    let url = format!("grpc://{}", server.addr);

    // Direct: DataFusion on the files.
    let direct = SessionContext::new();
    direct
        .register_parquet("files", lake.to_str().unwrap(), ParquetReadOptions::default())
        .await
        .unwrap();
    let ids = direct
        .sql("SELECT DISTINCT \"objectId\" FROM files ORDER BY \"objectId\" LIMIT 40")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let objects: Vec<String> = ids
        .iter()
        .flat_map(|b| {
            let col = arrow::compute::cast(b.column(0), &DataType::Utf8).unwrap();
            col.as_string::<i32>()
                .iter()
                .map(|s| s.unwrap().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(objects.len(), 40);
    direct.register_table("watch", watch(&objects)).unwrap();
    direct
        .sql("CREATE VIEW remote AS SELECT \"objectId\", candid, candidate.magpsf AS magpsf FROM files")
        .await
        .unwrap();
    let want = labelled(&direct).await;

    // Through astroflight: the remote table, one partition per endpoint.
    let remote = FlightSqlTable::try_new(&url, "SELECT objectId, candid, candidate.magpsf AS magpsf FROM ztf")
        .await
        .unwrap();
    let ctx = SessionContext::new();
    ctx.register_table("remote", Arc::new(remote)).unwrap();
    ctx.register_table("watch", watch(&objects)).unwrap();
    let plan = ctx
        .sql("EXPLAIN SELECT count(*) FROM remote")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let text = arrow::util::pretty::pretty_format_batches(&plan).unwrap().to_string();
    assert!(text.contains("FlightSqlExec: 6 endpoints"), "{text}");
    let got = labelled(&ctx).await;
    assert_eq!(got.len(), 3);
    assert_eq!(got, want);
    server.stop().await;
}
