//! The Arrow Flight service. Handlers stay thin: decode the ticket once into a typed
//! [`Command`], call the lake, turn errors into statuses with [`Error::to_status`].

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_descriptor::DescriptorType;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest,
    HandshakeResponse, PollInfo, PutResult, SchemaAsIpc, SchemaResult, Ticket,
};
use futures::stream::{self, StreamExt, TryStreamExt};
use serde_json::json;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, instrument, Instrument};

use astroflight_proto::{decode_command, Command, StampFormat};

use crate::cutout::{self, cutout_schema};
use crate::error::Error;
use crate::lake::Lake;
use crate::storage::IoStats;

/// Largest Flight message the encoder produces (batches are split to fit), below gRPC's
/// customary 4 MiB receive limit.
pub const MAX_FLIGHT_DATA_BYTES: usize = 2 << 20;

/// DoGet requests remembered for the `stats` action.
const RECENT_REQUESTS: usize = 256;

pub struct AstroFlight {
    lake: Arc<Lake>,
    deadline: Duration,
    recent: Arc<Mutex<VecDeque<serde_json::Value>>>,
    next_request: AtomicU64,
}

impl AstroFlight {
    /// `deadline`: the longest one DoGet may take (a client's shorter `grpc-timeout` wins).
    pub fn new(lake: Arc<Lake>, deadline: Duration) -> Self {
        AstroFlight {
            lake,
            deadline,
            recent: Arc::new(Mutex::new(VecDeque::with_capacity(RECENT_REQUESTS))),
            next_request: AtomicU64::new(1),
        }
    }

    fn dataset_info(&self, name: &str) -> Result<FlightInfo, Error> {
        let (_, ds) = self.lake.dataset(name)?;
        let schema = cutout_schema(ds.kind, StampFormat::Fits);
        let sum = ds.index.summary()?;
        let meta = json!({
            "dataset": ds.name, "kind": ds.kind.name(), "root": ds.root, "storage": ds.backend.name(),
            "files": sum.files, "alerts": sum.alerts, "bytes": sum.bytes,
        });
        Ok(FlightInfo::new()
            .try_with_schema(&schema)
            .map_err(|e| Error::Internal(e.to_string()))?
            .with_descriptor(FlightDescriptor::new_path(vec![ds.name.clone()]))
            .with_total_records(sum.alerts as i64)
            .with_total_bytes(sum.bytes as i64)
            .with_app_metadata(meta.to_string()))
    }

    async fn plan(&self, cmd: &[u8]) -> Result<cutout::CutoutPlan, Error> {
        match decode_command(cmd)? {
            Command::Cutout(req) => {
                if req.selector.len() <= cutout::INLINE_IDS {
                    return cutout::plan(&self.lake, &req);
                }
                let lake = self.lake.clone();
                tokio::task::spawn_blocking(move || cutout::plan(&lake, &req)).await?
            }
        }
    }
}

fn schema_result(schema: &arrow_schema::Schema) -> Result<SchemaResult, Status> {
    SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(|e: arrow::error::ArrowError| Status::internal(e.to_string()))
}

fn descriptor_cmd(d: &FlightDescriptor) -> Result<Option<&[u8]>, Status> {
    match DescriptorType::try_from(d.r#type) {
        Ok(DescriptorType::Cmd) => Ok(Some(&d.cmd)),
        Ok(DescriptorType::Path) => Ok(None),
        _ => Err(Status::invalid_argument(
            "unknown FlightDescriptor type; use CMD (a ticket) or PATH ([dataset])",
        )),
    }
}

fn dataset_path(d: &FlightDescriptor) -> Result<&str, Status> {
    match d.path.as_slice() {
        [name] => Ok(name),
        _ => Err(Status::invalid_argument(
            "a PATH descriptor names one dataset: [\"ztf\"]",
        )),
    }
}

type Stream<T> = Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl FlightService for AstroFlight {
    type HandshakeStream = Stream<HandshakeResponse>;
    type ListFlightsStream = Stream<FlightInfo>;
    type DoGetStream = Stream<FlightData>;
    type DoPutStream = Stream<PutResult>;
    type DoExchangeStream = Stream<FlightData>;
    type DoActionStream = Stream<arrow_flight::Result>;
    type ListActionsStream = Stream<ActionType>;

    async fn handshake(
        &self,
        _: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        Err(Status::unimplemented(
            "astroflight needs no handshake: call DoGet with a ticket",
        ))
    }

    #[instrument(skip_all)]
    async fn list_flights(&self, _: Request<Criteria>) -> Result<Response<Self::ListFlightsStream>, Status> {
        let infos: Vec<Result<FlightInfo, Status>> = self
            .lake
            .datasets()
            .map(|d| self.dataset_info(&d.name).map_err(|e| e.to_status()))
            .collect();
        Ok(Response::new(stream::iter(infos).boxed()))
    }

    #[instrument(skip_all)]
    async fn get_flight_info(&self, request: Request<FlightDescriptor>) -> Result<Response<FlightInfo>, Status> {
        let d = request.into_inner();
        let Some(cmd) = descriptor_cmd(&d)? else {
            return Ok(Response::new(self.dataset_info(dataset_path(&d)?)?));
        };
        let plan = self.plan(cmd).await?;
        let info = FlightInfo::new()
            .try_with_schema(&plan.schema())
            .map_err(|e| Status::internal(e.to_string()))?
            .with_descriptor(d.clone())
            .with_total_records(plan.rows() as i64)
            .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(d.cmd.clone())))
            .with_ordered(true);
        Ok(Response::new(info))
    }

    async fn poll_flight_info(&self, _: Request<FlightDescriptor>) -> Result<Response<PollInfo>, Status> {
        Err(Status::unimplemented(
            "PollFlightInfo is not supported: every query plans at once; use GetFlightInfo",
        ))
    }

    #[instrument(skip_all)]
    async fn get_schema(&self, request: Request<FlightDescriptor>) -> Result<Response<SchemaResult>, Status> {
        let d = request.into_inner();
        let schema = match descriptor_cmd(&d)? {
            None => {
                let (_, ds) = self.lake.dataset(dataset_path(&d)?)?;
                cutout_schema(ds.kind, StampFormat::Fits)
            }
            Some(cmd) => match decode_command(cmd).map_err(Error::from)? {
                Command::Cutout(req) => {
                    let (_, ds) = cutout::check_request(&self.lake, &req)?;
                    cutout_schema(ds.kind, req.format)
                }
            },
        };
        Ok(Response::new(schema_result(&schema)?))
    }

    async fn do_get(&self, request: Request<Ticket>) -> Result<Response<Self::DoGetStream>, Status> {
        let started = Instant::now();
        let (id, deadline) = self.request_id_and_deadline(request.metadata())?;
        let deadline_at = tokio::time::Instant::from_std(started) + deadline;
        let ticket = request.into_inner().ticket;
        let span = tracing::info_span!(
            "do_get",
            request = id.as_str(),
            dataset = tracing::field::Empty,
            alerts = tracing::field::Empty
        );
        let plan = match tokio::time::timeout_at(deadline_at, self.plan(&ticket).instrument(span.clone())).await {
            Ok(plan) => plan?,
            Err(_) => return Err(deadline_status(deadline)),
        };
        span.record("dataset", plan.dataset.name.as_str());
        span.record("alerts", plan.targets.len());
        let record = RequestRecord {
            id,
            dataset: plan.dataset.name.clone(),
            alerts: plan.targets.len(),
            io: Arc::new(IoStats::default()),
            started,
            span,
            outcome: Mutex::new(None),
            recent: self.recent.clone(),
        };
        let schema = plan.schema();
        let batches = cutout::execute(self.lake.clone(), plan, record.io.clone())
            .map_err(|e| FlightError::Tonic(Box::new(e.to_status())));
        let encoded = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .with_max_flight_data_size(MAX_FLIGHT_DATA_BYTES)
            .build(batches)
            .map_err(|e| match e {
                FlightError::Tonic(status) => *status,
                other => Status::internal(other.to_string()),
            });
        // The whole stream is bounded by the deadline: a storage read that never returns ends
        // the request with DEADLINE_EXCEEDED instead of hanging the client. The record logs
        // what the request read from storage once the stream ends (or the client goes).
        let record = Arc::new(record);
        let out = stream::unfold(
            (encoded, record, false),
            move |(mut encoded, record, done)| async move {
                if done {
                    return None;
                }
                let item = match tokio::time::timeout_at(deadline_at, encoded.next()).await {
                    Ok(Some(item)) => item,
                    Ok(None) => {
                        record.finish("ok");
                        return None;
                    }
                    Err(_) => Err(deadline_status(deadline)),
                };
                let failed = item.is_err();
                if let Err(status) = &item {
                    record.finish(code_name(status.code()));
                }
                Some((item, (encoded, record, failed)))
            },
        );
        Ok(Response::new(out.boxed()))
    }

    async fn do_put(&self, _: Request<Streaming<FlightData>>) -> Result<Response<Self::DoPutStream>, Status> {
        Err(Status::unimplemented(
            "astroflight is read-only: DoPut is not supported",
        ))
    }

    async fn do_exchange(&self, _: Request<Streaming<FlightData>>) -> Result<Response<Self::DoExchangeStream>, Status> {
        Err(Status::unimplemented("DoExchange is not supported"))
    }

    #[instrument(skip_all, fields(action))]
    async fn do_action(&self, request: Request<Action>) -> Result<Response<Self::DoActionStream>, Status> {
        let action = request.into_inner();
        tracing::Span::current().record("action", action.r#type.as_str());
        let body = match action.r#type.as_str() {
            "stats" => {
                let datasets = self
                    .lake
                    .datasets()
                    .map(|d| {
                        let sum = d.index.summary().map_err(Error::from)?;
                        Ok(
                            json!({"name": d.name, "kind": d.kind.name(), "storage": d.backend.name(),
                                  "files": sum.files, "alerts": sum.alerts}),
                        )
                    })
                    .collect::<Result<Vec<_>, Error>>()?;
                let recent: Vec<serde_json::Value> = self.recent.lock().expect("recent lock").iter().cloned().collect();
                json!({"io": self.lake.io.snapshot(), "footer_cache_files": self.lake.footers.len(),
                       "datasets": datasets, "requests": recent})
            }
            "reindex" => {
                let stats = self.lake.reindex().await;
                let out: Vec<_> = stats
                    .into_iter()
                    .map(|(name, result)| match result {
                        Ok(s) => json!({"dataset": name, "listed": s.listed, "indexed": s.indexed,
                               "unchanged": s.unchanged, "removed": s.removed, "repaired": s.repaired, "rows": s.rows,
                               "failed": s.failed.iter().map(|(p, m)| json!({"path": p, "error": m})).collect::<Vec<_>>()}),
                        Err(e) => json!({"dataset": name, "error": e.to_string()}),
                    })
                    .collect();
                json!({"datasets": out})
            }
            other => {
                return Err(Status::invalid_argument(format!(
                    "unknown action {other:?}; this server has: stats, reindex"
                )))
            }
        };
        let result = arrow_flight::Result {
            body: body.to_string().into(),
        };
        Ok(Response::new(stream::iter([Ok(result)]).boxed()))
    }

    async fn list_actions(&self, _: Request<Empty>) -> Result<Response<Self::ListActionsStream>, Status> {
        let actions = [
            (
                "stats",
                "storage I/O totals (requests, bytes), the last DoGet requests with their own I/O, footer cache size and per-dataset counts, as JSON",
            ),
            (
                "reindex",
                "incrementally re-index every dataset now; returns what changed, as JSON",
            ),
        ];
        let list: Vec<Result<ActionType, Status>> = actions
            .iter()
            .map(|(t, d)| {
                Ok(ActionType {
                    r#type: t.to_string(),
                    description: d.to_string(),
                })
            })
            .collect();
        Ok(Response::new(stream::iter(list).boxed()))
    }
}

impl AstroFlight {
    /// The request's id (the client's `x-request-id`, else a server counter) and its deadline
    /// (the server's, or the client's `grpc-timeout` when shorter).
    fn request_id_and_deadline(&self, md: &tonic::metadata::MetadataMap) -> Result<(String, Duration), Status> {
        let id = match md.get("x-request-id") {
            Some(v) => {
                let v = v
                    .to_str()
                    .map_err(|_| Status::invalid_argument("x-request-id must be printable ASCII"))?;
                if v.is_empty() || v.len() > 128 {
                    return Err(Status::invalid_argument("x-request-id must be 1 to 128 characters"));
                }
                v.to_string()
            }
            None => format!("req-{}", self.next_request.fetch_add(1, Ordering::Relaxed)),
        };
        let client = match md.get("grpc-timeout") {
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(parse_grpc_timeout)
                    .ok_or_else(|| Status::invalid_argument("malformed grpc-timeout header"))?,
            ),
            None => None,
        };
        Ok((id, client.map_or(self.deadline, |c| c.min(self.deadline))))
    }
}

/// gRPC's `grpc-timeout`: up to 8 digits and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn deadline_status(deadline: Duration) -> Status {
    Status::deadline_exceeded(format!(
        "the request did not finish within its deadline of {:.1} s (the server's deadline_secs or the client's timeout)",
        deadline.as_secs_f64()
    ))
}

fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::NotFound => "NOT_FOUND",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::DataLoss => "DATA_LOSS",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        tonic::Code::Internal => "INTERNAL",
        tonic::Code::Cancelled => "CANCELLED",
        _ => "OTHER",
    }
}

/// One DoGet: what it read from storage and how it ended. Logged, and remembered for `stats`,
/// when the stream is dropped: finished, failed, or abandoned by the client ("cancelled").
struct RequestRecord {
    id: String,
    dataset: String,
    alerts: usize,
    io: Arc<IoStats>,
    started: Instant,
    span: tracing::Span,
    outcome: Mutex<Option<&'static str>>,
    recent: Arc<Mutex<VecDeque<serde_json::Value>>>,
}

impl RequestRecord {
    fn finish(&self, outcome: &'static str) {
        self.outcome.lock().expect("outcome lock").get_or_insert(outcome);
    }
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        let io = self.io.snapshot();
        let ms = self.started.elapsed().as_secs_f64() * 1e3;
        let outcome = self
            .outcome
            .lock()
            .map(|o| o.unwrap_or("cancelled"))
            .unwrap_or("cancelled");
        {
            let _g = self.span.enter();
            info!(requests = io.requests, bytes = io.bytes, ms, outcome, "do_get done");
        }
        let entry = json!({"id": self.id, "dataset": self.dataset, "alerts": self.alerts,
                           "requests": io.requests, "bytes": io.bytes, "ms": ms, "outcome": outcome});
        if let Ok(mut recent) = self.recent.lock() {
            if recent.len() == RECENT_REQUESTS {
                recent.pop_front();
            }
            recent.push_back(entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
    }
}
