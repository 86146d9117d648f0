//! Ticket kinds. Each kind is one room: its result schema, its plan (which may produce several
//! endpoints) and its execution, behind the small [`Planned`] interface that the Flight edge
//! (`crate::service`) dispatches to with one match. The edge applies what every kind shares
//! (request id, deadline, limits, stats, error mapping, and the check that a stream holds
//! exactly the rows its plan promised); a kind never sees gRPC.
//!
//! Kinds: [`cutout`], [`alerts`] (alert batches), [`headers`] (header tables of FITS
//! datasets and of alert stamps) and [`section`] (sub-images of FITS images). Flight SQL has its own service (`crate::sql`).

pub mod alerts;
pub mod cutout;
pub mod headers;
pub mod section;
pub mod stamps;

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow_schema::{Schema, SchemaRef};
use futures::stream::BoxStream;

use astroflight_proto::Command;

use crate::config::Limits;
use crate::error::{Error, Result};
use crate::lake::Lake;
use crate::storage::IoStats;

/// A planned ticket: everything resolved, nothing read yet.
pub trait Planned: Send + Sync {
    /// The dataset the plan reads.
    fn dataset(&self) -> &str;
    /// The result schema.
    fn schema(&self) -> SchemaRef;
    /// Exactly how many rows the stream will hold, when the plan knows; the edge checks it.
    fn rows(&self) -> Option<u64>;
    /// FlightInfo's `total_records`: exact when known, else the plan's estimate (-1: none).
    fn estimated_rows(&self) -> i64 {
        self.rows().map_or(-1, |r| r as i64)
    }
    /// How many alerts the plan reads.
    fn alerts(&self) -> usize;
    /// What the result is estimated to weigh, in bytes.
    fn estimated_bytes(&self) -> u64;
    /// The tickets of the plan's endpoints: each self-contained, so that any replica can serve
    /// it. A kind that answers in one stream returns its own command.
    fn endpoint_tickets(&self) -> Vec<Vec<u8>>;
    /// Whether `max_ticket_alerts` and `max_ticket_bytes` apply (kinds that resolve ids and
    /// answer in one stream); bulk kinds stream in bounded endpoints instead.
    fn limited(&self) -> bool {
        true
    }
    /// JSON for FlightInfo's `app_metadata` (how the figures were obtained).
    fn app_metadata(&self) -> Option<serde_json::Value> {
        None
    }
    /// Bulk work (alert batches, header tables): it runs, and is encoded, on the bulk runtime,
    /// at a lower priority than point reads.
    fn bulk(&self) -> bool {
        false
    }
    /// Arrow IPC buffer compression of the stream, when the client asked for it.
    fn compression(&self) -> Option<arrow::ipc::CompressionType> {
        None
    }
    /// Stream the result. Nothing is read until the stream is polled.
    fn execute(self: Arc<Self>, io: Arc<IoStats>) -> BoxStream<'static, Result<RecordBatch>>;
}

/// Plan a decoded command (the one dispatch over kinds), then check the plan against the
/// limits, whatever its kind. May block on index lookups: large plans run on the blocking pool,
/// small ones inline.
/// `for_info`: the plan answers GetFlightInfo (a kind may then do more work up front, such as
/// counting rows exactly or splitting into endpoints); otherwise it is streamed by DoGet.
/// What planning reads counts into `io` (the request's I/O and memory).
pub async fn plan(
    lake: &Arc<Lake>,
    cmd: Command,
    encoded: &[u8],
    for_info: bool,
    io: &Arc<IoStats>,
) -> Result<Arc<dyn Planned>> {
    let plan: Arc<dyn Planned> = match cmd {
        Command::Cutout(req) => Arc::new(cutout::plan(lake, req, encoded).await?),
        Command::Alerts(req) => Arc::new(alerts::plan(lake, req, for_info, io).await?),
        Command::AlertsPart(part) => Arc::new(alerts::plan_part(lake, part, encoded)?),
        Command::Headers(req) => headers::plan(lake, req, encoded, for_info).await?,
        Command::HeadersPart(part) => Arc::new(headers::plan_part(lake, part, encoded)?),
        Command::Section(req) => Arc::new(section::plan(lake, req, encoded).await?),
    };
    if plan.limited() {
        check_limits(plan.as_ref(), &lake.limits)?;
    }
    Ok(plan)
}

/// RESOURCE_EXHAUSTED, naming the limit, for a plan that would cost more than the limits allow.
/// (A kind may also stop planning early once it knows it is past `max_alerts`, so that planning
/// itself stays cheap.)
pub fn check_limits(plan: &dyn Planned, limits: &Limits) -> Result<()> {
    if plan.alerts() > limits.max_ticket_alerts {
        return Err(too_many_alerts(plan.alerts(), limits.max_ticket_alerts));
    }
    if plan.estimated_bytes() > limits.max_ticket_bytes {
        return Err(Error::ResourceExhausted(format!(
            "the ticket would return about {} bytes; this server's limit is {} per ticket (max_ticket_bytes): ask for fewer alerts or stamp kinds",
            plan.estimated_bytes(),
            limits.max_ticket_bytes
        )));
    }
    Ok(())
}

/// The error of a ticket that resolves to more than `max` alerts (at least `n`).
pub fn too_many_alerts(n: usize, max: usize) -> Error {
    Error::ResourceExhausted(format!(
        "the ticket names at least {n} alerts; this server's limit is {max} per ticket (max_ticket_alerts): split it"
    ))
}

/// A schema as Arrow IPC bytes, as endpoint tickets carry it (so DoGet need not plan again).
pub fn encode_schema(schema: &Schema) -> Result<Vec<u8>> {
    let opts = arrow::ipc::writer::IpcWriteOptions::default();
    let data = arrow::ipc::writer::IpcDataGenerator::default().schema_to_bytes_with_dictionary_tracker(
        schema,
        &mut arrow::ipc::writer::DictionaryTracker::new(false),
        &opts,
    );
    let mut out = Vec::new();
    arrow::ipc::writer::write_message(&mut out, data, &opts).map_err(|e| Error::Internal(e.to_string()))?;
    Ok(out)
}

/// The schema an endpoint ticket carries.
pub fn decode_schema(bytes: &[u8]) -> Result<SchemaRef> {
    let bad = |e: String| Error::InvalidArgument(format!("the endpoint ticket's schema is not valid: {e}"));
    arrow::ipc::convert::try_schema_from_ipc_buffer(bytes)
        .map(Arc::new)
        .map_err(|e| bad(e.to_string()))
}

/// The result schema of a command (an alert query reads one footer for it).
pub async fn schema(lake: &Arc<Lake>, cmd: Command, encoded: &[u8]) -> Result<SchemaRef> {
    match cmd {
        Command::Cutout(req) => cutout::schema(lake, &req),
        Command::Alerts(req) => Ok(alerts::plan(lake, req, false, &lake.io).await?.schema()),
        Command::AlertsPart(part) => Ok(alerts::plan_part(lake, part, encoded)?.schema()),
        Command::Headers(req) => Ok(headers::plan(lake, req, encoded, false).await?.schema()),
        Command::HeadersPart(part) => Ok(headers::plan_part(lake, part, encoded)?.schema()),
        Command::Section(req) => {
            lake.fits_dataset(&req.ticket.dataset)?;
            Ok(section::section_schema())
        }
    }
}
