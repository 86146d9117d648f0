//! The server's error type. Every error knows its kind, and [`Error::to_status`] is the one
//! place where kinds become gRPC status codes. Errors of the parts below (tickets, the index,
//! storage, parquet, DataFusion) become kinds here too, so that the services never pick a code
//! themselves.

use astroflight_index::IndexError;
use astroflight_proto::TicketError;
use datafusion::error::DataFusionError;

/// The `store` named by the object_store error of a read refused for memory (its source is
/// the [`Error::ResourceExhausted`] saying why): storage sets it, [`Error::memory_refusal`]
/// recognises it. Here, below both, so that neither imports the other for it.
pub const MEMORY_STORE: &str = "astroflight memory";

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The request is malformed or names something that cannot exist (client's fault).
    #[error("{0}")]
    InvalidArgument(String),
    /// An id, dataset or file the request names is not there.
    #[error("{0}")]
    NotFound(String),
    /// Storage failed in a way a retry may fix.
    #[error("{0}")]
    Unavailable(String),
    /// Lake data is corrupt, missing or no longer matches the index.
    #[error("{0}")]
    DataLoss(String),
    /// The request would cost more than a configured limit allows (the message names it).
    #[error("{0}")]
    ResourceExhausted(String),
    /// A request this server recognizes but does not serve (yet).
    #[error("{0}")]
    Unimplemented(String),
    /// A bug or an unexpected failure of ours.
    #[error("{0}")]
    Internal(String),
    /// The caller is known but may not read what the request names.
    #[error("{0}")]
    PermissionDenied(String),
    /// The caller sent no credentials, or credentials that are not valid.
    #[error("{0}")]
    Unauthenticated(String),
    /// The request did not finish within its deadline.
    #[error("{0}")]
    DeadlineExceeded(String),
}

/// Longest status message sent to a client: messages quote input, and input can be large.
pub const MAX_MESSAGE_CHARS: usize = 1024;

/// `s` cut to `max` characters, with a marker saying how much was left out.
pub fn cut(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_string(),
        Some((at, _)) => format!("{}… ({} more bytes)", &s[..at], s.len() - at),
    }
}

/// Client input as quoted in a message: Debug-quoted and cut short (the proto crate's rule,
/// shared so that every message quotes input the same way).
pub use astroflight_proto::quoted;

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn to_status(&self) -> tonic::Status {
        let msg = cut(&self.to_string(), MAX_MESSAGE_CHARS);
        match self {
            Error::InvalidArgument(_) => tonic::Status::invalid_argument(msg),
            Error::NotFound(_) => tonic::Status::not_found(msg),
            Error::Unavailable(_) => tonic::Status::unavailable(msg),
            Error::DataLoss(_) => tonic::Status::data_loss(msg),
            Error::ResourceExhausted(_) => tonic::Status::resource_exhausted(msg),
            Error::Unimplemented(_) => tonic::Status::unimplemented(msg),
            Error::Internal(_) => tonic::Status::internal(msg),
            Error::PermissionDenied(_) => tonic::Status::permission_denied(msg),
            Error::Unauthenticated(_) => tonic::Status::unauthenticated(msg),
            Error::DeadlineExceeded(_) => tonic::Status::deadline_exceeded(msg),
        }
    }

    /// A read refused because the request's memory had no room for it (see
    /// `storage::CountingStore`), as the RESOURCE_EXHAUSTED it is.
    pub fn memory_refusal(e: &object_store::Error) -> Option<Error> {
        match e {
            object_store::Error::Generic { store, source } if *store == MEMORY_STORE => {
                Some(Error::ResourceExhausted(source.to_string()))
            }
            _ => None,
        }
    }

    /// Classify a storage error met while reading `what`.
    pub fn storage(what: &str, e: &object_store::Error) -> Error {
        if let Some(refused) = Error::memory_refusal(e) {
            return refused;
        }
        match e {
            object_store::Error::NotFound { .. } => Error::DataLoss(format!(
                "{what} is missing from storage (the index may be stale: re-run `astroflight index`): {e}"
            )),
            // A versioned read found another version (or a shorter file) than the index's.
            object_store::Error::Precondition { .. } => Error::DataLoss(format!(
                "{what} is not the version the index holds (re-run `astroflight index` or the `reindex` action): {e}"
            )),
            _ => Error::Unavailable(format!("storage error reading {what}: {e}")),
        }
    }

    /// Classify a parquet error met while reading `what`.
    pub fn parquet(what: &str, e: parquet::errors::ParquetError) -> Error {
        match e {
            parquet::errors::ParquetError::External(inner) => match inner.downcast::<object_store::Error>() {
                Ok(os) => Error::storage(what, &os),
                Err(other) => Error::DataLoss(format!("{what} cannot be read: {other}")),
            },
            other => Error::DataLoss(format!("{what} is not a readable parquet file: {other}")),
        }
    }
}

impl From<TicketError> for Error {
    fn from(e: TicketError) -> Self {
        match e {
            TicketError::FlightSql(_) => Error::Unimplemented(e.to_string()),
            _ => Error::InvalidArgument(e.to_string()),
        }
    }
}

impl From<IndexError> for Error {
    fn from(e: IndexError) -> Self {
        match e {
            IndexError::Storage { path, source } => Error::storage(&path, &source),
            IndexError::DatasetName(_) => Error::InvalidArgument(e.to_string()),
            // Transient: the server rebuilds the segment from the lake within seconds; a
            // client retries, as for storage that is briefly down.
            IndexError::BadSegment { .. } => Error::Unavailable(e.to_string()),
            other => Error::Internal(other.to_string()),
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        e.to_status()
    }
}

impl From<tokio::task::JoinError> for Error {
    fn from(e: tokio::task::JoinError) -> Self {
        Error::Internal(format!("worker task failed: {e}"))
    }
}

/// DataFusion's planning errors are the query's: INVALID_ARGUMENT with its message. Failures
/// while reading (a file gone, corrupt) are the server's; memory past the pool, a request's
/// share or a bound of the function guards is RESOURCE_EXHAUSTED; an overflow in Arrow (a value
/// past what its offsets hold) is the query's; our own errors (a changed file of an endpoint)
/// keep their kind.
impl From<DataFusionError> for Error {
    fn from(e: DataFusionError) -> Self {
        datafusion_error(e)
    }
}

fn datafusion_error(e: DataFusionError) -> Error {
    // Our own errors keep their kind and message: raised by a scan (a changed file of an
    // endpoint) or by a read through the lake's readers (a footer of another version).
    let root = e.find_root();
    let ours = match root {
        DataFusionError::External(inner) => inner.downcast_ref::<Error>(),
        DataFusionError::ParquetError(p) => match p.as_ref() {
            parquet::errors::ParquetError::External(inner) => inner.downcast_ref::<Error>(),
            _ => None,
        },
        _ => None,
    };
    if let Some(ours) = ours {
        return ours.clone();
    }
    let store_error = match root {
        DataFusionError::ParquetError(p) => match p.as_ref() {
            parquet::errors::ParquetError::External(inner) => inner.downcast_ref::<object_store::Error>(),
            _ => None,
        },
        DataFusionError::ObjectStore(os) => Some(os.as_ref()),
        _ => None,
    };
    if let Some(os) = store_error {
        // A read the request's memory had no room for.
        if let Some(refused) = Error::memory_refusal(os) {
            return refused;
        }
        // A versioned read found another version of its file (it was rewritten after the
        // listing or the planning of this endpoint).
        if let object_store::Error::Precondition { .. } = os {
            return Error::DataLoss(format!(
                "a file changed since this query was planned ({os}); run the query again"
            ));
        }
    }
    let msg = e.to_string();
    match root {
        DataFusionError::SQL(..)
        | DataFusionError::Plan(_)
        | DataFusionError::SchemaError(..)
        | DataFusionError::NotImplemented(_) => Error::InvalidArgument(msg),
        DataFusionError::ObjectStore(_) | DataFusionError::ParquetError(_) | DataFusionError::IoError(_) => {
            Error::DataLoss(msg)
        }
        DataFusionError::ResourcesExhausted(_) => Error::ResourceExhausted(msg),
        DataFusionError::ArrowError(a, _) if overflow(a) => Error::InvalidArgument(format!(
            "the query builds a value too large for Arrow (an offset or arithmetic overflow): {msg}"
        )),
        DataFusionError::Execution(_) | DataFusionError::ArrowError(..) => Error::InvalidArgument(msg),
        _ if msg.contains("overflow") => Error::InvalidArgument(msg),
        _ => Error::Internal(msg),
    }
}

/// An Arrow error that says a value or a sum outgrew its type.
fn overflow(e: &arrow::error::ArrowError) -> bool {
    use arrow::error::ArrowError;
    matches!(
        e,
        ArrowError::OffsetOverflowError(_) | ArrowError::ArithmeticOverflow(_)
    ) || e.to_string().to_lowercase().contains("overflow")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_cut() {
        assert_eq!(cut("abc", 5), "abc");
        assert_eq!(cut("abcdef", 3), "abc… (3 more bytes)");
        assert_eq!(cut("ééé", 1), "é… (4 more bytes)");
        let long = "x".repeat(10_000);
        let st = Error::InvalidArgument(format!("unknown dataset {long}")).to_status();
        assert!(st.message().len() < MAX_MESSAGE_CHARS + 64, "{}", st.message().len());
        assert!(quoted(&long).len() < 100);
    }

    #[test]
    fn planning_errors_are_the_clients() {
        let e = DataFusionError::Plan("table 'x' not found".into());
        assert_eq!(Error::from(e).to_status().code(), tonic::Code::InvalidArgument);
        let e = DataFusionError::ObjectStore(Box::new(object_store::Error::NotFound {
            path: "a".into(),
            source: "gone".into(),
        }));
        assert_eq!(Error::from(e).to_status().code(), tonic::Code::DataLoss);
    }
}
