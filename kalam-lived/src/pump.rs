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
