//! The Flight edge. Handlers stay thin: decode the ticket once into a typed [`Command`], hand
//! it to its ticket kind ([`crate::tickets`]), and apply what every kind shares, once: the
//! request id, the deadline, the limits (checked by the plan before anything is read), the
//! stats record, the check that the stream holds exactly the rows the plan promised, and the
//! error-to-status mapping ([`Error::to_status`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::error::FlightError;
use arrow_flight::flight_descriptor::DescriptorType;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo, HandshakeRequest, HandshakeResponse,
    PollInfo, PutResult, SchemaAsIpc, SchemaResult, Ticket,
};
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use serde_json::json;
use tonic::{Request, Response, Status, Streaming};
use tracing::{instrument, Instrument};

use astroflight_proto::{decode_command, Command, StampFormat};

use crate::auth::{caller_of, Caller, Security};
use crate::config::{LimitsConfig, ReindexAction};
use crate::edge::record::{Recent, RequestRecord, RECENT_REQUESTS};
use crate::edge::slots::Slots;
use crate::edge::{deadline_status, endpoint, flight_data, guarded, parse_grpc_timeout, Encoding, RequestIo, Stream};
use crate::error::{Error, Result};
use crate::lake::{Dataset, FitsDataset, Lake};
use crate::storage::IoStats;
use crate::tickets::{self, cutout::cutout_schema, Planned};

/// `CancelFlightInfo`: nothing runs between calls here (a FlightInfo's tickets carry the whole
/// query, and a DoGet stops reading when its client cancels the call), so every well-formed
/// request is answered CANCELLED at once.
fn cancel_flight_info(body: &[u8]) -> Result<Response<Stream<arrow_flight::Result>>, Status> {
    use prost::Message;
    let req = arrow_flight::CancelFlightInfoRequest::decode(body).map_err(|e| {
        Error::InvalidArgument(format!(
            "the CancelFlightInfo body is not a CancelFlightInfoRequest: {e}"
        ))
        .to_status()
    })?;
    if req.info.is_none() {
        return Err(
            Error::InvalidArgument("the CancelFlightInfoRequest names no FlightInfo to cancel".into()).to_status(),
        );
    }
    let result = arrow_flight::CancelFlightInfoResult::new(arrow_flight::CancelStatus::Cancelled);
    let out = arrow_flight::Result {
        body: result.encode_to_vec().into(),
    };
    Ok(Response::new(stream::iter([Ok(out)]).boxed()))
}

/// Tickets larger than this are decoded on the blocking pool, not on a gRPC worker.
const INLINE_TICKET_BYTES: usize = 16 << 10;

pub struct AstroFlight {
    lake: Arc<Lake>,
    security: Arc<Security>,
    /// Open response streams, per caller and in total.
    slots: Slots,
    /// Flight SQL commands (an `Any` of `arrow.flight.protocol.sql`) go here.
    sql: crate::sql::SqlService,
    deadline: Duration,
    recent: Recent,
    next_request: AtomicU64,
}

/// Decode a ticket or command; a large one off the gRPC runtime.
async fn decode(bytes: &[u8]) -> Result<Command> {
    if bytes.len() <= INLINE_TICKET_BYTES {
        return Ok(decode_command(bytes)?);
    }
    let owned = bytes.to_vec();
    Ok(tokio::task::spawn_blocking(move || decode_command(&owned)).await??)
}

/// Run catalog work (a scan of every file entry) on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await?
}

impl AstroFlight {
    /// `deadline`: the longest one DoGet may take (a client's shorter `grpc-timeout` wins).
    pub fn new(lake: Arc<Lake>, deadline: Duration, security: Arc<Security>, limits: &LimitsConfig) -> Result<Self> {
        Ok(AstroFlight {
            sql: crate::sql::SqlService::new(lake.clone(), security.clone())?,
            lake,
            security,
            slots: Slots::new(
                limits.max_streams,
                limits.max_streams_per_identity,
                Duration::from_secs_f64(limits.queue_secs),
            ),
            deadline,
            recent: Arc::new(Mutex::new(VecDeque::with_capacity(RECENT_REQUESTS))),
            next_request: AtomicU64::new(1),
        })
    }

    /// A dataset's FlightInfo (blocking: scans the catalog).
    fn dataset_info(lake: &Lake, ds: &Dataset) -> Result<FlightInfo> {
        let schema = cutout_schema(ds.kind, StampFormat::Fits);
        let sum = ds.index.summary()?;
        let mut meta = json!({
            "dataset": ds.name, "kind": ds.kind.name(), "storage": ds.backend.name(),
            "files": sum.files, "alerts": sum.alerts, "bytes": sum.bytes,
            "indexing": ds.build.first_build_pending(),
        });
        if lake.publish_roots {
            meta["root"] = json!(ds.root);
        }
        Ok(FlightInfo::new()
            .try_with_schema(&schema)
            .map_err(|e| Error::Internal(e.to_string()))?
            .with_descriptor(FlightDescriptor::new_path(vec![ds.name.clone()]))
            .with_total_records(sum.alerts as i64)
            .with_total_bytes(sum.bytes as i64)
            .with_app_metadata(meta.to_string()))
    }

    /// A FITS dataset's FlightInfo (blocking: reads the header catalog): the header table's
    /// base schema, HDUs as `total_records`.
    fn fits_dataset_info(lake: &Lake, ds: &FitsDataset) -> Result<FlightInfo> {
        let (files, hdus, errors) = crate::fits_lake::catalog::summary(&ds.catalog)?;
        let mut meta = json!({
            "dataset": ds.name, "kind": "fits", "storage": ds.backend.name(),
            "files": files, "hdus": hdus, "files_with_errors": errors,
            "indexing": ds.build.first_build_pending(),
        });
        if lake.publish_roots {
            meta["root"] = json!(ds.root);
        }
        Ok(FlightInfo::new()
            .try_with_schema(&crate::fits_lake::table::schema(Vec::new()))
            .map_err(|e| Error::Internal(e.to_string()))?
            .with_descriptor(FlightDescriptor::new_path(vec![ds.name.clone()]))
            .with_total_records(hdus as i64)
            .with_app_metadata(meta.to_string()))
    }

    /// The FlightInfo of any dataset by name.
    fn any_dataset_info(lake: &Lake, name: &str) -> Result<FlightInfo> {
        if lake.is_fits(name) {
            Self::fits_dataset_info(lake, lake.fits_dataset(name)?)
        } else {
            Self::dataset_info(lake, lake.dataset(name)?)
        }
    }

    /// Plan a command; what planning reads (an exact count) counts into `io`.
    async fn plan(&self, cmd: &[u8], for_info: bool, caller: &Caller, io: &Arc<IoStats>) -> Result<Arc<dyn Planned>> {
        let command = self.decode_for(cmd, caller).await?;
        tickets::plan(&self.lake, command, cmd, for_info, io).await
    }

    /// Decode a command and check it against the caller's grants and the ids limit (before
    /// anything is looked up).
    async fn decode_for(&self, cmd: &[u8], caller: &Caller) -> Result<Command> {
        let command = decode(cmd).await?;
        caller.check(command.dataset())?;
        if command.ids() > self.lake.limits.max_ticket_ids {
            return Err(Error::ResourceExhausted(format!(
                "the ticket names {} ids; this server's limit is {} per ticket (limits.max_ticket_ids): split it",
                command.ids(),
                self.lake.limits.max_ticket_ids
            )));
        }
        Ok(command)
    }

    /// GetFlightInfo, within the caller's deadline.
    async fn flight_info(&self, request: Request<FlightDescriptor>) -> Result<Response<FlightInfo>, Status> {
        if crate::sql::is_flight_sql(&request.get_ref().cmd) {
            return FlightService::get_flight_info(&self.sql, request).await;
        }
        let caller = self.caller(&request)?;
        let d = request.into_inner();
        let Some(cmd) = descriptor_cmd(&d)? else {
            let lake = self.lake.clone();
            let name = dataset_path(&d)?.to_string();
            caller.check(&name)?;
            let info = blocking(move || Self::any_dataset_info(&lake, &name)).await?;
            return Ok(Response::new(info));
        };
        let io = Arc::new(IoStats::for_request(self.lake.memory.account("GetFlightInfo")));
        let plan = self.plan(cmd, true, &caller, &io).await?;
        let mut info = FlightInfo::new()
            .try_with_schema(&plan.schema())
            .map_err(|e| Error::Internal(e.to_string()).to_status())?
            .with_descriptor(d.clone())
            .with_total_records(plan.estimated_rows())
            .with_total_bytes(plan.estimated_bytes() as i64)
            .with_ordered(true);
        if let Some(meta) = plan.app_metadata() {
            info = info.with_app_metadata(meta.to_string());
        }
        for (i, t) in plan.endpoint_tickets().into_iter().enumerate() {
            info = info.with_endpoint(endpoint(t, i, &self.lake.advertise));
        }
        Ok(Response::new(info))
    }

    /// GetSchema, within the caller's deadline.
    async fn schema_of(&self, request: Request<FlightDescriptor>) -> Result<Response<SchemaResult>, Status> {
        if crate::sql::is_flight_sql(&request.get_ref().cmd) {
            // The schema a Flight SQL command's FlightInfo carries (planned, nothing read).
            let info = FlightService::get_flight_info(&self.sql, request).await?.into_inner();
            return Ok(Response::new(SchemaResult { schema: info.schema }));
        }
        let caller = self.caller(&request)?;
        let d = request.into_inner();
        let schema = match descriptor_cmd(&d)? {
            None => {
                let name = dataset_path(&d)?;
                caller.check(name)?;
                if self.lake.is_fits(name) {
                    crate::fits_lake::table::schema(Vec::new())
                } else {
                    cutout_schema(self.lake.dataset(name)?.kind, StampFormat::Fits)
                }
            }
            Some(cmd) => tickets::schema(&self.lake, self.decode_for(cmd, &caller).await?, cmd).await?,
        };
        Ok(Response::new(schema_result(&schema)?))
    }

    /// The caller of a request, as the authentication layer found it.
    fn caller<T>(&self, request: &Request<T>) -> Result<Arc<Caller>, Status> {
        Ok(caller_of(&self.security, request)?)
    }

    /// What a caller's stream slots are counted by: its identity, or its address when anonymous.
    fn slot_key<T>(caller: &Caller, request: &Request<T>) -> String {
        match (&caller.identity, conn_info(request).and_then(|c| c.remote)) {
            (Some(_), _) => caller.name(),
            (None, Some(addr)) => format!("client {}", addr.ip()),
            (None, None) => caller.name(),
        }
    }

    fn stats(lake: &Lake, recent: &Recent, caller: &Caller) -> Result<serde_json::Value> {
        let datasets = lake
            .datasets()
            .filter(|d| caller.may_read(&d.name))
            .map(|d| {
                let sum = d.index.summary()?;
                let ix = d.index.index_stats();
                let mut v = json!({"name": d.name, "kind": d.kind.name(), "storage": d.backend.name(),
                                   "files": sum.files, "alerts": sum.alerts, "indexing": d.build.first_build_pending(),
                                   "index": {"alerts": ix.alerts, "segments": ix.segments, "bytes": ix.bytes,
                                             "generation": ix.generation, "role": lake.role.name()}});
                if let Some(f) = d.index.followed()? {
                    v["index"]["lineage"] = json!(f.lineage);
                } else if d.published.is_some() {
                    v["index"]["lineage"] = json!(d.index.lineage());
                }
                if lake.publish_roots {
                    v["root"] = json!(d.root);
                }
                Ok(v)
            })
            .chain(lake.fits_datasets().filter(|d| caller.may_read(&d.name)).map(|d| {
                let (files, hdus, errors) = crate::fits_lake::catalog::summary(&d.catalog)?;
                let mut v = json!({"name": d.name, "kind": "fits", "storage": d.backend.name(),
                                   "files": files, "hdus": hdus, "files_with_errors": errors,
                                   "indexing": d.build.first_build_pending()});
                if lake.publish_roots {
                    v["root"] = json!(d.root);
                }
                Ok(v)
            }))
            .collect::<Result<Vec<_>, Error>>()?;
        // A caller who reads everything sees every request; others their own only.
        let mine = |r: &&serde_json::Value| {
            caller.reads_everything()
                || (caller.identity.is_some() && r["identity"].as_str() == caller.identity.as_deref())
        };
        let recent: Vec<serde_json::Value> = recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(mine)
            .cloned()
            .collect();
        Ok(
            json!({"io": lake.io.snapshot(), "memory": lake.memory.snapshot(), "footer_cache_files": lake.footers.len(),
                  "footer_cache_bytes": lake.footers.bytes(), "ready": lake.is_ready(),
                  "datasets": datasets, "requests": recent}),
        )
    }

    /// May this caller run the `reindex` action? It re-indexes every dataset: a caller whose
    /// grants do not cover every dataset may not.
    fn may_reindex(&self, peer: Option<std::net::SocketAddr>, caller: &Caller) -> Result<(), Status> {
        if !caller.reads_everything() {
            return Err(Error::PermissionDenied(format!(
                "{} may not run reindex: it needs a grant of every dataset (datasets = [\"*\"])",
                caller.name()
            ))
            .to_status());
        }
        match self.lake.reindex_action {
            ReindexAction::Any => Ok(()),
            ReindexAction::Off => Err(Error::PermissionDenied(
                "the reindex action is disabled on this server (reindex_action = \"off\")".into(),
            )
            .to_status()),
            ReindexAction::Local if peer.is_some_and(|p| p.ip().is_loopback()) => Ok(()),
            ReindexAction::Local => Err(Error::PermissionDenied(
                "the reindex action is allowed from the server's own host only (reindex_action = \"local\")".into(),
            )
            .to_status()),
        }
    }
}

fn schema_result(schema: &arrow_schema::Schema) -> Result<SchemaResult, Status> {
    SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(|e: arrow::error::ArrowError| Error::Internal(e.to_string()).to_status())
}

fn descriptor_cmd(d: &FlightDescriptor) -> Result<Option<&[u8]>, Status> {
    match DescriptorType::try_from(d.r#type) {
        Ok(DescriptorType::Cmd) => Ok(Some(&d.cmd)),
        Ok(DescriptorType::Path) => Ok(None),
        _ => Err(Error::InvalidArgument(
            "unknown FlightDescriptor type; use CMD (a ticket) or PATH ([dataset])".into(),
        )
        .to_status()),
    }
}

fn dataset_path(d: &FlightDescriptor) -> Result<&str, Status> {
    match d.path.as_slice() {
        [name] => Ok(name),
        _ => Err(Error::InvalidArgument("a PATH descriptor names one dataset: [\"ztf\"]".into()).to_status()),
    }
}

/// The plan's stream, checked: it must end with exactly the rows the plan promised. Fewer (an
/// early end anywhere below) or more is an error, never an OK stream with a different answer.
fn checked(batches: BoxStream<'static, Result<RecordBatch>>, planned: u64) -> BoxStream<'static, Result<RecordBatch>> {
    stream::unfold((batches, 0u64, false), move |(mut batches, seen, done)| async move {
        if done {
            return None;
        }
        match batches.next().await {
            Some(Ok(b)) => {
                let seen = seen + b.num_rows() as u64;
                if seen > planned {
                    let e = Error::Internal(format!("the stream held more rows than the {planned} planned"));
                    return Some((Err(e), (batches, seen, true)));
                }
                Some((Ok(b), (batches, seen, false)))
            }
            Some(Err(e)) => Some((Err(e), (batches, seen, true))),
            None if seen == planned => None,
            None => {
                let e = Error::Internal(format!(
                    "the stream ended after {seen} of {planned} planned rows; the answer is incomplete"
                ));
                Some((Err(e), (batches, seen, true)))
            }
        }
    })
    .boxed()
}

#[tonic::async_trait]
impl FlightService for AstroFlight {
    type HandshakeStream = Stream<HandshakeResponse>;
    type ListFlightsStream = Stream<FlightInfo>;
    type DoGetStream = Stream<FlightData>;
    type DoPutStream = Stream<PutResult>;
    type DoExchangeStream = Stream<FlightData>;
    type DoActionStream = Stream<arrow_flight::Result>;
    type ListActionsStream = Stream<ActionType>;

    /// Basic credentials (`authorization: Basic ...`, as pyarrow's `authenticate_basic_token`,
    /// the JDBC driver and ADBC send them) for a session token, returned as
    /// `authorization: Bearer <token>` in the response headers and as the response's payload. A
    /// valid bearer token is echoed back. On a server that takes no credentials the answer is
    /// empty.
    async fn handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        let certificate = conn_info(&request).and_then(|c| c.client.clone());
        let headers = request.metadata().clone().into_headers();
        let session = self.security.handshake(&headers, certificate.as_deref()).await?;
        let Some(session) = session else {
            let out = stream::iter([Ok(HandshakeResponse::default())]);
            return Ok(Response::new(out.boxed()));
        };
        tracing::info!(identity = session.caller.identity.as_deref().unwrap_or(""), "signed in");
        let bearer = format!("Bearer {}", session.token);
        let reply = HandshakeResponse {
            protocol_version: 0,
            payload: session.token.into_bytes().into(),
        };
        let mut response = Response::new(stream::iter([Ok(reply)]).boxed() as Self::HandshakeStream);
        let value = bearer
            .parse()
            .map_err(|_| Error::Internal("the session token is not a valid header value".into()).to_status())?;
        response.metadata_mut().insert("authorization", value);
        Ok(response)
    }

    #[instrument(skip_all)]
    async fn list_flights(&self, request: Request<Criteria>) -> Result<Response<Self::ListFlightsStream>, Status> {
        let caller = self.caller(&request)?;
        let lake = self.lake.clone();
        let infos = blocking(move || {
            lake.datasets()
                .filter(|d| caller.may_read(&d.name))
                .map(|d| Self::dataset_info(&lake, d))
                .chain(
                    lake.fits_datasets()
                        .filter(|d| caller.may_read(&d.name))
                        .map(|d| Self::fits_dataset_info(&lake, d)),
                )
                .collect::<Result<Vec<_>>>()
        })
        .await?;
        Ok(Response::new(stream::iter(infos.into_iter().map(Ok)).boxed()))
    }

    #[instrument(skip_all)]
    async fn get_flight_info(&self, request: Request<FlightDescriptor>) -> Result<Response<FlightInfo>, Status> {
        // Planning may read (an exact count) and compute (a SQL plan): the deadline bounds it.
        let (_, deadline) = self.request_id_and_deadline(request.metadata())?;
        match tokio::time::timeout(deadline, self.flight_info(request)).await {
            Ok(r) => r,
            Err(_) => Err(deadline_status(deadline)),
        }
    }

    async fn poll_flight_info(&self, _: Request<FlightDescriptor>) -> Result<Response<PollInfo>, Status> {
        Err(Error::Unimplemented(
            "PollFlightInfo is not supported: every query plans at once; use GetFlightInfo".into(),
        )
        .to_status())
    }

    #[instrument(skip_all)]
    async fn get_schema(&self, request: Request<FlightDescriptor>) -> Result<Response<SchemaResult>, Status> {
        let (_, deadline) = self.request_id_and_deadline(request.metadata())?;
        match tokio::time::timeout(deadline, self.schema_of(request)).await {
            Ok(r) => r,
            Err(_) => Err(deadline_status(deadline)),
        }
    }

    async fn do_get(&self, mut request: Request<Ticket>) -> Result<Response<Self::DoGetStream>, Status> {
        let started = Instant::now();
        let (id, deadline) = self.request_id_and_deadline(request.metadata())?;
        let deadline_at = tokio::time::Instant::from_std(started) + deadline;
        let caller = self.caller(&request)?;
        // A stream slot first (waiting in line up to limits.queue_secs), held until the
        // stream ends or its client goes.
        let slot =
            match tokio::time::timeout_at(deadline_at, self.slots.acquire(&Self::slot_key(&caller, &request))).await {
                Ok(slot) => slot?,
                Err(_) => return Err(deadline_status(deadline)),
            };
        // The request's memory: everything it holds (reads, arrays, operators, encoding)
        // counts against its share of the budget.
        let account = self.lake.memory.account(format!("request {id}"));
        let io = Arc::new(IoStats::for_request(account.clone()));
        let span = tracing::info_span!(
            "do_get",
            request = id.as_str(),
            dataset = tracing::field::Empty,
            alerts = tracing::field::Empty
        );
        let record = Arc::new(RequestRecord::new(
            id,
            caller.identity.clone(),
            io,
            started,
            span.clone(),
            self.recent.clone(),
            slot,
        ));
        let max = self.lake.limits.max_response_bytes;
        if crate::sql::is_flight_sql(&request.get_ref().ticket) {
            // A Flight SQL ticket: the same deadline, record and response guard as ours.
            record.serves("sql", 0);
            request.extensions_mut().insert(RequestIo(record.io.clone()));
            let planned = FlightService::do_get(&self.sql, request).instrument(span);
            let encoded = match tokio::time::timeout_at(deadline_at, planned).await {
                Ok(Ok(r)) => r.into_inner(),
                Ok(Err(status)) => return Err(record.failed(status)),
                Err(_) => return Err(record.failed(deadline_status(deadline))),
            };
            return Ok(Response::new(guarded(encoded, record, deadline_at, deadline, max)));
        }
        let ticket = request.into_inner().ticket;
        let planned = self.plan(&ticket, false, &caller, &record.io).instrument(span);
        let plan = match tokio::time::timeout_at(deadline_at, planned).await {
            Ok(Ok(plan)) => plan,
            Ok(Err(e)) => return Err(record.failed(e.to_status())),
            Err(_) => return Err(record.failed(deadline_status(deadline))),
        };
        record.serves(plan.dataset(), plan.alerts());
        let (schema, planned, compression) = (plan.schema(), plan.rows(), plan.compression());
        let runtime = if plan.bulk() { &self.lake.bulk } else { &self.lake.cpu };
        let batches = plan.execute(record.io.clone());
        let batches = match planned {
            Some(n) => checked(batches, n),
            None => batches,
        }
        .map_err(|e| FlightError::Tonic(Box::new(e.to_status())));
        let options = IpcWriteOptions::default()
            .try_with_compression(compression)
            .map_err(|e| Error::Internal(e.to_string()).to_status())?;
        let encoding = Encoding {
            account: Some(account),
            max_message_bytes: self.lake.limits.max_message_bytes,
            runtime: Some(runtime.handle()),
        };
        let encoded = flight_data(schema, options, batches, encoding);
        Ok(Response::new(guarded(encoded, record, deadline_at, deadline, max)))
    }

    async fn do_put(&self, request: Request<Streaming<FlightData>>) -> Result<Response<Self::DoPutStream>, Status> {
        // Only Flight SQL uses DoPut here (prepared statement parameters); the data is read-only.
        FlightService::do_put(&self.sql, request).await
    }

    async fn do_exchange(&self, _: Request<Streaming<FlightData>>) -> Result<Response<Self::DoExchangeStream>, Status> {
        Err(Error::Unimplemented("DoExchange is not supported".into()).to_status())
    }

    #[instrument(skip_all, fields(action))]
    async fn do_action(&self, request: Request<Action>) -> Result<Response<Self::DoActionStream>, Status> {
        if crate::sql::ACTIONS.contains(&request.get_ref().r#type.as_str()) {
            // CreatePreparedStatement plans the query: the deadline bounds it.
            let (_, deadline) = self.request_id_and_deadline(request.metadata())?;
            return match tokio::time::timeout(deadline, FlightService::do_action(&self.sql, request)).await {
                Ok(r) => r,
                Err(_) => Err(deadline_status(deadline)),
            };
        }
        if request.get_ref().r#type == "CancelFlightInfo" {
            return cancel_flight_info(&request.get_ref().body);
        }
        let peer = conn_info(&request).and_then(|c| c.remote);
        let caller = self.caller(&request)?;
        let action = request.into_inner();
        tracing::Span::current().record("action", action.r#type.as_str());
        let body = match action.r#type.as_str() {
            "stats" => {
                let (lake, recent) = (self.lake.clone(), self.recent.clone());
                let mut stats = blocking(move || Self::stats(&lake, &recent, &caller)).await?;
                stats["open_streams"] = json!(self.slots.open());
                stats["queued_streams"] = json!(self.slots.waiting());
                stats
            }
            "classes" => {
                // Body: {"dataset": "ztf"} (or the bare name).
                let body = String::from_utf8_lossy(&action.body).trim().to_string();
                let name = if body.starts_with('{') {
                    serde_json::from_str::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v.get("dataset").and_then(|d| d.as_str()).map(str::to_string))
                        .ok_or_else(|| {
                            Error::InvalidArgument(
                                "the classes action takes {\"dataset\": \"NAME\"} as its body".into(),
                            )
                            .to_status()
                        })?
                } else {
                    body
                };
                caller.check(&name)?;
                let lake = self.lake.clone();
                blocking(move || tickets::alerts::classes_action(&lake, &name)).await?
            }
            "health" => {
                let datasets: Vec<_> = self
                    .lake
                    .build_states()
                    .filter(|(name, _)| caller.may_read(name))
                    .map(|(name, b)| json!({"name": name, "indexing": b.first_build_pending(), "serving": b.serving()}))
                    .collect();
                json!({"ready": self.lake.is_ready(), "datasets": datasets})
            }
            "reindex" => {
                self.may_reindex(peer, &caller)?;
                let stats = self.lake.reindex().await;
                let out: Vec<_> = stats
                    .into_iter()
                    .map(|(name, result)| match result {
                        Ok(r) => {
                            let mut v = json!({"dataset": name});
                            if let Some(s) = &r.build {
                                v = json!({"dataset": name, "listed": s.listed, "indexed": s.indexed,
                                       "unchanged": s.unchanged, "removed": s.removed, "repaired": s.repaired, "rows": s.rows, "merged": s.merged,
                                       "failed": s.failed.iter().map(|(p, m)| json!({"path": p, "error": m})).collect::<Vec<_>>()});
                            }
                            match &r.published {
                                Some(Ok(p)) => {
                                    v["published"] = json!({"generation": p.published.as_ref().map(|i| i.generation),
                                        "lineage": p.published.as_ref().map(|i| i.lineage.clone()),
                                        "segments_uploaded": p.segments_uploaded, "bytes_uploaded": p.bytes_uploaded,
                                        "generations_deleted": p.generations_deleted, "segments_deleted": p.segments_deleted});
                                }
                                Some(Err(e)) => v["publish_error"] = json!(e),
                                None => {}
                            }
                            if let Some(l) = &r.loaded {
                                v["loaded"] = json!({"generation": l.installed.as_ref().map(|i| i.generation),
                                    "lineage": l.installed.as_ref().map(|i| i.lineage.clone()),
                                    "segments_downloaded": l.segments_downloaded, "bytes_downloaded": l.bytes_downloaded});
                            }
                            v
                        }
                        Err(e) => json!({"dataset": name, "error": e.to_string()}),
                    })
                    .collect();
                json!({"datasets": out})
            }
            other => {
                return Err(Error::InvalidArgument(format!(
                    "unknown action {}; this server has: stats, health, classes, reindex, CancelFlightInfo and the \
                     Flight SQL actions",
                    crate::error::quoted(other)
                ))
                .to_status())
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
                "health",
                "readiness as JSON: `ready` once the first index build of every dataset since start has ended, and which datasets are still indexing",
            ),
            (
                "classes",
                "alerts per night and class of a dataset (body: {\"dataset\": \"ztf\"}), from the catalog, as JSON",
            ),
            (
                "reindex",
                "incrementally re-index every dataset now (builds never overlap) and publish it where index_root is set; on a follower, load the newest published generation; returns what changed, as JSON",
            ),
            (
                "CancelFlightInfo",
                "cancel a query planned by GetFlightInfo: always CANCELLED, as a FlightInfo holds no server state (its tickets carry the whole query) and a DoGet ends when its client cancels the call",
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
                    .map_err(|_| Error::InvalidArgument("x-request-id must be printable ASCII".into()).to_status())?;
                if v.is_empty() || v.len() > 128 {
                    return Err(Error::InvalidArgument("x-request-id must be 1 to 128 characters".into()).to_status());
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
                    .ok_or_else(|| Error::InvalidArgument("malformed grpc-timeout header".into()).to_status())?,
            ),
            None => None,
        };
        Ok((id, client.map_or(self.deadline, |c| c.min(self.deadline))))
    }
}

/// The connection a request came on (set by tonic from [`crate::tls::Conn`]).
fn conn_info<T>(request: &Request<T>) -> Option<&crate::tls::ConnInfo> {
    request.extensions().get::<crate::tls::ConnInfo>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: usize) -> RecordBatch {
        let schema = Arc::new(arrow_schema::Schema::new(vec![arrow_schema::Field::new(
            "x",
            arrow_schema::DataType::Int64,
            false,
        )]));
        RecordBatch::try_new(schema, vec![Arc::new(arrow::array::Int64Array::from(vec![0; n]))]).unwrap()
    }

    #[tokio::test]
    async fn a_stream_must_hold_exactly_the_planned_rows() {
        let run = |sizes: Vec<usize>, planned: u64| async move {
            let s = stream::iter(sizes.into_iter().map(|n| Ok(batch(n)))).boxed();
            checked(s, planned).collect::<Vec<_>>().await
        };
        let ok = run(vec![2, 3], 5).await;
        assert!(ok.len() == 2 && ok.iter().all(|r| r.is_ok()));
        let short = run(vec![2], 5).await;
        assert!(short[1]
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("ended after 2 of 5"));
        let long = run(vec![4, 4], 5).await;
        assert!(long[1].as_ref().unwrap_err().to_string().contains("more rows"));
        assert_eq!(long.len(), 2);
    }

    /// Whatever the bytes, a ticket that does not decode is a status a client can act on:
    /// INVALID_ARGUMENT (or UNIMPLEMENTED for a Flight SQL command this server does not serve),
    /// with a message (the decoders themselves are fuzzed in `proto/tests/fuzz.rs`).
    #[tokio::test]
    async fn undecodable_tickets_are_clear_statuses() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let seeds: [&[u8]; 4] = [
            b"{\"cutout\": {\"dataset\": ",
            b"{\"alerts\": ",
            b"\x0a\x20type.googleapis.com/x",
            b"",
        ];
        for i in 0..4000 {
            let mut bytes = seeds[i % seeds.len()].to_vec();
            for _ in 0..(next() % 64) {
                bytes.push((next() % 256) as u8);
            }
            if let Err(e) = decode(&bytes).await {
                let st = e.to_status();
                assert!(
                    matches!(st.code(), tonic::Code::InvalidArgument | tonic::Code::Unimplemented),
                    "{:?} for {bytes:?}",
                    st.code()
                );
                assert!(!st.message().is_empty());
            }
        }
    }
}
