//! The Flight edge that both the ticket service ([`crate::service`]) and the Flight SQL
//! service ([`crate::sql`]) stand on: Arrow batches as Flight data (sliced to the message size,
//! counted against the request's memory), endpoints with the advertised locations, the response
//! guard (deadline, `limits.max_response_bytes`, the request's record), the request record
//! itself with its stream slot, and the parsing of the request metadata (id, deadline).

pub mod record;
pub mod slots;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, RecordBatch};
use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::{FlightData, FlightEndpoint, Ticket};
use futures::stream::{self, StreamExt};
use tonic::Status;

use crate::config::Limits;
use crate::error::Error;
use crate::memory::Account;
use crate::storage::IoStats;
use record::RequestRecord;

/// A response stream of gRPC messages.
pub type Stream<T> = Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Put in a DoGet request's extensions by the ticket service when it hands a Flight SQL ticket
/// to the SQL service: the request's own I/O counters (its `stats` record).
#[derive(Clone)]
pub struct RequestIo(pub Arc<IoStats>);

/// Largest Flight message the encoder produces (batches are split to fit), below gRPC's
/// customary 4 MiB receive limit.
pub const MAX_FLIGHT_DATA_BYTES: usize = 2 << 20;

/// What the encoding of every response is held to: the request's memory account (a batch
/// counts while it is encoded and its messages sent) and the largest message.
pub struct Encoding {
    pub account: Option<Arc<Account>>,
    /// `limits.max_message_bytes`: a row that alone is larger cannot be sent.
    pub max_message_bytes: usize,
    /// Where the encoding (and, through it, the production of the batches) runs: the CPU
    /// runtime for point reads, the bulk runtime for bulk work; None: where the stream is
    /// polled (small answers).
    pub runtime: Option<tokio::runtime::Handle>,
}

/// Batches as Flight messages of at most [`MAX_FLIGHT_DATA_BYTES`], the schema first (also for
/// an empty stream); a failed batch ends the stream with its status. A batch counts against the
/// request's memory while it is encoded (RESOURCE_EXHAUSTED past its share or the budget), and a
/// message that cannot be split below `limits.max_message_bytes` (one row larger than that) is
/// RESOURCE_EXHAUSTED naming the limit.
pub fn flight_data(
    schema: arrow::datatypes::SchemaRef,
    options: IpcWriteOptions,
    batches: impl futures::Stream<Item = std::result::Result<RecordBatch, FlightError>> + Send + 'static,
    encoding: Encoding,
) -> impl futures::Stream<Item = Result<FlightData, Status>> + Send + 'static {
    let Encoding {
        account,
        max_message_bytes,
        runtime,
    } = encoding;
    // Messages of about 2 MiB, or half the largest message when that is smaller: only a row
    // that alone passes the limit cannot be sent. The batches are sliced to that size before
    // the encoder (see `counted`), which is told not to split again: it sizes a slice by the
    // whole buffers it shares with its batch, and would cut every slice of a large batch into
    // single rows.
    let target = MAX_FLIGHT_DATA_BYTES.min(max_message_bytes / 2).max(1);
    let encoded = FlightDataEncoderBuilder::new()
        .with_options(options)
        .with_schema(schema)
        .with_max_flight_data_size(usize::MAX)
        .build(counted(batches, account, max_message_bytes, target))
        .map(move |d| {
            let d = d.map_err(flight_status)?;
            let n = d.data_header.len() + d.data_body.len() + d.app_metadata.len();
            if n > max_message_bytes {
                return Err(message_too_large(n as u64, max_message_bytes));
            }
            Ok(d)
        })
        .boxed();
    match runtime {
        Some(rt) => crate::runtime::cpu::relay(&rt, encoded, |p| {
            Error::Internal(format!(
                "internal error while encoding the response: {}",
                panic_message(&p)
            ))
            .to_status()
        }),
        None => encoded,
    }
}

/// RESOURCE_EXHAUSTED for a row that alone is larger than a message.
fn message_too_large(bytes: u64, max: usize) -> Status {
    Error::ResourceExhausted(format!(
        "a row of the response takes {}, more than this server's limit of {} per message \
         (limits.max_message_bytes); select fewer or smaller columns",
        crate::memory::human(bytes),
        crate::memory::human(max as u64)
    ))
    .to_status()
}

/// What a panic said.
fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// An encoder's error as a status: ours keep their kind; Arrow's overflow (a batch too large
/// to encode) is RESOURCE_EXHAUSTED; anything else is a bug.
fn flight_status(e: FlightError) -> Status {
    match e {
        FlightError::Tonic(status) => *status,
        FlightError::Arrow(a) if a.to_string().to_lowercase().contains("overflow") => {
            Error::ResourceExhausted(format!("the response cannot be encoded: {a}")).to_status()
        }
        other => Error::Internal(other.to_string()).to_status(),
    }
}

/// Each batch claimed by the request's account (its buffers count until dropped), and handed to
/// the encoder in slices of about `target` bytes (the encoder encodes all of what it
/// is given at once: a batch that projects a wide column a hundred times would otherwise be
/// encoded whole, a hundred times its memory). A slice's encoded size is reserved until the
/// encoder asks for the next one (it asks only once the previous one's messages are all handed
/// to gRPC).
fn counted(
    batches: impl futures::Stream<Item = std::result::Result<RecordBatch, FlightError>> + Send + 'static,
    account: Option<Arc<Account>>,
    max_message_bytes: usize,
    target: usize,
) -> impl futures::Stream<Item = std::result::Result<RecordBatch, FlightError>> + Send + 'static {
    let slices = batches.flat_map(move |b| match b {
        Ok(b) => stream::iter(slices(b, target).into_iter().map(move |(s, bytes)| {
            // A row too large for one message is refused before it is encoded.
            if s.num_rows() == 1 && bytes > max_message_bytes as u64 {
                return Err(FlightError::Tonic(Box::new(message_too_large(
                    bytes,
                    max_message_bytes,
                ))));
            }
            Ok((s, bytes))
        }))
        .boxed(),
        Err(e) => stream::iter([Err(e)]).boxed(),
    });
    stream::unfold(
        (slices.boxed(), None::<crate::memory::Reservation>, account),
        |(mut slices, held, account)| async move {
            drop(held);
            let (b, bytes) = match slices.next().await? {
                Ok(s) => s,
                Err(e) => return Some((Err(e), (slices, None, account))),
            };
            let Some(a) = &account else {
                return Some((Ok(b), (slices, None, account)));
            };
            let what = "encoding the response";
            for c in b.columns() {
                c.claim(&a.arrow_pool());
            }
            let reserved = a.check(bytes, &what).and_then(|_| a.reserve(bytes, &what));
            match reserved {
                Ok(r) => Some((Ok(b), (slices, Some(r), account))),
                Err(e) => Some((
                    Err(FlightError::Tonic(Box::new(e.to_status()))),
                    (slices, None, account),
                )),
            }
        },
    )
}

/// A batch in row slices of about `target` bytes (one row at least), each with its estimated
/// encoded size.
fn slices(b: RecordBatch, target: usize) -> Vec<(RecordBatch, u64)> {
    let rows = b.num_rows();
    // What the rows hold (a batch may be a slice of larger arrays: their whole buffers would
    // overstate it).
    let bytes: u64 = b
        .columns()
        .iter()
        .map(|c| {
            c.to_data()
                .get_slice_memory_size()
                .unwrap_or_else(|_| c.get_array_memory_size()) as u64
        })
        .sum();
    let per_row = bytes / rows.max(1) as u64;
    let step = ((target as u64 / per_row.max(1)) as usize).clamp(1, rows.max(1));
    if step >= rows {
        return vec![(b, bytes)];
    }
    (0..rows)
        .step_by(step)
        .map(|at| {
            let n = step.min(rows - at);
            (b.slice(at, n), per_row * n as u64)
        })
        .collect()
}

/// Endpoint `i` of a plan, with the advertised addresses as its locations. Round robin:
/// endpoint i lists them starting at the i-th, so that clients taking the first location spread
/// over replicas.
pub fn endpoint(ticket: Vec<u8>, i: usize, advertise: &[String]) -> FlightEndpoint {
    let mut e = FlightEndpoint::new().with_ticket(Ticket::new(ticket));
    for k in 0..advertise.len() {
        e = e.with_location(advertise[(i + k) % advertise.len()].clone());
    }
    e
}

/// A response stream bounded by the deadline (a storage read that never returns ends the
/// request with DEADLINE_EXCEEDED instead of hanging the client), whose record logs what the
/// request read from storage once the stream ends (or the client goes).
/// `max_bytes` (limits.max_response_bytes, 0: none) bounds the Flight data sent: past it the
/// stream ends with RESOURCE_EXHAUSTED, never with a silently shortened answer.
pub fn guarded(
    encoded: impl futures::Stream<Item = Result<FlightData, Status>> + Send + Unpin + 'static,
    record: Arc<RequestRecord>,
    deadline_at: tokio::time::Instant,
    deadline: Duration,
    max_bytes: u64,
) -> Stream<FlightData> {
    let out = stream::unfold(
        (encoded, record, false, 0u64),
        move |(mut encoded, record, done, sent)| async move {
            if done {
                return None;
            }
            // Checked before each message too: a stream whose next message is always ready
            // would never let the timeout below see its deadline pass.
            if tokio::time::Instant::now() >= deadline_at {
                record.finish(code_name(tonic::Code::DeadlineExceeded));
                return Some((Err(deadline_status(deadline)), (encoded, record, true, sent)));
            }
            let mut item = match tokio::time::timeout_at(deadline_at, encoded.next()).await {
                Ok(Some(item)) => item,
                Ok(None) => {
                    record.finish("ok");
                    return None;
                }
                Err(_) => Err(deadline_status(deadline)),
            };
            let sent = match &item {
                Ok(d) => sent + (d.data_header.len() + d.data_body.len() + d.app_metadata.len()) as u64,
                Err(_) => sent,
            };
            if max_bytes > 0 && sent > max_bytes && item.is_ok() {
                item = Err(Error::ResourceExhausted(format!(
                    "the response passed this server's limit of {max_bytes} bytes per stream (limits.max_response_bytes); \
                     ask for less (fewer ids, columns or stamp kinds), or use the endpoints of GetFlightInfo"
                )).to_status());
            }
            let failed = item.is_err();
            if let Err(status) = &item {
                record.finish(code_name(status.code()));
            }
            Some((item, (encoded, record, failed, sent)))
        },
    );
    out.boxed()
}

/// A Flight SQL result held to `sql.max_rows` and `sql.max_bytes`: past either the stream ends
/// with RESOURCE_EXHAUSTED (the batches before it were sent; the status says the result is cut).
pub fn sql_capped(
    batches: impl futures::Stream<Item = Result<RecordBatch, Status>> + Send + 'static,
    limits: &Limits,
) -> impl futures::Stream<Item = Result<RecordBatch, Status>> + Send + 'static {
    let (max_rows, max_bytes) = (limits.sql_max_rows, limits.sql_max_bytes);
    let (mut rows, mut bytes) = (0u64, 0u64);
    let mut over = false;
    batches.map(move |b| {
        if over {
            return Err(Error::ResourceExhausted("the stream already passed a limit".into()).to_status());
        }
        let b = b?;
        rows += b.num_rows() as u64;
        bytes += b.get_array_memory_size() as u64;
        if max_rows > 0 && rows > max_rows {
            over = true;
            return Err(Error::ResourceExhausted(format!(
                "the result is cut: it has more than this server's sql.max_rows ({max_rows}) rows; narrow the query or \
                 add a LIMIT"
            ))
            .to_status());
        }
        if max_bytes > 0 && bytes > max_bytes {
            over = true;
            return Err(Error::ResourceExhausted(format!(
                "the result is cut: it is larger than this server's sql.max_bytes ({max_bytes} bytes); select fewer \
                 columns or rows"
            ))
            .to_status());
        }
        Ok(b)
    })
}

/// gRPC's `grpc-timeout`: up to 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
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

pub fn deadline_status(deadline: Duration) -> Status {
    Error::DeadlineExceeded(format!(
        "the request did not finish within its deadline of {:.1} s (the server's deadline_secs or the client's timeout)",
        deadline.as_secs_f64()
    )).to_status()
}

pub fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::NotFound => "NOT_FOUND",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::DataLoss => "DATA_LOSS",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        tonic::Code::Internal => "INTERNAL",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        tonic::Code::Cancelled => "CANCELLED",
        tonic::Code::PermissionDenied => "PERMISSION_DENIED",
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
        _ => "OTHER",
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
