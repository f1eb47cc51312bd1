//! The change pump: long-polls kalamd's change log from the last sequence it handled and fans
//! each record out to the subscriptions of its partition. It survives kalamd restarts (it
//! reconnects and continues from its cursor, so nothing is skipped or repeated) and persists
//! the cursor so that a kalam-lived restart continues from the last sequence it delivered.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use kalam_rpc::{ChangeRecord, EngineClient};
use serde_json::{Map, Value as Json};
use tokio_util::sync::CancellationToken;

use crate::registry::{Outgoing, Registry};

/// Records fetched per poll.
const POLL_BATCH: u32 = 1_000;
/// How long one poll waits on kalamd for new records.
const POLL_WAIT_MS: u32 = 5_000;
const RECONNECT_MIN: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_secs(2);

pub struct Pump {
    pub registry: Arc<Registry>,
    pub run_dir: PathBuf,
    pub cursor_file: PathBuf,
}

impl Pump {
    fn load_cursor(&self) -> Option<u64> {
        std::fs::read_to_string(&self.cursor_file).ok()?.trim().parse().ok()
    }

    fn save_cursor(&self, seq: u64) {
        let tmp = self.cursor_file.with_extension("tmp");
        if std::fs::write(&tmp, seq.to_string()).and_then(|_| std::fs::rename(&tmp, &self.cursor_file)).is_err() {
            tracing::warn!(path = %self.cursor_file.display(), "could not persist change-log cursor");
        }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let mut cursor: Option<u64> = self.load_cursor();
        let mut saved = cursor;
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
            let after = cursor.unwrap_or(u64::MAX);
            let wait = if cursor.is_none() { 0 } else { POLL_WAIT_MS };
            let ctx = kalam_rpc::transport::context_with_timeout(Duration::from_millis(wait as u64 + 10_000));
            let result = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = c.poll_changes(ctx, after, POLL_BATCH, wait) => r,
            };
            match result {
                Ok(Ok(batch)) => {
                    backoff = RECONNECT_MIN;
                    if cursor.is_none_or(|c| batch.head_seq < c) {
                        // First start, or a log that no longer reaches our cursor (restored
                        // database): begin at its head.
                        if cursor.is_some() {
                            tracing::warn!(
                                cursor,
                                head = batch.head_seq,
                                "change log is behind the cursor; restarting at its head"
                            );
                        }
                        cursor = Some(batch.head_seq);
                        continue;
                    }
                    for record in &batch.records {
                        self.dispatch(record);
                        cursor = Some(record.commit_seq);
                    }
                    if cursor != saved {
                        if let Some(seq) = cursor {
                            self.save_cursor(seq);
                        }
                        saved = cursor;
                    }
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
        if let Some(seq) = cursor {
            self.save_cursor(seq);
        }
    }

    fn dispatch(&self, record: &ChangeRecord) {
        let Some(user) = &record.user_id else { return };
        let key = (record.namespace.clone(), record.table.clone(), user.clone());
        let subs = self.registry.subscribers(&key);
        if subs.is_empty() {
            return;
        }
        let new_row = record.new_row.as_deref().and_then(|r| serde_json::from_str::<Map<String, Json>>(r).ok());
        let old_row = record.old_row.as_deref().and_then(|r| serde_json::from_str::<Map<String, Json>>(r).ok());
        let timestamp = kalam_types::time::format_timestamp_micros(record.commit_time_us);
        for sub in subs.into_iter().filter(|s| record.commit_seq > s.start_after) {
            let project = |row: &Map<String, Json>| {
                let fields = sub.columns.iter().map(String::as_str).chain(["_updated", "_deleted"]);
                vec![Ordered(fields.map(|c| (c.to_owned(), row.get(c).cloned().unwrap_or(Json::Null))).collect())]
            };
            let seq = sub.seq.fetch_add(1, Ordering::SeqCst) + 1;
            let msg = ChangeMessage {
                kind: "change",
                subscription_id: &sub.subscription_id,
                change_type: record.kind.as_str(),
                seq,
                commit_seq: record.commit_seq,
                timestamp: &timestamp,
                rows: new_row.as_ref().map(project),
                old_values: old_row.as_ref().map(project),
            };
            let Ok(text) = serde_json::to_string(&msg) else { continue };
            let out =
                Outgoing::Change { subscription_id: sub.subscription_id.clone(), generation: sub.generation, text };
            match sub.tx.try_send(out) {
                Ok(()) => {
                    sub.changes.fetch_add(1, Ordering::Relaxed);
                    sub.last_update_us.store(chrono::Utc::now().timestamp_micros(), Ordering::Relaxed);
                }
                Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!(live_id = %sub.live_id(), "slow consumer; closing connection");
                    sub.close.cancel();
                }
                Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
    }
}

/// A JSON object that keeps its key order (columns in table order).
struct Ordered(Vec<(String, Json)>);

impl serde::Serialize for Ordered {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

#[derive(serde::Serialize)]
struct ChangeMessage<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    subscription_id: &'a str,
    change_type: &'static str,
    seq: u64,
    commit_seq: u64,
    timestamp: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    rows: Option<Vec<Ordered>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    old_values: Option<Vec<Ordered>>,
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::AtomicU64;

    use kalam_rpc::{ChangeBatch, ChangeKind, Engine, FlushPlan, FlushSummary, FlushedFile, Health, RpcError};
    use kalam_rpc::{SubscriptionPlan, TableStats};
    use tarpc::context::Context;
    use tokio::sync::mpsc;

    use super::*;
    use crate::registry::Subscription;

    /// A kalamd stand-in whose change log is a fixed list.
    #[derive(Clone)]
    struct FakeEngine(Arc<Mutex<Vec<ChangeRecord>>>, Arc<AtomicU64>);

    impl Engine for FakeEngine {
        async fn health(self, _: Context) -> Health {
            Health::of("fake-kalamd")
        }
        async fn begin_flush(self, _: Context, _: String) -> Result<FlushPlan, RpcError> {
            Err(RpcError::internal())
        }
        async fn commit_flush(
            self,
            _: Context,
            _: String,
            _: u32,
            _: Vec<FlushedFile>,
        ) -> Result<FlushSummary, RpcError> {
            Err(RpcError::internal())
        }
        async fn fail_flush(self, _: Context, _: String, _: u32, _: String) -> Result<(), RpcError> {
            Ok(())
        }
        async fn runnable_flush_jobs(self, _: Context) -> Result<Vec<String>, RpcError> {
            Ok(vec![])
        }
        async fn flush_candidates(self, _: Context) -> Result<Vec<kalam_rpc::FlushCandidate>, kalam_rpc::RpcError> {
            Ok(vec![])
        }
        async fn trigger_flush(self, _: Context, _: String, _: String) -> Result<String, kalam_rpc::RpcError> {
            Err(kalam_rpc::RpcError::internal())
        }
        async fn poll_changes(self, _: Context, after: u64, max: u32, wait_ms: u32) -> Result<ChangeBatch, RpcError> {
            let log = self.0.lock().unwrap().clone();
            // Counted after reading, so a test that saw the count knows this poll's view.
            self.1.fetch_add(1, Ordering::SeqCst);
            let head = log.last().map(|r| r.commit_seq).unwrap_or(0);
            let records: Vec<_> = log.into_iter().filter(|r| r.commit_seq > after).take(max as usize).collect();
            if records.is_empty() {
                tokio::time::sleep(Duration::from_millis(u64::from(wait_ms).min(50))).await;
            }
            Ok(ChangeBatch { records, head_seq: head })
        }
        async fn plan_subscription(self, _: Context, _: String, _: String) -> Result<SubscriptionPlan, RpcError> {
            Err(RpcError::internal())
        }
        async fn table_stats(self, _: Context, _: String, _: String) -> Result<TableStats, RpcError> {
            Err(RpcError::internal())
        }
        async fn committed_files(self, _: Context, _: String, _: Option<String>) -> Result<Vec<String>, RpcError> {
            Err(RpcError::internal())
        }
        async fn dead_letters(self, _: Context) -> Result<Vec<kalam_rpc::DeadLetter>, RpcError> {
            Ok(vec![])
        }
    }

    fn subscription(
        conn: &str,
        id: &str,
        columns: &[&str],
        start_after: u64,
        tx: mpsc::Sender<Outgoing>,
    ) -> Arc<Subscription> {
        Arc::new(Subscription {
            connection_id: conn.into(),
            subscription_id: id.into(),
            user_id: "alice".into(),
            sql: "SELECT * FROM app.t".into(),
            options: None,
            columns: columns.iter().map(|c| (*c).to_owned()).collect(),
            start_after,
            generation: 1,
            seq: AtomicU64::new(0),
            changes: AtomicU64::new(0),
            created_at_us: 0,
            last_update_us: std::sync::atomic::AtomicI64::new(0),
            tx,
            close: CancellationToken::new(),
        })
    }

    fn record(seq: u64, user: &str, id: i64) -> ChangeRecord {
        ChangeRecord {
            commit_seq: seq,
            namespace: "app".into(),
            table: "t".into(),
            user_id: Some(user.into()),
            kind: ChangeKind::Insert,
            old_row: None,
            new_row: Some(format!(
                r#"{{"id":{id},"body":"x","_updated":"2025-01-01T00:00:00.000000Z","_deleted":false}}"#
            )),
            commit_time_us: 0,
        }
    }

    #[tokio::test]
    async fn changes_reach_only_their_partition_in_order_with_seq_and_projection() {
        let dir = tempfile::tempdir().unwrap();
        let run_dir = dir.path().to_path_buf();
        let log = Arc::new(Mutex::new(vec![record(1, "alice", 0)]));
        let listener = kalam_rpc::transport::bind(&kalam_rpc::transport::socket_path(
            &run_dir,
            kalam_rpc::transport::sockets::ENGINE,
        ))
        .unwrap();
        let polls = Arc::new(AtomicU64::new(0));
        let server = tokio::spawn(kalam_rpc::serve_on!(listener, FakeEngine(log.clone(), polls.clone())));

        let registry = Arc::new(Registry::default());
        let alice = || ("app".to_owned(), "t".to_owned(), "alice".to_owned());
        let (tx, mut rx) = mpsc::channel(16);
        registry.add(alice(), subscription("c1", "s1", &["id"], 0, tx));
        // A second subscription planned when the log stood at 3 only sees what came after.
        let (late_tx, mut late_rx) = mpsc::channel(16);
        registry.add(alice(), subscription("c2", "late", &["id", "body"], 3, late_tx));
        let shutdown = CancellationToken::new();
        let pump = Pump { registry: registry.clone(), run_dir: run_dir.clone(), cursor_file: run_dir.join("cursor") };
        let task = tokio::spawn(pump.run(shutdown.clone()));

        // The pump starts at the head (seq 1), so only later records are delivered: wait for
        // its first poll before appending.
        while polls.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        log.lock().unwrap().extend([record(2, "bob", 20), record(3, "alice", 30), record(4, "alice", 40)]);
        for (expected_seq, expected_id, commit_seq) in [(1u64, 30i64, 3u64), (2, 40, 4)] {
            let Outgoing::Change { text, .. } =
                tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
            let msg: Json = serde_json::from_str(&text).unwrap();
            assert_eq!(msg["subscription_id"], "s1");
            assert_eq!(msg["seq"], expected_seq);
            assert_eq!(msg["commit_seq"], commit_seq);
            let row = msg["rows"][0].as_object().unwrap();
            let keys: Vec<&str> = row.keys().map(String::as_str).collect();
            assert_eq!(keys.len(), 3, "projected column plus _updated and _deleted: {keys:?}");
            assert_eq!(row["id"], expected_id);
        }
        let Outgoing::Change { text, subscription_id, .. } = late_rx.recv().await.unwrap();
        let msg: Json = serde_json::from_str(&text).unwrap();
        assert_eq!(
            (subscription_id.as_str(), msg["seq"].as_u64(), msg["commit_seq"].as_u64()),
            ("late", Some(1), Some(4))
        );
        assert!(late_rx.try_recv().is_err(), "nothing from before the subscription");
        shutdown.cancel();
        task.await.unwrap();
        assert_eq!(std::fs::read_to_string(run_dir.join("cursor")).unwrap(), "4");
        server.abort();
    }
}
