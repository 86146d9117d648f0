//! Flight SQL over the lake: every dataset is a DataFusion table, queried through Flight SQL on
//! the same port as the JSON tickets.
//!
//! ```text
//!  GetFlightInfo(CommandStatementQuery | CommandPreparedStatementQuery)
//!    ─> DataFusion plans the SQL (`?` placeholders numbered, bound parameters substituted)
//!    ─> one table scanned with filters and projections only? split it: the files and row
//!       groups its scan reads (after partition pruning and the id index, see `table`) go into
//!       endpoints of about `sql.endpoint_bytes` stored bytes each
//!    ─> else one endpoint
//!  each endpoint: a TicketStatementQuery whose handle is a `SqlHandle` (SQL, parameters, the
//!  slice): self-contained, so any replica serving the same lake answers it
//!  DoGet ─> the same plan, restricted to the slice ─> limits ─> Flight data with backpressure
//! ```
//!
//! Served: `CommandStatementQuery`, prepared statements (create, bind parameters through DoPut,
//! execute, close; stateless handles), `CommandGetCatalogs`, `CommandGetDbSchemas`,
//! `CommandGetTables` (with schemas), `CommandGetTableTypes`, `CommandGetSqlInfo`,
//! `CommandGetXdbcTypeInfo`, and empty key listings. Everything else answers UNIMPLEMENTED
//! naming the command. `CancelFlightInfo` is a plain Flight action (see the service).
//!
//! Tables: one per dataset of parquet files (a `ListingTable` over the dataset's own object
//! store, so every backend works, wrapped in a [`table::LakeTable`] that uses the id index),
//! with the Hive partition columns `year`, `month`, `day` (int32) when the files sit in
//! `year=/month=/day=` folders. The catalog is `astroflight`, the schema `public`.

pub mod reader;
pub mod table;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::metadata::{
    SqlInfoData, SqlInfoDataBuilder, XdbcTypeInfo, XdbcTypeInfoData, XdbcTypeInfoDataBuilder,
};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult,
    Any, Command, CommandGetCatalogs, CommandGetCrossReference, CommandGetDbSchemas, CommandGetExportedKeys,
    CommandGetImportedKeys, CommandGetPrimaryKeys, CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables,
    CommandGetXdbcTypeInfo, CommandPreparedStatementQuery, CommandStatementQuery, DoPutPreparedStatementResult,
    Nullable, ProstMessageExt, Searchable, SqlInfo, TicketStatementQuery, XdbcDataType,
};
use arrow_flight::{
    FlightData, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, Ticket,
};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::ScalarValue;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::datasource::physical_plan::parquet::{ParquetAccessPlan, RowGroupAccess};
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::cache::cache_manager::CacheManagerConfig;
use datafusion::execution::context::{SQLOptions, SessionConfig, SessionContext};
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::object_store::DefaultObjectStoreRegistry;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_plan::{ExecutionPlan, StatisticsArgs, StatisticsContext};
use datafusion::prelude::DataFrame;
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use tokio::sync::Mutex;
use tonic::{Request, Response, Status, Streaming};

use astroflight_proto::sql::{SqlFile, SqlHandle, SqlPart};
use astroflight_proto::FLIGHT_SQL_TYPE_PREFIX;

use crate::auth::{caller_of, Caller, Security};
use crate::edge::{endpoint, flight_data, Encoding, RequestIo, Stream as ResponseStream};
use crate::error::Error;
use crate::expr::guard::{guard_registry, Guard, GuardRule};
use crate::lake::{Dataset, Lake};
use crate::storage::{IoStats, MountedStore};
use table::{LakeScanExec, LakeTable};

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

/// How long a listing of a table's files is reused (the endpoints of one query, pulled in
/// parallel, list once). New files appear after at most this long.
const LISTING_TTL: Duration = Duration::from_secs(5);

/// Rows per batch of Flight SQL queries (see `session`).
const SQL_BATCH_ROWS: usize = 1024;

/// Most parameter rows one DoPut may bind (a query runs with one set of parameters).
const MAX_PARAMETER_ROWS: usize = 1;

/// True when `bytes` (a command or ticket) is a Flight SQL message: a `google.protobuf.Any`
/// (it starts with field 1, byte 0x0A; JSON starts with `{`) whose type URL is Flight SQL's.
pub fn is_flight_sql(bytes: &[u8]) -> bool {
    bytes.first() == Some(&0x0A) && Any::decode(bytes).is_ok_and(|a| a.type_url.starts_with(FLIGHT_SQL_TYPE_PREFIX))
}

/// Cheap to clone (its parts are shared): a query is planned and run on the bulk runtime by a
/// clone of it.
#[derive(Clone)]
pub struct SqlService {
    lake: Arc<Lake>,
    security: Arc<Security>,
    /// Listing tables by dataset, built on first use (their schema is read from the files).
    tables: Arc<Mutex<HashMap<String, Arc<ListingTable>>>>,
    /// Shared by every query: the memory pool, spill files, and DataFusion's caches (parquet
    /// footers, file statistics, listings). Each query gets its own object stores (its I/O is
    /// counted into its own record).
    runtime: Arc<RuntimeEnv>,
    sql_info: Arc<SqlInfoData>,
    xdbc: Arc<XdbcTypeInfoData>,
}

impl SqlService {
    pub fn new(lake: Arc<Lake>, security: Arc<Security>) -> crate::error::Result<Self> {
        let caches = CacheManagerConfig::default().with_list_files_cache_ttl(Some(LISTING_TTL));
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(FairSpillPool::new(lake.memory_limits.sql_pool as usize)))
            .with_cache_manager(caches)
            .build_arc()
            .map_err(|e| crate::error::Error::Internal(format!("cannot set up the SQL engine: {e}")))?;
        Ok(SqlService {
            lake,
            security,
            tables: Arc::default(),
            runtime,
            sql_info: Arc::new(sql_info()),
            xdbc: Arc::new(xdbc_info()),
        })
    }

    /// The caller of a request (see [`crate::auth`]).
    fn caller<T>(&self, request: &Request<T>) -> Result<Arc<Caller>, Status> {
        Ok(caller_of(&self.security, request)?)
    }

    /// A session with every dataset the caller may read registered as a table (so catalogs and
    /// `information_schema` show only those); reads are counted into `io` (and the server's
    /// totals). `part`: this session serves one endpoint of a split scan.
    async fn session(
        &self,
        io: &Arc<IoStats>,
        part: Option<&SqlPart>,
        caller: &Caller,
    ) -> Result<SessionContext, Status> {
        let mut config = SessionConfig::new()
            .with_default_catalog_and_schema(CATALOG, SCHEMA)
            .with_create_default_catalog_and_schema(true)
            .with_information_schema(true);
        // As in alert conditions: identifiers are case-sensitive as written (`objectId`,
        // `diaSource.psfFlux`), not folded to lower case. Function names stay case-insensitive.
        config.options_mut().sql_parser.enable_ident_normalization = false;
        // Table statistics are not collected: merging the footers' statistics of every column
        // (an alert has hundreds of nested leaves) of every file costs tens of milliseconds per
        // query, more than a point query takes. Row groups and pages are still pruned by the
        // files' own statistics and page index when they are read, and the id index prunes
        // files and rows.
        config.options_mut().execution.collect_statistics = false;
        // Batches of 1,024 rows, not DataFusion's 8,192: an alert with its stamps is ~55 KB, so
        // 8,192 of them (a scan, a join's output) make a batch of ~450 MB; 1,024 keep one
        // batch near 56 MB, well inside a request's share of memory.
        config = config.with_batch_size(SQL_BATCH_ROWS);
        // The request's memory: DataFusion's operators reserve from the request's account (its
        // share, the process budget) and from the pool all queries share; the functions its
        // expressions call are guarded (expr::guard) and their outputs counted while they live.
        let account = io
            .memory()
            .cloned()
            .unwrap_or_else(|| self.lake.memory.account("query without a request"));
        let pool = Arc::new(crate::memory::RequestPool::new(
            self.runtime.memory_pool.clone(),
            account.clone(),
        ));
        let runtime = Arc::new(RuntimeEnv {
            memory_pool: pool,
            disk_manager: self.runtime.disk_manager.clone(),
            cache_manager: self.runtime.cache_manager.clone(),
            object_store_registry: Arc::new(DefaultObjectStoreRegistry::new()),
        });
        let guard = Guard::new(self.lake.engine.limits(), Some(account));
        let mut state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime)
            .with_default_features()
            .with_analyzer_rule(Arc::new(GuardRule(guard.clone())))
            .with_optimizer_rule(Arc::new(GuardRule(guard.clone())))
            .build();
        guard_registry(&mut state, &guard).map_err(internal)?;
        let ctx = SessionContext::new_with_state(state);
        for ds in self.lake.datasets().filter(|d| caller.may_read(&d.name)) {
            let store = MountedStore::new(self.lake.store_for(ds, io), &ds.name);
            ctx.register_object_store(&dataset_url(ds)?, Arc::new(store));
            if let Some(t) = self.listing_table(&ctx, ds).await? {
                let part = part.filter(|p| p.table == ds.name);
                let table = LakeTable::new(self.lake.clone(), ds.clone(), t, io.clone(), part);
                ctx.register_table(ds.name.as_str(), Arc::new(table))
                    .map_err(internal)?;
            }
        }
        if let Some(p) = part {
            caller.check(&p.table)?;
            if self.lake.dataset(&p.table).is_err() {
                return Err(Error::InvalidArgument(format!(
                    "the ticket names the table {:?}, which this server does not have",
                    p.table
                ))
                .to_status());
            }
        }
        Ok(ctx)
    }

    /// The listing table of a dataset, or None when it holds no parquet files (an avro lake).
    async fn listing_table(&self, ctx: &SessionContext, ds: &Dataset) -> Result<Option<Arc<ListingTable>>, Status> {
        let mut tables = self.tables.lock().await;
        if let Some(t) = tables.get(&ds.name) {
            return Ok(Some(t.clone()));
        }
        let table_url = ListingTableUrl::parse(format!("{}{}/", dataset_url(ds)?, ds.name)).map_err(internal)?;
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
        let t = Arc::new(ListingTable::try_new(config).map_err(internal)?);
        tables.insert(ds.name.clone(), t.clone());
        Ok(Some(t))
    }

    /// Plan a handle's query (read-only: no DDL, DML or SET); its errors are the client's. A
    /// query naming a dataset the caller may not read is PERMISSION_DENIED (not "table not
    /// found": the caller's session does not hold it).
    async fn plan(&self, ctx: &SessionContext, handle: &SqlHandle, caller: &Caller) -> Result<DataFrame, Status> {
        // The bound every handle is decoded with: a query that could not come back in its
        // tickets is refused before it is planned.
        if handle.sql.len() > astroflight_proto::sql::MAX_SQL_BYTES {
            return Err(Error::InvalidArgument(format!(
                "the query has {} bytes of SQL; at most {} are accepted (a long IN list is better a join, or a \
                 cutout ticket's ids)",
                handle.sql.len(),
                astroflight_proto::sql::MAX_SQL_BYTES
            ))
            .to_status());
        }
        crate::expr::check_shape(&handle.sql, "the query")?;
        let sql = number_placeholders(&handle.sql)?;
        // Parsed once, for the grant check and for the plan (what `sql_with_options` does, with
        // the check between).
        let state = ctx.state();
        let dialect = state.config().options().sql_parser.dialect;
        let statement = state.sql_to_statement(&sql, &dialect).map_err(Error::from)?;
        if !caller.reads_everything() {
            for t in state.resolve_table_references(&statement).map_err(Error::from)? {
                let ours = t.schema().is_none_or(|s| s == SCHEMA) && t.catalog().is_none_or(|c| c == CATALOG);
                if ours && (self.lake.dataset(t.table()).is_ok() || self.lake.is_fits(t.table())) {
                    caller.check(t.table())?;
                }
            }
        }
        let plan = state.statement_to_plan(statement).await.map_err(Error::from)?;
        SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false)
            .verify_plan(&plan)
            .map_err(Error::from)?;
        let mut df = ctx.execute_logical_plan(plan).await.map_err(Error::from)?;
        if !handle.parameters.is_empty() {
            let values = decode_parameters(&handle.parameters)?;
            df = df.with_param_values(values).map_err(Error::from)?;
        }
        Ok(df)
    }

    /// The FlightInfo of a query, planned on the bulk runtime (and cancelled with the call).
    async fn statement_info(
        &self,
        handle: SqlHandle,
        descriptor: FlightDescriptor,
        caller: Arc<Caller>,
    ) -> Result<FlightInfo, Status> {
        let this = self.clone();
        crate::runtime::on_runtime(&self.lake.bulk, async move {
            this.plan_info(handle, descriptor, &caller).await
        })
        .await
        .map_err(Status::from)?
    }

    /// The FlightInfo of a query: its schema, and one endpoint per slice of a split scan (or
    /// one for the whole query).
    async fn plan_info(
        &self,
        handle: SqlHandle,
        descriptor: FlightDescriptor,
        caller: &Caller,
    ) -> Result<FlightInfo, Status> {
        let io = Arc::new(IoStats::for_request(self.lake.memory.account("query (GetFlightInfo)")));
        let ctx = self.session(&io, None, caller).await?;
        let df = self.plan(&ctx, &handle, caller).await?;
        let schema = df.schema().as_arrow().clone();
        let split = splittable(df.logical_plan());
        let physical = df.create_physical_plan().await.map_err(Error::from)?;
        let stats = StatisticsContext::new()
            .compute(physical.as_ref(), &StatisticsArgs::new())
            .map_err(Error::from)?;
        let rows = stats
            .num_rows
            .get_value()
            .filter(|_| stats.num_rows.is_exact().unwrap_or(false));
        let bytes = stats
            .total_byte_size
            .get_value()
            .filter(|_| stats.total_byte_size.is_exact().unwrap_or(false));
        let (parts, rows) = match split {
            Some(split) => {
                let ds = self.lake.dataset(&split.table)?.clone();
                let (parts, read) = slices(&ds, &physical, self.lake.sql.endpoint_bytes);
                // Without a filter, the rows are those of the row groups read (from the catalog).
                let exact = read.filter(|_| !split.filtered).map(|n| n as usize);
                (parts, rows.copied().or(exact))
            }
            None => (Vec::new(), rows.copied()),
        };
        let rows = rows.as_ref();
        // sql.max_rows bounds each stream: a query of one endpoint known to pass it is refused
        // before anything is read.
        let max_rows = self.lake.sql.max_rows;
        if let (Some(&n), true) = (rows, parts.len() <= 1) {
            if max_rows > 0 && n as u64 > max_rows {
                return Err(Error::ResourceExhausted(format!(
                    "the query returns {n} rows, more than this server's sql.max_rows ({max_rows}) for one stream; \
                     narrow it or add a LIMIT"
                ))
                .to_status());
            }
        }
        let mut handles = Vec::new();
        if parts.is_empty() {
            handles.push(handle);
        } else {
            let count = parts.len() as u32;
            for (i, (table, files)) in parts.into_iter().enumerate() {
                handles.push(SqlHandle {
                    part: Some(SqlPart {
                        table,
                        files,
                        index: i as u32,
                        count,
                    }),
                    ..handle.clone()
                });
            }
        }
        let mut info = FlightInfo::new()
            .try_with_schema(&schema)
            .map_err(internal)?
            .with_descriptor(descriptor)
            .with_total_records(rows.map_or(-1, |&n| n as i64))
            .with_total_bytes(bytes.map_or(-1, |&n| n as i64));
        for (i, h) in handles.into_iter().enumerate() {
            let ticket = TicketStatementQuery {
                statement_handle: h.encode_to_vec().into(),
            };
            info = info.with_endpoint(endpoint(ticket.as_any().encode_to_vec(), i, &self.lake.advertise));
        }
        Ok(info)
    }

    /// Run a handle's query (one endpoint's slice, or all of it) and stream its result. The
    /// query is planned and executed on the bulk runtime; the stream stops (and its work with
    /// it) when the client goes or the deadline passes.
    async fn stream(
        &self,
        handle: SqlHandle,
        io: Arc<IoStats>,
        caller: Arc<Caller>,
    ) -> Result<Response<ResponseStream<FlightData>>, Status> {
        let this = self.clone();
        let io2 = io.clone();
        let df = crate::runtime::on_runtime(&self.lake.bulk, async move {
            let ctx = this.session(&io2, handle.part.as_ref(), &caller).await?;
            this.plan(&ctx, &handle, &caller).await
        })
        .await
        .map_err(Status::from)??;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let batches = crate::runtime::stream_on(&self.lake.bulk, async move {
            let s = df.execute_stream().await.map_err(Error::from)?;
            Ok(s.map_err(Error::from))
        });
        let batches = crate::edge::sql_capped(batches.map_err(|e| e.to_status()), &self.lake.limits)
            .map_err(|s| FlightError::Tonic(Box::new(s)));
        Ok(encode(schema, batches, &self.lake, io.memory().cloned()))
    }

    /// The FlightInfo of a metadata command: one endpoint whose ticket is the command itself.
    fn metadata_info(
        schema: SchemaRef,
        any: Any,
        descriptor: FlightDescriptor,
    ) -> Result<Response<FlightInfo>, Status> {
        let info = FlightInfo::new()
            .try_with_schema(&schema)
            .map_err(internal)?
            .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(any.encode_to_vec())))
            .with_descriptor(descriptor)
            .with_total_records(-1)
            .with_total_bytes(-1);
        Ok(Response::new(info))
    }

    /// A handle from a ticket or prepared statement; `what` names it in errors.
    fn handle(bytes: &[u8], what: &str) -> Result<SqlHandle, Status> {
        SqlHandle::decode_checked(bytes, what).map_err(Status::invalid_argument)
    }

    /// The handle of a DoGet ticket, and the I/O counters the service gave the request.
    fn do_get_parts(bytes: &[u8], request: &Request<Ticket>) -> Result<(SqlHandle, Arc<IoStats>), Status> {
        let handle = Self::handle(bytes, "the statement ticket")?;
        let io = request
            .extensions()
            .get::<RequestIo>()
            .map(|r| r.0.clone())
            .unwrap_or_default();
        Ok((handle, io))
    }
}

/// The object store URL of a dataset's table (a host name that any dataset name maps to: URL
/// hosts are case-folded). Its files are under the folder named after the dataset (see
/// [`MountedStore`]), so that no two datasets share a path in DataFusion's caches.
fn dataset_url(ds: &Dataset) -> Result<url::Url, Status> {
    url::Url::parse(&format!("astroflight-dataset-{}://lake/", ds.number)).map_err(internal)
}

/// A query that can be split: the table it scans, and whether rows are filtered (else every
/// row of the files read is a result row).
struct Split {
    table: String,
    filtered: bool,
}

/// The table a query scans when it can be split into endpoints: one table, under projections,
/// filters and aliases only. An aggregate, join, sort, limit, window, distinct, union or
/// subquery needs every row in one place: such a query is one endpoint.
fn splittable(plan: &LogicalPlan) -> Option<Split> {
    let mut node = plan;
    let mut filtered = false;
    loop {
        match node {
            LogicalPlan::Projection(p) => {
                if p.expr.iter().any(has_subquery) {
                    return None;
                }
                node = p.input.as_ref();
            }
            LogicalPlan::Filter(f) => {
                if has_subquery(&f.predicate) {
                    return None;
                }
                filtered = true;
                node = f.input.as_ref();
            }
            LogicalPlan::SubqueryAlias(a) => node = a.input.as_ref(),
            LogicalPlan::TableScan(scan) if scan.fetch.is_none() => {
                let name = scan.table_name.table().to_string();
                let in_catalog = scan.table_name.schema().is_none_or(|s| s == SCHEMA)
                    && scan.table_name.catalog().is_none_or(|c| c == CATALOG);
                return in_catalog.then_some(Split { table: name, filtered });
            }
            _ => return None,
        }
    }
}

fn has_subquery(e: &Expr) -> bool {
    e.exists(|e| {
        Ok(matches!(
            e,
            Expr::ScalarSubquery(_) | Expr::InSubquery(_) | Expr::Exists(_)
        ))
    })
    .unwrap_or(true)
}

/// One piece of a split scan: a file's row groups (or the whole file when the catalog does not
/// know its row groups) and the stored bytes they are estimated to read.
struct Unit {
    file: SqlFile,
    bytes: u64,
}

/// One endpoint of a split scan: the table and the files (row groups) it reads.
type Slice = (String, Vec<SqlFile>);

/// The slices of a split scan, each about `target` stored bytes: (table, files) per endpoint,
/// and the rows of the row groups read when the catalog knows them all (every file indexed at
/// its current version, no row selection). Empty when the scan reads no file (one endpoint then
/// answers the empty result).
fn slices(ds: &Arc<Dataset>, plan: &Arc<dyn ExecutionPlan>, target: u64) -> (Vec<Slice>, Option<u64>) {
    // The files the scan reads (a file split into byte ranges appears once).
    let mut files: BTreeMap<String, (object_store::ObjectMeta, Option<ParquetAccessPlan>)> = BTreeMap::new();
    let mut scans = 0;
    let mut catalog = None;
    let _ = plan.apply(|node| {
        if let Some(lake_scan) = node.downcast_ref::<LakeScanExec>() {
            catalog = Some(lake_scan.catalog().clone());
        }
        if let Some(config) = node
            .downcast_ref::<DataSourceExec>()
            .and_then(|d| d.data_source().downcast_ref::<FileScanConfig>())
        {
            scans += 1;
            for f in config.file_groups.iter().flat_map(|g| g.iter()) {
                files
                    .entry(f.object_meta.location.to_string())
                    .or_insert_with(|| (f.object_meta.clone(), f.extension::<ParquetAccessPlan>().cloned()));
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    // One file scan, under the lake table's node (which holds the catalog it planned with).
    let Some(entries) = catalog.filter(|_| scans == 1) else {
        return (Vec::new(), None);
    };

    let mut units = Vec::new();
    let mut rows_read = Some(0u64);
    for (location, (meta, access)) in files {
        let path = ds.relative_path(&location);
        let mut file = SqlFile {
            path: path.clone(),
            size: meta.size,
            e_tag: meta.e_tag.clone(),
            last_modified_ms: meta.last_modified.timestamp_millis(),
            row_groups: Vec::new(),
            row_group_count: 0,
        };
        let entry = entries
            .get(&path)
            .filter(|e| e.same_version(&meta) && !e.row_groups.is_empty());
        let Some(e) = entry else {
            rows_read = None;
            units.push(Unit { bytes: meta.size, file });
            continue;
        };
        file.row_group_count = e.row_groups.len() as u32;
        let total_rows = e.rows().max(1);
        // Stored bytes of each row group read, pro rata of its rows (and of the rows selected).
        let mut rgs: Vec<(u32, u64)> = Vec::new();
        for (g, &n) in e.row_groups.iter().enumerate() {
            let rg_bytes = meta.size.saturating_mul(n) / total_rows;
            let read = match access.as_ref().map(|a| &a.inner()[g]) {
                None | Some(RowGroupAccess::Scan) => {
                    rows_read = rows_read.map(|r| r + n);
                    rg_bytes
                }
                Some(RowGroupAccess::Skip) => continue,
                Some(RowGroupAccess::Selection(sel)) => {
                    rows_read = None;
                    (rg_bytes.saturating_mul(sel.row_count() as u64) / n.max(1)).max(1)
                }
            };
            rgs.push((g as u32, read));
        }
        let sum: u64 = rgs.iter().map(|r| r.1).sum();
        if sum > target && rgs.len() > 1 {
            for (g, b) in rgs {
                units.push(Unit {
                    file: SqlFile {
                        row_groups: vec![g],
                        ..file.clone()
                    },
                    bytes: b,
                });
            }
        } else if !rgs.is_empty() {
            file.row_groups = rgs.iter().map(|r| r.0).collect();
            units.push(Unit { file, bytes: sum });
        }
    }
    let mut parts: Vec<Slice> = Vec::new();
    let mut bytes = 0u64;
    for u in units {
        match parts.last_mut() {
            Some((_, files)) if bytes + u.bytes <= target || files.is_empty() => {
                bytes += u.bytes;
                // Row groups of one file next to each other in one part merge back.
                match files.last_mut() {
                    Some(last) if last.path == u.file.path && !last.row_groups.is_empty() => {
                        last.row_groups.extend(u.file.row_groups)
                    }
                    _ => files.push(u.file),
                }
            }
            _ => {
                bytes = u.bytes;
                parts.push((ds.name.clone(), vec![u.file]));
            }
        }
    }
    (parts, rows_read)
}

/// `?` placeholders (JDBC, ADBC) numbered `$1`, `$2`... in order, as DataFusion binds them;
/// `?` inside strings, quoted names and comments is left alone (the tokenizer tells).
fn number_placeholders(sql: &str) -> Result<String, Status> {
    if !sql.contains('?') {
        return Ok(sql.to_string());
    }
    let tokens = Tokenizer::new(&GenericDialect {}, sql)
        .tokenize_with_location()
        .map_err(|e| Error::InvalidArgument(format!("SQL error: {e}")).to_status())?;
    let spots: Vec<(u64, u64)> = tokens
        .iter()
        .filter(|t| matches!(&t.token, Token::Placeholder(p) if p == "?"))
        .map(|t| (t.span.start.line, t.span.start.column))
        .collect();
    let mut out = String::with_capacity(sql.len() + spots.len() * 2);
    let (mut line, mut column, mut next, mut n) = (1u64, 1u64, 0usize, 0usize);
    for ch in sql.chars() {
        if ch == '?' && spots.get(next) == Some(&(line, column)) {
            n += 1;
            next += 1;
            out.push_str(&format!("${n}"));
        } else {
            out.push(ch);
        }
        if ch == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    Ok(out)
}

/// The parameter values of a handle: one row of an Arrow IPC stream.
fn decode_parameters(bytes: &[u8]) -> Result<Vec<ScalarValue>, Status> {
    let bad = |e: String| Error::InvalidArgument(format!("the bound parameters cannot be read: {e}")).to_status();
    let reader =
        arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None).map_err(|e| bad(e.to_string()))?;
    let mut values = None;
    for batch in reader {
        let batch = batch.map_err(|e| bad(e.to_string()))?;
        if batch.num_rows() == 0 {
            continue;
        }
        if values.is_some() || batch.num_rows() > MAX_PARAMETER_ROWS {
            return Err(bad("a query runs with one row of parameters".into()));
        }
        values = Some(
            batch
                .columns()
                .iter()
                .map(|c| ScalarValue::try_from_array(c, 0))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(e.to_string()))?,
        );
    }
    values.ok_or_else(|| bad("no row of parameters was bound".into()))
}

/// One row of parameters as an Arrow IPC stream.
fn encode_parameters(batch: &RecordBatch) -> Result<Vec<u8>, Status> {
    let mut out = Vec::new();
    let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut out, &batch.schema()).map_err(internal)?;
    w.write(batch).map_err(internal)?;
    w.finish().map_err(internal)?;
    drop(w);
    Ok(out)
}

/// The parameter schema of a planned query: `$1`, `$2`... with their types where DataFusion
/// infers them (Null where it cannot).
fn parameter_schema(plan: &LogicalPlan) -> Result<Schema, Status> {
    let types = plan.get_parameter_types().map_err(Error::from)?;
    let mut named: Vec<(usize, String, DataType)> = types
        .into_iter()
        .map(|(name, t)| {
            let n = name.trim_start_matches('$').parse::<usize>().unwrap_or(usize::MAX);
            (n, name, t.unwrap_or(DataType::Null))
        })
        .collect();
    named.sort();
    Ok(Schema::new(
        named
            .into_iter()
            .map(|(_, name, t)| Field::new(name, t, true))
            .collect::<Vec<_>>(),
    ))
}

/// A query's batches as Flight data, counted against the request's account while encoded,
/// in messages no larger than `limits.max_message_bytes`.
fn encode(
    schema: SchemaRef,
    batches: impl Stream<Item = Result<RecordBatch, FlightError>> + Send + 'static,
    lake: &Lake,
    account: Option<Arc<crate::memory::Account>>,
) -> Response<ResponseStream<FlightData>> {
    let budget = Encoding {
        account,
        max_message_bytes: lake.limits.max_message_bytes,
        runtime: Some(lake.bulk.handle()),
    };
    Response::new(flight_data(schema, IpcWriteOptions::default(), batches, budget).boxed())
}

/// A metadata answer: one small batch (catalogs, tables, SQL info).
fn one_batch<E: std::fmt::Display>(
    batch: Result<RecordBatch, E>,
) -> Result<Response<ResponseStream<FlightData>>, Status> {
    let batch = batch.map_err(internal)?;
    let budget = Encoding {
        account: None,
        max_message_bytes: usize::MAX,
        runtime: None,
    };
    Ok(Response::new(
        flight_data(
            batch.schema(),
            IpcWriteOptions::default(),
            futures::stream::iter([Ok(batch)]),
            budget,
        )
        .boxed(),
    ))
}

fn internal(e: impl std::fmt::Display) -> Status {
    Error::Internal(e.to_string()).to_status()
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

/// The SQL types of the lake's columns, as JDBC's `DatabaseMetaData.getTypeInfo` lists them.
fn xdbc_info() -> XdbcTypeInfoData {
    let t = |name: &str, data_type: XdbcDataType, size: Option<i32>, prefix: Option<&str>, radix: Option<i32>| {
        XdbcTypeInfo {
            type_name: name.to_string(),
            data_type,
            column_size: size,
            literal_prefix: prefix.map(str::to_string),
            literal_suffix: prefix.map(str::to_string),
            create_params: None,
            nullable: Nullable::NullabilityNullable,
            case_sensitive: matches!(data_type, XdbcDataType::XdbcVarchar),
            searchable: Searchable::Full,
            unsigned_attribute: radix.map(|_| false),
            fixed_prec_scale: false,
            auto_increment: radix.map(|_| false),
            local_type_name: Some(name.to_string()),
            minimum_scale: None,
            maximum_scale: None,
            sql_data_type: data_type,
            datetime_subcode: None,
            num_prec_radix: radix,
            interval_precision: None,
        }
    };
    let mut b = XdbcTypeInfoDataBuilder::new();
    for info in [
        t("BOOLEAN", XdbcDataType::XdbcBit, Some(1), None, None),
        t("TINYINT", XdbcDataType::XdbcTinyint, Some(3), None, Some(10)),
        t("SMALLINT", XdbcDataType::XdbcSmallint, Some(5), None, Some(10)),
        t("INTEGER", XdbcDataType::XdbcInteger, Some(10), None, Some(10)),
        t("BIGINT", XdbcDataType::XdbcBigint, Some(19), None, Some(10)),
        t("REAL", XdbcDataType::XdbcReal, Some(7), None, Some(2)),
        t("DOUBLE", XdbcDataType::XdbcDouble, Some(15), None, Some(2)),
        t("VARCHAR", XdbcDataType::XdbcVarchar, Some(i32::MAX), Some("'"), None),
        t("BINARY", XdbcDataType::XdbcVarbinary, Some(i32::MAX), None, None),
        t("DATE", XdbcDataType::XdbcDate, Some(10), Some("'"), None),
        t("TIMESTAMP", XdbcDataType::XdbcTimestamp, Some(29), Some("'"), None),
    ] {
        b.append(info);
    }
    b.build().expect("static XdbcTypeInfo is valid")
}

#[tonic::async_trait]
impl FlightSqlService for SqlService {
    type FlightService = SqlService;

    async fn do_handshake(
        &self,
        _request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<ResponseStream<HandshakeResponse>>, Status> {
        // Not reached: the service answers Handshake itself (crate::auth) before Flight SQL.
        let out = futures::stream::iter([Ok(HandshakeResponse::default())]);
        Ok(Response::new(out.boxed()))
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let caller = self.caller(&request)?;
        let info = self
            .statement_info(SqlHandle::of_sql(query.query), request.into_inner(), caller)
            .await?;
        Ok(Response::new(info))
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let handle = Self::handle(&cmd.prepared_statement_handle, "the prepared statement handle")?;
        let caller = self.caller(&request)?;
        Ok(Response::new(
            self.statement_info(handle, request.into_inner(), caller).await?,
        ))
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
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let (handle, io) = Self::do_get_parts(&ticket.statement_handle, &request)?;
        let caller = self.caller(&request)?;
        self.stream(handle, io, caller).await
    }

    async fn do_get_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let (handle, io) = Self::do_get_parts(&cmd.prepared_statement_handle, &request)?;
        let caller = self.caller(&request)?;
        self.stream(handle, io, caller).await
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
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let caller = self.caller(&request)?;
        let ctx = self.session(&Arc::new(IoStats::default()), None, &caller).await?;
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
        request: Request<arrow_flight::Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        // Stateless: the handle carries the SQL itself, so any replica can execute it.
        let handle = SqlHandle::of_sql(query.query);
        let caller = self.caller(&request)?;
        // Planned on the bulk runtime, as every query is.
        let (this, planned) = (self.clone(), handle.clone());
        let (schema, parameters) = crate::runtime::on_runtime(&self.lake.bulk, async move {
            let io = Arc::new(IoStats::for_request(
                this.lake.memory.account("CreatePreparedStatement"),
            ));
            let ctx = this.session(&io, None, &caller).await?;
            let df = this.plan(&ctx, &planned, &caller).await?;
            Ok::<_, Status>((df.schema().as_arrow().clone(), parameter_schema(df.logical_plan())?))
        })
        .await
        .map_err(Status::from)??;
        let ipc = |s: &Schema| {
            arrow_flight::IpcMessage::try_from(arrow_flight::SchemaAsIpc::new(s, &IpcWriteOptions::default()))
                .map(|m| m.0)
                .map_err(internal)
        };
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle.encode_to_vec().into(),
            dataset_schema: ipc(&schema)?,
            parameter_schema: ipc(&parameters)?,
        })
    }

    async fn do_put_prepared_statement_query(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        // Parameters are bound by returning a new handle that carries them (stateless).
        let mut handle = Self::handle(&cmd.prepared_statement_handle, "the prepared statement handle")?;
        let mut batches =
            FlightRecordBatchStream::new_from_flight_data(request.into_inner().map_err(FlightError::from));
        let mut row: Option<RecordBatch> = None;
        // What is decoded counts against the call's memory (each message is at most
        // limits.max_message_bytes; the batches are kept until the row is found).
        let account = self.lake.memory.account("DoPut of parameters");
        let mut held = Vec::new();
        while let Some(batch) = batches.next().await {
            let batch = batch
                .map_err(|e| Error::InvalidArgument(format!("the bound parameters cannot be read: {e}")).to_status())?;
            held.push(
                account
                    .reserve(batch.get_array_memory_size() as u64, &"decoding the bound parameters")
                    .map_err(|e| e.to_status())?,
            );
            if batch.num_rows() == 0 {
                continue;
            }
            if row.is_some() || batch.num_rows() > MAX_PARAMETER_ROWS {
                return Err(Error::InvalidArgument(
                    "a query runs with one row of parameters; bind one row per execution".into(),
                )
                .to_status());
            }
            row = Some(batch);
        }
        handle.parameters = match row {
            Some(b) => encode_parameters(&b)?,
            None => Vec::new(),
        };
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(handle.encode_to_vec().into()),
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
    Error::Unimplemented(format!(
        "Flight SQL {name} is not supported by astroflight (a read-only lake: queries, prepared statements and \
         metadata)"
    ))
    .to_status()
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
}
