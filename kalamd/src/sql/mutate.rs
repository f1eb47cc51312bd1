//! UPDATE and DELETE (sql.md §8.2–8.3). Both run under the commit lock from start to finish:
//! read the acting user's partition (buffer + Parquet, merged), evaluate the WHERE clause and
//! SET expressions with DataFusion on that batch, and write the new row versions with their
//! change-log records in one batch. Holding the lock throughout means no concurrent write can
//! slip between the read and the write (no lost updates).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::sql::eval::ExprEvaluator;
use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch};
use datafusion::common::DFSchema;
use datafusion::sql::sqlparser::ast::{
    AssignmentTarget, Delete, Expr, FromTable, ObjectName, Statement, TableFactor, TableWithJoins, Update,
};
use kalam_types::arrow::{build_array, table_schema};
use kalam_types::change::{ChangeKind, ChangeRecord};
use kalam_types::codec::{self, StoredRow};
use kalam_types::error::ErrorCode;
use kalam_types::ids::UserId;
use kalam_types::schema::{TableDefinition, TableType};
use kalam_types::{KalamType, Value};

use crate::engine::Engine;
use crate::error::EngineError;
use crate::read::{MergedRow, read_partition};
use crate::rowjson::full_row_json;
use crate::sql::parse::{TableRef, target_column_name};
use crate::store::{CommitGuard, counter_key, table_cf_name};

fn unsupported(what: &str) -> EngineError {
    EngineError::user(ErrorCode::UnsupportedStatement, format!("{what} is not supported"))
}

fn resolve(engine: &Engine, name: &ObjectName, acting: &UserId) -> Result<(Arc<TableDefinition>, UserId), EngineError> {
    crate::sql::resolve_table(engine, &TableRef::parse(name)?, acting)
}

fn single_table(t: &TableWithJoins) -> Result<&ObjectName, EngineError> {
    match &t.relation {
        TableFactor::Table { name, .. } if t.joins.is_empty() => Ok(name),
        _ => Err(unsupported("UPDATE/DELETE over joins or subqueries")),
    }
}

/// Executes an UPDATE as `user`; returns the number of rows matched and the table.
pub fn update<'a>(
    engine: &'a Engine,
    txn: Option<&mut CommitGuard<'a>>,
    stmt: &Statement,
    user: &UserId,
) -> Result<(u64, Arc<TableDefinition>), EngineError> {
    let (def, user, sets, selection) = parse_update(engine, stmt, user)?;
    let n = engine
        .store
        .commit_in(txn, |guard| apply(engine, guard, &def, &user, selection.as_ref(), Change::Update(&sets)))?;
    Ok((n, def))
}

/// Executes a DELETE (soft delete) as `user`; returns the number of rows deleted and the table.
pub fn delete<'a>(
    engine: &'a Engine,
    txn: Option<&mut CommitGuard<'a>>,
    stmt: &Statement,
    user: &UserId,
) -> Result<(u64, Arc<TableDefinition>), EngineError> {
    let (def, user, selection) = parse_delete(engine, stmt, user)?;
    let n =
        engine.store.commit_in(txn, |guard| apply(engine, guard, &def, &user, selection.as_ref(), Change::Delete))?;
    Ok((n, def))
}

type ParsedUpdate = (Arc<TableDefinition>, UserId, Vec<(usize, Expr)>, Option<Expr>);

fn parse_update(engine: &Engine, stmt: &Statement, acting: &UserId) -> Result<ParsedUpdate, EngineError> {
    let Statement::Update(Update { table, assignments, from, selection, returning, limit, .. }) = stmt else {
        return Err(EngineError::internal("update() called with another statement"));
    };
    if from.is_some() || returning.is_some() || limit.is_some() {
        return Err(unsupported("UPDATE ... FROM / RETURNING / LIMIT"));
    }
    let (def, user) = resolve(engine, single_table(table)?, acting)?;
    if def.table_type == TableType::Stream {
        return Err(EngineError::user(ErrorCode::InvalidOperation, "UPDATE is not supported on STREAM tables"));
    }
    let mut sets = Vec::with_capacity(assignments.len());
    for a in assignments {
        let AssignmentTarget::ColumnName(col) = &a.target else { return Err(unsupported("Tuple assignment")) };
        let name = target_column_name(col);
        if name.starts_with('_') {
            return Err(EngineError::user(
                ErrorCode::InvalidSql,
                format!("Column '{name}' is a system column and cannot be written"),
            ));
        }
        let idx = def
            .column_index(&name)
            .ok_or_else(|| EngineError::user(ErrorCode::ColumnNotFound, format!("column \"{name}\" does not exist")))?;
        if def.columns[idx].is_primary_key {
            return Err(EngineError::user(
                ErrorCode::InvalidOperation,
                format!("Cannot update primary key column '{name}'"),
            ));
        }
        if sets.iter().any(|(i, _)| *i == idx) {
            return Err(EngineError::user(
                ErrorCode::InvalidSql,
                format!("column \"{name}\" specified more than once"),
            ));
        }
        sets.push((idx, a.value.clone()));
    }
    Ok((def, user, sets, selection.clone()))
}

type ParsedDelete = (Arc<TableDefinition>, UserId, Option<Expr>);

fn parse_delete(engine: &Engine, stmt: &Statement, acting: &UserId) -> Result<ParsedDelete, EngineError> {
    let Statement::Delete(Delete { tables, from, using, selection, returning, limit, order_by, .. }) = stmt else {
        return Err(EngineError::internal("delete() called with another statement"));
    };
    if !tables.is_empty() || using.is_some() || returning.is_some() || limit.is_some() || !order_by.is_empty() {
        return Err(unsupported("DELETE ... USING / RETURNING / LIMIT / ORDER BY"));
    }
    let (FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from)) = from;
    let [table] = from.as_slice() else { return Err(unsupported("DELETE from several tables")) };
    let (def, user) = resolve(engine, single_table(table)?, acting)?;
    Ok((def, user, selection.clone()))
}

enum Change<'a> {
    Update(&'a [(usize, Expr)]),
    Delete,
}

/// Reads the rows an UPDATE/DELETE may touch (all versions, in key order), including those
/// written by earlier statements of the open transaction.
fn candidate_rows(
    engine: &Engine,
    guard: &CommitGuard<'_>,
    def: &TableDefinition,
    partition_user: Option<&UserId>,
    selection: Option<&Expr>,
) -> Result<Vec<MergedRow>, EngineError> {
    // `WHERE <pk> = <literal>` reads one key, not the partition (the predicate still runs below).
    let point = selection.and_then(|p| crate::sql::fast::primary_key_equality(def, p));
    let mut rows: BTreeMap<Vec<u8>, MergedRow> = match &point {
        Some(pk) if def.table_type != TableType::Stream => {
            crate::read::lookup_keys(engine, def, partition_user, std::slice::from_ref(pk))?
        }
        _ => {
            let pk_idx = def.primary_key_index();
            read_partition(engine, def, partition_user)?
                .into_iter()
                .filter_map(|r| codec::encode_pk(&r.values[pk_idx]).map(|pk| (pk, r)))
                .collect()
        }
    };
    if guard.is_transaction() && def.table_type != TableType::Stream {
        // Rows staged by this transaction are newer than anything stored.
        let cf_name = table_cf_name(def);
        let prefix = partition_user.map(codec::user_prefix).unwrap_or_default();
        let decoder = codec::RowDecoder::new(def);
        for (key, bytes) in guard.staged_rows(&cf_name, &prefix) {
            let pk = key[prefix.len()..].to_vec();
            if point.as_ref().is_some_and(|p| *p != pk) {
                continue;
            }
            let row = decoder.decode(bytes).map_err(|e| EngineError::corrupt("table", e))?;
            rows.insert(
                pk,
                MergedRow { values: row.values, updated_us: row.updated_us, deleted: row.deleted, buffered: true },
            );
        }
    }
    Ok(rows.into_values().filter(|r| !r.deleted).collect())
}

fn apply<'a>(
    engine: &'a Engine,
    guard: &mut CommitGuard<'a>,
    def: &TableDefinition,
    user: &UserId,
    selection: Option<&Expr>,
    change: Change<'_>,
) -> Result<u64, EngineError> {
    let partition_user = (def.table_type != TableType::Shared).then_some(user);
    engine.catalog.check_current(def)?;
    let rows = candidate_rows(engine, guard, def, partition_user, selection)?;
    if rows.is_empty() {
        return Ok(0);
    }
    let schema = Arc::new(table_schema(def, true));
    let mut arrays: Vec<ArrayRef> = def
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| build_array(c.data_type, rows.iter().map(|r| &r.values[i])))
        .collect();
    let updated: Vec<Value> = rows.iter().map(|r| Value::Timestamp(r.updated_us)).collect();
    let deleted: Vec<Value> = rows.iter().map(|r| Value::Boolean(r.deleted)).collect();
    arrays.push(build_array(KalamType::Timestamp, updated.iter()));
    arrays.push(build_array(KalamType::Boolean, deleted.iter()));
    let batch = RecordBatch::try_new(schema.clone(), arrays).map_err(EngineError::internal)?;
    let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
    let eval = ExprEvaluator::new(engine, user, crate::clock::wall_clock_us());

    let matched: Vec<usize> = match selection {
        None => (0..rows.len()).collect(),
        Some(pred) => {
            let mask = eval.evaluate(&df_schema, &batch, pred)?;
            let mask = mask
                .as_any()
                .downcast_ref::<BooleanArray>()
                .ok_or_else(|| EngineError::user(ErrorCode::InvalidSql, "WHERE must be a boolean condition"))?;
            (0..rows.len()).filter(|&i| mask.is_valid(i) && mask.value(i)).collect()
        }
    };
    if matched.is_empty() {
        return Ok(0);
    }

    // New values of every matched row.
    let mut new_values: Vec<Vec<Value>> = matched.iter().map(|&i| rows[i].values.clone()).collect();
    if let Change::Update(sets) = &change {
        for (col_idx, expr) in sets.iter() {
            let col = &def.columns[*col_idx];
            let computed = eval.evaluate(&df_schema, &batch, expr)?;
            for (slot, &row) in new_values.iter_mut().zip(&matched) {
                // The same rules as a literal written into the column (sql.md §2.2).
                let v = crate::sql::dml::written_value(&computed, row, col)?;
                if v.is_null() && !col.nullable {
                    return Err(EngineError::user(
                        ErrorCode::ConstraintViolation,
                        format!("NOT NULL violation: column '{}' cannot be null", col.name),
                    ));
                }
                slot[*col_idx] = v;
            }
        }
    }

    if def.table_type == TableType::Stream {
        return delete_stream_rows(engine, def, user, guard, &rows, &matched);
    }
    let cf_name = table_cf_name(def);
    let pk_idx = def.primary_key_index();
    let mut new_keys = 0i64;
    for (values, &row) in new_values.into_iter().zip(&matched) {
        let old = &rows[row];
        let pk = codec::encode_pk(&old.values[pk_idx]).ok_or_else(|| EngineError::internal("bad primary key"))?;
        let key = match partition_user {
            Some(u) => codec::user_row_key(u, &pk),
            None => pk,
        };
        if guard.get_row(&cf_name, &key)?.is_none() {
            new_keys += 1;
        }
        // Strictly newer than the version it replaces, whatever the wall clock did.
        let updated_us = engine.clock.next().max(old.updated_us.saturating_add(1));
        let (kind, stored, old_row, new_row) = match change {
            Change::Update(_) => {
                let stored = StoredRow { schema_version: def.schema_version, values, updated_us, deleted: false };
                let old_json = full_row_json(def, &old.values, old.updated_us, false);
                let new_json = full_row_json(def, &stored.values, updated_us, false);
                (ChangeKind::Update, stored, Some(old_json), Some(new_json))
            }
            Change::Delete => {
                let stored = StoredRow { schema_version: def.schema_version, values, updated_us, deleted: true };
                let gone = full_row_json(def, &stored.values, updated_us, true);
                (ChangeKind::Delete, stored, Some(gone), None)
            }
        };
        guard.put_row(&cf_name, key, codec::encode_row(&stored).map_err(EngineError::internal)?)?;
        guard.push_change(ChangeRecord::of(
            def,
            partition_user.map(|u| u.to_string()),
            kind,
            old_row,
            new_row,
            updated_us,
        ))?;
    }
    if new_keys > 0 {
        let (ns, table) = (def.namespace.as_str(), def.name.as_str());
        if let Some(u) = partition_user {
            guard.add_counter(&counter_key(ns, table, Some(u.as_str())), new_keys)?;
        }
        guard.add_counter(&counter_key(ns, table, None), new_keys)?;
    }
    Ok(matched.len() as u64)
}

/// STREAM DELETE: a hard delete from the memory buffer, with `delete` change records.
fn delete_stream_rows<'a>(
    engine: &'a Engine,
    def: &TableDefinition,
    user: &UserId,
    guard: &mut CommitGuard<'a>,
    rows: &[MergedRow],
    matched: &[usize],
) -> Result<u64, EngineError> {
    let pk_idx = def.primary_key_index();
    let mut keys = Vec::with_capacity(matched.len());
    for &i in matched {
        let row = &rows[i];
        keys.push(codec::encode_pk(&row.values[pk_idx]).ok_or_else(|| EngineError::internal("bad primary key"))?);
        let at = engine.clock.next();
        guard.push_transient_change(ChangeRecord::of(
            def,
            Some(user.to_string()),
            ChangeKind::Delete,
            Some(full_row_json(def, &row.values, row.updated_us, false)),
            None,
            at,
        ))?;
    }
    let (def, user) = (def.clone(), user.clone());
    guard.on_commit(move || engine.streams.delete(&def, &user, &keys));
    Ok(matched.len() as u64)
}
