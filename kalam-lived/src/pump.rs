//! The change-log pump: long-polls kalamd's change log from its cursor and hands each change
//! to the subscriptions of its partition whose filter it passes (api.md §4.6). A kalamd
//! restart only interrupts the poll: the pump reconnects and continues from its cursor, so
//! open sockets miss nothing. The cursor lives in memory: after a restart of this daemon there
//! are no sockets, and clients resume with `from_seq`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kalam_rpc::{ChangeRecord, EngineClient};
use kalam_types::change::ChangeKind;
use kalam_types::error::ErrorCode;
use kalam_types::schema::{DELETED_COLUMN, TableType, UPDATED_COLUMN};
use serde_json::{Map, Value as Json};
use tokio_util::sync::CancellationToken;

use crate::registry::{Event, Outgoing, PartitionKey, Registry, Subscription};

/// Records fetched per poll.
pub const POLL_BATCH: u32 = 1_000;
/// How long one poll waits on kalamd for new records.
const POLL_WAIT_MS: u32 = 5_000;
const RECONNECT_MIN: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_secs(2);

pub struct Pump {
    pub registry: Arc<Registry>,
    pub run_dir: PathBuf,
}

impl Pump {
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = RECONNECT_MIN;
        let mut client: Option<EngineClient> = None;
        while !shutdown.is_cancelled() {
            let c = match &client {
                Some(c) => c.clone(),
                None => match kalam_rpc::transport::connect_engine(&self.run_dir).await {
                    Ok(c) => {
                        client = Some(c.clone());
                        c
                    }
                    Err(_) => {
                        tokio::select! { _ = shutdown.cancelled() => break, _ = tokio::time::sleep(backoff) => {} }
                        backoff = (backoff * 2).min(RECONNECT_MAX);
                        continue;
                    }
                },
            };
            let cursor = self.registry.cursor();
            let after = cursor.unwrap_or(u64::MAX);
            let wait = if cursor.is_none() { 0 } else { POLL_WAIT_MS };
            let ctx = kalam_rpc::transport::context_with_timeout(Duration::from_millis(u64::from(wait) + 10_000));
            let result = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = c.poll_changes(ctx, after, POLL_BATCH, wait) => r,
            };
            match result {
                Ok(Ok(batch)) => {
                    backoff = RECONNECT_MIN;
                    match cursor {
                        None => {
                            // First contact: changes from now on.
                            self.registry.reset(batch.head_seq);
                            continue;
                        }
                        Some(at) if !batch.reaches_back_to(at, TableType::User) => {
                            tracing::error!(
                                cursor = at,
                                head = batch.head_seq,
                                floor = batch.floor_seq,
                                "change log no longer reaches the dispatch cursor; ending every subscription"
                            );
                            for sub in self.registry.reset(batch.head_seq) {
                                end(
                                    &sub,
                                    ErrorCode::ResumeExpired,
                                    "Changes were lost; subscribe again with a snapshot",
                                );
                            }
                            continue;
                        }
                        Some(_) => {}
                    }
                    let Some(last) = batch.records.last().map(|r| r.commit_seq) else { continue };
                    let registry = self.registry.clone();
                    // Filter evaluation is CPU work: keep it off the async workers.
                    let records = batch.records;
                    let _ = tokio::task::spawn_blocking(move || {
                        registry.dispatch(last, |lookup| dispatch(&records, lookup, &registry.delivered))
                    })
                    .await;
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "change-log poll refused");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RECONNECT_MAX);
                }
                Err(e) => {
                    tracing::info!(error = %e, "lost kalamd; reconnecting");
                    client = None;
                }
            }
        }
    }
}

/// Tells a subscription's client that the server ended it.
pub fn end(sub: &Subscription, code: ErrorCode, message: &str) {
    let text = serde_json::json!({"type": "error", "subscription_id": sub.subscription_id,
        "code": code.as_str(), "message": message})
    .to_string();
    let out = Outgoing::Ended { subscription_id: sub.subscription_id.clone(), generation: sub.generation, text };
    if sub.conn.tx.try_send(out).is_err() {
        sub.conn.slow.cancel();
    }
}

/// One changed row, parsed once for every subscription of its partition.
pub struct Parsed<'a> {
    pub record: &'a ChangeRecord,
    pub new: Option<Map<String, Json>>,
    /// The version the change replaces, as a filter sees it (a soft delete's record carries
    /// the deleted version: it is read as the live row it was).
    pub old: Option<Map<String, Json>>,
}

pub fn parse(record: &ChangeRecord) -> Parsed<'_> {
    let object = |text: &Option<String>| match text.as_deref().map(serde_json::from_str::<Json>) {
        Some(Ok(Json::Object(m))) => Some(m),
        _ => None,
    };
    let new = object(&record.new_row).filter(|m| m.get(DELETED_COLUMN) != Some(&Json::Bool(true)));
    let mut old = object(&record.old_row);
    if record.kind == ChangeKind::Delete
        && let Some(m) = &mut old
        && m.contains_key(DELETED_COLUMN)
    {
        m.insert(DELETED_COLUMN.into(), Json::Bool(false));
    }
    Parsed { record, new, old }
}

/// Hands each record to the matching subscriptions of its partition, in order.
fn dispatch(
    records: &[ChangeRecord],
    lookup: &dyn Fn(&PartitionKey) -> Option<Vec<Arc<Subscription>>>,
    delivered: &std::sync::atomic::AtomicU64,
) {
    // Records grouped by partition, in commit order within each group.
    let mut groups: HashMap<PartitionKey, Vec<&ChangeRecord>> = HashMap::new();
    for r in records {
        let Some(user) = &r.user_id else { continue };
        groups.entry((r.namespace.clone(), r.table.clone(), user.clone())).or_default().push(r);
    }
    for (key, group) in groups {
        let Some(subs) = lookup(&key) else { continue };
        let parsed: Vec<Parsed<'_>> = group.into_iter().map(parse).collect();
        for (sub, events) in match_group(&parsed, &subs) {
            for event in events {
                sub.offer(event, delivered);
            }
        }
    }
}

/// The events each subscription gets from `parsed` (one partition's records, in order):
/// every distinct filter is evaluated once over the whole group.
pub fn match_group<'s>(
    parsed: &[Parsed<'_>],
    subs: &'s [Arc<Subscription>],
) -> Vec<(&'s Arc<Subscription>, Vec<Event>)> {
    let mut verdicts: HashMap<*const kalam_filter::RowFilter, (Vec<bool>, Vec<bool>)> = HashMap::new();
    let mut out = Vec::with_capacity(subs.len());
    for sub in subs {
        let (old_ok, new_ok) = verdicts.entry(Arc::as_ptr(&sub.filter)).or_insert_with(|| {
            let old: Vec<Option<&Map<String, Json>>> = parsed.iter().map(|p| p.old.as_ref()).collect();
            let new: Vec<Option<&Map<String, Json>>> = parsed.iter().map(|p| p.new.as_ref()).collect();
            (sub.filter.matches(&old), sub.filter.matches(&new))
        });
        let mut events = Vec::new();
        for (i, p) in parsed.iter().enumerate() {
            let new = || p.record.new_row.as_deref().map(|text| project(sub, text));
            // A soft delete's record carries the deleted version (`_deleted: true`), which is
            // what the client is sent; anything else carries the previous version.
            let old = || p.record.old_row.as_deref().map(|text| project(sub, text));
            let (change_type, rows, old_values) = match (old_ok[i], new_ok[i]) {
                (false, true) => ("insert", new(), None),
                (true, true) => ("update", new(), old()),
                (true, false) => ("delete", None, old()),
                (false, false) => continue,
            };
            events.push(Event {
                commit_seq: p.record.commit_seq,
                change_type,
                timestamp_us: p.record.commit_time_us,
                rows,
                old_values,
            });
        }
        if !events.is_empty() {
            out.push((sub, events));
        }
    }
    out
}

/// A row (JSON object text as kalamd wrote it, columns in table order) with the
/// subscription's columns, then `_updated` and `_deleted` (STREAM rows have none). `SELECT *`
/// keeps the row as written, so columns added later appear.
pub fn project(sub: &Subscription, text: &str) -> String {
    let Some(columns) = &sub.columns else { return text.to_owned() };
    let Ok(Json::Object(row)) = serde_json::from_str::<Json>(text) else { return "{}".to_owned() };
    let system: &[&str] = if sub.table_type == TableType::Stream { &[] } else { &[UPDATED_COLUMN, DELETED_COLUMN] };
    let mut out = String::from("{");
    for (i, c) in columns.iter().map(String::as_str).chain(system.iter().copied()).enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(c).unwrap_or_default());
        out.push(':');
        out.push_str(&serde_json::to_string(row.get(c).unwrap_or(&Json::Null)).unwrap_or_default());
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicI64, AtomicU64};

    use kalam_types::ids::{NamespaceId, TableName};
    use kalam_types::schema::{ColumnDefinition, FlushPolicy, TableDefinition, TableOptions};
    use kalam_types::{KalamType, time};
    use tokio::sync::mpsc;

    use super::*;
    use crate::registry::{Conn, Delivery};

    fn def() -> TableDefinition {
        let column = |i: u32, name: &str, ty| ColumnDefinition {
            name: name.into(),
            column_id: i,
            data_type: ty,
            nullable: i > 1,
            is_primary_key: i == 1,
            default: None,
        };
        TableDefinition {
            namespace: NamespaceId::parse("app").unwrap(),
            name: TableName::parse("t").unwrap(),
            table_type: TableType::User,
            columns: vec![column(1, "id", KalamType::BigInt), column(2, "room", KalamType::Text)],
            schema_version: 1,
            storage_id: String::new(),
            flush_policy: FlushPolicy { row_threshold: None, interval_seconds: None },
            created_at_us: 0,
            updated_at_us: 0,
            options: TableOptions::default(),
            history: vec![],
        }
    }

    fn subscription(registry: &Registry, predicate: Option<&str>, columns: Option<&[&str]>) -> Arc<Subscription> {
        let (tx, _rx) = mpsc::channel(16);
        Arc::new(Subscription {
            connection_id: "c".into(),
            subscription_id: "s".into(),
            user_id: "alice".into(),
            namespace: "app".into(),
            table: "t".into(),
            table_type: TableType::User,
            sql: String::new(),
            options: None,
            columns: columns.map(|c| c.iter().map(|s| (*s).to_owned()).collect()),
            filter: registry.filter(&def(), predicate).unwrap(),
            generation: 1,
            delivery: std::sync::Mutex::new(Delivery::Live(0)),
            max_parked: 10,
            seq: AtomicU64::new(0),
            changes: AtomicU64::new(0),
            created_at_us: 0,
            last_update_us: AtomicI64::new(0),
            conn: Arc::new(Conn { tx, slow: CancellationToken::new() }),
        })
    }

    fn row(id: i64, room: &str, deleted: bool) -> String {
        let at = time::format_timestamp_micros(id);
        format!(r#"{{"id":{id},"room":"{room}","_updated":"{at}","_deleted":{deleted}}}"#)
    }

    fn record(seq: u64, kind: ChangeKind, old: Option<String>, new: Option<String>) -> ChangeRecord {
        ChangeRecord {
            commit_seq: seq,
            namespace: "app".into(),
            table: "t".into(),
            user_id: Some("alice".into()),
            kind,
            old_row: old,
            new_row: new,
            commit_time_us: seq as i64,
        }
    }

    #[test]
    fn filters_are_applied_to_old_and_new_versions_as_in_the_delivery_table() {
        let registry = Registry::new(10);
        let sub = subscription(&registry, Some("room = 'a'"), Some(&["room"]));
        let records = [
            record(1, ChangeKind::Insert, None, Some(row(1, "a", false))),
            record(2, ChangeKind::Insert, None, Some(row(2, "b", false))),
            record(3, ChangeKind::Update, Some(row(1, "a", false)), Some(row(1, "a", false))),
            record(4, ChangeKind::Update, Some(row(1, "a", false)), Some(row(1, "b", false))),
            record(5, ChangeKind::Update, Some(row(2, "b", false)), Some(row(2, "a", false))),
            record(6, ChangeKind::Delete, Some(row(2, "a", true)), None),
            record(7, ChangeKind::Delete, Some(row(1, "b", true)), None),
        ];
        let parsed: Vec<Parsed<'_>> = records.iter().map(parse).collect();
        let subs = [sub];
        let matched = match_group(&parsed, &subs);
        let events = &matched[0].1;
        let got: Vec<(u64, &str)> = events.iter().map(|e| (e.commit_seq, e.change_type)).collect();
        assert_eq!(got, vec![(1, "insert"), (3, "update"), (4, "delete"), (5, "insert"), (6, "delete")]);
        // Projection: the chosen columns, then the system columns, in that order.
        let first = events[0].rows.as_deref().unwrap();
        assert!(first.starts_with(r#"{"room":"a","_updated":"#) && first.ends_with(r#""_deleted":false}"#), "{first}");
        // An update leaving the filter sends the row as the client had it; a soft delete the
        // deleted version.
        assert!(events[2].old_values.as_deref().unwrap().contains(r#""room":"a""#));
        assert!(events[4].old_values.as_deref().unwrap().contains(r#""_deleted":true"#));
        assert!(events[4].rows.is_none() && events[1].old_values.is_some());
    }

    #[test]
    fn select_star_sends_rows_as_written_and_messages_carry_every_field() {
        let registry = Registry::new(10);
        let sub = subscription(&registry, None, None);
        let records = [record(9, ChangeKind::Insert, None, Some(row(1, "x", false)))];
        let parsed: Vec<Parsed<'_>> = records.iter().map(parse).collect();
        let subs = [sub];
        let matched = match_group(&parsed, &subs);
        let event = &matched[0].1[0];
        assert_eq!(event.rows.as_deref(), Some(row(1, "x", false).as_str()));
        let msg: Json = serde_json::from_str(&crate::registry::change_message("s\"1", 4, event)).unwrap();
        assert_eq!(msg["subscription_id"], "s\"1");
        assert_eq!((msg["seq"].as_u64(), msg["commit_seq"].as_u64()), (Some(4), Some(9)));
        assert_eq!(msg["change_type"], "insert");
        assert_eq!(msg["timestamp"], time::format_timestamp_micros(9));
        assert_eq!(msg["rows"][0]["room"], "x");
        assert!(msg.get("old_values").is_none());
    }

    #[test]
    fn registration_waits_for_the_cursor_and_counts_per_user() {
        let registry = Registry::new(2);
        let key = || ("app".to_owned(), "t".to_owned(), "alice".to_owned());
        let sub = |id: &str| {
            let mut s = Arc::into_inner(subscription(&registry, None, None)).unwrap();
            s.subscription_id = id.into();
            Arc::new(s)
        };
        assert_eq!(registry.register(key(), sub("a")), Err(crate::registry::RegisterError::NotReady));
        registry.reset(41);
        assert_eq!(registry.register(key(), sub("a")), Ok(41));
        assert_eq!(registry.register(key(), sub("b")), Ok(41));
        assert_eq!(registry.register(key(), sub("c")), Err(crate::registry::RegisterError::UserLimit(2)));
        let stats = registry.stats();
        assert_eq!((stats.subscriptions, stats.partitions, stats.filters), (2, 1, 1));
        assert!(registry.remove("c/a").is_some());
        assert!(registry.remove("c/a").is_none());
        assert_eq!(registry.register(key(), sub("c")), Ok(41));
        registry.remove("c/b");
        registry.remove("c/c");
        let stats = registry.stats();
        assert_eq!((stats.subscriptions, stats.partitions), (0, 0));
    }

    #[test]
    fn a_starting_subscription_parks_changes_and_releases_only_those_after_its_start() {
        let registry = Registry::new(10);
        let (tx, mut rx) = mpsc::channel(16);
        let mut s = Arc::into_inner(subscription(&registry, None, None)).unwrap();
        s.conn = Arc::new(Conn { tx, slow: CancellationToken::new() });
        s.delivery = std::sync::Mutex::new(Delivery::Starting(Default::default()));
        s.max_parked = 3;
        let sub = Arc::new(s);
        let event =
            |seq| Event { commit_seq: seq, change_type: "insert", timestamp_us: 0, rows: None, old_values: None };
        for seq in [5, 6, 7] {
            sub.offer(event(seq), &registry.delivered);
        }
        assert!(rx.try_recv().is_err(), "nothing is sent while starting");
        sub.go_live(5, &registry.delivered);
        // A change the start covered that the pump hands over late is dropped.
        sub.offer(event(4), &registry.delivered);
        sub.offer(event(8), &registry.delivered);
        let mut got = Vec::new();
        while let Ok(Outgoing::Data { text, .. }) = rx.try_recv() {
            let msg: Json = serde_json::from_str(&text).unwrap();
            got.push((msg["seq"].as_u64().unwrap(), msg["commit_seq"].as_u64().unwrap()));
        }
        assert_eq!(got, vec![(1, 6), (2, 7), (3, 8)]);
        assert_eq!(sub.changes.load(std::sync::atomic::Ordering::Relaxed), 3);

        // Parking more than the bound closes the connection as a slow consumer.
        let mut s = Arc::into_inner(subscription(&registry, None, None)).unwrap();
        s.delivery = std::sync::Mutex::new(Delivery::Starting(Default::default()));
        s.max_parked = 1;
        let slow = Arc::new(s);
        slow.offer(event(1), &registry.delivered);
        assert!(!slow.conn.slow.is_cancelled());
        slow.offer(event(2), &registry.delivered);
        assert!(slow.conn.slow.is_cancelled());
    }
}
