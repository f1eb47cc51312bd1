//! SHOW NAMESPACES, SHOW TABLES and DESCRIBE TABLE (sql.md §13).

use kalam_types::Value;
use kalam_types::error::{ErrorCode, KalamError};
use kalam_types::ids::UserId;
use serde_json::Value as Json;

use crate::engine::Engine;
use crate::error::EngineError;
use crate::rowjson::OrderedRow;
use crate::sql::StatementResult;
use crate::sql::system;

fn result(columns: &[&str], rows: Vec<Vec<Json>>, message: Option<String>) -> StatementResult {
    let columns: Vec<String> = columns.iter().map(|c| (*c).to_owned()).collect();
    let rows: Vec<OrderedRow> =
        rows.into_iter().map(|r| OrderedRow(columns.iter().cloned().zip(r).collect())).collect();
    StatementResult { row_count: rows.len() as u64, columns, rows: Some(rows), message, cache_hit: None }
}

fn ts(us: i64) -> Json {
    Value::Timestamp(us).to_json()
}

pub fn show_namespaces(engine: &Engine) -> StatementResult {
    // Same rows as system.namespaces: name, table_count, created_at.
    let rows = crate::sql::system::namespaces(engine)
        .rows
        .into_iter()
        .map(|r| [0, 2, 3].iter().map(|&i| r[i].to_json()).collect())
        .collect();
    result(&["name", "table_count", "created_at"], rows, None)
}

/// `SHOW TABLES [IN ns]`; `role_user` hides the shared tables a `user` principal may not read.
pub fn show_tables(engine: &Engine, namespace: Option<&str>, role_user: bool) -> Result<StatementResult, EngineError> {
    let columns = ["namespace_id", "table_name", "table_type", "created_at"];
    if let Some(ns) = namespace.filter(|ns| system::is_builtin_namespace(ns)) {
        let names: Vec<&str> =
            if ns == system::NAMESPACE { system::system_table_names().collect() } else { vec!["columns", "tables"] };
        let rows = names.into_iter().map(|t| vec![Json::from(ns), Json::from(t), Json::from("SYSTEM"), Json::Null]);
        return Ok(result(&columns, rows.collect(), None));
    }
    if let Some(ns) = namespace
        && !engine.catalog.namespace_exists(ns)
    {
        return Err(EngineError::User(KalamError::new(
            ErrorCode::NamespaceNotFound,
            format!("Namespace '{ns}' does not exist"),
        )));
    }
    let rows = engine
        .catalog
        .tables()
        .into_iter()
        .filter(|t| namespace.is_none_or(|ns| t.namespace.as_str() == ns))
        .filter(|t| !role_user || system::user_may_see_table(engine, t.namespace.as_str(), t.name.as_str()))
        .map(|t| {
            vec![
                Json::from(t.namespace.as_str()),
                Json::from(t.name.as_str()),
                Json::from(t.table_type.name()),
                ts(t.created_at_us),
            ]
        })
        .collect();
    Ok(result(&columns, rows, None))
}

pub fn describe(engine: &Engine, ns: &str, table: &str) -> Result<StatementResult, EngineError> {
    let def = engine.catalog.require_table(ns, table)?;
    let rows = system::column_rows(&def)
        .into_iter()
        .map(|(name, ordinal, ty, nullable, default, pk, is_system)| {
            vec![
                Json::from(name),
                Json::from(ordinal),
                Json::from(ty),
                Json::from(nullable),
                default.map(Json::from).unwrap_or(Json::Null),
                Json::from(pk),
                Json::from(is_system),
            ]
        })
        .collect();
    let message = format!(
        "Schema version: {}. History: SELECT * FROM system.table_schemas WHERE namespace_id = '{ns}' AND table_name = '{table}'",
        def.schema_version
    );
    Ok(result(
        &[
            "column_name",
            "ordinal_position",
            "data_type",
            "is_nullable",
            "column_default",
            "is_primary_key",
            "is_system",
        ],
        rows,
        Some(message),
    ))
}

/// `SHOW TABLE STATS` (sql.md §13). Every caller is privileged until roles exist, so the whole
/// table is counted.
/// `scope`: the partition a `user`-role caller may count (its own); `None` counts the whole
/// table (sql.md §13).
pub fn show_table_stats(
    engine: &Engine,
    ns: &str,
    table: &str,
    scope: Option<&UserId>,
) -> Result<StatementResult, EngineError> {
    let def = engine.catalog.require_table(ns, table)?;
    let st = crate::stats::table_stats(engine, &def, scope)?;
    let opt = |v: Option<u64>| v.map(Json::from).unwrap_or(Json::Null);
    let row = vec![
        Json::from(ns),
        Json::from(table),
        Json::from(def.table_type.name()),
        Json::from(def.schema_version),
        Json::from(st.buffered_rows),
        Json::from(st.flushed_rows),
        Json::from(st.buffered_rows + st.flushed_rows),
        Json::from(st.parquet_files),
        Json::from(st.storage_bytes),
        st.last_flush_at_us.map(ts).unwrap_or(Json::Null),
        opt(def.flush_policy.row_threshold),
        opt(def.flush_policy.interval_seconds),
        Json::from(def.options.flush_paused),
    ];
    Ok(result(
        &[
            "namespace_id",
            "table_name",
            "table_type",
            "schema_version",
            "buffered_rows",
            "flushed_rows",
            "total_rows",
            "parquet_files",
            "storage_bytes",
            "last_flush_at",
            "flush_row_threshold",
            "flush_interval_seconds",
            "flush_paused",
        ],
        vec![row],
        None,
    ))
}

/// `SHOW STORAGES` (sql.md §6): `local` first, then by name; credentials are never shown.
pub fn show_storages(engine: &Engine) -> Result<StatementResult, EngineError> {
    let rows = engine
        .storages()?
        .into_iter()
        .map(|s| {
            let count = engine.storage_table_count(&s.storage_id);
            let credentials = if s.credentials.is_some() { Json::from("***") } else { Json::Null };
            vec![
                Json::from(s.storage_id),
                Json::from(s.storage_name),
                Json::from(s.storage_type),
                Json::from(s.uri),
                s.description.map(Json::from).unwrap_or(Json::Null),
                credentials,
                Json::from(count),
            ]
        })
        .collect();
    Ok(result(
        &["storage_id", "storage_name", "storage_type", "uri", "description", "credentials", "table_count"],
        rows,
        None,
    ))
}
