//! The engine state shared by the HTTP front, the SQL executor and the `Engine` RPC service.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use kalam_config::KalamConfig;
use kalam_rpc::FlusherClient;
use kalam_types::change::ChangeRecord;
use tokio::sync::Mutex;

use crate::catalog::Catalog;
use crate::clock::VersionClock;
use crate::error::EngineError;
use crate::store::{Store, cf};

pub struct Engine {
    pub cfg: KalamConfig,
    pub store: Arc<Store>,
    pub catalog: Catalog,
    pub clock: VersionClock,
    pub started: Instant,
    /// Milliseconds since the epoch at which the supervisor started (for `uptime_seconds`).
    pub uptime_origin_ms: i64,
    shutting_down: AtomicBool,
    flusher: Mutex<Option<FlusherClient>>,
}

impl Engine {
    pub fn open(cfg: KalamConfig) -> Result<Arc<Engine>, EngineError> {
        let store = Store::open(&cfg.storage.rocksdb_path)?;
        let catalog = Catalog::load(store.clone())?;
        let uptime_origin_ms = std::env::var("KALAMDB_SUPERVISOR_STARTED_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
        Ok(Arc::new(Engine {
            cfg,
            store,
            catalog,
            clock: VersionClock::default(),
            started: Instant::now(),
            uptime_origin_ms,
            shutting_down: AtomicBool::new(false),
            flusher: Mutex::new(None),
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
                match client.run_job(tarpc::context::current(), job_id.clone()).await {
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

    /// Change-log records after `after_seq` (at most `max`).
    pub fn read_changes(&self, after_seq: u64, max: usize) -> Result<Vec<ChangeRecord>, EngineError> {
        let from = after_seq.saturating_add(1).to_be_bytes();
        self.store
            .scan_from(cf::CHANGE_LOG, &from, max)?
            .into_iter()
            .map(|(_, v)| serde_json::from_slice(&v).map_err(|e| EngineError::corrupt(cf::CHANGE_LOG, e)))
            .collect()
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
