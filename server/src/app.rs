//! [`App`]: the server, built from a [`Config`], bound to its address, ready to run.
//!
//! Its connections are plain TCP or TLS ([`crate::tls`]); every call passes the
//! authentication layer ([`crate::auth`]) before the Flight service or the gRPC health service.
//!
//! The server listens before its first index build ends: the build runs in the background
//! once the server runs, lookups that find nothing meanwhile answer UNAVAILABLE ("still being
//! indexed"), and readiness is reported by [`Lake::ready`], the `health` action and, in the
//! binary, an `astroflight ready` line on stdout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arrow_flight::flight_service_server::FlightServiceServer;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;
use tracing::{info, warn};

use crate::auth::{AuthLayer, Security};
use crate::config::{Config, LimitsConfig};
use crate::error::{Error, Result};
use crate::lake::Lake;
use crate::service::AstroFlight;
use crate::telemetry::{Metrics, TelemetryLayer};
use crate::tls::Tls;

/// The health service's name that is SERVING while the process runs (a liveness probe); the
/// empty name (and the Flight service's name) is SERVING once the server is ready (readiness);
/// each dataset's name is SERVING once its first index build has ended and its last build
/// reached the storage.
pub const LIVENESS_SERVICE: &str = "liveness";
const FLIGHT_SERVICE: &str = "arrow.flight.protocol.FlightService";

pub struct App {
    addr: SocketAddr,
    lake: Arc<Lake>,
    listener: TcpListener,
    deadline: Duration,
    index_on_start: bool,
    reindex_every: Option<Duration>,
    security: Arc<Security>,
    tls: Option<Arc<Tls>>,
    limits: LimitsConfig,
    grace: Duration,
    /// The plain-TCP listener of the health service alone (`health_listen`).
    health_listener: Option<TcpListener>,
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
    /// Open the lake, load the TLS certificate and the credentials, and bind the listen
    /// address (port 0 picks a free port: see [`App::local_addr`]). Reads nothing from the
    /// lake: the first index build starts when the server runs.
    pub async fn build(config: Config) -> Result<App> {
        let security = Arc::new(Security::new(&config)?);
        let tls = config.tls.as_ref().map(Tls::new).transpose()?.map(Arc::new);
        let lake = Arc::new(Lake::open(&config)?);
        let listener = TcpListener::bind(&config.listen)
            .await
            .map_err(|e| Error::Unavailable(format!("cannot listen on {}: {e}", config.listen)))?;
        let addr = listener.local_addr().map_err(|e| Error::Internal(e.to_string()))?;
        let health_listener = match &config.health_listen {
            Some(a) => Some(
                TcpListener::bind(a)
                    .await
                    .map_err(|e| Error::Unavailable(format!("cannot listen on health_listen {a}: {e}")))?,
            ),
            None => None,
        };
        let deadline = Duration::from_secs_f64(config.deadline_secs);
        Ok(App {
            addr,
            lake,
            listener,
            deadline,
            // A follower always loads at start: it has nothing to serve before.
            index_on_start: config.index_on_start || config.index_role == crate::config::IndexRole::Follow,
            reindex_every: (config.reindex_interval() > 0.0)
                .then(|| Duration::from_secs_f64(config.reindex_interval())),
            security,
            tls,
            limits: config.limits.clone(),
            grace: Duration::from_secs_f64(config.shutdown_grace_secs),
            health_listener,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address of the health-only listener (`health_listen`).
    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.health_listener.as_ref().and_then(|l| l.local_addr().ok())
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
    /// failure is logged and the next build retries. A follower loads instead of building, and
    /// until every dataset has a generation (its builder has not published yet) it tries again
    /// every couple of seconds.
    fn start_indexing(&self) -> tokio::task::JoinHandle<()> {
        let (lake, first, every) = (self.lake.clone(), self.index_on_start, self.reindex_every);
        tokio::spawn(async move {
            if first {
                lake.reindex().await;
                info!("astroflight ready: first index build done");
            }
            // Scheduled builds, and repairs: an index segment that a lookup found corrupt is
            // rebuilt from the lake by the next build, started within a couple of seconds
            // rather than at the next scheduled one (its dataset's lookups fail until then).
            let check = Duration::from_secs(2);
            let mut tick = tokio::time::interval(every.map_or(check, |e| e.min(check)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            let mut last = tokio::time::Instant::now();
            loop {
                tick.tick().await;
                let due = every.is_some_and(|e| last.elapsed() >= e);
                if lake.role == crate::config::IndexRole::Follow && !lake.is_ready() {
                    // No generation yet: look again soon rather than at the next interval.
                } else if lake.needs_repair() {
                    warn!("an index segment was found corrupt: rebuilding it from the lake now");
                } else if !due {
                    continue;
                }
                last = tokio::time::Instant::now();
                lake.reindex().await;
            }
        })
    }

    fn log_security(&self) {
        match (&self.tls, self.security.is_controlled()) {
            (None, false) => warn!(
                "astroflight is OPEN: plain TCP, no [auth]; anyone who reaches {} reads every dataset (the demo setting; see [tls] and [auth])",
                self.addr
            ),
            (Some(_), false) => warn!(
                "astroflight is OPEN over TLS: no [auth] and no tls.client_ca; anyone who reaches {} reads every dataset",
                self.addr
            ),
            (None, true) => warn!("callers are authenticated, but over plain TCP: tokens and passwords cross the network in clear (set [tls])"),
            (Some(t), true) => info!(mutual_tls = t.mutual, "TLS on; every call but Handshake needs credentials"),
        }
    }

    async fn serve(self, stop: oneshot::Receiver<()>) -> Result<()> {
        info!(addr = %self.addr, tls = self.tls.is_some(), "astroflight listening");
        self.log_security();
        let indexing = self.start_indexing();
        let mut background = vec![indexing];
        background.extend(self.security.spawn_reloader());
        if let Some(t) = &self.tls {
            background.push(t.config.spawn_reloader(t.reload_every));
        }
        let (reporter, health_service) = tonic_health::server::health_reporter();
        // tonic-health starts with "" as SERVING: the real statuses are set before any listener
        // answers, or a probe racing the spawned reporter would see a ready server that is not.
        reporter
            .set_service_status(LIVENESS_SERVICE, ServingStatus::Serving)
            .await;
        publish_health(&self.lake, &reporter).await;
        background.push(tokio::spawn(report_health(self.lake.clone(), reporter.clone())));
        // Connections the server is done with close gracefully (`tls::linger`); the process
        // waits for them before it exits.
        let closing = Arc::new(crate::tls::Closing::default());
        if let Some(l) = self.health_listener {
            info!(addr = ?l.local_addr().ok(), "health service (plain TCP) listening");
            let probes = tonic::transport::Server::builder()
                .add_service(health_service.clone())
                .serve_with_incoming(crate::tls::incoming(l, None, closing.clone()));
            background.push(tokio::spawn(async move {
                if let Err(e) = probes.await {
                    warn!(error = %e, "the health listener failed");
                }
            }));
        }
        let limits = &self.limits;
        let flight = AstroFlight::new(self.lake.clone(), self.deadline, self.security.clone(), limits)?;
        let service = FlightServiceServer::new(flight)
            .max_decoding_message_size(limits.max_message_bytes)
            // Our encoder refuses a message past limits.max_message_bytes with a status naming it;
            // tonic's own bound (a little higher, for gRPC's framing) is the safety net.
            .max_encoding_message_size(limits.max_message_bytes.saturating_add(1 << 20));
        let keepalive = (limits.keepalive_secs > 0.0).then(|| Duration::from_secs_f64(limits.keepalive_secs));
        let incoming = crate::tls::incoming(self.listener, self.tls.clone(), closing.clone());
        // Larger HTTP/2 windows let big tickets and responses flow without waiting for window
        // updates.
        let router = tonic::transport::Server::builder()
            .initial_stream_window_size(Some(4 << 20))
            .initial_connection_window_size(Some(16 << 20))
            .max_concurrent_streams(Some(limits.max_calls_per_connection))
            .http2_keepalive_interval(keepalive)
            .http2_keepalive_timeout(Some(Duration::from_secs_f64(limits.keepalive_timeout_secs)))
            // Outermost first: every call is traced and counted, refused ones included.
            .layer(TelemetryLayer {
                metrics: Metrics::new(&self.lake),
            })
            .layer(AuthLayer {
                security: self.security.clone(),
            })
            .add_service(health_service)
            .add_service(service);
        let (drain_tx, drain_rx) = oneshot::channel::<()>();
        let mut server = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
            let _ = drain_rx.await;
        }));
        let result = tokio::select! {
            r = &mut server => r.map_err(Error::from)?.map_err(|e| Error::Internal(format!("server failed: {e}"))),
            _ = stop => {
                // Graceful: NOT_SERVING first (load balancers stop sending), then no new calls,
                // and open streams get `shutdown_grace_secs` to finish.
                set_all(&self.lake, &reporter, ServingStatus::NotServing).await;
                info!(grace_secs = self.grace.as_secs_f64(), "stopping: new calls refused, open streams finishing");
                let _ = drain_tx.send(());
                match tokio::time::timeout(self.grace, &mut server).await {
                    Ok(r) => r.map_err(Error::from)?.map_err(|e| Error::Internal(format!("server failed: {e}"))),
                    Err(_) => {
                        server.abort();
                        warn!(grace_secs = self.grace.as_secs_f64(), "open streams did not finish within the grace period; they were cut");
                        Ok(())
                    }
                }
            }
        };
        for task in background {
            task.abort();
            let _ = task.await;
        }
        closing.finished().await;
        self.lake.flush()?;
        info!("astroflight stopped");
        result
    }
}

/// Keep the health service's statuses in step with the lake: readiness once every first
/// build has ended, each dataset by its own state, re-read after every index build.
async fn report_health(lake: Arc<Lake>, reporter: HealthReporter) {
    let mut builds = lake.watch_builds();
    loop {
        publish_health(&lake, &reporter).await;
        if builds.changed().await.is_err() {
            return;
        }
    }
}

/// Set readiness (`""` and the Flight service) and each dataset's status from the lake now.
async fn publish_health(lake: &Lake, reporter: &HealthReporter) {
    let ready = status(lake.is_ready());
    reporter.set_service_status("", ready).await;
    reporter.set_service_status(FLIGHT_SERVICE, ready).await;
    for (name, build) in lake.build_states() {
        reporter.set_service_status(name, status(build.serving())).await;
    }
}

fn status(serving: bool) -> ServingStatus {
    if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}

async fn set_all(lake: &Lake, reporter: &HealthReporter, s: ServingStatus) {
    for name in ["", FLIGHT_SERVICE, LIVENESS_SERVICE] {
        reporter.set_service_status(name, s).await;
    }
    for (name, _) in lake.build_states() {
        reporter.set_service_status(name, s).await;
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
