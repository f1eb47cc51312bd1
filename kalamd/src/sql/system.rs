//! Built-in `system.*` and `information_schema.*` tables (system-tables.md), materialised when a
//! statement names them. kalamd's own tables are views over its RocksDB state;
//! `system.live_queries` and `system.processes` are filled by asking kalam-lived and
//! kalam-supervisor over RPC.

use std::sync::Arc;

use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use kalam_types::arrow::{arrow_type, build_array};
use kalam_types::schema::{ColumnDefault, DELETED_COLUMN, TableDefinition, TableType, UPDATED_COLUMN};
use kalam_types::{KalamType, Value};

use crate::engine::Engine;
use crate::error::EngineError;
use crate::flush::JobRecord;

pub const NAMESPACE: &str = "system";
pub const INFORMATION_SCHEMA: &str = "information_schema";

/// The built-in tables of `system` with their columns, by name.
pub const SYSTEM_TABLES: [(&str, Columns); 10] = [
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
    pub columns: Vec<Column>,
    pub rows: Vec<Vec<Value>>,
}

impl SystemTable {
    pub fn into_batch(self) -> Result<(SchemaRef, RecordBatch), EngineError> {
        let schema: SchemaRef = Arc::new(Schema::new(
            self.columns.iter().map(|(n, t, _)| Field::new(*n, arrow_type(*t), true)).collect::<Vec<_>>(),
        ));
        let arrays = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, (_, t, _))| build_array(*t, self.rows.iter().map(|r| &r[i])))
            .collect();
        let batch = RecordBatch::try_new(schema.clone(), arrays).map_err(EngineError::internal)?;
        Ok((schema, batch))
    }
}

fn not_found(ns: &str, name: &str) -> EngineError {
    crate::catalog::table_not_found(ns, name).into()
}

/// Builds one built-in table by namespace and name.
/// A built-in table as `viewer` may see it: principals of role `user` get only their own rows
/// of `system.users` and `system.live_queries`, and no row about a shared table they may not
/// read (private or restricted) in the tables that describe tables (sql.md §17).
/// Soft-deleted users are left out of `system.users` unless `deleted_users`.
pub async fn table(
    engine: &Arc<Engine>,
    ns: &str,
    name: &str,
    viewer: &kalam_types::auth::Identity,
    deleted_users: bool,
) -> Result<(SchemaRef, RecordBatch), EngineError> {
    let mut table = match (ns, name) {
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
    if ns == NAMESPACE && name == "users" && !deleted_users {
        let deleted_at = table.columns.iter().position(|c| c.0 == "deleted_at");
        table.rows.retain(|row| deleted_at.is_some_and(|i| row[i].is_null()));
    }
    // Own rows only (sql.md §17): rows about a user are theirs; `flush_status` rows describe
    // whole tables (every user's buffered rows), so none is.
    if viewer.role == kalam_types::auth::Role::User
        && ns == NAMESPACE
        && matches!(name, "users" | "live_queries" | "jobs")
    {
        let own = Value::Text(viewer.principal.as_str().to_owned());
        let column = table.columns.iter().position(|c| c.0 == "user_id");
        table.rows.retain(|row| column.is_some_and(|i| row[i] == own));
    }
    if viewer.role == kalam_types::auth::Role::User && ns == NAMESPACE && name == "flush_status" {
        table.rows.clear();
    }
    if viewer.role == kalam_types::auth::Role::User {
        let position = |name: &str| table.columns.iter().position(|c| c.0 == name);
        if let (Some(ns), Some(t)) = (position("namespace_id").or(position("table_schema")), position("table_name")) {
            table.rows.retain(|row| match (&row[ns], &row[t]) {
                (Value::Text(ns), Value::Text(t)) => user_may_see_table(engine, ns, t),
                _ => true,
            });
        }
    }
    table.into_batch()
}

/// False for a shared table that only `service` and above may read.
pub fn user_may_see_table(engine: &Engine, ns: &str, table: &str) -> bool {
    use kalam_types::schema::{AccessLevel, TableType};
    engine
        .catalog
        .table(ns, table)
        .is_none_or(|def| def.table_type != TableType::Shared || def.options.access == AccessLevel::Public)
}

fn blocking_table(engine: &Engine, name: &str) -> Result<SystemTable, EngineError> {
    Ok(match name {
        "jobs" => jobs(engine)?,
        "namespaces" => namespaces(engine),
        "tables" => tables(engine),
        "table_schemas" => table_schemas(engine)?,
        "table_options" => table_options(engine),
        "storages" => storages(engine)?,
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
    let max_attempts = Value::Int(i32::try_from(engine.cfg.flush.max_retries + 1).unwrap_or(i32::MAX));
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
                opt_text(&j.user_id),
                opt_json(&parameters),
                opt_json(&j.result),
                // Execution context and resource use are not recorded yet.
                Value::Null,
                opt_text(&j.error_message),
                Value::Null,
                Value::Null,
                Value::Int(j.attempts as i32),
                if j.job_type == "flush" { max_attempts.clone() } else { Value::Int(1) },
                opt_ts(j.next_retry_at_us),
                Value::Boolean(j.dead_letter),
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

fn storages(engine: &Engine) -> Result<SystemTable, EngineError> {
    let rows = engine
        .storages()?
        .into_iter()
        .map(|s| {
            vec![
                text(&s.storage_id),
                text(&s.storage_name),
                opt_text(&s.description),
                text(&s.storage_type),
                text(&s.uri),
                // Write-only: every caller reads `***` (NULL when none are stored).
                if s.credentials.is_some() { Value::Json("***".into()) } else { Value::Null },
                text(&s.shared_tables_template),
                text(&s.user_tables_template),
                Value::Timestamp(s.created_at_us),
                Value::Timestamp(s.updated_at_us),
            ]
        })
        .collect();
    Ok(SystemTable { columns: STORAGES_COLUMNS.to_vec(), rows })
}

/// Every row of `system.users`, soft-deleted ones included (what UPDATE and DELETE select from).
pub fn users_batch(engine: &Engine) -> Result<(SchemaRef, RecordBatch), EngineError> {
    users(engine)?.into_batch()
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
            Value::Boolean(engine.flush_paused(&def)),
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
        Err(_) => unsupervised_processes(engine).await,
    };
    let now_us = crate::clock::wall_clock_us();
    let rows = list
        .into_iter()
        .map(|p| {
            vec![
                text(&p.name),
                p.pid.map(|pid| Value::BigInt(i64::from(pid))).unwrap_or(Value::Null),
                text(&p.state),
                Value::Int(p.restarts as i32),
                p.started_at_us.map(Value::Timestamp).unwrap_or(Value::Null),
                p.started_at_us.map(|t| Value::BigInt((now_us - t).max(0) / 1_000_000)).unwrap_or(Value::Null),
                p.memory_bytes.map(|b| Value::BigInt(b as i64)).unwrap_or(Value::Null),
                p.cpu_percent.map(|c| Value::Double(f64::from(c))).unwrap_or(Value::Null),
            ]
        })
        .collect();
    SystemTable { columns: PROCESS_COLUMNS.to_vec(), rows }
}

/// Without kalam-supervisor (each daemon run as its own systemd unit) the daemons are asked
/// directly: kalamd itself, and the others by their `health` answer within a second. Restarts
/// are systemd's to count, and resources are not sampled: those columns stay 0 and NULL.
async fn unsupervised_processes(engine: &Engine) -> Vec<kalam_rpc::ProcessInfo> {
    use kalam_rpc::transport::{connect_flusher, connect_live, context_with_timeout};
    let run_dir = engine.cfg.run_dir();
    let ctx = || context_with_timeout(std::time::Duration::from_secs(1));
    let flushd = async { connect_flusher(&run_dir).await.ok()?.health(ctx()).await.ok() };
    let lived = async { connect_live(&run_dir).await.ok()?.health(ctx()).await.ok() };
    let (flushd, lived) = tokio::join!(flushd, lived);
    [("kalamd", Some(kalam_rpc::Health::of("kalamd"))), ("kalam-flushd", flushd), ("kalam-lived", lived)]
        .into_iter()
        .map(|(name, health)| kalam_rpc::ProcessInfo {
            name: name.to_owned(),
            state: if health.is_some() { "running" } else { "unreachable" }.to_owned(),
            pid: health.map(|h| h.pid),
            restarts: 0,
            started_at_us: None,
            memory_bytes: None,
            cpu_percent: None,
        })
        .collect()
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
fn builtin_columns(columns: &[Column]) -> Vec<ColumnRow> {
    columns
        .iter()
        .enumerate()
        .map(|(i, (n, t, nullable))| ((*n).to_owned(), i + 1, t.name(), *nullable, None, false, false))
        .collect()
}

const INFORMATION_SCHEMA_COLUMNS_COLUMNS: [Column; 10] = [
    ("table_catalog", KalamType::Text, false),
    ("table_schema", KalamType::Text, false),
    ("table_name", KalamType::Text, false),
    ("column_name", KalamType::Text, false),
    ("ordinal_position", KalamType::Int, false),
    ("data_type", KalamType::Text, false),
    ("is_nullable", KalamType::Boolean, false),
    ("column_default", KalamType::Text, true),
    ("is_primary_key", KalamType::Boolean, false),
    ("is_system", KalamType::Boolean, false),
];

const INFORMATION_SCHEMA_TABLES_COLUMNS: [Column; 13] = [
    ("table_catalog", KalamType::Text, false),
    ("table_schema", KalamType::Text, false),
    ("table_name", KalamType::Text, false),
    ("table_type", KalamType::Text, false),
    ("kalamdb_table_type", KalamType::Text, true),
    ("storage_id", KalamType::Text, true),
    ("use_user_storage", KalamType::Boolean, true),
    ("flush_row_threshold", KalamType::BigInt, true),
    ("flush_interval_seconds", KalamType::BigInt, true),
    ("ttl_seconds", KalamType::BigInt, true),
    ("schema_version", KalamType::Int, true),
    ("created_at", KalamType::Timestamp, true),
    ("updated_at", KalamType::Timestamp, true),
];

/// A column of a built-in table: name, type, nullable (system-tables.md).
type Column = (&'static str, KalamType, bool);

/// The column list of a built-in table.
type Columns = &'static [Column];

/// The columns of every built-in table, by schema then name.
fn builtin_schemas() -> Vec<(&'static str, &'static str, Columns)> {
    let mut out: Vec<(&'static str, &'static str, Columns)> =
        SYSTEM_TABLES.iter().map(|(name, columns)| (NAMESPACE, *name, *columns)).collect();
    out.push((INFORMATION_SCHEMA, "columns", &INFORMATION_SCHEMA_COLUMNS_COLUMNS));
    out.push((INFORMATION_SCHEMA, "tables", &INFORMATION_SCHEMA_TABLES_COLUMNS));
    out.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    out
}

const LIVE_QUERY_COLUMNS: [Column; 12] = [
    ("live_id", KalamType::Text, false),
    ("connection_id", KalamType::Text, false),
    ("subscription_id", KalamType::Text, false),
    ("user_id", KalamType::Text, false),
    ("namespace_id", KalamType::Text, false),
    ("table_name", KalamType::Text, false),
    ("query", KalamType::Text, false),
    ("options", KalamType::Json, true),
    ("changes", KalamType::BigInt, false),
    ("created_at", KalamType::Timestamp, false),
    ("last_update", KalamType::Timestamp, false),
    ("node", KalamType::Text, false),
];

const PROCESS_COLUMNS: [Column; 8] = [
    ("name", KalamType::Text, false),
    ("pid", KalamType::BigInt, true),
    ("state", KalamType::Text, false),
    ("restarts", KalamType::Int, false),
    ("started_at", KalamType::Timestamp, true),
    ("uptime_seconds", KalamType::BigInt, true),
    ("memory_bytes", KalamType::BigInt, true),
    ("cpu_percent", KalamType::Double, true),
];

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

const JOBS_COLUMNS: [Column; 20] = [
    ("job_id", KalamType::Text, false),
    ("job_type", KalamType::Text, false),
    ("status", KalamType::Text, false),
    ("namespace_id", KalamType::Text, true),
    ("table_name", KalamType::Text, true),
    ("user_id", KalamType::Text, true),
    ("parameters", KalamType::Json, true),
    ("result", KalamType::Json, true),
    ("trace", KalamType::Text, true),
    ("error_message", KalamType::Text, true),
    ("memory_used", KalamType::BigInt, true),
    ("cpu_used", KalamType::BigInt, true),
    ("attempts", KalamType::Int, false),
    ("max_attempts", KalamType::Int, false),
    ("next_retry_at", KalamType::Timestamp, true),
    ("dead_letter", KalamType::Boolean, false),
    ("node_id", KalamType::Text, false),
    ("created_at", KalamType::Timestamp, false),
    ("started_at", KalamType::Timestamp, true),
    ("completed_at", KalamType::Timestamp, true),
];

const NAMESPACES_COLUMNS: [Column; 5] = [
    ("namespace_id", KalamType::Text, false),
    ("options", KalamType::Json, false),
    ("table_count", KalamType::Int, false),
    ("created_at", KalamType::Timestamp, false),
    ("updated_at", KalamType::Timestamp, false),
];

const TABLES_COLUMNS: [Column; 19] = [
    ("table_id", KalamType::Text, false),
    ("namespace_id", KalamType::Text, false),
    ("table_name", KalamType::Text, false),
    ("table_type", KalamType::Text, false),
    ("schema_version", KalamType::Int, false),
    ("primary_key", KalamType::Text, false),
    ("storage_id", KalamType::Text, true),
    ("use_user_storage", KalamType::Boolean, false),
    ("access", KalamType::Text, true),
    ("flush_row_threshold", KalamType::BigInt, true),
    ("flush_interval_seconds", KalamType::BigInt, true),
    ("sharding", KalamType::Text, true),
    ("flush_paused", KalamType::Boolean, false),
    ("deleted_retention_hours", KalamType::Int, true),
    ("ttl_seconds", KalamType::BigInt, true),
    ("max_buffer", KalamType::BigInt, true),
    ("ephemeral", KalamType::Boolean, true),
    ("created_at", KalamType::Timestamp, false),
    ("updated_at", KalamType::Timestamp, false),
];

const TABLE_SCHEMAS_COLUMNS: [Column; 8] = [
    ("schema_id", KalamType::Text, false),
    ("table_id", KalamType::Text, false),
    ("namespace_id", KalamType::Text, false),
    ("table_name", KalamType::Text, false),
    ("version", KalamType::Int, false),
    ("arrow_schema", KalamType::Json, false),
    ("changes", KalamType::Text, true),
    ("created_at", KalamType::Timestamp, false),
];

const TABLE_OPTIONS_COLUMNS: [Column; 6] = [
    ("namespace_id", KalamType::Text, false),
    ("table_name", KalamType::Text, false),
    ("option_key", KalamType::Text, false),
    ("option_value", KalamType::Text, true),
    ("value_type", KalamType::Text, false),
    ("description", KalamType::Text, false),
];

const STORAGES_COLUMNS: [Column; 10] = [
    ("storage_id", KalamType::Text, false),
    ("storage_name", KalamType::Text, false),
    ("description", KalamType::Text, true),
    ("storage_type", KalamType::Text, false),
    ("uri", KalamType::Text, false),
    ("credentials", KalamType::Json, true),
    ("shared_tables_template", KalamType::Text, false),
    ("user_tables_template", KalamType::Text, false),
    ("created_at", KalamType::Timestamp, false),
    ("updated_at", KalamType::Timestamp, false),
];

const USERS_COLUMNS: [Column; 11] = [
    ("user_id", KalamType::Text, false),
    ("username", KalamType::Text, false),
    ("email", KalamType::Text, true),
    ("role", KalamType::Text, false),
    ("apikey", KalamType::Text, true),
    ("metadata", KalamType::Json, true),
    ("storage_mode", KalamType::Text, false),
    ("storage_id", KalamType::Text, true),
    ("created_at", KalamType::Timestamp, false),
    ("updated_at", KalamType::Timestamp, false),
    ("deleted_at", KalamType::Timestamp, true),
];

const FLUSH_STATUS_COLUMNS: [Column; 17] = [
    ("namespace_id", KalamType::Text, false),
    ("table_name", KalamType::Text, false),
    ("table_type", KalamType::Text, false),
    ("buffered_rows", KalamType::BigInt, false),
    ("buffered_users", KalamType::BigInt, false),
    ("oldest_buffered_at", KalamType::Timestamp, true),
    ("lag_seconds", KalamType::BigInt, true),
    ("flushed_rows_total", KalamType::BigInt, false),
    ("parquet_files", KalamType::BigInt, false),
    ("storage_bytes", KalamType::BigInt, false),
    ("last_flush_at", KalamType::Timestamp, true),
    ("last_flush_job_id", KalamType::Text, true),
    ("last_flush_status", KalamType::Text, true),
    ("last_error", KalamType::Text, true),
    ("consecutive_failures", KalamType::Int, false),
    ("next_scheduled_flush_at", KalamType::Timestamp, true),
    ("paused", KalamType::Boolean, false),
];
