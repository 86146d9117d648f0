//! The shared foundation under every ticket kind: nothing partial presented as whole, changed
//! files never decoded against old footers, index builds that never change answers mid-flight,
//! readiness, a broken index rebuilt, bounded tickets, and what the server publishes.

mod common;

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use arrow_flight::{FlightClient, FlightDescriptor};
use futures::TryStreamExt;
use tonic::Code;

use astroflight_server::config::{DatasetKind, ReindexAction};
use astroflight_server::App;
use common::*;

fn gz(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

/// A valid 2x2 float32 FITS stamp, gzipped as ZTF stores them; `observer` goes in a header card.
fn stamp(observer: &[u8]) -> Vec<u8> {
    let mut f = astroflight_fits::encode_image_f32(2, 2, &[1.0, 2.0, 3.0, 4.0], &[("OBSERVER", "'x'".into(), "")]);
    f[80 * 5 + 11..80 * 5 + 11 + observer.len()].copy_from_slice(observer);
    gz(&f)
}

async fn client(addr: std::net::SocketAddr) -> FlightClient {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    FlightClient::new(ch)
}

fn rows(b: &[arrow::array::RecordBatch]) -> usize {
    b.iter().map(|b| b.num_rows()).sum()
}

fn ztf_ticket(candids: &[i64], format: &str) -> String {
    serde_json::json!({"cutout": {"dataset": "ztf", "candids": candids, "kind": "Science", "format": format}})
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stamp_with_non_ascii_header_bytes_fails_the_request_never_shortens_it() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let good = stamp(b"ok");
    // A UTF-8 multi-byte character at a column the decoder slices at.
    let bad = {
        let mut f = astroflight_fits::encode_image_f32(2, 2, &[1.0, 2.0, 3.0, 4.0], &[("OBSERVER", "'x'".into(), "")]);
        f[80 * 5 + 7..80 * 5 + 9].copy_from_slice("é".as_bytes());
        gz(&f)
    };
    write_small_ztf(
        &lake.join("a.parquet"),
        &[
            ("ZTF1", 1, Some(1.0), [&good, &good, &good]),
            ("ZTF2", 2, Some(2.0), [&bad, &good, &good]),
            ("ZTF3", 3, Some(3.0), [&good, &good, &good]),
        ],
    );
    let server = Server::start(&[("ztf", DatasetKind::Ztf, &lake)], &dir.path().join("index")).await;
    let mut c = server.client().await;
    // The bad stamp among good ones: the whole answer is an error, not 2 rows and OK.
    let (code_, msg) = code(get(&mut c, &ztf_ticket(&[1, 2, 3], "array")).await.unwrap_err());
    assert_eq!(code_, Code::DataLoss, "{msg}");
    assert!(msg.contains("not printable ASCII") && msg.contains("alert 2"), "{msg}");
    // The bytes as stored are still served (no decoding), and the good alerts decode.
    assert_eq!(rows(&get(&mut c, &ztf_ticket(&[1, 2, 3], "gzip")).await.unwrap()), 3);
    assert_eq!(rows(&get(&mut c, &ztf_ticket(&[1, 3], "array")).await.unwrap()), 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_truncated_or_rewritten_in_place_is_data_loss() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let s = stamp(b"ok");
    let rows_of = |base: i64| -> Vec<SmallRow> {
        (0..20)
            .map(|i| ("ZTF1", base + i, Some(i as f64), [&s[..], &s[..], &s[..]]))
            .collect()
    };
    for name in ["a", "b", "c"] {
        write_small_ztf(
            &lake.join(format!("{name}.parquet")),
            &rows_of(100 * (name.as_bytes()[0] as i64)),
        );
    }
    let (a, b, c_base) = (100 * b'a' as i64, 100 * b'b' as i64, 100 * b'c' as i64);
    let server = Server::start(&[("ztf", DatasetKind::Ztf, &lake)], &dir.path().join("index")).await;
    let mut c = server.client().await;
    // Warm the footer cache of a and b.
    for base in [a, b] {
        assert_eq!(rows(&get(&mut c, &ztf_ticket(&[base + 3], "gzip")).await.unwrap()), 1);
    }
    // a: truncated in place (footer cached); b: rewritten in place with other content of the
    // same shape (footer cached); c: truncated before its footer was ever read.
    let fa = lake.join("a.parquet");
    let len = std::fs::metadata(&fa).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&fa)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5)); // a distinct mtime, whatever the fs granularity
    write_small_ztf(&lake.join("b.parquet.new"), &rows_of(b + 1));
    std::fs::copy(lake.join("b.parquet.new"), lake.join("b.parquet")).unwrap();
    std::fs::remove_file(lake.join("b.parquet.new")).unwrap();
    let fc = lake.join("c.parquet");
    let len = std::fs::metadata(&fc).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&fc)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    for base in [a, b, c_base] {
        let (code_, msg) = code(get(&mut c, &ztf_ticket(&[base + 3], "gzip")).await.unwrap_err());
        assert_eq!(code_, Code::DataLoss, "{base}: {msg}");
        assert!(
            msg.contains("not the version the index holds") || msg.contains("changed since it was indexed"),
            "{base}: {msg}"
        );
    }
    // After a re-index, the rewritten file serves its new content.
    action(&mut c, "reindex").await.unwrap();
    assert_eq!(rows(&get(&mut c, &ztf_ticket(&[b + 4], "gzip")).await.unwrap()), 1);
    server.stop().await;
}

/// Builds in a loop (two at a time), while the object's alerts move to new files and gain a
/// newer alert each round, and clients ask for its latest alert and all its alerts: never an
/// error, never an older latest than one already seen, never fewer alerts. An old file is
/// deleted only once every reader has started a request after the new file was committed
/// (a request planned earlier may still be reading the old file: deleting it then would be the
/// lake's doing, not the index's); its removal from the index happens while readers ask.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_never_go_back_while_the_index_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let s = stamp(b"ok");
    let file_rows = |k: i64| -> Vec<SmallRow> {
        (0..=k)
            .map(|i| ("ZTF1", 1000 + i, Some(i as f64), [&s[..], &s[..], &s[..]]))
            .collect()
    };
    write_small_ztf(&lake.join("f0.parquet"), &file_rows(0));
    let mut config = config(&[("ztf", DatasetKind::Ztf, &lake)], &dir.path().join("index"));
    config.reindex_action = ReindexAction::Any;
    let server = Server::start_with(config).await;
    let done = Arc::new(AtomicBool::new(false));
    // The round whose new file is committed, and the round each reader last started a request in.
    let round = Arc::new(AtomicU64::new(0));
    let seen: Arc<[AtomicU64; 2]> = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let mut readers = Vec::new();
    for i in 0..2 {
        let (addr, done, round, seen) = (server.addr, done.clone(), round.clone(), seen.clone());
        readers.push(tokio::spawn(async move {
            let mut c = client(addr).await;
            let (mut latest, mut count, mut asked) = (0i64, 0usize, 0usize);
            while !done.load(Ordering::Acquire) {
                seen[i].store(round.load(Ordering::Acquire), Ordering::Release);
                let b = get(&mut c, r#"{"cutout": {"dataset": "ztf", "objectId": "ZTF1", "kind": "Science", "format": "gzip"}}"#)
                    .await
                    .unwrap_or_else(|e| panic!("latest after {asked} answers: {e}"));
                let got = b[0].column_by_name("candid").unwrap().as_primitive::<Int64Type>().value(0);
                assert!(got >= latest, "latest went back from {latest} to {got}");
                latest = got;
                let all = get(&mut c, r#"{"cutout": {"dataset": "ztf", "objectId": "ZTF1", "all": true, "kind": "Science", "format": "gzip"}}"#)
                    .await
                    .unwrap_or_else(|e| panic!("all after {asked} answers: {e}"));
                assert!(rows(&all) >= count, "all went from {count} to {} alerts", rows(&all));
                count = rows(&all);
                asked += 1;
            }
            (latest, asked)
        }));
    }
    let mut c1 = server.client().await;
    let mut c2 = server.client().await;
    for k in 1..=12i64 {
        // Spark-style: the new file appears whole, both are indexed, then the old one goes.
        write_small_ztf(&lake.join(format!("f{k}.parquet")), &file_rows(k));
        let (r1, r2) = tokio::join!(action(&mut c1, "reindex"), action(&mut c2, "reindex"));
        let indexed: u64 = [r1.unwrap(), r2.unwrap()]
            .iter()
            .map(|r| r["datasets"][0]["indexed"].as_u64().unwrap())
            .sum();
        assert_eq!(indexed, 1, "round {k}: the new file is indexed once");
        round.store(k as u64, Ordering::Release);
        let caught_up = async {
            while seen.iter().any(|s| s.load(Ordering::Acquire) < k as u64) {
                tokio::task::yield_now().await;
            }
        };
        // A bound, not a timing window: only a reader that stopped (failed) misses it.
        tokio::time::timeout(std::time::Duration::from_secs(120), caught_up)
            .await
            .unwrap_or_else(|_| panic!("round {k}: a reader stopped asking"));
        std::fs::remove_file(lake.join(format!("f{}.parquet", k - 1))).unwrap();
        let (r1, r2) = tokio::join!(action(&mut c1, "reindex"), action(&mut c2, "reindex"));
        r1.unwrap();
        r2.unwrap();
    }
    done.store(true, Ordering::Release);
    for r in readers {
        let (latest, asked) = r.await.unwrap();
        assert!(asked > 0);
        assert!(latest >= 1000);
    }
    let b = get(
        &mut c1,
        r#"{"cutout": {"dataset": "ztf", "objectId": "ZTF1", "all": true, "kind": "Science"}}"#,
    )
    .await
    .unwrap();
    assert_eq!(rows(&b), 13);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_listens_before_its_first_build_ends_and_says_when_it_is_ready() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let s = stamp(b"ok");
    write_small_ztf(&lake.join("a.parquet"), &[("ZTF1", 7, Some(1.0), [&s, &s, &s])]);
    let app = App::build(config(&[("ztf", DatasetKind::Ztf, &lake)], &dir.path().join("index")))
        .await
        .unwrap();
    let lake_handle = app.lake().clone();
    // Hold the first build back: the server must serve meanwhile.
    let guard = lake_handle.dataset("ztf").unwrap().index.lock_builds().await;
    let (addr, stop, join) = app.spawn();
    let mut c = client(addr).await;
    let h = action(&mut c, "health").await.unwrap();
    assert_eq!(h["ready"], false, "{h}");
    assert_eq!(h["datasets"][0]["indexing"], true, "{h}");
    let (code_, msg) = code(get(&mut c, &ztf_ticket(&[7], "gzip")).await.unwrap_err());
    assert_eq!(code_, Code::Unavailable, "{msg}");
    assert!(msg.contains("still being indexed"), "{msg}");
    drop(guard);
    lake_handle.ready().await;
    assert_eq!(action(&mut c, "health").await.unwrap()["ready"], true);
    assert_eq!(rows(&get(&mut c, &ztf_ticket(&[7], "gzip")).await.unwrap()), 1);
    // Once ready, an unknown id is NOT_FOUND again.
    assert_eq!(
        code(get(&mut c, &ztf_ticket(&[8], "gzip")).await.unwrap_err()).0,
        Code::NotFound
    );
    drop(lake_handle);
    stop.stop();
    join.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_index_is_moved_aside_and_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let index = dir.path().join("index");
    let s = stamp(b"ok");
    write_small_ztf(&lake.join("a.parquet"), &[("ZTF1", 7, Some(1.0), [&s, &s, &s])]);
    let server = Server::start(&[("ztf", DatasetKind::Ztf, &lake)], &index).await;
    server.stop().await;
    // What a crash mid-write or a full disk can leave: garbage in the index's files.
    for e in std::fs::read_dir(&index).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::write(&p, b"\xff\xfe not a sled file \x00\x01").unwrap();
        }
    }
    let server = Server::start(&[("ztf", DatasetKind::Ztf, &lake)], &index).await;
    let mut c = server.client().await;
    assert_eq!(rows(&get(&mut c, &ztf_ticket(&[7], "gzip")).await.unwrap()), 1);
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("index.broken-"))
        .collect();
    assert_eq!(aside.len(), 1, "the broken index is kept aside for a post-mortem");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn costly_tickets_are_refused_before_anything_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let s = stamp(b"ok");
    let rows_: Vec<SmallRow> = (0..50)
        .map(|i| ("ZTF1", i, Some(i as f64), [&s[..], &s[..], &s[..]]))
        .collect();
    write_small_ztf(&lake.join("a.parquet"), &rows_);
    let mut cfg = config(&[("ztf", DatasetKind::Ztf, &lake)], &dir.path().join("index"));
    cfg.max_ticket_alerts = 10;
    let server = Server::start_with(cfg).await;
    let mut c = server.client().await;
    let (b0, r0) = io_bytes_requests(&mut c).await;
    // `all` expands one object into 50 alerts: past the limit of 10.
    let (code_, msg) = code(
        get(
            &mut c,
            r#"{"cutout": {"dataset": "ztf", "objectId": "ZTF1", "all": true}}"#,
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(code_, Code::ResourceExhausted, "{msg}");
    assert!(msg.contains("max_ticket_alerts"), "{msg}");
    // Repeated ids count once: 40 mentions of 4 ids is within the limit.
    let ids: Vec<i64> = (0..40).map(|i| i % 4).collect();
    assert_eq!(rows(&get(&mut c, &ztf_ticket(&ids, "gzip")).await.unwrap()), 4);
    let (b1, r1) = io_bytes_requests(&mut c).await;
    assert!(b1 > b0 && r1 > r0);
    server.stop().await;

    let mut cfg = config(&[("ztf", DatasetKind::Ztf, &lake)], &dir.path().join("index2"));
    cfg.max_ticket_bytes = 100;
    let server = Server::start_with(cfg).await;
    let mut c = server.client().await;
    let (b0, _) = io_bytes_requests(&mut c).await;
    let (code_, msg) = code(get(&mut c, &ztf_ticket(&[1, 2, 3], "gzip")).await.unwrap_err());
    assert_eq!(code_, Code::ResourceExhausted, "{msg}");
    assert!(msg.contains("max_ticket_bytes"), "{msg}");
    let (b1, _) = io_bytes_requests(&mut c).await;
    assert_eq!(b0, b1, "nothing was read for a refused ticket");
    // GetFlightInfo refuses the same ticket, and says what a smaller one weighs.
    let err = c
        .get_flight_info(FlightDescriptor::new_cmd(ztf_ticket(&[1, 2, 3], "gzip")))
        .await
        .unwrap_err();
    assert_eq!(code(err).0, Code::ResourceExhausted);
    let info = c
        .get_flight_info(FlightDescriptor::new_cmd(ztf_ticket(&[1], "gzip")))
        .await
        .unwrap();
    assert!(info.total_bytes > 0 && info.total_bytes <= 100, "{}", info.total_bytes);
    // Echoed input is cut short.
    let long = "Z".repeat(100_000);
    let (_, msg) = code(
        get(
            &mut c,
            &format!(r#"{{"cutout": {{"dataset": "{long}", "objectId": "x"}}}}"#),
        )
        .await
        .unwrap_err(),
    );
    assert!(msg.len() < 400, "{} bytes", msg.len());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roots_stay_private_and_reindex_can_be_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let s = stamp(b"ok");
    write_small_ztf(&lake.join("a.parquet"), &[("ZTF1", 7, Some(1.0), [&s, &s, &s])]);
    let root = lake.to_string_lossy().to_string();
    let published =
        |infos: &[arrow_flight::FlightInfo]| String::from_utf8_lossy(&infos[0].app_metadata).contains(&root);
    let server = Server::start(&[("ztf", DatasetKind::Ztf, &lake)], &dir.path().join("index")).await;
    let mut c = server.client().await;
    let infos: Vec<_> = c.list_flights(vec![]).await.unwrap().try_collect().await.unwrap();
    assert!(!published(&infos), "the root is not published by default");
    assert!(!action(&mut c, "stats").await.unwrap().to_string().contains(&root));
    // The default lets a client on the server's own host re-index.
    action(&mut c, "reindex").await.unwrap();
    server.stop().await;

    let mut cfg = config(&[("ztf", DatasetKind::Ztf, &lake)], &dir.path().join("index"));
    cfg.publish_roots = true;
    cfg.reindex_action = ReindexAction::Off;
    let server = Server::start_with(cfg).await;
    let mut c = server.client().await;
    let infos: Vec<_> = c.list_flights(vec![]).await.unwrap().try_collect().await.unwrap();
    assert!(published(&infos));
    let (code_, msg) = code(action(&mut c, "reindex").await.unwrap_err());
    assert_eq!(code_, Code::PermissionDenied, "{msg}");
    assert!(msg.contains("reindex_action"), "{msg}");
    server.stop().await;
}

/// Every endpoint of a GetFlightInfo, pulled on `c`, as sorted lines (a canonical answer).
async fn pulled(c: &mut FlightClient, cmd: &str) -> Vec<String> {
    let info = c
        .get_flight_info(FlightDescriptor::new_cmd(cmd.to_string()))
        .await
        .unwrap();
    let mut batches = Vec::new();
    for e in &info.endpoint {
        let b: Vec<_> = c
            .do_get(e.ticket.clone().unwrap())
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        batches.extend(b);
    }
    lines(&batches)
}

fn lines(batches: &[arrow::array::RecordBatch]) -> Vec<String> {
    let text = arrow::util::pretty::pretty_format_batches(batches).unwrap().to_string();
    let mut v: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with('|'))
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

/// One builder and one follower over one lake: the follower loads what the builder published
/// (reading no lake file to do so), answers every ticket kind and Flight SQL as the builder
/// does, picks up new data on its schedule, and keeps serving when the builder is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_answers_as_its_builder_from_the_published_index() {
    use astroflight_gen::{generate, GenOptions};
    use astroflight_server::config::IndexRole;
    let dir = tempfile::tempdir().unwrap();
    let (lake, published) = (dir.path().join("lake"), dir.path().join("published"));
    generate(&GenOptions {
        out: lake.clone(),
        nights: 2,
        files_per_night: 2,
        alerts_per_file: 40,
        stamp_side: Some(8),
        ..Default::default()
    })
    .unwrap();
    let mut bc = config(&[("ztf", DatasetKind::Ztf, &lake)], &dir.path().join("builder-index"));
    bc.datasets[0].index_root = Some(published.to_string_lossy().into_owned());
    bc.reindex_action = ReindexAction::Any;
    bc.sql.endpoint_bytes = 20_000;
    let mut fc = bc.clone();
    fc.index_role = IndexRole::Follow;
    fc.index_dir = dir.path().join("follower-index");
    fc.reindex_interval_secs = Some(1.0);

    // A follower started before anything is published listens, but is not ready.
    let early = App::build(fc.clone()).await.unwrap();
    let early_lake = early.lake().clone();
    let (early_addr, early_stop, early_join) = early.spawn();
    let mut e = client(early_addr).await;
    assert_eq!(action(&mut e, "health").await.unwrap()["ready"], false);

    let builder = Server::start_with(bc).await;
    // The early follower finds the generation within a couple of seconds.
    tokio::time::timeout(std::time::Duration::from_secs(30), early_lake.ready())
        .await
        .expect("the follower becomes ready once its builder has published");
    early_stop.stop();
    early_join.await.unwrap().unwrap();
    drop((early_lake, e));
    // Started again on the same index_dir: its cached generation is current.

    let follower = Server::start_with(fc).await;
    let (mut b, mut f) = (builder.client().await, follower.client().await);
    // Ready without reading a lake file (no footer, no id column).
    assert_eq!(io_bytes_requests(&mut f).await, (0, 0));
    let (bs, fs) = (
        action(&mut b, "stats").await.unwrap(),
        action(&mut f, "stats").await.unwrap(),
    );
    let (bi, fi) = (&bs["datasets"][0]["index"], &fs["datasets"][0]["index"]);
    assert_eq!(
        (bi["generation"].clone(), bi["alerts"].clone()),
        (fi["generation"].clone(), fi["alerts"].clone())
    );
    assert_eq!(
        (bi["role"].as_str(), fi["role"].as_str()),
        (Some("build"), Some("follow"))
    );
    assert_eq!(bi["lineage"], fi["lineage"]);

    let alerts = lake_alerts(&lake, true);
    let oid = alerts[7].object_id.clone();
    let tickets = [
        format!(r#"{{"cutout": {{"dataset": "ztf", "objectId": "{oid}", "all": true, "format": "fits"}}}}"#),
        format!(r#"{{"cutout": {{"dataset": "ztf", "objectId": "{oid}", "kind": "Science", "format": "array"}}}}"#),
        format!(
            r#"{{"cutout": {{"dataset": "ztf", "candids": [{}, {}], "format": "gzip"}}}}"#,
            alerts[3].candid, alerts[100].candid
        ),
        // The FITS headers of the object's stamps.
        format!(r#"{{"headers": {{"dataset": "ztf", "objectId": "{oid}", "keys": ["JD", "CANDID"]}}}}"#),
    ];
    for t in &tickets {
        assert_eq!(
            lines(&get(&mut f, t).await.unwrap()),
            lines(&get(&mut b, t).await.unwrap()),
            "{t}"
        );
    }
    let batch = r#"{"alerts": {"dataset": "ztf", "content": "lightcurve", "where": "candidate.magpsf > 15"}}"#;
    let want = pulled(&mut b, batch).await;
    assert!(want.len() > 10);
    assert_eq!(pulled(&mut f, batch).await, want);
    let query = format!("SELECT objectId, candid, candidate.magpsf AS m FROM ztf WHERE objectId = '{oid}'");
    let sql = |url: String| {
        let query = query.clone();
        async move {
            let t = astroflight_client::datafusion::FlightSqlTable::try_new(&url, &query)
                .await
                .unwrap();
            let ctx = datafusion::prelude::SessionContext::new();
            ctx.register_table("t", Arc::new(t)).unwrap();
            lines(&ctx.sql("SELECT * FROM t").await.unwrap().collect().await.unwrap())
        }
    };
    let want = sql(format!("grpc://{}", builder.addr)).await;
    assert!(!want.is_empty());
    assert_eq!(sql(format!("grpc://{}", follower.addr)).await, want);

    // New data: the builder indexes and publishes it; the follower serves it within two of its
    // refresh intervals (1 s), with no restart.
    let s = stamp(b"new");
    write_small_ztf(
        &lake.join("new/n.parquet"),
        &[("ZTF99newobj", 990_001, Some(2_459_000.0), [&s[..], &s[..], &s[..]])],
    );
    let r = action(&mut b, "reindex").await.unwrap();
    assert_eq!(r["datasets"][0]["indexed"], 1, "{r}");
    assert!(r["datasets"][0]["published"]["generation"].is_u64(), "{r}");
    let new = r#"{"cutout": {"dataset": "ztf", "candids": [990001], "kind": "Science", "format": "gzip"}}"#;
    let t0 = std::time::Instant::now();
    loop {
        match get(&mut f, new).await {
            Ok(got) => {
                assert_eq!(rows(&got), 1);
                break;
            }
            Err(e) => {
                assert_eq!(code(e).0, Code::NotFound);
                assert!(t0.elapsed() < std::time::Duration::from_secs(4), "not served after 4 s");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }

    // The builder goes: the follower keeps serving its generation, and stays healthy.
    builder.stop().await;
    assert_eq!(rows(&get(&mut f, new).await.unwrap()), 1);
    let h = action(&mut f, "health").await.unwrap();
    assert_eq!(h["ready"], true, "{h}");
    let r = action(&mut f, "reindex").await.unwrap();
    assert!(r["datasets"][0]["loaded"].is_object(), "{r}");
    follower.stop().await;
}

/// The DataFusion provider over advertised replicas: every partition lists both servers, and
/// with one of them stopped after planning, the query still returns every row once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_datafusion_provider_moves_to_another_replica_when_one_is_gone() {
    use astroflight_gen::{generate, GenOptions};
    use astroflight_server::config::IndexRole;
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    generate(&GenOptions {
        out: lake.clone(),
        nights: 2,
        files_per_night: 2,
        alerts_per_file: 30,
        stamp_side: Some(8),
        ..Default::default()
    })
    .unwrap();
    let ports: Vec<u16> = (0..2)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        })
        .collect();
    let mut bc = config(&[("ztf", DatasetKind::Ztf, &lake)], &dir.path().join("b"));
    bc.datasets[0].index_root = Some(dir.path().join("published").to_string_lossy().into_owned());
    bc.sql.endpoint_bytes = 20_000;
    bc.advertise = ports.iter().map(|p| format!("grpc://127.0.0.1:{p}")).collect();
    bc.listen = format!("127.0.0.1:{}", ports[0]);
    let mut fc = bc.clone();
    fc.index_role = IndexRole::Follow;
    fc.index_dir = dir.path().join("f");
    fc.listen = format!("127.0.0.1:{}", ports[1]);
    let builder = Server::start_with(bc).await;
    let follower = Server::start_with(fc).await;
    let url = format!("grpc://{}", builder.addr);
    let t = astroflight_client::datafusion::FlightSqlTable::try_new(&url, "SELECT candid FROM ztf")
        .await
        .unwrap();
    let ctx = datafusion::prelude::SessionContext::new();
    ctx.register_table("t", Arc::new(t)).unwrap();
    let want = lines(&ctx.sql("SELECT candid FROM t").await.unwrap().collect().await.unwrap());
    assert_eq!(want.len(), 2 * 2 * 30 + 1, "the rows and the header line");
    // The follower goes; the endpoints still list it (advertise is the configuration), so some
    // partitions try it first and move on.
    let df = ctx.sql("SELECT candid FROM t").await.unwrap();
    follower.stop().await;
    let got = lines(&df.collect().await.unwrap());
    assert_eq!(got, want, "every row once with a replica gone");
    builder.stop().await;
}
