//! Flush administration (sql.md §11): PAUSE / RESUME FLUSH, ALTER FLUSH SETTINGS, KILL JOB,
//! RETRY JOB, and the retry schedule of failed attempts. Job rows in `system.jobs` stay the
//! source of truth; the flush index mirrors the active job of each table under the commit lock.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use kalam_types::error::ErrorCode;
use kalam_types::schema::{FlushPolicy, Sharding, TableDefinition, TableType};

use crate::clock::wall_clock_us;
use crate::engine::Engine;
use crate::error::EngineError;
use crate::flush::{JobRecord, status};
use crate::sql::parse::FlushSettingsChange;
use crate::store::cf;

/// `system_meta` key of the server-wide flush pause (`PAUSE FLUSH ALL`).
pub const META_FLUSH_PAUSED_ALL: &[u8] = b"flush_paused_all";

/// The refusal of any flush operation on a STREAM table (sql.md §11).
pub fn stream_refused(def: &TableDefinition) -> EngineError {
    EngineError::user(
        ErrorCode::InvalidOperation,
        format!("Cannot flush stream table '{}'. Only user and shared tables support flushing.", def.qualified_name()),
    )
}

impl Engine {
    /// True when the table, or the whole server, is paused.
    pub fn flush_paused(&self, def: &TableDefinition) -> bool {
        def.options.flush_paused || self.flush_paused_all.load(Ordering::SeqCst)
    }

    /// Refuses a new flush job of a paused table (manual and automatic triggers alike).
    pub fn check_flush_allowed(&self, def: &TableDefinition) -> Result<(), EngineError> {
        if self.flush_paused_all.load(Ordering::SeqCst) {
            return Err(EngineError::user(
                ErrorCode::InvalidOperation,
                "Flush is paused for all tables. Use RESUME FLUSH ALL first.",
            ));
        }
        if def.options.flush_paused {
            return Err(EngineError::user(
                ErrorCode::InvalidOperation,
                format!("Flush is paused for table '{}'. Use RESUME FLUSH first.", def.qualified_name()),
            ));
        }
        Ok(())
    }

    /// PAUSE / RESUME FLUSH of one table (`Some`) or of the server (`None`); persisted.
    pub fn set_flush_paused(&self, table: Option<(&str, &str)>, paused: bool) -> Result<String, EngineError> {
        let verb = if paused { "paused" } else { "resumed" };
        match table {
            Some((ns, t)) => {
                let def = self.catalog.update_table(ns, t, |cur| {
                    if cur.table_type == TableType::Stream {
                        return Err(stream_refused(cur));
                    }
                    let mut def = cur.clone();
                    def.options.flush_paused = paused;
                    def.updated_at_us = wall_clock_us();
                    Ok((def, None))
                })?;
                tracing::info!(table = %def.qualified_name(), paused, "flush pause changed");
                Ok(format!("Flush {verb} for table '{}'", def.qualified_name()))
            }
            None => {
                let mut guard = self.store.begin();
                let meta = self.store.cf(cf::META)?;
                if paused {
                    guard.batch.put_cf(&meta, META_FLUSH_PAUSED_ALL, [1u8]);
                } else {
                    guard.batch.delete_cf(&meta, META_FLUSH_PAUSED_ALL);
                }
                drop(meta);
                guard.write_and(|| self.flush_paused_all.store(paused, Ordering::SeqCst))?;
                tracing::info!(paused, "server-wide flush pause changed");
                Ok(format!("Flush {verb} for all tables"))
            }
        }
    }

    /// ALTER FLUSH SETTINGS (sql.md §11). The interval timer restarts from the change.
    pub fn alter_flush_settings(
        &self,
        ns: &str,
        table: &str,
        change: &FlushSettingsChange,
    ) -> Result<String, EngineError> {
        let def = self.catalog.update_table(ns, table, |cur| {
            if cur.table_type == TableType::Stream {
                return Err(stream_refused(cur));
            }
            if change.sharding.is_some() && cur.table_type != TableType::User {
                return Err(EngineError::user(ErrorCode::InvalidSql, "Option SHARDING is only valid for USER tables"));
            }
            let mut def = cur.clone();
            if change.reset {
                def.flush_policy = FlushPolicy {
                    row_threshold: Some(self.cfg.flush.default_row_limit),
                    interval_seconds: Some(self.cfg.flush.default_time_interval),
                };
                def.options.sharding = Sharding::None;
            } else {
                if let Some(interval) = change.interval_seconds {
                    def.flush_policy.interval_seconds = interval;
                }
                if let Some(rows) = change.row_threshold {
                    def.flush_policy.row_threshold = rows;
                }
                if let Some(sharding) = change.sharding {
                    def.options.sharding = sharding;
                }
            }
            def.updated_at_us = wall_clock_us();
            Ok((def, None))
        })?;
        tracing::info!(table = %def.qualified_name(), policy = ?def.flush_policy, "flush settings changed");
        Ok(format!("Flush settings updated for table '{}'", def.qualified_name()))
    }

    /// KILL JOB: an unfinished job becomes `cancelled`. kalam-flushd is told to stop it; its
    /// commit would be refused anyway, so the buffered rows stay where they are.
    pub fn kill_job(self: &Arc<Self>, job_id: &str) -> Result<String, EngineError> {
        let mut guard = self.store.begin();
        let mut job = self.job(job_id)?;
        if !status::ACTIVE.contains(&job.status.as_str()) {
            return Err(EngineError::user(
                ErrorCode::InvalidOperation,
                format!("Job '{job_id}' cannot be cancelled (status: {})", job.status),
            ));
        }
        job.status = status::CANCELLED.into();
        job.completed_at_us = Some(wall_clock_us());
        job.next_retry_at_us = None;
        self.put_job(&mut guard.batch, &job)?;
        let flush = job.job_type == "flush";
        guard.write_and(|| {
            if flush {
                self.flush_index().finished(&job.namespace_id, &job.table_name, None);
            }
        })?;
        if flush {
            self.cancel_in_flusher(job_id.to_owned());
        }
        tracing::info!(job_id, "job cancelled");
        Ok(format!("Job '{job_id}' cancelled successfully"))
    }

    /// RETRY JOB: a failed (dead-lettered included) or cancelled flush job is queued again
    /// under the same id with its attempts reset.
    pub fn retry_job(self: &Arc<Self>, job_id: &str) -> Result<String, EngineError> {
        let mut guard = self.store.begin();
        let mut job = self.job(job_id)?;
        if job.job_type != "flush" || ![status::FAILED, status::CANCELLED].contains(&job.status.as_str()) {
            return Err(EngineError::user(
                ErrorCode::InvalidOperation,
                format!("Job '{job_id}' cannot be retried (status: {})", job.status),
            ));
        }
        let def = self.catalog.require_table(&job.namespace_id, &job.table_name)?;
        if let Some(active) = self.flush_index().active_job(&job.namespace_id, &job.table_name).cloned() {
            return Err(EngineError::user(
                ErrorCode::InvalidOperation,
                format!(
                    "Job '{job_id}' cannot be retried: flush job '{active}' is active for table '{}'",
                    def.qualified_name()
                ),
            ));
        }
        self.check_flush_allowed(&def)?;
        reset_for_retry(&mut job);
        self.put_job(&mut guard.batch, &job)?;
        guard.write_and(|| {
            self.flush_index().started(&job.namespace_id, &job.table_name, &job.job_id);
        })?;
        self.notify_flusher(job_id.to_owned());
        tracing::info!(job_id, "job re-queued");
        Ok(format!("Job '{job_id}' re-queued"))
    }

    /// Tells kalam-flushd to stop a job (best effort: a refused commit stops it too).
    fn cancel_in_flusher(self: &Arc<Self>, job_id: String) {
        let engine = self.clone();
        tokio::spawn(async move {
            let Ok(client) = kalam_rpc::transport::connect_flusher(&engine.cfg.run_dir()).await else { return };
            if let Err(e) = client.cancel_job(tarpc::context::current(), job_id.clone()).await {
                tracing::debug!(job_id, error = %e, "kalam-flushd not told about the cancellation");
            }
        });
    }
}

fn reset_for_retry(job: &mut JobRecord) {
    job.status = status::QUEUED.into();
    job.attempts = 0;
    job.dead_letter = false;
    job.error_message = None;
    job.completed_at_us = None;
    job.started_at_us = None;
    job.next_retry_at_us = None;
    job.result = None;
}
