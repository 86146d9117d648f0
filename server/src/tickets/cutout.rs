//! Cutout tickets: `{"cutout": {...}}`, the stamps of alerts named by id ([`super::stamps`]
//! plans and reads them; this kind is their [`Planned`] face: schema, rows, one endpoint).

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow_schema::SchemaRef;
use futures::stream::BoxStream;

use astroflight_proto::CutoutRequest;

use super::stamps::{check_request, execute, CutoutPlan};
pub use super::stamps::{cutout_schema, plan};
use crate::error::Result;
use crate::lake::Lake;
use crate::storage::IoStats;
use crate::tickets::Planned;

impl Planned for CutoutPlan {
    fn dataset(&self) -> &str {
        &self.dataset.name
    }
    fn schema(&self) -> SchemaRef {
        cutout_schema(self.dataset.kind, self.format)
    }
    fn rows(&self) -> Option<u64> {
        Some((self.targets.len() * self.kinds.len()) as u64)
    }
    fn alerts(&self) -> usize {
        self.targets.len()
    }
    fn estimated_bytes(&self) -> u64 {
        self.estimated_bytes
    }
    fn endpoint_tickets(&self) -> Vec<Vec<u8>> {
        vec![self.command.clone()]
    }
    fn execute(self: Arc<Self>, io: Arc<IoStats>) -> BoxStream<'static, Result<RecordBatch>> {
        execute(self, io)
    }
}

/// The result schema of a request (checks the dataset and its survey; reads nothing).
pub fn schema(lake: &Lake, req: &CutoutRequest) -> Result<SchemaRef> {
    let ds = check_request(lake, req)?;
    Ok(cutout_schema(ds.kind, req.format))
}
