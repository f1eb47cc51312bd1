//! INSERT: literal coercion, NOT NULL and primary-key checks, and one atomic write batch with
//! counters and change-log records.

use std::collections::HashSet;

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use datafusion::arrow::datatypes::Schema;
use datafusion::common::DFSchema;
use datafusion::sql::sqlparser::ast::{Expr, Ident, Insert, SelectItem, SetExpr, Statement, TableObject};
use kalam_types::KalamType;
use kalam_types::change::{ChangeKind, ChangeRecord};
use kalam_types::codec::{self, StoredRow};
use kalam_types::error::{ErrorCode, KalamError};
use kalam_types::ids::UserId;
use kalam_types::schema::{ColumnDefault, ColumnDefinition, TableDefinition, TableType};
use kalam_types::value::{Literal, Value};

use crate::engine::Engine;
use crate::error::EngineError;
use crate::rowjson::full_row_json;
use crate::sql::eval::ExprEvaluator;
use crate::sql::parse::{TableRef, literal, target_column_name};
use crate::store::{CommitGuard, counter_key, table_cf_name};

/// The SELECT of an `INSERT … SELECT`, if that is the statement's source.
pub fn select_source(stmt: &Statement) -> Option<Statement> {
    let Statement::Insert(ins) = stmt else { return None };
    let source = ins.source.as_ref()?;
    if matches!(source.body.as_ref(), SetExpr::Values(_)) {
        return None;
    }
    let mut query = source.clone();
    // Values are matched by position, not name: give every unnamed item a distinct name so
    // that `SELECT a, a` or `SELECT NULL, NULL` is not refused for repeating an expression.
    // Aliases the statement wrote stay (ORDER BY may use them).
    if let SetExpr::Select(select) = query.body.as_mut() {
        for (i, item) in select.projection.iter_mut().enumerate() {
            if let SelectItem::UnnamedExpr(expr) = item {
                let alias = Ident::new(format!("insert_value_{}", i + 1));
                *item = SelectItem::ExprWithAlias { expr: expr.clone(), alias };
            }
        }
    }
    Some(Statement::Query(query))
}

/// Executes an INSERT as `user`; returns the number of rows written and the table. `selected`
/// holds the rows of an `INSERT … SELECT` source, already computed.
pub fn insert<'a>(
    engine: &'a Engine,
    txn: Option<&mut CommitGuard<'a>>,
    stmt: &Statement,
    user: &UserId,
    selected: Option<Vec<RecordBatch>>,
) -> Result<(u64, Arc<TableDefinition>), EngineError> {
    let Statement::Insert(ins) = stmt else {
        return Err(EngineError::internal("insert() called with another statement"));
    };
    let (def, user) = target_table(engine, ins, user)?;
    let user = &user;
    let positions = column_positions(&def, ins)?;
    // NOW() is the same for every row of one statement.
    let statement_time = crate::clock::wall_clock_us();
    let given_rows = match selected {
        Some(batches) => selected_rows(&def, &positions, &batches)?,
        None => literal_rows(engine, &def, &positions, ins, user, statement_time)?,
    };
    let mut built = Vec::with_capacity(given_rows.len());
    for (mut values, given) in given_rows {
        for (idx, col) in def.columns.iter().enumerate() {
            if !given[idx]
                && let Some(default) = &col.default
            {
                values[idx] = default_value(engine, default, col.data_type, &col.name, user, statement_time)?;
            }
            if values[idx].is_null() && (!col.nullable || col.is_primary_key) {
                let suffix = if given[idx] || col.default.is_some() { "" } else { " and has no DEFAULT value" };
                return Err(EngineError::user(
                    ErrorCode::ConstraintViolation,
                    format!("NOT NULL violation: column '{}' cannot be null{suffix}", col.name),
                ));
            }
        }
        built.push(values);
    }
    Ok((write_inserts(engine, txn, &def, user, built)?, def))
}

/// Evaluates a column's DEFAULT for one row.
fn default_value(
    engine: &Engine,
    default: &ColumnDefault,
    ty: KalamType,
    column: &str,
    user: &UserId,
    statement_time: i64,
) -> Result<Value, EngineError> {
    Ok(match default {
        ColumnDefault::Literal(_) => default.literal_value(ty, column)?.unwrap_or(Value::Null),
        ColumnDefault::Now => Value::Timestamp(statement_time),
        ColumnDefault::SnowflakeId => Value::BigInt(engine.ids.snowflake()),
        ColumnDefault::UuidV7 => Value::Text(engine.ids.uuid_v7()),
        ColumnDefault::Ulid => Value::Text(engine.ids.ulid()),
        ColumnDefault::CurrentUser => Value::Text(user.to_string()),
    })
}

/// The INSERT's table and the user whose partition it writes.
fn target_table(engine: &Engine, ins: &Insert, acting: &UserId) -> Result<(Arc<TableDefinition>, UserId), EngineError> {
    let TableObject::TableName(name) = &ins.table else {
        return Err(EngineError::user(
            ErrorCode::UnsupportedStatement,
            "INSERT INTO a table function is not supported",
        ));
    };
    crate::sql::resolve_table(engine, &TableRef::parse(name)?, acting)
}

pub(crate) fn column_positions(def: &TableDefinition, ins: &Insert) -> Result<Vec<usize>, EngineError> {
    if ins.columns.is_empty() {
        return Ok((0..def.columns.len()).collect());
    }
    let mut seen = HashSet::new();
    ins.columns
        .iter()
        .map(|c| {
            let name = target_column_name(c);
            if name.starts_with('_') {
                return Err(EngineError::user(
                    ErrorCode::InvalidSql,
                    format!("Column '{name}' is a system column and cannot be written"),
                ));
            }
            let idx = def.column_index(&name).ok_or_else(|| {
                EngineError::user(ErrorCode::ColumnNotFound, format!("column \"{name}\" does not exist"))
            })?;
            if !seen.insert(idx) {
                return Err(EngineError::user(
                    ErrorCode::InvalidSql,
                    format!("column \"{name}\" specified more than once"),
                ));
            }
            Ok(idx)
        })
        .collect()
}

/// A row under construction: values in table order and which columns the statement gave.
type GivenRow = (Vec<Value>, Vec<bool>);

fn wrong_arity(got: usize, columns: usize) -> EngineError {
    EngineError::user(ErrorCode::InvalidSql, format!("INSERT has {got} values but {columns} columns"))
}

/// The rows of a VALUES list: literals are coerced directly, other expressions evaluated.
fn literal_rows(
    engine: &Engine,
    def: &TableDefinition,
    positions: &[usize],
    ins: &Insert,
    user: &UserId,
    statement_time: i64,
) -> Result<Vec<GivenRow>, EngineError> {
    let source = ins.source.as_ref().ok_or_else(|| EngineError::user(ErrorCode::InvalidSql, "INSERT needs VALUES"))?;
    let SetExpr::Values(values) = source.body.as_ref() else {
        return Err(EngineError::internal("INSERT ... SELECT reached the VALUES path"));
    };
    let mut evaluator: Option<ConstEvaluator> = None;
    let mut rows = Vec::with_capacity(values.rows.len());
    for exprs in &values.rows {
        if exprs.len() != positions.len() {
            return Err(wrong_arity(exprs.len(), positions.len()));
        }
        let mut row = vec![Value::Null; def.columns.len()];
        let mut given = vec![false; def.columns.len()];
        for (expr, &idx) in exprs.iter().zip(positions) {
            let col = &def.columns[idx];
            row[idx] = match literal(expr) {
                Ok(lit) => Value::coerce(&lit, col.data_type, &col.name)?,
                // Not a plain literal: evaluate it (DataFusion rejects column references).
                Err(_) => {
                    if evaluator.is_none() {
                        evaluator = Some(ConstEvaluator::new(engine, user, statement_time)?);
                    }
                    let eval = evaluator.as_ref().ok_or_else(|| EngineError::internal("evaluator"))?;
                    eval.value(expr, col.data_type, &col.name)?
                }
            };
            given[idx] = true;
        }
        rows.push((row, given));
    }
    Ok(rows)
}

/// The rows of an `INSERT … SELECT`: every result cell is written into its target column with
/// the same rules as a literal (sql.md §2.2), through its JSON encoding (§2.3), so a computed
/// 1.5 is refused by a BIGINT column rather than truncated.
fn selected_rows(
    def: &TableDefinition,
    positions: &[usize],
    batches: &[RecordBatch],
) -> Result<Vec<GivenRow>, EngineError> {
    let mut rows = Vec::new();
    for batch in batches {
        if batch.num_columns() != positions.len() {
            return Err(wrong_arity(batch.num_columns(), positions.len()));
        }
        for r in 0..batch.num_rows() {
            let mut row = vec![Value::Null; def.columns.len()];
            let mut given = vec![false; def.columns.len()];
            for (array, &idx) in batch.columns().iter().zip(positions) {
                row[idx] = written_value(array, r, &def.columns[idx])?;
                given[idx] = true;
            }
            rows.push((row, given));
        }
    }
    Ok(rows)
}

/// A computed cell written into `col`: converted with the literal rules of sql.md §2.2 through
/// its JSON encoding (§2.3), so a computed 1.5 is refused by a BIGINT column rather than
/// truncated and a '0x…' string becomes bytes, exactly as a literal would.
pub fn written_value(array: &ArrayRef, row: usize, col: &ColumnDefinition) -> Result<Value, EngineError> {
    let cell = crate::sql::query::cell_json(array, row)?;
    Ok(Value::coerce(&Literal::from_json(&cell), col.data_type, &col.name)?)
}

/// Evaluates row-independent expressions of a VALUES list (`upper('x')`, `NOW()`,
/// `SNOWFLAKE_ID()`, `1 + 2`, ...) with DataFusion, as the acting user.
struct ConstEvaluator {
    eval: ExprEvaluator,
    schema: DFSchema,
    one_row: RecordBatch,
}

impl ConstEvaluator {
    fn new(engine: &Engine, user: &UserId, statement_time: i64) -> Result<Self, EngineError> {
        let one_row = RecordBatch::try_new_with_options(
            Arc::new(Schema::empty()),
            vec![],
            &RecordBatchOptions::new().with_row_count(Some(1)),
        )
        .map_err(EngineError::internal)?;
        Ok(Self { eval: ExprEvaluator::new(engine, user, statement_time), schema: DFSchema::empty(), one_row })
    }

    fn value(&self, expr: &Expr, ty: KalamType, column: &str) -> Result<Value, EngineError> {
        let array = self.eval.evaluate(&self.schema, &self.one_row, expr)?;
        let cell = crate::sql::query::cell_json(&array, 0)?;
        Ok(Value::coerce(&Literal::from_json(&cell), ty, column)?)
    }
}

/// Writes new rows in one batch: duplicate keys (in the statement or among the live buffered
/// rows of the partition) fail the whole statement before anything is written. Inside a
/// transaction the rows join its batch (and earlier statements' rows count as existing).
fn write_inserts<'a>(
    engine: &'a Engine,
    txn: Option<&mut CommitGuard<'a>>,
    def: &Arc<TableDefinition>,
    user: &UserId,
    rows: Vec<Vec<Value>>,
) -> Result<u64, EngineError> {
    if def.table_type == TableType::Stream {
        return write_stream_inserts(engine, txn, def, user, rows);
    }
    let cf_name = table_cf_name(def);
    let pk_idx = def.primary_key_index();
    let decoder = codec::RowDecoder::new(def);
    let partition_user = (def.table_type != TableType::Shared).then_some(user);
    engine.store.commit_in(txn, |guard| {
        engine.catalog.check_current(def)?;
        // Keys of flushed rows count too. Only files whose key range covers a new key are read.
        let new_pks: Vec<Vec<u8>> = rows.iter().filter_map(|v| codec::encode_pk(&v[pk_idx])).collect();
        let entries = crate::read::manifest_entries(engine, def, partition_user)?;
        let cold = crate::read::lookup_cold(engine, def, &entries, &new_pks)?;
        let mut keys_in_statement = HashSet::new();
        let mut new_keys = 0i64;
        let mut pending = Vec::with_capacity(rows.len());
        for values in rows {
            let pk = codec::encode_pk(&values[pk_idx])
                .ok_or_else(|| EngineError::internal("primary key of a type that cannot be a key"))?;
            let key = match partition_user {
                Some(u) => codec::user_row_key(u, &pk),
                None => pk.clone(),
            };
            let duplicate = |v: &Value| {
                EngineError::User(KalamError::new(
                    ErrorCode::ConstraintViolation,
                    format!("Duplicate primary key value '{}' for table '{}'", v.display_key(), def.qualified_name()),
                ))
            };
            if !keys_in_statement.insert(key.clone()) {
                return Err(duplicate(&values[pk_idx]));
            }
            // The buffered version, when there is one, is newer than any flushed one.
            let previous = match guard.get_row(&cf_name, &key)? {
                Some(existing) => {
                    let row = decoder.decode(&existing).map_err(|e| EngineError::corrupt("table", e))?;
                    Some((row.deleted, row.updated_us))
                }
                None => {
                    new_keys += 1;
                    cold.get(&pk).map(|r| (r.deleted, r.updated_us))
                }
            };
            if previous.is_some_and(|(deleted, _)| !deleted) {
                return Err(duplicate(&values[pk_idx]));
            }
            // A new live row over a soft-deleted one must be the newer version.
            pending.push((key, values, previous.map(|(_, updated)| updated)));
        }
        let count = pending.len() as u64;
        for (key, values, previous) in pending {
            let updated_us = previous.map_or_else(|| engine.clock.next(), |p| engine.clock.next().max(p + 1));
            let row = StoredRow { schema_version: def.schema_version, values, updated_us, deleted: false };
            let bytes = codec::encode_row(&row).map_err(EngineError::internal)?;
            guard.put_row(&cf_name, key, bytes)?;
            guard.push_change(ChangeRecord::of(
                def,
                partition_user.map(|u| u.to_string()),
                ChangeKind::Insert,
                None,
                Some(full_row_json(def, &row.values, updated_us, false)),
                updated_us,
            ))?;
        }
        if new_keys > 0 {
            let ns = def.namespace.as_str();
            let table = def.name.as_str();
            if let Some(u) = partition_user {
                guard.add_counter(&counter_key(ns, table, Some(u.as_str())), new_keys)?;
            }
            guard.add_counter(&counter_key(ns, table, None), new_keys)?;
        }
        Ok(count)
    })
}

/// STREAM INSERT (storage.md §10): keys unique among the partition's retained rows; rows go to
/// the memory buffer and their change records to the in-memory log when the batch commits,
/// under the commit lock, so sequence order matches buffer order. EPHEMERAL tables keep nothing
/// for a user without a subscription on the table (the statement still reports the rows).
fn write_stream_inserts<'a>(
    engine: &'a Engine,
    txn: Option<&mut CommitGuard<'a>>,
    def: &Arc<TableDefinition>,
    user: &UserId,
    rows: Vec<Vec<Value>>,
) -> Result<u64, EngineError> {
    let count = rows.len() as u64;
    if def.options.ephemeral && !engine.has_subscriber_blocking(def, user) {
        return Ok(count);
    }
    let pk_idx = def.primary_key_index();
    let space = format!("stream:{}", table_cf_name(def));
    engine.store.commit_in(txn, |guard| {
        engine.catalog.check_current(def)?;
        let mut keys_in_statement = HashSet::new();
        let mut pending = Vec::with_capacity(rows.len());
        for values in rows {
            let pk = codec::encode_pk(&values[pk_idx])
                .ok_or_else(|| EngineError::internal("primary key of a type that cannot be a key"))?;
            if !keys_in_statement.insert(pk.clone())
                || engine.streams.contains(def, user, &pk)
                || !guard.claim(&space, codec::user_row_key(user, &pk))
            {
                return Err(EngineError::user(
                    ErrorCode::ConstraintViolation,
                    format!(
                        "Duplicate primary key value '{}' for table '{}'",
                        values[pk_idx].display_key(),
                        def.qualified_name()
                    ),
                ));
            }
            let at = engine.clock.next();
            guard.push_transient_change(ChangeRecord::of(
                def,
                Some(user.to_string()),
                ChangeKind::Insert,
                None,
                Some(full_row_json(def, &values, at, false)),
                at,
            ))?;
            pending.push((pk, values, at));
        }
        let (def, user) = (def.clone(), user.clone());
        guard.on_commit(move || engine.streams.insert(&def, &user, pending));
        Ok(count)
    })
}
