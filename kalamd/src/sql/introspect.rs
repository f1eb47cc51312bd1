//! SHOW NAMESPACES, SHOW TABLES and DESCRIBE TABLE (sql.md §13).

use kalam_types::Value;
use kalam_types::error::{ErrorCode, KalamError};
use kalam_types::schema::{ColumnDefault, DELETED_COLUMN, TableType, UPDATED_COLUMN};
use serde_json::Value as Json;

use crate::engine::Engine;
use crate::error::EngineError;
use crate::rowjson::OrderedRow;
use crate::sql::StatementResult;

/// Built-in tables that `SHOW TABLES IN system` lists.
const SYSTEM_TABLES: [&str; 3] = ["jobs", "namespaces", "tables"];

fn result(columns: &[&str], rows: Vec<Vec<Json>>, message: Option<String>) -> StatementResult {
    let columns: Vec<String> = columns.iter().map(|c| (*c).to_owned()).collect();
    let rows: Vec<OrderedRow> =
        rows.into_iter().map(|r| OrderedRow(columns.iter().cloned().zip(r).collect())).collect();
    StatementResult { row_count: rows.len() as u64, columns, rows: Some(rows), message }
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

pub fn show_tables(engine: &Engine, namespace: Option<&str>) -> Result<StatementResult, EngineError> {
    let columns = ["namespace_id", "table_name", "table_type", "created_at"];
    if namespace == Some(crate::sql::system::NAMESPACE) {
        let rows =
            SYSTEM_TABLES.iter().map(|t| vec![Json::from("system"), Json::from(*t), Json::from("SYSTEM"), Json::Null]);
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

fn default_text(d: &ColumnDefault) -> String {
    match d {
        ColumnDefault::Literal(json) => match serde_json::from_str::<Json>(json) {
            Ok(Json::String(s)) => format!("'{}'", s.replace('\'', "''")),
            _ => json.clone(),
        },
        ColumnDefault::Now => "NOW()".into(),
        ColumnDefault::SnowflakeId => "SNOWFLAKE_ID()".into(),
        ColumnDefault::UuidV7 => "UUID_V7()".into(),
        ColumnDefault::Ulid => "ULID()".into(),
        ColumnDefault::CurrentUser => "CURRENT_USER()".into(),
    }
}

pub fn describe(engine: &Engine, ns: &str, table: &str) -> Result<StatementResult, EngineError> {
    let def = engine.catalog.require_table(ns, table)?;
    let mut rows: Vec<Vec<Json>> = def
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            vec![
                Json::from(c.name.clone()),
                Json::from(i + 1),
                Json::from(c.data_type.name()),
                Json::from(c.nullable && !c.is_primary_key),
                c.default.as_ref().map(|d| Json::from(default_text(d))).unwrap_or(Json::Null),
                Json::from(c.is_primary_key),
                Json::from(false),
            ]
        })
        .collect();
    if def.table_type != TableType::Stream {
        for (name, ty) in [(UPDATED_COLUMN, "TIMESTAMP"), (DELETED_COLUMN, "BOOLEAN")] {
            let ordinal = rows.len() + 1;
            rows.push(vec![
                Json::from(name),
                Json::from(ordinal),
                Json::from(ty),
                Json::from(false),
                Json::Null,
                Json::from(false),
                Json::from(true),
            ]);
        }
    }
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
