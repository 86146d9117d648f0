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
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

pub use astroflight_proto::{CutoutRequest, Selector, StampFormat, StampKind};

pub mod transfer;

#[cfg(feature = "datafusion")]
pub mod datafusion;

/// Where an endpoint can be pulled: its listed locations in the server's order (it rotates them
/// per endpoint, so that clients spread over the replicas), or `planner` (the server that
/// planned it) when it lists none. Empty locations and Flight's "reuse the connection" location
/// (`arrow-flight-reuse-connection://?`) both mean the planner.
pub fn endpoint_locations<'a>(listed: impl IntoIterator<Item = &'a str>, planner: &'a str) -> Vec<&'a str> {
    let mut out: Vec<&str> = listed
        .into_iter()
        .filter(|l| !l.is_empty() && !l.starts_with("arrow-flight-reuse-connection:"))
        .collect();
    if out.is_empty() {
        out.push(planner);
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid server address {0:?}: use grpc://host:port or grpc+tls://host:port")]
    Address(String),
    #[error("TLS: {0}")]
    Tls(String),
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

/// How to reach a server that needs TLS or credentials.
#[derive(Clone, Default)]
pub struct ConnectOptions {
    /// A bearer token (a static token, or a session token from Handshake), sent on every call.
    pub token: Option<String>,
    /// PEM CA certificates that sign the server's certificate (`grpc+tls://`); none: the
    /// system's CAs.
    pub tls_ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a secret: never printed.
        f.debug_struct("ConnectOptions")
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("tls_ca_pem", &self.tls_ca_pem.as_ref().map(Vec::len))
            .finish()
    }
}

impl ConnectOptions {
    /// From `ASTROFLIGHT_TOKEN` and `ASTROFLIGHT_TLS_CA` (a PEM file).
    pub fn from_env() -> std::io::Result<ConnectOptions> {
        Ok(ConnectOptions {
            token: std::env::var("ASTROFLIGHT_TOKEN").ok().filter(|t| !t.is_empty()),
            tls_ca_pem: match std::env::var_os("ASTROFLIGHT_TLS_CA") {
                Some(p) => Some(std::fs::read(p)?),
                None => None,
            },
        })
    }
}

pub struct Client {
    inner: FlightClient,
}

impl Client {
    /// `grpc://host:port` (or `http://host:port`), or `grpc+tls://host:port`.
    pub async fn connect(url: &str) -> Result<Client> {
        Self::connect_with(url, &ConnectOptions::default()).await
    }

    /// A client with TLS roots and a bearer token.
    pub async fn connect_with(url: &str, opts: &ConnectOptions) -> Result<Client> {
        let mut inner = FlightClient::new(channel_with(url, opts).await?);
        if let Some(t) = &opts.token {
            inner
                .add_header("authorization", &format!("Bearer {t}"))
                .map_err(ClientError::from)?;
        }
        Ok(Client { inner })
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

/// A gRPC channel to `grpc://host:port` (or `http://host:port`).
pub async fn channel(url: &str) -> Result<Channel> {
    channel_with(url, &ConnectOptions::default()).await
}

/// A gRPC channel to `grpc://host:port`, or over TLS to `grpc+tls://host:port` (`https://`),
/// verified with `opts.tls_ca_pem` or the system's CAs.
pub async fn channel_with(url: &str, opts: &ConnectOptions) -> Result<Channel> {
    let (http, tls) = match url.split_once("://") {
        Some(("grpc" | "grpc+tcp" | "http", rest)) => (format!("http://{rest}"), false),
        Some(("grpc+tls" | "https", rest)) => (format!("https://{rest}"), true),
        None => (format!("http://{url}"), false),
        _ => return Err(ClientError::Address(url.to_string())),
    };
    // TCP_NODELAY: a ticket is one small write; with Nagle it waits for the server's delayed
    // ACK (~40 ms on Linux) before it leaves.
    let mut endpoint = Endpoint::from_shared(http)
        .map_err(|_| ClientError::Address(url.to_string()))?
        .tcp_nodelay(true);
    if tls {
        let config = match &opts.tls_ca_pem {
            Some(pem) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
            None => ClientTlsConfig::new().with_native_roots(),
        };
        endpoint = endpoint
            .tls_config(config)
            .map_err(|e| ClientError::Tls(e.to_string()))?;
    }
    let channel: Channel = endpoint.connect().await.map_err(|source| ClientError::Connect {
        addr: url.to_string(),
        source,
    })?;
    Ok(channel)
}
