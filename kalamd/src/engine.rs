//! The engine state shared by the HTTP front, the SQL executor and the `Engine` RPC service.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use kalam_config::KalamConfig;
use kalam_rpc::FlusherClient;
use kalam_types::change::ChangeRecord;
use tokio::sync::Mutex;

use crate::catalog::Catalog;
use crate::clock::VersionClock;
use crate::error::EngineError;
use crate::flush::{FlushIndex, load_jobs};
use crate::ids::IdGenerators;
use crate::store::{Store, cf};

/// Most change-log bytes returned by one poll; RPC frames are limited to 64 MiB and one record
/// holds at most two 16 MiB-value rows.
pub const MAX_CHANGE_BATCH_BYTES: usize = 16 << 20;

/// Longest wait for kalam-flushd to accept a job notification.
const NOTIFY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

pub struct Engine {
    pub cfg: KalamConfig,
    pub store: Arc<Store>,
    pub catalog: Catalog,
    pub clock: VersionClock,
    pub ids: Arc<IdGenerators>,
    pub streams: crate::stream::StreamBuffers,
    pub(crate) parquet_footers: crate::read::ParquetMetadataCache,
    /// Encrypts storage credentials at rest.
    pub(crate) secrets: crate::secrets::SecretBox,
    /// S3 clients by storage id and version.
    pub(crate) s3_clients:
        std::sync::Mutex<std::collections::HashMap<(String, i64, String), kalam_storage::s3::S3Store>>,
    /// `PAUSE FLUSH ALL` (persisted in `system_meta`).
    pub(crate) flush_paused_all: AtomicBool,
    pub(crate) flush_index: std::sync::Mutex<FlushIndex>,
    /// Milliseconds since the epoch at which the supervisor started (for `uptime_seconds`).
    pub uptime_origin_ms: i64,
    shutting_down: AtomicBool,
    flusher: Mutex<Option<FlusherClient>>,
    /// Live-query filters already compiled without error, by table version (bounded).
    /// `rate_limit.max_queries_per_sec` per principal of role `user`.
    pub(crate) query_limiter: crate::ratelimit::QueryLimiter,
    pub(crate) plan_cache: crate::sql::plan_cache::PlanCache,
    pub(crate) valid_live_filters: std::sync::Mutex<std::collections::HashSet<(String, String, u32, String)>>,
    /// Where SQL requests run (see `sql_runtime`).
    pub(crate) sql_runtime: crate::sql_runtime::SqlRuntime,
}

impl Engine {
    pub fn open(cfg: KalamConfig) -> Result<Arc<Engine>, EngineError> {
        let store = Store::open(&cfg.storage.rocksdb_path, &cfg.storage.rocksdb)?;
        let catalog = Catalog::load(store.clone())?;
        crate::users::seed(&store, crate::clock::wall_clock_us())?;
        crate::storages::seed(&store, crate::clock::wall_clock_us())?;
        let flush_paused_all = store.get(cf::META, crate::jobs::META_FLUSH_PAUSED_ALL)?.is_some();
        let secrets = crate::secrets::SecretBox::open(&cfg.storage.data_dir)?;
        let uptime_origin_ms = std::env::var("KALAMDB_SUPERVISOR_STARTED_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
        let ids = Arc::new(IdGenerators::new(cfg.flush.node_id));
        let query_rate = cfg.rate_limit.max_queries_per_sec;
        let plan_cache_size = cfg.query.plan_cache_size;
        let flush_index = std::sync::Mutex::new(FlushIndex::load(&load_jobs(&store)?));
        Ok(Arc::new(Engine {
            cfg,
            store,
            catalog,
            clock: VersionClock::default(),
            ids,
            streams: crate::stream::StreamBuffers::default(),
            parquet_footers: crate::read::ParquetMetadataCache::default(),
            flush_paused_all: AtomicBool::new(flush_paused_all),
            secrets,
            s3_clients: Default::default(),
            flush_index,
            uptime_origin_ms,
            shutting_down: AtomicBool::new(false),
            flusher: Mutex::new(None),
            valid_live_filters: Default::default(),
            query_limiter: crate::ratelimit::QueryLimiter::new(query_rate),
            plan_cache: crate::sql::plan_cache::PlanCache::new(plan_cache_size),
            sql_runtime: crate::sql_runtime::SqlRuntime::new().map_err(EngineError::internal)?,
        }))
    }

    /// Base directory of storage `local`.
    pub fn storage_base(&self) -> PathBuf {
        self.cfg.storage.default_storage_path.clone()
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Tells kalam-flushd about a new job. If it is unreachable the job waits in `system.jobs`
    /// and kalam-flushd picks it up when it (re)starts.
    pub fn notify_flusher(self: &Arc<Self>, job_id: String) {
        let engine = self.clone();
        tokio::spawn(async move {
            let mut slot = engine.flusher.lock().await;
            for _ in 0..2 {
                if slot.is_none() {
                    match kalam_rpc::transport::connect_flusher(&engine.cfg.run_dir()).await {
                        Ok(c) => *slot = Some(c),
                        Err(e) => {
                            tracing::warn!(job_id, error = %e, "kalam-flushd unreachable; job stays queued");
                            return;
                        }
                    }
                }
                let Some(client) = slot.clone() else { return };
                // Bounded: a stuck kalam-flushd must not pile up waiting notifications (its
                // scheduler finds every runnable job by itself anyway).
                let ctx = kalam_rpc::transport::context_with_timeout(NOTIFY_TIMEOUT);
                match client.run_job(ctx, job_id.clone()).await {
                    Ok(Ok(())) => return,
                    Ok(Err(e)) => {
                        tracing::warn!(job_id, error = %e, "kalam-flushd refused job");
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(job_id, error = %e, "kalam-flushd connection lost; reconnecting");
                        *slot = None;
                    }
                }
            }
        });
    }

    /// Change-log records after `after_seq`: at most `max`, and no more than
    /// [`MAX_CHANGE_BATCH_BYTES`] of them (but always at least one, so a poll makes progress).
    ///
    /// Persistent records (RocksDB) and STREAM records (memory) are merged by sequence. Only
    /// records up to the published head are returned: a commit in progress may have written one
    /// source and not yet the other, and a reader must not skip past a sequence it has not seen.
    pub fn read_changes(&self, after_seq: u64, max: usize) -> Result<Vec<ChangeRecord>, EngineError> {
        let head = self.store.head_seq();
        let from = after_seq.saturating_add(1).to_be_bytes();
        let (raw, cut) = self.store.scan_from_budget(cf::CHANGE_LOG, &from, max, MAX_CHANGE_BATCH_BYTES)?;
        let mut persistent = Vec::with_capacity(raw.len());
        for (_, v) in raw {
            let rec: ChangeRecord = serde_json::from_slice(&v).map_err(|e| EngineError::corrupt(cf::CHANGE_LOG, e))?;
            persistent.push((v.len(), rec));
        }
        // When the byte budget cut the RocksDB scan, records after the last one read may exist
        // there: nothing beyond it may be returned, or the reader's cursor would skip them.
        let bound = match (cut, persistent.last()) {
            (true, Some((_, last))) => last.commit_seq.min(head),
            _ => head,
        };
        let transient = self.store.transient_after(after_seq, max);
        let size = |r: &ChangeRecord| {
            r.old_row.as_ref().map_or(0, String::len) + r.new_row.as_ref().map_or(0, String::len) + 128
        };
        let mut merged = Vec::with_capacity(persistent.len() + transient.len());
        let mut bytes = 0usize;
        let (mut a, mut b) = (persistent.into_iter().peekable(), transient.into_iter().peekable());
        while merged.len() < max {
            let next = match (a.peek(), b.peek()) {
                (Some((_, x)), Some(y)) if x.commit_seq <= y.commit_seq => a.next(),
                (Some(_), Some(_)) | (None, Some(_)) => b.next().map(|r| (size(&r), r)),
                (Some(_), None) => a.next(),
                (None, None) => None,
            };
            let Some((len, record)) = next else { break };
            bytes = bytes.saturating_add(len);
            // One byte budget for the whole batch (at least one record, so a poll progresses).
            if record.commit_seq > bound || (!merged.is_empty() && bytes > MAX_CHANGE_BATCH_BYTES) {
                break;
            }
            merged.push(record);
        }
        Ok(merged)
    }

    /// Waits up to `wait` for records after `after_seq`.
    pub async fn poll_changes(
        &self,
        after_seq: u64,
        max: usize,
        wait: std::time::Duration,
    ) -> Result<(Vec<ChangeRecord>, u64), EngineError> {
        let mut head = self.store.head();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let current = *head.borrow_and_update();
            if current > after_seq {
                return Ok((self.read_changes(after_seq, max)?, current));
            }
            if tokio::time::timeout_at(deadline, head.changed()).await.is_err() {
                return Ok((Vec::new(), current));
            }
        }
    }
}

/// Runs `pass` on the blocking pool every `period` until `stop` (background maintenance:
/// stream eviction, change-log retention). A failed pass is logged and the next one runs on
/// time; a pass that did something (a count above 0) is logged at debug level.
pub async fn every(
    engine: Arc<Engine>,
    period: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
    what: &'static str,
    pass: impl Fn(&Engine) -> Result<u64, EngineError> + Clone + Send + 'static,
) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (e, pass) = (engine.clone(), pass.clone());
        match tokio::task::spawn_blocking(move || pass(&e)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::debug!(count = n, "{what}"),
            Ok(Err(e)) => tracing::warn!(error = %e, "{what} failed"),
            Err(e) => tracing::warn!(error = %e, "{what} task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use kalam_types::change::ChangeKind;
    use kalam_types::ids::UserId;

    use super::*;

    fn engine() -> (tempfile::TempDir, Arc<Engine>) {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = KalamConfig::test_config(dir.path(), 1);
        cfg.resolve_paths().unwrap();
        (dir, Engine::open(cfg).unwrap())
    }

    #[tokio::test]
    async fn each_inserted_row_gets_its_own_consecutive_commit_seq() {
        let (_dir, engine) = engine();
        let alice = UserId::parse("alice").unwrap();
        let setup = "CREATE NAMESPACE app; CREATE USER TABLE app.t (id BIGINT PRIMARY KEY, v TEXT)";
        assert!(crate::sql::execute_batch(&engine, setup, None, &alice).await.1.is_none());
        let head_before = engine.store.head_seq();

        let waiter = {
            let engine = engine.clone();
            tokio::spawn(async move { engine.poll_changes(head_before, 100, Duration::from_secs(10)).await })
        };
        let insert = "INSERT INTO app.t VALUES (1, 'a'), (2, 'b'), (3, 'c')";
        assert!(crate::sql::execute_batch(&engine, insert, None, &alice).await.1.is_none());
        let (records, head) = waiter.await.unwrap().unwrap();
        assert_eq!(head, head_before + 3);
        let seqs: Vec<u64> = records.iter().map(|r| r.commit_seq).collect();
        assert_eq!(seqs, vec![head_before + 1, head_before + 2, head_before + 3]);
        assert!(records.iter().all(|r| r.kind == ChangeKind::Insert && r.user_id.as_deref() == Some("alice")));
        let row: serde_json::Value = serde_json::from_str(records[0].new_row.as_deref().unwrap()).unwrap();
        assert_eq!((row["id"].as_i64(), row["_deleted"].as_bool()), (Some(1), Some(false)));

        // Nothing new: the poll times out empty.
        let (records, _) = engine.poll_changes(head, 10, Duration::from_millis(20)).await.unwrap();
        assert!(records.is_empty());
    }

    #[tokio::test]
    async fn the_commit_sequence_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = KalamConfig::test_config(dir.path(), 1);
        cfg.resolve_paths().unwrap();
        let user = UserId::parse("u1").unwrap();
        let head = {
            let engine = Engine::open(cfg.clone()).unwrap();
            let sql =
                "CREATE NAMESPACE a; CREATE SHARED TABLE a.s (k TEXT PRIMARY KEY); INSERT INTO a.s VALUES ('x'), ('y')";
            assert!(crate::sql::execute_batch(&engine, sql, None, &user).await.1.is_none());
            engine.store.head_seq()
        };
        assert_eq!(head, 2);
        let engine = Engine::open(cfg).unwrap();
        assert_eq!(engine.store.head_seq(), 2);
        assert_eq!(engine.read_changes(0, 10).unwrap().len(), 2);
        let (_, err) = crate::sql::execute_batch(&engine, "SELECT k FROM a.s", None, &user).await;
        assert!(err.is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_namespace_drop_and_table_create_never_orphan_a_table() {
        let (_dir, engine) = engine();
        let user = UserId::parse("u1").unwrap();
        for i in 0..30 {
            let ns = format!("n{i}");
            let (_, err) = crate::sql::execute_batch(&engine, &format!("CREATE NAMESPACE {ns}"), None, &user).await;
            assert!(err.is_none());
            let create = {
                let (engine, user, sql) =
                    (engine.clone(), user.clone(), format!("CREATE SHARED TABLE {ns}.t (id BIGINT PRIMARY KEY)"));
                tokio::spawn(async move { crate::sql::execute_batch(&engine, &sql, None, &user).await.1.is_none() })
            };
            let drop = {
                let (engine, user, sql) = (engine.clone(), user.clone(), format!("DROP NAMESPACE {ns}"));
                tokio::spawn(async move { crate::sql::execute_batch(&engine, &sql, None, &user).await.1.is_none() })
            };
            let (created, dropped) = (create.await.unwrap(), drop.await.unwrap());
            assert!(!(created && dropped), "round {i}: both the table and the namespace drop succeeded");
            let table_exists = engine.catalog.table(&ns, "t").is_some();
            assert_eq!(table_exists, created);
            assert!(!table_exists || engine.catalog.namespace_exists(&ns), "round {i}: table without namespace");
        }
    }

    #[tokio::test]
    async fn a_byte_cut_of_the_log_never_skips_records_before_a_stream_record() {
        let (_dir, engine) = engine();
        let user = UserId::parse("u1").unwrap();
        let setup = "CREATE NAMESPACE a; CREATE SHARED TABLE a.big (id BIGINT PRIMARY KEY, body TEXT); \
                     CREATE STREAM TABLE a.ev (id BIGINT PRIMARY KEY) TTL 60s";
        assert!(crate::sql::execute_batch(&engine, setup, None, &user).await.1.is_none());
        // Three ~7 MiB records exceed one batch's 16 MiB budget; then a STREAM record follows.
        let body = "x".repeat(7 << 20);
        for id in 1..=3 {
            let sql = format!("INSERT INTO a.big VALUES ({id}, '{body}')");
            assert!(crate::sql::execute_batch(&engine, &sql, None, &user).await.1.is_none());
        }
        assert!(crate::sql::execute_batch(&engine, "INSERT INTO a.ev VALUES (1)", None, &user).await.1.is_none());
        let mut cursor = 0;
        let mut seen = Vec::new();
        while cursor < engine.store.head_seq() {
            let batch = engine.read_changes(cursor, 1000).unwrap();
            assert!(!batch.is_empty());
            for r in &batch {
                assert_eq!(r.commit_seq, cursor + 1, "no sequence is skipped");
                cursor = r.commit_seq;
                seen.push(r.table.clone());
            }
        }
        assert_eq!(seen, ["big", "big", "big", "ev"]);
    }

    #[tokio::test]
    async fn a_row_whose_change_record_cannot_reach_subscribers_is_refused() {
        let (_dir, engine) = engine();
        let user = UserId::parse("u1").unwrap();
        let setup = "CREATE NAMESPACE a; CREATE SHARED TABLE a.t (id BIGINT PRIMARY KEY, body TEXT)";
        assert!(crate::sql::execute_batch(&engine, setup, None, &user).await.1.is_none());
        // 9 MiB of control characters become ~54 MiB of JSON: more than one RPC frame can carry.
        let body = "\u{1}".repeat(9 << 20);
        let params = [serde_json::json!(body)];
        let (_, err) =
            crate::sql::execute_batch(&engine, "INSERT INTO a.t VALUES (1, $1)", Some(&params[..]), &user).await;
        let err = err.expect("refused").error;
        assert_eq!(err.code, kalam_types::ErrorCode::TypeError);
        assert!(err.message.contains("Row too large"), "{}", err.message);
        assert_eq!(engine.store.head_seq(), 0, "nothing was written");
    }
}
