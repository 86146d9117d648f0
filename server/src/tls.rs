//! Connections: plain TCP (the default, the demo) or TLS with rustls, and mutual TLS.
//!
//! ```text
//!  TcpListener ─accept─> TCP_NODELAY ─> plain: a Conn at once
//!                                    └> TLS: handshake in its own task (bounded in time and in
//!                                       number), with the certificate in use at that moment
//!                                       (reloaded when its files change) ─> a Conn carrying the
//!                                       client certificate's identity (mutual TLS)
//!  Conn ─> tonic (its ConnectInfo, a `ConnInfo`, lands in every request's extensions)
//! ```
//!
//! The accept loop never waits on a handshake, so one slow or hostile client cannot hold up
//! the others; a handshake that fails or takes longer than `tls.handshake_timeout_secs` drops
//! that connection alone.

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tonic::transport::server::Connected;

use crate::config::TlsConfig;
use crate::error::{Error, Result};
use crate::reload::Watched;

/// Most TLS handshakes in flight at once; past it new connections wait to be accepted.
const MAX_HANDSHAKES: usize = 512;

/// What tonic puts in each request's extensions about its connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote: Option<SocketAddr>,
    /// The identity of the verified client certificate (mutual TLS): its subject's CN, else its
    /// first DNS, email or URI SAN.
    pub client: Option<Arc<str>>,
}

/// The server's TLS: the rustls configuration in use, reloaded when its files change.
pub struct Tls {
    pub config: Arc<Watched<ServerConfig>>,
    pub reload_every: Duration,
    handshake_timeout: Duration,
    pub mutual: bool,
}

impl Tls {
    pub fn new(c: &TlsConfig) -> Result<Tls> {
        let c2 = c.clone();
        let mut paths = vec![c.cert.clone(), c.key.clone()];
        paths.extend(c.client_ca.clone());
        let config = Watched::new("the TLS certificate", paths, move || server_config(&c2))?;
        Ok(Tls {
            config,
            reload_every: Duration::from_secs_f64(c.reload_secs),
            handshake_timeout: Duration::from_secs_f64(c.handshake_timeout_secs),
            mutual: c.client_ca.is_some(),
        })
    }
}

fn certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| Error::InvalidArgument(format!("cannot read {what} {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{what} {} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

/// The rustls server configuration of `[tls]`: certificate chain and key (checked to match),
/// HTTP/2 by ALPN, and with `client_ca` a verifier that requires client certificates.
pub fn server_config(c: &TlsConfig) -> Result<ServerConfig> {
    let chain = certificates(&c.cert, "tls.cert")?;
    let key = PrivateKeyDer::from_pem_file(&c.key)
        .map_err(|e| Error::InvalidArgument(format!("cannot read tls.key {}: {e}", c.key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Internal(format!("TLS versions: {e}")))?;
    let builder = match &c.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(ca, "tls.client_ca")? {
                roots.add(cert).map_err(|e| {
                    Error::InvalidArgument(format!("tls.client_ca {}: not a CA certificate: {e}", ca.display()))
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| Error::InvalidArgument(format!("tls.client_ca {}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        Error::InvalidArgument(format!(
            "tls.cert {} and tls.key {} do not make a usable certificate: {e}",
            c.cert.display(),
            c.key.display()
        ))
    })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The identity a client certificate names: its subject's common name, else its first DNS
/// name, email or URI subject alternative name.
pub fn certificate_identity(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    if let Some(cn) = cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()) {
        if !cn.is_empty() {
            return Some(cn.to_string());
        }
    }
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::DNSName(s)
        | x509_parser::extensions::GeneralName::RFC822Name(s)
        | x509_parser::extensions::GeneralName::URI(s) => Some(s.to_string()),
        _ => None,
    })
}

/// A connection, plain or TLS.
pub enum Conn {
    Plain(TcpStream, ConnInfo),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>, ConnInfo),
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> ConnInfo {
        match self {
            Conn::Plain(_, i) | Conn::Tls(_, i) => i.clone(),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s, _) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s, _) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s, _) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s, _) => s.is_write_vectored(),
            Conn::Tls(s, _) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s, _) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s, _) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The connections of a listener, as tonic's incoming stream. Dropping it stops accepting.
pub struct Incoming {
    rx: mpsc::Receiver<Conn>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl futures::Stream for Incoming {
    type Item = std::io::Result<Conn>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|c| c.map(Ok))
    }
}

pub fn incoming(listener: TcpListener, tls: Option<Arc<Tls>>) -> Incoming {
    let (tx, rx) = mpsc::channel(64);
    let accept = tokio::spawn(async move {
        let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        loop {
            let (tcp, remote) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // A cutout response ends in a small write, which Nagle would hold until the
            // client's delayed ACK (~40 ms on Linux).
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::warn!(error = %e, "cannot set TCP_NODELAY");
            }
            let info = ConnInfo {
                remote: Some(remote),
                client: None,
            };
            let Some(tls) = tls.clone() else {
                if tx.send(Conn::Plain(tcp, info)).await.is_err() {
                    return;
                }
                continue;
            };
            let Ok(permit) = handshakes.clone().acquire_owned().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.get());
                let stream = match tokio::time::timeout(tls.handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::info!(remote = %remote, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::info!(remote = %remote, "TLS handshake timed out");
                        return;
                    }
                };
                let client = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| certificate_identity(c.as_ref()))
                    .map(Arc::from);
                if tls.mutual && client.is_none() {
                    tracing::info!(remote = %remote, "client certificate names no identity (no CN, no SAN)");
                    return;
                }
                let _ = tx.send(Conn::Tls(Box::new(stream), ConnInfo { client, ..info })).await;
            });
        }
    });
    Incoming { rx, accept }
}
