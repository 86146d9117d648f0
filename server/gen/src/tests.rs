use std::fs::File;

use arrow::array::{Array, AsArray};
use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
use parquet::file::metadata::PageIndexPolicy;

use super::*;
use crate::testdata::shared_data_or_skip;
use astroflight_fits as fits;

fn small(survey: SurveyKind, dir: &Path, page_index: bool) -> Vec<GeneratedFile> {
    generate(&GenOptions {
        survey,
        out: dir.to_path_buf(),
        nights: 2,
        files_per_night: 1,
        alerts_per_file: 150,
        page_index,
        ..Default::default()
    })
    .unwrap()
}

fn open(path: &Path) -> ParquetRecordBatchReaderBuilder<File> {
    let opts = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional);
    ParquetRecordBatchReaderBuilder::try_new_with_options(File::open(path).unwrap(), opts).unwrap()
}

#[test]
fn ztf_files_are_spark_like_with_valid_distinct_stamps() {
    let dir = tempfile::tempdir().unwrap();
    let files = small(SurveyKind::Ztf, dir.path(), true);
    assert_eq!(files.len(), 2);
    let rel = files[0]
        .path
        .strip_prefix(dir.path())
        .unwrap()
        .to_string_lossy()
        .to_string();
    assert!(rel.starts_with("year=2020/month=01/day=01/part-00000-"), "{rel}");
    assert!(rel.ends_with(".c000.snappy.parquet"));

    let b = open(&files[0].path);
    let md = b.metadata().clone();
    assert_eq!(md.num_row_groups(), 1);
    assert_eq!(md.row_group(0).num_rows(), 150);
    // The embedded schema is what was written (field names, types, nullability): the raw
    // alert, plus Fink's `cdsxmatch`.
    let mut expect: Vec<_> = schema::parse(schema::ZTF_RAW).fields().iter().cloned().collect();
    expect.push(Arc::new(arrow_schema::Field::new(
        "cdsxmatch",
        arrow_schema::DataType::Utf8,
        true,
    )));
    assert_eq!(schema::strip_schema(b.schema()), arrow_schema::Schema::new(expect));
    // Offset index present; the stamp column is cut into ~1 MB pages.
    let sd = md.file_metadata().schema_descr();
    let col = (0..sd.num_columns())
        .find(|&i| sd.column(i).path().string() == "cutoutScience.stampData")
        .unwrap();
    let oi = md.offset_index().expect("offset index");
    let pages = &oi[0][col].page_locations;
    assert!(pages.len() >= 2, "{} pages", pages.len());
    for p in &pages[..pages.len() - 1] {
        assert!(
            (900_000..1_400_000).contains(&p.compressed_page_size),
            "page of {} bytes",
            p.compressed_page_size
        );
    }

    let batch = b.build().unwrap().next().unwrap().unwrap();
    let mut seen = std::collections::HashSet::new();
    for kind in STAMP_KINDS {
        let s = batch.column_by_name(&format!("cutout{kind}")).unwrap().as_struct();
        let data = s.column_by_name("stampData").unwrap().as_binary::<i32>();
        for i in 0..data.len() {
            let bytes = data.value(i);
            assert!(fits::is_gzip(bytes));
            let img = fits::decode_image(bytes).unwrap();
            assert_eq!((img.width, img.height), (63, 63));
            assert!(seen.insert(bytes.to_vec()), "stamps are distinct");
        }
    }
    // Ids are unique; some objects have several alerts across the lake.
    let cand = batch
        .column_by_name("candid")
        .unwrap()
        .as_primitive::<arrow::datatypes::Int64Type>();
    let uniq: std::collections::HashSet<i64> = cand.values().iter().copied().collect();
    assert_eq!(uniq.len(), 150);
}

#[test]
fn old_parquet_mr_layout_has_no_page_index() {
    let dir = tempfile::tempdir().unwrap();
    let files = small(SurveyKind::Ztf, dir.path(), false);
    let b = open(&files[0].path);
    assert!(b.metadata().offset_index().is_none());
}

#[test]
fn lsst_files_follow_the_rubin_schema_with_plain_fits() {
    let dir = tempfile::tempdir().unwrap();
    let files = small(SurveyKind::Lsst, dir.path(), true);
    let b = open(&files[0].path);
    assert_eq!(schema::strip_schema(b.schema()), schema::parse(schema::LSST_V9_0));
    let batch = b.build().unwrap().next().unwrap().unwrap();
    let stamps = batch.column_by_name("cutoutDifference").unwrap().as_binary::<i32>();
    let img = fits::decode_image(stamps.value(0)).unwrap();
    assert!(!fits::is_gzip(stamps.value(0)));
    assert_eq!((img.width, img.height), (51, 51));
    let top = batch
        .column_by_name("diaSourceId")
        .unwrap()
        .as_primitive::<arrow::datatypes::Int64Type>();
    let nested = batch
        .column_by_name("diaSource")
        .unwrap()
        .as_struct()
        .column_by_name("diaSourceId")
        .unwrap()
        .as_primitive::<arrow::datatypes::Int64Type>()
        .clone();
    assert_eq!(top.values(), nested.values());

    let dir10 = tempfile::tempdir().unwrap();
    let f10 = generate(&GenOptions {
        survey: SurveyKind::Lsst,
        out: dir10.path().into(),
        nights: 1,
        files_per_night: 1,
        alerts_per_file: 5,
        lsst_schema: LsstSchema::V10_0,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        schema::strip_schema(open(&f10[0].path).schema()),
        schema::parse(schema::LSST_V10_0)
    );
}

#[test]
fn generation_is_deterministic() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let opts = |d: &Path| GenOptions {
        out: d.into(),
        nights: 1,
        files_per_night: 2,
        alerts_per_file: 20,
        ..Default::default()
    };
    let fa = generate(&opts(a.path())).unwrap();
    let fb = generate(&opts(b.path())).unwrap();
    for (x, y) in fa.iter().zip(&fb) {
        assert_eq!(
            x.path.strip_prefix(a.path()).unwrap(),
            y.path.strip_prefix(b.path()).unwrap()
        );
        assert_eq!(std::fs::read(&x.path).unwrap(), std::fs::read(&y.path).unwrap());
    }
}

#[test]
fn dates_and_object_ids() {
    assert_eq!(civil_from_jd(2458849.5), (2020, 1, 1));
    assert_eq!(civil_from_jd(2458849.5 + 31.0), (2020, 2, 1));
    assert_eq!(civil_from_jd(2451544.5), (2000, 1, 1));
    let ids: std::collections::HashSet<String> = (0..20_000).map(ztf_object_id).collect();
    assert_eq!(ids.len(), 20_000);
    assert!(ids.iter().all(|i| i.len() == 12 && i.starts_with("ZTF")));
}

#[test]
fn embedded_schemas_match_the_real_files() {
    let Some(data) = shared_data_or_skip("embedded_schemas_match_the_real_files") else {
        return;
    };
    let raw = std::fs::read_dir(data.join("ztf/parquet/online/raw/20200101"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    for (file, json) in [
        (raw, schema::ZTF_RAW),
        (data.join("lsst/schema/lsst.v9_0.parquet"), schema::LSST_V9_0),
        (data.join("lsst/schema/lsst.v10_0.parquet"), schema::LSST_V10_0),
    ] {
        assert_eq!(
            schema::strip_schema(open(&file).schema()),
            schema::parse(json),
            "{}",
            file.display()
        );
    }
}

#[test]
fn stamps_can_be_shrunk() {
    let dir = tempfile::tempdir().unwrap();
    let files = generate(&GenOptions {
        out: dir.path().into(),
        nights: 1,
        files_per_night: 1,
        alerts_per_file: 4,
        stamp_side: Some(8),
        ..Default::default()
    })
    .unwrap();
    let batch = open(&files[0].path).build().unwrap().next().unwrap().unwrap();
    let s = batch.column_by_name("cutoutScience").unwrap().as_struct();
    let data = s.column_by_name("stampData").unwrap().as_binary::<i32>();
    let img = fits::decode_image(data.value(0)).unwrap();
    assert_eq!((img.width, img.height), (8, 8));
}

/// The id columns of an id-only lake, file by file: (group, id, time) per alert, the group being
/// the objectId's key (ZTF) or the diaObjectId (Rubin).
fn id_rows(files: &[GeneratedFile], kind: SurveyKind) -> Vec<Vec<(String, i64, f64)>> {
    files
        .iter()
        .map(|f| {
            let mut rows = Vec::new();
            for b in open(&f.path).build().unwrap() {
                let b = b.unwrap();
                let (group, id, time): (Vec<String>, &arrow::array::Int64Array, &arrow::array::Float64Array) =
                    match kind {
                        SurveyKind::Ztf => (
                            b.column(0)
                                .as_string::<i32>()
                                .iter()
                                .map(|v| v.unwrap().to_string())
                                .collect(),
                            b.column(1).as_primitive(),
                            b.column(2).as_struct().column(0).as_primitive(),
                        ),
                        SurveyKind::Lsst => {
                            let s = b.column(0).as_struct();
                            let g: &arrow::array::Int64Array = s.column(1).as_primitive();
                            (
                                g.values().iter().map(|v| v.to_string()).collect(),
                                s.column(0).as_primitive(),
                                s.column(2).as_primitive(),
                            )
                        }
                    };
                for (i, g) in group.into_iter().enumerate() {
                    rows.push((g, id.value(i), time.value(i)));
                }
            }
            rows
        })
        .collect()
}

#[test]
fn id_lakes_have_the_shapes_of_the_streams() {
    use crate::idlake::{generate_id_lake, IdLake};
    for kind in [SurveyKind::Ztf, SurveyKind::Lsst] {
        let dir = tempfile::tempdir().unwrap();
        let lake = IdLake::new(kind, 6, 4_000);
        let files = generate_id_lake(dir.path(), &lake).unwrap();
        assert_eq!(files.len(), 6);
        assert!(files.iter().all(|f| f.alerts == 4_000));
        let rows = id_rows(&files, kind);
        let all: Vec<&(String, i64, f64)> = rows.iter().flatten().collect();
        // Ids are unique; objects have about ten alerts and recur over nights.
        let ids: std::collections::HashSet<i64> = all.iter().map(|r| r.1).collect();
        assert_eq!(ids.len(), all.len(), "{kind:?}");
        let mut per_object: std::collections::HashMap<&str, (usize, std::collections::HashSet<usize>)> =
            Default::default();
        for (night, file) in rows.iter().enumerate() {
            for r in file {
                let e = per_object.entry(r.0.as_str()).or_default();
                e.0 += 1;
                e.1.insert(night);
            }
        }
        let mean = all.len() as f64 / per_object.len() as f64;
        assert!((7.0..13.0).contains(&mean), "{kind:?}: {mean} alerts per object");
        let recurring = per_object.values().filter(|(_, nights)| nights.len() > 1).count();
        assert!(
            recurring * 2 > per_object.len(),
            "{kind:?}: {recurring} of {} objects on several nights",
            per_object.len()
        );
        // Rows come in exposure order: times never go back within a file; the ids within an
        // exposure do not come sorted (detectors interleave).
        for file in &rows {
            assert!(file.windows(2).all(|w| w[0].2 <= w[1].2));
            assert!(file.windows(2).any(|w| w[0].1 > w[1].1));
        }
        if kind == SurveyKind::Ztf {
            for (night, file) in rows.iter().enumerate() {
                // candid = pid * 10^6 + ..., and pid starts with the night id (as in
                // 1095578115815010001, night 1095).
                assert!(file.iter().all(|r| r.1 / 1_000_000_000_000_000 == 1_000 + night as i64));
            }
            for r in &all {
                // Every name has ZTF's shape (it packs into 40 bits); jd has 7 decimals.
                let k = astroflight_index::objkey::ObjectKey::of(&r.0);
                assert!(!k.is_hashed(), "{}", r.0);
                assert_eq!((r.2 * 1e7).round() / 1e7, r.2);
            }
        }
    }
}
