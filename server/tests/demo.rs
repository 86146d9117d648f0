//! The embedded default: the demo lake `serve` builds with no configuration holds the ids the
//! README quotes, and serves them.

mod common;

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use arrow_flight::FlightClient;
use astroflight_server::demo::{self, DEMO_ALERTS_PER_FILE, DEMO_CANDID, DEMO_DIA_SOURCE_ID, DEMO_OBJECT_ID};
use astroflight_server::App;
use common::get;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_lake_serves_the_readme_ids() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tokio::task::spawn_blocking({
        let d = dir.path().to_path_buf();
        move || demo::prepare(&d, DEMO_ALERTS_PER_FILE)
    })
    .await
    .unwrap()
    .unwrap();
    config.listen = "127.0.0.1:0".into();
    let app = App::build(config).await.unwrap();
    let (addr, stop, join) = app.spawn();
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
    stop.stop();
    join.await.unwrap().unwrap();

    // A second start reuses the lake and the index (nothing regenerated, nothing re-read).
    let mut config = demo::prepare(dir.path(), DEMO_ALERTS_PER_FILE).unwrap();
    config.listen = "127.0.0.1:0".into();
    let app = App::build(config).await.unwrap();
    let stats: Vec<_> = app
        .lake()
        .reindex()
        .await
        .into_iter()
        .map(|(name, r)| (name, r.unwrap()))
        .collect();
    assert!(
        stats.iter().all(|(_, s)| s.indexed == 0 && s.unchanged == 6),
        "{stats:?}"
    );
}
