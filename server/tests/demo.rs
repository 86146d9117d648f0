//! The embedded default: the demo lake `serve` builds with no configuration holds the ids the
//! README quotes, and serves them; a second start re-reads nothing.

mod common;

use std::path::Path;

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use arrow_flight::FlightClient;
use astroflight_gen::demo::{self, DEMO_ALERTS_PER_FILE, DEMO_CANDID, DEMO_DIA_SOURCE_ID, DEMO_OBJECT_ID};
use astroflight_server::config::{Config, DatasetConfig, DatasetKind};
use astroflight_server::App;
use common::get;

/// The demo configuration, as the binary builds it.
fn demo_config(dir: &Path) -> Config {
    let datasets = demo::prepare(dir, DEMO_ALERTS_PER_FILE).unwrap();
    let mut config = Config {
        listen: "127.0.0.1:0".into(),
        index_dir: dir.join("index"),
        ..Config::default()
    };
    config.datasets = datasets
        .iter()
        .map(|d| {
            let kind = d.survey.map_or(DatasetKind::Fits, DatasetKind::of_survey);
            DatasetConfig::new(d.name, kind, d.root.to_string_lossy())
        })
        .collect();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_lake_serves_the_readme_ids() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let config = tokio::task::spawn_blocking(move || demo_config(&d)).await.unwrap();
    let app = App::build(config).await.unwrap();
    let lake = app.lake().clone();
    let (addr, stop, join) = app.spawn();
    lake.ready().await;
    let first_io = lake.io.snapshot();
    assert!(first_io.bytes > 0, "the first start reads the lake's footers and ids");
    drop(lake);
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut c = FlightClient::new(ch);

    let all = get(
        &mut c,
        &format!(
            r#"{{"cutout": {{"dataset": "ztf", "objectId": "{DEMO_OBJECT_ID}", "all": true, "kind": "Science"}}}}"#
        ),
    )
    .await
    .unwrap();
    let candids: Vec<i64> = all
        .iter()
        .flat_map(|b| b.column(1).as_primitive::<Int64Type>().values().to_vec())
        .collect();
    assert!(
        candids.len() >= 5,
        "the README's demo object has several alerts: {candids:?}"
    );
    assert!(candids.contains(&DEMO_CANDID));
    let one = get(
        &mut c,
        &format!(r#"{{"cutout": {{"dataset": "ztf", "candid": {DEMO_CANDID}}}}}"#),
    )
    .await
    .unwrap();
    assert_eq!(one.iter().map(|b| b.num_rows()).sum::<usize>(), 3);
    let rubin = get(
        &mut c,
        &format!(r#"{{"cutout": {{"dataset": "lsst", "diaSourceId": {DEMO_DIA_SOURCE_ID}, "format": "array"}}}}"#),
    )
    .await
    .unwrap();
    assert_eq!(rubin.iter().map(|b| b.num_rows()).sum::<usize>(), 3);
    // The FITS files: 12 files of 6 kinds, 22 HDUs; a condition on a header key.
    let hdus = get(&mut c, r#"{"headers": {"dataset": "images"}}"#).await.unwrap();
    assert_eq!(hdus.iter().map(|b| b.num_rows()).sum::<usize>(), 22);
    let f606w = get(
        &mut c,
        r#"{"headers": {"dataset": "images", "keys": ["EXPTIME"], "where": "FILTER = 'F606W' AND hdu = 0"}}"#,
    )
    .await
    .unwrap();
    assert_eq!(
        f606w.iter().map(|b| b.num_rows()).sum::<usize>(),
        2,
        "files 0 and 4 (file 8 is a table)"
    );
    stop.stop();
    join.await.unwrap().unwrap();

    // A second start reuses the lake and the index: its start-up build lists the three datasets
    // and reads no byte of any file (nothing regenerated, nothing re-indexed).
    let before = std::fs::metadata(dir.path().join("ztf")).unwrap().modified().unwrap();
    let app = App::build(demo_config(dir.path())).await.unwrap();
    let lake = app.lake().clone();
    let (_, stop, join) = app.spawn();
    lake.ready().await;
    let io = lake.io.snapshot();
    assert_eq!(io.bytes, 0, "the second start read {} bytes: {io:?}", io.bytes);
    assert_eq!(io.requests, 3, "one listing per dataset: {io:?}");
    assert_eq!(
        std::fs::metadata(dir.path().join("ztf")).unwrap().modified().unwrap(),
        before
    );
    drop(lake);
    stop.stop();
    join.await.unwrap().unwrap();
}
