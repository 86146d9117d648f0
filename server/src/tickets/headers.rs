//! Header tables: `{"headers": {...}}`.
//!
//! Two sources, one table shape ([`crate::fits_lake::table`]):
//!
//! - **A FITS dataset's header catalog.** Files under `prefix`, one row per HDU, key columns
//!   typed from the catalog, `where` evaluated by the alert conditions' engine (DataFusion) on
//!   the table's columns and on header keys (a key named in `where` need not be in `keys`).
//!   GetFlightInfo splits the catalog into endpoints of about `fits.endpoint_hdus` HDUs, each a
//!   range of paths: any replica with the same catalog answers it.
//!
//!   ```text
//!   catalog (sled, by path) ─ pass 1 (plan): key types, HDU count, endpoint cuts
//!                           ─ pass 2 (stream, blocking thread): records ─> rows ─> where ─> batch
//!                              ─> channel of 2 batches (backpressure) ─> the client
//!   ```
//!
//! - **Alert stamps** (an alert dataset and ids, as in cutout tickets): the stamps are read
//!   through the cutout path (FITS bytes), and their headers parsed, every HDU of each stamp;
//!   the id columns and the stamp `kind` follow the base columns. Key columns are typed from the
//!   stamps of the first alert (stamps of a survey share one header layout).
//!
//! Key columns are typed when the plan is made; a value met later that does not fit its column
//! (the catalog changed between GetFlightInfo and DoGet) fails the stream with a message saying
//! to plan again, rather than being dropped.

use std::collections::BTreeSet;
use std::ops::ControlFlow;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow_schema::{Field, Schema, SchemaRef};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::sql::sqlparser::ast::{visit_expressions, Expr as SqlExpr};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use futures::stream::{BoxStream, StreamExt};
use serde_json::json;

use crate::storage::FileVersion;
use astroflight_fits::header::scan_reader;
use astroflight_proto::{CutoutRequest, HeadersPartRequest, HeadersRequest, StampFormat, StampKind};

use crate::error::{quoted, Error, Result};
use crate::expr::evaluate_condition;
use crate::fits_lake::catalog;
use crate::fits_lake::file_headers::FileHeaders;
use crate::fits_lake::table::{self, KeyTypes, RowsBuilder, BASE_COLUMNS};
use crate::lake::{FitsDataset, Lake};
use crate::storage::IoStats;
use crate::tickets::stamps::{self, CutoutPlan};
use crate::tickets::{check_limits, Planned};

/// HDUs per output batch.
const BATCH_HDUS: usize = 256;

/// The names a `where` reads that are not base columns: header keys, to be added as columns.
pub fn condition_keys(sql: &str) -> Result<Vec<String>> {
    if sql.trim().is_empty() {
        return Ok(Vec::new());
    }
    let expr = Parser::new(&GenericDialect {})
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_expr())
        .map_err(|e| Error::InvalidArgument(format!("where {}: {e}", quoted(sql))))?;
    let mut names = BTreeSet::new();
    let _ = visit_expressions(&expr, |e| {
        match e {
            SqlExpr::Identifier(i) => {
                names.insert(i.value.clone());
            }
            SqlExpr::CompoundIdentifier(parts) => {
                names.insert(parts.iter().map(|p| p.value.as_str()).collect::<Vec<_>>().join("."));
            }
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
    Ok(names
        .into_iter()
        .filter(|n| !BASE_COLUMNS.contains(&n.as_str()))
        .collect())
}

/// The columns of alert stamp tables between the base and the key columns.
const STAMP_COLUMNS: [&str; 5] = ["objectId", "candid", "diaSourceId", "diaObjectId", "kind"];

/// The keys a query types: those asked (the output's key columns), then those only `where`
/// reads.
fn all_keys(req: &HeadersRequest) -> Result<(Vec<String>, usize)> {
    let mut keys = req.query.keys.clone();
    let shown = keys.len();
    for k in condition_keys(&req.query.r#where)? {
        let stamp_column = req.selector.is_some() && STAMP_COLUMNS.contains(&k.as_str());
        if !keys.contains(&k) && !stamp_column {
            keys.push(k);
        }
    }
    Ok((keys, shown))
}

/// A header table from a FITS dataset's catalog.
pub struct CatalogPlan {
    ds: Arc<FitsDataset>,
    request: HeadersRequest,
    /// Base columns, key columns, then the keys only `where` reads.
    full_schema: SchemaRef,
    /// What the client gets: base and key columns.
    schema: SchemaRef,
    /// The compiled `where`, if any.
    condition: Option<Condition>,
    /// The paths this plan streams: `[start, end)` under the prefix.
    start: String,
    end: Option<String>,
    /// Endpoint cuts (GetFlightInfo): the first path of each endpoint after the first.
    cuts: Vec<String>,
    files: u64,
    hdus: u64,
    record_bytes: u64,
    /// A single endpoint from its ticket (its own ticket is the command).
    command: Option<Vec<u8>>,
}

impl Planned for CatalogPlan {
    fn bulk(&self) -> bool {
        true
    }
    fn dataset(&self) -> &str {
        &self.ds.name
    }
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
    fn rows(&self) -> Option<u64> {
        // The catalog may be refreshed between planning and streaming: never promised.
        None
    }
    fn estimated_rows(&self) -> i64 {
        if self.command.is_some() {
            -1
        } else {
            self.hdus as i64
        }
    }
    fn alerts(&self) -> usize {
        0
    }
    fn estimated_bytes(&self) -> u64 {
        self.record_bytes * 2
    }
    fn limited(&self) -> bool {
        false
    }
    fn endpoint_tickets(&self) -> Vec<Vec<u8>> {
        if let Some(c) = &self.command {
            return vec![c.clone()];
        }
        let schema = super::encode_schema(&self.full_schema).unwrap_or_default();
        let mut starts = vec![self.start.clone()];
        starts.extend(self.cuts.iter().cloned());
        let count = starts.len() as u32;
        (0..starts.len())
            .map(|i| {
                HeadersPartRequest {
                    request: self.request.clone(),
                    start: starts[i].clone(),
                    end: starts.get(i + 1).cloned().unwrap_or_default(),
                    index: i as u32,
                    count,
                    schema: schema.clone(),
                }
                .encode()
            })
            .collect()
    }
    fn app_metadata(&self) -> Option<serde_json::Value> {
        Some(json!({
            "files": self.files,
            "hdus": self.hdus,
            "records_are_upper_bound": !self.request.query.r#where.trim().is_empty(),
            "endpoints": self.cuts.len() + 1,
            "catalog_pending": self.ds.build.first_build_pending(),
        }))
    }
    fn execute(self: Arc<Self>, io: Arc<IoStats>) -> BoxStream<'static, Result<RecordBatch>> {
        match Condition::for_request(&self.condition, &io) {
            Ok(cond) => execute_catalog(self, cond),
            Err(e) => futures::stream::iter([Err(e)]).boxed(),
        }
    }
}

/// Plan a headers query (a FITS dataset's catalog, or alert stamps).
pub async fn plan(lake: &Arc<Lake>, req: HeadersRequest, command: &[u8], for_info: bool) -> Result<Arc<dyn Planned>> {
    if req.selector.is_some() {
        if lake.is_fits(&req.query.dataset) {
            return Err(Error::InvalidArgument(format!(
                "dataset {} holds FITS files: its header table is selected by `prefix` and `where`, not by alert ids",
                quoted(&req.query.dataset)
            )));
        }
        return Ok(Arc::new(plan_stamps(lake, req, command).await?));
    }
    let ds = lake.fits_dataset(&req.query.dataset)?.clone();
    let (keys, shown) = all_keys(&req)?;
    let (prefix, endpoint_hdus) = (req.query.prefix.clone(), lake.fits_config.endpoint_hdus);
    let store = ds.catalog.clone();
    let pass = {
        let keys = keys.clone();
        tokio::task::spawn_blocking(move || -> Result<_> {
            let mut types = KeyTypes::new(&keys);
            let (mut files, mut hdus, mut bytes, mut since_cut) = (0u64, 0u64, 0u64, 0u64);
            let mut cuts = Vec::new();
            for entry in store.range(&prefix, "", None) {
                let (path, record) = entry?;
                let f = catalog::decode(&path, &record)?;
                let rows = f.hdus.len() as u64 + f.error.is_some() as u64;
                if since_cut > 0 && since_cut + rows > endpoint_hdus {
                    cuts.push(path.clone());
                    since_cut = 0;
                }
                since_cut += rows;
                types.add(&f);
                files += 1;
                hdus += rows;
                bytes += record.len() as u64;
            }
            Ok((types, files, hdus, bytes, cuts))
        })
    };
    let (types, files, hdus, record_bytes, cuts) = pass.await??;
    let full_schema = table::schema(types.fields(&keys));
    let schema = project_schema(&full_schema, BASE_COLUMNS.len() + shown);
    let condition = condition(lake, &req, &full_schema)?;
    let plan = CatalogPlan {
        ds,
        request: req,
        full_schema,
        schema,
        condition,
        start: String::new(),
        end: None,
        cuts: if for_info { cuts } else { Vec::new() },
        files,
        hdus,
        record_bytes,
        command: None,
    };
    Ok(Arc::new(plan))
}

/// One endpoint of a planned catalog query, from its ticket.
pub fn plan_part(lake: &Arc<Lake>, part: HeadersPartRequest, command: &[u8]) -> Result<CatalogPlan> {
    let ds = lake.fits_dataset(&part.request.query.dataset)?.clone();
    let full_schema = super::decode_schema(&part.schema)?;
    let shown = BASE_COLUMNS.len() + part.request.query.keys.len();
    if full_schema.fields().len() < shown || full_schema.fields().len() > shown + astroflight_proto::headers::MAX_KEYS {
        return Err(Error::InvalidArgument(
            "the endpoint ticket's schema does not match its query: plan the query again".into(),
        ));
    }
    table::RowsBuilder::new(full_schema.clone())?;
    let condition = condition(lake, &part.request, &full_schema)?;
    let plan = CatalogPlan {
        ds,
        schema: project_schema(&full_schema, shown),
        condition,
        full_schema,
        request: part.request,
        start: part.start,
        end: (!part.end.is_empty()).then_some(part.end),
        cuts: Vec::new(),
        files: 0,
        hdus: 0,
        record_bytes: 0,
        command: Some(command.to_vec()),
    };
    Ok(plan)
}

fn project_schema(full: &Schema, n: usize) -> SchemaRef {
    Arc::new(Schema::new(full.fields().iter().take(n).cloned().collect::<Vec<_>>()))
}

/// A `where`, compiled when planned (its errors are the client's: INVALID_ARGUMENT naming the
/// problem), and again for the request that streams it, so that what its functions build
/// counts against that request's memory.
struct Condition {
    engine: crate::expr::Engine,
    expr: datafusion::logical_expr::Expr,
    schema: SchemaRef,
}

impl Condition {
    fn for_request(c: &Option<Condition>, io: &IoStats) -> Result<Option<Arc<dyn PhysicalExpr>>> {
        c.as_ref()
            .map(|c| c.engine.compile(&c.expr, &c.schema, "where", io.memory()))
            .transpose()
    }
}

/// The `where`, if any, checked: it compiles on the schema and is a condition.
fn condition(lake: &Lake, req: &HeadersRequest, schema: &SchemaRef) -> Result<Option<Condition>> {
    let sql = req.query.r#where.trim();
    if sql.is_empty() {
        return Ok(None);
    }
    let expr = lake.engine.parse(sql, schema, "where")?;
    lake.engine.compile_condition(&expr, schema, "where")?;
    Ok(Some(Condition {
        engine: lake.engine.clone(),
        expr,
        schema: schema.clone(),
    }))
}

/// Filter a batch by the condition and keep the first `keep` columns.
fn finish_batch(batch: RecordBatch, cond: &Option<Arc<dyn PhysicalExpr>>, keep: usize) -> Result<RecordBatch> {
    let batch = match cond {
        Some(c) => {
            let mask = evaluate_condition(c, &batch, "where")?;
            arrow::compute::filter_record_batch(&batch, &mask).map_err(|e| Error::Internal(e.to_string()))?
        }
        None => batch,
    };
    let cols: Vec<usize> = (0..keep).collect();
    batch.project(&cols).map_err(|e| Error::Internal(e.to_string()))
}

fn execute_catalog(
    plan: Arc<CatalogPlan>,
    cond: Option<Arc<dyn PhysicalExpr>>,
) -> BoxStream<'static, Result<RecordBatch>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<RecordBatch>>(2);
    tokio::task::spawn_blocking(move || {
        let run = || -> Result<()> {
            let cond = &cond;
            let keep = plan.schema.fields().len();
            let mut rows = RowsBuilder::new(plan.full_schema.clone())?;
            let entries = plan
                .ds
                .catalog
                .range(&plan.request.query.prefix, &plan.start, plan.end.as_deref());
            for entry in entries {
                if tx.is_closed() {
                    return Ok(()); // the client went away, or its deadline passed
                }
                let (path, record) = entry?;
                let f = catalog::decode(&path, &record)?;
                rows.add_file(&f)?;
                if rows.rows() >= BATCH_HDUS {
                    let b = finish_batch(rows.finish()?, cond, keep)?;
                    if b.num_rows() > 0 && tx.blocking_send(Ok(b)).is_err() {
                        return Ok(()); // the client went away
                    }
                }
            }
            let b = finish_batch(rows.finish()?, cond, keep)?;
            if b.num_rows() > 0 {
                let _ = tx.blocking_send(Ok(b));
            }
            Ok(())
        };
        if let Err(e) = run() {
            let _ = tx.blocking_send(Err(e));
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
}

// ---- alert stamps -------------------------------------------------------------------------

/// The header table of the stamps of alerts named by id.
pub struct StampsPlan {
    cutouts: Arc<CutoutPlan>,
    request: HeadersRequest,
    /// Base columns, id columns and `kind`, key columns, then the keys only `where` reads.
    full_schema: SchemaRef,
    schema: SchemaRef,
    /// The header part's schema (base and every key column), for the rows builder.
    rows_schema: SchemaRef,
    condition: Option<Condition>,
}

impl Planned for StampsPlan {
    fn dataset(&self) -> &str {
        &self.cutouts.dataset.name
    }
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
    fn rows(&self) -> Option<u64> {
        None
    }
    fn estimated_rows(&self) -> i64 {
        self.cutouts.rows().map_or(-1, |r| r as i64)
    }
    fn alerts(&self) -> usize {
        self.cutouts.alerts()
    }
    fn estimated_bytes(&self) -> u64 {
        // Headers are a small part of a stamp (about 8 KiB of 30 to 60 KiB).
        self.cutouts.estimated_bytes() / 4
    }
    fn endpoint_tickets(&self) -> Vec<Vec<u8>> {
        vec![self.request.encode()]
    }
    fn execute(self: Arc<Self>, io: Arc<IoStats>) -> BoxStream<'static, Result<RecordBatch>> {
        let cond = match Condition::for_request(&self.condition, &io) {
            Ok(c) => c,
            Err(e) => return futures::stream::iter([Err(e)]).boxed(),
        };
        let stamps = self.cutouts.clone().execute(io);
        stamps
            .map(move |b| {
                let plan = self.clone();
                b.and_then(|b| stamp_batch(&plan, &b, &cond))
            })
            .filter(|b| futures::future::ready(!matches!(b, Ok(b) if b.num_rows() == 0)))
            .boxed()
    }
}

async fn plan_stamps(lake: &Arc<Lake>, req: HeadersRequest, command: &[u8]) -> Result<StampsPlan> {
    let selector = req.selector.clone().expect("a stamp query");
    let cut = CutoutRequest {
        dataset: req.query.dataset.clone(),
        selector,
        kind: StampKind::All,
        format: StampFormat::Fits,
        hdu: 0,
    };
    let cutouts = Arc::new(stamps::plan(lake, cut, command).await?);
    check_limits(cutouts.as_ref(), &lake.limits)?;
    let (keys, shown) = all_keys(&req)?;
    // Key types from the stamps of the first alert.
    let mut types = KeyTypes::new(&keys);
    if !keys.is_empty() {
        if let Some(first) = cutouts.targets.first() {
            let one = Arc::new(CutoutPlan {
                lake: cutouts.lake.clone(),
                dataset: cutouts.dataset.clone(),
                kinds: cutouts.kinds,
                format: cutouts.format,
                hdu: 0,
                targets: vec![first.clone()],
                estimated_bytes: 0,
                command: Vec::new(),
            });
            let mut s = one.execute(Arc::new(IoStats::default()));
            while let Some(b) = s.next().await {
                for f in stamp_files(&b?)? {
                    types.add(&f.1);
                }
            }
        }
    }
    let rows_schema = table::schema(types.fields(&keys));
    let cut_schema = cutouts.schema();
    // Base columns, then the cutout's id columns and `kind`, then the key columns.
    let mut fields: Vec<Field> = rows_schema
        .fields()
        .iter()
        .take(BASE_COLUMNS.len())
        .map(|f| f.as_ref().clone())
        .collect();
    fields.extend(cut_schema.fields().iter().take(3).map(|f| f.as_ref().clone()));
    fields.extend(
        rows_schema
            .fields()
            .iter()
            .skip(BASE_COLUMNS.len())
            .map(|f| f.as_ref().clone()),
    );
    let full_schema = Arc::new(Schema::new(fields));
    let schema = project_schema(&full_schema, BASE_COLUMNS.len() + 3 + shown);
    let condition = condition(lake, &req, &full_schema)?;
    Ok(StampsPlan {
        cutouts,
        request: req,
        full_schema,
        schema,
        rows_schema,
        condition,
    })
}

/// The stamps of a cutout batch as parsed files: (row of the batch, headers). A stamp that is
/// null in the lake has no rows; one that is not valid FITS has an error row.
fn stamp_files(b: &RecordBatch) -> Result<Vec<(usize, FileHeaders)>> {
    let id = b.column(0);
    let kind = b.column(2).as_string::<i32>();
    let stamp = b.column(3).as_binary::<i32>();
    let id_text = |i: usize| -> String {
        match id.data_type() {
            arrow_schema::DataType::Utf8 => id.as_string::<i32>().value(i).to_string(),
            _ => id.as_primitive::<arrow::datatypes::Int64Type>().value(i).to_string(),
        }
    };
    let second = b.column(1).as_primitive::<arrow::datatypes::Int64Type>();
    let mut out = Vec::new();
    for i in 0..b.num_rows() {
        if stamp.is_null(i) {
            continue;
        }
        let bytes = stamp.value(i);
        let (hdus, error) = scan_reader(bytes);
        // ZTF: objectId/candid/kind; Rubin: diaSourceId/kind.
        let path = match id.data_type() {
            arrow_schema::DataType::Utf8 => format!("{}/{}/{}", id_text(i), second.value(i), kind.value(i)),
            _ => format!("{}/{}", id_text(i), kind.value(i)),
        };
        out.push((
            i,
            FileHeaders {
                path,
                version: FileVersion {
                    size: bytes.len() as u64,
                    e_tag: None,
                    last_modified_ms: 0,
                },
                gzip: false,
                hdus,
                error: error.map(|e| e.to_string()),
            },
        ));
    }
    Ok(out)
}

/// A cutout batch into header rows (id columns repeated per HDU), filtered.
fn stamp_batch(plan: &StampsPlan, b: &RecordBatch, cond: &Option<Arc<dyn PhysicalExpr>>) -> Result<RecordBatch> {
    let mut rows = RowsBuilder::new(plan.rows_schema.clone())?;
    let mut take: Vec<u32> = Vec::new();
    for (i, f) in stamp_files(b)? {
        let before = rows.rows();
        rows.add_file(&f)?;
        take.extend(std::iter::repeat_n(i as u32, rows.rows() - before));
    }
    let headers = rows.finish()?;
    let idx = arrow::array::UInt32Array::from(take);
    let ids: Vec<ArrayRef> = (0..3)
        .map(|c| arrow::compute::take(b.column(c), &idx, None).map_err(|e| Error::Internal(e.to_string())))
        .collect::<Result<_>>()?;
    let mut cols: Vec<ArrayRef> = headers.columns()[..BASE_COLUMNS.len()].to_vec();
    cols.extend(ids);
    cols.extend(headers.columns()[BASE_COLUMNS.len()..].iter().cloned());
    let batch = RecordBatch::try_new(plan.full_schema.clone(), cols).map_err(|e| Error::Internal(e.to_string()))?;
    finish_batch(batch, cond, plan.schema.fields().len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn condition_keys_are_the_names_that_are_not_columns() {
        let k = condition_keys("EXPTIME > 100 AND FILTER = 'F606W' AND \"DATE-OBS\" >= '2020' AND naxis = 2").unwrap();
        assert_eq!(k, vec!["DATE-OBS", "EXPTIME", "FILTER"]);
        assert!(condition_keys("").unwrap().is_empty());
        assert!(condition_keys("EXPTIME >").unwrap_err().to_string().contains("where"));
    }
}
