//! astroflight: an Apache Arrow Flight service for astronomical alert lakes.
//!
//! `server` is the composition root: it reads the [`config`], opens the [`lake`] (dataset
//! stores from [`storage`] and their index trees from `astroflight-index`), and serves the
//! [`flight`] service. [`App`] is what the binary and the integration tests start.

pub mod app;
pub mod config;
pub mod cpu;
pub mod cutout;
pub mod demo;
pub mod error;
pub mod fits;
pub mod flight;
pub mod gen;
pub mod lake;
pub mod storage;
pub mod testdata;

pub use app::App;
pub use config::Config;
pub use error::{Error, Result};
