//! Guards on what SQL expressions may build: one bound per value, one per batch, and the
//! request's share of memory, for every function DataFusion registers, on every path that
//! evaluates SQL (Flight SQL, alert `where` conditions, header `where`, a dataset's `class`).
//!
//! DataFusion's memory pool bounds its operators (sorts, aggregates, joins), but a scalar
//! function allocates its output unchecked: `repeat('x', 2000000000)` builds 2 GB before anything
//! can object. Here every scalar and aggregate function is wrapped, except `get_field`, which
//! builds nothing and which DataFusion's parquet scan must see as itself (`is_field_access`):
//!
//! ```text
//!  f(args) ─> estimate: functions whose output can outgrow their inputs by an argument
//!     │        (repeat, lpad/rpad, array_repeat, range, replace, regexp_replace, concat, ...):
//!     │        the exact size per row from the arguments, before anything is allocated;
//!     │        over limits.max_value_bytes for one value, or limits.max_expression_batch_bytes
//!     │        for the batch: RESOURCE_EXHAUSTED; else reserved from the request's share
//!     ├─> the function runs
//!     └─> check: the bytes it allocated (buffers not shared with its inputs) and its largest
//!              value, against the same bounds; the output is claimed by the request's
//!              account for as long as it lives (arrow's memory pool)
//!  aggregates (array_agg, string_agg): the value a group builds is checked as it grows;
//!  every aggregate's result value is checked when it is produced
//! ```
//!
//! The registry of each engine holds wrapped functions (so that constant folding while
//! planning is guarded too), and [`guard_expr`] wraps, after planning, whatever a rewrite
//! introduced unwrapped, attaching the request's account. `a || b` (an operator, not a function)
//! is wrapped in a check of its result.

use std::collections::HashSet;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, Field, FieldRef, Int64Type};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DataFusionError, Result as DfResult, ScalarValue};
use datafusion::execution::session_state::SessionState;
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::expr::{AggregateFunction, ScalarFunction, WindowFunctionDefinition};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::udf_eq::UdfEq;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, ColumnarValue, EmitTo, Expr, GroupsAccumulator, LogicalPlan, Operator,
    ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};

use crate::memory::{human, Account};

/// The bounds on what one expression may build (`[limits]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExprLimits {
    /// Largest value (a string, a binary, a list with everything in it) a function may build.
    pub max_value_bytes: u64,
    /// Most bytes one function call may allocate for one batch.
    pub max_batch_bytes: u64,
}

impl ExprLimits {
    /// Bounds that never refuse (unit tests of conditions).
    #[cfg(test)]
    pub fn unlimited() -> Self {
        ExprLimits {
            max_value_bytes: u64::MAX,
            max_batch_bytes: u64::MAX,
        }
    }
}

/// The bounds, and the account of the request whose expressions these are (None: only the
/// bounds; a planning-time engine or a background job).
#[derive(Debug)]
pub struct Guard {
    pub limits: ExprLimits,
    pub account: Option<Arc<Account>>,
}

impl Guard {
    pub fn new(limits: ExprLimits, account: Option<Arc<Account>>) -> Arc<Guard> {
        Arc::new(Guard { limits, account })
    }

    fn refuse(&self, msg: String) -> DataFusionError {
        DataFusionError::ResourcesExhausted(msg)
    }

    fn value_error(&self, what: &str, bytes: f64) -> DataFusionError {
        self.refuse(format!(
            "{what} would build a value of {}, more than this server's bound of {} per value \
             (limits.max_value_bytes)",
            human(bytes.min(u64::MAX as f64) as u64),
            human(self.limits.max_value_bytes)
        ))
    }

    fn constant_error(&self, what: &str, bytes: f64) -> DataFusionError {
        self.refuse(format!(
            "{what} of constant arguments would build a constant of {}, more than this server's bound of {} \
             for constants (a query's constants are copied with its plan)",
            human(bytes.min(u64::MAX as f64) as u64),
            human(MAX_CONSTANT_BYTES)
        ))
    }

    fn batch_error(&self, what: &str, bytes: f64) -> DataFusionError {
        self.refuse(format!(
            "{what} would build {} for one batch, more than this server's bound of {} per batch \
             (limits.max_expression_batch_bytes)",
            human(bytes.min(u64::MAX as f64) as u64),
            human(self.limits.max_batch_bytes)
        ))
    }

    /// Claim an output for the request (it counts until dropped), then check the request's
    /// share and the budget.
    fn claim(&self, what: &str, out: &ArrayRef, new_bytes: u64) -> DfResult<()> {
        let Some(account) = &self.account else {
            return Ok(());
        };
        out.claim(&account.arrow_pool());
        account
            .check(new_bytes, &what)
            .map_err(|e| DataFusionError::ResourcesExhausted(e.to_string()))
    }
}

// ---------------------------------------------------------------------------------------------
// Sizes of values.

/// The byte size of each value of an array: fixed for fixed-width types, else one per row.
enum RowSizes {
    Fixed(u64, usize),
    Each(Vec<u64>),
}

impl RowSizes {
    fn get(&self, i: usize) -> u64 {
        match self {
            RowSizes::Fixed(w, _) => *w,
            RowSizes::Each(v) => v.get(i).copied().unwrap_or(0),
        }
    }
    fn max(&self) -> u64 {
        match self {
            RowSizes::Fixed(w, n) => {
                if *n > 0 {
                    *w
                } else {
                    0
                }
            }
            RowSizes::Each(v) => v.iter().copied().max().unwrap_or(0),
        }
    }
    fn len(&self) -> usize {
        match self {
            RowSizes::Fixed(_, n) => *n,
            RowSizes::Each(v) => v.len(),
        }
    }
    fn total(&self) -> u64 {
        match self {
            RowSizes::Fixed(w, n) => w * *n as u64,
            RowSizes::Each(v) => v.iter().sum(),
        }
    }
}

/// Is a type of fixed width (its values cannot grow)?
fn fixed_width(t: &DataType) -> Option<u64> {
    if t.is_primitive() {
        return t.primitive_width().map(|w| w as u64);
    }
    match t {
        DataType::Null => Some(0),
        DataType::Boolean => Some(1),
        DataType::FixedSizeBinary(n) => Some(*n as u64),
        _ => None,
    }
}

/// May values of this type grow (strings, binaries, lists, maps, and what holds them)?
fn variable(t: &DataType) -> bool {
    match t {
        DataType::Struct(fields) => fields.iter().any(|f| variable(f.data_type())),
        DataType::FixedSizeList(f, _) => variable(f.data_type()),
        DataType::Dictionary(_, v) => variable(v),
        DataType::Union(fields, _) => fields.iter().any(|(_, f)| variable(f.data_type())),
        t => fixed_width(t).is_none(),
    }
}

fn offsets_sizes<O: arrow::array::OffsetSizeTrait>(offsets: &[O], unit: u64) -> Vec<u64> {
    offsets
        .windows(2)
        .map(|w| (w[1].as_usize() - w[0].as_usize()) as u64 + unit)
        .collect()
}

/// Per-row sizes of list values, from their children's sizes.
fn list_sizes<O: arrow::array::OffsetSizeTrait>(offsets: &[O], child: &ArrayRef) -> Vec<u64> {
    let (Some(first), Some(last)) = (offsets.first(), offsets.last()) else {
        return Vec::new();
    };
    let (start, end) = (first.as_usize(), last.as_usize());
    let inner = row_sizes(&child.slice(start, end - start));
    let mut prefix = Vec::with_capacity(end - start + 1);
    let mut acc = 0u64;
    prefix.push(0);
    for i in 0..end - start {
        acc += inner.get(i);
        prefix.push(acc);
    }
    offsets
        .windows(2)
        .map(|w| {
            let (a, b) = (w[0].as_usize() - start, w[1].as_usize() - start);
            prefix[b] - prefix[a] + std::mem::size_of::<O>() as u64
        })
        .collect()
}

/// The size of every value of an array, in bytes of data (offsets and views included; null
/// bitmaps left out).
fn row_sizes(a: &ArrayRef) -> RowSizes {
    let n = a.len();
    if let Some(w) = fixed_width(a.data_type()) {
        return RowSizes::Fixed(w, n);
    }
    let each = match a.data_type() {
        // Strings and binaries: their bytes (what a function that repeats or pads them
        // multiplies); the offsets or views around them are counted once per value by the
        // estimate ([`VALUE_OVERHEAD`]).
        DataType::Utf8 => offsets_sizes(a.as_string::<i32>().offsets(), 0),
        DataType::LargeUtf8 => offsets_sizes(a.as_string::<i64>().offsets(), 0),
        DataType::Binary => offsets_sizes(a.as_binary::<i32>().offsets(), 0),
        DataType::LargeBinary => offsets_sizes(a.as_binary::<i64>().offsets(), 0),
        DataType::Utf8View => a.as_string_view().views().iter().map(|v| (*v as u32) as u64).collect(),
        DataType::BinaryView => a.as_binary_view().views().iter().map(|v| (*v as u32) as u64).collect(),
        DataType::List(_) => {
            let l = a.as_list::<i32>();
            list_sizes(l.offsets(), l.values())
        }
        DataType::LargeList(_) => {
            let l = a.as_list::<i64>();
            list_sizes(l.offsets(), l.values())
        }
        DataType::Map(_, _) => {
            let m = a.as_map();
            let entries: ArrayRef = Arc::new(m.entries().clone());
            list_sizes(m.offsets(), &entries)
        }
        DataType::FixedSizeList(_, k) => {
            let l = a.as_fixed_size_list();
            let k = *k as usize;
            let inner = row_sizes(&l.values().slice(l.offset() * k, n * k));
            (0..n).map(|i| (0..k).map(|j| inner.get(i * k + j)).sum()).collect()
        }
        DataType::Struct(_) => {
            let s = a.as_struct();
            let mut out = vec![0u64; n];
            for c in s.columns() {
                let cs = row_sizes(c);
                for (i, o) in out.iter_mut().enumerate() {
                    *o += cs.get(i);
                }
            }
            out
        }
        _ => {
            // Dictionaries, unions, run-ends, list views: their memory spread evenly (what
            // they hold is bounded by it).
            let each = (a.get_array_memory_size() / n.max(1)) as u64;
            vec![each; n]
        }
    };
    RowSizes::Each(each)
}

/// Bytes of `out`'s buffers that none of `inputs` holds: what a function allocated.
fn new_bytes(out: &ArrayRef, inputs: &[ColumnarValue]) -> u64 {
    fn buffers(d: &arrow::array::ArrayData, f: &mut dyn FnMut(*const u8, usize)) {
        for b in d.buffers() {
            f(b.data_ptr().as_ptr(), b.capacity());
        }
        if let Some(nb) = d.nulls() {
            f(nb.buffer().data_ptr().as_ptr(), nb.buffer().capacity());
        }
        for c in d.child_data() {
            buffers(c, f);
        }
    }
    let mut known: HashSet<usize> = HashSet::new();
    for i in inputs {
        if let ColumnarValue::Array(a) = i {
            buffers(&a.to_data(), &mut |p, _| {
                known.insert(p as usize);
            });
        }
    }
    let mut seen: HashSet<usize> = HashSet::new();
    let mut total = 0u64;
    buffers(&out.to_data(), &mut |p, cap| {
        if !known.contains(&(p as usize)) && seen.insert(p as usize) {
            total += cap as u64;
        }
    });
    total
}

// ---------------------------------------------------------------------------------------------
// The arguments of a call, as estimators read them.

struct Args<'a> {
    values: &'a [ColumnarValue],
    sizes: Vec<Option<RowSizes>>,
    ints: Vec<Option<Vec<Option<i64>>>>,
}

impl<'a> Args<'a> {
    fn new(values: &'a [ColumnarValue]) -> Self {
        Args {
            values,
            sizes: (0..values.len()).map(|_| None).collect(),
            ints: (0..values.len()).map(|_| None).collect(),
        }
    }

    fn count(&self) -> usize {
        self.values.len()
    }

    /// Bytes of argument `k` at row `i` (0 when there is no such argument).
    fn len(&mut self, k: usize, i: usize) -> f64 {
        let Some(v) = self.values.get(k) else {
            return 0.0;
        };
        let sizes = self.sizes[k].get_or_insert_with(|| match v {
            ColumnarValue::Array(a) => row_sizes(a),
            ColumnarValue::Scalar(s) => RowSizes::Fixed(scalar_bytes(s), 1),
        });
        match v {
            ColumnarValue::Scalar(_) => sizes.get(0) as f64,
            ColumnarValue::Array(_) => sizes.get(i) as f64,
        }
    }

    /// Argument `k` at row `i` as an integer (None when null, absent or not an integer).
    fn int(&mut self, k: usize, i: usize) -> Option<i64> {
        let v = self.values.get(k)?;
        let ints = self.ints[k].get_or_insert_with(|| match v {
            ColumnarValue::Scalar(s) => vec![scalar_int(s)],
            ColumnarValue::Array(a) => match arrow::compute::cast(a, &DataType::Int64) {
                Ok(c) => c.as_primitive::<Int64Type>().iter().collect(),
                Err(_) => vec![None; a.len()],
            },
        });
        match v {
            ColumnarValue::Scalar(_) => ints[0],
            ColumnarValue::Array(_) => ints.get(i).copied().flatten(),
        }
    }

    /// Argument `k` at row `i` as text, when it is a string (patterns, flags, fills).
    fn text(&self, k: usize, i: usize) -> Option<String> {
        match self.values.get(k)? {
            ColumnarValue::Scalar(s) => match s {
                ScalarValue::Utf8(v) | ScalarValue::LargeUtf8(v) | ScalarValue::Utf8View(v) => v.clone(),
                _ => None,
            },
            ColumnarValue::Array(a) if i < a.len() => {
                let c = arrow::compute::cast(&a.slice(i, 1), &DataType::Utf8).ok()?;
                let s = c.as_string::<i32>();
                (!s.is_null(0)).then(|| s.value(0).to_string())
            }
            ColumnarValue::Array(_) => None,
        }
    }

    fn is_ascii(&self, k: usize, i: usize) -> bool {
        self.text(k, i).is_none_or(|t| t.is_ascii())
    }

    /// Elements of the list argument `k` at row `i`, counted through nested lists.
    fn leaves(&mut self, k: usize, i: usize) -> f64 {
        let Some(v) = self.values.get(k) else {
            return 0.0;
        };
        let a = match v {
            ColumnarValue::Array(a) if i < a.len() => a.slice(i, 1),
            ColumnarValue::Array(_) => return 0.0,
            ColumnarValue::Scalar(s) => match s.to_array() {
                Ok(a) => a,
                Err(_) => return 0.0,
            },
        };
        leaf_count(&a) as f64
    }
}

fn scalar_bytes(s: &ScalarValue) -> u64 {
    match s {
        ScalarValue::Utf8(Some(v)) | ScalarValue::LargeUtf8(Some(v)) | ScalarValue::Utf8View(Some(v)) => v.len() as u64,
        ScalarValue::Binary(Some(v)) | ScalarValue::LargeBinary(Some(v)) | ScalarValue::BinaryView(Some(v)) => {
            v.len() as u64
        }
        s if s.is_null() => 0,
        s => s.size().saturating_sub(std::mem::size_of::<ScalarValue>()) as u64 + 8,
    }
}

fn scalar_int(s: &ScalarValue) -> Option<i64> {
    if s.is_null() {
        return None;
    }
    s.cast_to(&DataType::Int64).ok().and_then(|v| match v {
        ScalarValue::Int64(v) => v,
        _ => None,
    })
}

/// Leaf values under an array (list elements counted through nesting).
fn leaf_count(a: &ArrayRef) -> u64 {
    match a.data_type() {
        DataType::List(_) => {
            let l = a.as_list::<i32>();
            let (s, e) = (l.offsets()[0] as usize, l.offsets()[l.len()] as usize);
            leaf_count(&l.values().slice(s, e - s))
        }
        DataType::LargeList(_) => {
            let l = a.as_list::<i64>();
            let (s, e) = (l.offsets()[0] as usize, l.offsets()[l.len()] as usize);
            leaf_count(&l.values().slice(s, e - s))
        }
        DataType::FixedSizeList(_, k) => a.len() as u64 * *k as u64,
        _ => a.len() as u64,
    }
}

/// Elements of `range`/`generate_series(start, stop[, step])` at row `i` (`inclusive`: the
/// stop is one of them).
fn series_len(a: &mut Args, i: usize, inclusive: bool) -> f64 {
    let (start, stop, step) = match a.count() {
        1 => (Some(0), a.int(0, i), Some(1)),
        2 => (a.int(0, i), a.int(1, i), Some(1)),
        _ => (a.int(0, i), a.int(1, i), a.int(2, i)),
    };
    match (start, stop, step) {
        (Some(s), Some(e), Some(st)) if st != 0 => {
            let n = (e as f64 - s as f64) / st as f64;
            if n < 0.0 {
                0.0
            } else {
                n.floor() + if inclusive { 1.0 } else { 0.0 }
            }
        }
        (Some(_), Some(_), Some(_)) => 0.0,
        // Dates and timestamps with an interval step: the span in days at the finest step
        // DataFusion allows (one nanosecond) would refuse everything; a day per element, the
        // finest step of date ranges, for dates; timestamps are bounded by their span in
        // seconds when the step is under a day (sub-second steps over long spans are refused).
        _ => series_len_temporal(a, i),
    }
}

fn series_len_temporal(a: &Args, i: usize) -> f64 {
    let val = |k: usize| -> Option<ScalarValue> {
        match a.values.get(k)? {
            ColumnarValue::Scalar(s) => Some(s.clone()),
            ColumnarValue::Array(arr) => ScalarValue::try_from_array(arr, i).ok(),
        }
    };
    let nanos = |s: &ScalarValue| -> Option<f64> {
        match s {
            ScalarValue::Date32(Some(d)) => Some(*d as f64 * 86_400e9),
            ScalarValue::Date64(Some(ms)) => Some(*ms as f64 * 1e6),
            ScalarValue::TimestampSecond(Some(v), _) => Some(*v as f64 * 1e9),
            ScalarValue::TimestampMillisecond(Some(v), _) => Some(*v as f64 * 1e6),
            ScalarValue::TimestampMicrosecond(Some(v), _) => Some(*v as f64 * 1e3),
            ScalarValue::TimestampNanosecond(Some(v), _) => Some(*v as f64),
            _ => None,
        }
    };
    let step = |s: &ScalarValue| -> Option<f64> {
        match s {
            ScalarValue::IntervalMonthDayNano(Some(v)) => {
                Some((v.months as f64 * 28.0 + v.days as f64) * 86_400e9 + v.nanoseconds as f64)
            }
            ScalarValue::IntervalDayTime(Some(v)) => Some(v.days as f64 * 86_400e9 + v.milliseconds as f64 * 1e6),
            ScalarValue::IntervalYearMonth(Some(m)) => Some(*m as f64 * 28.0 * 86_400e9),
            _ => None,
        }
    };
    let (Some(s), Some(e)) = (val(0).and_then(|v| nanos(&v)), val(1).and_then(|v| nanos(&v))) else {
        return 0.0;
    };
    let st = val(2).and_then(|v| step(&v)).unwrap_or(86_400e9).abs().max(1.0);
    ((e - s).abs() / st).floor() + 1.0
}

/// Largest value a function may build from constants alone (`repeat('x', 10000000)`). The
/// planner folds such calls into literals, and a plan's literals are copied with it by every
/// rewrite: a large one costs many times its size before anything runs.
pub const MAX_CONSTANT_BYTES: u64 = 64 << 10;

/// What a value costs beyond its bytes (an offset or a view, validity).
const VALUE_OVERHEAD: f64 = 16.0;

/// The exact bytes per row of functions whose output can outgrow their inputs by what an
/// argument says, computed before they run. None: the function's output is bounded by its
/// inputs (it is checked after it runs).
fn estimate(name: &str, a: &mut Args, i: usize) -> Option<f64> {
    let nonneg = |v: Option<i64>| v.unwrap_or(0).max(0) as f64;
    Some(match name {
        "repeat" => a.len(0, i) * nonneg(a.int(1, i)),
        "lpad" | "rpad" => {
            let wide = !(a.is_ascii(0, i) && a.is_ascii(2, i));
            nonneg(a.int(1, i)) * if wide { 4.0 } else { 1.0 }
        }
        "array_repeat" | "list_repeat" => (a.len(0, i) + 1.0) * nonneg(a.int(1, i)),
        "range" => 8.0 * series_len(a, i, false),
        "generate_series" | "gen_series" => 8.0 * series_len(a, i, true),
        "array_resize" | "list_resize" => {
            let elems = a.leaves(0, i).max(1.0);
            let elem = (a.len(0, i) / elems).max(a.len(2, i)).max(8.0);
            a.len(0, i) + nonneg(a.int(1, i)) * elem
        }
        "replace" => {
            let (s, from, to) = (a.len(0, i), a.len(1, i), a.len(2, i));
            if from > 0.0 && to <= from {
                s
            } else {
                s + (s / from.max(1.0) + 1.0) * to
            }
        }
        "regexp_replace" => {
            let (s, rep) = (a.len(0, i), a.len(2, i));
            let global = a.count() > 3 && a.text(3, i).is_none_or(|f| f.contains('g'));
            let groups = a.text(2, i).is_none_or(|r| r.contains('$') || r.contains('\\'));
            let matches = if global { s + 1.0 } else { 1.0 };
            s + matches * rep * if groups { s + 1.0 } else { 1.0 }
        }
        "regexp_match" => {
            let groups = a.text(1, i).map_or(8.0, |p| p.matches('(').count() as f64);
            a.len(0, i) * (1.0 + groups) + 16.0
        }
        "array_to_string" | "array_join" | "list_to_string" | "list_join" => {
            let per = 24.0 + a.len(1, i) + a.len(2, i);
            a.len(0, i) + a.leaves(0, i) * per
        }
        "string_to_array" | "string_to_list" => a.len(0, i) * 6.0 + 16.0,
        "concat" | "make_array" | "make_list" | "array_concat" | "array_cat" | "list_concat" | "list_cat"
        | "array_append" | "array_push_back" | "list_append" | "list_push_back" | "array_prepend"
        | "array_push_front" | "list_prepend" | "list_push_front" | "array_union" | "list_union" | "map"
        | "make_map" => (0..a.count()).map(|k| a.len(k, i)).sum::<f64>() + 8.0,
        "concat_ws" => {
            let n = a.count();
            (1..n).map(|k| a.len(k, i)).sum::<f64>() + n as f64 * a.len(0, i)
        }
        "array_replace" | "array_replace_n" | "array_replace_all" | "list_replace" | "list_replace_n"
        | "list_replace_all" => a.len(0, i) + a.leaves(0, i) * a.len(2, i),
        "translate" => a.len(0, i) * 4.0,
        "upper" | "lower" | "initcap" => a.len(0, i) * 3.0,
        "overlay" => a.len(0, i) + a.len(1, i),
        "encode" => a.len(0, i) * 2.0 + 4.0,
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// Scalar functions.

/// A scalar function with its guard.
#[derive(Debug)]
pub struct GuardedScalar {
    inner: UdfEq<Arc<dyn ScalarUDFImpl>>,
    guard: Arc<Guard>,
}

impl PartialEq for GuardedScalar {
    fn eq(&self, other: &Self) -> bool {
        self.inner == other.inner
    }
}
impl Eq for GuardedScalar {}
impl Hash for GuardedScalar {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.inner.hash(state)
    }
}

fn guarded_scalar(inner: Arc<dyn ScalarUDFImpl>, guard: &Arc<Guard>) -> ScalarUDF {
    ScalarUDF::new_from_shared_impl(Arc::new(GuardedScalar {
        inner: inner.into(),
        guard: guard.clone(),
    }))
}

/// `udf` with `guard` (re-guarded if it carries another guard).
pub fn guard_scalar(udf: &ScalarUDF, guard: &Arc<Guard>) -> Option<ScalarUDF> {
    if is_field_access(udf) {
        return None;
    }
    match udf.inner().downcast_ref::<GuardedScalar>() {
        Some(g) if Arc::ptr_eq(&g.guard, guard) => None,
        Some(g) => Some(guarded_scalar((*g.inner).clone(), guard)),
        None => Some(guarded_scalar(udf.inner().clone(), guard)),
    }
}

/// `get_field` (`candidate.magpsf`) is left unwrapped. It builds nothing: it hands back a child
/// array of its struct (a map's lookup, the values of its input), so there is nothing for a
/// guard to bound. And DataFusion's parquet scan recognises it by its type to read only the
/// struct leaves a query names: wrapped, every SQL query over `candidate.*` read all of
/// `candidate` (105 leaves), and the benchmark's aggregate by night took 521 ms instead of
/// 32 ms (`fields_of_a_struct_are_read_alone` shows it on a scan plan).
fn is_field_access(udf: &ScalarUDF) -> bool {
    udf.inner()
        .downcast_ref::<datafusion::functions::core::getfield::GetFieldFunc>()
        .is_some()
}

impl GuardedScalar {
    fn name_in_messages(&self) -> String {
        format!("{}()", self.inner.name())
    }

    /// Before the call: the estimate of functions that can grow, checked and reserved.
    fn before(&self, args: &ScalarFunctionArgs) -> DfResult<Option<crate::memory::Reservation>> {
        let name = self.inner.name();
        let all_scalar = args.args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let mut a = Args::new(&args.args);
        let (mut total, mut max) = (0f64, 0f64);
        // All-scalar calls produce one value, whatever the batch; others one per row (none
        // for an empty batch).
        let n = if all_scalar { 1 } else { args.number_rows };
        for i in 0..n {
            let Some(v) = estimate(name, &mut a, i) else {
                return Ok(None);
            };
            total += v + VALUE_OVERHEAD;
            max = max.max(v);
        }
        let what = self.name_in_messages();
        let limits = self.guard.limits;
        if all_scalar && max > MAX_CONSTANT_BYTES as f64 {
            return Err(self.guard.constant_error(&what, max));
        }
        if max > limits.max_value_bytes as f64 {
            return Err(self.guard.value_error(&what, max));
        }
        if total > limits.max_batch_bytes as f64 {
            return Err(self.guard.batch_error(&what, total));
        }
        match &self.guard.account {
            Some(account) if total >= 1.0 => account
                .reserve(total as u64, &what)
                .map(Some)
                .map_err(|e| DataFusionError::ResourcesExhausted(e.to_string())),
            _ => Ok(None),
        }
    }

    /// A function's own error, named: one whose output outgrew Arrow's offsets (more than 2 GiB
    /// in one array) is RESOURCE_EXHAUSTED.
    fn inner_error(&self, e: DataFusionError) -> DataFusionError {
        let msg = e.to_string();
        if msg.to_lowercase().contains("offset overflow") {
            return self.guard.refuse(format!(
                "{} built more than Arrow holds in one array: {}",
                self.name_in_messages(),
                crate::error::cut(&msg, 300)
            ));
        }
        e
    }

    /// After the call: what the function allocated and its largest value, checked; the
    /// output claimed by the request.
    fn after(&self, out: &ColumnarValue, inputs: &[ColumnarValue]) -> DfResult<()> {
        let limits = self.guard.limits;
        let what = self.name_in_messages();
        match out {
            ColumnarValue::Scalar(s) => {
                if !variable(&s.data_type()) {
                    return Ok(());
                }
                let b = scalar_bytes(s);
                if b > MAX_CONSTANT_BYTES.min(limits.max_value_bytes) {
                    return Err(self.guard.constant_error(&what, b as f64));
                }
                Ok(())
            }
            ColumnarValue::Array(arr) => {
                if !variable(arr.data_type()) {
                    return Ok(());
                }
                let new = new_bytes(arr, inputs);
                if new > limits.max_batch_bytes {
                    return Err(self.guard.batch_error(&what, new as f64));
                }
                if new > limits.max_value_bytes {
                    let biggest = row_sizes(arr).max();
                    if biggest > limits.max_value_bytes && biggest > largest_input(inputs) {
                        return Err(self.guard.value_error(&what, biggest as f64));
                    }
                }
                self.guard.claim(&what, arr, new)
            }
        }
    }
}

fn largest_input(inputs: &[ColumnarValue]) -> u64 {
    inputs
        .iter()
        .map(|i| match i {
            ColumnarValue::Array(a) => row_sizes(a).max(),
            ColumnarValue::Scalar(s) => scalar_bytes(s),
        })
        .max()
        .unwrap_or(0)
}

#[warn(clippy::missing_trait_methods)]
impl ScalarUDFImpl for GuardedScalar {
    fn name(&self) -> &str {
        self.inner.name()
    }
    #[allow(deprecated)]
    fn display_name(&self, args: &[Expr]) -> DfResult<String> {
        self.inner.display_name(args)
    }
    fn schema_name(&self, args: &[Expr]) -> DfResult<String> {
        self.inner.schema_name(args)
    }
    fn signature(&self) -> &Signature {
        self.inner.signature()
    }
    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        self.inner.return_type(arg_types)
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DfResult<FieldRef> {
        self.inner.return_field_from_args(args)
    }
    #[allow(deprecated)]
    fn is_nullable(&self, args: &[Expr], schema: &dyn datafusion::common::ExprSchema) -> bool {
        self.inner.is_nullable(args, schema)
    }
    fn is_strict(&self) -> bool {
        self.inner.is_strict()
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let reserved = self.before(&args)?;
        // The inputs are kept (cheap clones) to tell the output's new buffers from theirs.
        let inputs = args.args.clone();
        let out = self.inner.invoke_with_args(args).map_err(|e| self.inner_error(e))?;
        self.after(&out, &inputs)?;
        drop(reserved);
        Ok(out)
    }
    fn with_updated_config(&self, config: &datafusion::config::ConfigOptions) -> Option<ScalarUDF> {
        self.inner
            .with_updated_config(config)
            .map(|u| guarded_scalar(u.inner().clone(), &self.guard))
    }
    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }
    fn simplify(
        &self,
        args: Vec<Expr>,
        info: &datafusion::logical_expr::simplify::SimplifyContext,
    ) -> DfResult<datafusion::logical_expr::simplify::ExprSimplifyResult> {
        // A function may fold its literal arguments while planning (concat joins them) without
        // being called: with large literals it is left to run, guarded, instead.
        let literals: u64 = args
            .iter()
            .map(|a| match a {
                Expr::Literal(v, _) => scalar_bytes(v),
                _ => 0,
            })
            .sum();
        if literals > self.guard.limits.max_value_bytes / 2 {
            return Ok(datafusion::logical_expr::simplify::ExprSimplifyResult::Original(args));
        }
        self.inner.simplify(args, info)
    }
    fn preimage(
        &self,
        args: &[Expr],
        lit_expr: &Expr,
        info: &datafusion::logical_expr::simplify::SimplifyContext,
    ) -> DfResult<datafusion::logical_expr::preimage::PreimageResult> {
        self.inner.preimage(args, lit_expr, info)
    }
    fn short_circuits(&self) -> bool {
        self.inner.short_circuits()
    }
    fn conditional_arguments<'a>(&self, args: &'a [Expr]) -> Option<(Vec<&'a Expr>, Vec<&'a Expr>)> {
        self.inner.conditional_arguments(args)
    }
    fn evaluate_bounds(
        &self,
        input: &[&datafusion::logical_expr::interval_arithmetic::Interval],
    ) -> DfResult<datafusion::logical_expr::interval_arithmetic::Interval> {
        self.inner.evaluate_bounds(input)
    }
    fn propagate_constraints(
        &self,
        interval: &datafusion::logical_expr::interval_arithmetic::Interval,
        inputs: &[&datafusion::logical_expr::interval_arithmetic::Interval],
    ) -> DfResult<Option<Vec<datafusion::logical_expr::interval_arithmetic::Interval>>> {
        self.inner.propagate_constraints(interval, inputs)
    }
    fn output_ordering(
        &self,
        inputs: &[datafusion::logical_expr::sort_properties::ExprProperties],
    ) -> DfResult<datafusion::logical_expr::sort_properties::SortProperties> {
        self.inner.output_ordering(inputs)
    }
    fn preserves_lex_ordering(
        &self,
        inputs: &[datafusion::logical_expr::sort_properties::ExprProperties],
    ) -> DfResult<bool> {
        self.inner.preserves_lex_ordering(inputs)
    }
    fn strictly_order_preserving(
        &self,
        inputs: &[datafusion::logical_expr::sort_properties::ExprProperties],
    ) -> DfResult<bool> {
        self.inner.strictly_order_preserving(inputs)
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }
    fn struct_field_mapping(
        &self,
        args: &[Option<ScalarValue>],
    ) -> Option<datafusion::logical_expr::StructFieldMapping> {
        self.inner.struct_field_mapping(args)
    }
    fn documentation(&self) -> Option<&datafusion::logical_expr::Documentation> {
        self.inner.documentation()
    }
    fn placement(
        &self,
        args: &[datafusion::logical_expr::ExpressionPlacement],
    ) -> datafusion::logical_expr::ExpressionPlacement {
        self.inner.placement(args)
    }
}

/// The check of a value built by an operator (`a || b`): the identity, refusing a result past
/// the bounds, named as its argument is (so that plans and column names are unchanged).
#[derive(Debug)]
struct ValueCheck {
    signature: Signature,
    guard: Arc<Guard>,
    what: String,
}

impl PartialEq for ValueCheck {
    fn eq(&self, other: &Self) -> bool {
        self.what == other.what
    }
}
impl Eq for ValueCheck {}
impl Hash for ValueCheck {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.what.hash(state)
    }
}

impl ScalarUDFImpl for ValueCheck {
    fn name(&self) -> &str {
        "astroflight_value_check"
    }
    fn schema_name(&self, args: &[Expr]) -> DfResult<String> {
        Ok(args[0].schema_name().to_string())
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(arg_types[0].clone())
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DfResult<FieldRef> {
        let f = &args.arg_fields[0];
        Ok(Arc::new(Field::new(
            self.name(),
            f.data_type().clone(),
            f.is_nullable(),
        )))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let out = args
            .args
            .into_iter()
            .next()
            .ok_or_else(|| DataFusionError::Internal("astroflight_value_check takes one argument".into()))?;
        let limits = self.guard.limits;
        match &out {
            ColumnarValue::Scalar(s) => {
                let b = scalar_bytes(s);
                if b > MAX_CONSTANT_BYTES.min(limits.max_value_bytes) {
                    return Err(self.guard.constant_error(&self.what, b as f64));
                }
            }
            ColumnarValue::Array(arr) => {
                let sizes = row_sizes(arr);
                let (total, max) = (sizes.total(), sizes.max());
                if max > limits.max_value_bytes {
                    return Err(self.guard.value_error(&self.what, max as f64));
                }
                if total > limits.max_batch_bytes {
                    return Err(self.guard.batch_error(&self.what, total as f64));
                }
                debug_assert!(sizes.len() == arr.len());
                self.guard.claim(&self.what, arr, total)?;
            }
        }
        Ok(out)
    }
}

fn value_check(e: Expr, what: &str, guard: &Arc<Guard>) -> Expr {
    let udf = ScalarUDF::new_from_impl(ValueCheck {
        signature: Signature::any(1, Volatility::Immutable),
        guard: guard.clone(),
        what: what.to_string(),
    });
    Expr::ScalarFunction(ScalarFunction::new_udf(Arc::new(udf), vec![e]))
}

// ---------------------------------------------------------------------------------------------
// Aggregate functions.

/// Aggregates whose result is the state they accumulate (it grows with every row).
fn builds_its_value(name: &str) -> bool {
    matches!(name, "array_agg" | "string_agg" | "list_agg")
}

#[derive(Debug)]
pub struct GuardedAggregate {
    inner: UdfEq<Arc<dyn AggregateUDFImpl>>,
    guard: Arc<Guard>,
}

impl PartialEq for GuardedAggregate {
    fn eq(&self, other: &Self) -> bool {
        self.inner == other.inner
    }
}
impl Eq for GuardedAggregate {}
impl Hash for GuardedAggregate {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.inner.hash(state)
    }
}

fn guarded_aggregate(inner: Arc<dyn AggregateUDFImpl>, guard: &Arc<Guard>) -> AggregateUDF {
    AggregateUDF::new_from_shared_impl(Arc::new(GuardedAggregate {
        inner: inner.into(),
        guard: guard.clone(),
    }))
}

/// `udaf` with `guard` (None when it has that guard already).
pub fn guard_aggregate(udaf: &AggregateUDF, guard: &Arc<Guard>) -> Option<AggregateUDF> {
    match udaf.inner().downcast_ref::<GuardedAggregate>() {
        Some(g) if Arc::ptr_eq(&g.guard, guard) => None,
        Some(g) => Some(guarded_aggregate((*g.inner).clone(), guard)),
        None => Some(guarded_aggregate(udaf.inner().clone(), guard)),
    }
}

struct GuardedAccumulator {
    inner: Box<dyn Accumulator>,
    what: String,
    guard: Arc<Guard>,
    grows: bool,
    /// What each row adds beyond its value (string_agg's delimiter).
    per_row: u64,
    /// Bytes of the values it produced (a window evaluates once per row).
    produced: u64,
}

impl fmt::Debug for GuardedAccumulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guarded({:?})", self.inner)
    }
}

impl GuardedAccumulator {
    /// Before a batch is added to a value that grows with it: what it would add (its values,
    /// and a delimiter per row) must fit under the bound, or nothing is added.
    fn before_growth(&self, values: &[ArrayRef]) -> DfResult<()> {
        let Some(first) = values.first().filter(|_| self.grows) else {
            return Ok(());
        };
        let adds = row_sizes(first).total() + self.per_row * first.len() as u64;
        let would = self.inner.size() as u64 + adds;
        if would > self.guard.limits.max_value_bytes {
            return Err(self.guard.value_error(&self.what, would as f64));
        }
        Ok(())
    }

    fn after_growth(&self) -> DfResult<()> {
        if self.grows {
            let s = self.inner.size() as u64;
            if s > self.guard.limits.max_value_bytes {
                return Err(self.guard.value_error(&self.what, s as f64));
            }
        }
        Ok(())
    }
}

impl Accumulator for GuardedAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        self.before_growth(values)?;
        self.inner.update_batch(values)?;
        self.after_growth()
    }
    fn evaluate(&mut self) -> DfResult<ScalarValue> {
        let v = self.inner.evaluate()?;
        if variable(&v.data_type()) {
            let b = scalar_bytes(&v);
            if b > self.guard.limits.max_value_bytes {
                return Err(self.guard.value_error(&self.what, b as f64));
            }
            // One group's accumulator is evaluated once; a window's once per row of its
            // partition (`array_agg(x) OVER (ORDER BY t)` grows quadratically): all it produces
            // is held to the bound of one value.
            self.produced += b;
            if self.produced > self.guard.limits.max_value_bytes {
                return Err(self
                    .guard
                    .value_error(&format!("{} over a window", self.what), self.produced as f64));
            }
        }
        Ok(v)
    }
    fn size(&self) -> usize {
        self.inner.size()
    }
    fn state(&mut self) -> DfResult<Vec<ScalarValue>> {
        self.inner.state()
    }
    fn merge_batch(&mut self, states: &[ArrayRef]) -> DfResult<()> {
        self.before_growth(states)?;
        self.inner.merge_batch(states)?;
        self.after_growth()
    }
    fn retract_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        self.inner.retract_batch(values)
    }
    fn supports_retract_batch(&self) -> bool {
        self.inner.supports_retract_batch()
    }
}

struct GuardedGroups {
    inner: Box<dyn GroupsAccumulator>,
    what: String,
    guard: Arc<Guard>,
}

impl GuardedGroups {
    fn check_values(&self, out: &ArrayRef) -> DfResult<()> {
        if !variable(out.data_type()) {
            return Ok(());
        }
        let biggest = row_sizes(out).max();
        if biggest > self.guard.limits.max_value_bytes {
            return Err(self.guard.value_error(&self.what, biggest as f64));
        }
        Ok(())
    }
}

impl GroupsAccumulator for GuardedGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&arrow::array::BooleanArray>,
        total_num_groups: usize,
    ) -> DfResult<()> {
        self.inner
            .update_batch(values, group_indices, opt_filter, total_num_groups)
    }
    fn evaluate(&mut self, emit_to: EmitTo) -> DfResult<ArrayRef> {
        let out = self.inner.evaluate(emit_to)?;
        self.check_values(&out)?;
        Ok(out)
    }
    fn state(&mut self, emit_to: EmitTo) -> DfResult<Vec<ArrayRef>> {
        let out = self.inner.state(emit_to)?;
        for s in &out {
            self.check_values(s)?;
        }
        Ok(out)
    }
    fn merge_batch(&mut self, values: &[ArrayRef], group_indices: &[usize], total_num_groups: usize) -> DfResult<()> {
        self.inner.merge_batch(values, group_indices, total_num_groups)
    }
    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&arrow::array::BooleanArray>,
    ) -> DfResult<Vec<ArrayRef>> {
        self.inner.convert_to_state(values, opt_filter)
    }
    fn size(&self) -> usize {
        self.inner.size()
    }
}

impl GuardedAggregate {
    fn wrap(&self, inner: Box<dyn Accumulator>, args: &AccumulatorArgs) -> Box<dyn Accumulator> {
        // string_agg(x, delimiter): the delimiter, a literal, joins every row.
        let per_row = args
            .exprs
            .get(1)
            .and_then(|e| e.downcast_ref::<datafusion::physical_expr::expressions::Literal>())
            .map_or(0, |l| scalar_bytes(l.value()));
        Box::new(GuardedAccumulator {
            inner,
            what: format!("{}()", self.inner.name()),
            guard: self.guard.clone(),
            grows: builds_its_value(self.inner.name()),
            per_row,
            produced: 0,
        })
    }
}

#[warn(clippy::missing_trait_methods)]
impl AggregateUDFImpl for GuardedAggregate {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }
    fn schema_name(&self, params: &datafusion::logical_expr::expr::AggregateFunctionParams) -> DfResult<String> {
        self.inner.schema_name(params)
    }
    fn human_display(&self, params: &datafusion::logical_expr::expr::AggregateFunctionParams) -> DfResult<String> {
        self.inner.human_display(params)
    }
    fn window_function_schema_name(
        &self,
        params: &datafusion::logical_expr::expr::WindowFunctionParams,
    ) -> DfResult<String> {
        self.inner.window_function_schema_name(params)
    }
    fn display_name(&self, params: &datafusion::logical_expr::expr::AggregateFunctionParams) -> DfResult<String> {
        self.inner.display_name(params)
    }
    fn window_function_display_name(
        &self,
        params: &datafusion::logical_expr::expr::WindowFunctionParams,
    ) -> DfResult<String> {
        self.inner.window_function_display_name(params)
    }
    fn signature(&self) -> &Signature {
        self.inner.signature()
    }
    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        self.inner.return_type(arg_types)
    }
    fn return_field(&self, arg_fields: &[FieldRef]) -> DfResult<FieldRef> {
        self.inner.return_field(arg_fields)
    }
    fn is_nullable(&self) -> bool {
        self.inner.is_nullable()
    }
    fn accumulator(&self, acc_args: AccumulatorArgs) -> DfResult<Box<dyn Accumulator>> {
        let inner = self.inner.accumulator(acc_args.clone())?;
        Ok(self.wrap(inner, &acc_args))
    }
    fn state_fields(&self, args: StateFieldsArgs) -> DfResult<Vec<FieldRef>> {
        self.inner.state_fields(args)
    }
    fn groups_accumulator_supported(&self, args: AccumulatorArgs) -> bool {
        self.inner.groups_accumulator_supported(args)
    }
    fn create_groups_accumulator(&self, args: AccumulatorArgs) -> DfResult<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(GuardedGroups {
            inner: self.inner.create_groups_accumulator(args)?,
            what: format!("{}()", self.inner.name()),
            guard: self.guard.clone(),
        }))
    }
    fn create_sliding_accumulator(&self, args: AccumulatorArgs) -> DfResult<Box<dyn Accumulator>> {
        let inner = self.inner.create_sliding_accumulator(args.clone())?;
        Ok(self.wrap(inner, &args))
    }
    fn with_beneficial_ordering(
        self: Arc<Self>,
        beneficial_ordering: bool,
    ) -> DfResult<Option<Arc<dyn AggregateUDFImpl>>> {
        let guard = self.guard.clone();
        Arc::clone(&self.inner)
            .with_beneficial_ordering(beneficial_ordering)
            .map(|o| {
                o.map(|inner| {
                    Arc::new(GuardedAggregate {
                        inner: inner.into(),
                        guard,
                    }) as Arc<dyn AggregateUDFImpl>
                })
            })
    }
    fn order_sensitivity(&self) -> datafusion::logical_expr::utils::AggregateOrderSensitivity {
        self.inner.order_sensitivity()
    }
    fn simplify(&self) -> Option<datafusion::logical_expr::function::AggregateFunctionSimplification> {
        self.inner.simplify()
    }
    fn simplify_expr_op_literal(
        &self,
        agg_function: &AggregateFunction,
        arg: &Expr,
        op: Operator,
        lit: &Expr,
        arg_is_left: bool,
    ) -> DfResult<Option<Expr>> {
        self.inner
            .simplify_expr_op_literal(agg_function, arg, op, lit, arg_is_left)
    }
    fn reverse_expr(&self) -> datafusion::logical_expr::ReversedUDAF {
        match self.inner.reverse_expr() {
            datafusion::logical_expr::ReversedUDAF::Reversed(u) => datafusion::logical_expr::ReversedUDAF::Reversed(
                Arc::new(guarded_aggregate(u.inner().clone(), &self.guard)),
            ),
            other => other,
        }
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }
    fn is_descending(&self) -> Option<bool> {
        self.inner.is_descending()
    }
    fn value_from_stats(&self, statistics_args: &datafusion::logical_expr::StatisticsArgs) -> Option<ScalarValue> {
        self.inner.value_from_stats(statistics_args)
    }
    fn default_value(&self, data_type: &DataType) -> DfResult<ScalarValue> {
        self.inner.default_value(data_type)
    }
    fn supports_null_handling_clause(&self) -> bool {
        self.inner.supports_null_handling_clause()
    }
    fn supports_within_group_clause(&self) -> bool {
        self.inner.supports_within_group_clause()
    }
    fn set_monotonicity(&self, data_type: &DataType) -> datafusion::logical_expr::SetMonotonicity {
        self.inner.set_monotonicity(data_type)
    }
    fn documentation(&self) -> Option<&datafusion::logical_expr::Documentation> {
        self.inner.documentation()
    }
}

// ---------------------------------------------------------------------------------------------
// Wiring: the registry, expressions, plans.

/// Wrap every scalar and aggregate function of a session's registry with `guard`, so that
/// whatever is planned (and folded while planning) calls them guarded.
pub fn guard_registry(state: &mut SessionState, guard: &Arc<Guard>) -> DfResult<()> {
    let scalars: Vec<Arc<ScalarUDF>> = unique(state.scalar_functions().values().cloned());
    for f in scalars {
        if let Some(g) = guard_scalar(&f, guard) {
            state.register_udf(Arc::new(g))?;
        }
    }
    let aggregates: Vec<Arc<AggregateUDF>> = unique(state.aggregate_functions().values().cloned());
    for f in aggregates {
        if let Some(g) = guard_aggregate(&f, guard) {
            state.register_udaf(Arc::new(g))?;
        }
    }
    Ok(())
}

/// Functions registered under several names (aliases) once each.
fn unique<T>(fs: impl Iterator<Item = Arc<T>>) -> Vec<Arc<T>> {
    let mut seen = HashSet::new();
    fs.filter(|f| seen.insert(Arc::as_ptr(f) as *const u8 as usize))
        .collect()
}

/// Every function of an expression guarded by `guard` (wrapped, or re-wrapped for this
/// request), and every `||` under a value check (once: running it again changes nothing).
pub fn guard_expr(e: Expr, guard: &Arc<Guard>) -> DfResult<Transformed<Expr>> {
    e.transform_down(|e| {
        Ok(match e {
            // A `||` already checked: guard its operands only.
            Expr::ScalarFunction(f) if f.func.inner().is::<ValueCheck>() => {
                let mut changed = false;
                let mut args = Vec::with_capacity(f.args.len());
                for a in f.args {
                    let t = match a {
                        Expr::BinaryExpr(b) if b.op == Operator::StringConcat => guard_operands(b, guard)?,
                        other => guard_expr(other, guard)?,
                    };
                    changed |= t.transformed;
                    args.push(t.data);
                }
                let e = Expr::ScalarFunction(ScalarFunction::new_udf(f.func, args));
                Transformed::new(e, changed, TreeNodeRecursion::Jump)
            }
            Expr::BinaryExpr(b) if b.op == Operator::StringConcat => {
                let inner = guard_operands(b, guard)?.data;
                Transformed::new(
                    value_check(inner, "the || operator", guard),
                    true,
                    TreeNodeRecursion::Jump,
                )
            }
            Expr::ScalarFunction(f) => match guard_scalar(&f.func, guard) {
                Some(g) => Transformed::yes(Expr::ScalarFunction(ScalarFunction::new_udf(Arc::new(g), f.args))),
                None => Transformed::no(Expr::ScalarFunction(f)),
            },
            Expr::AggregateFunction(mut a) => match guard_aggregate(&a.func, guard) {
                Some(g) => {
                    a.func = Arc::new(g);
                    Transformed::yes(Expr::AggregateFunction(a))
                }
                None => Transformed::no(Expr::AggregateFunction(a)),
            },
            Expr::WindowFunction(mut w) => match &w.fun {
                WindowFunctionDefinition::AggregateUDF(u) => match guard_aggregate(u, guard) {
                    Some(g) => {
                        w.fun = WindowFunctionDefinition::AggregateUDF(Arc::new(g));
                        Transformed::yes(Expr::WindowFunction(w))
                    }
                    None => Transformed::no(Expr::WindowFunction(w)),
                },
                _ => Transformed::no(Expr::WindowFunction(w)),
            },
            other => Transformed::no(other),
        })
    })
}

/// A `||` with its operands guarded (the operator itself left as it is).
fn guard_operands(b: datafusion::logical_expr::BinaryExpr, guard: &Arc<Guard>) -> DfResult<Transformed<Expr>> {
    let l = guard_expr(*b.left, guard)?;
    let r = guard_expr(*b.right, guard)?;
    let changed = l.transformed || r.transformed;
    let e = Expr::BinaryExpr(datafusion::logical_expr::BinaryExpr::new(
        Box::new(l.data),
        b.op,
        Box::new(r.data),
    ));
    Ok(Transformed::new(e, changed, TreeNodeRecursion::Continue))
}

/// The optimizer's last rule in a guarded session: every function of the plan (subqueries
/// included) guarded with the request's guard, every `||` checked. Also the analyzer's last
/// rule: the optimizer folds constant expressions while planning (`'x' || 'x'` becomes one
/// literal), so the checks must be in place before it runs.
#[derive(Debug)]
pub struct GuardRule(pub Arc<Guard>);

impl datafusion::optimizer::AnalyzerRule for GuardRule {
    fn name(&self) -> &str {
        "astroflight_guard"
    }

    fn analyze(&self, plan: LogicalPlan, _config: &datafusion::config::ConfigOptions) -> DfResult<LogicalPlan> {
        Ok(plan
            .transform_up_with_subqueries(|p| p.map_expressions(|e| guard_expr(e, &self.0)))?
            .data)
    }
}

impl OptimizerRule for GuardRule {
    fn name(&self) -> &str {
        "astroflight_guard"
    }

    fn rewrite(&self, plan: LogicalPlan, _config: &dyn OptimizerConfig) -> DfResult<Transformed<LogicalPlan>> {
        plan.transform_up_with_subqueries(|p| p.map_expressions(|e| guard_expr(e, &self.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, ListArray, StringArray};
    use datafusion::prelude::SessionContext;

    fn limits() -> ExprLimits {
        ExprLimits {
            max_value_bytes: 1 << 20,
            max_batch_bytes: 8 << 20,
        }
    }

    async fn ctx(account: Option<Arc<Account>>) -> SessionContext {
        let guard = Guard::new(limits(), account);
        let mut state = datafusion::execution::session_state::SessionStateBuilder::new()
            .with_default_features()
            .with_analyzer_rule(Arc::new(GuardRule(guard.clone())))
            .with_optimizer_rule(Arc::new(GuardRule(guard.clone())))
            .build();
        guard_registry(&mut state, &guard).unwrap();
        SessionContext::new_with_state(state)
    }

    async fn run(ctx: &SessionContext, sql: &str) -> Result<usize, String> {
        let df = ctx.sql(sql).await.map_err(|e| e.to_string())?;
        let batches = df.collect().await.map_err(|e| e.to_string())?;
        Ok(batches.iter().map(|b| b.num_rows()).sum())
    }

    /// With every function guarded, `s.a` is still DataFusion's own `get_field`, so its parquet
    /// scan reads the one leaf and not the whole struct (`is_field_access`).
    #[tokio::test]
    async fn fields_of_a_struct_are_read_alone() {
        use arrow::array::{RecordBatch, StructArray};
        use arrow::datatypes::{Fields, Schema};
        use datafusion::physical_plan::{collect, ExecutionPlan};

        let dir = tempfile::tempdir().unwrap();
        let fields = Fields::from(vec![
            Field::new("a", DataType::Int64, false),
            Field::new("pad", DataType::Utf8, false),
        ]);
        let schema = Arc::new(Schema::new(vec![Field::new(
            "s",
            DataType::Struct(fields.clone()),
            false,
        )]));
        let rows = 2000;
        let s = StructArray::new(
            fields,
            vec![
                Arc::new(Int64Array::from_iter_values(0..rows)),
                // Incompressible padding: 1 KiB per row that a query of `s.a` must not read.
                Arc::new(StringArray::from_iter_values(
                    (0..rows).map(|i| format!("{:x}", md5_like(i)).repeat(64)),
                )),
            ],
            None,
        );
        let file = std::fs::File::create(dir.path().join("t.parquet")).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(file, schema.clone(), None).unwrap();
        w.write(&RecordBatch::try_new(schema, vec![Arc::new(s)]).unwrap())
            .unwrap();
        w.close().unwrap();
        let size = std::fs::metadata(dir.path().join("t.parquet")).unwrap().len();

        let c = ctx(None).await;
        c.register_parquet("t", dir.path().to_str().unwrap(), Default::default())
            .await
            .unwrap();
        let plan = c
            .sql("SELECT sum(s.a) AS n FROM t")
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        let out = collect(plan.clone(), c.task_ctx()).await.unwrap();
        assert_eq!(
            out[0].column(0).as_primitive::<Int64Type>().value(0),
            (0..rows).sum::<i64>()
        );
        fn scanned(p: &Arc<dyn ExecutionPlan>) -> usize {
            p.metrics()
                .and_then(|m| m.sum_by_name("bytes_scanned"))
                .map(|v| v.as_usize())
                .unwrap_or(0)
                + p.children().into_iter().map(scanned).sum::<usize>()
        }
        let read = scanned(&plan) as u64;
        assert!(
            read > 0 && read < size / 20,
            "read {read} bytes of a {size}-byte file for one int64 leaf"
        );
    }

    /// A cheap, deterministic scramble (the padding must not compress away).
    fn md5_like(i: i64) -> u64 {
        (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17) ^ 0xD6E8_FEB8_6659_FD93
    }

    #[tokio::test]
    async fn growing_functions_are_refused_before_they_allocate() {
        let c = ctx(None).await;
        // On columns (the estimate from the arguments, row by row)...
        let t = "(VALUES ('x', 2000000000, ''), ('y', 1, 'a')) AS t(s, n, e)";
        for f in [
            "repeat(s, n)",
            "lpad(s, n)",
            "rpad(s, n, 'ab')",
            "array_repeat(s, n)",
            "array_repeat(array_repeat(s, 1000), 1000)",
            "range(1, n * 5)",
            "generate_series(1, n * 5)",
            "replace(repeat(s, 100000), e, repeat(s, 1000))",
            "regexp_replace(repeat(s, 100000), e, repeat(s, 100), 'g')",
            "concat(repeat(s, 600000), repeat(s, 600000))",
            "array_to_string(range(n / 20000), repeat('-', 100))",
            "array_resize([1], n / 4, 1)",
        ] {
            let sql = format!("SELECT {f} FROM {t}");
            let e = run(&c, &sql).await.expect_err(&sql);
            assert!(
                e.contains("limits.max_value_bytes") || e.contains("max_expression_batch_bytes"),
                "{sql}: {e}"
            );
        }
        // ...and on constants alone (folded into the plan: bounded at 1 MiB).
        for sql in ["SELECT repeat('x', 2000000000)", "SELECT range(1, 9000000000)"] {
            let e = run(&c, sql).await.expect_err(sql);
            assert!(e.contains("for constants"), "{sql}: {e}");
        }
        // Values under the bound are fine.
        assert_eq!(
            run(
                &c,
                &format!("SELECT repeat(s, 1000), lpad(s, 10), range(1000) FROM {t}")
            )
            .await,
            Ok(2)
        );
    }

    #[tokio::test]
    async fn operators_and_aggregates_are_bounded_too() {
        let c = ctx(None).await;
        let e = run(
            &c,
            "WITH a AS (SELECT repeat(x, 600000) AS s FROM (VALUES ('x')) t(x)), b AS (SELECT s || s AS s FROM a) \
             SELECT s || s FROM b",
        )
        .await
        .unwrap_err();
        assert!(e.contains("||") && e.contains("max_value_bytes"), "{e}");
        let e = run(&c, "SELECT array_agg(value) FROM generate_series(1, 10000000)")
            .await
            .unwrap_err();
        assert!(e.contains("array_agg()") && e.contains("max_value_bytes"), "{e}");
        let e = run(
            &c,
            "SELECT string_agg(repeat('x', 1000), ',') FROM generate_series(1, 100000)",
        )
        .await
        .unwrap_err();
        assert!(e.contains("string_agg()"), "{e}");
        // A long delimiter is counted per row, before the batch is added.
        let e = run(
            &c,
            "SELECT string_agg(CAST(value AS VARCHAR), repeat('-', 60000)) FROM generate_series(1, 100)",
        )
        .await
        .unwrap_err();
        assert!(e.contains("string_agg()") && e.contains("max_value_bytes"), "{e}");
        let e = run(
            &c,
            "SELECT k, array_agg(value) FROM (SELECT value, 1 AS k FROM generate_series(1, 1000000)) GROUP BY k",
        )
        .await
        .unwrap_err();
        assert!(e.contains("array_agg()"), "{e}");
        // A result column keeps its name under the check.
        let df = c.sql("SELECT 'a' || 'b' AS x, 'c' || 'd'").await.unwrap();
        let names: Vec<String> = df.schema().fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(names[0], "x");
        assert!(names[1].contains("||"), "{names:?}");
        assert_eq!(
            run(&c, "SELECT array_agg(value) FROM generate_series(1, 1000)").await,
            Ok(1)
        );
    }

    #[tokio::test]
    async fn outputs_count_against_the_request_while_they_live() {
        let budget = crate::memory::Budget::new(1 << 30, 4 << 20, false);
        let account = budget.account("request t");
        let c = ctx(Some(account.clone())).await;
        // Each value is under the bound, the batch too, but together they pass the share.
        let e = run(
            &c,
            "SELECT concat(repeat(CAST(value AS VARCHAR), 300), 'x') AS a, concat(repeat(CAST(value AS VARCHAR), 301), 'y') \
             AS b, concat(repeat(CAST(value AS VARCHAR), 302), 'z') AS c FROM generate_series(1, 2000)",
        )
        .await
        .unwrap_err();
        assert!(e.contains("max_request_memory_bytes"), "{e}");
        assert_eq!(account.used(), 0, "everything goes back");
    }

    #[test]
    fn sizes_of_values() {
        let s: ArrayRef = Arc::new(StringArray::from(vec!["ab", "cde", ""]));
        let r = row_sizes(&s);
        assert_eq!((r.get(0), r.get(1), r.get(2)), (2, 3, 0));
        let l: ArrayRef = Arc::new(ListArray::from_iter_primitive::<Int64Type, _, _>(vec![
            Some(vec![Some(1), Some(2)]),
            None,
            Some(vec![Some(3)]),
        ]));
        let r = row_sizes(&l);
        assert_eq!((r.get(0), r.get(1), r.get(2)), (20, 4, 12));
        let i: ArrayRef = Arc::new(Int64Array::from(vec![1, 2]));
        assert_eq!(row_sizes(&i).max(), 8);
        assert!(!variable(&DataType::Int64) && variable(&DataType::Utf8));
    }
}
