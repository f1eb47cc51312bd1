//! Live queries on kalamd's side (api.md §4): planning a subscription's SELECT, reading its
//! snapshot at one change-log position, change-log retention, and the SQL statements
//! `SUBSCRIBE TO` and `KILL LIVE QUERY` (sql.md §12). kalam-lived owns the sockets and
//! evaluates the filters; it asks here for what only the data owner knows.

use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::sql::sqlparser::ast::{
    Expr, GroupByExpr, SelectItem, SetExpr, Statement, TableFactor, Value as SqlValue, visit_expressions,
    visit_expressions_mut,
};
use kalam_filter::{JsonRow, RowFilter};
use kalam_rpc::{Snapshot, SnapshotOptions, SubscribeOptions, SubscriptionPlan};
use kalam_types::codec;
use kalam_types::error::{ErrorCode, KalamError};
use kalam_types::ids::UserId;
use kalam_types::schema::{DELETED_COLUMN, TableDefinition, TableType, UPDATED_COLUMN};
use kalam_types::value::Literal;
use kalam_types::{Value, time};
use serde_json::{Map, Value as Json};

use crate::engine::Engine;
use crate::error::EngineError;
use crate::read::{MergedRow, read_partition};
use crate::rowjson::{OrderedRow, full_row_json};
use crate::sql::StatementResult;
use crate::sql::parse::{KalamStatement, ident_name, object_parts, parse_statement};

/// Optimistic snapshot reads tried before one is taken under the commit lock.
const SNAPSHOT_ATTEMPTS: usize = 3;
/// Rows a filter is evaluated on at once while reading a snapshot.
const FILTER_CHUNK: usize = 4_096;

fn unsupported(message: &str) -> EngineError {
    EngineError::user(ErrorCode::UnsupportedQuery, message.to_owned())
}

fn invalid_option(message: impl Into<String>) -> EngineError {
    EngineError::user(ErrorCode::InvalidOption, message.into())
}

/// Checks a live-query SELECT for `user` (api.md §4.5) and says what it subscribes to.
pub fn plan(engine: &Engine, user: &UserId, sql: &str) -> Result<SubscriptionPlan, EngineError> {
    let KalamStatement::Query(stmt) = parse_statement(sql)? else {
        return Err(unsupported("Live queries must be a SELECT"));
    };
    let Statement::Query(query) = *stmt else { return Err(unsupported("Live queries must be a SELECT")) };
    if query.order_by.is_some() || query.limit_clause.is_some() || query.fetch.is_some() {
        return Err(unsupported("ORDER BY and LIMIT are not allowed in live queries"));
    }
    if query.with.is_some() {
        return Err(unsupported("WITH is not allowed in live queries"));
    }
    let SetExpr::Select(select) = *query.body else {
        return Err(unsupported("Live queries must be a single SELECT"));
    };
    if select.distinct.is_some() {
        return Err(unsupported("DISTINCT is not allowed in live queries"));
    }
    let grouped = match &select.group_by {
        GroupByExpr::All(_) => true,
        GroupByExpr::Expressions(exprs, _) => !exprs.is_empty(),
    };
    if grouped || select.having.is_some() || !select.named_window.is_empty() || select.qualify.is_some() {
        return Err(unsupported("GROUP BY, HAVING and window clauses are not allowed in live queries"));
    }
    if select.from.len() != 1 || !select.from[0].joins.is_empty() {
        return Err(unsupported("Live queries read exactly one table (no joins)"));
    }
    let TableFactor::Table { name, .. } = &select.from[0].relation else {
        return Err(unsupported("Live queries read exactly one table (no subqueries)"));
    };
    if name.0.len() != 2 {
        return Err(EngineError::user(
            ErrorCode::InvalidSql,
            "Live queries need a qualified table name (namespace.table)",
        ));
    }
    let (ns, table) = object_parts(name)?;
    let def = engine.catalog.require_table(&ns, &table)?;
    if def.table_type == TableType::Shared {
        return Err(EngineError::user(
            ErrorCode::InvalidOperation,
            "Live query subscriptions not supported on shared tables",
        ));
    }
    let mut columns = Vec::new();
    let mut star = false;
    for item in &select.projection {
        match item {
            SelectItem::Wildcard(_) => star = true,
            SelectItem::UnnamedExpr(Expr::Identifier(id)) => {
                let name = ident_name(id);
                if def.column_index(&name).is_none() {
                    return Err(EngineError::user(
                        ErrorCode::ColumnNotFound,
                        format!("column \"{name}\" does not exist"),
                    ));
                }
                columns.push(name);
            }
            _ => return Err(unsupported("Live queries project plain columns or *")),
        }
    }
    if star && !columns.is_empty() {
        return Err(unsupported("Live queries project plain columns or *, not both"));
    }
    let filter = match select.selection {
        Some(mut expr) => {
            let mut subquery = false;
            let _ = visit_expressions(&expr, |e| {
                subquery |= matches!(e, Expr::Subquery(_) | Expr::Exists { .. } | Expr::InSubquery { .. });
                ControlFlow::<()>::Continue(())
            });
            if subquery {
                return Err(unsupported("Live queries cannot use subqueries"));
            }
            bind_current_user(&mut expr, user);
            let text = expr.to_string();
            check_filter(engine, &def, &text)?;
            Some(text)
        }
        None => None,
    };
    Ok(SubscriptionPlan {
        namespace: ns,
        table,
        table_type: def.table_type,
        definition: def.as_ref().clone(),
        columns: (!star).then_some(columns),
        filter,
        start_after: engine.store.head_seq(),
    })
}

/// Most validated filters remembered (the set is emptied when full).
const MAX_VALID_FILTERS: usize = 10_000;

/// Compiles `filter` exactly as kalam-lived will, so a bad predicate fails the subscription at
/// once. Filters known to compile for this table version are not compiled again (many clients
/// subscribe with the same few predicates).
fn check_filter(engine: &Engine, def: &TableDefinition, filter: &str) -> Result<(), EngineError> {
    let key = (def.namespace.to_string(), def.name.to_string(), def.schema_version, filter.to_owned());
    if engine.valid_live_filters.lock().unwrap_or_else(|p| p.into_inner()).contains(&key) {
        return Ok(());
    }
    RowFilter::compile(def, Some(filter)).map_err(EngineError::User)?;
    let mut valid = engine.valid_live_filters.lock().unwrap_or_else(|p| p.into_inner());
    if valid.len() >= MAX_VALID_FILTERS {
        valid.clear();
    }
    valid.insert(key);
    Ok(())
}

/// Replaces `CURRENT_USER()` with the acting user's id (api.md §4.4).
fn bind_current_user(expr: &mut Expr, user: &UserId) {
    let _ = visit_expressions_mut(expr, |e| {
        if let Expr::Function(f) = e
            && f.name.0.len() == 1
            && f.name.0[0].as_ident().is_some_and(|i| i.value.eq_ignore_ascii_case("current_user"))
        {
            *e = Expr::value(SqlValue::SingleQuotedString(user.to_string()));
        }
        ControlFlow::<()>::Continue(())
    });
}

/// What a snapshot keeps, from the client's options.
struct Selection {
    limit: Option<usize>,
    since_us: Option<i64>,
    from_key: Option<Vec<u8>>,
}

fn selection(def: &TableDefinition, options: &SnapshotOptions) -> Result<Selection, EngineError> {
    let since_us =
        match &options.since {
            None => None,
            Some(_) if def.table_type == TableType::Stream => {
                return Err(invalid_option("Invalid option value: since is not available on STREAM tables"));
            }
            Some(text) => Some(time::parse_timestamp_micros(text).ok_or_else(|| {
                invalid_option(format!("Invalid option value: since must be a timestamp, got '{text}'"))
            })?),
        };
    let from_key = match &options.from_id {
        None => None,
        Some(text) => {
            let json: Json = serde_json::from_str(text)
                .map_err(|_| invalid_option(format!("Invalid option value: from_id {text}")))?;
            let pk = &def.columns[def.primary_key_index()];
            let value = Value::coerce(&Literal::from_json(&json), pk.data_type, &pk.name)
                .map_err(|e| invalid_option(format!("Invalid option value: from_id: {}", e.message)))?;
            Some(
                codec::encode_pk(&value)
                    .ok_or_else(|| invalid_option("Invalid option value: from_id must not be null"))?,
            )
        }
    };
    let limit = match options.last_rows {
        None | Some(0) if since_us.is_some() || from_key.is_some() => None,
        None => Some(0),
        Some(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
    };
    Ok(Selection { limit, since_us, from_key })
}

/// Reads the initial rows of a subscription at one change-log position.
pub fn snapshot(
    engine: &Engine,
    user: &UserId,
    plan: &SubscriptionPlan,
    options: &SnapshotOptions,
) -> Result<Snapshot, EngineError> {
    let def = engine.catalog.require_table(&plan.namespace, &plan.table)?;
    let sel = selection(&def, options)?;
    let filter = RowFilter::compile(&def, plan.filter.as_deref()).map_err(EngineError::User)?;
    let (rows, commit_seq) = read_consistent(engine, &def, user)?;
    let cap = engine.cfg.websocket.max_initial_rows;
    let pk_idx = def.primary_key_index();
    let mut kept: Vec<(MergedRow, JsonRow)> = Vec::new();
    let candidates = rows.into_iter().filter(|r| {
        let visible = match sel.since_us {
            Some(since) => r.updated_us > since,
            None => !r.deleted,
        };
        visible
            && sel
                .from_key
                .as_ref()
                .is_none_or(|from| codec::encode_pk(&r.values[pk_idx]).is_some_and(|k| k.as_slice() > from.as_slice()))
    });
    let mut chunk: Vec<(MergedRow, JsonRow)> = Vec::with_capacity(FILTER_CHUNK);
    let flush_chunk = |chunk: &mut Vec<(MergedRow, JsonRow)>, kept: &mut Vec<(MergedRow, JsonRow)>| {
        let refs: Vec<Option<&JsonRow>> = chunk.iter().map(|(_, j)| Some(j)).collect();
        let matched = filter.matches(&refs);
        kept.extend(chunk.drain(..).zip(matched).filter(|(_, m)| *m).map(|(r, _)| r));
    };
    for row in candidates {
        let json = full_row_json(&def, &row.values, row.updated_us, row.deleted);
        let Ok(Json::Object(map)) = serde_json::from_str::<Json>(&json) else { continue };
        chunk.push((row, map));
        if chunk.len() == FILTER_CHUNK {
            flush_chunk(&mut chunk, &mut kept);
        }
    }
    flush_chunk(&mut chunk, &mut kept);
    // Oldest first by `_updated`, ties in key order (the read is in key order; the sort is
    // stable). STREAM rows come in insertion order already.
    if def.table_type != TableType::Stream {
        kept.sort_by_key(|(r, _)| r.updated_us);
    }
    let wanted = sel.limit.map_or(kept.len(), |n| n.min(kept.len()));
    let has_more = wanted > cap;
    let take = wanted.min(cap);
    // `last_rows` keeps the newest rows; a plain `since` / `from_id` resync the oldest, so the
    // client can continue from the last one it got.
    let range = if sel.limit.is_some() { kept.len() - take..kept.len() } else { 0..take };
    let rows = kept[range].iter().map(|(_, json)| project(&def, plan.columns.as_deref(), json)).collect();
    Ok(Snapshot { rows, has_more, commit_seq })
}

/// A row with the subscription's columns, then `_updated` and `_deleted` (not for STREAM).
fn project(def: &TableDefinition, columns: Option<&[String]>, row: &Map<String, Json>) -> String {
    let names: Vec<&str> = match columns {
        Some(cols) => cols.iter().map(String::as_str).collect(),
        None => def.columns.iter().map(|c| c.name.as_str()).collect(),
    };
    let system: &[&str] = if def.table_type == TableType::Stream { &[] } else { &[UPDATED_COLUMN, DELETED_COLUMN] };
    let out = OrderedRow(
        names.iter().chain(system).map(|c| ((*c).to_owned(), row.get(*c).cloned().unwrap_or(Json::Null))).collect(),
    );
    serde_json::to_string(&out).unwrap_or_else(|_| "{}".into())
}

/// The partition's rows and the change-log position they are consistent with.
///
/// Optimistic first: read between two stable heads; when no change of this partition was
/// committed in between, the rows are the partition's state at the second one. Under steady
/// writes to the partition, the last attempt reads while holding the commit lock.
fn read_consistent(
    engine: &Engine,
    def: &TableDefinition,
    user: &UserId,
) -> Result<(Vec<MergedRow>, u64), EngineError> {
    if def.table_type != TableType::Stream {
        for _ in 0..SNAPSHOT_ATTEMPTS {
            let before = engine.store.stable_head();
            let rows = read_partition(engine, def, Some(user))?;
            let after = engine.store.stable_head();
            if after == before || !partition_changed(engine, def, user, before, after)? {
                return Ok((rows, after));
            }
        }
    }
    let guard = engine.store.begin();
    let rows = read_partition(engine, def, Some(user))?;
    let seq = guard.last_seq();
    drop(guard);
    Ok((rows, seq))
}

/// True when a change of `user`'s partition of `def` was committed in `(after, until]`.
fn partition_changed(
    engine: &Engine,
    def: &TableDefinition,
    user: &UserId,
    mut after: u64,
    until: u64,
) -> Result<bool, EngineError> {
    while after < until {
        let records = engine.read_changes(after, 10_000)?;
        let Some(last) = records.last() else { return Ok(false) };
        after = last.commit_seq;
        if records.iter().any(|r| {
            r.commit_seq <= until
                && r.namespace == def.namespace.as_str()
                && r.table == def.name.as_str()
                && r.user_id.as_deref() == Some(user.as_str())
        }) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Removes change-log records older than `storage.change_log_retention_seconds`, once a
/// minute (or more often for short retentions).
pub async fn retention_loop(engine: Arc<Engine>, stop: tokio_util::sync::CancellationToken) {
    let retention = engine.cfg.storage.change_log_retention_seconds;
    let period = std::time::Duration::from_secs((retention / 10).clamp(1, 60));
    crate::engine::every(engine, period, stop, "change-log retention", move |e| {
        let cutoff = crate::clock::wall_clock_us().saturating_sub((retention as i64).saturating_mul(1_000_000));
        Ok(e.store.purge_change_log(cutoff)?)
    })
    .await;
}

/// `SUBSCRIBE TO`: validates the subscription and tells the client how to open it over the
/// WebSocket (sql.md §12).
pub fn subscribe_statement(
    engine: &Engine,
    user: &UserId,
    table: &datafusion::sql::sqlparser::ast::ObjectName,
    filter: Option<&Expr>,
    options: &Map<String, Json>,
) -> Result<StatementResult, EngineError> {
    let sql = match filter {
        Some(f) => format!("SELECT * FROM {table} WHERE {f}"),
        None => format!("SELECT * FROM {table}"),
    };
    // SUBSCRIBE TO knows only the snapshot options of sql.md §12.
    if let Some(other) = options.keys().find(|k| !matches!(k.as_str(), "last_rows" | "since" | "from_id")) {
        return Err(invalid_option(format!("Unknown option '{other}'")));
    }
    let snapshot = SubscribeOptions::parse(options).map_err(EngineError::User)?.snapshot.unwrap_or_default();
    let plan = plan(engine, user, &sql)?;
    let def = engine.catalog.require_table(&plan.namespace, &plan.table)?;
    selection(&def, &snapshot)?;
    let host = match engine.cfg.server.host.as_str() {
        "0.0.0.0" | "::" => "localhost",
        h => h,
    };
    let ws_url = format!("ws://{host}:{}/v1/ws", engine.cfg.server.port);
    let id = format!("sub-{}", uuid::Uuid::now_v7());
    let subscription = serde_json::json!({"id": id, "sql": sql, "options": options});
    let message = "Open a WebSocket to ws_url and send this subscription".to_owned();
    let row = OrderedRow(vec![
        ("status".into(), Json::String("subscription_required".into())),
        ("ws_url".into(), Json::String(ws_url)),
        ("subscription".into(), subscription),
        ("message".into(), Json::String(message.clone())),
    ]);
    Ok(StatementResult {
        columns: ["status", "ws_url", "subscription", "message"].map(String::from).to_vec(),
        rows: Some(vec![row]),
        row_count: 1,
        message: Some(message),
        cache_hit: None,
    })
}

/// `KILL LIVE QUERY '<live_id>'`: kalam-lived ends the subscription.
/// `KILL LIVE QUERY`; with `owner`, only a live query of that user (others are "not found", so
/// their ids cannot be probed).
pub async fn kill_live_query(
    engine: &Engine,
    live_id: &str,
    owner: Option<&UserId>,
) -> Result<StatementResult, EngineError> {
    let not_found = || EngineError::user(ErrorCode::LiveQueryNotFound, format!("Live query '{live_id}' not found"));
    let Ok(client) = kalam_rpc::transport::connect_live(&engine.cfg.run_dir()).await else {
        return Err(not_found());
    };
    if let Some(owner) = owner {
        let all = client.list_subscriptions(tarpc::context::current()).await.unwrap_or_default();
        if !all.iter().any(|s| s.live_id == live_id && s.user_id == owner.as_str()) {
            return Err(not_found());
        }
    }
    match client.kill_live_query(tarpc::context::current(), live_id.to_owned()).await {
        Ok(Ok(_)) => Ok(StatementResult::message(0, format!("Live query {live_id} terminated"))),
        Ok(Err(e)) if e.code == ErrorCode::LiveQueryNotFound => Err(not_found()),
        Ok(Err(e)) => Err(EngineError::User(e)),
        Err(_) => Err(EngineError::User(KalamError::new(
            ErrorCode::ServiceUnavailable,
            "kalam-lived is not answering; try again",
        ))),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use kalam_config::KalamConfig;

    use super::*;
    use crate::sql::execute_batch;

    async fn engine(max_initial_rows: usize) -> (tempfile::TempDir, Arc<Engine>) {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = KalamConfig::test_config(dir.path(), 1);
        cfg.resolve_paths().unwrap();
        cfg.websocket.max_initial_rows = max_initial_rows;
        let engine = Engine::open(cfg).unwrap();
        let setup = "CREATE NAMESPACE app; CREATE USER TABLE app.m (id BIGINT PRIMARY KEY, room TEXT); \
                     CREATE SHARED TABLE app.s (id BIGINT PRIMARY KEY)";
        let alice = UserId::parse("alice").unwrap();
        assert!(execute_batch(&engine, setup, None, &alice).await.1.is_none());
        (dir, engine)
    }

    #[tokio::test]
    async fn subscription_selects_are_planned_or_refused_as_specified() {
        let (_dir, engine) = engine(5).await;
        let alice = UserId::parse("alice").unwrap();
        let planned = plan(&engine, &alice, "SELECT id FROM app.m WHERE room = CURRENT_USER() OR id > 3").unwrap();
        assert_eq!(planned.columns, Some(vec!["id".to_owned()]));
        assert_eq!(planned.filter.as_deref(), Some("room = 'alice' OR id > 3"));
        assert_eq!(plan(&engine, &alice, "SELECT * FROM app.m").unwrap().columns, None);
        let code = |sql: &str| match plan(&engine, &alice, sql) {
            Err(EngineError::User(e)) => (e.code, e.message),
            other => panic!("{sql}: {other:?}"),
        };
        for sql in [
            "SELECT * FROM app.m a JOIN app.m b ON a.id = b.id",
            "SELECT room FROM app.m GROUP BY room",
            "SELECT * FROM app.m ORDER BY id",
            "SELECT * FROM app.m LIMIT 3",
            "SELECT DISTINCT room FROM app.m",
            "SELECT * FROM app.m WHERE id IN (SELECT id FROM app.m)",
            "SELECT * FROM app.m WHERE count(id) > 1",
            "SELECT id + 1 FROM app.m",
            "SELECT * FROM (SELECT * FROM app.m) t",
        ] {
            assert_eq!(code(sql).0, ErrorCode::UnsupportedQuery, "{sql}");
        }
        assert_eq!(
            code("SELECT * FROM app.s"),
            (ErrorCode::InvalidOperation, "Live query subscriptions not supported on shared tables".into())
        );
        assert_eq!(code("SELECT * FROM app.nope").0, ErrorCode::TableNotFound);
        assert_eq!(code("SELECT nope FROM app.m").0, ErrorCode::ColumnNotFound);
        assert_eq!(code("SELECT * FROM app.m WHERE nope = 1").0, ErrorCode::ColumnNotFound);
        assert_eq!(code("SELECT * FROM m").0, ErrorCode::InvalidSql);
    }

    #[tokio::test]
    async fn subscribe_to_validates_and_names_bad_options() {
        let (_dir, engine) = engine(5).await;
        let alice = UserId::parse("alice").unwrap();
        let run = |sql: &str| {
            let KalamStatement::Subscribe { table, filter, options } = parse_statement(sql).unwrap() else {
                panic!("{sql} is not SUBSCRIBE TO")
            };
            subscribe_statement(&engine, &alice, &table, filter.as_deref(), &options)
        };
        let ok = run("SUBSCRIBE TO app.m WHERE room = 'a' LAST 3").unwrap();
        let row = &ok.rows.unwrap()[0];
        assert_eq!(row.0[0].1, "subscription_required");
        assert_eq!(row.0[2].1["sql"], "SELECT * FROM app.m WHERE room = 'a'");
        assert_eq!(row.0[2].1["options"]["last_rows"], 3);
        for (sql, message) in [
            (
                "SUBSCRIBE TO app.m OPTIONS (last_rows = -1)",
                "Invalid option value: last_rows must be a non-negative integer",
            ),
            ("SUBSCRIBE TO app.m OPTIONS (from_seq = 3)", "Unknown option 'from_seq'"),
            (
                "SUBSCRIBE TO app.m OPTIONS (since = 'soon')",
                "Invalid option value: since must be a timestamp, got 'soon'",
            ),
        ] {
            match run(sql) {
                Err(EngineError::User(e)) => {
                    assert_eq!((e.code, e.message.as_str()), (ErrorCode::InvalidOption, message))
                }
                other => panic!("{sql}: {other:?}"),
            }
        }
        match run("SUBSCRIBE TO app.s") {
            Err(EngineError::User(e)) => assert_eq!(e.code, ErrorCode::InvalidOperation),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn snapshot_options_select_the_documented_rows() {
        let (_dir, engine) = engine(5).await;
        let alice = UserId::parse("alice").unwrap();
        let bob = UserId::parse("bob").unwrap();
        let sql = "INSERT INTO app.m VALUES (1,'a'),(2,'b'),(3,'a'),(4,'a'),(5,'a'),(6,'a'),(7,'a'),(8,'a')";
        assert!(execute_batch(&engine, sql, None, &alice).await.1.is_none());
        assert!(execute_batch(&engine, "INSERT INTO app.m VALUES (100,'a')", None, &bob).await.1.is_none());
        let mark = engine.store.head_seq();
        let since = time::format_timestamp_micros(crate::clock::wall_clock_us());
        assert!(execute_batch(&engine, "DELETE FROM app.m WHERE id = 8", None, &alice).await.1.is_none());
        assert!(execute_batch(&engine, "UPDATE app.m SET room = 'a' WHERE id = 2", None, &alice).await.1.is_none());
        let p = plan(&engine, &alice, "SELECT id FROM app.m WHERE room = 'a'").unwrap();
        let ids = |s: &Snapshot| -> Vec<(i64, bool)> {
            s.rows
                .iter()
                .map(|r| {
                    let v: Json = serde_json::from_str(r).unwrap();
                    (v["id"].as_i64().unwrap(), v["_deleted"].as_bool().unwrap())
                })
                .collect()
        };
        let opts = |last_rows, since: Option<&str>, from_id: Option<&str>| SnapshotOptions {
            last_rows,
            since: since.map(str::to_owned),
            from_id: from_id.map(str::to_owned),
        };
        let s = snapshot(&engine, &alice, &p, &opts(Some(3), None, None)).unwrap();
        // The three most recent matching rows, oldest first (row 2 was updated last).
        assert_eq!(ids(&s), vec![(6, false), (7, false), (2, false)]);
        assert!(!s.has_more);
        assert_eq!(s.commit_seq, engine.store.head_seq());
        // `since` includes rows deleted since; bob's rows never appear.
        let s = snapshot(&engine, &alice, &p, &opts(None, Some(&since), None)).unwrap();
        assert_eq!(ids(&s), vec![(8, true), (2, false)]);
        assert!(s.commit_seq > mark);
        // `from_id`, capped at max_initial_rows (5) with has_more, oldest first.
        let s = snapshot(&engine, &alice, &p, &opts(None, None, Some("1"))).unwrap();
        assert_eq!(ids(&s), vec![(3, false), (4, false), (5, false), (6, false), (7, false)]);
        assert!(s.has_more);
        let s = snapshot(&engine, &alice, &p, &opts(Some(2), None, Some("4"))).unwrap();
        assert_eq!(ids(&s), vec![(6, false), (7, false)]);
        for bad in [opts(None, Some("soon"), None), opts(None, None, Some("\"x\""))] {
            match snapshot(&engine, &alice, &p, &bad) {
                Err(EngineError::User(e)) => assert_eq!(e.code, ErrorCode::InvalidOption, "{e}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn snapshots_taken_during_writes_hold_exactly_the_changes_up_to_their_position() {
        let (_dir, engine) = engine(10_000).await;
        let alice = UserId::parse("alice").unwrap();
        let writer = {
            let (engine, alice) = (engine.clone(), alice.clone());
            tokio::spawn(async move {
                for i in 0..300 {
                    let sql =
                        format!("INSERT INTO app.m VALUES ({i}, 'a'); UPDATE app.m SET room = 'b' WHERE id = {i}");
                    assert!(execute_batch(&engine, &sql, None, &alice).await.1.is_none());
                }
            })
        };
        let p = plan(&engine, &alice, "SELECT * FROM app.m").unwrap();
        let mut snapshots = Vec::new();
        while !writer.is_finished() {
            let (engine, alice, p) = (engine.clone(), alice.clone(), p.clone());
            let s = tokio::task::spawn_blocking(move || {
                snapshot(&engine, &alice, &p, &SnapshotOptions { from_id: Some("-1".into()), ..Default::default() })
            })
            .await
            .unwrap()
            .unwrap();
            snapshots.push(s);
        }
        writer.await.unwrap();
        // Replaying the change log up to each snapshot's position gives exactly its rows.
        let log = engine.read_changes(0, 100_000).unwrap();
        assert!(snapshots.len() > 3, "{} snapshots", snapshots.len());
        for s in &snapshots {
            let mut state = BTreeMap::new();
            for r in log.iter().filter(|r| r.commit_seq <= s.commit_seq && r.table == "m") {
                let new: Option<Json> = r.new_row.as_deref().map(|t| serde_json::from_str(t).unwrap());
                let old: Json = serde_json::from_str(r.old_row.as_deref().or(r.new_row.as_deref()).unwrap()).unwrap();
                match new {
                    Some(v) => state.insert(v["id"].as_i64().unwrap(), v["room"].as_str().unwrap().to_owned()),
                    None => state.remove(&old["id"].as_i64().unwrap()),
                };
            }
            let got: BTreeMap<i64, String> = s
                .rows
                .iter()
                .map(|r| {
                    let v: Json = serde_json::from_str(r).unwrap();
                    (v["id"].as_i64().unwrap(), v["room"].as_str().unwrap().to_owned())
                })
                .collect();
            assert_eq!(got, state, "snapshot at {}", s.commit_seq);
        }
    }
}
