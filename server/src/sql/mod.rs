//! Flight SQL over the lake (issue 9, first part): every dataset is a DataFusion table, queried
//! through Flight SQL on the same port as the JSON tickets.
//!
//! What this part serves: `CommandStatementQuery` (planned by DataFusion, one endpoint whose
//! ticket carries the SQL, so any replica can serve it), prepared statements without
//! parameters (stateless handles: the handle is the SQL), `CommandGetCatalogs`,
//! `CommandGetDbSchemas`, `CommandGetTables` (with schemas), `CommandGetTableTypes`,
//! `CommandGetSqlInfo`, `CommandGetXdbcTypeInfo`, and empty key listings. Everything else
//! answers UNIMPLEMENTED naming the command. Not yet: endpoint splitting of scans, the id index
//! in the planner, parameters bound through DoPut, query limits (see the README's limits).
//!
//! Tables: one per dataset of parquet files (a `ListingTable` over the dataset's own object
//! store, so every backend works), with the Hive partition columns `year`, `month`, `day`
//! (int32) when the files sit in `year=/month=/day=` folders. The catalog is `astroflight`, the
//! schema `public`.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Schema, SchemaRef};
use arrow::ipc::writer::IpcWriteOptions;
use arrow::record_batch::RecordBatch;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder, XdbcTypeInfoData, XdbcTypeInfoDataBuilder};
use arrow_flight::sql::server::FlightSqlService;
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult,
    Any, Command, CommandGetCatalogs, CommandGetCrossReference, CommandGetDbSchemas, CommandGetExportedKeys,
    CommandGetImportedKeys, CommandGetPrimaryKeys, CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables,
    CommandGetXdbcTypeInfo, CommandPreparedStatementQuery, CommandStatementQuery, ProstMessageExt, SqlInfo,
    TicketStatementQuery,
};
use arrow_flight::{
    FlightData, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, Ticket,
};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::datasource::TableProvider;
use datafusion::error::DataFusionError;
use datafusion::execution::context::{SQLOptions, SessionConfig, SessionContext};
use datafusion::prelude::DataFrame;
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use tokio::sync::Mutex;
use tonic::{Request, Response, Status, Streaming};

use astroflight_proto::FLIGHT_SQL_TYPE_PREFIX;

use crate::lake::{Dataset, Lake};
use crate::service::{flight_data, Stream as ResponseStream};
use crate::storage::IoStats;

/// The catalog and schema every table lives in.
pub const CATALOG: &str = "astroflight";
pub const SCHEMA: &str = "public";

/// Action types of Flight SQL (the `do_action` dispatch).
pub const ACTIONS: &[&str] = &[
    "CreatePreparedStatement",
    "ClosePreparedStatement",
    "CreatePreparedSubstraitPlan",
    "BeginTransaction",
    "EndTransaction",
    "BeginSavepoint",
    "EndSavepoint",
    "CancelQuery",
];

/// True when `bytes` (a command or ticket) is a Flight SQL message: a `google.protobuf.Any`
/// (it starts with field 1, byte 0x0A; JSON starts with `{`) whose type URL is Flight SQL's.
pub fn is_flight_sql(bytes: &[u8]) -> bool {
    bytes.first() == Some(&0x0A) && Any::decode(bytes).is_ok_and(|a| a.type_url.starts_with(FLIGHT_SQL_TYPE_PREFIX))
}

pub struct SqlService {
    lake: Arc<Lake>,
    /// Table providers by dataset, built on first use (their schema is read from the files).
    tables: Mutex<HashMap<String, Arc<dyn TableProvider>>>,
    sql_info: SqlInfoData,
    xdbc: XdbcTypeInfoData,
}

impl SqlService {
    pub fn new(lake: Arc<Lake>) -> Self {
        SqlService {
            lake,
            tables: Mutex::default(),
            sql_info: sql_info(),
            xdbc: xdbc_info(),
        }
    }

    /// A session with every dataset registered as a table.
    async fn session(&self) -> Result<SessionContext, Status> {
        let mut config = SessionConfig::new()
            .with_default_catalog_and_schema(CATALOG, SCHEMA)
            .with_create_default_catalog_and_schema(true)
            .with_information_schema(true);
        // As in alert conditions: identifiers are case-sensitive as written (`objectId`,
        // `diaSource.psfFlux`), not folded to lower case. Function names stay case-insensitive.
        config.options_mut().sql_parser.enable_ident_normalization = false;
        let ctx = SessionContext::new_with_config(config);
        for ds in self.lake.datasets() {
            if let Some(t) = self.table(&ctx, ds).await? {
                ctx.register_table(ds.name.as_str(), t).map_err(internal)?;
            }
        }
        Ok(ctx)
    }

    /// The table of a dataset, or None when it holds no parquet files (an avro lake).
    async fn table(&self, ctx: &SessionContext, ds: &Dataset) -> Result<Option<Arc<dyn TableProvider>>, Status> {
        // A host name that any dataset name maps to (URL hosts are case-folded).
        let url = format!("astroflight-dataset-{}://lake/", ds.number);
        let parsed = url::Url::parse(&url).map_err(internal)?;
        ctx.register_object_store(&parsed, self.lake.store_for(ds, &Arc::new(IoStats::default())));
        let mut tables = self.tables.lock().await;
        if let Some(t) = tables.get(&ds.name) {
            return Ok(Some(t.clone()));
        }
        let table_url = ListingTableUrl::parse(&url).map_err(internal)?;
        let state = ctx.state();
        // Strings and binaries as the files type them (Utf8, Binary), not DataFusion's default
        // view types, which older JDBC / Arrow Java clients cannot read.
        let format = ParquetFormat::default().with_force_view_types(false);
        let mut options = ListingOptions::new(Arc::new(format)).with_file_extension(".parquet");
        let parts = options.infer_partitions(&state, &table_url).await.map_err(internal)?;
        let cols: Vec<(String, DataType)> = parts
            .into_iter()
            .map(|p| {
                let t = if matches!(p.as_str(), "year" | "month" | "day") {
                    DataType::Int32
                } else {
                    DataType::Utf8
                };
                (p, t)
            })
            .collect();
        options = options.with_table_partition_cols(cols);
        let schema = match options.infer_schema(&state, &table_url).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(dataset = ds.name.as_str(), "no SQL table: {e}");
                return Ok(None);
            }
        };
        let config = ListingTableConfig::new(table_url)
            .with_listing_options(options)
            .with_schema(schema);
        let t: Arc<dyn TableProvider> = Arc::new(ListingTable::try_new(config).map_err(internal)?);
        tables.insert(ds.name.clone(), t.clone());
        Ok(Some(t))
    }

    /// Plan a query (read-only: no DDL, DML or SET); its errors are the client's.
    async fn plan(&self, sql: &str) -> Result<DataFrame, Status> {
        let ctx = self.session().await?;
        let options = SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        ctx.sql_with_options(sql, options).await.map_err(query_error)
    }

    fn info(schema: &Schema, ticket: Vec<u8>, descriptor: FlightDescriptor) -> Result<FlightInfo, Status> {
        let endpoint = FlightEndpoint::new().with_ticket(Ticket { ticket: ticket.into() });
        Ok(FlightInfo::new()
            .try_with_schema(schema)
            .map_err(internal)?
            .with_endpoint(endpoint)
            .with_descriptor(descriptor)
            .with_total_records(-1)
            .with_total_bytes(-1))
    }

    /// The FlightInfo of a metadata command: its ticket is the command itself.
    fn metadata_info(
        schema: SchemaRef,
        any: Any,
        descriptor: FlightDescriptor,
    ) -> Result<Response<FlightInfo>, Status> {
        Ok(Response::new(Self::info(&schema, any.encode_to_vec(), descriptor)?))
    }

    async fn stream_query(&self, sql: &str) -> Result<Response<ResponseStream<FlightData>>, Status> {
        let df = self.plan(sql).await?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let batches = df.execute_stream().await.map_err(query_error)?;
        Ok(encode(
            schema,
            batches.map_err(|e| FlightError::Tonic(Box::new(query_error(e)))),
        ))
    }
}

fn encode(
    schema: SchemaRef,
    batches: impl Stream<Item = Result<RecordBatch, FlightError>> + Send + 'static,
) -> Response<ResponseStream<FlightData>> {
    Response::new(flight_data(schema, IpcWriteOptions::default(), batches).boxed())
}

fn one_batch<E: std::fmt::Display>(
    batch: Result<RecordBatch, E>,
) -> Result<Response<ResponseStream<FlightData>>, Status> {
    let batch = batch.map_err(internal)?;
    Ok(encode(batch.schema(), futures::stream::iter([Ok(batch)])))
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

/// DataFusion's planning errors are the query's: INVALID_ARGUMENT with its message. Failures
/// while reading (a file gone, corrupt) are the server's.
fn query_error(e: DataFusionError) -> Status {
    match e.find_root() {
        DataFusionError::SQL(..)
        | DataFusionError::Plan(_)
        | DataFusionError::SchemaError(..)
        | DataFusionError::NotImplemented(_) => Status::invalid_argument(e.to_string()),
        DataFusionError::ObjectStore(_) | DataFusionError::ParquetError(_) | DataFusionError::IoError(_) => {
            Status::data_loss(e.to_string())
        }
        DataFusionError::Execution(_) | DataFusionError::ArrowError(..) => Status::invalid_argument(e.to_string()),
        _ => Status::internal(e.to_string()),
    }
}

fn utf8(bytes: &[u8], what: &str) -> Result<String, Status> {
    String::from_utf8(bytes.to_vec()).map_err(|_| Status::invalid_argument(format!("{what} is not UTF-8 SQL")))
}

fn sql_info() -> SqlInfoData {
    let mut b = SqlInfoDataBuilder::new();
    b.append(SqlInfo::FlightSqlServerName, "astroflight");
    b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    b.append(SqlInfo::FlightSqlServerArrowVersion, "1.5");
    b.append(SqlInfo::FlightSqlServerReadOnly, true);
    b.append(SqlInfo::FlightSqlServerSql, true);
    b.append(SqlInfo::FlightSqlServerSubstrait, false);
    b.append(SqlInfo::FlightSqlServerTransaction, 0i32);
    b.append(SqlInfo::FlightSqlServerCancel, false);
    b.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    b.append(SqlInfo::SqlDdlCatalog, false);
    b.append(SqlInfo::SqlDdlSchema, false);
    b.append(SqlInfo::SqlDdlTable, false);
    b.build().expect("static SqlInfo is valid")
}

fn xdbc_info() -> XdbcTypeInfoData {
    // Filled in with the types JDBC asks for when the JDBC client lands (issue 9 item 5).
    XdbcTypeInfoDataBuilder::new()
        .build()
        .expect("empty XdbcTypeInfo is valid")
}

#[tonic::async_trait]
impl FlightSqlService for SqlService {
    type FlightService = SqlService;

    async fn do_handshake(
        &self,
        _request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<ResponseStream<HandshakeResponse>>, Status> {
        // The server is open (no [auth] yet): an empty handshake answers.
        let out = futures::stream::iter([Ok(HandshakeResponse::default())]);
        Ok(Response::new(out.boxed()))
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let df = self.plan(&query.query).await?;
        let schema = df.schema().as_arrow().clone();
        let ticket = TicketStatementQuery {
            statement_handle: query.query.into_bytes().into(),
        };
        let info = Self::info(&schema, ticket.as_any().encode_to_vec(), request.into_inner())?;
        Ok(Response::new(info))
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let sql = utf8(&cmd.prepared_statement_handle, "the prepared statement handle")?;
        let df = self.plan(&sql).await?;
        let schema = df.schema().as_arrow().clone();
        let info = Self::info(&schema, cmd.as_any().encode_to_vec(), request.into_inner())?;
        Ok(Response::new(info))
    }

    async fn get_flight_info_catalogs(
        &self,
        cmd: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Self::metadata_info(cmd.into_builder().schema(), cmd.as_any(), request.into_inner())
    }

    async fn get_flight_info_schemas(
        &self,
        cmd: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Self::metadata_info(cmd.clone().into_builder().schema(), cmd.as_any(), request.into_inner())
    }

    async fn get_flight_info_tables(
        &self,
        cmd: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Self::metadata_info(cmd.clone().into_builder().schema(), cmd.as_any(), request.into_inner())
    }

    async fn get_flight_info_table_types(
        &self,
        cmd: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Self::metadata_info(cmd.into_builder().schema(), cmd.as_any(), request.into_inner())
    }

    async fn get_flight_info_sql_info(
        &self,
        cmd: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Self::metadata_info(self.sql_info.schema(), cmd.as_any(), request.into_inner())
    }

    async fn get_flight_info_xdbc_type_info(
        &self,
        cmd: CommandGetXdbcTypeInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Self::metadata_info(self.xdbc.schema(), cmd.as_any(), request.into_inner())
    }

    async fn get_flight_info_primary_keys(
        &self,
        cmd: CommandGetPrimaryKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Self::metadata_info(keys_schema(), cmd.as_any(), request.into_inner())
    }

    async fn get_flight_info_exported_keys(
        &self,
        cmd: CommandGetExportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Self::metadata_info(keys_schema(), cmd.as_any(), request.into_inner())
    }

    async fn get_flight_info_imported_keys(
        &self,
        cmd: CommandGetImportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Self::metadata_info(keys_schema(), cmd.as_any(), request.into_inner())
    }

    async fn get_flight_info_cross_reference(
        &self,
        cmd: CommandGetCrossReference,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Self::metadata_info(keys_schema(), cmd.as_any(), request.into_inner())
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let sql = utf8(&ticket.statement_handle, "the statement ticket")?;
        self.stream_query(&sql).await
    }

    async fn do_get_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let sql = utf8(&cmd.prepared_statement_handle, "the prepared statement handle")?;
        self.stream_query(&sql).await
    }

    async fn do_get_catalogs(
        &self,
        cmd: CommandGetCatalogs,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut b = cmd.into_builder();
        b.append(CATALOG);
        one_batch(b.build())
    }

    async fn do_get_schemas(
        &self,
        cmd: CommandGetDbSchemas,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut b = cmd.into_builder();
        b.append(CATALOG, SCHEMA);
        one_batch(b.build())
    }

    async fn do_get_tables(
        &self,
        cmd: CommandGetTables,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let ctx = self.session().await?;
        let mut b = cmd.into_builder();
        let mut names: Vec<String> = ctx
            .catalog(CATALOG)
            .and_then(|c| c.schema(SCHEMA))
            .map(|s| s.table_names())
            .unwrap_or_default();
        names.sort();
        for name in names {
            let t = ctx.table_provider(name.as_str()).await.map_err(internal)?;
            b.append(CATALOG, SCHEMA, &name, "TABLE", &t.schema())
                .map_err(internal)?;
        }
        one_batch(b.build())
    }

    async fn do_get_table_types(
        &self,
        cmd: CommandGetTableTypes,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut b = cmd.into_builder();
        b.append("TABLE");
        one_batch(b.build())
    }

    async fn do_get_sql_info(
        &self,
        cmd: CommandGetSqlInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        one_batch(cmd.into_builder(&self.sql_info).build())
    }

    async fn do_get_xdbc_type_info(
        &self,
        cmd: CommandGetXdbcTypeInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        one_batch(cmd.into_builder(&self.xdbc).build())
    }

    async fn do_get_primary_keys(
        &self,
        _cmd: CommandGetPrimaryKeys,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        empty_keys()
    }

    async fn do_get_exported_keys(
        &self,
        _cmd: CommandGetExportedKeys,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        empty_keys()
    }

    async fn do_get_imported_keys(
        &self,
        _cmd: CommandGetImportedKeys,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        empty_keys()
    }

    async fn do_get_cross_reference(
        &self,
        _cmd: CommandGetCrossReference,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        empty_keys()
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        _request: Request<arrow_flight::Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        // Stateless: the handle is the SQL itself, so any replica can execute it.
        let df = self.plan(&query.query).await?;
        let schema = df.schema().as_arrow().clone();
        let dataset_schema =
            arrow_flight::IpcMessage::try_from(arrow_flight::SchemaAsIpc::new(&schema, &IpcWriteOptions::default()))
                .map_err(internal)?;
        let parameters = arrow_flight::IpcMessage::try_from(arrow_flight::SchemaAsIpc::new(
            &Schema::empty(),
            &IpcWriteOptions::default(),
        ))
        .map_err(internal)?;
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: query.query.into_bytes().into(),
            dataset_schema: dataset_schema.0,
            parameter_schema: parameters.0,
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        _query: ActionClosePreparedStatementRequest,
        _request: Request<arrow_flight::Action>,
    ) -> Result<(), Status> {
        // Nothing is held for a handle.
        Ok(())
    }

    async fn get_flight_info_fallback(
        &self,
        cmd: Command,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Err(unsupported(cmd.type_url()))
    }

    async fn do_get_fallback(
        &self,
        _request: Request<Ticket>,
        message: Any,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        Err(unsupported(&message.type_url))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

/// A Flight SQL command astroflight does not serve: UNIMPLEMENTED, naming it.
fn unsupported(type_url: &str) -> Status {
    let name = type_url.rsplit('.').next().unwrap_or(type_url);
    Status::unimplemented(format!(
        "Flight SQL {name} is not supported by astroflight (a read-only lake: queries, prepared statements and \
         metadata)"
    ))
}

/// An empty key listing: the lake's tables declare no keys.
fn empty_keys() -> Result<Response<ResponseStream<FlightData>>, Status> {
    one_batch(Ok::<_, Status>(RecordBatch::new_empty(keys_schema())))
}

/// The schema of the key listings (primary, exported, imported keys, cross reference), as the
/// Flight SQL specification gives it.
fn keys_schema() -> SchemaRef {
    use arrow::datatypes::Field;
    Arc::new(Schema::new(vec![
        Field::new("pk_catalog_name", DataType::Utf8, true),
        Field::new("pk_db_schema_name", DataType::Utf8, true),
        Field::new("pk_table_name", DataType::Utf8, false),
        Field::new("pk_column_name", DataType::Utf8, false),
        Field::new("fk_catalog_name", DataType::Utf8, true),
        Field::new("fk_db_schema_name", DataType::Utf8, true),
        Field::new("fk_table_name", DataType::Utf8, false),
        Field::new("fk_column_name", DataType::Utf8, false),
        Field::new("key_sequence", DataType::Int32, false),
        Field::new("fk_key_name", DataType::Utf8, true),
        Field::new("pk_key_name", DataType::Utf8, true),
        Field::new("update_rule", DataType::UInt8, false),
        Field::new("delete_rule", DataType::UInt8, false),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flight_sql_commands_are_told_from_ours() {
        let sql = CommandStatementQuery {
            query: "SELECT 1".into(),
            transaction_id: None,
        }
        .as_any()
        .encode_to_vec();
        assert!(is_flight_sql(&sql));
        assert!(!is_flight_sql(br#"{"alerts": {"dataset": "ztf"}}"#));
        assert!(!is_flight_sql(b""));
        let ours = Any {
            type_url: astroflight_proto::CUTOUT_TYPE_URL.into(),
            value: vec![].into(),
        };
        assert!(!is_flight_sql(&ours.encode_to_vec()));
        // An Any of another package is not Flight SQL.
        let other = Any {
            type_url: "type.googleapis.com/other.Message".into(),
            value: vec![1, 2].into(),
        };
        assert!(!is_flight_sql(&other.encode_to_vec()));
    }

    #[test]
    fn planning_errors_are_the_clients() {
        let e = DataFusionError::Plan("table 'x' not found".into());
        assert_eq!(query_error(e).code(), tonic::Code::InvalidArgument);
        let e = DataFusionError::ObjectStore(Box::new(object_store::Error::NotFound {
            path: "a".into(),
            source: "gone".into(),
        }));
        assert_eq!(query_error(e).code(), tonic::Code::DataLoss);
    }
}
