//! SQL conditions on alerts, through DataFusion: parsed and type-checked against a file's
//! schema, evaluated on the columns they name, and rewritten for pruning.
//!
//! Conditions are written as Fink writes them: `candidate.magpsf > 19.5`, nested fields with
//! dots (or `candidate['magpsf']`), identifiers case-sensitive (`objectId`), functions such as
//! `LOG10` and `ABS`. Identifier normalization is off, so `objectId` is the column `objectId`.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema, ScalarValue};
use datafusion::execution::session_state::{SessionState, SessionStateBuilder};
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::SessionConfig;

pub mod guard;

use crate::error::{Error, Result};
use crate::memory::Account;
use guard::{ExprLimits, Guard, MAX_CONSTANT_BYTES};

/// The query engine's state shared by every request: the function registry (every function
/// guarded, see [`guard`]) and SQL options.
#[derive(Clone)]
pub struct Engine {
    state: Arc<SessionState>,
    limits: ExprLimits,
    /// The guard of work that no request owns (index builds' class counts, planning).
    guard: Arc<Guard>,
}

/// An engine error as a client sees it: the engine's own explanation, cut to a readable size.
/// An expression that would pass a memory bound is RESOURCE_EXHAUSTED; an overflow (a value
/// too large for Arrow's offsets, an arithmetic overflow) is the expression's fault:
/// INVALID_ARGUMENT naming it.
pub fn engine_error(what: &str, e: impl std::fmt::Display) -> Error {
    let msg = e.to_string();
    let text = format!("{what}: {}", crate::error::cut(&msg, 800));
    if msg.contains("Resources exhausted") {
        Error::ResourceExhausted(text)
    } else {
        Error::InvalidArgument(text)
    }
}

/// [`engine_error`] for DataFusion's own errors, by kind.
pub fn datafusion_error(what: &str, e: &datafusion::error::DataFusionError) -> Error {
    match e.find_root() {
        datafusion::error::DataFusionError::ResourcesExhausted(m) => {
            Error::ResourceExhausted(format!("{what}: {}", crate::error::cut(m, 800)))
        }
        _ => engine_error(what, e),
    }
}

impl Engine {
    pub fn new(limits: ExprLimits) -> Self {
        let mut config = SessionConfig::new();
        // Alert fields are camelCase (objectId, diaSource.psfFlux): keep identifiers as written.
        config.options_mut().sql_parser.enable_ident_normalization = false;
        let mut state = SessionStateBuilder::new()
            .with_config(config)
            .with_default_features()
            .build();
        let guard = Guard::new(limits, None);
        guard::guard_registry(&mut state, &guard).expect("registering guarded functions");
        Engine {
            state: Arc::new(state),
            limits,
            guard,
        }
    }

    /// The bounds every expression of this engine is held to.
    pub fn limits(&self) -> ExprLimits {
        self.limits
    }

    /// Parse a SQL expression against a (nested) schema: nested fields become `get_field`.
    pub fn parse(&self, sql: &str, schema: &Schema, what: &str) -> Result<Expr> {
        check_shape(sql, what)?;
        let df = DFSchema::try_from(schema.clone()).map_err(|e| Error::Internal(e.to_string()))?;
        self.state
            .create_logical_expr(sql, &df)
            .map_err(|e| datafusion_error(&format!("{what} {}", crate::error::quoted(sql)), &e))
    }

    /// Compile a logical expression for batches of `schema` (type coercion included), its
    /// functions guarded for `account` (the request that evaluates it; None: work no request
    /// owns, held to the bounds only).
    pub fn compile(
        &self,
        expr: &Expr,
        schema: &Schema,
        what: &str,
        account: Option<&Arc<Account>>,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        let df = DFSchema::try_from(schema.clone()).map_err(|e| Error::Internal(e.to_string()))?;
        let guard = match account {
            Some(a) => Guard::new(self.limits, Some(a.clone())),
            None => self.guard.clone(),
        };
        let guarded = guard::guard_expr(expr.clone(), &guard)
            .map_err(|e| datafusion_error(what, &e))?
            .data;
        let phys = self
            .state
            .create_physical_expr(guarded, &df)
            .map_err(|e| datafusion_error(what, &e))?;
        Ok(phys)
    }

    /// Parse and compile a SQL expression for batches of `schema`.
    pub fn compile_sql(
        &self,
        sql: &str,
        schema: &Schema,
        what: &str,
        account: Option<&Arc<Account>>,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        self.compile(&self.parse(sql, schema, what)?, schema, what, account)
    }

    /// Compile a condition and check, on an empty batch, that it evaluates to a boolean (a
    /// literal that cannot be cast to its column's type fails here, before anything is read).
    pub fn compile_condition(&self, expr: &Expr, schema: &SchemaRef, what: &str) -> Result<Arc<dyn PhysicalExpr>> {
        let phys = self.compile(expr, schema, what, None)?;
        let ty = phys.data_type(schema).map_err(|e| engine_error(what, e))?;
        if ty != DataType::Boolean {
            return Err(Error::InvalidArgument(format!(
                "{what} is of type {ty}, not a condition (boolean)"
            )));
        }
        evaluate(&phys, &RecordBatch::new_empty(schema.clone()), what)?;
        Ok(phys)
    }
}

/// Most operators (`+`, `AND`, `||`, comparisons...) one SQL text may hold. A chain of a few
/// hundred thousand (`1+1+...+1`) parses into an expression tree that deep, and walking or
/// dropping such a tree recursively overflows a thread's stack: it is refused before parsing.
pub const MAX_OPERATORS: usize = 20_000;

/// Refuse SQL whose operator count would make an expression tree too deep to handle
/// (INVALID_ARGUMENT naming the bound); the tokenizer is iterative, so this costs one pass.
pub fn check_shape(sql: &str, what: &str) -> Result<()> {
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    // A cheap bound first: a symbol operator is at least one of these characters, a keyword one
    // (AND, OR, NOT) takes at least four with its spaces, and no literal is longer than the
    // text.
    let symbols = sql.bytes().filter(|b| b"+-*/%<>=|&^!:".contains(b)).count();
    if symbols + sql.len() / 4 <= MAX_OPERATORS && sql.len() as u64 <= MAX_CONSTANT_BYTES {
        return Ok(());
    }
    let tokens = Tokenizer::new(&GenericDialect {}, sql)
        .tokenize()
        .map_err(|e| Error::InvalidArgument(format!("{what}: {e}")))?;
    // A long literal is copied with the plan many times over (a 1 MB one cost 76 MB to plan).
    let longest = tokens
        .iter()
        .filter_map(|t| match t {
            Token::SingleQuotedString(v)
            | Token::DoubleQuotedString(v)
            | Token::DollarQuotedString(datafusion::sql::sqlparser::ast::DollarQuotedString { value: v, .. })
            | Token::HexStringLiteral(v)
            | Token::SingleQuotedByteStringLiteral(v)
            | Token::DoubleQuotedByteStringLiteral(v) => Some(v.len()),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    if longest as u64 > MAX_CONSTANT_BYTES {
        return Err(Error::InvalidArgument(format!(
            "{what} has a literal of {longest} bytes, more than this server's bound of {MAX_CONSTANT_BYTES} bytes \
             for constants"
        )));
    }
    let ops = tokens
        .iter()
        .filter(|t| match t {
            Token::Word(w) => matches!(
                w.keyword,
                datafusion::sql::sqlparser::keywords::Keyword::AND
                    | datafusion::sql::sqlparser::keywords::Keyword::OR
                    | datafusion::sql::sqlparser::keywords::Keyword::NOT
            ),
            Token::Plus
            | Token::Minus
            | Token::Mul
            | Token::Div
            | Token::Mod
            | Token::Eq
            | Token::Neq
            | Token::Lt
            | Token::Gt
            | Token::LtEq
            | Token::GtEq
            | Token::StringConcat
            | Token::Pipe
            | Token::Ampersand
            | Token::Caret
            | Token::ShiftLeft
            | Token::ShiftRight
            | Token::DoubleColon
            | Token::Spaceship => true,
            _ => false,
        })
        .count();
    if ops > MAX_OPERATORS {
        return Err(Error::InvalidArgument(format!(
            "{what} has {ops} operators, more than this server's bound of {MAX_OPERATORS} per statement: \
             a long chain of them (a OR b OR c ...) is better written as an IN list"
        )));
    }
    Ok(())
}

/// An expression compiled for the schema of the batches it last saw, compiled again when a
/// batch of another schema comes (files of one dataset may differ).
#[derive(Default)]
pub struct PerSchema(std::sync::Mutex<Option<(SchemaRef, Arc<dyn PhysicalExpr>)>>);

impl PerSchema {
    pub fn get(
        &self,
        schema: &SchemaRef,
        compile: impl FnOnce() -> Result<Arc<dyn PhysicalExpr>>,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        let mut cached = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((s, p)) = &*cached {
            if s == schema {
                return Ok(p.clone());
            }
        }
        let p = compile()?;
        *cached = Some((schema.clone(), p.clone()));
        Ok(p)
    }
}

/// Evaluate an expression on a batch, as an array.
pub fn evaluate(expr: &Arc<dyn PhysicalExpr>, batch: &RecordBatch, what: &str) -> Result<ArrayRef> {
    expr.evaluate(batch)
        .and_then(|v| v.into_array(batch.num_rows()))
        .map_err(|e| datafusion_error(what, &e))
}

/// Evaluate a condition: true rows are kept (null counts as false).
pub fn evaluate_condition(expr: &Arc<dyn PhysicalExpr>, batch: &RecordBatch, what: &str) -> Result<BooleanArray> {
    let a = evaluate(expr, batch, what)?;
    let b = a
        .as_any()
        .downcast_ref::<BooleanArray>()
        .ok_or_else(|| Error::InvalidArgument(format!("{what} is of type {}, not boolean", a.data_type())))?;
    Ok(match b.nulls() {
        Some(_) => arrow::compute::prep_null_mask_filter(b),
        None => b.clone(),
    })
}

/// The column paths an expression reads: `candidate.magpsf` for `get_field(candidate, 'magpsf')`,
/// `prv_candidates` for a whole column. Paths go through structs only.
pub fn column_paths(expr: &Expr) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let _ = expr.apply(|e| {
        if let Some(p) = field_path(e) {
            out.insert(p);
            return Ok(TreeNodeRecursion::Jump);
        }
        if let Expr::Column(c) = e {
            out.insert(c.name.clone());
        }
        Ok(TreeNodeRecursion::Continue)
    });
    out
}

/// `a.b.c` for a chain of `get_field` calls with literal names on a column.
fn field_path(e: &Expr) -> Option<String> {
    match e {
        Expr::Column(c) => Some(c.name.clone()),
        Expr::ScalarFunction(f) if f.func.name() == "get_field" && f.args.len() >= 2 => {
            let mut path = field_path(&f.args[0])?;
            for a in &f.args[1..] {
                match a {
                    Expr::Literal(ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)), _) => {
                        path.push('.');
                        path.push_str(s);
                    }
                    _ => return None,
                }
            }
            Some(path)
        }
        _ => None,
    }
}

/// Every field of `schema` reached through structs only, by dotted path, with its type: the
/// schema the pruning predicates see (statistics are kept per leaf).
pub fn flat_schema(schema: &Schema) -> SchemaRef {
    fn walk(prefix: &str, f: &Field, out: &mut Vec<Field>) {
        let name = if prefix.is_empty() {
            f.name().to_string()
        } else {
            format!("{prefix}.{}", f.name())
        };
        out.push(Field::new(&name, f.data_type().clone(), true));
        if let DataType::Struct(children) = f.data_type() {
            for c in children {
                walk(&name, c, out);
            }
        }
    }
    let mut out = Vec::new();
    for f in schema.fields() {
        walk("", f, &mut out);
    }
    Arc::new(Schema::new(out))
}

/// Rewrite `get_field` chains into columns of the [`flat_schema`] (`candidate.magpsf`).
pub fn flatten(expr: &Expr, flat: &Schema) -> Expr {
    expr.clone()
        .transform_up(|e| {
            if matches!(e, Expr::ScalarFunction(_)) {
                if let Some(p) = field_path(&e) {
                    if flat.field_with_name(&p).is_ok() {
                        return Ok(Transformed::yes(Expr::Column(Column::new_unqualified(p))));
                    }
                }
            }
            Ok(Transformed::no(e))
        })
        .map(|t| t.data)
        .unwrap_or_else(|_| expr.clone())
}

/// The conjuncts of an expression (`a AND b AND c`).
pub fn conjuncts(expr: &Expr) -> Vec<Expr> {
    datafusion::logical_expr::utils::split_conjunction(expr)
        .into_iter()
        .cloned()
        .collect()
}

/// The words of a SQL expression that may name columns (dotted words included; quoted string
/// literals skipped): a superset of the columns it reads, for reading them before the file's
/// schema is known.
pub fn words(sql: &str) -> Vec<String> {
    let mut out = BTreeSet::new();
    let mut cur = String::new();
    let mut in_literal = false;
    for c in sql.chars() {
        if in_literal {
            in_literal = c != '\'';
            continue;
        }
        if c == '\'' {
            in_literal = true;
        } else if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
            cur.push(c);
            continue;
        }
        if !cur.is_empty() {
            out.insert(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.insert(cur);
    }
    out.into_iter()
        .map(|w| w.trim_matches('.').to_string())
        .filter(|w| !w.is_empty() && !w.starts_with(|c: char| c.is_ascii_digit()))
        .collect()
}

/// The class definition of a dataset for the index builder: the SQL compiled on each batch's
/// schema (the batch holds the id columns and the columns the expression may read).
pub fn class_spec(engine: Engine, sql: &str) -> astroflight_index::ClassSpec {
    let owned = sql.to_string();
    let compiled = PerSchema::default();
    astroflight_index::ClassSpec {
        key: owned.clone(),
        columns: words(sql),
        eval: Arc::new(move |batch: &RecordBatch| {
            let phys = compiled
                .get(&batch.schema(), || {
                    engine.compile_sql(&owned, &batch.schema(), "the dataset's class", None)
                })
                .map_err(|e| e.to_string())?;
            evaluate(&phys, batch, "the dataset's class").map_err(|e| e.to_string())
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, StringArray, StructArray};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("objectId", DataType::Utf8, true),
            Field::new(
                "candidate",
                DataType::Struct(
                    vec![
                        Field::new("magpsf", DataType::Float64, true),
                        Field::new("magnr", DataType::Float64, true),
                        Field::new("distnr", DataType::Float64, true),
                    ]
                    .into(),
                ),
                true,
            ),
        ]))
    }

    fn batch() -> RecordBatch {
        let s = schema();
        let DataType::Struct(fields) = s.field(1).data_type().clone() else {
            unreachable!()
        };
        let cand = StructArray::new(
            fields,
            vec![
                Arc::new(Float64Array::from(vec![19.0, 20.0, 20.0])),
                Arc::new(Float64Array::from(vec![10.0, 25.0, 12.0])),
                Arc::new(Float64Array::from(vec![0.5, 5.0, 0.1])),
            ],
            None,
        );
        RecordBatch::try_new(
            s,
            vec![
                Arc::new(StringArray::from(vec!["ZTFa", "ZTFb", "ZTFc"])),
                Arc::new(cand),
            ],
        )
        .unwrap()
    }

    #[test]
    fn fink_conditions_evaluate() {
        let e = Engine::new(ExprLimits::unlimited());
        let s = schema();
        let sql = "(candidate.magnr - candidate.magpsf) < -4 * (LOG10(candidate.distnr) + 0.2) AND objectId <> 'x'";
        let expr = e.parse(sql, &s, "where").unwrap();
        assert_eq!(
            column_paths(&expr).into_iter().collect::<Vec<_>>(),
            vec!["candidate.distnr", "candidate.magnr", "candidate.magpsf", "objectId"]
        );
        let phys = e.compile_condition(&expr, &s, "where").unwrap();
        let keep = evaluate_condition(&phys, &batch(), "where").unwrap();
        // row 0: 10-19=-9 < -4*(log10(0.5)+0.2)=0.40 -> true; row 1: 5 < -4*(0.7+0.2) false;
        // row 2: -8 < -4*(-1+0.2)=3.2 -> true
        assert_eq!(keep, BooleanArray::from(vec![true, false, true]));
        let flat = flat_schema(&s);
        let f = flatten(&expr, &flat);
        assert_eq!(
            column_paths(&f).into_iter().collect::<Vec<_>>(),
            vec!["candidate.distnr", "candidate.magnr", "candidate.magpsf", "objectId"]
        );
        assert!(f.to_string().contains("candidate.magpsf"), "{f}");
    }

    #[test]
    fn bad_conditions_are_invalid_arguments() {
        let e = Engine::new(ExprLimits::unlimited());
        let s = schema();
        let err = |sql: &str| match e
            .parse(sql, &s, "where")
            .and_then(|x| e.compile_condition(&x, &s, "where"))
        {
            Err(Error::InvalidArgument(m)) => m,
            other => panic!("{sql}: {other:?}"),
        };
        assert!(err("candidate.magpsf >").contains("where"));
        assert!(err("candidate.nope > 1").to_lowercase().contains("nope"));
        assert!(
            err("objectid = 'x'").contains("objectid"),
            "identifiers are case-sensitive"
        );
        assert!(err("candidate.magpsf + 1").contains("not a condition"));
        assert!(err("candidate.magpsf > 'abc'").to_lowercase().contains("abc"));
    }

    #[test]
    fn statements_too_deep_or_with_huge_literals_are_refused_before_parsing() {
        assert!(check_shape("candidate.magpsf > 19.5 AND objectId IN ('a', 'b')", "where").is_ok());
        let chain = format!("1{}", " + 1".repeat(MAX_OPERATORS + 1));
        let e = check_shape(&chain, "the query").unwrap_err().to_string();
        assert!(e.contains("operators") && e.contains("20000"), "{e}");
        let ors = format!("a = 1{}", " OR a = 1".repeat(MAX_OPERATORS / 2 + 1));
        assert!(check_shape(&ors, "where").is_err());
        let literal = format!("SELECT '{}'", "x".repeat(100_000));
        let e = check_shape(&literal, "the query").unwrap_err().to_string();
        assert!(e.contains("literal of 100000 bytes"), "{e}");
        // Many small literals (a long IN list) are fine.
        let list = format!(
            "candid IN ({})",
            (0..20_000).map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
        );
        assert!(check_shape(&list, "where").is_ok());
    }

    #[test]
    fn words_of_class_expressions() {
        assert_eq!(
            words("CASE WHEN rf_snia_vs_nonia > 0.5 THEN 'SN candidate' ELSE cdsxmatch END"),
            vec!["CASE", "ELSE", "END", "THEN", "WHEN", "cdsxmatch", "rf_snia_vs_nonia"]
        );
        assert_eq!(words("candidate.magpsf"), vec!["candidate.magpsf"]);
    }
}
