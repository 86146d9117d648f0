//! The cutout service end to end, in-process on 127.0.0.1:0, against generated lakes and the
//! real samples of ../shared/data.

mod common;

use std::collections::HashMap;
use std::path::Path;

use arrow::array::AsArray;
use arrow::datatypes::{Float32Type, Int32Type, Int64Type};
use arrow_flight::{FlightDescriptor, Ticket};
use futures::TryStreamExt;
use tonic::Code;

use astroflight_fits as fits;
use astroflight_gen::testdata::shared_data_or_skip;
use astroflight_gen::{generate, GenOptions};
use astroflight_index::SurveyKind;
use astroflight_server::config::DatasetKind;
use common::*;

fn gen(dir: &Path, survey: SurveyKind, page_index: bool, alerts: u32) {
    generate(&GenOptions {
        survey,
        out: dir.to_path_buf(),
        nights: 2,
        files_per_night: 2,
        alerts_per_file: alerts,
        page_index,
        ..Default::default()
    })
    .unwrap();
}

/// Every alert's stamps come back identical in all three formats, many ids per ticket.
async fn check_all_stamps(server: &Server, dataset: &str, alerts: &[LakeAlert], ztf: bool) {
    let mut c = server.client().await;
    let (id_field, id_col) = if ztf {
        ("candids", "candid")
    } else {
        ("diaSourceIds", "diaSourceId")
    };
    let ids: Vec<i64> = alerts.iter().map(|a| a.candid).collect();
    let ticket = |format: &str| {
        serde_json::json!({"cutout": {"dataset": dataset, id_field: ids, "kind": "All", "format": format}}).to_string()
    };

    let gz = stamps_by_id(&get(&mut c, &ticket("gzip")).await.unwrap(), id_col);
    let fi = stamps_by_id(&get(&mut c, &ticket("fits")).await.unwrap(), id_col);
    assert_eq!(gz.len(), alerts.len() * 3);
    assert_eq!(fi.len(), alerts.len() * 3);
    for a in alerts {
        for (k, stored) in KINDS.iter().zip(&a.stamps) {
            let key = (a.candid, k.to_string());
            assert_eq!(&gz[&key], stored, "gzip {k} of {}", a.candid);
            let want_fits = stored
                .as_ref()
                .map(|s| if fits::is_gzip(s) { gunzip(s) } else { s.clone() });
            assert_eq!(fi[&key], want_fits, "fits {k} of {}", a.candid);
        }
    }

    let arr = get(&mut c, &ticket("array")).await.unwrap();
    let mut seen = 0;
    for b in &arr {
        let ids = b.column_by_name(id_col).unwrap().as_primitive::<Int64Type>();
        let kinds = b.column_by_name("kind").unwrap().as_string::<i32>();
        let px = b.column_by_name("pixels").unwrap().as_list::<i32>();
        let w = b.column_by_name("width").unwrap().as_primitive::<Int32Type>();
        let h = b.column_by_name("height").unwrap().as_primitive::<Int32Type>();
        for i in 0..b.num_rows() {
            let a = alerts.iter().find(|a| a.candid == ids.value(i)).unwrap();
            let k = KINDS.iter().position(|k| *k == kinds.value(i)).unwrap();
            let img = fits::decode_image(a.stamps[k].as_ref().unwrap()).unwrap();
            assert_eq!((w.value(i) as usize, h.value(i) as usize), (img.width, img.height));
            let got = px.value(i);
            let got = got.as_primitive::<Float32Type>().values();
            assert!(got.iter().zip(&img.pixels).all(|(x, y)| x.to_bits() == y.to_bits()));
            assert_eq!(got.len(), img.pixels.len());
            seen += 1;
        }
    }
    assert_eq!(seen, alerts.len() * 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ztf_lake_every_stamp_latest_all_candid_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("ztf");
    gen(&lake, SurveyKind::Ztf, true, 250);
    let server = Server::start(&[("ztf", DatasetKind::Ztf, &lake)], &dir.path().join("index")).await;
    let alerts = lake_alerts(&lake, true);
    assert_eq!(alerts.len(), 1000);
    check_all_stamps(&server, "ztf", &alerts, true).await;

    let mut c = server.client().await;
    // Latest (max jd) and all alerts of the object with the most alerts.
    let mut by_obj: HashMap<&str, Vec<&LakeAlert>> = HashMap::new();
    for a in &alerts {
        by_obj.entry(&a.object_id).or_default().push(a);
    }
    let (oid, list) = by_obj.iter().max_by_key(|(o, v)| (v.len(), *o)).unwrap();
    assert!(list.len() >= 3, "the generator makes objects with several alerts");
    let latest = list.iter().max_by(|a, b| a.time.total_cmp(&b.time)).unwrap();
    let b = get(
        &mut c,
        &format!(r#"{{"cutout": {{"dataset": "ztf", "objectId": "{oid}", "kind": "Difference", "format": "gzip"}}}}"#),
    )
    .await
    .unwrap();
    let rows: usize = b.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 1);
    assert_eq!(
        b[0].column_by_name("candid")
            .unwrap()
            .as_primitive::<Int64Type>()
            .value(0),
        latest.candid
    );
    assert_eq!(
        b[0].column_by_name("stamp").unwrap().as_binary::<i32>().value(0),
        latest.stamps[2].as_deref().unwrap()
    );
    let b = get(
        &mut c,
        &format!(r#"{{"cutout": {{"dataset": "ztf", "objectIds": ["{oid}"], "all": true, "kind": "Science"}}}}"#),
    )
    .await
    .unwrap();
    let mut got: Vec<i64> = b
        .iter()
        .flat_map(|b| {
            b.column_by_name("candid")
                .unwrap()
                .as_primitive::<Int64Type>()
                .values()
                .to_vec()
        })
        .collect();
    let mut want: Vec<i64> = list.iter().map(|a| a.candid).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    // Every row is an alert of the object asked for.
    let objects: Vec<String> = b
        .iter()
        .flat_map(|b| {
            b.column_by_name("objectId")
                .unwrap()
                .as_string::<i32>()
                .iter()
                .map(|s| s.unwrap().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(objects.len(), want.len());
    assert!(objects.iter().all(|o| o == oid), "{objects:?}");

    // objectId + candid: that alert of that object, or NOT_FOUND naming both.
    let other = alerts.iter().find(|a| a.object_id != *oid).unwrap();
    let ok = get(
        &mut c,
        &format!(
            r#"{{"cutout": {{"dataset": "ztf", "objectId": "{oid}", "candid": {}}}}}"#,
            list[0].candid
        ),
    )
    .await
    .unwrap();
    assert_eq!(ok.iter().map(|b| b.num_rows()).sum::<usize>(), 3);
    let (code_, msg) = code(
        get(
            &mut c,
            &format!(
                r#"{{"cutout": {{"dataset": "ztf", "objectId": "{oid}", "candid": {}}}}}"#,
                other.candid
            ),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(code_, Code::NotFound);
    assert!(msg.contains(&other.candid.to_string()) && msg.contains(oid), "{msg}");

    // Errors.
    for (ticket, want_code, needle) in [
        (
            r#"{"cutout": {"dataset": "ztf", "objectId": "ZTF99aaaaaaa"}}"#,
            Code::NotFound,
            "ZTF99aaaaaaa",
        ),
        (
            r#"{"cutout": {"dataset": "ztf", "candids": [1, 2]}}"#,
            Code::NotFound,
            "1, 2",
        ),
        (
            r#"{"cutout": {"dataset": "ztf", "objectId": "x""#,
            Code::InvalidArgument,
            "not valid JSON",
        ),
        (
            r#"{"cutout": {"dataset": "nope", "objectId": "x"}}"#,
            Code::InvalidArgument,
            "unknown dataset \"nope\"",
        ),
        (
            r#"{"cutout": {"dataset": "ztf", "objectId": "x", "kind": "Sky"}}"#,
            Code::InvalidArgument,
            "Science, Template, Difference, All",
        ),
        (
            r#"{"cutout": {"dataset": "ztf", "objectId": "x", "format": "png"}}"#,
            Code::InvalidArgument,
            "fits, gzip, array",
        ),
        (
            r#"{"cutout": {"dataset": "ztf", "diaSourceId": 5}}"#,
            Code::InvalidArgument,
            "holds ZTF alerts",
        ),
        (
            r#"{"cutout": {"dataset": "ztf"}}"#,
            Code::InvalidArgument,
            "name the alerts",
        ),
        ("", Code::InvalidArgument, "ticket is empty"),
        ("\u{1}\u{2}garbage", Code::InvalidArgument, "protobuf"),
    ] {
        let (got, msg) = code(get(&mut c, ticket).await.unwrap_err());
        assert_eq!(got, want_code, "{ticket}: {msg}");
        assert!(msg.contains(needle), "{ticket}: {msg}");
    }
    // Unknown ids among known ones: the whole request fails, nothing partial.
    let (got, msg) = code(
        get(
            &mut c,
            &format!(
                r#"{{"cutout": {{"dataset": "ztf", "candids": [{}, 42]}}}}"#,
                alerts[0].candid
            ),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!((got, msg.contains("42")), (Code::NotFound, true));

    // Metadata calls.
    let infos: Vec<_> = c.list_flights(vec![]).await.unwrap().try_collect().await.unwrap();
    assert_eq!(infos.len(), 1);
    assert_eq!(infos[0].total_records, 1000);
    let cmd = format!(r#"{{"cutout": {{"dataset": "ztf", "objectId": "{oid}", "all": true, "format": "array"}}}}"#);
    let info = c.get_flight_info(FlightDescriptor::new_cmd(cmd.clone())).await.unwrap();
    assert_eq!(info.total_records as usize, 3 * list.len());
    let schema = info.clone().try_decode_schema().unwrap();
    assert_eq!(schema.field(3).name(), "pixels");
    let via_endpoint: Vec<_> = c
        .do_get(info.endpoint[0].ticket.clone().unwrap())
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(via_endpoint.iter().map(|b| b.num_rows()).sum::<usize>(), 3 * list.len());
    let s = c
        .get_schema(FlightDescriptor::new_cmd(
            r#"{"cutout": {"dataset": "ztf", "objectId": "x", "format": "gzip"}}"#,
        ))
        .await
        .unwrap();
    assert_eq!(s.field(3).name(), "stamp");
    let e = c.get_schema(FlightDescriptor::new_cmd("{}")).await.unwrap_err();
    assert_eq!(code(e).0, Code::InvalidArgument);
    let s = c
        .get_schema(FlightDescriptor::new_path(vec!["ztf".into()]))
        .await
        .unwrap();
    assert_eq!(s.field(0).name(), "objectId");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_only_the_pages_that_hold_the_row() {
    let dir = tempfile::tempdir().unwrap();
    let paged = dir.path().join("paged");
    let flat = dir.path().join("flat");
    gen(&paged, SurveyKind::Ztf, true, 400);
    gen(&flat, SurveyKind::Ztf, false, 400);
    let server = Server::start(
        &[("paged", DatasetKind::Ztf, &paged), ("flat", DatasetKind::Ztf, &flat)],
        &dir.path().join("index"),
    )
    .await;
    let mut c = server.client().await;
    let alerts = lake_alerts(&paged, true);
    let chunk = 400 * alerts[0].stamps[0].as_ref().unwrap().len() as u64; // ~ one stamp column chunk

    let one = |ds: &str, a: &LakeAlert| {
        format!(
            r#"{{"cutout": {{"dataset": "{ds}", "candid": {}, "kind": "Science", "format": "gzip"}}}}"#,
            a.candid
        )
    };
    // Warm the footer cache of every file.
    for a in alerts.iter().step_by(400) {
        get(&mut c, &one("paged", a)).await.unwrap();
        get(&mut c, &one("flat", a)).await.unwrap();
    }
    for a in [&alerts[5], &alerts[210], &alerts[1399]] {
        let (b0, r0) = io_bytes_requests(&mut c).await;
        let got = get(&mut c, &one("paged", a)).await.unwrap();
        let (b1, r1) = io_bytes_requests(&mut c).await;
        assert_eq!(
            got[0].column_by_name("stamp").unwrap().as_binary::<i32>().value(0),
            a.stamps[0].as_deref().unwrap()
        );
        // One ~1 MB page of the stamp column, and candid's dictionary and data pages: three exact
        // reads of the local file, nothing else.
        assert!(b1 - b0 < 1_600_000, "read {} bytes for one cutout", b1 - b0);
        assert!(b1 - b0 < chunk / 2, "read {} bytes, the chunk is {chunk}", b1 - b0);
        assert!(r1 - r0 <= 3, "{} reads", r1 - r0);

        // Without a page index, the whole column chunk is read, and the answer is the same.
        let flat_alert = lake_alerts(&flat, true)
            .into_iter()
            .find(|x| x.candid == a.candid)
            .unwrap();
        let (b2, _) = io_bytes_requests(&mut c).await;
        let got = get(&mut c, &one("flat", &flat_alert)).await.unwrap();
        let (b3, _) = io_bytes_requests(&mut c).await;
        assert_eq!(
            got[0].column_by_name("stamp").unwrap().as_binary::<i32>().value(0),
            flat_alert.stamps[0].as_deref().unwrap()
        );
        assert!(
            b3 - b2 > chunk / 2,
            "no page index: expected the column chunk, read {}",
            b3 - b2
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rubin_lake_every_stamp_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lsst");
    gen(&lake, SurveyKind::Lsst, true, 120);
    let server = Server::start(&[("lsst", DatasetKind::Lsst, &lake)], &dir.path().join("index")).await;
    let alerts = lake_alerts(&lake, false);
    check_all_stamps(&server, "lsst", &alerts, false).await;
    let mut c = server.client().await;
    let b = get(
        &mut c,
        &format!(
            r#"{{"cutout": {{"dataset": "lsst", "diaSourceId": "{}", "kind": "Template"}}}}"#,
            alerts[7].candid
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        b[0].column_by_name("diaObjectId")
            .unwrap()
            .as_primitive::<Int64Type>()
            .value(0),
        alerts[7].dia_object_id
    );
    for (ticket, want, needle) in [
        (
            r#"{"cutout": {"dataset": "lsst", "diaSourceId": 1}}"#,
            Code::NotFound,
            "diaSourceId 1",
        ),
        (
            r#"{"cutout": {"dataset": "lsst", "objectId": "ZTF1"}}"#,
            Code::InvalidArgument,
            "holds Rubin alerts",
        ),
    ] {
        let (got, msg) = code(get(&mut c, ticket).await.unwrap_err());
        assert_eq!((got, msg.contains(needle)), (want, true), "{msg}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_and_missing_files_fail_their_requests_only() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("ztf");
    gen(&lake, SurveyKind::Ztf, true, 60);
    let alerts = lake_alerts(&lake, true);
    let files = parquet_files(&lake);
    let server = Server::start(&[("ztf", DatasetKind::Ztf, &lake)], &dir.path().join("index")).await;
    let mut c = server.client().await;
    let ticket = |a: &LakeAlert| {
        format!(
            r#"{{"cutout": {{"dataset": "ztf", "candid": {}, "format": "fits"}}}}"#,
            a.candid
        )
    };
    let in_file = |f: &Path| alerts.iter().find(|a| a.file == f).unwrap().clone();

    // Corrupt the data pages of file 0 (keep its footer), delete file 1.
    let mut bytes = std::fs::read(&files[0]).unwrap();
    let n = bytes.len();
    for b in bytes[4..n / 2].iter_mut() {
        *b = 0x5a;
    }
    std::fs::write(&files[0], bytes).unwrap();
    std::fs::remove_file(&files[1]).unwrap();

    let (got, msg) = code(get(&mut c, &ticket(&in_file(&files[0]))).await.unwrap_err());
    assert_eq!(got, Code::DataLoss, "{msg}");
    assert!(
        msg.contains(&files[0].file_name().unwrap().to_string_lossy().to_string()),
        "{msg}"
    );
    let (got, msg) = code(get(&mut c, &ticket(&in_file(&files[1]))).await.unwrap_err());
    assert_eq!(got, Code::DataLoss, "{msg}");
    assert!(msg.contains("missing"), "{msg}");
    // The other files still serve.
    let ok = get(&mut c, &ticket(&in_file(&files[2]))).await.unwrap();
    assert_eq!(ok.iter().map(|b| b.num_rows()).sum::<usize>(), 3);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_ztf_samples_byte_identical() {
    let Some(data) = shared_data_or_skip("real_ztf_samples_byte_identical") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // The whole ZTF parquet tree in place: raw, science, and the hive-layout science lake.
    // One alert (ZTF18acqucmw) is in both the raw and the science files.
    let root = data.join("ztf/parquet");
    let server = Server::start(&[("ztf", DatasetKind::Ztf, &root)], &dir.path().join("index")).await;
    let alerts = lake_alerts(&root, true);
    assert_eq!(alerts.len(), 15);
    let mut uniq: Vec<LakeAlert> = Vec::new();
    for a in alerts {
        if let Some(u) = uniq.iter().find(|u| u.candid == a.candid) {
            assert_eq!(u.stamps, a.stamps, "the duplicate alert has the same stamps");
        } else {
            uniq.push(a);
        }
    }
    assert_eq!(uniq.len(), 14);
    check_all_stamps(&server, "ztf", &uniq, true).await;
    let mut c = server.client().await;
    let b = get(
        &mut c,
        r#"{"cutout": {"dataset": "ztf", "objectId": "ZTF18acqucmw", "all": true, "kind": "Science"}}"#,
    )
    .await
    .unwrap();
    assert_eq!(
        b.iter().map(|b| b.num_rows()).sum::<usize>(),
        1,
        "one copy of a duplicated alert"
    );
    let t = Ticket::new(
        r#"{"cutout": {"dataset": "ztf", "objectId": "ZTF20aabaesm", "kind": "Science", "format": "array"}}"#,
    );
    let b: Vec<_> = c.do_get(t).await.unwrap().try_collect().await.unwrap();
    assert_eq!(
        b[0].column_by_name("width")
            .unwrap()
            .as_primitive::<Int32Type>()
            .value(0),
        63
    );
    server.stop().await;
}
