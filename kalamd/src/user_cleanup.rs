//! User cleanup (storage.md §12): once a soft-deleted user's grace period
//! (`auth.user_deletion_grace_period_days`) has passed, their partitions of every USER and
//! STREAM table go (buffered rows, stream buffers, Parquet files and manifest entries, counters),
//! then their `system.users` row and API-key index entry. Each cleanup is recorded in
//! `system.jobs` as a `user_cleanup` job. Restoring the user (`deleted_at = NULL`) before then
//! cancels it: the pass only takes users still deleted at that moment, under the commit lock.
//! A user is not purged while a flush is running (its checkpoint may hold their rows); the next
//! pass does it.

use std::sync::Arc;

use kalam_types::codec;
use kalam_types::ids::UserId;
use kalam_types::schema::TableType;

use crate::clock::wall_clock_us;
use crate::engine::Engine;
use crate::error::EngineError;
use crate::flush::{JobRecord, ManifestEntry, status};
use crate::store::{cf, counter_key, manifest_prefix, table_cf_name};
use crate::users::{self, UserRecord};

/// How often deleted users are checked.
const CHECK_PERIOD: std::time::Duration = std::time::Duration::from_secs(60);

/// Runs [`Engine::purge_deleted_users`] every minute (and once at start) until `stop`.
pub async fn cleanup_loop(engine: Arc<Engine>, stop: tokio_util::sync::CancellationToken) {
    crate::engine::every(engine, CHECK_PERIOD, stop, "user cleanup", |e| e.purge_deleted_users()).await;
}

impl Engine {
    /// Removes every user whose grace period has passed; returns how many.
    pub fn purge_deleted_users(&self) -> Result<u64, EngineError> {
        let grace_us = (self.cfg.auth.user_deletion_grace_period_days as i64).saturating_mul(86_400_000_000);
        let cutoff = wall_clock_us().saturating_sub(grace_us);
        let due: Vec<String> = users::list(&self.store)?
            .into_iter()
            .filter(|u| u.deleted_at_us.is_some_and(|at| at <= cutoff))
            .map(|u| u.user_id)
            .collect();
        let mut purged = 0;
        for user_id in due {
            if self.purge_user(&user_id, cutoff)? {
                purged += 1;
            }
        }
        Ok(purged)
    }

    /// Removes one user and their data, if they are still deleted since before `cutoff`.
    fn purge_user(&self, user_id: &str, cutoff: i64) -> Result<bool, EngineError> {
        let started = wall_clock_us();
        let user = UserId::parse(user_id)?;
        let prefix = codec::user_prefix(&user);
        let mut end = prefix.clone();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let mut guard = self.store.begin();
        // Restored (or already purged) since the list was read: nothing to do.
        let Some(record) = users::get(&self.store, user_id)?.filter(|u| u.deleted_at_us.is_some_and(|at| at <= cutoff))
        else {
            return Ok(false);
        };
        // A running flush read its checkpoint before this point and would bring the user's
        // rows back as files when it commits: wait for the next pass. (A flush that starts
        // later checkpoints after this batch, without them.)
        if self.jobs()?.iter().any(|j| j.job_type == "flush" && j.status == status::RUNNING) {
            tracing::debug!(user_id, "user cleanup waits for a running flush");
            return Ok(false);
        }
        let mut files: Vec<ManifestEntry> = Vec::new();
        let mut streams = Vec::new();
        let mut tables = 0u64;
        {
            let files_cf = self.store.cf(cf::TABLE_FILES)?;
            let counters_cf = self.store.cf(cf::COUNTERS)?;
            for def in self.catalog.tables() {
                let (ns, table) = (def.namespace.as_str(), def.name.as_str());
                match def.table_type {
                    TableType::Shared => continue,
                    TableType::Stream => {
                        streams.push(def.clone());
                        tables += 1;
                        continue;
                    }
                    TableType::User => tables += 1,
                }
                for (key, value) in
                    self.store.scan_prefix(cf::TABLE_FILES, &manifest_prefix(ns, table, Some(user_id)))?
                {
                    files.push(serde_json::from_slice(&value).map_err(|e| EngineError::corrupt(cf::TABLE_FILES, e))?);
                    guard.batch.delete_cf(&files_cf, key);
                }
                let user_counter = counter_key(ns, table, Some(user_id));
                let buffered = self.store.read_counter(&user_counter)?;
                guard.batch.delete_cf(&counters_cf, &user_counter);
                guard.add_counter(&counter_key(ns, table, None), -(buffered as i64))?;
                let rows_cf = self.store.cf(&table_cf_name(&def))?;
                guard.batch.delete_range_cf(&rows_cf, &prefix, &end);
            }
            let users_cf = self.store.cf(cf::USERS)?;
            guard.batch.delete_cf(&users_cf, user_id.as_bytes());
            if let Some(hash) = &record.apikey_sha256 {
                let keys_cf = self.store.cf(cf::USER_APIKEYS)?;
                guard.batch.delete_cf(&keys_cf, hash.as_bytes());
            }
        }
        let file_count = files.len();
        let job = cleanup_job(&record, started, tables, file_count);
        self.put_job(&mut guard.batch, &job)?;
        guard.write_and(|| {
            for def in &streams {
                self.streams.drop_user(def, &user);
            }
        })?;
        let removed = self.delete_files(files);
        tracing::info!(user_id, tables, files = removed.files, bytes = removed.bytes, "deleted user purged");
        Ok(true)
    }
}

fn cleanup_job(user: &UserRecord, started: i64, tables: u64, files: usize) -> JobRecord {
    let result = serde_json::json!({ "tables": tables, "parquet_files": files });
    JobRecord { user_id: Some(user.user_id.clone()), ..JobRecord::completed("user_cleanup", started, result) }
}
