//! Pruning with DataFusion's `PruningPredicate` on parquet statistics: row groups by their
//! column chunk statistics, pages by the column index. Nested fields are pruned too: the
//! condition is rewritten on the flat schema (`candidate.magpsf` as one column, see
//! [`crate::expr::flatten`]) and statistics are looked up by leaf path.
//!
//! Page pruning follows DataFusion's parquet source: each conjunct naming a single column is
//! tested page by page on that column's pages, giving a row selection; the selections of the
//! conjuncts are intersected (pages of different columns do not line up).
//!
//! **Why not DataFusion's `RowGroupAccessPlanFilter` and `PagePruningAccessPlanFilter`.** Both
//! are used through the same `PruningPredicate`, but they look a predicate's columns up with
//! `StatisticsConverter::try_new`, which finds only top-level primitive columns (parquet's
//! `parquet_column` gives up on a struct). Alert files keep nearly every field a user filters
//! on in a struct (`candidate.magpsf`, `diaSource.psfFlux`), so on them DataFusion's filters
//! keep every row group and build no page predicate. This module reads the statistics by leaf
//! path instead (`StatisticsConverter::from_column_index`). The tests below run both on one
//! file: on a nested field DataFusion's filters prune nothing and this one prunes row groups and
//! pages; on a top-level column both give the same answer. When the first test fails, DataFusion
//! prunes nested fields itself and this module should go.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, UInt64Array};
use arrow_schema::{Schema, SchemaRef};
use datafusion::common::pruning::PruningStatistics;
use datafusion::common::{Column, ScalarValue};
use datafusion::logical_expr::Expr;
use datafusion::physical_optimizer::pruning::{PruningPredicate, PruningPredicateBuilder};
use parquet::arrow::arrow_reader::statistics::StatisticsConverter;
use parquet::arrow::arrow_reader::{RowSelection, RowSelector};
use parquet::file::metadata::ParquetMetaData;

use crate::expr::{column_paths, conjuncts, Engine};

/// Parquet leaf index by dotted path (leaves under lists are left out: their paths hold the
/// list's own levels and they have no per-row statistics).
pub fn leaf_indices(md: &ParquetMetaData) -> HashMap<String, usize> {
    let sd = md.file_metadata().schema_descr();
    (0..sd.num_columns())
        .map(|i| (sd.column(i).path().string(), i))
        .collect()
}

/// The pruning predicates of one condition on one file: the whole condition for row groups,
/// and one per single-column conjunct for pages.
pub struct Pruner {
    flat: SchemaRef,
    whole: Option<Arc<PruningPredicate>>,
    per_column: Vec<(String, Arc<PruningPredicate>)>,
}

impl Pruner {
    /// `flat_expr` is the condition on the flat schema. Parts the pruning predicate cannot use
    /// keep everything (pruning is an optimisation; the condition itself is always evaluated).
    pub fn new(engine: &Engine, flat_expr: &Expr, flat: SchemaRef) -> Self {
        let build = |e: &Expr| -> Option<Arc<PruningPredicate>> {
            let phys = engine.compile(e, &flat, "pruning", None).ok()?;
            PruningPredicateBuilder::new()
                .with_file_schema(flat.clone())
                .build(phys)
        };
        let whole = build(flat_expr);
        let mut per_column = Vec::new();
        for c in conjuncts(flat_expr) {
            let cols = column_paths(&c);
            if cols.len() == 1 {
                if let Some(p) = build(&c) {
                    per_column.push((cols.into_iter().next().expect("one"), p));
                }
            }
        }
        Pruner {
            flat,
            whole,
            per_column,
        }
    }

    /// Which of `row_groups` may hold matching rows.
    pub fn row_groups(&self, md: &ParquetMetaData, row_groups: &[usize]) -> Vec<bool> {
        let Some(p) = &self.whole else {
            return vec![true; row_groups.len()];
        };
        let stats = Stats {
            md,
            flat: &self.flat,
            leaves: leaf_indices(md),
            row_groups,
            pages: None,
        };
        p.prune(&stats).unwrap_or_else(|_| vec![true; row_groups.len()])
    }

    /// The rows of row group `rg` on pages that may match, or None when every page may (or the
    /// file has no page index).
    pub fn pages(&self, md: &ParquetMetaData, rg: usize) -> Option<RowSelection> {
        let (Some(_), Some(_)) = (md.column_index(), md.offset_index()) else {
            return None;
        };
        let leaves = leaf_indices(md);
        let rows = md.row_group(rg).num_rows() as usize;
        let mut out: Option<RowSelection> = None;
        for (col, p) in &self.per_column {
            let Some(&leaf) = leaves.get(col) else { continue };
            let Some(locations) = md
                .offset_index()
                .and_then(|o| o.get(rg))
                .and_then(|r| r.get(leaf))
                .map(|o| o.page_locations())
            else {
                continue;
            };
            let stats = Stats {
                md,
                flat: &self.flat,
                leaves: leaves.clone(),
                row_groups: &[rg],
                pages: Some(leaf),
            };
            let Ok(keep) = p.prune(&stats) else { continue };
            if keep.len() != locations.len() || keep.iter().all(|k| *k) {
                continue;
            }
            let mut selectors = Vec::with_capacity(keep.len());
            for (i, k) in keep.iter().enumerate() {
                let start = locations[i].first_row_index as usize;
                let end = locations.get(i + 1).map(|l| l.first_row_index as usize).unwrap_or(rows);
                let n = end.saturating_sub(start);
                if n > 0 {
                    selectors.push(if *k {
                        RowSelector::select(n)
                    } else {
                        RowSelector::skip(n)
                    });
                }
            }
            let sel = RowSelection::from(selectors);
            out = Some(match out {
                None => sel,
                Some(o) => o.intersection(&sel),
            });
        }
        out
    }
}

/// Statistics of some row groups (or of the pages of one leaf in one row group) for
/// DataFusion's pruning predicate.
struct Stats<'a> {
    md: &'a ParquetMetaData,
    flat: &'a Schema,
    leaves: HashMap<String, usize>,
    row_groups: &'a [usize],
    /// Some(leaf): the containers are that leaf's pages in `row_groups[0]`.
    pages: Option<usize>,
}

impl Stats<'_> {
    fn converter(&self, column: &Column) -> Option<StatisticsConverter<'_>> {
        let leaf = *self.leaves.get(&column.name)?;
        if self.pages.is_some_and(|p| p != leaf) {
            return None;
        }
        let field = self.flat.field_with_name(&column.name).ok()?;
        if field.data_type().is_nested() {
            return None;
        }
        StatisticsConverter::from_column_index(leaf, field, self.md.file_metadata().schema_descr()).ok()
    }
}

impl PruningStatistics for Stats<'_> {
    fn min_values(&self, column: &Column) -> Option<ArrayRef> {
        let c = self.converter(column)?;
        match self.pages {
            None => c
                .row_group_mins(self.row_groups.iter().map(|i| self.md.row_group(*i)))
                .ok(),
            Some(_) => c
                .data_page_mins(self.md.column_index()?, self.md.offset_index()?, self.row_groups)
                .ok(),
        }
    }

    fn max_values(&self, column: &Column) -> Option<ArrayRef> {
        let c = self.converter(column)?;
        match self.pages {
            None => c
                .row_group_maxes(self.row_groups.iter().map(|i| self.md.row_group(*i)))
                .ok(),
            Some(_) => c
                .data_page_maxes(self.md.column_index()?, self.md.offset_index()?, self.row_groups)
                .ok(),
        }
    }

    fn num_containers(&self) -> usize {
        match self.pages {
            None => self.row_groups.len(),
            Some(leaf) => self
                .md
                .offset_index()
                .and_then(|o| o.get(self.row_groups[0]))
                .and_then(|r| r.get(leaf))
                .map(|o| o.page_locations().len())
                .unwrap_or(0),
        }
    }

    fn null_counts(&self, column: &Column) -> Option<ArrayRef> {
        let c = self.converter(column)?;
        let a: UInt64Array = match self.pages {
            None => c
                .row_group_null_counts(self.row_groups.iter().map(|i| self.md.row_group(*i)))
                .ok()?,
            Some(_) => c
                .data_page_null_counts(self.md.column_index()?, self.md.offset_index()?, self.row_groups)
                .ok()?,
        };
        Some(Arc::new(a))
    }

    fn row_counts(&self) -> Option<ArrayRef> {
        match self.pages {
            None => Some(Arc::new(UInt64Array::from_iter_values(
                self.row_groups.iter().map(|i| self.md.row_group(*i).num_rows() as u64),
            ))),
            Some(leaf) => {
                let rg = self.row_groups[0];
                let locs = self.md.offset_index()?.get(rg)?.get(leaf)?.page_locations();
                let total = self.md.row_group(rg).num_rows() as u64;
                Some(Arc::new(UInt64Array::from_iter_values((0..locs.len()).map(|i| {
                    let end = locs.get(i + 1).map(|l| l.first_row_index as u64).unwrap_or(total);
                    end - locs[i].first_row_index as u64
                }))))
            }
        }
    }

    fn contained(&self, _column: &Column, _values: &std::collections::HashSet<ScalarValue>) -> Option<BooleanArray> {
        None
    }
}

#[cfg(test)]
mod tests {
    //! Why this module exists beside DataFusion's `RowGroupAccessPlanFilter` and
    //! `PagePruningAccessPlanFilter`: on the nested schema of an alert file DataFusion's filters
    //! prune nothing, because they resolve a predicate's columns with
    //! `StatisticsConverter::try_new`, which finds top-level primitive columns only (parquet's
    //! `parquet_column` returns None for a struct). Every ZTF and Rubin field a user filters on
    //! (`candidate.magpsf`, `diaSource.psfFlux`) is nested. On a top-level column both agree.
    use super::*;
    use arrow::array::{Float64Array, RecordBatch, StringArray, StructArray};
    use arrow_schema::{DataType, Field, Fields};
    use bytes::Bytes;
    use datafusion::datasource::physical_plan::parquet::{
        PagePruningAccessPlanFilter, ParquetAccessPlan, ParquetFileMetrics, RowGroupAccess, RowGroupAccessPlanFilter,
    };
    use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
    use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
    use parquet::arrow::ArrowWriter;
    use parquet::file::metadata::PageIndexPolicy;
    use parquet::file::properties::{EnabledStatistics, WriterProperties};

    use crate::expr::guard::ExprLimits;
    use crate::expr::{flat_schema, flatten};

    const GROUPS: usize = 4;
    const ROWS: usize = 100;

    /// Four row groups of 100 rows, pages of 10 rows; row r has objectId `ZTF{r:04}` and
    /// candidate.jd = r, so every row group and page has its own range of both.
    fn file() -> ArrowReaderMetadata {
        let cand = Fields::from(vec![
            Field::new("jd", DataType::Float64, true),
            Field::new("magpsf", DataType::Float64, true),
        ]);
        let schema = Arc::new(Schema::new(vec![
            Field::new("objectId", DataType::Utf8, true),
            Field::new("candidate", DataType::Struct(cand.clone()), true),
        ]));
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(ROWS))
            .set_data_page_row_count_limit(10)
            .set_write_batch_size(10)
            .set_statistics_enabled(EnabledStatistics::Page)
            .build();
        let mut buf = Vec::new();
        let mut w = ArrowWriter::try_new(&mut buf, schema.clone(), Some(props)).unwrap();
        for g in 0..GROUPS {
            let rows = (g * ROWS)..((g + 1) * ROWS);
            let ids = StringArray::from_iter_values(rows.clone().map(|r| format!("ZTF{r:04}")));
            let jd = Float64Array::from_iter_values(rows.clone().map(|r| r as f64));
            let mag = Float64Array::from_iter_values(rows.map(|r| 20.0 - r as f64 / 100.0));
            let c = StructArray::new(cand.clone(), vec![Arc::new(jd), Arc::new(mag)], None);
            w.write(&RecordBatch::try_new(schema.clone(), vec![Arc::new(ids), Arc::new(c)]).unwrap())
                .unwrap();
        }
        w.close().unwrap();
        ArrowReaderMetadata::load(
            &Bytes::from(buf),
            ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Required),
        )
        .unwrap()
    }

    /// Ours: the row groups kept, and the rows selected in row group 2.
    fn ours(md: &ArrowReaderMetadata, sql: &str) -> (Vec<bool>, Option<usize>) {
        let engine = Engine::new(ExprLimits::unlimited());
        let expr = engine.parse(sql, md.schema(), "where").unwrap();
        let flat = flat_schema(md.schema());
        let p = Pruner::new(&engine, &flatten(&expr, &flat), flat);
        let all: Vec<usize> = (0..GROUPS).collect();
        (
            p.row_groups(md.metadata(), &all),
            p.pages(md.metadata(), 2).map(|s| s.row_count()),
        )
    }

    /// DataFusion's filters on the file's own (nested) schema, as its parquet source runs them:
    /// the row groups kept, the rows selected in row group 2, and how many page predicates it
    /// could build.
    fn datafusion(md: &ArrowReaderMetadata, sql: &str) -> (Vec<bool>, Option<usize>, usize) {
        let engine = Engine::new(ExprLimits::unlimited());
        let schema = md.schema().clone();
        let phys = engine.compile_sql(sql, &schema, "where", None).unwrap();
        let sd = md.metadata().file_metadata().schema_descr();
        let metrics = ParquetFileMetrics::new(0, "f.parquet", &ExecutionPlanMetricsSet::new());
        let mut rg = RowGroupAccessPlanFilter::new(ParquetAccessPlan::new_all(GROUPS));
        if let Some(p) = PruningPredicateBuilder::new()
            .with_file_schema(schema.clone())
            .build(phys.clone())
        {
            rg.prune_by_statistics(&schema, sd, md.metadata().row_groups(), &p, &metrics);
        }
        let plan = rg.build();
        let kept = (0..GROUPS).map(|i| plan.should_scan(i)).collect();
        let pages = PagePruningAccessPlanFilter::new(&phys, schema.clone());
        let plan = pages.prune_plan_with_page_index(plan, &schema, sd, md.metadata(), &metrics);
        let selected = match &plan.inner()[2] {
            RowGroupAccess::Selection(s) => Some(s.row_count()),
            _ => None,
        };
        (kept, selected, pages.filter_number())
    }

    #[test]
    fn nested_fields_are_pruned_here_and_not_by_datafusions_filters() {
        let md = file();
        // Row groups 2 and 3 hold jd >= 250; in row group 2, the last 5 pages (50 rows).
        let sql = "candidate.jd >= 250";
        assert_eq!(ours(&md, sql), (vec![false, false, true, true], Some(50)));
        let (kept, selected, page_predicates) = datafusion(&md, sql);
        assert_eq!(
            kept,
            vec![true; GROUPS],
            "DataFusion now prunes nested fields: use its filter"
        );
        assert_eq!((selected, page_predicates), (None, 0));
    }

    #[test]
    fn top_level_columns_are_pruned_alike() {
        let md = file();
        let sql = "objectId >= 'ZTF0250'";
        assert_eq!(ours(&md, sql), (vec![false, false, true, true], Some(50)));
        let (kept, selected, page_predicates) = datafusion(&md, sql);
        assert_eq!(
            (kept, selected, page_predicates),
            (vec![false, false, true, true], Some(50), 1)
        );
    }
}
