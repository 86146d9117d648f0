//! astroflight as a DataFusion table (feature `datafusion`): a Flight SQL query of the server,
//! read with one DataFusion partition per endpoint, so that a local engine joins the lake with its
//! own tables and pulls the endpoints in parallel.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use astroflight_client::datafusion::FlightSqlTable;
//! let ctx = datafusion::prelude::SessionContext::new();
//! let ztf = FlightSqlTable::try_new("grpc://127.0.0.1:8815", "SELECT objectId, candid FROM ztf").await?;
//! ctx.register_table("ztf", Arc::new(ztf))?;
//! let df = ctx.sql("SELECT count(*) FROM ztf").await?;
//! # Ok(()) }
//! ```
//!
//! Projections are pushed to the server (the query becomes `SELECT <columns> FROM (<query>)`);
//! filters are applied by the local engine. Each scan plans the query again (GetFlightInfo), so
//! the endpoints are always those of the current lake.

use std::fmt;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow_flight::error::FlightError;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::{FlightEndpoint, FlightInfo};
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::datasource::{TableProvider, TableType};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, SendableRecordBatchStream,
};
use futures::StreamExt;

use crate::channel;

fn external(e: impl std::error::Error + Send + Sync + 'static) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// Plan `sql` on the server at `url`.
async fn plan(url: &str, sql: &str) -> DfResult<FlightInfo> {
    let mut client = FlightSqlServiceClient::new(channel(url).await.map_err(external)?);
    client.execute(sql.to_string(), None).await.map_err(external)
}

/// A Flight SQL query of an astroflight server as a table.
#[derive(Debug, Clone)]
pub struct FlightSqlTable {
    url: String,
    sql: String,
    schema: SchemaRef,
}

impl FlightSqlTable {
    /// The table of `sql` on the server at `url` (`grpc://host:port`); its schema comes from
    /// GetFlightInfo.
    pub async fn try_new(url: &str, sql: &str) -> DfResult<Self> {
        let info = plan(url, sql).await?;
        let schema = Arc::new(info.try_decode_schema().map_err(external)?);
        Ok(FlightSqlTable {
            url: url.to_string(),
            sql: sql.to_string(),
            schema,
        })
    }
}

/// A quoted SQL identifier.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[async_trait]
impl TableProvider for FlightSqlTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let (sql, schema) = match projection {
            Some(cols) => {
                let schema = Arc::new(self.schema.project(cols)?);
                let list: Vec<String> = schema.fields().iter().map(|f| quote(f.name())).collect();
                let list = if list.is_empty() {
                    "1 AS one".to_string()
                } else {
                    list.join(", ")
                };
                (
                    format!("SELECT {list} FROM ({}) AS astroflight_query", self.sql),
                    schema,
                )
            }
            None => (self.sql.clone(), self.schema.clone()),
        };
        let info = plan(&self.url, &sql).await?;
        Ok(Arc::new(FlightSqlExec::new(self.url.clone(), info.endpoint, schema)))
    }
}

/// One partition per endpoint of a planned Flight SQL query.
#[derive(Debug)]
pub struct FlightSqlExec {
    url: String,
    endpoints: Vec<FlightEndpoint>,
    properties: Arc<PlanProperties>,
}

impl FlightSqlExec {
    fn new(url: String, endpoints: Vec<FlightEndpoint>, schema: SchemaRef) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(endpoints.len().max(1)),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        FlightSqlExec {
            url,
            endpoints,
            properties: Arc::new(properties),
        }
    }
}

impl DisplayAs for FlightSqlExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "FlightSqlExec: {} endpoints of {}", self.endpoints.len(), self.url)
    }
}

impl ExecutionPlan for FlightSqlExec {
    fn name(&self) -> &str {
        "FlightSqlExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> DfResult<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            Err(DataFusionError::Internal("FlightSqlExec has no children".into()))
        }
    }

    fn execute(&self, partition: usize, _context: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        let schema = self.schema();
        let Some(endpoint) = self.endpoints.get(partition).cloned() else {
            // A query of no endpoint has one empty partition.
            return Ok(Box::pin(RecordBatchStreamAdapter::new(
                schema,
                futures::stream::empty(),
            )));
        };
        // The endpoint's locations in the server's order (it rotates them per endpoint, so the
        // partitions spread round robin over the replicas), or the server that planned it.
        let urls: Vec<String> = crate::endpoint_locations(endpoint.location.iter().map(|l| l.uri.as_str()), &self.url)
            .into_iter()
            .map(String::from)
            .collect();
        let ticket = endpoint
            .ticket
            .ok_or_else(|| DataFusionError::Execution("an endpoint without a ticket".into()))?;
        // A task pulls the endpoint, moving on to the next location when one fails; a bounded
        // channel keeps the backpressure of a direct stream.
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tokio::spawn(pull_with_failover(urls, ticket, tx));
        let batches = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, batches.boxed())))
    }
}

/// True when an error is the location's (down, unreachable, the connection lost), not the
/// query's: another replica may answer.
fn location_failed(e: &FlightError) -> bool {
    match e {
        // Connecting failed.
        FlightError::ExternalError(_) => true,
        FlightError::Tonic(s) => matches!(
            s.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal | tonic::Code::Cancelled
        ),
        _ => false,
    }
}

/// Send one endpoint's batches on `tx`, from the first location that answers. A location that
/// fails, before or during its stream, is left for the next, which streams the endpoint again
/// from the start: the rows already sent are skipped (an endpoint's ticket gives the same rows
/// in the same order on every replica), so each row is sent once. The last failure ends the
/// stream when every location failed.
async fn pull_with_failover(
    urls: Vec<String>,
    ticket: arrow_flight::Ticket,
    tx: tokio::sync::mpsc::Sender<DfResult<arrow::array::RecordBatch>>,
) {
    let mut sent = 0usize;
    let mut last = None;
    for url in &urls {
        let mut skip = sent;
        let attempt = async {
            let ch = channel(url)
                .await
                .map_err(|e| FlightError::ExternalError(Box::new(e)))?;
            let mut client = FlightSqlServiceClient::new(ch);
            let mut stream = client.do_get(ticket.clone()).await?;
            while let Some(b) = stream.next().await {
                let mut b = b?;
                if skip >= b.num_rows() {
                    skip -= b.num_rows();
                    continue;
                }
                if skip > 0 {
                    b = b.slice(skip, b.num_rows() - skip);
                    skip = 0;
                }
                sent += b.num_rows();
                if tx.send(Ok(b)).await.is_err() {
                    return Ok(()); // the consumer went away
                }
            }
            Ok::<(), FlightError>(())
        };
        match attempt.await {
            Ok(()) => return,
            Err(e) if location_failed(&e) => last = Some(e),
            Err(e) => {
                let _ = tx.send(Err(external(e))).await;
                return;
            }
        }
    }
    if let Some(e) = last {
        let _ = tx.send(Err(external(e))).await;
    }
}
