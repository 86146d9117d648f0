//! Pruning with DataFusion's `PruningPredicate` on parquet statistics: row groups by their
//! column chunk statistics, pages by the column index. Nested fields are pruned too: the
//! condition is rewritten on the flat schema (`candidate.magpsf` as one column, see
//! [`crate::expr::flatten`]) and statistics are looked up by leaf path.
//!
//! Page pruning follows DataFusion's parquet source: each conjunct naming a single column is
//! tested page by page on that column's pages, giving a row selection; the selections of the
//! conjuncts are intersected (pages of different columns do not line up).

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
