//! Builder and lookup tests over small parquet files written in a temporary directory.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, StructArray};
use arrow::datatypes::{DataType, Field, Fields, Schema};
use object_store::local::LocalFileSystem;
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;

use crate::*;

/// Write a minimal ZTF-shaped file: (objectId, candid, jd) rows, `rg_rows` rows per row group.
fn write_ztf(dir: &std::path::Path, name: &str, rows: &[(&str, i64, f64)], rg_rows: usize) {
    let rows: Vec<(&str, i64, Option<f64>)> = rows.iter().map(|r| (r.0, r.1, Some(r.2))).collect();
    write_ztf_nullable_jd(dir, name, &rows, rg_rows);
}

/// The same, with a `jd` column that may hold nulls.
fn write_ztf_nullable_jd(dir: &std::path::Path, name: &str, rows: &[(&str, i64, Option<f64>)], rg_rows: usize) {
    let cand = Fields::from(vec![Field::new("jd", DataType::Float64, true)]);
    let schema = Arc::new(Schema::new(vec![
        Field::new("objectId", DataType::Utf8, true),
        Field::new("candid", DataType::Int64, true),
        Field::new("candidate", DataType::Struct(cand.clone()), true),
    ]));
    let jd: ArrayRef = Arc::new(Float64Array::from(rows.iter().map(|r| r.2).collect::<Vec<_>>()));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(rows.iter().map(|r| r.0).collect::<Vec<_>>())),
            Arc::new(Int64Array::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())),
            Arc::new(StructArray::new(cand, vec![jd], None)),
        ],
    )
    .unwrap();
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(rg_rows))
        .build();
    let mut w = ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

async fn build(dir: &std::path::Path, ix: &DatasetIndex) -> BuildStats {
    let store = Arc::new(LocalFileSystem::new_with_prefix(dir).unwrap());
    IndexBuilder::new(store, None, SurveyKind::Ztf, ix.clone())
        .run()
        .await
        .unwrap()
}

#[tokio::test]
async fn build_lookup_and_rebuild_incrementally() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_ztf(
        d,
        "year=2020/month=01/day=01/a.parquet",
        &[
            ("ZTF1", 10, 1.0),
            ("ZTF2", 11, 1.5),
            ("ZTF1", 12, 3.0),
            ("ZTF3", 13, 1.0),
        ],
        3,
    );
    write_ztf(d, "year=2020/month=01/day=02/b.parquet", &[("ZTF1", 20, 2.0)], 100);
    // Not data: Spark's marker, a temporary folder, a checksum.
    std::fs::write(d.join("year=2020/_SUCCESS"), b"").unwrap();
    write_ztf(d, "_temporary/0/x.parquet", &[("ZTF9", 99, 1.0)], 10);
    std::fs::write(d.join("year=2020/month=01/day=02/.b.parquet.crc"), b"x").unwrap();

    let ix = Index::temporary().unwrap().dataset("ztf").unwrap();
    let s = build(d, &ix).await;
    assert_eq!((s.listed, s.indexed, s.rows, s.unchanged), (2, 2, 5, 0));
    assert!(s.failed.is_empty());

    let all = ix.object_alerts("ZTF1").unwrap();
    assert_eq!(all.iter().map(|h| h.candid).collect::<Vec<_>>(), vec![10, 20, 12]);
    let latest = ix.latest_alert("ZTF1").unwrap().unwrap();
    assert_eq!((latest.candid, latest.jd), (12, 3.0));
    // Third row of a.parquet's row groups of 3: row group 0, row 2.
    assert_eq!((latest.location.row_group, latest.location.row), (0, 2));
    let h = ix.candid(13).unwrap().unwrap();
    assert_eq!(
        (h.object_id.as_str(), h.location.row_group, h.location.row),
        ("ZTF3", 1, 0)
    );
    let f = ix.file(h.location.file_id).unwrap().unwrap();
    assert_eq!(f.path, "year=2020/month=01/day=01/a.parquet");
    assert_eq!(f.row_groups, vec![3, 1]);
    assert!(ix.candid(99).unwrap().is_none());
    assert!(
        ix.object_alerts("ZTF").unwrap().is_empty(),
        "prefix of another objectId"
    );

    // Nothing changed: nothing read.
    let s = build(d, &ix).await;
    assert_eq!((s.indexed, s.unchanged, s.removed), (0, 2, 0));

    // Change one file, delete the other.
    std::thread::sleep(std::time::Duration::from_millis(20));
    write_ztf(d, "year=2020/month=01/day=01/a.parquet", &[("ZTF4", 40, 4.0)], 10);
    std::fs::remove_file(d.join("year=2020/month=01/day=02/b.parquet")).unwrap();
    let s = build(d, &ix).await;
    assert_eq!((s.indexed, s.unchanged, s.removed, s.rows), (1, 0, 2, 1));
    assert!(ix.object_alerts("ZTF1").unwrap().is_empty());
    assert!(ix.candid(20).unwrap().is_none());
    assert_eq!(ix.candid(40).unwrap().unwrap().object_id, "ZTF4");
    assert_eq!(ix.catalog().files().unwrap().len(), 1);
    let sum = ix.summary().unwrap();
    assert_eq!((sum.files, sum.alerts), (1, 1));
    assert_eq!(
        sum.bytes,
        std::fs::metadata(d.join("year=2020/month=01/day=01/a.parquet"))
            .unwrap()
            .len()
    );
}

#[tokio::test]
async fn the_same_alert_in_two_files_is_found_once_and_survives_losing_one_copy() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_ztf(d, "raw/a.parquet", &[("ZTF1", 10, 1.0), ("ZTF1", 11, 2.0)], 10);
    write_ztf(d, "science/b.parquet", &[("ZTF1", 10, 1.0)], 10);
    let ix = Index::temporary().unwrap().dataset("ztf").unwrap();
    build(d, &ix).await;
    assert_eq!(
        ix.object_alerts("ZTF1")
            .unwrap()
            .iter()
            .map(|h| h.candid)
            .collect::<Vec<_>>(),
        vec![10, 11]
    );
    // The raw locations keep both copies of candid 10 (a SQL scan returns both rows).
    let paths = |id: IdKey| -> Vec<(String, u32)> {
        let mut v: Vec<(String, u32)> = ix
            .locations(&id)
            .unwrap()
            .iter()
            .map(|l| (ix.file(l.file_id).unwrap().unwrap().path, l.row))
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        paths(IdKey::Candid(10)),
        vec![("raw/a.parquet".into(), 0), ("science/b.parquet".into(), 0)]
    );
    assert_eq!(paths(IdKey::ObjectId("ZTF1".into())).len(), 3);
    assert_eq!(paths(IdKey::Candid(11)), vec![("raw/a.parquet".into(), 1)]);
    assert!(paths(IdKey::Candid(12)).is_empty());
    std::fs::remove_file(d.join("raw/a.parquet")).unwrap();
    build(d, &ix).await;
    let h = ix.candid(10).unwrap().unwrap();
    assert_eq!(ix.file(h.location.file_id).unwrap().unwrap().path, "science/b.parquet");
}

#[tokio::test]
async fn an_alert_without_jd_is_never_the_latest() {
    let dir = tempfile::tempdir().unwrap();
    write_ztf_nullable_jd(
        dir.path(),
        "a.parquet",
        &[
            ("ZTF1", 10, Some(2458849.5)),
            ("ZTF1", 11, None),
            ("ZTF1", 12, Some(2458850.5)),
            ("ZTF1", 13, Some(2458849.9)),
            ("ZTF2", 20, None),
        ],
        100,
    );
    let ix = Index::temporary().unwrap().dataset("ztf").unwrap();
    build(dir.path(), &ix).await;
    assert_eq!(ix.latest_alert("ZTF1").unwrap().unwrap().candid, 12);
    // Only undated alerts: no latest, but the alert is there.
    assert!(ix.latest_alert("ZTF2").unwrap().is_none());
    assert_eq!(ix.object_alerts("ZTF2").unwrap().len(), 1);
    // Undated first, then by time.
    let order: Vec<i64> = ix.object_alerts("ZTF1").unwrap().iter().map(|h| h.candid).collect();
    assert_eq!(order, vec![11, 10, 13, 12]);
}

#[tokio::test]
async fn a_changed_file_is_served_from_its_newest_copy_and_builds_are_serialized() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_ztf(d, "a.parquet", &[("ZTF1", 10, 1.0), ("ZTF1", 11, 2.0)], 10);
    let index = Index::temporary().unwrap();
    let ix = index.dataset("ztf").unwrap();
    build(d, &ix).await;
    let old_file = ix.candid(10).unwrap().unwrap().location.file_id;
    // The same alert in a second file (a compaction wrote it again): the newest copy is served
    // while both are committed, and the latest alert of the object moves forward.
    write_ztf(
        d,
        "b.parquet",
        &[("ZTF1", 10, 1.0), ("ZTF1", 11, 2.0), ("ZTF1", 12, 3.0)],
        10,
    );
    // Two builds at once through two handles of the same dataset: serialized, so the new file
    // is indexed once.
    let ix2 = index.dataset("ztf").unwrap();
    let (s1, s2) = tokio::join!(build(d, &ix), build(d, &ix2));
    assert_eq!(s1.indexed + s2.indexed, 1, "{s1:?} {s2:?}");
    assert_eq!(ix.catalog().files().unwrap().len(), 2);
    let h = ix.candid(10).unwrap().unwrap();
    assert_ne!(h.location.file_id, old_file);
    assert_eq!(ix.file(h.location.file_id).unwrap().unwrap().path, "b.parquet");
    assert_eq!(ix.latest_alert("ZTF1").unwrap().unwrap().candid, 12);
    let all: Vec<(i64, u64)> = ix
        .object_alerts("ZTF1")
        .unwrap()
        .iter()
        .map(|h| (h.candid, h.location.file_id))
        .collect();
    assert_eq!(all.len(), 3);
    assert!(all.iter().all(|(_, f)| *f == h.location.file_id), "{all:?}");
}

#[tokio::test]
async fn an_index_of_the_old_sled_layout_is_rebuilt_once() {
    let dir = tempfile::tempdir().unwrap();
    let lake = tempfile::tempdir().unwrap();
    write_ztf(lake.path(), "a.parquet", &[("ZTF1", 10, 1.0)], 10);
    {
        // What format 2 left: every id in sled trees.
        let db = sled::open(dir.path()).unwrap();
        db.open_tree("ztf/obj")
            .unwrap()
            .insert(b"old-layout-key", b"x")
            .unwrap();
        db.open_tree("ztf/files")
            .unwrap()
            .insert(1u64.to_be_bytes(), b"old entry")
            .unwrap();
        db.insert("ztf/format", b"2".as_ref()).unwrap();
        db.flush().unwrap();
    }
    let index = Index::open(dir.path()).ok().unwrap();
    let ix = index.dataset("ztf").unwrap();
    assert!(!index.db.tree_names().iter().any(|n| n.as_ref() == b"ztf/obj"));
    assert!(ix.catalog().files().unwrap().is_empty());
    let s = build(lake.path(), &ix).await;
    assert_eq!(s.indexed, 1);
    assert_eq!(ix.candid(10).unwrap().unwrap().object_id, "ZTF1");
    drop((ix, index));
    // Once: the next open keeps it.
    let index = Index::open(dir.path()).ok().unwrap();
    let ix = index.dataset("ztf").unwrap();
    assert_eq!(ix.index_stats().segments, 1);
    assert_eq!(build(lake.path(), &ix).await.unchanged, 1);
}

#[tokio::test]
async fn what_a_killed_build_left_is_removed_and_never_served() {
    let lake = tempfile::tempdir().unwrap();
    write_ztf(lake.path(), "a.parquet", &[("ZTF1", 10, 1.0)], 10);
    let index = Index::temporary().unwrap();
    let ix = index.dataset("ztf").unwrap();
    // A staged segment and a scratch directory, as a build killed before its commit leaves.
    let seg = ix.segdir.dir().to_path_buf();
    std::fs::write(seg.join("g000000000001-0000.seg.tmp"), b"half a segment").unwrap();
    std::fs::create_dir_all(seg.join("scratch-g000000000001-0000.seg/group")).unwrap();
    assert!(ix.candid(10).unwrap().is_none());
    let s = build(lake.path(), &ix).await;
    assert_eq!((s.repaired, s.indexed), (2, 1));
    let mut left: Vec<String> = std::fs::read_dir(&seg)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, vec!["g000000000001-0000.seg".to_string()]);
    assert!(ix.candid(10).unwrap().is_some());
}

#[tokio::test]
async fn a_corrupt_segment_is_reported_never_served_and_rebuilt() {
    let lake = tempfile::tempdir().unwrap();
    let rows: Vec<(String, i64, f64)> = (0..3000).map(|i| (format!("ZTF{}", i % 300), i, i as f64)).collect();
    let rows: Vec<(&str, i64, f64)> = rows.iter().map(|(o, c, t)| (o.as_str(), *c, *t)).collect();
    write_ztf(lake.path(), "a.parquet", &rows, 1000);
    let dir = tempfile::tempdir().unwrap();
    let seg_path;
    {
        let index = Index::open(dir.path()).ok().unwrap();
        let ix = index.dataset("ztf").unwrap();
        build(lake.path(), &ix).await;
        assert_eq!(ix.candid(1234).unwrap().unwrap().object_id, "ZTF34");
        let m = ix.segdir.manifest().unwrap();
        seg_path = ix.segdir.path(&m.segments[0].name);
    }
    // Flip one byte in the first block of the segment (its `rows` table starts the file).
    let mut bytes = std::fs::read(&seg_path).unwrap();
    bytes[40] ^= 0x5a;
    std::fs::write(&seg_path, &bytes).unwrap();
    let index = Index::open(dir.path()).ok().unwrap();
    let ix = index.dataset("ztf").unwrap();
    let e = ix.canonical_dump().unwrap_err().to_string();
    assert!(
        e.contains(&seg_path.display().to_string()) && e.contains("corrupt"),
        "{e}"
    );
    // From then on every lookup refuses, naming the segment: never a partial answer.
    let e = ix.candid(1234).unwrap_err().to_string();
    assert!(e.contains(&seg_path.display().to_string()), "{e}");
    let s = build(lake.path(), &ix).await;
    assert_eq!((s.repaired, s.indexed), (1, 1));
    assert_eq!(ix.candid(1234).unwrap().unwrap().object_id, "ZTF34");
    assert_eq!(ix.object_alerts("ZTF7").unwrap().len(), 10);
    ix.canonical_dump().unwrap();
}

#[tokio::test]
async fn a_corrupt_file_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    write_ztf(dir.path(), "good.parquet", &[("ZTF1", 10, 1.0)], 10);
    std::fs::write(dir.path().join("bad.parquet"), b"this is not parquet at all").unwrap();
    // A parquet file that is not an alert file.
    let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
    let mut w = ArrowWriter::try_new(
        std::fs::File::create(dir.path().join("other.parquet")).unwrap(),
        schema.clone(),
        None,
    )
    .unwrap();
    w.write(&RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1]))]).unwrap())
        .unwrap();
    w.close().unwrap();

    let ix = Index::temporary().unwrap().dataset("ztf").unwrap();
    let s = build(dir.path(), &ix).await;
    assert_eq!(s.indexed, 1);
    let mut failed: Vec<_> = s.failed.iter().map(|(p, _)| p.as_str()).collect();
    failed.sort();
    assert_eq!(failed, vec!["bad.parquet", "other.parquet"]);
    assert!(
        s.failed.iter().any(|(_, m)| m.contains("no column `objectId`")),
        "{:?}",
        s.failed
    );
    assert!(ix.candid(10).unwrap().is_some());
}

#[test]
fn dataset_names_are_checked() {
    let ix = Index::temporary().unwrap();
    assert!(ix.dataset("ztf-2020_raw").is_ok());
    assert!(ix.dataset("../x").is_err());
    assert!(ix.dataset("").is_err());
}

#[test]
fn an_index_held_by_another_opener_is_locked_not_broken() {
    // A second open of a live index must not be taken for a broken one (the server moves a
    // broken index aside and rebuilds it: a live one must never be moved).
    let dir = tempfile::tempdir().unwrap();
    let first = Index::open(dir.path()).unwrap();
    match Index::open(dir.path()) {
        Err(OpenError::Locked(_)) => {}
        Err(OpenError::Broken(e)) => panic!("a held index was reported broken: {e}"),
        Ok(_) => panic!("the index opened twice"),
    }
    drop(first);
}

#[tokio::test]
async fn a_class_that_cannot_be_computed_leaves_the_ids_indexed_and_the_file_uncounted() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_ztf(
        d,
        "year=2020/month=01/day=01/a.parquet",
        &[("ZTF1", 10, 1.0), ("ZTF2", 11, 1.5)],
        10,
    );
    let store = Arc::new(LocalFileSystem::new_with_prefix(d).unwrap());
    let build_with = |spec: ClassSpec| {
        let ix = Index::temporary().unwrap().dataset("ztf").unwrap();
        let builder = IndexBuilder::new(store.clone(), None, SurveyKind::Ztf, ix.clone()).with_classes(Some(spec));
        async move { (builder.run().await.unwrap(), ix) }
    };
    // An expression's words include its functions and keywords, which are not columns: the
    // class is computed all the same (one column of it is in the file).
    let upper = ClassSpec {
        key: "CASE WHEN true THEN upper(objectId) END".into(),
        columns: vec!["CASE".into(), "WHEN".into(), "upper".into(), "objectId".into()],
        eval: Arc::new(|b: &RecordBatch| {
            let ids = b.column_by_name("objectId").ok_or("no objectId")?;
            let s = ids.as_any().downcast_ref::<StringArray>().ok_or("not strings")?;
            Ok(Arc::new(StringArray::from_iter(s.iter().map(|v| v.map(|v| v.to_lowercase())))) as ArrayRef)
        }),
    };
    let (s, ix) = build_with(upper).await;
    assert!(s.failed.is_empty());
    let stats = ix.catalog().files().unwrap()[0].stats.clone().expect("counted");
    let classes: Vec<_> = stats.counts.iter().map(|c| c.class.clone()).collect();
    assert_eq!(classes, vec![Some("ztf1".to_string()), Some("ztf2".to_string())]);
    // A class that fails (an expression past the server's memory bounds): the file's ids are
    // indexed, its alerts not counted by class.
    let failing = ClassSpec {
        key: "repeat(objectId, 100000000)".into(),
        columns: vec!["repeat".into(), "objectId".into()],
        eval: Arc::new(|_: &RecordBatch| Err("repeat() would build a value of 1.1 GiB".to_string())),
    };
    let (s, ix) = build_with(failing).await;
    assert!(s.failed.is_empty(), "{:?}", s.failed);
    assert_eq!(ix.candid(11).unwrap().unwrap().object_id, "ZTF2");
    assert!(ix.catalog().files().unwrap()[0].stats.is_none());
}

#[tokio::test]
async fn builds_merge_their_segments_and_the_dump_equals_a_one_go_build() {
    let lake = tempfile::tempdir().unwrap();
    let d = lake.path();
    let index = Index::temporary().unwrap();
    let ix = index.dataset("ztf").unwrap();
    // Nine nightly builds of one file each; the object ZTF1 recurs every night. Night 3's file
    // is deleted after night 5, night 4's rewritten.
    for night in 0..9i64 {
        let rows: Vec<(String, i64, f64)> = (0..50)
            .map(|i| {
                (
                    format!("ZTF{}", i % 20),
                    night * 1000 + i,
                    night as f64 + i as f64 / 100.0,
                )
            })
            .collect();
        let rows: Vec<(&str, i64, f64)> = rows.iter().map(|(o, c, t)| (o.as_str(), *c, *t)).collect();
        write_ztf(d, &format!("night={night}/a.parquet"), &rows, 16);
        if night == 5 {
            std::fs::remove_dir_all(d.join("night=3")).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
            write_ztf(d, "night=4/a.parquet", &[("ZTF1", 4000, 4.5)], 16);
        }
        let s = build(d, &ix).await;
        assert!(s.failed.is_empty());
        let st = ix.index_stats();
        assert!(st.segments < MERGE_FANIN + 3, "night {night}: {st:?}");
    }
    let st = ix.index_stats();
    assert!(st.generation >= 9 && st.segments >= 1, "{st:?}");
    // Night 3 is gone, night 4 holds one alert: 7 * 50 + 1 live alerts.
    let live: usize = (0..20)
        .map(|o| ix.object_alerts(&format!("ZTF{o}")).unwrap().len())
        .sum();
    assert_eq!(live, 7 * 50 + 1);
    assert!(ix.candid(3001).unwrap().is_none());
    assert_eq!(ix.candid(4000).unwrap().unwrap().object_id, "ZTF1");
    assert_eq!(ix.latest_alert("ZTF19").unwrap().unwrap().candid, 8039);
    // The same lake in one build gives the same dump.
    let fresh = Index::temporary().unwrap().dataset("ztf").unwrap();
    build(d, &fresh).await;
    assert_eq!(fresh.index_stats().segments, 1);
    assert_eq!(ix.canonical_dump().unwrap(), fresh.canonical_dump().unwrap());
}

#[tokio::test]
async fn objectids_that_are_not_ztf_shaped_round_trip_and_a_collision_is_refused() {
    let lake = tempfile::tempdir().unwrap();
    write_ztf(
        lake.path(),
        "a.parquet",
        &[("ZTF20aabaesm", 1, 1.0), ("obj-1", 2, 2.0), ("obj-2", 3, 3.0)],
        10,
    );
    let ix = Index::temporary().unwrap().dataset("ztf").unwrap();
    build(lake.path(), &ix).await;
    assert_eq!(ix.candid(1).unwrap().unwrap().object_id, "ZTF20aabaesm");
    assert_eq!(ix.candid(2).unwrap().unwrap().object_id, "obj-1");
    assert_eq!(ix.object_alerts("obj-2").unwrap()[0].candid, 3);
    assert!(ix.object_alerts("obj-3").unwrap().is_empty());
    // Plant another string under obj-3's key, as a hash collision would: a file with obj-3
    // is refused, and obj-3 never answers with the other's alerts.
    let k = objkey::ObjectKey::of("obj-3").0;
    ix.names.insert(k.to_be_bytes(), b"planted".as_ref()).unwrap();
    write_ztf(lake.path(), "b.parquet", &[("obj-3", 4, 4.0)], 10);
    let s = build(lake.path(), &ix).await;
    assert_eq!(s.indexed, 0);
    assert!(s.failed[0].1.contains("same 63-bit key"), "{:?}", s.failed);
    assert!(ix.object_alerts("obj-3").unwrap().is_empty());
    assert!(ix.candid(4).unwrap().is_none());
}

/// Publish `from`'s current generation to `root` and load it into `to`.
async fn publish_then_follow(
    root: &std::path::Path,
    from: &DatasetIndex,
    to: &DatasetIndex,
    retain: std::time::Duration,
) -> (publish::PublishStats, publish::FollowStats) {
    let store: Arc<dyn object_store::ObjectStore> = Arc::new(LocalFileSystem::new_with_prefix(root).unwrap());
    let p = publish::Publisher::new(store.clone(), retain)
        .publish(from)
        .await
        .unwrap();
    let f = publish::follow(to, store.as_ref(), false).await.unwrap();
    (p, f)
}

#[tokio::test]
async fn a_follower_serves_the_published_generation_and_only_whole_ones() {
    let lake = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let (d, r) = (lake.path(), root.path());
    write_ztf(
        d,
        "n1/a.parquet",
        &[("ZTF1", 10, 1.0), ("ZTF2", 11, 1.5), ("ZTF1", 12, 3.0)],
        2,
    );
    // A name that is not ZTF-shaped travels in the published state.
    write_ztf(d, "n1/b.parquet", &[("odd-name", 20, 2.0)], 10);
    let builder = Index::temporary().unwrap().dataset("ztf").unwrap();
    let follower = Index::temporary().unwrap().dataset("ztf").unwrap();
    let none: Arc<dyn object_store::ObjectStore> = Arc::new(LocalFileSystem::new_with_prefix(r).unwrap());
    assert!(matches!(
        publish::follow(&follower, none.as_ref(), false).await,
        Err(IndexError::NotPublished(_))
    ));
    build(d, &builder).await;
    let retain = std::time::Duration::from_secs(3600);
    let (p, f) = publish_then_follow(r, &builder, &follower, retain).await;
    assert_eq!(p.segments_uploaded, 1);
    assert_eq!(f.segments_downloaded, 1);
    assert_eq!(follower.canonical_dump().unwrap(), builder.canonical_dump().unwrap());
    assert_eq!(
        follower.object_alerts("ZTF1").unwrap(),
        builder.object_alerts("ZTF1").unwrap()
    );
    assert_eq!(follower.latest_alert("odd-name").unwrap().unwrap().candid, 20);
    assert_eq!(follower.candid(11).unwrap(), builder.candid(11).unwrap());
    assert_eq!(follower.index_stats(), builder.index_stats());
    assert_eq!(follower.followed().unwrap().unwrap().lineage, builder.lineage());
    // Nothing new: neither side moves.
    let (p, f) = publish_then_follow(r, &builder, &follower, retain).await;
    assert_eq!((p.published, f.installed), (None, None));

    // New data: one more segment travels; the first is reused from the follower's cache.
    write_ztf(d, "n2/c.parquet", &[("ZTF1", 30, 4.0), ("ZTF4", 31, 4.0)], 10);
    build(d, &builder).await;
    let (p, f) = publish_then_follow(r, &builder, &follower, retain).await;
    assert_eq!((p.segments_uploaded, f.segments_downloaded), (1, 1));
    assert_eq!(follower.latest_alert("ZTF1").unwrap().unwrap().candid, 30);
    assert_eq!(follower.canonical_dump().unwrap(), builder.canonical_dump().unwrap());

    // A damaged published segment is refused; the follower keeps the generation it has.
    write_ztf(d, "n3/d.parquet", &[("ZTF5", 40, 5.0)], 10);
    build(d, &builder).await;
    let store: Arc<dyn object_store::ObjectStore> = Arc::new(LocalFileSystem::new_with_prefix(r).unwrap());
    publish::Publisher::new(store.clone(), retain)
        .publish(&builder)
        .await
        .unwrap();
    let newest = publish::latest(store.as_ref()).await.unwrap().unwrap();
    let seg = newest.segments.last().unwrap();
    let path = r.join(format!("segments/{}/{}", newest.lineage, seg.name));
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let before = follower.index_stats();
    let e = publish::follow(&follower, store.as_ref(), false).await.unwrap_err();
    assert!(e.to_string().contains("does not match its manifest"), "{e}");
    assert_eq!(follower.index_stats(), before);
    assert!(follower.candid(40).unwrap().is_none());
    assert_eq!(follower.latest_alert("ZTF1").unwrap().unwrap().candid, 30);
    // Leftover staging files of the failed download are gone.
    let staged = std::fs::read_dir(follower.segdir.dir())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".tmp"))
        .count();
    assert_eq!(staged, 0);
}

#[tokio::test]
async fn a_new_lineage_replaces_the_old_whole_and_old_generations_expire() {
    let lake = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let (d, r) = (lake.path(), root.path());
    write_ztf(d, "a.parquet", &[("ZTF1", 10, 1.0)], 10);
    let first = Index::temporary().unwrap().dataset("ztf").unwrap();
    let follower = Index::temporary().unwrap().dataset("ztf").unwrap();
    build(d, &first).await;
    let keep = std::time::Duration::from_secs(3600);
    publish_then_follow(r, &first, &follower, keep).await;
    write_ztf(d, "b.parquet", &[("ZTF2", 20, 2.0)], 10);
    build(d, &first).await;
    publish_then_follow(r, &first, &follower, keep).await;
    let count = |sub: &str| walk(&r.join(sub));
    assert_eq!(count("manifests"), 2, "both generations are kept within the retention");

    // The builder starts over (a new index directory): generation 1 of a new lineage, with
    // other file ids; the follower installs it whole and answers the same.
    let second = Index::temporary().unwrap().dataset("ztf").unwrap();
    build(d, &second).await;
    let (p, f) = publish_then_follow(r, &second, &follower, std::time::Duration::ZERO).await;
    assert_eq!(p.published.unwrap().generation, 1);
    assert_eq!(f.installed.unwrap().lineage, second.lineage());
    assert_eq!(follower.canonical_dump().unwrap(), second.canonical_dump().unwrap());
    assert_eq!(follower.index_stats(), second.index_stats());
    // With no retention, the replaced generations and their segments are gone.
    assert_eq!(p.generations_deleted, 2);
    assert_eq!(count("manifests"), 1);
    assert_eq!(count("segments"), second.index_stats().segments);
}

fn walk(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|it| {
            it.map(|e| {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    walk(&e.path())
                } else {
                    1
                }
            })
            .sum()
        })
        .unwrap_or(0)
}
