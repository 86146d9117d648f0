//! A Rust client for astroflight: typed tickets over `arrow_flight::FlightClient`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), astroflight_client::ClientError> {
//! use astroflight_client::{Client, CutoutRequest, Selector, StampFormat, StampKind};
//! use futures::TryStreamExt;
//! let mut c = Client::connect("grpc://127.0.0.1:8815").await?;
//! let req = CutoutRequest {
//!     dataset: "ztf".into(),
//!     selector: Selector::Objects { object_ids: vec!["ZTF20aabaesm".into()], all: false },
//!     kind: StampKind::Science,
//!     format: StampFormat::Fits,
//!     hdu: 0,
//! };
//! let batches: Vec<_> = c.cutouts(&req).await?.try_collect().await?;
//! # Ok(()) }
//! ```

use arrow::record_batch::RecordBatch;
use arrow_flight::{Action, FlightClient, Ticket};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use tonic::transport::{Channel, Endpoint};

pub use astroflight_proto::{CutoutRequest, Selector, StampFormat, StampKind};

pub mod transfer;

#[cfg(feature = "datafusion")]
pub mod datafusion;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid server address {0:?}: use grpc://host:port")]
    Address(String),
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error(transparent)]
    Flight(#[from] arrow_flight::error::FlightError),
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

pub struct Client {
    inner: FlightClient,
}

impl Client {
    /// `grpc://host:port` (or `http://host:port`); TLS is not supported yet.
    pub async fn connect(url: &str) -> Result<Client> {
        Ok(Client {
            inner: FlightClient::new(channel(url).await?),
        })
    }

    /// Stream the stamps a cutout request names.
    pub async fn cutouts(&mut self, req: &CutoutRequest) -> Result<BoxStream<'static, Result<RecordBatch>>> {
        let s = self.inner.do_get(Ticket::new(req.encode())).await?;
        Ok(s.map_err(ClientError::from).boxed())
    }

    /// Run an action (`stats`, `reindex`) and return its bodies.
    pub async fn action(&mut self, name: &str) -> Result<Vec<bytes::Bytes>> {
        let s = self.inner.do_action(Action::new(name, "")).await?;
        Ok(s.try_collect().await?)
    }
}

/// A gRPC channel to `grpc://host:port` (or `http://host:port`); TLS is not supported yet.
pub async fn channel(url: &str) -> Result<Channel> {
    let http = match url.split_once("://") {
        Some(("grpc" | "grpc+tcp" | "http", rest)) => format!("http://{rest}"),
        None => format!("http://{url}"),
        _ => return Err(ClientError::Address(url.to_string())),
    };
    // TCP_NODELAY: a ticket is one small write; with Nagle it waits for the server's delayed
    // ACK (~40 ms on Linux) before it leaves.
    let endpoint = Endpoint::from_shared(http)
        .map_err(|_| ClientError::Address(url.to_string()))?
        .tcp_nodelay(true);
    let channel: Channel = endpoint.connect().await.map_err(|source| ClientError::Connect {
        addr: url.to_string(),
        source,
    })?;
    Ok(channel)
}
