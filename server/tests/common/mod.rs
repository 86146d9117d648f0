//! Shared helpers of the integration tests: start the real server in-process on 127.0.0.1:0,
//! and read what the lake holds with a plain parquet reader (the reference the server must
//! match).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, Float64Array, Int64Array, RecordBatch, StringArray, StructArray,
};
use arrow::datatypes::{DataType, Field, Fields, Float64Type, Int64Type, Schema};
use arrow_flight::error::FlightError;
use arrow_flight::{Action, FlightClient, Ticket};
use futures::TryStreamExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use astroflight_server::app::StopHandle;
use astroflight_server::config::{Config, DatasetConfig, DatasetKind};
use astroflight_server::App;

pub fn config(datasets: &[(&str, DatasetKind, &Path)], index_dir: &Path) -> Config {
    let mut config = Config {
        listen: "127.0.0.1:0".into(),
        index_dir: index_dir.to_path_buf(),
        ..Config::default()
    };
    for (name, kind, root) in datasets {
        config
            .datasets
            .push(DatasetConfig::new(*name, *kind, root.to_string_lossy()));
    }
    config
}

pub struct Server {
    pub addr: SocketAddr,
    stop: Option<StopHandle>,
    join: Option<tokio::task::JoinHandle<astroflight_server::Result<()>>>,
}

impl Server {
    /// Start a server on the datasets and wait until it is ready (its first index build done).
    pub async fn start(datasets: &[(&str, DatasetKind, &Path)], index_dir: &Path) -> Server {
        Server::start_with(config(datasets, index_dir)).await
    }

    pub async fn start_with(config: Config) -> Server {
        let app = App::build(config).await.expect("server builds");
        let lake = app.lake().clone();
        let (addr, stop, join) = app.spawn();
        lake.ready().await;
        Server {
            addr,
            stop: Some(stop),
            join: Some(join),
        }
    }

    pub async fn client(&self) -> FlightClient {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .expect("connect");
        FlightClient::new(ch)
    }

    /// Stop and wait, so that the index directory is released.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            s.stop();
        }
        if let Some(j) = self.join.take() {
            j.await.unwrap().unwrap();
        }
    }
}

pub async fn get(c: &mut FlightClient, ticket: &str) -> Result<Vec<RecordBatch>, FlightError> {
    c.do_get(Ticket::new(ticket.to_string())).await?.try_collect().await
}

pub fn code(e: FlightError) -> (tonic::Code, String) {
    match e {
        FlightError::Tonic(s) => (s.code(), s.message().to_string()),
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

pub async fn io_bytes_requests(c: &mut FlightClient) -> (u64, u64) {
    let body = c
        .do_action(Action::new("stats", ""))
        .await
        .unwrap()
        .try_next()
        .await
        .unwrap()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    (
        v["io"]["bytes"].as_u64().unwrap(),
        v["io"]["requests"].as_u64().unwrap(),
    )
}

/// One alert as the lake holds it.
#[derive(Debug, Clone)]
pub struct LakeAlert {
    pub file: PathBuf,
    pub object_id: String,
    pub candid: i64,
    pub dia_object_id: i64,
    pub time: f64,
    /// Science, Template, Difference stamps, as stored.
    pub stamps: [Option<Vec<u8>>; 3],
}

pub use astroflight_gen::lake_files as parquet_files;

/// Every alert of the lake under `dir`, read with the plain parquet reader.
pub fn lake_alerts(dir: &Path, ztf: bool) -> Vec<LakeAlert> {
    let mut out = Vec::new();
    for f in parquet_files(dir) {
        let r = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&f).unwrap())
            .unwrap()
            .build()
            .unwrap();
        for b in r {
            let b = b.unwrap();
            for i in 0..b.num_rows() {
                let stamp = |k: &str| {
                    let col = b.column_by_name(&format!("cutout{k}")).unwrap();
                    let col = if ztf {
                        col.as_struct().column_by_name("stampData").unwrap().clone()
                    } else {
                        col.clone()
                    };
                    let bin = col.as_binary::<i32>();
                    bin.is_valid(i).then(|| bin.value(i).to_vec())
                };
                let (object_id, candid, dia_object_id, time) = if ztf {
                    (
                        b.column_by_name("objectId")
                            .unwrap()
                            .as_string::<i32>()
                            .value(i)
                            .to_string(),
                        b.column_by_name("candid").unwrap().as_primitive::<Int64Type>().value(i),
                        0,
                        b.column_by_name("candidate")
                            .unwrap()
                            .as_struct()
                            .column_by_name("jd")
                            .unwrap()
                            .as_primitive::<Float64Type>()
                            .value(i),
                    )
                } else {
                    let s = b.column_by_name("diaSource").unwrap().as_struct();
                    (
                        String::new(),
                        s.column_by_name("diaSourceId")
                            .unwrap()
                            .as_primitive::<Int64Type>()
                            .value(i),
                        s.column_by_name("diaObjectId")
                            .unwrap()
                            .as_primitive::<Int64Type>()
                            .value(i),
                        s.column_by_name("midpointMjdTai")
                            .unwrap()
                            .as_primitive::<Float64Type>()
                            .value(i),
                    )
                };
                out.push(LakeAlert {
                    file: f.clone(),
                    object_id,
                    candid,
                    dia_object_id,
                    time,
                    stamps: [stamp("Science"), stamp("Template"), stamp("Difference")],
                });
            }
        }
    }
    out
}

pub const KINDS: [&str; 3] = ["Science", "Template", "Difference"];

pub fn gunzip(b: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(b).read_to_end(&mut out).unwrap();
    out
}

/// (id, kind) -> stamp bytes, from result batches of format fits/gzip.
pub fn stamps_by_id(
    batches: &[RecordBatch],
    id_col: &str,
) -> std::collections::HashMap<(i64, String), Option<Vec<u8>>> {
    let mut m = std::collections::HashMap::new();
    for b in batches {
        let ids = b.column_by_name(id_col).unwrap().as_primitive::<Int64Type>();
        let kinds = b.column_by_name("kind").unwrap().as_string::<i32>();
        let st = b.column_by_name("stamp").unwrap().as_binary::<i32>();
        for i in 0..b.num_rows() {
            let prev = m.insert(
                (ids.value(i), kinds.value(i).to_string()),
                st.is_valid(i).then(|| st.value(i).to_vec()),
            );
            assert!(prev.is_none(), "duplicate row for {} {}", ids.value(i), kinds.value(i));
        }
    }
    m
}

/// One row of [`write_small_ztf`]: objectId, candid, jd, and the Science, Template and
/// Difference stamps as stored.
pub type SmallRow<'a> = (&'a str, i64, Option<f64>, [&'a [u8]; 3]);

/// A small ZTF-shaped file: `objectId`, `candid`, `candidate.jd` and the three cutout structs
/// (`fileName`, `stampData`), one row group. Each row's three stamps are given as stored.
pub fn write_small_ztf(path: &Path, rows: &[SmallRow]) {
    let cand = Fields::from(vec![Field::new("jd", DataType::Float64, true)]);
    let stamp = Fields::from(vec![
        Field::new("fileName", DataType::Utf8, true),
        Field::new("stampData", DataType::Binary, true),
    ]);
    let mut fields = vec![
        Field::new("objectId", DataType::Utf8, true),
        Field::new("candid", DataType::Int64, true),
        Field::new("candidate", DataType::Struct(cand.clone()), true),
    ];
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(rows.iter().map(|r| r.0).collect::<Vec<_>>())),
        Arc::new(Int64Array::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())),
        Arc::new(StructArray::new(
            cand,
            vec![Arc::new(Float64Array::from(
                rows.iter().map(|r| r.2).collect::<Vec<_>>(),
            ))],
            None,
        )),
    ];
    for (k, kind) in KINDS.iter().enumerate() {
        fields.push(Field::new(
            format!("cutout{kind}"),
            DataType::Struct(stamp.clone()),
            true,
        ));
        columns.push(Arc::new(StructArray::new(
            stamp.clone(),
            vec![
                Arc::new(StringArray::from(vec!["stamp.fits.gz"; rows.len()])),
                Arc::new(BinaryArray::from(rows.iter().map(|r| r.3[k]).collect::<Vec<_>>())),
            ],
            None,
        )));
    }
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let tmp = path.with_extension("tmp");
    let mut w = parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&tmp).unwrap(), schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    // Appear whole, as Spark's commit of a file does.
    std::fs::rename(&tmp, path).unwrap();
}

/// Run an action and parse its JSON answer.
pub async fn action(c: &mut FlightClient, name: &str) -> Result<serde_json::Value, FlightError> {
    let body = c.do_action(Action::new(name, "")).await?.try_next().await?.unwrap();
    Ok(serde_json::from_slice(&body).unwrap())
}
