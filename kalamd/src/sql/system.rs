//! Built-in `system.*` tables, materialised from RocksDB when a statement names them
//! (system-tables.md). Each is a list of typed columns and rows of values.

use std::sync::Arc;

use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use kalam_types::arrow::{arrow_type, build_array};
use kalam_types::error::{ErrorCode, KalamError};
use kalam_types::schema::TableType;
use kalam_types::{KalamType, Value};

use crate::engine::Engine;
use crate::error::EngineError;

pub const NAMESPACE: &str = "system";

/// A materialised system table.
pub struct SystemTable {
    pub columns: Vec<(&'static str, KalamType)>,
    pub rows: Vec<Vec<Value>>,
}

impl SystemTable {
    pub fn into_batch(self) -> Result<(SchemaRef, RecordBatch), EngineError> {
        let schema: SchemaRef = Arc::new(Schema::new(
            self.columns.iter().map(|(n, t)| Field::new(*n, arrow_type(*t), true)).collect::<Vec<_>>(),
        ));
        let arrays = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, (_, t))| build_array(*t, self.rows.iter().map(|r| &r[i])))
            .collect();
        let batch = RecordBatch::try_new(schema.clone(), arrays).map_err(EngineError::internal)?;
        Ok((schema, batch))
    }
}

/// Builds one system table by name.
pub fn table(engine: &Engine, name: &str) -> Result<(SchemaRef, RecordBatch), EngineError> {
    match name {
        "jobs" => jobs(engine)?,
        "namespaces" => namespaces(engine),
        "tables" => tables(engine),
        _ => {
            return Err(EngineError::User(KalamError::new(
                ErrorCode::TableNotFound,
                format!("relation \"system.{name}\" does not exist"),
            )));
        }
    }
    .into_batch()
}

fn text(v: impl Into<String>) -> Value {
    Value::Text(v.into())
}

fn opt_text(v: &Option<String>) -> Value {
    v.clone().map(Value::Text).unwrap_or(Value::Null)
}

fn opt_ts(v: Option<i64>) -> Value {
    v.map(Value::Timestamp).unwrap_or(Value::Null)
}

fn opt_bigint(v: Option<u64>) -> Value {
    v.map(|n| Value::BigInt(n as i64)).unwrap_or(Value::Null)
}

fn jobs(engine: &Engine) -> Result<SystemTable, EngineError> {
    use KalamType::*;
    let rows = engine
        .jobs()?
        .into_iter()
        .map(|j| {
            vec![
                text(&j.job_id),
                text(&j.job_type),
                text(&j.status),
                text(&j.namespace_id),
                text(format!("{}.{}", j.namespace_id, j.table_name)),
                Value::Int(j.attempts as i32),
                opt_text(&j.result).and_json(),
                opt_text(&j.error_message),
                text(&engine.cfg.server.node_id),
                Value::Timestamp(j.created_at_us),
                opt_ts(j.started_at_us),
                opt_ts(j.completed_at_us),
            ]
        })
        .collect();
    Ok(SystemTable {
        columns: vec![
            ("job_id", Text),
            ("job_type", Text),
            ("status", Text),
            ("namespace_id", Text),
            ("table_name", Text),
            ("attempts", Int),
            ("result", Json),
            ("error_message", Text),
            ("node_id", Text),
            ("created_at", Timestamp),
            ("started_at", Timestamp),
            ("completed_at", Timestamp),
        ],
        rows,
    })
}

trait AsJson {
    fn and_json(self) -> Value;
}

impl AsJson for Value {
    /// TEXT holding JSON, typed as JSON.
    fn and_json(self) -> Value {
        match self {
            Value::Text(s) => Value::Json(s),
            other => other,
        }
    }
}

pub fn namespaces(engine: &Engine) -> SystemTable {
    use KalamType::*;
    let rows = engine
        .catalog
        .namespaces()
        .into_iter()
        .map(|ns| {
            let count = engine.catalog.table_count(&ns.name);
            vec![
                text(&ns.name),
                Value::Json("{}".into()),
                Value::Int(count as i32),
                Value::Timestamp(ns.created_at_us),
                Value::Timestamp(ns.created_at_us),
            ]
        })
        .collect();
    SystemTable {
        columns: vec![
            ("namespace_id", Text),
            ("options", Json),
            ("table_count", Int),
            ("created_at", Timestamp),
            ("updated_at", Timestamp),
        ],
        rows,
    }
}

fn tables(engine: &Engine) -> SystemTable {
    use KalamType::*;
    let rows = engine
        .catalog
        .tables()
        .into_iter()
        .map(|t| {
            let user = t.table_type == TableType::User;
            let shared = t.table_type == TableType::Shared;
            vec![
                text(format!("{}:{}", t.namespace, t.name)),
                text(t.namespace.as_str()),
                text(t.name.as_str()),
                text(t.table_type.name()),
                Value::Int(t.schema_version as i32),
                text(&t.columns[t.primary_key_index()].name),
                text(&t.storage_id),
                Value::Boolean(false),
                if shared { text("public") } else { Value::Null },
                opt_bigint(t.flush_policy.row_threshold),
                opt_bigint(t.flush_policy.interval_seconds),
                if user { text("none") } else { Value::Null },
                Value::Boolean(false),
                Value::Timestamp(t.created_at_us),
                Value::Timestamp(t.created_at_us),
            ]
        })
        .collect();
    SystemTable {
        columns: vec![
            ("table_id", Text),
            ("namespace_id", Text),
            ("table_name", Text),
            ("table_type", Text),
            ("schema_version", Int),
            ("primary_key", Text),
            ("storage_id", Text),
            ("use_user_storage", Boolean),
            ("access", Text),
            ("flush_row_threshold", BigInt),
            ("flush_interval_seconds", BigInt),
            ("sharding", Text),
            ("flush_paused", Boolean),
            ("created_at", Timestamp),
            ("updated_at", Timestamp),
        ],
        rows,
    }
}
