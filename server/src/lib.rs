//! astroflight: an Apache Arrow Flight service for astronomical alert lakes.
//!
//! `server` is the composition root: it reads the [`config`], opens the [`lake`] (dataset
//! stores from [`storage`], their catalogs and id indexes from `astroflight-index`), and serves
//! the Flight edge ([`service`]), which dispatches each ticket to its kind ([`tickets`]). Kinds
//! that start from the index read rows at known locations through [`read`], which also owns the
//! footer cache and the CPU runtime. [`App`] is what the binary and the integration tests start.
//!
//! ```text
//!  service (Flight edge: decode, dispatch, deadline, limits, stats, row check, status)
//!     └─ tickets::{cutout, alerts, headers}  schema / plan (endpoints) / execute
//!          └─ read  rows at known locations: footer cache, id check, CPU runtime bridge
//!               └─ storage  file, s3, hdfs, http; counting, retries
//!  lake: datasets, their catalog + id index (astroflight-index), index builds and readiness;
//!        FITS datasets and their header catalogs ([`headers`])
//!  memory: the process's budget and each request's account of it (every layer counts into it)
//! ```
//!
//! The lake generator and the demo lake are a separate crate (`astroflight-gen`), not part of
//! the serving code; FITS decoding is `astroflight-fits`.

pub mod app;
pub mod auth;
pub mod check;
pub mod config;
pub mod edge;
pub mod error;
pub mod expr;
pub mod fits_lake;
pub mod lake;
pub mod memory;
pub mod read;
pub mod reload;
pub mod runtime;
pub mod scan;
pub mod service;
pub mod sql;
pub mod storage;
pub mod telemetry;
pub mod tickets;
pub mod tls;

pub use app::App;
pub use config::Config;
pub use error::{Error, Result};
