//! kalam-filter: the row filter of a live query (api.md §4.5).
//!
//! In: a table definition and a WHERE predicate as SQL text. Out: a [`RowFilter`] compiled
//! once through DataFusion and evaluated on batches of changed rows (JSON objects in the
//! encoding of sql.md §2.3, as the change log carries them). kalamd compiles the same way to
//! validate a subscription, so a predicate means exactly what it means in a SELECT. Only
//! row-local expressions are accepted: aggregates, window functions and subqueries are
//! `UNSUPPORTED_QUERY`.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch, RecordBatchOptions};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::DFSchema;
use datafusion::common::tree_node::TreeNode;
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::{SessionConfig, SessionContext};
use kalam_types::arrow::{build_array, table_schema};
use kalam_types::error::{ErrorCode, KalamError};
use kalam_types::schema::{DELETED_COLUMN, TableDefinition, UPDATED_COLUMN};
use kalam_types::value::Literal;
use kalam_types::{KalamType, Value};
use serde_json::{Map, Value as Json};

/// A changed row as the change log carries it.
pub type JsonRow = Map<String, Json>;

/// A compiled WHERE predicate over one table definition (no predicate: every row matches).
pub struct RowFilter {
    /// Column names and types of the batch the predicate reads (user columns, then
    /// `_updated`, `_deleted`).
    columns: Vec<(String, KalamType)>,
    schema: SchemaRef,
    expr: Option<Arc<dyn PhysicalExpr>>,
}

impl std::fmt::Debug for RowFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RowFilter").field("expr", &self.expr.as_ref().map(|e| e.to_string())).finish()
    }
}

fn error(code: ErrorCode, message: impl Into<String>) -> KalamError {
    KalamError::new(code, message.into())
}

/// The error a DataFusion planning failure means to the client.
fn planning_error(e: datafusion::error::DataFusionError) -> KalamError {
    let text = e.strip_backtrace();
    if text.contains("No field named") {
        error(ErrorCode::ColumnNotFound, text)
    } else {
        error(ErrorCode::InvalidSql, text)
    }
}

impl RowFilter {
    /// Compiles `predicate` (SQL text) against `def`'s columns plus `_updated` and `_deleted`.
    pub fn compile(def: &TableDefinition, predicate: Option<&str>) -> Result<RowFilter, KalamError> {
        let mut columns: Vec<(String, KalamType)> = def.columns.iter().map(|c| (c.name.clone(), c.data_type)).collect();
        columns.push((UPDATED_COLUMN.to_owned(), KalamType::Timestamp));
        columns.push((DELETED_COLUMN.to_owned(), KalamType::Boolean));
        let schema: SchemaRef = Arc::new(table_schema(def, true));
        let Some(predicate) = predicate else { return Ok(RowFilter { columns, schema, expr: None }) };
        let config = SessionConfig::new().set_str("datafusion.sql_parser.dialect", "PostgreSQL");
        let ctx = SessionContext::new_with_config(config);
        let df_schema = DFSchema::try_from(schema.as_ref().clone()).map_err(planning_error)?;
        let logical = ctx.parse_sql_expr(predicate, &df_schema).map_err(planning_error)?;
        reject_non_row_local(&logical)?;
        let expr = ctx.create_physical_expr(logical, &df_schema).map_err(planning_error)?;
        match expr.data_type(&schema).map_err(planning_error)? {
            DataType::Boolean | DataType::Null => {}
            other => {
                return Err(error(
                    ErrorCode::InvalidSql,
                    format!("The WHERE clause of a live query must be a boolean expression, not {other}"),
                ));
            }
        }
        Ok(RowFilter { columns, schema, expr: Some(expr) })
    }

    /// True when there is a predicate at all.
    pub fn is_filtered(&self) -> bool {
        self.expr.is_some()
    }

    /// For each row: present and matching the predicate (NULL counts as no match). Rows whose
    /// values cannot be read as the compiled column types (a column retyped since) read NULL
    /// there.
    pub fn matches(&self, rows: &[Option<&JsonRow>]) -> Vec<bool> {
        let Some(expr) = &self.expr else { return rows.iter().map(Option::is_some).collect() };
        if rows.iter().all(Option::is_none) {
            return vec![false; rows.len()];
        }
        let batch = self.batch(rows);
        let result = expr.evaluate(&batch).and_then(|v| v.into_array(rows.len()));
        match result {
            Ok(array) if array.data_type() == &DataType::Boolean => {
                let bools = array.as_boolean();
                rows.iter().enumerate().map(|(i, r)| r.is_some() && bools.is_valid(i) && bools.value(i)).collect()
            }
            // NULL-typed result (e.g. `WHERE NULL`): nothing matches.
            Ok(_) => vec![false; rows.len()],
            Err(e) => {
                // A runtime failure (e.g. a division by zero in the predicate) rejects the rows
                // one by one, so one bad row does not hide the others.
                if rows.len() > 1 {
                    return rows.iter().flat_map(|r| self.matches(std::slice::from_ref(r))).collect();
                }
                let _ = e;
                vec![false; rows.len()]
            }
        }
    }

    fn batch(&self, rows: &[Option<&JsonRow>]) -> RecordBatch {
        let arrays: Vec<ArrayRef> = self
            .columns
            .iter()
            .map(|(name, ty)| {
                let values: Vec<Value> = rows
                    .iter()
                    .map(|r| {
                        let Some(json) = r.and_then(|r| r.get(name)) else { return Value::Null };
                        Value::coerce(&Literal::from_json(json), *ty, name).unwrap_or(Value::Null)
                    })
                    .collect();
                build_array(*ty, values.iter())
            })
            .collect();
        let options = RecordBatchOptions::new().with_row_count(Some(rows.len()));
        // Absent rows hold NULL in non-nullable fields; the schema used for the batch is
        // therefore relaxed to all-nullable.
        let relaxed = Arc::new(datafusion::arrow::datatypes::Schema::new(
            self.schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect::<Vec<_>>(),
        ));
        RecordBatch::try_new_with_options(relaxed, arrays, &options)
            .expect("arrays are built from the schema's own column types")
    }
}

/// Refuses aggregates, window functions and subqueries (api.md §4.5).
fn reject_non_row_local(expr: &Expr) -> Result<(), KalamError> {
    let mut found: Option<&'static str> = None;
    let _ = expr.apply(|e| {
        found = match e {
            Expr::AggregateFunction(_) => Some("aggregate functions"),
            Expr::WindowFunction(_) => Some("window functions"),
            Expr::ScalarSubquery(_) | Expr::Exists(_) | Expr::InSubquery(_) => Some("subqueries"),
            _ => None,
        };
        Ok(if found.is_some() {
            datafusion::common::tree_node::TreeNodeRecursion::Stop
        } else {
            datafusion::common::tree_node::TreeNodeRecursion::Continue
        })
    });
    match found {
        Some(what) => Err(error(ErrorCode::UnsupportedQuery, format!("Live queries cannot use {what}"))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use kalam_types::ids::{NamespaceId, TableName};
    use kalam_types::schema::{ColumnDefinition, FlushPolicy, TableOptions, TableType};

    use super::*;

    fn def() -> TableDefinition {
        let column = |(i, (name, ty)): (usize, (&str, KalamType))| ColumnDefinition {
            name: name.into(),
            column_id: i as u32 + 1,
            data_type: ty,
            nullable: i > 0,
            is_primary_key: i == 0,
            default: None,
        };
        TableDefinition {
            namespace: NamespaceId::parse("app").unwrap(),
            name: TableName::parse("t").unwrap(),
            table_type: TableType::User,
            columns: [("id", KalamType::BigInt), ("room", KalamType::Text), ("n", KalamType::Int)]
                .into_iter()
                .enumerate()
                .map(column)
                .collect(),
            schema_version: 1,
            storage_id: String::new(),
            flush_policy: FlushPolicy { row_threshold: None, interval_seconds: None },
            created_at_us: 0,
            updated_at_us: 0,
            options: TableOptions::default(),
            history: vec![],
        }
    }

    fn row(v: Json) -> JsonRow {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn predicates_match_like_sql() {
        let rows = [
            row(
                serde_json::json!({"id": 1, "room": "a", "n": 5, "_updated": "2025-01-01T00:00:00.000000Z", "_deleted": false}),
            ),
            row(
                serde_json::json!({"id": 2, "room": "b", "n": null, "_updated": "2025-01-02T00:00:00.000000Z", "_deleted": false}),
            ),
            row(
                serde_json::json!({"id": 3, "room": "ab", "n": 7, "_updated": "2025-01-03T00:00:00.000000Z", "_deleted": false}),
            ),
        ];
        let refs: Vec<Option<&JsonRow>> = rows.iter().map(Some).chain([None]).collect();
        let cases = [
            ("room = 'a'", vec![true, false, false, false]),
            ("n > 5 OR room LIKE 'b%'", vec![false, true, true, false]),
            ("n IS NULL", vec![false, true, false, false]),
            ("id IN (1, 3) AND NOT (room = 'a')", vec![false, false, true, false]),
            ("upper(room) = 'AB'", vec![false, false, true, false]),
            ("_updated > '2025-01-01T12:00:00Z'", vec![false, true, true, false]),
            ("n / 0 > 1", vec![false, false, false, false]),
        ];
        for (predicate, expected) in cases {
            let f = RowFilter::compile(&def(), Some(predicate)).unwrap();
            assert_eq!(f.matches(&refs), expected, "{predicate}");
        }
        let all = RowFilter::compile(&def(), None).unwrap();
        assert_eq!(all.matches(&refs), vec![true, true, true, false]);
    }

    #[test]
    fn non_row_local_or_invalid_predicates_are_refused() {
        for (predicate, code) in [
            ("count(id) > 1", ErrorCode::UnsupportedQuery),
            ("nope = 1", ErrorCode::ColumnNotFound),
            ("id +", ErrorCode::InvalidSql),
            ("id + 1", ErrorCode::InvalidSql),
        ] {
            let e = RowFilter::compile(&def(), Some(predicate)).unwrap_err();
            assert_eq!(e.code, code, "{predicate}: {e}");
        }
    }
}
