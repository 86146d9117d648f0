//! astroflight: an Apache Arrow Flight service for astronomical alert lakes.
//!
//! `server` is the composition root: it reads the [`config`], opens the [`lake`] (dataset
//! stores from [`storage`], their catalogs and id indexes from `astroflight-index`), and serves
//! the ticket service ([`service`]), which dispatches each ticket to its kind ([`tickets`]) and
//! Flight SQL commands to [`sql`]; both stand on the Flight edge ([`edge`]). Kinds that start
//! from the index read rows at known locations through [`read`]. [`App`] is what the binary and
//! the integration tests start. Layers, top to bottom (a module imports only from below):
//!
//! ```text
//!  service (Flight calls, dispatch, deadline, stats, row check)
//!     └─ tickets::{cutout, alerts, headers, section} (stamps below them)  schema / plan / execute
//!        sql (Flight SQL: DataFusion over the lake's tables)
//!          └─ scan (alert batch scans)  read (rows at known locations, id check)
//!               └─ lake: datasets, their catalog + id index, index builds and readiness
//!                  edge: Flight data, endpoints, response guard, request record, stream slots
//!                    └─ storage (local, s3, hdfs, http; counting, retrying, listed, mounted)
//!                       expr (the expression engine and its guards)  runtime (CPU pools, footer cache)
//!                         └─ config (and the one Limits)  memory (the budget)  fits_lake  error
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
