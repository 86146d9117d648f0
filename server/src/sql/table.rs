//! A dataset as a DataFusion table that knows the lake: its scans use the id index and can be
//! restricted to the slice of files one endpoint reads.
//!
//! ```text
//!  ListingTable scan (partition filters prune folders; statistics and page index prune later)
//!    ─> ids in the filters (objectId / candid = or IN; diaSource.diaSourceId, diaObjectId)?
//!         sled: every committed location of those ids ─> per file a ParquetAccessPlan that
//!         reads only the rows' row groups and pages; indexed files without a hit are dropped;
//!         files the index does not know (new, changed) are scanned as before
//!    ─> an endpoint's slice? only its files and row groups (each checked against the version
//!         it was planned with)
//!    ─> LakeScanExec (shows all of the above in EXPLAIN) over the DataSourceExec
//! ```
//!
//! The filters stay in the plan (they are `Inexact`), so the index only ever removes rows that
//! cannot match: results equal a full scan's.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DataFusionError, Result as DfResult, ScalarValue};
use datafusion::datasource::listing::{ListingTable, PartitionedFile};
use datafusion::datasource::physical_plan::parquet::{ParquetAccessPlan, RowGroupAccess};
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfig, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::filter_pushdown::{FilterDescription, FilterPushdownPhase};
use datafusion::physical_plan::projection::{make_with_child, ProjectionExec};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, SendableRecordBatchStream,
};
use parquet::arrow::arrow_reader::{RowSelection, RowSelector};

use crate::storage::FileVersion;
use astroflight_index::{FileEntry, IdKey, SurveyKind};
use astroflight_proto::sql::{SqlFile, SqlPart};

use crate::error::Error;
use crate::lake::{Dataset, Lake};
use crate::storage::IoStats;

use super::reader::LakeReaderFactory;

/// A column the index maps to rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdColumn {
    ObjectId,
    Candid,
    DiaSourceId,
    DiaObjectId,
}

impl IdColumn {
    pub fn name(self) -> &'static str {
        match self {
            IdColumn::ObjectId => "objectId",
            IdColumn::Candid => "candid",
            IdColumn::DiaSourceId => "diaSource.diaSourceId",
            IdColumn::DiaObjectId => "diaSource.diaObjectId",
        }
    }

    fn key(self, v: &ScalarValue) -> Option<IdKey> {
        match self {
            IdColumn::ObjectId => match v {
                ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)) | ScalarValue::Utf8View(Some(s)) => {
                    Some(IdKey::ObjectId(s.clone()))
                }
                _ => None,
            },
            _ => {
                let n = match v {
                    ScalarValue::Int64(Some(n)) => *n,
                    ScalarValue::Int32(Some(n)) => i64::from(*n),
                    ScalarValue::Int16(Some(n)) => i64::from(*n),
                    ScalarValue::Int8(Some(n)) => i64::from(*n),
                    ScalarValue::UInt32(Some(n)) => i64::from(*n),
                    ScalarValue::UInt64(Some(n)) => i64::try_from(*n).ok()?,
                    _ => return None,
                };
                Some(match self {
                    IdColumn::Candid => IdKey::Candid(n),
                    IdColumn::DiaSourceId => IdKey::DiaSourceId(n),
                    _ => IdKey::DiaObjectId(n),
                })
            }
        }
    }
}

/// One condition the index can answer: the rows whose `column` is one of `ids`.
#[derive(Debug, Clone, PartialEq)]
pub struct IdCondition {
    pub column: IdColumn,
    pub ids: BTreeSet<IdKey>,
}

/// The id column an expression names, for a dataset of `kind`.
fn id_column(kind: SurveyKind, e: &Expr) -> Option<IdColumn> {
    match (kind, e) {
        (SurveyKind::Ztf, Expr::Column(c)) if c.name == "objectId" => Some(IdColumn::ObjectId),
        (SurveyKind::Ztf, Expr::Column(c)) if c.name == "candid" => Some(IdColumn::Candid),
        (SurveyKind::Lsst, Expr::ScalarFunction(f)) if f.name() == "get_field" && f.args.len() == 2 => {
            match (&f.args[0], &f.args[1]) {
                (Expr::Column(c), Expr::Literal(ScalarValue::Utf8(Some(field)), _)) if c.name == "diaSource" => {
                    match field.as_str() {
                        "diaSourceId" => Some(IdColumn::DiaSourceId),
                        "diaObjectId" => Some(IdColumn::DiaObjectId),
                        _ => None,
                    }
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// The ids one conjunct of a filter names: `col = lit`, `col IN (lits)`, or an OR of those on
/// one column. None when the conjunct is anything else (it is then left to the scan).
fn conjunct_ids(kind: SurveyKind, e: &Expr) -> Option<IdCondition> {
    match e {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) if *op == Operator::Eq => {
            let (col, lit) = match (left.as_ref(), right.as_ref()) {
                (c, Expr::Literal(v, _)) => (id_column(kind, c)?, v),
                (Expr::Literal(v, _), c) => (id_column(kind, c)?, v),
                _ => return None,
            };
            // `id = NULL` (or a literal of another type) matches no row the index could name:
            // an empty set is the right answer for NULL only.
            let ids = match col.key(lit) {
                Some(k) => BTreeSet::from([k]),
                None if lit.is_null() => BTreeSet::new(),
                None => return None,
            };
            Some(IdCondition { column: col, ids })
        }
        Expr::BinaryExpr(BinaryExpr { left, op, right }) if *op == Operator::Or => {
            let mut a = conjunct_ids(kind, left)?;
            let b = conjunct_ids(kind, right)?;
            if a.column != b.column {
                return None;
            }
            a.ids.extend(b.ids);
            Some(a)
        }
        Expr::InList(list) if !list.negated => {
            let column = id_column(kind, &list.expr)?;
            let mut ids = BTreeSet::new();
            for item in &list.list {
                match item {
                    Expr::Literal(v, _) if v.is_null() => {}
                    Expr::Literal(v, _) => {
                        ids.insert(column.key(v)?);
                    }
                    _ => return None,
                }
            }
            Some(IdCondition { column, ids })
        }
        _ => None,
    }
}

/// Every id condition among a scan's filters (each filter is one conjunct).
pub fn id_conditions(kind: SurveyKind, filters: &[Expr]) -> Vec<IdCondition> {
    filters.iter().filter_map(|f| conjunct_ids(kind, f)).collect()
}

/// What the index says about a scan: for each indexed file (by path), the rows that may match,
/// by row group. An indexed file missing here holds no matching row.
struct IndexHits {
    /// Path -> row group -> rows.
    rows: HashMap<String, BTreeMap<u32, BTreeSet<u32>>>,
    alerts: usize,
}

/// The dataset's committed catalog entries by path (blocking: sled).
fn catalog(ds: &Dataset) -> Result<HashMap<String, FileEntry>, Error> {
    Ok(ds
        .index
        .catalog()
        .files()?
        .into_iter()
        .map(|e| (e.path.clone(), e))
        .collect())
}

/// Look the conditions up (blocking: sled). Several conditions intersect.
fn lookup(ds: &Dataset, by_path: &HashMap<String, FileEntry>, conditions: &[IdCondition]) -> Result<IndexHits, Error> {
    let entries: HashMap<u64, &FileEntry> = by_path.values().map(|e| (e.file_id, e)).collect();
    let mut matched: Option<BTreeSet<astroflight_index::Location>> = None;
    for c in conditions {
        let mut here = BTreeSet::new();
        for id in &c.ids {
            here.extend(ds.index.locations(id)?);
        }
        matched = Some(match matched {
            None => here,
            Some(m) => m.intersection(&here).copied().collect(),
        });
    }
    let matched = matched.unwrap_or_default();
    let mut rows: HashMap<String, BTreeMap<u32, BTreeSet<u32>>> = HashMap::new();
    for l in &matched {
        if let Some(e) = entries.get(&l.file_id) {
            rows.entry(e.path.clone())
                .or_default()
                .entry(l.row_group)
                .or_default()
                .insert(l.row);
        }
    }
    Ok(IndexHits {
        rows,
        alerts: matched.len(),
    })
}

/// Selectors reading `rows` (sorted) of a row group of `n` rows.
fn row_selection(rows: &BTreeSet<u32>, n: u64) -> RowSelection {
    let mut sel = Vec::with_capacity(rows.len() * 2 + 1);
    let mut at = 0u64;
    for &r in rows {
        let r = u64::from(r);
        if r >= n {
            continue;
        }
        if r > at {
            sel.push(RowSelector::skip((r - at) as usize));
        }
        sel.push(RowSelector::select(1));
        at = r + 1;
    }
    if at < n {
        sel.push(RowSelector::skip((n - at) as usize));
    }
    RowSelection::from(sel)
}

/// A dataset's table: its ListingTable (schema, partitions, parquet options), plus the index
/// and, for one endpoint of a split scan, the slice it reads.
#[derive(Debug)]
pub struct LakeTable {
    pub lake: Arc<Lake>,
    pub ds: Arc<Dataset>,
    pub inner: Arc<ListingTable>,
    /// The request's I/O counters.
    pub io: Arc<IoStats>,
    /// The endpoint's files by path, when this session serves one endpoint.
    pub slice: Option<Arc<HashMap<String, SqlFile>>>,
}

impl LakeTable {
    pub fn new(
        lake: Arc<Lake>,
        ds: Arc<Dataset>,
        inner: Arc<ListingTable>,
        io: Arc<IoStats>,
        part: Option<&SqlPart>,
    ) -> Self {
        let slice = part.map(|p| Arc::new(p.files.iter().map(|f| (f.path.clone(), f.clone())).collect()));
        LakeTable {
            lake,
            ds,
            inner,
            io,
            slice,
        }
    }
}

fn external(e: Error) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

#[async_trait]
impl TableProvider for LakeTable {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let plan = self.inner.scan(state, projection, filters, limit).await?;
        let conditions = id_conditions(self.ds.kind, filters);
        let (ds, c) = (self.ds.clone(), conditions.clone());
        let (entries, hits) = tokio::task::spawn_blocking(move || {
            let entries = catalog(&ds)?;
            let hits = if c.is_empty() {
                None
            } else {
                Some(lookup(&ds, &entries, &c)?)
            };
            Ok::<_, Error>((entries, hits))
        })
        .await
        .map_err(|e| DataFusionError::External(Box::new(e)))?
        .map_err(external)?;
        let entries = Arc::new(entries);
        let factory = Arc::new(LakeReaderFactory {
            lake: self.lake.clone(),
            ds: self.ds.clone(),
            io: self.io.clone(),
            entries: entries.clone(),
        });
        let mut note = LakeScanNote {
            table: self.ds.name.clone(),
            conditions: conditions
                .iter()
                .map(|c| format!("{} ({} ids)", c.column.name(), c.ids.len()))
                .collect(),
            alerts: hits.as_ref().map(|h| h.alerts),
            ..Default::default()
        };
        let mut seen_slice: BTreeSet<String> = BTreeSet::new();
        let plan = rewrite_files(plan, factory, |file| {
            note.files_listed += 1;
            let path = self.ds.relative_path(file.object_meta.location.as_ref());
            // An endpoint reads only its own files (each counted as seen, even when the index
            // then finds no row in it).
            if let Some(slice) = &self.slice {
                if !slice.contains_key(&path) {
                    return Ok(None);
                }
                seen_slice.insert(path.clone());
            }
            let mut access: Option<ParquetAccessPlan> = None;
            let mut indexed_rgs: Option<u32> = None;
            if let Some(h) = &hits {
                match entries.get(&path) {
                    Some(e) if e.same_version(&file.object_meta) => {
                        let Some(by_rg) = h.rows.get(&path) else {
                            return Ok(None); // indexed, unchanged, no matching row
                        };
                        let mut a = ParquetAccessPlan::new_none(e.row_groups.len());
                        for (&rg, rows) in by_rg {
                            if let Some(&n) = e.row_groups.get(rg as usize) {
                                a.set(rg as usize, RowGroupAccess::Selection(row_selection(rows, n)));
                            }
                        }
                        indexed_rgs = Some(e.row_groups.len() as u32);
                        access = Some(a);
                    }
                    // Not indexed (new) or changed since: scanned as the index does not know it.
                    _ => note.files_unindexed += 1,
                }
            }
            if let Some(want) = self.slice.as_ref().and_then(|s| s.get(&path)) {
                let version = FileVersion {
                    size: want.size,
                    e_tag: want.e_tag.clone(),
                    last_modified_ms: want.last_modified_ms,
                };
                if let Some(why) = version.mismatch(&file.object_meta) {
                    return Err(external(Error::DataLoss(format!(
                        "the file {path} changed since this query was planned ({why}); run the query again"
                    ))));
                }
                if !want.row_groups.is_empty() {
                    if indexed_rgs.is_some_and(|n| n != want.row_group_count) {
                        return Err(external(Error::DataLoss(format!(
                            "the file {path} has another row group count than when this query was planned; run the \
                             query again"
                        ))));
                    }
                    let keep: BTreeSet<usize> = want.row_groups.iter().map(|&g| g as usize).collect();
                    let mut a = access.unwrap_or_else(|| ParquetAccessPlan::new_all(want.row_group_count as usize));
                    for g in 0..want.row_group_count as usize {
                        if !keep.contains(&g) {
                            a.skip(g);
                        }
                    }
                    access = Some(a);
                }
            }
            note.files_read += 1;
            let mut file = file.clone();
            if let Some(a) = access {
                note.row_groups += a.row_group_index_iter().count();
                note.planned = true;
                // The file's statistics describe all of it, not the rows read.
                file.statistics = file.statistics.map(|s| Arc::new((*s).clone().to_inexact()));
                file = file.with_extension(a);
            }
            Ok(Some(file))
        })?;
        if let Some(slice) = &self.slice {
            if let Some(gone) = slice.keys().find(|p| !seen_slice.contains(*p)) {
                return Err(external(Error::DataLoss(format!(
                    "the file {gone} of this endpoint is no longer in the lake; run the query again"
                ))));
            }
            note.slice = Some(slice.len());
        }
        Ok(Arc::new(LakeScanExec::new(plan, note, entries)))
    }
}

/// Apply `f` to every file of every file scan in `plan`: keep (possibly changed) or drop it.
/// The scan's statistics become inexact.
fn rewrite_files(
    plan: Arc<dyn ExecutionPlan>,
    readers: Arc<LakeReaderFactory>,
    mut f: impl FnMut(&PartitionedFile) -> DfResult<Option<PartitionedFile>>,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        let Some(config) = node
            .downcast_ref::<DataSourceExec>()
            .and_then(|d| d.data_source().downcast_ref::<FileScanConfig>())
        else {
            return Ok(Transformed::no(node));
        };
        let mut groups = Vec::with_capacity(config.file_groups.len());
        for g in &config.file_groups {
            let mut files = Vec::with_capacity(g.len());
            for file in g.iter() {
                if let Some(kept) = f(file)? {
                    files.push(kept);
                }
            }
            if !files.is_empty() {
                groups.push(FileGroup::new(files));
            }
        }
        let statistics = config.statistics().to_inexact();
        let mut builder = FileScanConfigBuilder::from(config.clone())
            .with_file_groups(groups)
            .with_statistics(statistics);
        if let Some(parquet) = config.file_source().downcast_ref::<ParquetSource>() {
            let source = parquet.clone().with_parquet_file_reader_factory(readers.clone());
            builder = builder.with_source(Arc::new(source));
        }
        let new = builder.build();
        let exec: Arc<dyn ExecutionPlan> = DataSourceExec::from_data_source(new);
        Ok(Transformed::yes(exec))
    })
    .map(|t| t.data)
}

/// What a lake scan did before reading, for EXPLAIN.
#[derive(Debug, Clone, Default)]
pub struct LakeScanNote {
    pub table: String,
    pub conditions: Vec<String>,
    pub alerts: Option<usize>,
    pub files_listed: usize,
    pub files_read: usize,
    pub files_unindexed: usize,
    pub row_groups: usize,
    pub planned: bool,
    pub slice: Option<usize>,
}

/// A pass-through node over a lake table's file scan, saying in EXPLAIN what the index and the
/// endpoint's slice chose.
#[derive(Debug)]
pub struct LakeScanExec {
    input: Arc<dyn ExecutionPlan>,
    note: LakeScanNote,
    /// The dataset's catalog entries by path, as the scan read them (the endpoint planner
    /// slices from them rather than scanning the catalog again).
    catalog: Arc<HashMap<String, FileEntry>>,
    properties: Arc<PlanProperties>,
}

impl LakeScanExec {
    fn new(input: Arc<dyn ExecutionPlan>, note: LakeScanNote, catalog: Arc<HashMap<String, FileEntry>>) -> Self {
        let properties = input.properties().clone();
        LakeScanExec {
            input,
            note,
            catalog,
            properties,
        }
    }

    /// The same node over another input.
    fn over(&self, input: Arc<dyn ExecutionPlan>) -> Self {
        LakeScanExec::new(input, self.note.clone(), self.catalog.clone())
    }

    /// The catalog entries the scan planned with, by path.
    pub fn catalog(&self) -> &Arc<HashMap<String, FileEntry>> {
        &self.catalog
    }
}

impl DisplayAs for LakeScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let n = &self.note;
        write!(f, "LakeScanExec: table={}", n.table)?;
        if !n.conditions.is_empty() {
            write!(
                f,
                ", index=[{}] -> {} alerts",
                n.conditions.join(" AND "),
                n.alerts.unwrap_or(0)
            )?;
            write!(
                f,
                ", files={} of {} listed ({} not indexed)",
                n.files_read, n.files_listed, n.files_unindexed
            )?;
            if n.planned {
                write!(f, ", row_groups={} (parquet access plans)", n.row_groups)?;
            }
        }
        if let Some(s) = n.slice {
            write!(f, ", endpoint slice={s} files")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for LakeScanExec {
    fn name(&self) -> &str {
        "LakeScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    /// Transparent to projections: they go below, into the file scan (where `candidate.jd`
    /// becomes a read of that one leaf, not of the whole struct).
    fn try_swapping_with_projection(&self, projection: &ProjectionExec) -> DfResult<Option<Arc<dyn ExecutionPlan>>> {
        let below = make_with_child(projection, &self.input)?;
        Ok(Some(Arc::new(self.over(below))))
    }

    /// Transparent to limits: a LIMIT reaches the file scan, which stops reading early.
    fn supports_limit_pushdown(&self) -> bool {
        true
    }

    fn with_fetch(&self, limit: Option<usize>) -> Option<Arc<dyn ExecutionPlan>> {
        let input = self.input.with_fetch(limit)?;
        Some(Arc::new(self.over(input)))
    }

    fn fetch(&self) -> Option<usize> {
        self.input.fetch()
    }

    /// Transparent to filters pushed into the scan (row filters, dynamic filters of joins and
    /// top-k).
    fn gather_filters_for_pushdown(
        &self,
        _phase: FilterPushdownPhase,
        parent_filters: Vec<Arc<dyn PhysicalExpr>>,
        _config: &ConfigOptions,
    ) -> DfResult<FilterDescription> {
        FilterDescription::from_children(parent_filters, &self.children())
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let input = children
            .pop()
            .ok_or_else(|| DataFusionError::Internal("LakeScanExec takes one child".into()))?;
        Ok(Arc::new(self.over(input)))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        self.input.execute(partition, context)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::{col, ident, lit};

    #[test]
    fn id_conditions_are_found_in_the_filters() {
        let f = vec![
            ident("objectId").in_list(vec![lit("ZTF1"), lit("ZTF2")], false),
            col("candid").eq(lit(5i64)).or(col("candid").eq(lit(6i64))),
            col("candidate").eq(lit(1i64)),
            ident("objectId").in_list(vec![lit("ZTF3")], true),
        ];
        let c = id_conditions(SurveyKind::Ztf, &f);
        assert_eq!(c.len(), 2, "{c:?}");
        assert_eq!(c[0].column, IdColumn::ObjectId);
        assert_eq!(c[0].ids.len(), 2);
        assert_eq!(c[1].ids, BTreeSet::from([IdKey::Candid(5), IdKey::Candid(6)]));
        // objectId and candid OR-ed together: not one id set.
        let mixed = vec![ident("objectId").eq(lit("a")).or(col("candid").eq(lit(1i64)))];
        assert!(id_conditions(SurveyKind::Ztf, &mixed).is_empty());
        // Rubin: the nested id.
        let get = datafusion::functions::core::expr_fn::get_field(ident("diaSource"), "diaSourceId");
        let c = id_conditions(SurveyKind::Lsst, &[get.eq(lit(7i64))]);
        assert_eq!(c[0].ids, BTreeSet::from([IdKey::DiaSourceId(7)]));
        // ZTF names mean nothing in a Rubin table.
        assert!(id_conditions(SurveyKind::Lsst, &[col("candid").eq(lit(1i64))]).is_empty());
    }

    #[test]
    fn row_selections_cover_the_row_group() {
        let s = row_selection(&BTreeSet::from([0, 3, 4, 9]), 7);
        assert_eq!(s.row_count(), 3);
        assert_eq!(s.skipped_row_count(), 4);
        let rows: Vec<usize> = s
            .iter()
            .scan(0usize, |at, sel| {
                let start = *at;
                *at += sel.row_count;
                Some((start, *sel))
            })
            .filter(|(_, sel)| !sel.skip)
            .flat_map(|(start, sel)| start..start + sel.row_count)
            .collect();
        assert_eq!(rows, vec![0, 3, 4]);
    }
}
