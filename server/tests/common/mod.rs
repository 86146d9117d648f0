//! Shared helpers of the integration tests: start the real server in-process on 127.0.0.1:0,
//! and read what the lake holds with a plain parquet reader (the reference the server must
//! match).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int64Type};
use arrow_flight::error::FlightError;
use arrow_flight::{Action, FlightClient, Ticket};
use futures::TryStreamExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use astroflight_server::app::StopHandle;
use astroflight_server::config::{Config, DatasetConfig, DatasetKind};
use astroflight_server::App;

pub struct Server {
    pub addr: SocketAddr,
    stop: Option<StopHandle>,
    join: Option<tokio::task::JoinHandle<astroflight_server::Result<()>>>,
}

impl Server {
    pub async fn start(datasets: &[(&str, DatasetKind, &Path)], index_dir: &Path) -> Server {
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
        let app = App::build(config).await.expect("server builds");
        let (addr, stop, join) = app.spawn();
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

pub fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

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
