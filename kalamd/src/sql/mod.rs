//! The SQL front: split a request into statements, parse each with the KalamDB dialect, and
//! run it — DDL against the catalog, INSERT against the store, SELECT through DataFusion.

mod admin;
pub mod ddl;
pub mod dml;
pub mod eval;
pub mod fast;
pub mod introspect;
pub mod mutate;
mod nesting;
pub mod params;
pub mod parse;
mod parse_table;
mod parse_user;
pub mod permissions;
pub mod plan_cache;
pub mod query;
pub mod split;
pub mod system;
mod txn;
pub mod udf;
mod users_dml;

use std::sync::Arc;

use kalam_types::auth::Identity;
use kalam_types::error::{ErrorCode, KalamError};
use kalam_types::ids::UserId;
use serde::Serialize;
use serde_json::Value as Json;

use crate::clock::wall_clock_us;
use crate::engine::Engine;
use crate::error::EngineError;
use crate::rowjson::OrderedRow;
use parse::KalamStatement;

/// Times a write is re-run because ALTER TABLE changed its table under it.
const MAX_DEFINITION_RETRIES: usize = 10;

/// The outcome of one statement (api.md §2.2).
#[derive(Debug, Default, Serialize)]
pub struct StatementResult {
    pub columns: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows: Option<Vec<OrderedRow>>,
    pub row_count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Whether the statement's plan came from the plan cache (statements the cache holds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_hit: Option<bool>,
}

impl StatementResult {
    pub(crate) fn message(row_count: u64, message: String) -> Self {
        Self { columns: vec![], rows: None, row_count, message: Some(message), cache_hit: None }
    }
}

/// Resolves a table reference of DML or a query: the table, and the user whose partition it
/// addresses (three-part names address another user's partition of a USER or STREAM table).
pub fn resolve_table(
    engine: &Engine,
    table: &parse::TableRef,
    acting: &UserId,
) -> Result<(Arc<kalam_types::schema::TableDefinition>, UserId), EngineError> {
    if system::is_builtin_namespace(&table.namespace) && table.qualifier.is_none() {
        return Err(builtin_write_error(&table.namespace, &table.table));
    }
    let def = engine.catalog.require_table(&table.namespace, &table.table)?;
    if table.qualifier.is_some() && def.table_type == kalam_types::schema::TableType::Shared {
        return Err(EngineError::user(
            ErrorCode::InvalidSql,
            format!("relation \"{}.{}\" is a SHARED table: it has no user partitions", table.namespace, table.table),
        ));
    }
    Ok((def, table.partition_user(acting)?))
}

/// Why a statement cannot write a built-in table (only DML resolves tables through
/// [`resolve_table`] for writing; queries read built-ins directly).
fn builtin_write_error(ns: &str, table: &str) -> EngineError {
    let exists = if ns == system::NAMESPACE {
        system::system_table_names().any(|t| t == table)
    } else {
        ["columns", "tables"].contains(&table)
    };
    match (exists, table) {
        (false, _) => crate::catalog::table_not_found(ns, table).into(),
        (true, "users") if ns == system::NAMESPACE => EngineError::user(
            ErrorCode::TransactionError,
            "Changes to system.users are not allowed inside a transaction",
        ),
        (true, _) => {
            EngineError::user(ErrorCode::PermissionDenied, format!("permission denied: {ns}.{table} is read-only"))
        }
    }
}

/// Runs a query under `limits.statement_timeout_seconds`; dropping it on time-out cancels its
/// DataFusion tasks. Only reads are bounded this way: a write is never cut off half-way.
async fn with_timeout<T>(
    engine: &Engine,
    query: impl std::future::Future<Output = Result<T, EngineError>>,
) -> Result<T, EngineError> {
    let seconds = engine.cfg.limits.statement_timeout_seconds;
    if seconds == 0 {
        return query.await;
    }
    match tokio::time::timeout(std::time::Duration::from_secs(seconds), query).await {
        Ok(result) => result,
        Err(_) => Err(EngineError::user(
            ErrorCode::StatementTimeout,
            format!("canceling statement due to statement timeout ({seconds} s)"),
        )),
    }
}

/// A failed statement inside a batch.
#[derive(Debug)]
pub struct BatchError {
    pub error: KalamError,
    /// 1-based; `None` for request-level errors.
    pub statement_index: Option<usize>,
    pub statement: Option<String>,
}

/// [`execute_request`] as the `system` role acting as `user` (tests of the SQL layer).
#[cfg(test)]
pub async fn execute_batch(
    engine: &Arc<Engine>,
    sql: &str,
    params: Option<&[Json]>,
    user: &UserId,
) -> (Vec<StatementResult>, Option<BatchError>) {
    execute_request(engine, sql, params, &Identity::system(user.clone())).await
}

/// Runs every statement of `sql` in order, stopping at the first failure. Returns the results
/// of the statements that succeeded, and the failure if there was one.
pub async fn execute_request(
    engine: &Arc<Engine>,
    sql: &str,
    params: Option<&[Json]>,
    identity: &Identity,
) -> (Vec<StatementResult>, Option<BatchError>) {
    let statements = match split::split_statements(sql) {
        Ok(s) if s.is_empty() => {
            let error = KalamError::new(ErrorCode::EmptySql, "No SQL statements provided");
            return (vec![], Some(BatchError { error, statement_index: None, statement: None }));
        }
        Ok(s) => s,
        Err(error) => return (vec![], Some(BatchError { error, statement_index: None, statement: None })),
    };
    let limit = engine.cfg.limits.max_statements_per_request;
    if statements.len() > limit {
        let error = KalamError::new(
            ErrorCode::InvalidRequest,
            format!("Too many statements in one request ({}; the limit is {limit})", statements.len()),
        );
        return (vec![], Some(BatchError { error, statement_index: None, statement: None }));
    }
    if params.is_some() && statements.len() != 1 {
        let error = KalamError::new(ErrorCode::InvalidRequest, "params are only supported with a single statement");
        return (vec![], Some(BatchError { error, statement_index: None, statement: None }));
    }
    let mut results = Vec::with_capacity(statements.len());
    let mut i = 0;
    while i < statements.len() {
        let text = &statements[i];
        let outcome = match engine.plan_cache.prepare(engine, text) {
            Ok(lookup) => match &lookup.prepared.stmt {
                KalamStatement::Begin => match txn::run(engine, &statements, i, identity, &mut results).await {
                    Ok(next) => {
                        i = next;
                        continue;
                    }
                    Err(failure) => return (results, Some(failure)),
                },
                KalamStatement::Commit | KalamStatement::Rollback => {
                    Ok(StatementResult::message(0, "No transaction in progress".to_owned()))
                }
                _ => execute_statement(engine, &lookup.prepared, params, identity).await.map(|mut r| {
                    r.cache_hit = lookup.cache_hit;
                    r
                }),
            },
            Err(e) => Err(e.into()),
        };
        match outcome {
            Ok(r) => results.push(r),
            Err(e) => return (results, Some(statement_failure(e, i, text, ""))),
        }
        i += 1;
    }
    (results, None)
}

/// The error of statement `i` (0-based) of a request: `Statement N failed: <reason><suffix>`.
fn statement_failure(e: EngineError, i: usize, text: &str, suffix: &str) -> BatchError {
    let mut error = e.to_client();
    error.message = format!("Statement {} failed: {}{suffix}", i + 1, error.message);
    let statement = (!error.code.is_internal()).then(|| text.to_owned());
    BatchError { error, statement_index: Some(i + 1), statement }
}

async fn execute_statement(
    engine: &Arc<Engine>,
    prepared: &plan_cache::Prepared,
    params: Option<&[Json]>,
    identity: &Identity,
) -> Result<StatementResult, EngineError> {
    let user = &identity.acting;
    let template = match &prepared.stmt {
        KalamStatement::Query(s)
        | KalamStatement::Insert(s)
        | KalamStatement::Update(s)
        | KalamStatement::Delete(s) => Some(s.as_ref()),
        _ => None,
    };
    // Placeholders without `params` are a count mismatch too.
    let given = params.unwrap_or(&[]);
    match template {
        Some(s) => params::check_count(s, given)?,
        None if given.is_empty() => {}
        None => {
            return Err(EngineError::user(
                ErrorCode::ParamCountMismatch,
                format!("parameter mismatch: expected 0 parameters, got {}", given.len()),
            ));
        }
    }
    permissions::check(engine, identity, &prepared.stmt)?;
    // Types are checked only once the statement is allowed: a refusal must not describe a table
    // the caller may not see.
    if let (Some(params), Some(s)) = (params, template) {
        params::check_types(engine, s, params, user)?;
    }
    if let KalamStatement::Query(template) = &prepared.stmt {
        return run_select(engine, prepared, template, params.unwrap_or(&[]), identity).await;
    }
    let mut stmt = prepared.stmt.clone();
    if let Some(params) = params
        && let KalamStatement::Insert(s) | KalamStatement::Update(s) | KalamStatement::Delete(s) = &mut stmt
    {
        params::substitute(s, params);
    }
    if let KalamStatement::Insert(s) | KalamStatement::Update(s) | KalamStatement::Delete(s) = &stmt
        && users_dml::targets_users(s)
    {
        let (engine, s) = (engine.clone(), s.clone());
        return tokio::task::spawn_blocking(move || users_dml::execute(&engine, &s))
            .await
            .map_err(EngineError::internal)?;
    }
    match stmt {
        KalamStatement::ClearCache => Ok(clear_caches(engine)),
        KalamStatement::DropTable { namespace, table, if_exists } => {
            drop_table(engine, &namespace, &table, if_exists).await
        }
        KalamStatement::CreateUser { user, if_not_exists } => admin::create_user(engine, user, if_not_exists),
        KalamStatement::AlterUser { user_id, change } => admin::alter_user(engine, &user_id, change),
        KalamStatement::DropUser { user_id, if_exists } => admin::drop_user(engine, &user_id, if_exists),
        KalamStatement::DropNamespace { name, if_exists, cascade } => {
            drop_namespace(engine, &name, if_exists, cascade).await
        }
        KalamStatement::KillLiveQuery { live_id } => {
            // Users may end only their own live queries (sql.md §17).
            let owner = (identity.role == kalam_types::auth::Role::User).then_some(&identity.principal);
            crate::live::kill_live_query(engine, &live_id, owner).await
        }
        KalamStatement::Subscribe { table, filter, options } => {
            let (engine, user) = (engine.clone(), user.clone());
            tokio::task::spawn_blocking(move || {
                crate::live::subscribe_statement(&engine, &user, &table, filter.as_deref(), &options)
            })
            .await
            .map_err(EngineError::internal)?
        }
        KalamStatement::ShowNamespaces => Ok(introspect::show_namespaces(engine)),
        KalamStatement::ShowStorages => introspect::show_storages(engine),
        KalamStatement::ShowTables { namespace } => {
            introspect::show_tables(engine, namespace.as_deref(), identity.role == kalam_types::auth::Role::User)
        }
        KalamStatement::Describe { namespace, table } => introspect::describe(engine, &namespace, &table),
        KalamStatement::ShowTableStats { namespace, table } => {
            let engine = engine.clone();
            let scope = (identity.role == kalam_types::auth::Role::User).then(|| user.clone());
            tokio::task::spawn_blocking(move || {
                introspect::show_table_stats(&engine, &namespace, &table, scope.as_ref())
            })
            .await
            .map_err(EngineError::internal)?
        }
        KalamStatement::AlterTable { namespace, table, op } => {
            let live = engine.live_queries_sql(&namespace, &table).await;
            let engine = engine.clone();
            tokio::task::spawn_blocking(move || {
                ddl::alter_table(&engine, &namespace, &table, op, &live, |def, idx| {
                    crate::read::any_visible_null(&engine, def, idx)
                })
            })
            .await
            .map_err(EngineError::internal)?
        }
        // Writes wait for the commit lock and do blocking RocksDB and file I/O: keep them off
        // the async workers so a long commit never stalls health checks or other requests.
        other => {
            let selected = insert_source(engine, &other, identity).await?;
            let (engine, user) = (engine.clone(), user.clone());
            tokio::task::spawn_blocking(move || {
                // A write that resolved its table before a concurrent ALTER TABLE committed runs
                // again against the new definition (checked under the commit lock).
                let mut attempts = 0;
                loop {
                    match execute_write(&engine, other.clone(), &user, selected.clone()) {
                        Err(EngineError::DefinitionChanged) if attempts < MAX_DEFINITION_RETRIES => attempts += 1,
                        result => return result,
                    }
                }
            })
            .await
            .map_err(EngineError::internal)?
        }
    }
}

/// Runs a SELECT (`template`, with `params` for its placeholders) through its plan-cache entry:
/// the key-lookup path when it is a point query, else DataFusion with the entry's shared plan
/// (or a plan of its own when it cannot be shared).
async fn run_select(
    engine: &Arc<Engine>,
    prepared: &plan_cache::Prepared,
    template: &datafusion::sql::sqlparser::ast::Statement,
    params: &[Json],
    identity: &Identity,
) -> Result<StatementResult, EngineError> {
    let shape = prepared.point.get_or_init(|| fast::shape(engine, template).map(Arc::new));
    let out = match shape.as_ref().and_then(|s| s.bind(params, &identity.acting)) {
        Some(point) => {
            let engine = engine.clone();
            tokio::task::spawn_blocking(move || point.execute(&engine)).await.map_err(EngineError::internal)??
        }
        None => {
            let bound = if params.is_empty() {
                std::borrow::Cow::Borrowed(template)
            } else {
                let mut bound = template.clone();
                params::substitute(&mut bound, params);
                std::borrow::Cow::Owned(bound)
            };
            let run = query::run_prepared(engine, &prepared.plan, template, &bound, params, identity);
            with_timeout(engine, run).await?
        }
    };
    let n = out.rows.len() as u64;
    Ok(StatementResult { columns: out.columns, rows: Some(out.rows), row_count: n, message: None, cache_hit: None })
}

/// CLEAR CACHE (sql.md §15): one row per cache with the entries it held, and for the plan
/// cache its hits and misses since the server started. Compiled filters of active
/// subscriptions stay.
fn clear_caches(engine: &Engine) -> StatementResult {
    let (hits, misses) = engine.plan_cache.counters();
    let cleared = [
        ("plan_cache", engine.plan_cache.clear(), Json::from(hits), Json::from(misses)),
        ("parquet_metadata_cache", engine.parquet_footers.clear(), Json::Null, Json::Null),
    ];
    let total: usize = cleared.iter().map(|c| c.1).sum();
    let rows: Vec<OrderedRow> = cleared
        .into_iter()
        .map(|(name, n, hits, misses)| {
            OrderedRow(vec![
                ("cache_type".into(), Json::from(name)),
                ("entries_cleared".into(), Json::from(n)),
                ("hits".into(), hits),
                ("misses".into(), misses),
            ])
        })
        .collect();
    StatementResult {
        columns: ["cache_type", "entries_cleared", "hits", "misses"].map(String::from).to_vec(),
        row_count: rows.len() as u64,
        rows: Some(rows),
        message: Some(format!("Cleared {total} cache entries")),
        cache_hit: None,
    }
}

/// The rows of an `INSERT … SELECT` source, computed on the async side before the write.
async fn insert_source(
    engine: &Arc<Engine>,
    stmt: &KalamStatement,
    identity: &Identity,
) -> Result<Option<Vec<datafusion::arrow::array::RecordBatch>>, EngineError> {
    let KalamStatement::Insert(stmt) = stmt else { return Ok(None) };
    match dml::select_source(stmt) {
        Some(query) => Ok(Some(with_timeout(engine, query::collect(engine, &query, identity)).await?.1)),
        None => Ok(None),
    }
}

/// Runs an INSERT, UPDATE or DELETE, in the open transaction `txn` or on its own.
fn write_dml<'a>(
    engine: &'a Arc<Engine>,
    txn: Option<&mut crate::store::CommitGuard<'a>>,
    stmt: &KalamStatement,
    user: &UserId,
    selected: Option<Vec<datafusion::arrow::array::RecordBatch>>,
) -> Result<(StatementResult, Arc<kalam_types::schema::TableDefinition>), EngineError> {
    Ok(match stmt {
        KalamStatement::Insert(stmt) => {
            let (n, def) = dml::insert(engine, txn, stmt, user, selected)?;
            (StatementResult::message(n, format!("Inserted {n} row(s)")), def)
        }
        KalamStatement::Update(stmt) => {
            let (n, def) = mutate::update(engine, txn, stmt, user)?;
            (StatementResult::message(n, format!("Updated {n} row(s)")), def)
        }
        KalamStatement::Delete(stmt) => {
            let (n, def) = mutate::delete(engine, txn, stmt, user)?;
            (StatementResult::message(n, format!("Deleted {n} row(s)")), def)
        }
        _ => return Err(EngineError::internal("write_dml() called with another statement")),
    })
}

/// `selected` is the computed source of an `INSERT … SELECT`.
fn execute_write(
    engine: &Arc<Engine>,
    stmt: KalamStatement,
    user: &UserId,
    selected: Option<Vec<datafusion::arrow::array::RecordBatch>>,
) -> Result<StatementResult, EngineError> {
    match stmt {
        KalamStatement::CreateNamespace { name, if_not_exists } => {
            if engine.catalog.create_namespace(&name, wall_clock_us())? {
                Ok(StatementResult::message(0, format!("Namespace '{name}' created successfully")))
            } else if if_not_exists {
                Ok(StatementResult::message(0, format!("Namespace '{name}' already exists (skipped)")))
            } else {
                Err(EngineError::user(ErrorCode::AlreadyExists, format!("Namespace '{name}' already exists")))
            }
        }
        KalamStatement::CreateTable(spec) => ddl::create_table(engine, spec),
        KalamStatement::AlterNamespace { name, options } => ddl::alter_namespace(engine, &name, options),
        KalamStatement::FlushTable { namespace, table } => {
            let def = engine.catalog.require_table(namespace.as_str(), table.as_str())?;
            let (job_id, existing) = engine.create_flush_job(&def)?;
            let message = if existing {
                format!("Flush already in progress for table '{}'. Job ID: {job_id}", def.qualified_name())
            } else {
                format!("Flush started for table '{}'. Job ID: {job_id}", def.qualified_name())
            };
            let status = engine.job(&job_id)?.status;
            let row = OrderedRow(vec![
                ("job_id".into(), Json::String(job_id)),
                ("namespace_id".into(), Json::String(namespace.to_string())),
                ("table_name".into(), Json::String(table.to_string())),
                ("status".into(), Json::String(status)),
            ]);
            Ok(StatementResult {
                columns: ["job_id", "namespace_id", "table_name", "status"].map(String::from).to_vec(),
                rows: Some(vec![row]),
                row_count: 1,
                message: Some(message),
                cache_hit: None,
            })
        }
        KalamStatement::FlushAll { namespace } => flush_all(engine, namespace.as_deref()),
        KalamStatement::PauseFlush { table } => {
            let table = table.as_ref().map(|(n, t)| (n.as_str(), t.as_str()));
            Ok(StatementResult::message(0, engine.set_flush_paused(table, true)?))
        }
        KalamStatement::ResumeFlush { table } => {
            let table = table.as_ref().map(|(n, t)| (n.as_str(), t.as_str()));
            let message = engine.set_flush_paused(table, false)?;
            // A table whose row threshold was reached while paused flushes now.
            let resumed = match table {
                Some((n, t)) => engine.catalog.table(n, t).into_iter().collect(),
                None => engine.catalog.tables(),
            };
            resumed.iter().for_each(|def| engine.maybe_trigger_flush(def));
            Ok(StatementResult::message(0, message))
        }
        KalamStatement::AlterFlushSettings { namespace, table, change } => {
            let message = engine.alter_flush_settings(&namespace, &table, &change)?;
            if let Some(def) = engine.catalog.table(&namespace, &table) {
                engine.maybe_trigger_flush(&def);
            }
            Ok(StatementResult::message(0, message))
        }
        KalamStatement::KillJob { job_id } => Ok(StatementResult::message(0, engine.kill_job(&job_id)?)),
        KalamStatement::CreateStorage { id, if_not_exists, spec } => {
            Ok(StatementResult::message(0, engine.create_storage(&id, if_not_exists, spec)?))
        }
        KalamStatement::AlterStorage { id, spec } => Ok(StatementResult::message(0, engine.alter_storage(&id, spec)?)),
        KalamStatement::DropStorage { id, if_exists } => {
            Ok(StatementResult::message(0, engine.drop_storage(&id, if_exists)?))
        }
        KalamStatement::RetryJob { job_id } => Ok(StatementResult::message(0, engine.retry_job(&job_id)?)),
        stmt @ (KalamStatement::Insert(_) | KalamStatement::Update(_) | KalamStatement::Delete(_)) => {
            let (result, def) = write_dml(engine, None, &stmt, user, selected)?;
            engine.maybe_trigger_flush(&def);
            Ok(result)
        }
        KalamStatement::Query(_)
        | KalamStatement::DropTable { .. }
        | KalamStatement::DropNamespace { .. }
        | KalamStatement::ShowNamespaces
        | KalamStatement::ShowStorages
        | KalamStatement::ShowTables { .. }
        | KalamStatement::Describe { .. }
        | KalamStatement::ShowTableStats { .. }
        | KalamStatement::KillLiveQuery { .. }
        | KalamStatement::Subscribe { .. }
        | KalamStatement::AlterTable { .. }
        | KalamStatement::CreateUser { .. }
        | KalamStatement::AlterUser { .. }
        | KalamStatement::DropUser { .. }
        | KalamStatement::ClearCache
        | KalamStatement::Begin
        | KalamStatement::Commit
        | KalamStatement::Rollback => Err(EngineError::internal("statement reached the write path")),
    }
}

/// FLUSH ALL TABLES [IN ns]: one job per USER/SHARED table that is not paused, in namespace
/// then table order (an active job is reported instead of a new one).
fn flush_all(engine: &Arc<Engine>, namespace: Option<&str>) -> Result<StatementResult, EngineError> {
    if let Some(ns) = namespace
        && !engine.catalog.namespace_exists(ns)
    {
        return Err(EngineError::user(ErrorCode::NamespaceNotFound, format!("Namespace '{ns}' does not exist")));
    }
    if engine.flush_paused_all.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(EngineError::user(
            ErrorCode::InvalidOperation,
            "Flush is paused for all tables. Use RESUME FLUSH ALL first.",
        ));
    }
    let columns: Vec<String> = ["job_id", "namespace_id", "table_name", "status"].map(String::from).to_vec();
    let mut rows = Vec::new();
    let mut ids = Vec::new();
    for def in engine.catalog.tables() {
        let in_scope = namespace.is_none_or(|ns| def.namespace.as_str() == ns);
        if !in_scope || def.table_type == kalam_types::schema::TableType::Stream || engine.flush_paused(&def) {
            continue;
        }
        let (job_id, _) = engine.create_flush_job(&def)?;
        let status = engine.job(&job_id)?.status;
        rows.push(OrderedRow(vec![
            ("job_id".into(), Json::String(job_id.clone())),
            ("namespace_id".into(), Json::String(def.namespace.to_string())),
            ("table_name".into(), Json::String(def.name.to_string())),
            ("status".into(), Json::String(status)),
        ]));
        ids.push(job_id);
    }
    let message = if ids.is_empty() {
        "No tables to flush".to_owned()
    } else {
        format!("Flush started for {} table(s). Job IDs: [{}]", ids.len(), ids.join(", "))
    };
    Ok(StatementResult {
        columns,
        row_count: rows.len() as u64,
        rows: Some(rows),
        message: Some(message),
        cache_hit: None,
    })
}

async fn drop_table(
    engine: &Arc<Engine>,
    ns: &str,
    table: &str,
    if_exists: bool,
) -> Result<StatementResult, EngineError> {
    let Some(def) = engine.catalog.table(ns, table) else {
        if if_exists {
            return Ok(StatementResult::message(0, format!("Table {ns}.{table} does not exist (skipped)")));
        }
        return Err(crate::catalog::table_not_found(ns, table).into());
    };
    let live = engine.live_queries_on(ns, Some(table)).await;
    if live > 0 {
        return Err(EngineError::user(
            ErrorCode::DependencyExists,
            format!("Cannot drop table {ns}.{table} while {live} active live queries exist"),
        ));
    }
    let e = engine.clone();
    let dropped = tokio::task::spawn_blocking(move || e.drop_table(&def)).await.map_err(EngineError::internal)??;
    Ok(StatementResult::message(
        0,
        format!(
            "Table {ns}.{table} dropped successfully ({} Parquet files deleted, {} bytes freed)",
            dropped.files, dropped.bytes
        ),
    ))
}

async fn drop_namespace(
    engine: &Arc<Engine>,
    name: &str,
    if_exists: bool,
    cascade: bool,
) -> Result<StatementResult, EngineError> {
    if !engine.catalog.namespace_exists(name) {
        if if_exists {
            return Ok(StatementResult::message(0, format!("Namespace '{name}' does not exist (skipped)")));
        }
        return Err(EngineError::user(ErrorCode::NamespaceNotFound, format!("Namespace '{name}' does not exist")));
    }
    if cascade {
        let tables: Vec<_> = engine.catalog.tables().into_iter().filter(|t| t.namespace.as_str() == name).collect();
        for def in &tables {
            let live = engine.live_queries_on(name, Some(def.name.as_str())).await;
            if live > 0 {
                return Err(EngineError::user(
                    ErrorCode::DependencyExists,
                    format!("Cannot drop table {} while {live} active live queries exist", def.qualified_name()),
                ));
            }
        }
        for def in tables {
            let e = engine.clone();
            tokio::task::spawn_blocking(move || e.drop_table(&def)).await.map_err(EngineError::internal)??;
        }
    }
    let (e, n) = (engine.clone(), name.to_owned());
    tokio::task::spawn_blocking(move || e.drop_namespace(&n)).await.map_err(EngineError::internal)??;
    Ok(StatementResult::message(0, format!("Namespace '{name}' dropped successfully")))
}
