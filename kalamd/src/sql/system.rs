//! Built-in `system.*` tables, materialised from RocksDB when a statement names them.

use std::sync::Arc;

use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use kalam_types::arrow::build_array;
use kalam_types::error::{ErrorCode, KalamError};
use kalam_types::{KalamType, Value};

use crate::engine::Engine;
use crate::error::EngineError;

pub const NAMESPACE: &str = "system";

/// Builds one system table.
pub fn table(engine: &Engine, name: &str) -> Result<(SchemaRef, RecordBatch), EngineError> {
    match name {
        "jobs" => jobs(engine),
        _ => Err(EngineError::User(KalamError::new(
            ErrorCode::TableNotFound,
            format!("relation \"system.{name}\" does not exist"),
        ))),
    }
}

/// Reads one column's value from a record.
type Getter<T> = Box<dyn Fn(&T) -> Value>;

fn text(v: &Option<String>) -> Value {
    v.clone().map(Value::Text).unwrap_or(Value::Null)
}

fn ts(v: Option<i64>) -> Value {
    v.map(Value::Timestamp).unwrap_or(Value::Null)
}

fn jobs(engine: &Engine) -> Result<(SchemaRef, RecordBatch), EngineError> {
    let jobs = engine.jobs()?;
    let columns: [(&str, KalamType, Getter<crate::flush::JobRecord>); 11] = [
        ("job_id", KalamType::Text, Box::new(|j| Value::Text(j.job_id.clone()))),
        ("job_type", KalamType::Text, Box::new(|j| Value::Text(j.job_type.clone()))),
        ("namespace_id", KalamType::Text, Box::new(|j| Value::Text(j.namespace_id.clone()))),
        ("table_name", KalamType::Text, Box::new(|j| Value::Text(j.table_name.clone()))),
        ("status", KalamType::Text, Box::new(|j| Value::Text(j.status.clone()))),
        ("attempts", KalamType::BigInt, Box::new(|j| Value::BigInt(j.attempts.into()))),
        ("created_at", KalamType::Timestamp, Box::new(|j| Value::Timestamp(j.created_at_us))),
        ("started_at", KalamType::Timestamp, Box::new(|j| ts(j.started_at_us))),
        ("completed_at", KalamType::Timestamp, Box::new(|j| ts(j.completed_at_us))),
        ("error_message", KalamType::Text, Box::new(|j| text(&j.error_message))),
        ("result", KalamType::Json, Box::new(|j| text(&j.result))),
    ];
    let schema: SchemaRef = Arc::new(Schema::new(
        columns.iter().map(|(n, t, _)| Field::new(*n, kalam_types::arrow::arrow_type(*t), true)).collect::<Vec<_>>(),
    ));
    let arrays = columns
        .iter()
        .map(|(_, t, get)| {
            let values: Vec<Value> = jobs
                .iter()
                .map(|j| match get(j) {
                    Value::Text(s) if *t == KalamType::Json => Value::Json(s),
                    v => v,
                })
                .collect();
            build_array(*t, values.iter())
        })
        .collect();
    let batch = RecordBatch::try_new(schema.clone(), arrays).map_err(EngineError::internal)?;
    Ok((schema, batch))
}
