//! The Arrow Flight service. Handlers stay thin: decode the ticket once into a typed
//! [`Command`], call the lake, turn errors into statuses with [`Error::to_status`].

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

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

pub struct AstroFlight {
    lake: Arc<Lake>,
}

impl AstroFlight {
    pub fn new(lake: Arc<Lake>) -> Self {
        AstroFlight { lake }
    }

    fn dataset_info(&self, name: &str) -> Result<FlightInfo, Error> {
        let (_, ds) = self.lake.dataset(name)?;
        let schema = cutout_schema(ds.kind, StampFormat::Fits);
        let sum = ds.index.summary()?;
        let meta = json!({
            "dataset": ds.name, "kind": ds.kind.name(), "root": ds.root,
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
        let ticket = request.into_inner().ticket;
        let span = tracing::info_span!(
            "do_get",
            dataset = tracing::field::Empty,
            alerts = tracing::field::Empty
        );
        let started = Instant::now();
        let plan = self.plan(&ticket).instrument(span.clone()).await?;
        span.record("dataset", plan.dataset.name.as_str());
        span.record("alerts", plan.targets.len());
        let schema = plan.schema();
        let io = Arc::new(IoStats::default());
        let batches = cutout::execute(self.lake.clone(), plan, io.clone())
            .map_err(|e| FlightError::Tonic(Box::new(e.to_status())));
        let encoded = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .with_max_flight_data_size(MAX_FLIGHT_DATA_BYTES)
            .build(batches)
            .map_err(|e| match e {
                FlightError::Tonic(status) => *status,
                other => Status::internal(other.to_string()),
            });
        // Log what the request read from storage once the stream ends (or the client goes).
        let done = LogOnDrop { io, started, span };
        Ok(Response::new(
            encoded
                .map(move |x| {
                    let _ = &done;
                    x
                })
                .boxed(),
        ))
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
                        Ok(json!({"name": d.name, "kind": d.kind.name(), "files": sum.files, "alerts": sum.alerts}))
                    })
                    .collect::<Result<Vec<_>, Error>>()?;
                json!({"io": self.lake.io.snapshot(), "footer_cache_files": self.lake.footers.len(), "datasets": datasets})
            }
            "reindex" => {
                let stats = self.lake.reindex().await?;
                let out: Vec<_> = stats
                    .into_iter()
                    .map(|(name, s)| {
                        json!({"dataset": name, "listed": s.listed, "indexed": s.indexed, "unchanged": s.unchanged,
                               "removed": s.removed, "repaired": s.repaired, "rows": s.rows,
                               "failed": s.failed.iter().map(|(p, m)| json!({"path": p, "error": m})).collect::<Vec<_>>()})
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
                "storage I/O totals (requests, bytes), footer cache size and per-dataset counts, as JSON",
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

struct LogOnDrop {
    io: Arc<IoStats>,
    started: Instant,
    span: tracing::Span,
}

impl Drop for LogOnDrop {
    fn drop(&mut self) {
        let io = self.io.snapshot();
        let _g = self.span.enter();
        info!(
            requests = io.requests,
            bytes = io.bytes,
            ms = self.started.elapsed().as_secs_f64() * 1e3,
            "do_get done"
        );
    }
}
