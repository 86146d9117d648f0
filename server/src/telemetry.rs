//! Telemetry: log lines (text or JSON), OpenTelemetry traces and metrics over OTLP/gRPC, and a
//! Prometheus text endpoint.
//!
//! ```text
//!  every call ─> TelemetryLayer: a span `rpc` (parent: the client's W3C `traceparent`), the
//!                call's future and its response body run inside it, so the request's own spans
//!                (`do_get`, `index.lookup`, `storage.read` with bytes and requests) are its
//!                children; when the body ends: requests{rpc_method, code}, duration, open streams
//!  tracing spans ─> tracing-opentelemetry ─> batch ─> OTLP/gRPC (telemetry.otlp_endpoint)
//!  instruments ─> SDK meter provider ─> periodic OTLP export
//!                                    └> a manual reader, rendered as Prometheus text on
//!                                       GET /metrics (telemetry.prometheus_listen)
//! ```
//!
//! Without `[telemetry]` nothing is exported and the instruments are OpenTelemetry's no-ops.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::FutureExt;
use opentelemetry::metrics::{Counter, Histogram, ObservableCounter, ObservableGauge, UpDownCounter};
use opentelemetry::propagation::Extractor;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::reader::MetricReader;
use opentelemetry_sdk::metrics::{InstrumentKind, ManualReader, Pipeline, SdkMeterProvider, Temporality};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::config::{LogFormat, TelemetryConfig};
use crate::error::{Error, Result};
use crate::lake::Lake;

/// Latency buckets, in seconds: a cutout takes about a millisecond, a bulk endpoint minutes.
const DURATION_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 300.0,
];

/// The providers set up by [`install`]; [`Telemetry::shutdown`] flushes what is pending.
pub struct Telemetry {
    tracer: Option<SdkTracerProvider>,
    meter: Option<SdkMeterProvider>,
    prometheus: Option<(SocketAddr, tokio::task::JoinHandle<()>)>,
}

impl Telemetry {
    /// The address the Prometheus endpoint listens on.
    pub fn prometheus_addr(&self) -> Option<SocketAddr> {
        self.prometheus.as_ref().map(|p| p.0)
    }

    /// Export what is pending and stop the exporters.
    pub async fn shutdown(self) {
        if let Some((_, task)) = self.prometheus {
            task.abort();
        }
        let (tracer, meter) = (self.tracer, self.meter);
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(t) = tracer {
                if let Err(e) = t.shutdown() {
                    eprintln!("telemetry: traces not all exported at shutdown: {e}");
                }
            }
            if let Some(m) = meter {
                if let Err(e) = m.shutdown() {
                    eprintln!("telemetry: metrics not all exported at shutdown: {e}");
                }
            }
        })
        .await;
    }
}

/// A manual reader shared between the meter provider and the Prometheus endpoint.
#[derive(Debug, Clone)]
struct SharedReader(Arc<ManualReader>);

impl MetricReader for SharedReader {
    fn register_pipeline(&self, pipeline: std::sync::Weak<Pipeline>) {
        self.0.register_pipeline(pipeline)
    }
    fn collect(&self, rm: &mut ResourceMetrics) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.collect(rm)
    }
    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }
    fn temporality(&self, kind: InstrumentKind) -> Temporality {
        self.0.temporality(kind)
    }
}

type BoxedLayer = Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync>;

/// Set up log lines on stderr (`format`), and with `[telemetry]` the OTLP exporters and the
/// Prometheus endpoint. Runs inside the tokio runtime (the OTLP client lives on it). The log
/// level comes from `RUST_LOG` (default `info`); spans go to OTLP at the same level.
pub async fn install(config: &TelemetryConfig, format: LogFormat) -> Result<Telemetry> {
    let service = config.service_name.clone().unwrap_or_else(|| "astroflight".into());
    let resource = Resource::builder().with_service_name(service).build();
    let mut tracer = None;
    let mut layers: Vec<BoxedLayer> = vec![match format {
        LogFormat::Text => tracing_subscriber::fmt::layer().with_writer(std::io::stderr).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
    }];
    if let Some(endpoint) = &config.otlp_endpoint {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .build()
            .map_err(|e| Error::InvalidArgument(format!("telemetry.otlp_endpoint {endpoint}: {e}")))?;
        let processor = opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .with_batch_config(
            opentelemetry_sdk::trace::BatchConfigBuilder::default()
                .with_scheduled_delay(Duration::from_millis(500))
                .build(),
        )
        .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource.clone())
            .build();
        layers.push(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("astroflight"))
                .boxed(),
        );
        opentelemetry::global::set_tracer_provider(provider.clone());
        tracer = Some(provider);
    }
    opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::registry()
        .with(layers.with_filter(filter))
        .try_init();

    let mut meter = None;
    let mut prometheus = None;
    if config.otlp_endpoint.is_some() || config.prometheus_listen.is_some() {
        let mut builder = SdkMeterProvider::builder().with_resource(resource);
        if let Some(endpoint) = &config.otlp_endpoint {
            let exporter = opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .build()
                .map_err(|e| Error::InvalidArgument(format!("telemetry.otlp_endpoint {endpoint}: {e}")))?;
            let every = Duration::from_secs_f64(config.export_interval_secs.unwrap_or(10.0));
            builder = builder.with_reader(
                opentelemetry_sdk::metrics::periodic_reader_with_async_runtime::PeriodicReader::builder(
                    exporter,
                    opentelemetry_sdk::runtime::Tokio,
                )
                .with_interval(every)
                .build(),
            );
        }
        let manual = Arc::new(ManualReader::builder().build());
        if config.prometheus_listen.is_some() {
            builder = builder.with_reader(SharedReader(manual.clone()));
        }
        let provider = builder.build();
        opentelemetry::global::set_meter_provider(provider.clone());
        if let Some(addr) = &config.prometheus_listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| Error::Unavailable(format!("cannot listen on telemetry.prometheus_listen {addr}: {e}")))?;
            let local = listener.local_addr().map_err(|e| Error::Internal(e.to_string()))?;
            tracing::info!(addr = %local, "Prometheus metrics on GET /metrics");
            prometheus = Some((local, tokio::spawn(serve_prometheus(listener, manual))));
        }
        meter = Some(provider);
    }
    if let Some(e) = &config.otlp_endpoint {
        tracing::info!(endpoint = %e, "exporting traces and metrics over OTLP/gRPC");
    }
    Ok(Telemetry {
        tracer,
        meter,
        prometheus,
    })
}

/// A minimal HTTP/1.1 server: `GET /metrics` answers the Prometheus text format; anything
/// else 404. One request per connection.
async fn serve_prometheus(listener: tokio::net::TcpListener, reader: Arc<ManualReader>) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let reader = reader.clone();
        tokio::spawn(async move {
            let mut head = Vec::with_capacity(512);
            let mut buf = [0u8; 1024];
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                    let n = sock.read(&mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    head.extend_from_slice(&buf[..n]);
                }
                Ok::<_, std::io::Error>(())
            })
            .await;
            if !matches!(read, Ok(Ok(()))) {
                return;
            }
            let line = String::from_utf8_lossy(&head);
            let target = line.split_whitespace().nth(1).unwrap_or("");
            let (status, body) =
                if line.starts_with("GET ") && (target == "/metrics" || target.starts_with("/metrics?")) {
                    let mut rm = ResourceMetrics::default();
                    match reader.collect(&mut rm) {
                        Ok(()) => ("200 OK", prometheus_text(&rm)),
                        Err(e) => (
                            "500 Internal Server Error",
                            format!("cannot collect the metrics: {e}\n"),
                        ),
                    }
                } else {
                    ("404 Not Found", "GET /metrics\n".to_string())
                };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(response.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}

/// A Prometheus metric or label name: `.` and anything else outside `[a-zA-Z0-9_:]` become `_`.
fn prom_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn prom_labels<'a>(attrs: impl Iterator<Item = &'a KeyValue>, extra: Option<(&str, String)>) -> String {
    let mut parts: Vec<String> = attrs
        .map(|kv| {
            let v = kv
                .value
                .to_string()
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{}=\"{v}\"", prom_name(kv.key.as_str()))
        })
        .collect();
    // Sorted by name (attribute sets have no order), `le` last as is customary.
    parts.sort();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{v}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

/// The metrics in the Prometheus text exposition format (version 0.0.4): sums as counters
/// (`_total`) or gauges, gauges, histograms with cumulative `_bucket`s, `_sum` and `_count`.
/// Units `s` and `By` become the `_seconds` and `_bytes` suffixes.
pub fn prometheus_text(rm: &ResourceMetrics) -> String {
    let mut out = String::new();
    for scope in rm.scope_metrics() {
        for m in scope.metrics() {
            let mut name = prom_name(m.name());
            match m.unit() {
                "s" if !name.ends_with("_seconds") => name.push_str("_seconds"),
                "By" if !name.ends_with("_bytes") => name.push_str("_bytes"),
                _ => {}
            }
            match m.data() {
                AggregatedMetrics::U64(d) => write_data(&mut out, &name, m.description(), d),
                AggregatedMetrics::I64(d) => write_data(&mut out, &name, m.description(), d),
                AggregatedMetrics::F64(d) => write_data(&mut out, &name, m.description(), d),
            }
        }
    }
    out
}

fn write_data<T: std::fmt::Display + Copy>(out: &mut String, name: &str, help: &str, d: &MetricData<T>) {
    let help = help.replace('\\', "\\\\").replace('\n', "\\n");
    match d {
        MetricData::Sum(s) => {
            let (name, kind) = if s.is_monotonic() {
                (format!("{name}_total"), "counter")
            } else {
                (name.to_string(), "gauge")
            };
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for p in s.data_points() {
                let _ = writeln!(out, "{name}{} {}", prom_labels(p.attributes(), None), p.value());
            }
        }
        MetricData::Gauge(g) => {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for p in g.data_points() {
                let _ = writeln!(out, "{name}{} {}", prom_labels(p.attributes(), None), p.value());
            }
        }
        MetricData::Histogram(h) => {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            for p in h.data_points() {
                let mut cumulative = 0u64;
                let bounds: Vec<f64> = p.bounds().collect();
                for (i, count) in p.bucket_counts().enumerate() {
                    cumulative += count;
                    let le = bounds.get(i).map_or("+Inf".to_string(), |b| b.to_string());
                    let _ = writeln!(
                        out,
                        "{name}_bucket{} {cumulative}",
                        prom_labels(p.attributes(), Some(("le", le)))
                    );
                }
                let labels = prom_labels(p.attributes(), None);
                let _ = writeln!(out, "{name}_sum{labels} {}", p.sum());
                let _ = writeln!(out, "{name}_count{labels} {}", p.count());
            }
        }
        MetricData::ExponentialHistogram(_) => {}
    }
}

/// The service's instruments (OpenTelemetry's no-ops when no meter provider is installed).
pub struct Metrics {
    requests: Counter<u64>,
    duration: Histogram<f64>,
    open: UpDownCounter<i64>,
    response_bytes: Counter<u64>,
    _storage_requests: ObservableCounter<u64>,
    _storage_bytes: ObservableCounter<u64>,
    _ready: ObservableGauge<u64>,
    _memory: ObservableGauge<u64>,
    _refusals: ObservableCounter<u64>,
}

impl Metrics {
    pub fn new(lake: &Arc<Lake>) -> Arc<Metrics> {
        let meter = opentelemetry::global::meter("astroflight");
        let (l1, l2, l3) = (lake.clone(), lake.clone(), lake.clone());
        let (m1, m2) = (lake.memory.clone(), lake.memory.clone());
        Arc::new(Metrics {
            requests: meter
                .u64_counter("astroflight.rpc.requests")
                .with_description("Calls answered, by method and gRPC status code")
                .build(),
            duration: meter
                .f64_histogram("astroflight.rpc.duration")
                .with_unit("s")
                .with_description("Call duration, first byte in to last byte out, by method")
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build(),
            open: meter
                .i64_up_down_counter("astroflight.rpc.open")
                .with_description("Calls (streams) open now, by method")
                .build(),
            response_bytes: meter
                .u64_counter("astroflight.rpc.response")
                .with_unit("By")
                .with_description("Bytes of responses sent, by method")
                .build(),
            _storage_requests: meter
                .u64_observable_counter("astroflight.storage.requests")
                .with_description("Requests made to storage (every dataset)")
                .with_callback(move |o| o.observe(l1.io.snapshot().requests, &[]))
                .build(),
            _storage_bytes: meter
                .u64_observable_counter("astroflight.storage.read")
                .with_unit("By")
                .with_description("Bytes read from storage (every dataset)")
                .with_callback(move |o| o.observe(l2.io.snapshot().bytes, &[]))
                .build(),
            _ready: meter
                .u64_observable_gauge("astroflight.ready")
                .with_description("1 once the first index build of every dataset has ended")
                .with_callback(move |o| o.observe(u64::from(l3.is_ready()), &[]))
                .build(),
            _memory: meter
                .u64_observable_gauge("astroflight.memory")
                .with_unit("By")
                .with_description(
                    "Memory by kind: held by requests (reserved), the process's resident memory (rss), the budget \
                     (max_memory_bytes)",
                )
                .with_callback(move |o| {
                    let m = m1.snapshot();
                    o.observe(m.reserved_bytes, &[KeyValue::new("kind", "reserved")]);
                    o.observe(m.rss_bytes, &[KeyValue::new("kind", "rss")]);
                    o.observe(m.max_memory_bytes, &[KeyValue::new("kind", "budget")]);
                })
                .build(),
            _refusals: meter
                .u64_observable_counter("astroflight.memory.refusals")
                .with_description("Reservations refused for memory (a request's share or the budget)")
                .with_callback(move |o| o.observe(m2.snapshot().refusals, &[]))
                .build(),
        })
    }
}

/// W3C trace context from the request's headers.
struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The tower layer that gives every call its span and its metrics.
#[derive(Clone)]
pub struct TelemetryLayer {
    pub metrics: Arc<Metrics>,
}

impl<S> tower::Layer<S> for TelemetryLayer {
    type Service = TelemetryService<S>;
    fn layer(&self, inner: S) -> TelemetryService<S> {
        TelemetryService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct TelemetryService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

/// What is recorded once per call, when its response ends (or is dropped).
struct CallEnd {
    metrics: Arc<Metrics>,
    method: Arc<str>,
    span: tracing::Span,
    started: Instant,
    bytes: u64,
    done: bool,
}

impl CallEnd {
    fn finish(&mut self, code: tonic::Code) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let attrs = [KeyValue::new("rpc.method", self.method.clone())];
        let with_code = [attrs[0].clone(), KeyValue::new("code", format!("{code:?}"))];
        self.metrics.requests.add(1, &with_code);
        self.metrics
            .duration
            .record(self.started.elapsed().as_secs_f64(), &attrs);
        self.metrics.open.add(-1, &attrs);
        self.metrics.response_bytes.add(self.bytes, &attrs);
        self.span.record("rpc.grpc.status_code", code as i32);
        if code != tonic::Code::Ok {
            self.span.record("otel.status_code", "ERROR");
        }
    }
}

impl Drop for CallEnd {
    fn drop(&mut self) {
        // The body was dropped before its trailers: the client went away.
        self.finish(tonic::Code::Cancelled);
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<tonic::Code> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(tonic::Code::from_i32)
}

/// A response body that is polled inside the call's span and records the call's end.
struct TracedBody {
    inner: tonic::body::Body,
    end: CallEnd,
}

impl http_body::Body for TracedBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let span = this.end.span.clone();
        let _entered = span.enter();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.end.bytes += data.len() as u64;
                }
                if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                    this.end.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) => this.end.finish(tonic::Code::Internal),
            Poll::Ready(None) => this.end.finish(tonic::Code::Ok),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<S, B> tower::Service<http::Request<B>> for TelemetryService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, std::result::Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().trim_start_matches('/').to_string();
        let (service, method) = path.rsplit_once('/').unwrap_or(("", path.as_str()));
        let span = tracing::info_span!(
            "rpc",
            otel.name = %path,
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty,
        );
        let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(req.headers())));
        let _ = span.set_parent(parent);
        let method: Arc<str> = Arc::from(method);
        self.metrics.open.add(1, &[KeyValue::new("rpc.method", method.clone())]);
        let mut end = CallEnd {
            metrics: self.metrics.clone(),
            method,
            span: span.clone(),
            started: Instant::now(),
            bytes: 0,
            done: false,
        };
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let call = inner.call(req).instrument(span);
        Box::pin(async move {
            // A handler that panics (a bug) fails its call with INTERNAL; the connection and
            // every other call on it go on.
            let call = match std::panic::AssertUnwindSafe(call).catch_unwind().await {
                Ok(r) => r,
                Err(p) => {
                    let msg = p
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    tracing::error!(panic = %msg, "a call's handler panicked; the call fails with INTERNAL");
                    end.finish(tonic::Code::Internal);
                    return Ok(crate::error::Error::Internal(format!(
                        "internal error (a bug, please report it): {}",
                        crate::error::cut(&msg, 200)
                    ))
                    .to_status()
                    .into_http());
                }
            };
            match call {
                Ok(response) => {
                    // A status in the headers: the call failed before any data (trailers-only).
                    if let Some(code) = grpc_status(response.headers()) {
                        end.finish(code);
                    }
                    Ok(response.map(|inner| tonic::body::Body::new(TracedBody { inner, end })))
                }
                Err(e) => {
                    end.finish(tonic::Code::Internal);
                    Err(e)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::metrics::MeterProvider as _;

    #[test]
    fn prometheus_text_of_counters_gauges_and_histograms() {
        let reader = Arc::new(ManualReader::builder().build());
        let provider = SdkMeterProvider::builder()
            .with_reader(SharedReader(reader.clone()))
            .build();
        let meter = provider.meter("t");
        let c = meter
            .u64_counter("astroflight.rpc.requests")
            .with_description("calls")
            .build();
        c.add(3, &[KeyValue::new("rpc.method", "DoGet"), KeyValue::new("code", "Ok")]);
        let h = meter
            .f64_histogram("astroflight.rpc.duration")
            .with_unit("s")
            .with_boundaries(vec![0.1, 1.0])
            .build();
        h.record(0.05, &[]);
        h.record(0.5, &[]);
        h.record(5.0, &[]);
        let u = meter.i64_up_down_counter("astroflight.rpc.open").build();
        u.add(2, &[]);
        let mut rm = ResourceMetrics::default();
        reader.collect(&mut rm).unwrap();
        let text = prometheus_text(&rm);
        assert!(text.contains("# TYPE astroflight_rpc_requests_total counter"), "{text}");
        assert!(
            text.contains("astroflight_rpc_requests_total{code=\"Ok\",rpc_method=\"DoGet\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE astroflight_rpc_duration_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("astroflight_rpc_duration_seconds_bucket{le=\"0.1\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("astroflight_rpc_duration_seconds_bucket{le=\"1\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("astroflight_rpc_duration_seconds_bucket{le=\"+Inf\"} 3"),
            "{text}"
        );
        assert!(text.contains("astroflight_rpc_duration_seconds_count 3"), "{text}");
        assert!(
            text.contains("# TYPE astroflight_rpc_open gauge") && text.contains("astroflight_rpc_open 2"),
            "{text}"
        );
    }
}
