//! Connections: plain TCP (the default, the demo) or TLS with rustls, and mutual TLS.
//!
//! ```text
//!  TcpListener ─accept─> TCP_NODELAY ─> plain: a Conn at once
//!                                    └> TLS: handshake in its own task (bounded in time and in
//!                                       number), with the certificate in use at that moment
//!                                       (reloaded when its files change) ─> a Conn carrying the
//!                                       client certificate's identity (mutual TLS)
//!  Conn ─> tonic (its ConnectInfo, a `ConnInfo`, lands in every request's extensions)
//!       ─> dropped: FIN, then the client's last bytes read until it closes (`linger`), and the
//!          process waits for these closes before it exits
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

/// The socket of a connection, plain or TLS.
enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// A connection, plain or TLS. When the server is done with it (the client went, or the server
/// closed it: graceful shutdown, keepalive), it is closed by [`linger`], never cut.
pub struct Conn {
    /// None only while it is dropped.
    io: Option<Io>,
    info: ConnInfo,
    closing: Arc<Closing>,
}

impl Conn {
    fn new(io: Io, info: ConnInfo, closing: &Arc<Closing>) -> Conn {
        Conn {
            io: Some(io),
            info,
            closing: closing.clone(),
        }
    }

    fn io(&mut self) -> std::io::Result<&mut Io> {
        self.io
            .as_mut()
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotConnected))
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(io) = self.io.take() {
            linger(io, &self.closing);
        }
    }
}

/// How long a closed connection may take to say goodbye before its socket is cut (the default
/// of [`Closing`]).
const LINGER: Duration = Duration::from_secs(2);

/// Close a connection the server is done with without losing what it sent last: send FIN (TLS:
/// close_notify, then FIN), then read and discard until the client closes its side, for at most
/// [`Closing`]'s linger time. A socket closed while the client's last frames (HTTP/2 window updates, pings) sit
/// unread in it is reset by the kernel, and the reset can destroy the end of the response that
/// the client had received but not yet read (RFC 9112 section 9.6 describes this for HTTP/1.1;
/// HTTP/2 after GOAWAY is the same). That is how a stream finished under graceful shutdown could
/// reach a busy client as UNAVAILABLE "connection reset by peer".
fn linger(mut io: Io, closing: &Arc<Closing>) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let guard = closing.start();
    let linger = closing.linger;
    rt.spawn(async move {
        let _guard = guard;
        let _ = tokio::time::timeout(linger, async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            if io.shutdown().await.is_err() {
                return;
            }
            let mut sink = [0u8; 4096];
            while let Ok(n) = io.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
    });
}

/// The connections still closing ([`linger`]), so that the process waits for them before it
/// exits (an exit cuts them as a drop would).
pub struct Closing {
    open: std::sync::atomic::AtomicUsize,
    done: tokio::sync::Notify,
    linger: Duration,
}

impl Default for Closing {
    fn default() -> Self {
        Closing::new(LINGER)
    }
}

pub struct ClosingGuard(Arc<Closing>);

impl Drop for ClosingGuard {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
            self.0.done.notify_waiters();
        }
    }
}

impl Closing {
    /// Connections that close wait at most `linger` for their client.
    pub fn new(linger: Duration) -> Self {
        Closing {
            open: Default::default(),
            done: Default::default(),
            linger,
        }
    }

    fn start(self: &Arc<Self>) -> ClosingGuard {
        self.open.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        ClosingGuard(self.clone())
    }

    /// Connections still closing.
    pub fn open(&self) -> usize {
        self.open.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Wait until every connection has closed (each takes at most the linger time).
    pub async fn finished(&self) {
        let _ = tokio::time::timeout(self.linger + Duration::from_millis(500), async {
            loop {
                let notified = self.done.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.open() == 0 {
                    return;
                }
                notified.await;
            }
        })
        .await;
    }
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut().io() {
            Ok(io) => Pin::new(io).poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut().io() {
            Ok(io) => Pin::new(io).poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut().io() {
            Ok(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(|io| io.is_write_vectored())
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut().io() {
            Ok(io) => Pin::new(io).poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut().io() {
            Ok(io) => Pin::new(io).poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
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

pub fn incoming(listener: TcpListener, tls: Option<Arc<Tls>>, closing: Arc<Closing>) -> Incoming {
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
                if tx.send(Conn::new(Io::Plain(tcp), info, &closing)).await.is_err() {
                    return;
                }
                continue;
            };
            let Ok(permit) = handshakes.clone().acquire_owned().await else {
                return;
            };
            let tx = tx.clone();
            let closing = closing.clone();
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
                let _ = tx
                    .send(Conn::new(
                        Io::Tls(Box::new(stream)),
                        ConnInfo { client, ..info },
                        &closing,
                    ))
                    .await;
            });
        }
    });
    Incoming { rx, accept }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The server writes its last bytes and is done with the connection while bytes of the
    /// client sit unread in the socket (as HTTP/2 window updates do after a GOAWAY), and the
    /// client reads slowly. Cut, the socket would be reset, and the part of the reply still in
    /// the server's send buffer lost (the client sees ECONNRESET); closed by `linger`, the
    /// client reads every byte, then the end.
    #[tokio::test]
    async fn a_closed_connection_delivers_its_last_bytes_to_a_slow_client() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // A linger far longer than the test, so that a slow machine cannot cut the close short.
        let closing = Arc::new(Closing::new(Duration::from_secs(60)));
        let mut conns = incoming(listener, None, closing.clone());
        let mut client = TcpStream::connect(addr).await.unwrap();
        client.write_all(&[7u8; 1000]).await.unwrap();
        const REPLY: usize = 32 << 20;
        let server = tokio::spawn(async move {
            let mut conn = conns.next().await.unwrap().unwrap();
            conn.write_all(&vec![42u8; REPLY]).await.unwrap();
            conn.flush().await.unwrap();
            drop(conn); // done with it: the end of the reply is still in the socket buffers
            conns
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut buf = vec![0u8; 64 << 10];
        let mut got = 0;
        loop {
            let n = client.read(&mut buf).await.expect("the reply, to its end");
            if n == 0 {
                break;
            }
            got += n;
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        assert_eq!(got, REPLY);
        let _conns = server.await.unwrap();
        assert_eq!(closing.open(), 1, "the server still waits for the client to close");
        drop(client);
        closing.finished().await;
        assert_eq!(closing.open(), 0);
    }
}
