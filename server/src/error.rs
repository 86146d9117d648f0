//! The server's error type. Every error knows its kind, and [`Error::to_status`] is the one
//! place where kinds become gRPC status codes.

use astroflight_index::IndexError;
use astroflight_proto::TicketError;

#[derive(Debug, thiserror::Error)]
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
    /// A bug or an unexpected failure of ours.
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn to_status(&self) -> tonic::Status {
        let msg = self.to_string();
        match self {
            Error::InvalidArgument(_) => tonic::Status::invalid_argument(msg),
            Error::NotFound(_) => tonic::Status::not_found(msg),
            Error::Unavailable(_) => tonic::Status::unavailable(msg),
            Error::DataLoss(_) => tonic::Status::data_loss(msg),
            Error::Internal(_) => tonic::Status::internal(msg),
        }
    }

    /// Classify a storage error met while reading `what`.
    pub fn storage(what: &str, e: &object_store::Error) -> Error {
        match e {
            object_store::Error::NotFound { .. } => Error::DataLoss(format!(
                "{what} is missing from storage (the index may be stale: re-run `astroflight index`): {e}"
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
        Error::InvalidArgument(e.to_string())
    }
}

impl From<IndexError> for Error {
    fn from(e: IndexError) -> Self {
        match e {
            IndexError::Storage { path, source } => Error::storage(&path, &source),
            IndexError::DatasetName(_) => Error::InvalidArgument(e.to_string()),
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
