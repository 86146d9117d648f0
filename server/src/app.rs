//! [`App`]: the server, built from a [`Config`], bound to its address, ready to run.
//!
//! The server listens before its first index build ends: the build runs in the background
//! once the server runs, lookups that find nothing meanwhile answer UNAVAILABLE ("still being
//! indexed"), and readiness is reported by [`Lake::ready`], the `health` action and, in the
//! binary, an `astroflight ready` line on stdout.

use std::net::SocketAddr;
use std::sync::Arc;

use arrow_flight::flight_service_server::FlightServiceServer;
use futures::TryStreamExt;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_stream::wrappers::TcpListenerStream;
use tracing::info;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::lake::Lake;
use crate::service::AstroFlight;

pub struct App {
    addr: SocketAddr,
    lake: Arc<Lake>,
    listener: TcpListener,
    deadline: std::time::Duration,
    index_on_start: bool,
    reindex_every: Option<std::time::Duration>,
}

/// Stops a running server (dropping it stops the server too).
pub struct StopHandle(Option<oneshot::Sender<()>>);

impl StopHandle {
    pub fn stop(mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

impl App {
    /// Open the lake and bind the listen address (port 0 picks a free port: see
    /// [`App::local_addr`]). Reads nothing from the lake: the first index build starts when
    /// the server runs.
    pub async fn build(config: Config) -> Result<App> {
        let lake = Arc::new(Lake::open(&config)?);
        let listener = TcpListener::bind(&config.listen)
            .await
            .map_err(|e| Error::Unavailable(format!("cannot listen on {}: {e}", config.listen)))?;
        let addr = listener.local_addr().map_err(|e| Error::Internal(e.to_string()))?;
        let deadline = std::time::Duration::from_secs_f64(config.deadline_secs);
        Ok(App {
            addr,
            lake,
            listener,
            deadline,
            index_on_start: config.index_on_start,
            reindex_every: (config.reindex_interval_secs > 0.0)
                .then(|| std::time::Duration::from_secs_f64(config.reindex_interval_secs)),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn lake(&self) -> &Arc<Lake> {
        &self.lake
    }

    /// Serve until ctrl-c / SIGTERM.
    pub async fn run_until_stopped(self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = tx.send(());
        });
        self.serve(rx).await
    }

    /// Serve in the background; returns the address and a handle that stops the server.
    pub fn spawn(self) -> (SocketAddr, StopHandle, tokio::task::JoinHandle<Result<()>>) {
        let (tx, rx) = oneshot::channel();
        let addr = self.addr;
        let join = tokio::spawn(self.serve(rx));
        (addr, StopHandle(Some(tx)), join)
    }

    /// The background index work: the first build (when configured), then the schedule.
    /// A dataset that cannot be indexed (storage down) is served from its previous index; the
    /// failure is logged and the next build retries.
    fn start_indexing(&self) -> tokio::task::JoinHandle<()> {
        let (lake, first, every) = (self.lake.clone(), self.index_on_start, self.reindex_every);
        tokio::spawn(async move {
            if first {
                lake.reindex().await;
                info!("astroflight ready: first index build done");
            }
            if let Some(every) = every {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    lake.reindex().await;
                }
            }
        })
    }

    async fn serve(self, stop: oneshot::Receiver<()>) -> Result<()> {
        info!(addr = %self.addr, "astroflight listening");
        let indexing = self.start_indexing();
        let service = FlightServiceServer::new(AstroFlight::new(self.lake.clone(), self.deadline)?)
            .max_decoding_message_size(16 << 20)
            .max_encoding_message_size(64 << 20);
        // TCP_NODELAY on every accepted socket (tonic's own setting covers only sockets it binds
        // itself): a cutout response ends in a small write, which Nagle would hold until the
        // client's delayed ACK, ~40 ms on Linux. Larger HTTP/2 windows let big tickets and
        // responses flow without waiting for window updates.
        let incoming = TcpListenerStream::new(self.listener).map_ok(|s| {
            if let Err(e) = s.set_nodelay(true) {
                tracing::warn!(error = %e, "cannot set TCP_NODELAY");
            }
            s
        });
        let result = tonic::transport::Server::builder()
            .initial_stream_window_size(Some(4 << 20))
            .initial_connection_window_size(Some(16 << 20))
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stop.await;
            })
            .await
            .map_err(|e| Error::Internal(format!("server failed: {e}")));
        indexing.abort();
        let _ = indexing.await;
        self.lake.flush()?;
        info!("astroflight stopped");
        result
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
