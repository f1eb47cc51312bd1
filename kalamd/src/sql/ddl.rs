//! CREATE TABLE, ALTER TABLE and ALTER NAMESPACE (sql.md §5, §7.1–7.2). Every definition change
//! goes through [`crate::catalog::Catalog::update_table`], which writes the definition and its
//! schema-history row in one batch under the commit lock.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{Expr, visit_expressions};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use kalam_types::KalamType;
use kalam_types::error::ErrorCode;
use kalam_types::schema::{
    ColumnDefinition, DELETED_COLUMN, FlushPolicy, SchemaVersion, TableDefinition, TableOptions, TableType,
    UPDATED_COLUMN,
};

use crate::clock::wall_clock_us;
use crate::engine::Engine;
use crate::error::EngineError;
use crate::sql::StatementResult;
use crate::sql::parse::{AlterTableOp, ColumnSpec, CreateTableSpec};

fn column_definition(c: ColumnSpec, column_id: u32) -> ColumnDefinition {
    ColumnDefinition {
        name: c.name,
        column_id,
        data_type: c.data_type,
        nullable: c.nullable,
        is_primary_key: c.is_primary_key,
        default: c.default,
    }
}

pub fn create_table(engine: &Engine, spec: CreateTableSpec) -> Result<StatementResult, EngineError> {
    let qualified = format!("{}.{}", spec.namespace, spec.name);
    if !engine.catalog.namespace_exists(spec.namespace.as_str()) {
        return Err(EngineError::user(
            ErrorCode::NamespaceNotFound,
            format!("Namespace '{}' does not exist. Create it first with CREATE NAMESPACE.", spec.namespace),
        ));
    }
    let o = spec.options;
    let stream = spec.table_type == TableType::Stream;
    let storage = if stream { None } else { Some(engine.require_storage(o.storage.as_deref().unwrap_or("local"))?) };
    let flush_policy = if stream {
        FlushPolicy { row_threshold: None, interval_seconds: None }
    } else if o.flush_row_threshold.is_none() && o.flush_interval_seconds.is_none() {
        FlushPolicy {
            row_threshold: Some(engine.cfg.flush.default_row_limit),
            interval_seconds: Some(engine.cfg.flush.default_time_interval),
        }
    } else {
        FlushPolicy { row_threshold: o.flush_row_threshold, interval_seconds: o.flush_interval_seconds }
    };
    let options = TableOptions {
        access: o.access.unwrap_or_default(),
        sharding: o.sharding.unwrap_or_default(),
        use_user_storage: o.use_user_storage.unwrap_or(false),
        deleted_retention_hours: o
            .deleted_retention_hours
            .unwrap_or(Some(engine.cfg.retention.default_deleted_retention_hours)),
        ttl_seconds: o.ttl_seconds.unwrap_or(engine.cfg.stream.default_ttl_seconds),
        max_buffer: o.max_buffer.unwrap_or(engine.cfg.stream.default_max_buffer),
        ephemeral: o.ephemeral.unwrap_or(false),
        flush_paused: false,
    };
    let now = wall_clock_us();
    let def = TableDefinition {
        namespace: spec.namespace,
        name: spec.name,
        table_type: spec.table_type,
        columns: spec.columns.into_iter().enumerate().map(|(i, c)| column_definition(c, i as u32 + 1)).collect(),
        schema_version: 1,
        storage_id: storage.as_ref().map(|s| s.storage_id.clone()).unwrap_or_default(),
        flush_policy,
        created_at_us: now,
        updated_at_us: now,
        options,
        history: Vec::new(),
    };
    let shared_dir = match (&storage, def.table_type) {
        (Some(s), TableType::Shared) if !s.is_s3() => {
            let (ns, t) = (def.namespace.as_str(), def.name.as_str());
            let dir = kalam_storage::group_dir(def.table_type, ns, t, None, def.options.sharding, &s.templates())
                .map_err(|e| EngineError::user(ErrorCode::InvalidOperation, e.to_string()))?;
            Some(engine.storage_dir(s).join(dir))
        }
        _ => None,
    };
    if engine.catalog.create_table(def)? {
        // SHARED tables get their storage directory at once (filesystem storages).
        if let Some(path) = shared_dir {
            std::fs::create_dir_all(&path).map_err(|e| EngineError::Store(crate::store::StoreError::Io(e)))?;
        }
        Ok(StatementResult::message(0, format!("Table '{qualified}' created successfully")))
    } else if spec.if_not_exists {
        Ok(StatementResult::message(0, format!("Table '{qualified}' already exists (skipped)")))
    } else {
        Err(EngineError::user(ErrorCode::AlreadyExists, format!("Table '{qualified}' already exists")))
    }
}

pub fn alter_namespace(
    engine: &Engine,
    name: &str,
    options: serde_json::Map<String, serde_json::Value>,
) -> Result<StatementResult, EngineError> {
    if engine.catalog.alter_namespace(name, options, wall_clock_us())? {
        Ok(StatementResult::message(0, format!("Namespace '{name}' updated successfully")))
    } else {
        Err(EngineError::user(ErrorCode::NamespaceNotFound, format!("Namespace '{name}' does not exist")))
    }
}

/// The subscriptions (as SQL text) that live on a table, for the column-reference check of
/// DROP/RENAME COLUMN.
pub type LiveQueries = Vec<String>;

/// How many of `queries` name `column` in their projection or WHERE clause.
fn queries_referencing(queries: &LiveQueries, column: &str) -> usize {
    queries
        .iter()
        .filter(|sql| {
            let Ok(statements) = Parser::parse_sql(&PostgreSqlDialect {}, sql) else { return false };
            let mut found = false;
            for stmt in &statements {
                let _ = visit_expressions(stmt, |e: &Expr| {
                    let id = match e {
                        Expr::Identifier(id) => Some(id),
                        Expr::CompoundIdentifier(parts) => parts.last(),
                        _ => None,
                    };
                    found |= id.is_some_and(|i| crate::sql::parse::ident_name(i) == column);
                    ControlFlow::<()>::Continue(())
                });
            }
            found
        })
        .count()
}

fn invalid(message: impl Into<String>) -> EngineError {
    EngineError::user(ErrorCode::InvalidOperation, message)
}

fn column_not_found(name: &str) -> EngineError {
    EngineError::user(ErrorCode::ColumnNotFound, format!("column \"{name}\" does not exist"))
}

fn check_not_system(name: &str) -> Result<(), EngineError> {
    if name == UPDATED_COLUMN || name == DELETED_COLUMN || name.starts_with('_') {
        return Err(EngineError::user(
            ErrorCode::InvalidSql,
            format!("Column '{name}' is a system column and cannot be written"),
        ));
    }
    Ok(())
}

/// Applies one ALTER TABLE operation. `live_queries` are the subscriptions on the table;
/// `has_null` answers whether any visible row holds NULL in a column (MODIFY … NOT NULL).
pub fn alter_table(
    engine: &Engine,
    ns: &str,
    table: &str,
    op: AlterTableOp,
    live_queries: &LiveQueries,
    has_null: impl FnOnce(&TableDefinition, usize) -> Result<bool, EngineError>,
) -> Result<StatementResult, EngineError> {
    let current = engine.catalog.require_table(ns, table)?;
    if current.table_type == TableType::Stream {
        return Err(invalid("ALTER TABLE is not supported on STREAM tables"));
    }
    let description = op.describe();
    let def = engine.catalog.update_table(ns, table, |cur| {
        let mut def = cur.clone();
        match op {
            AlterTableOp::Add(spec) => {
                check_not_system(&spec.name)?;
                if def.column_index(&spec.name).is_some() {
                    return Err(EngineError::user(
                        ErrorCode::AlreadyExists,
                        format!("Column '{}' already exists", spec.name),
                    ));
                }
                if !spec.nullable && spec.default.is_none() {
                    return Err(EngineError::user(
                        ErrorCode::InvalidSql,
                        format!("Cannot add NOT NULL column '{}' without a DEFAULT", spec.name),
                    ));
                }
                let id = def.next_column_id();
                def.columns.push(column_definition(spec, id));
            }
            AlterTableOp::Drop(name) => {
                check_not_system(&name)?;
                let idx = def.column_index(&name).ok_or_else(|| column_not_found(&name))?;
                if def.columns[idx].is_primary_key {
                    return Err(invalid(format!("Cannot drop primary key column '{name}'")));
                }
                if def.columns.len() == 1 {
                    return Err(invalid("Cannot drop the last column of a table"));
                }
                check_live_references(live_queries, &name)?;
                def.columns.remove(idx);
            }
            AlterTableOp::Rename { from, to } => {
                check_not_system(&from)?;
                check_not_system(&to)?;
                if !kalam_types::ids::is_valid_name(&to) {
                    return Err(EngineError::user(
                        ErrorCode::InvalidSql,
                        format!("Invalid column name '{to}': names must match ^[a-z][a-z0-9_]{{0,63}}$"),
                    ));
                }
                let idx = def.column_index(&from).ok_or_else(|| column_not_found(&from))?;
                if def.columns[idx].is_primary_key {
                    return Err(invalid(format!("Cannot rename primary key column '{from}'")));
                }
                if def.column_index(&to).is_some() {
                    return Err(EngineError::user(ErrorCode::AlreadyExists, format!("Column '{to}' already exists")));
                }
                check_live_references(live_queries, &from)?;
                def.columns[idx].name = to;
            }
            AlterTableOp::Modify { column, data_type, nullable } => {
                check_not_system(&column)?;
                let idx = def.column_index(&column).ok_or_else(|| column_not_found(&column))?;
                let col = &def.columns[idx];
                if col.is_primary_key {
                    return Err(invalid(format!("Cannot modify primary key column '{column}'")));
                }
                let widening = col.data_type == KalamType::Int && data_type == KalamType::BigInt;
                if col.data_type != data_type && !widening {
                    return Err(EngineError::user(
                        ErrorCode::TypeError,
                        format!("Incompatible type change for column '{column}': {} → {data_type}", col.data_type),
                    ));
                }
                // Checked under the commit lock, so no write can add a NULL after the check.
                if nullable == Some(false) && col.nullable && has_null(cur, idx)? {
                    return Err(EngineError::user(
                        ErrorCode::ConstraintViolation,
                        format!("Cannot make column '{column}' NOT NULL: some rows hold NULL"),
                    ));
                }
                let col = &mut def.columns[idx];
                col.data_type = data_type;
                if let Some(n) = nullable {
                    col.nullable = n;
                }
            }
        }
        def.history.push(SchemaVersion { version: cur.schema_version, columns: cur.columns.clone() });
        def.schema_version = cur.schema_version + 1;
        def.updated_at_us = wall_clock_us();
        Ok((def, Some(description)))
    })?;
    tracing::info!(table = %def.qualified_name(), version = def.schema_version, "table altered");
    Ok(StatementResult::message(
        0,
        format!("Table '{}' altered. Schema version is now {}.", def.qualified_name(), def.schema_version),
    ))
}

fn check_live_references(live_queries: &LiveQueries, column: &str) -> Result<(), EngineError> {
    let n = queries_referencing(live_queries, column);
    if n > 0 {
        return Err(EngineError::user(
            ErrorCode::DependencyExists,
            format!("Column '{column}' is referenced by {n} active live query subscription(s)"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_query_references_are_found_in_projection_and_filter() {
        let queries = vec![
            "SELECT id, body FROM app.t WHERE conversation_id = 'c1'".to_owned(),
            "SELECT * FROM app.t".to_owned(),
            "SELECT * FROM app.t WHERE \"Body\" = 'x'".to_owned(),
        ];
        assert_eq!(queries_referencing(&queries, "conversation_id"), 1);
        assert_eq!(queries_referencing(&queries, "body"), 1);
        assert_eq!(queries_referencing(&queries, "other"), 0);
    }
}
