//! Built-in `system.*` and `information_schema.*` tables (system-tables.md), materialised when a
//! statement names them. kalamd's own tables are views over its RocksDB state;
//! `system.live_queries` and `system.processes` are filled by asking kalam-lived and
//! kalam-supervisor over RPC.

use std::sync::Arc;

use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use kalam_types::arrow::{arrow_type, build_array};
use kalam_types::error::{ErrorCode, KalamError};
use kalam_types::schema::{ColumnDefault, DELETED_COLUMN, TableDefinition, TableType, UPDATED_COLUMN};
use kalam_types::{KalamType, Value};

use crate::engine::Engine;
use crate::error::EngineError;
use crate::flush::JobRecord;

pub const NAMESPACE: &str = "system";
pub const INFORMATION_SCHEMA: &str = "information_schema";

/// The built-in tables of `system` with their columns, by name.
pub const SYSTEM_TABLES: [(&str, &[(&str, KalamType)]); 10] = [
    ("flush_status", &FLUSH_STATUS_COLUMNS),
    ("jobs", &JOBS_COLUMNS),
    ("live_queries", &LIVE_QUERY_COLUMNS),
    ("namespaces", &NAMESPACES_COLUMNS),
    ("processes", &PROCESS_COLUMNS),
    ("storages", &STORAGES_COLUMNS),
    ("table_options", &TABLE_OPTIONS_COLUMNS),
    ("table_schemas", &TABLE_SCHEMAS_COLUMNS),
    ("tables", &TABLES_COLUMNS),
    ("users", &USERS_COLUMNS),
];

/// The names of the built-in `system` tables.
pub fn system_table_names() -> impl Iterator<Item = &'static str> {
    SYSTEM_TABLES.iter().map(|(name, _)| *name)
}

/// True for `system.*` and `information_schema.*` names (existing or not).
pub fn is_builtin_namespace(ns: &str) -> bool {
    ns == NAMESPACE || ns == INFORMATION_SCHEMA
}

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

fn not_found(ns: &str, name: &str) -> EngineError {
    EngineError::User(KalamError::new(ErrorCode::TableNotFound, format!("relation \"{ns}.{name}\" does not exist")))
}

/// Builds one built-in table by namespace and name.
pub async fn table(engine: &Arc<Engine>, ns: &str, name: &str) -> Result<(SchemaRef, RecordBatch), EngineError> {
    let table = match (ns, name) {
        (NAMESPACE, "live_queries") => live_queries(engine).await,
        (NAMESPACE, "processes") => processes(engine).await,
        (NAMESPACE, n) if system_table_names().any(|t| t == n) => {
            let (engine, n) = (engine.clone(), n.to_owned());
            tokio::task::spawn_blocking(move || blocking_table(&engine, &n)).await.map_err(EngineError::internal)??
        }
        (INFORMATION_SCHEMA, "tables") => information_schema_tables(engine),
        (INFORMATION_SCHEMA, "columns") => information_schema_columns(engine),
        _ => return Err(not_found(ns, name)),
    };
    table.into_batch()
}

fn blocking_table(engine: &Engine, name: &str) -> Result<SystemTable, EngineError> {
    Ok(match name {
        "jobs" => jobs(engine)?,
        "namespaces" => namespaces(engine),
        "tables" => tables(engine),
        "table_schemas" => table_schemas(engine)?,
        "table_options" => table_options(engine),
        "storages" => storages(engine),
        "users" => users(engine)?,
        "flush_status" => flush_status(engine)?,
        other => return Err(not_found(NAMESPACE, other)),
    })
}

fn text(v: impl Into<String>) -> Value {
    Value::Text(v.into())
}

fn opt_text(v: &Option<String>) -> Value {
    v.clone().map(Value::Text).unwrap_or(Value::Null)
}

fn opt_json(v: &Option<String>) -> Value {
    v.clone().map(Value::Json).unwrap_or(Value::Null)
}

fn opt_ts(v: Option<i64>) -> Value {
    v.map(Value::Timestamp).unwrap_or(Value::Null)
}

fn opt_bigint(v: Option<u64>) -> Value {
    v.map(|n| Value::BigInt(n as i64)).unwrap_or(Value::Null)
}

fn bigint(v: u64) -> Value {
    Value::BigInt(i64::try_from(v).unwrap_or(i64::MAX))
}

/// `NULL` unless the table is of one of `kinds`.
fn only(def: &TableDefinition, kinds: &[TableType], v: Value) -> Value {
    if kinds.contains(&def.table_type) { v } else { Value::Null }
}

fn jobs(engine: &Engine) -> Result<SystemTable, EngineError> {
    let rows = engine
        .jobs()?
        .into_iter()
        .map(|j: JobRecord| {
            let table_job = !j.table_name.is_empty();
            let parameters = table_job.then(|| {
                serde_json::json!([format!("namespace={}", j.namespace_id), format!("table={}", j.table_name)])
                    .to_string()
            });
            vec![
                text(&j.job_id),
                text(&j.job_type),
                text(&j.status),
                if table_job { text(&j.namespace_id) } else { Value::Null },
                if table_job { text(format!("{}.{}", j.namespace_id, j.table_name)) } else { Value::Null },
                Value::Null,
                opt_json(&parameters),
                opt_json(&j.result),
                opt_text(&j.error_message),
                Value::Int(j.attempts as i32),
                Value::Boolean(false),
                text(&engine.cfg.server.node_id),
                Value::Timestamp(j.created_at_us),
                opt_ts(j.started_at_us),
                opt_ts(j.completed_at_us),
            ]
        })
        .collect();
    Ok(SystemTable { columns: JOBS_COLUMNS.to_vec(), rows })
}

pub fn namespaces(engine: &Engine) -> SystemTable {
    let rows = engine
        .catalog
        .namespaces()
        .into_iter()
        .map(|ns| {
            let count = engine.catalog.table_count(&ns.name);
            vec![
                text(&ns.name),
                Value::Json(serde_json::Value::Object(ns.options.clone()).to_string()),
                Value::Int(count as i32),
                Value::Timestamp(ns.created_at_us),
                Value::Timestamp(ns.updated_at_us.max(ns.created_at_us)),
            ]
        })
        .collect();
    SystemTable { columns: NAMESPACES_COLUMNS.to_vec(), rows }
}

fn tables(engine: &Engine) -> SystemTable {
    use TableType::{Shared, Stream, User};
    let rows = engine
        .catalog
        .tables()
        .into_iter()
        .map(|t| {
            let o = &t.options;
            vec![
                text(format!("{}:{}", t.namespace, t.name)),
                text(t.namespace.as_str()),
                text(t.name.as_str()),
                text(t.table_type.name()),
                Value::Int(t.schema_version as i32),
                text(&t.columns[t.primary_key_index()].name),
                only(&t, &[User, Shared], text(&t.storage_id)),
                Value::Boolean(o.use_user_storage),
                only(&t, &[Shared], text(o.access.name())),
                opt_bigint(t.flush_policy.row_threshold),
                opt_bigint(t.flush_policy.interval_seconds),
                only(&t, &[User], text(o.sharding.name())),
                Value::Boolean(o.flush_paused),
                only(
                    &t,
                    &[User, Shared],
                    o.deleted_retention_hours.map(|h| Value::Int(h as i32)).unwrap_or(Value::Null),
                ),
                only(&t, &[Stream], bigint(o.ttl_seconds)),
                only(&t, &[Stream], bigint(o.max_buffer)),
                only(&t, &[Stream], Value::Boolean(o.ephemeral)),
                Value::Timestamp(t.created_at_us),
                Value::Timestamp(t.updated_at_us.max(t.created_at_us)),
            ]
        })
        .collect();
    SystemTable { columns: TABLES_COLUMNS.to_vec(), rows }
}

fn table_schemas(engine: &Engine) -> Result<SystemTable, EngineError> {
    let rows = engine
        .catalog
        .table_schemas()?
        .into_iter()
        .map(|s| {
            vec![
                text(format!("{}:{}:{}", s.namespace_id, s.table_name, s.version)),
                text(format!("{}:{}", s.namespace_id, s.table_name)),
                text(&s.namespace_id),
                text(&s.table_name),
                Value::Int(s.version as i32),
                Value::Json(s.arrow_schema.clone()),
                text(&s.changes),
                Value::Timestamp(s.created_at_us),
            ]
        })
        .collect();
    Ok(SystemTable { columns: TABLE_SCHEMAS_COLUMNS.to_vec(), rows })
}

/// `(key, value, value_type, description)` of every option that applies to the table.
fn options_of(def: &TableDefinition) -> Vec<(&'static str, Option<String>, &'static str, &'static str)> {
    let o = &def.options;
    let secs = |s: Option<u64>| s.map(|s| format!("{s}s"));
    match def.table_type {
        TableType::Stream => vec![
            ("ttl", secs(Some(o.ttl_seconds)), "duration", "Row lifetime"),
            ("max_buffer", Some(o.max_buffer.to_string()), "integer", "Most rows kept per user partition"),
            ("ephemeral", Some(o.ephemeral.to_string()), "boolean", "Drop rows for users without a subscription"),
        ],
        kind => {
            let mut v = vec![
                ("storage", Some(def.storage_id.clone()), "string", "Storage for Parquet files"),
                ("flush_interval", secs(def.flush_policy.interval_seconds), "duration", "Time flush trigger"),
                (
                    "flush_row_threshold",
                    def.flush_policy.row_threshold.map(|n| n.to_string()),
                    "integer",
                    "Row-count flush trigger",
                ),
                (
                    "deleted_retention",
                    Some(o.deleted_retention_hours.map_or("off".into(), |h| format!("{h}h"))),
                    "duration",
                    "How long soft-deleted rows are kept",
                ),
                ("flush_paused", Some(o.flush_paused.to_string()), "boolean", "Flushing paused by PAUSE FLUSH"),
            ];
            if kind == TableType::User {
                v.push(("sharding", Some(o.sharding.name()), "string", "Value of {shard} in user paths"));
                v.push((
                    "use_user_storage",
                    Some(o.use_user_storage.to_string()),
                    "boolean",
                    "Resolve the storage per user",
                ));
            } else {
                v.push(("access", Some(o.access.name().to_owned()), "string", "Visibility for non-privileged roles"));
            }
            v
        }
    }
}

fn table_options(engine: &Engine) -> SystemTable {
    let mut rows = Vec::new();
    for def in engine.catalog.tables() {
        for (key, value, value_type, description) in options_of(&def) {
            rows.push(vec![
                text(def.namespace.as_str()),
                text(def.name.as_str()),
                text(key),
                value.map(Value::Text).unwrap_or(Value::Null),
                text(value_type),
                text(description),
            ]);
        }
    }
    SystemTable { columns: TABLE_OPTIONS_COLUMNS.to_vec(), rows }
}

fn storages(engine: &Engine) -> SystemTable {
    let local = vec![
        text("local"),
        text("local"),
        text("Server data directory (storage.default_storage_path)"),
        text("filesystem"),
        text(""),
        Value::Null,
        text(kalam_storage::DEFAULT_SHARED_TEMPLATE),
        text(kalam_storage::DEFAULT_USER_TEMPLATE),
        Value::Timestamp(engine.started_at_us),
        Value::Timestamp(engine.started_at_us),
    ];
    SystemTable { columns: STORAGES_COLUMNS.to_vec(), rows: vec![local] }
}

fn users(engine: &Engine) -> Result<SystemTable, EngineError> {
    let rows = crate::users::list(&engine.store)?
        .into_iter()
        .map(|u| {
            vec![
                text(&u.user_id),
                text(&u.username),
                opt_text(&u.email),
                text(&u.role),
                u.apikey_sha256.as_ref().map(|_| text("***")).unwrap_or(Value::Null),
                opt_json(&u.metadata),
                text(&u.storage_mode),
                opt_text(&u.storage_id),
                Value::Timestamp(u.created_at_us),
                Value::Timestamp(u.updated_at_us),
                opt_ts(u.deleted_at_us),
            ]
        })
        .collect();
    Ok(SystemTable { columns: USERS_COLUMNS.to_vec(), rows })
}

fn flush_status(engine: &Engine) -> Result<SystemTable, EngineError> {
    let jobs = engine.jobs()?;
    let now = crate::clock::wall_clock_us();
    let mut rows = Vec::new();
    for def in engine.catalog.tables().into_iter().filter(|d| d.table_type != TableType::Stream) {
        let st = crate::stats::flush_status(engine, &def, &jobs)?;
        rows.push(vec![
            text(def.namespace.as_str()),
            text(def.name.as_str()),
            text(def.table_type.name()),
            bigint(st.buffered_rows),
            bigint(st.buffered_users),
            opt_ts(st.oldest_buffered_at_us),
            st.oldest_buffered_at_us.map(|t| Value::BigInt((now - t).max(0) / 1_000_000)).unwrap_or(Value::Null),
            bigint(st.flushed_rows_total),
            bigint(st.parquet_files),
            bigint(st.storage_bytes),
            opt_ts(st.last_flush_at_us),
            opt_text(&st.last_flush_job_id),
            opt_text(&st.last_flush_status),
            opt_text(&st.last_error),
            Value::Int(st.consecutive_failures as i32),
            opt_ts(st.next_scheduled_flush_at_us),
            Value::Boolean(def.options.flush_paused),
        ]);
    }
    Ok(SystemTable { columns: FLUSH_STATUS_COLUMNS.to_vec(), rows })
}

async fn live_queries(engine: &Engine) -> SystemTable {
    let subs = match kalam_rpc::transport::connect_live(&engine.cfg.run_dir()).await {
        Ok(client) => client.list_subscriptions(tarpc::context::current()).await.unwrap_or_default(),
        // kalam-lived not running: it holds no connections, so there are no live queries.
        Err(_) => Vec::new(),
    };
    let mut subs = subs;
    subs.sort_by(|a, b| a.live_id.cmp(&b.live_id));
    let rows = subs
        .into_iter()
        .map(|s| {
            vec![
                text(&s.live_id),
                text(&s.connection_id),
                text(&s.subscription_id),
                text(&s.user_id),
                text(&s.namespace),
                text(&s.table),
                text(&s.sql),
                opt_json(&s.options),
                bigint(s.changes),
                Value::Timestamp(s.created_at_us),
                Value::Timestamp(s.last_update_us),
                text(&engine.cfg.server.node_id),
            ]
        })
        .collect();
    SystemTable { columns: LIVE_QUERY_COLUMNS.to_vec(), rows }
}

async fn processes(engine: &Engine) -> SystemTable {
    let list = match kalam_rpc::transport::connect_supervisor(&engine.cfg.run_dir()).await {
        Ok(client) => client.processes(tarpc::context::current()).await.unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    let rows = list
        .into_iter()
        .map(|p| {
            vec![
                text(&p.name),
                p.pid.map(|pid| Value::BigInt(i64::from(pid))).unwrap_or(Value::Null),
                text(&p.state),
                Value::Int(p.restarts as i32),
            ]
        })
        .collect();
    SystemTable { columns: PROCESS_COLUMNS.to_vec(), rows }
}

/// `column_default` text of information_schema.columns and DESCRIBE.
pub fn default_text(d: &ColumnDefault) -> String {
    match d {
        ColumnDefault::Literal(json) => match serde_json::from_str::<serde_json::Value>(json) {
            Ok(serde_json::Value::String(s)) => format!("'{}'", s.replace('\'', "''")),
            _ => json.clone(),
        },
        ColumnDefault::Now => "NOW()".into(),
        ColumnDefault::SnowflakeId => "SNOWFLAKE_ID()".into(),
        ColumnDefault::UuidV7 => "UUID_V7()".into(),
        ColumnDefault::Ulid => "ULID()".into(),
        ColumnDefault::CurrentUser => "CURRENT_USER()".into(),
    }
}

/// One column as information_schema.columns / DESCRIBE show it:
/// `(name, ordinal, data_type, is_nullable, column_default, is_primary_key, is_system)`.
pub type ColumnRow = (String, usize, &'static str, bool, Option<String>, bool, bool);

/// The columns of a user table, system columns last.
pub fn column_rows(def: &TableDefinition) -> Vec<ColumnRow> {
    let mut rows: Vec<ColumnRow> = def
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            (
                c.name.clone(),
                i + 1,
                c.data_type.name(),
                c.nullable && !c.is_primary_key,
                c.default.as_ref().map(default_text),
                c.is_primary_key,
                false,
            )
        })
        .collect();
    if def.table_type != TableType::Stream {
        for (name, ty) in [(UPDATED_COLUMN, KalamType::Timestamp), (DELETED_COLUMN, KalamType::Boolean)] {
            let ordinal = rows.len() + 1;
            rows.push((name.to_owned(), ordinal, ty.name(), false, None, false, true));
        }
    }
    rows
}

/// The columns of a built-in table, from its materialised schema.
fn builtin_columns(columns: &[(&'static str, KalamType)]) -> Vec<ColumnRow> {
    columns.iter().enumerate().map(|(i, (n, t))| ((*n).to_owned(), i + 1, t.name(), true, None, false, false)).collect()
}

const INFORMATION_SCHEMA_COLUMNS_COLUMNS: [(&str, KalamType); 10] = [
    ("table_catalog", KalamType::Text),
    ("table_schema", KalamType::Text),
    ("table_name", KalamType::Text),
    ("column_name", KalamType::Text),
    ("ordinal_position", KalamType::Int),
    ("data_type", KalamType::Text),
    ("is_nullable", KalamType::Boolean),
    ("column_default", KalamType::Text),
    ("is_primary_key", KalamType::Boolean),
    ("is_system", KalamType::Boolean),
];

const INFORMATION_SCHEMA_TABLES_COLUMNS: [(&str, KalamType); 13] = [
    ("table_catalog", KalamType::Text),
    ("table_schema", KalamType::Text),
    ("table_name", KalamType::Text),
    ("table_type", KalamType::Text),
    ("kalamdb_table_type", KalamType::Text),
    ("storage_id", KalamType::Text),
    ("use_user_storage", KalamType::Boolean),
    ("flush_row_threshold", KalamType::BigInt),
    ("flush_interval_seconds", KalamType::BigInt),
    ("ttl_seconds", KalamType::BigInt),
    ("schema_version", KalamType::Int),
    ("created_at", KalamType::Timestamp),
    ("updated_at", KalamType::Timestamp),
];

/// The column list of a built-in table.
type Columns = &'static [(&'static str, KalamType)];

/// The columns of every built-in table, by schema then name.
fn builtin_schemas() -> Vec<(&'static str, &'static str, Columns)> {
    let mut out: Vec<(&'static str, &'static str, Columns)> =
        SYSTEM_TABLES.iter().map(|(name, columns)| (NAMESPACE, *name, *columns)).collect();
    out.push((INFORMATION_SCHEMA, "columns", &INFORMATION_SCHEMA_COLUMNS_COLUMNS));
    out.push((INFORMATION_SCHEMA, "tables", &INFORMATION_SCHEMA_TABLES_COLUMNS));
    out.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    out
}

const LIVE_QUERY_COLUMNS: [(&str, KalamType); 12] = [
    ("live_id", KalamType::Text),
    ("connection_id", KalamType::Text),
    ("subscription_id", KalamType::Text),
    ("user_id", KalamType::Text),
    ("namespace_id", KalamType::Text),
    ("table_name", KalamType::Text),
    ("query", KalamType::Text),
    ("options", KalamType::Json),
    ("changes", KalamType::BigInt),
    ("created_at", KalamType::Timestamp),
    ("last_update", KalamType::Timestamp),
    ("node", KalamType::Text),
];

const PROCESS_COLUMNS: [(&str, KalamType); 4] =
    [("name", KalamType::Text), ("pid", KalamType::BigInt), ("state", KalamType::Text), ("restarts", KalamType::Int)];

fn information_schema_tables(engine: &Engine) -> SystemTable {
    let mut rows = Vec::new();
    for (schema, name, _) in builtin_schemas() {
        rows.push(vec![
            text("kalamdb"),
            text(schema),
            text(name),
            text("SYSTEM TABLE"),
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
        ]);
    }
    for def in engine.catalog.tables() {
        let stream = def.table_type == TableType::Stream;
        rows.push(vec![
            text("kalamdb"),
            text(def.namespace.as_str()),
            text(def.name.as_str()),
            text("BASE TABLE"),
            text(def.table_type.name()),
            if stream { Value::Null } else { text(&def.storage_id) },
            Value::Boolean(def.options.use_user_storage),
            opt_bigint(def.flush_policy.row_threshold),
            opt_bigint(def.flush_policy.interval_seconds),
            if stream { bigint(def.options.ttl_seconds) } else { Value::Null },
            Value::Int(def.schema_version as i32),
            Value::Timestamp(def.created_at_us),
            Value::Timestamp(def.updated_at_us.max(def.created_at_us)),
        ]);
    }
    sort_by_schema_and_name(&mut rows);
    SystemTable { columns: INFORMATION_SCHEMA_TABLES_COLUMNS.to_vec(), rows }
}

fn sort_by_schema_and_name(rows: &mut [Vec<Value>]) {
    let key = |r: &Vec<Value>| match (&r[1], &r[2]) {
        (Value::Text(a), Value::Text(b)) => (a.clone(), b.clone()),
        _ => (String::new(), String::new()),
    };
    rows.sort_by_key(key);
}

fn information_schema_columns(engine: &Engine) -> SystemTable {
    let mut per_table: Vec<(String, String, Vec<ColumnRow>)> = builtin_schemas()
        .into_iter()
        .map(|(schema, name, columns)| (schema.to_owned(), name.to_owned(), builtin_columns(columns)))
        .collect();
    for def in engine.catalog.tables() {
        per_table.push((def.namespace.to_string(), def.name.to_string(), column_rows(&def)));
    }
    per_table.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    let rows = per_table
        .into_iter()
        .flat_map(|(schema, name, columns)| {
            columns.into_iter().map(move |(col, ordinal, ty, nullable, default, pk, system)| {
                vec![
                    text("kalamdb"),
                    text(&schema),
                    text(&name),
                    text(col),
                    Value::Int(ordinal as i32),
                    text(ty),
                    Value::Boolean(nullable),
                    default.map(Value::Text).unwrap_or(Value::Null),
                    Value::Boolean(pk),
                    Value::Boolean(system),
                ]
            })
        })
        .collect();
    SystemTable { columns: INFORMATION_SCHEMA_COLUMNS_COLUMNS.to_vec(), rows }
}

const JOBS_COLUMNS: [(&str, KalamType); 15] = [
    ("job_id", KalamType::Text),
    ("job_type", KalamType::Text),
    ("status", KalamType::Text),
    ("namespace_id", KalamType::Text),
    ("table_name", KalamType::Text),
    ("user_id", KalamType::Text),
    ("parameters", KalamType::Json),
    ("result", KalamType::Json),
    ("error_message", KalamType::Text),
    ("attempts", KalamType::Int),
    ("dead_letter", KalamType::Boolean),
    ("node_id", KalamType::Text),
    ("created_at", KalamType::Timestamp),
    ("started_at", KalamType::Timestamp),
    ("completed_at", KalamType::Timestamp),
];

const NAMESPACES_COLUMNS: [(&str, KalamType); 5] = [
    ("namespace_id", KalamType::Text),
    ("options", KalamType::Json),
    ("table_count", KalamType::Int),
    ("created_at", KalamType::Timestamp),
    ("updated_at", KalamType::Timestamp),
];

const TABLES_COLUMNS: [(&str, KalamType); 19] = [
    ("table_id", KalamType::Text),
    ("namespace_id", KalamType::Text),
    ("table_name", KalamType::Text),
    ("table_type", KalamType::Text),
    ("schema_version", KalamType::Int),
    ("primary_key", KalamType::Text),
    ("storage_id", KalamType::Text),
    ("use_user_storage", KalamType::Boolean),
    ("access", KalamType::Text),
    ("flush_row_threshold", KalamType::BigInt),
    ("flush_interval_seconds", KalamType::BigInt),
    ("sharding", KalamType::Text),
    ("flush_paused", KalamType::Boolean),
    ("deleted_retention_hours", KalamType::Int),
    ("ttl_seconds", KalamType::BigInt),
    ("max_buffer", KalamType::BigInt),
    ("ephemeral", KalamType::Boolean),
    ("created_at", KalamType::Timestamp),
    ("updated_at", KalamType::Timestamp),
];

const TABLE_SCHEMAS_COLUMNS: [(&str, KalamType); 8] = [
    ("schema_id", KalamType::Text),
    ("table_id", KalamType::Text),
    ("namespace_id", KalamType::Text),
    ("table_name", KalamType::Text),
    ("version", KalamType::Int),
    ("arrow_schema", KalamType::Json),
    ("changes", KalamType::Text),
    ("created_at", KalamType::Timestamp),
];

const TABLE_OPTIONS_COLUMNS: [(&str, KalamType); 6] = [
    ("namespace_id", KalamType::Text),
    ("table_name", KalamType::Text),
    ("option_key", KalamType::Text),
    ("option_value", KalamType::Text),
    ("value_type", KalamType::Text),
    ("description", KalamType::Text),
];

const STORAGES_COLUMNS: [(&str, KalamType); 10] = [
    ("storage_id", KalamType::Text),
    ("storage_name", KalamType::Text),
    ("description", KalamType::Text),
    ("storage_type", KalamType::Text),
    ("uri", KalamType::Text),
    ("credentials", KalamType::Json),
    ("shared_tables_template", KalamType::Text),
    ("user_tables_template", KalamType::Text),
    ("created_at", KalamType::Timestamp),
    ("updated_at", KalamType::Timestamp),
];

const USERS_COLUMNS: [(&str, KalamType); 11] = [
    ("user_id", KalamType::Text),
    ("username", KalamType::Text),
    ("email", KalamType::Text),
    ("role", KalamType::Text),
    ("apikey", KalamType::Text),
    ("metadata", KalamType::Json),
    ("storage_mode", KalamType::Text),
    ("storage_id", KalamType::Text),
    ("created_at", KalamType::Timestamp),
    ("updated_at", KalamType::Timestamp),
    ("deleted_at", KalamType::Timestamp),
];

const FLUSH_STATUS_COLUMNS: [(&str, KalamType); 17] = [
    ("namespace_id", KalamType::Text),
    ("table_name", KalamType::Text),
    ("table_type", KalamType::Text),
    ("buffered_rows", KalamType::BigInt),
    ("buffered_users", KalamType::BigInt),
    ("oldest_buffered_at", KalamType::Timestamp),
    ("lag_seconds", KalamType::BigInt),
    ("flushed_rows_total", KalamType::BigInt),
    ("parquet_files", KalamType::BigInt),
    ("storage_bytes", KalamType::BigInt),
    ("last_flush_at", KalamType::Timestamp),
    ("last_flush_job_id", KalamType::Text),
    ("last_flush_status", KalamType::Text),
    ("last_error", KalamType::Text),
    ("consecutive_failures", KalamType::Int),
    ("next_scheduled_flush_at", KalamType::Timestamp),
    ("paused", KalamType::Boolean),
];
