//! Flush jobs on kalamd's side (storage.md §6): job records, checkpoints, and the one-batch
//! commit that publishes a flush's files and removes exactly the row versions it flushed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use kalam_rpc::{FlushCandidate, FlushPlan, FlushSummary, FlushedFile};
use kalam_types::codec;
use kalam_types::error::{ErrorCode, KalamError};
use kalam_types::ids::JobId;
use kalam_types::schema::{TableDefinition, TableType};
use kalam_types::value::{decode_hex, encode_hex};
use rocksdb::{DB, IteratorMode, Options};
use serde::{Deserialize, Serialize};

use crate::clock::wall_clock_us;
use crate::engine::Engine;
use crate::error::EngineError;
use crate::store::{cf, counter_key, manifest_prefix, table_cf_name};

/// Job statuses of spec/storage.md §11.
pub mod status {
    pub const QUEUED: &str = "queued";
    pub const RUNNING: &str = "running";
    pub const COMPLETED: &str = "completed";
    pub const FAILED: &str = "failed";
    pub const RETRYING: &str = "retrying";
    pub const CANCELLED: &str = "cancelled";
    pub const ACTIVE: [&str; 4] = ["new", QUEUED, RUNNING, RETRYING];
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub job_id: String,
    pub job_type: String,
    pub namespace_id: String,
    pub table_name: String,
    pub status: String,
    pub attempts: u32,
    pub created_at_us: i64,
    pub started_at_us: Option<i64>,
    pub completed_at_us: Option<i64>,
    pub error_message: Option<String>,
    /// JSON text: `{"records_flushed", "parquet_files", ...}`.
    pub result: Option<String>,
    /// Failed after its last allowed attempt.
    #[serde(default)]
    pub dead_letter: bool,
    /// When a `retrying` job runs again (µs).
    #[serde(default)]
    pub next_retry_at_us: Option<i64>,
    /// Directory the current attempt writes under (recorded in the manifest at commit).
    #[serde(default)]
    pub storage_base: Option<String>,
    /// Schema version the current attempt writes its files in.
    #[serde(default)]
    pub schema_version: Option<u32>,
    /// A follow-up job of a flush limited by `flush.max_users_per_job`: it flushes the users
    /// after this one.
    #[serde(default)]
    pub after_user: Option<String>,
    /// The user a per-user job is about (`user_cleanup`).
    #[serde(default)]
    pub user_id: Option<String>,
}

impl JobRecord {
    /// A job kalamd ran itself from `started` until now, recorded as completed with `result`
    /// (stream eviction, user cleanup).
    pub fn completed(job_type: &str, started: i64, result: serde_json::Value) -> Self {
        let now = wall_clock_us();
        JobRecord {
            job_id: kalam_types::ids::JobId::untargeted(job_type, now / 1000, random_suffix()).to_string(),
            job_type: job_type.into(),
            namespace_id: String::new(),
            table_name: String::new(),
            status: status::COMPLETED.into(),
            attempts: 1,
            created_at_us: started,
            started_at_us: Some(started),
            completed_at_us: Some(now),
            error_message: None,
            result: Some(result.to_string()),
            dead_letter: false,
            next_retry_at_us: None,
            storage_base: None,
            schema_version: None,
            after_user: None,
            user_id: None,
        }
    }
}

/// A flushed file as recorded in the `table_files` manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestEntry {
    pub storage_id: String,
    /// Relative to the storage base.
    pub path: String,
    pub size_bytes: u64,
    pub row_count: u64,
    pub min_updated_us: i64,
    pub max_updated_us: i64,
    /// Primary-key range of the file (`0x` + hex of the key bytes).
    #[serde(default)]
    pub min_pk: Option<String>,
    #[serde(default)]
    pub max_pk: Option<String>,
    pub schema_version: u32,
    pub job_id: String,
    pub created_at_us: i64,
    /// The storage directory the file was written under; `None` for files written before
    /// storages were configurable (they live under storage `local`).
    #[serde(default)]
    pub base: Option<String>,
}

impl ManifestEntry {
    /// Where the file is (for S3 files, `s3://bucket/prefix/<path>`).
    pub fn full_path(&self, engine: &Engine) -> std::path::PathBuf {
        match self.base.as_deref() {
            Some(base) if base.starts_with("s3://") => std::path::PathBuf::from(format!("{base}{}", self.path)),
            Some(base) => std::path::PathBuf::from(base).join(&self.path),
            None => engine.storage_base().join(&self.path),
        }
    }

    /// The recorded primary-key range (`None` for files written without one).
    pub fn key_range(&self) -> Option<(Vec<u8>, Vec<u8>)> {
        let bound = |b: &Option<String>| b.as_deref().and_then(decode_hex);
        Some((bound(&self.min_pk)?, bound(&self.max_pk)?))
    }

    /// False only when the recorded key range proves the file cannot hold `pk`.
    pub fn may_contain(&self, pk: &[u8]) -> bool {
        self.key_range().is_none_or(|(min, max)| min.as_slice() <= pk && pk <= max.as_slice())
    }
}

/// In-memory view of flush state that writes consult cheaply: the active flush job of each
/// table and the time of its last completed flush. Rebuilt from `system.jobs` at start and
/// changed only under the commit lock, next to the job rows it mirrors.
#[derive(Debug, Default)]
pub struct FlushIndex {
    active: HashMap<(String, String), String>,
    last_flush_us: HashMap<(String, String), i64>,
    /// When the table's newest flush job was dead-lettered (cleared by a completed flush).
    dead_lettered_us: HashMap<(String, String), i64>,
}

impl FlushIndex {
    pub fn load(jobs: &[JobRecord]) -> Self {
        let mut index = FlushIndex::default();
        for j in jobs.iter().filter(|j| j.job_type == "flush") {
            let key = (j.namespace_id.clone(), j.table_name.clone());
            if status::ACTIVE.contains(&j.status.as_str()) {
                index.active.insert(key, j.job_id.clone());
            } else if j.status == status::COMPLETED
                && let Some(done) = j.completed_at_us
            {
                let last = index.last_flush_us.entry(key).or_insert(done);
                *last = (*last).max(done);
            } else if j.dead_letter
                && j.status == status::FAILED
                && let Some(at) = j.completed_at_us
            {
                let last = index.dead_lettered_us.entry(key).or_insert(at);
                *last = (*last).max(at);
            }
        }
        // A flush that completed after the dead letter ends the cool-down.
        let flushed = &index.last_flush_us;
        index.dead_lettered_us.retain(|k, at| flushed.get(k).is_none_or(|done| done < at));
        index
    }

    /// True while a table whose flush was dead-lettered cools down: automatic triggers wait.
    pub fn cooling_down(&self, ns: &str, table: &str, cooldown_us: i64, now_us: i64) -> bool {
        self.dead_lettered_us
            .get(&(ns.to_owned(), table.to_owned()))
            .is_some_and(|at| now_us < at.saturating_add(cooldown_us))
    }

    pub fn dead_lettered(&mut self, ns: &str, table: &str, at_us: i64) {
        let key = (ns.to_owned(), table.to_owned());
        self.active.remove(&key);
        self.dead_lettered_us.insert(key, at_us);
    }

    pub fn active_job(&self, ns: &str, table: &str) -> Option<&String> {
        self.active.get(&(ns.to_owned(), table.to_owned()))
    }

    pub fn last_flush_us(&self, ns: &str, table: &str) -> Option<i64> {
        self.last_flush_us.get(&(ns.to_owned(), table.to_owned())).copied()
    }

    pub fn started(&mut self, ns: &str, table: &str, job_id: &str) {
        self.active.insert((ns.to_owned(), table.to_owned()), job_id.to_owned());
    }

    pub fn finished(&mut self, ns: &str, table: &str, completed_at_us: Option<i64>) {
        let key = (ns.to_owned(), table.to_owned());
        self.active.remove(&key);
        if let Some(t) = completed_at_us {
            self.dead_lettered_us.remove(&key);
            self.last_flush_us.insert(key, t);
        }
    }

    pub fn forget_table(&mut self, ns: &str, table: &str) {
        let key = (ns.to_owned(), table.to_owned());
        self.active.remove(&key);
        self.last_flush_us.remove(&key);
        self.dead_lettered_us.remove(&key);
    }
}

/// Reads every job record.
pub fn load_jobs(store: &crate::store::Store) -> Result<Vec<JobRecord>, EngineError> {
    store
        .scan_prefix(cf::JOBS, b"")?
        .into_iter()
        .map(|(_, v)| serde_json::from_slice(&v).map_err(|e| EngineError::corrupt(cf::JOBS, e)))
        .collect()
}

fn job_not_found(job_id: &str) -> EngineError {
    EngineError::user(ErrorCode::JobNotFound, format!("Job not found: {job_id}"))
}

impl Engine {
    pub fn jobs(&self) -> Result<Vec<JobRecord>, EngineError> {
        load_jobs(&self.store)
    }

    pub fn flush_index(&self) -> std::sync::MutexGuard<'_, FlushIndex> {
        self.flush_index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Row trigger (storage.md §5): after a committed write, a table whose buffer reached its
    /// row threshold gets a flush job unless one is active.
    pub fn maybe_trigger_flush(self: &Arc<Self>, def: &TableDefinition) {
        let Some(threshold) = def.flush_policy.row_threshold else { return };
        let (ns, table) = (def.namespace.as_str(), def.name.as_str());
        let busy = self.flush_index().active_job(ns, table).is_some();
        if busy || self.flush_paused(def) || self.cooling_down(ns, table) {
            return;
        }
        match self.store.read_counter(&counter_key(ns, table, None)) {
            Ok(buffered) if buffered >= threshold => {
                if let Err(e) = self.create_flush_job(def) {
                    tracing::warn!(table = %def.qualified_name(), error = %e, "row-threshold flush not started");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the buffered row count"),
        }
    }

    /// A table whose last flush was dead-lettered gets no automatic flush job for
    /// `flush.dead_letter_cooldown_seconds` (storage.md §11).
    fn cooling_down(&self, ns: &str, table: &str) -> bool {
        let cooldown_us =
            i64::try_from(self.cfg.flush.dead_letter_cooldown_seconds.saturating_mul(1_000_000)).unwrap_or(i64::MAX);
        self.flush_index().cooling_down(ns, table, cooldown_us, wall_clock_us())
    }

    pub fn job(&self, job_id: &str) -> Result<JobRecord, EngineError> {
        let bytes = self.store.get(cf::JOBS, job_id.as_bytes())?.ok_or_else(|| job_not_found(job_id))?;
        serde_json::from_slice(&bytes).map_err(|e| EngineError::corrupt(cf::JOBS, e))
    }

    pub(crate) fn put_job(&self, batch: &mut rocksdb::WriteBatch, job: &JobRecord) -> Result<(), EngineError> {
        let cf = self.store.cf(cf::JOBS)?;
        batch.put_cf(&cf, job.job_id.as_bytes(), serde_json::to_vec(job).map_err(EngineError::internal)?);
        Ok(())
    }

    /// Creates a flush job for `def`, or returns the active one (`true` = already running).
    pub fn create_flush_job(self: &Arc<Self>, def: &TableDefinition) -> Result<(String, bool), EngineError> {
        self.create_flush_job_after(def, None)
    }

    /// [`Engine::create_flush_job`] for the users after `after_user` only (a follow-up job).
    fn create_flush_job_after(
        self: &Arc<Self>,
        def: &TableDefinition,
        after_user: Option<String>,
    ) -> Result<(String, bool), EngineError> {
        if def.table_type == TableType::Stream {
            return Err(crate::jobs::stream_refused(def));
        }
        let mut guard = self.store.begin();
        let active = self.flush_index().active_job(def.namespace.as_str(), def.name.as_str()).cloned();
        if active.is_none() {
            self.check_flush_allowed(def)?;
        }
        if let Some(job_id) = active {
            // kalam-flushd may have lost it (a restart of either side); it ignores duplicates.
            self.notify_flusher(job_id.clone());
            return Ok((job_id, true));
        }
        let now = wall_clock_us();
        let job_id = JobId::flush(&def.name, now / 1000, random_suffix()).to_string();
        let job = JobRecord {
            job_id: job_id.clone(),
            job_type: "flush".into(),
            namespace_id: def.namespace.to_string(),
            table_name: def.name.to_string(),
            status: status::QUEUED.into(),
            attempts: 0,
            created_at_us: now,
            started_at_us: None,
            completed_at_us: None,
            error_message: None,
            result: None,
            dead_letter: false,
            next_retry_at_us: None,
            storage_base: None,
            schema_version: None,
            after_user,
            user_id: None,
        };
        self.put_job(&mut guard.batch, &job)?;
        // The index changes before the lock is released: a concurrent FLUSH TABLE sees this job.
        guard.write_and(|| {
            self.flush_index().started(&job.namespace_id, &job.table_name, &job_id);
        })?;
        tracing::info!(job_id, table = %def.qualified_name(), "flush job queued");
        self.notify_flusher(job_id.clone());
        Ok((job_id, false))
    }

    /// Each attempt has its own checkpoint, so a stale attempt can never be committed against
    /// a newer attempt's rows.
    fn checkpoint_path(&self, job_id: &str, attempt: u32) -> PathBuf {
        self.cfg.checkpoint_dir().join(format!("{job_id}.{attempt}"))
    }

    /// Removes the checkpoints of every earlier attempt of a job.
    fn remove_checkpoints_of(&self, job_id: &str) {
        let prefix = format!("{job_id}.");
        if let Ok(dir) = std::fs::read_dir(self.cfg.checkpoint_dir()) {
            for entry in dir.flatten() {
                if entry.file_name().to_string_lossy().starts_with(&prefix) {
                    remove_checkpoint(&entry.path());
                }
            }
        }
    }

    /// Marks the job running and creates the checkpoint its rows are read from.
    pub fn begin_flush(&self, job_id: &str) -> Result<FlushPlan, EngineError> {
        let mut guard = self.store.begin();
        let mut job = self.job(job_id)?;
        if !status::ACTIVE.contains(&job.status.as_str()) {
            return Err(EngineError::user(
                ErrorCode::InvalidOperation,
                format!("Job '{job_id}' cannot be run (status: {})", job.status),
            ));
        }
        let def = self.catalog.require_table(&job.namespace_id, &job.table_name)?;
        let max_attempts = self.cfg.flush.max_retries + 1;
        if job.attempts >= max_attempts {
            // Every allowed attempt started and none committed (crashes while flushing).
            job.status = status::FAILED.into();
            job.dead_letter = true;
            job.next_retry_at_us = None;
            job.completed_at_us = Some(wall_clock_us());
            job.error_message = Some(format!("gave up after {} attempts", job.attempts));
            self.put_job(&mut guard.batch, &job)?;
            let at = job.completed_at_us.unwrap_or_default();
            guard.write_and(|| self.flush_index().dead_lettered(&job.namespace_id, &job.table_name, at))?;
            tracing::warn!(job_id, attempts = job.attempts, "flush job dead-lettered");
            return Err(EngineError::user(
                ErrorCode::InvalidOperation,
                format!("Job '{job_id}' cannot be run (status: failed)"),
            ));
        }
        job.attempts += 1;
        self.remove_checkpoints_of(job_id);
        let checkpoint = self.checkpoint_path(job_id, job.attempts);
        std::fs::create_dir_all(self.cfg.checkpoint_dir()).map_err(crate::store::StoreError::Io)?;
        rocksdb::checkpoint::Checkpoint::new(self.store.db())
            .and_then(|c| c.create_checkpoint(&checkpoint))
            .map_err(crate::store::StoreError::Rocks)?;
        let storage = self.require_storage(&def.storage_id)?;
        let base = if storage.is_s3() { storage.uri.clone() } else { self.storage_dir(&storage).display().to_string() };
        let credentials = match storage.is_s3() {
            true => Some(serde_json::Value::Object(self.storage_credentials(&storage)?).to_string()),
            false => None,
        };
        job.storage_base = Some(base.clone());
        job.schema_version = Some(def.schema_version);
        job.status = status::RUNNING.into();
        job.next_retry_at_us = None;
        job.started_at_us.get_or_insert_with(wall_clock_us);
        self.put_job(&mut guard.batch, &job)?;
        guard.write()?;
        tracing::info!(job_id, table = %def.qualified_name(), attempt = job.attempts, "flush started");
        Ok(FlushPlan {
            job_id: job_id.to_owned(),
            attempt: job.attempts,
            table: (*def).clone(),
            checkpoint_path: checkpoint.display().to_string(),
            column_family: table_cf_name(&def),
            storage_base: base,
            storage_type: storage.storage_type.clone(),
            credentials,
            shared_template: storage.shared_tables_template,
            user_template: storage.user_tables_template,
            job_created_at_us: job.created_at_us,
            max_rows_per_file: self.cfg.flush.max_rows_per_file.max(1),
            max_users_per_job: self.cfg.flush.max_users_per_job,
            after_user: job.after_user.clone(),
            compression: self.cfg.storage.compression.clone(),
        })
    }

    /// Publishes the files and removes the flushed row versions, in one write batch.
    ///
    /// With `flush.max_users_per_job`, a USER-table job covers the users after its `after_user`
    /// up to the last user it wrote; when the checkpoint holds more, a follow-up job for them is
    /// queued once this one is committed.
    pub fn commit_flush(
        self: &Arc<Self>,
        job_id: &str,
        attempt: u32,
        files: &[FlushedFile],
    ) -> Result<FlushSummary, EngineError> {
        let checkpoint = self.checkpoint_path(job_id, attempt);
        let mut guard = self.store.begin();
        let mut job = self.job(job_id)?;
        if job.status != status::RUNNING || job.attempts != attempt {
            return Err(EngineError::user(
                ErrorCode::InvalidOperation,
                format!(
                    "Job '{job_id}' attempt {attempt} cannot be committed (status: {}, current attempt: {})",
                    job.status, job.attempts
                ),
            ));
        }
        let def = self.catalog.require_table(&job.namespace_id, &job.table_name)?;
        let cf_name = table_cf_name(&def);
        let (ns, table) = (def.namespace.as_str(), def.name.as_str());

        // Delete exactly the versions the checkpoint held; a row written since keeps its newer
        // buffered version.
        let snapshot = open_checkpoint(&checkpoint, &cf_name)?;
        let snap_cf = snapshot.cf_handle(&cf_name).ok_or_else(|| EngineError::internal("checkpoint lacks table"))?;
        let live_cf = self.store.cf(&cf_name)?;
        let mut removed_per_user: std::collections::BTreeMap<Option<String>, i64> = Default::default();
        let mut records = 0u64;
        let limit = self.cfg.flush.max_users_per_job;
        let partial = limit > 0 && def.table_type == TableType::User;
        let users_written: std::collections::BTreeSet<&str> =
            files.iter().filter_map(|f| f.user_id.as_deref()).collect();
        let through = if partial { users_written.last().copied() } else { None };
        let start = job.after_user.as_deref().map(codec::users_after);
        let mode = match &start {
            Some(key) => IteratorMode::From(key, rocksdb::Direction::Forward),
            None => IteratorMode::Start,
        };
        let mut more_users = false;
        for item in snapshot.iterator_cf(&snap_cf, mode) {
            let (key, value) = item.map_err(crate::store::StoreError::Rocks)?;
            if let Some(last) = through
                && codec::split_user_row_key(&key).map_err(EngineError::internal)?.0 > last
            {
                more_users = true;
                break;
            }
            records += 1;
            if self.store.db().get_cf(&live_cf, &key).map_err(crate::store::StoreError::Rocks)?.as_deref()
                == Some(&value[..])
            {
                guard.batch.delete_cf(&live_cf, &key);
                let user = match def.table_type {
                    TableType::Shared => None,
                    _ => Some(codec::split_user_row_key(&key).map_err(EngineError::internal)?.0.to_owned()),
                };
                *removed_per_user.entry(user).or_default() += 1;
            }
        }
        drop(snap_cf);
        drop(snapshot);
        let in_files: u64 = files.iter().map(|f| f.row_count).sum();
        let user_limit_broken =
            partial && (users_written.len() as u64 > limit || (more_users && (users_written.len() as u64) < limit));
        if in_files != records || user_limit_broken {
            drop(guard);
            let error = match user_limit_broken {
                true => format!("flush files cover {} users; the job's limit is {limit}", users_written.len()),
                false => format!("flush files hold {in_files} rows but the checkpoint has {records}"),
            };
            self.fail_flush(job_id, attempt, &error)?;
            return Err(EngineError::user(ErrorCode::InvalidOperation, error));
        }

        let mut total_removed = 0;
        for (user, n) in &removed_per_user {
            if let Some(u) = user {
                guard.add_counter(&counter_key(ns, table, Some(u)), -n)?;
            }
            total_removed += n;
        }
        guard.add_counter(&counter_key(ns, table, None), -total_removed)?;

        let files_cf = self.store.cf(cf::TABLE_FILES)?;
        let now = wall_clock_us();
        let base = job.storage_base.clone().unwrap_or_else(|| self.storage_base().display().to_string());
        for f in files {
            let entry = ManifestEntry {
                storage_id: def.storage_id.clone(),
                path: f.path.clone(),
                size_bytes: f.size_bytes,
                row_count: f.row_count,
                min_updated_us: f.min_updated_us,
                max_updated_us: f.max_updated_us,
                min_pk: Some(encode_hex(&f.min_pk)),
                max_pk: Some(encode_hex(&f.max_pk)),
                schema_version: job.schema_version.unwrap_or(def.schema_version),
                job_id: job_id.to_owned(),
                created_at_us: now,
                base: Some(base.clone()),
            };
            let mut key = manifest_prefix(ns, table, f.user_id.as_deref());
            key.extend_from_slice(f.path.as_bytes());
            guard.batch.put_cf(&files_cf, key, serde_json::to_vec(&entry).map_err(EngineError::internal)?);
        }
        drop(files_cf);
        drop(live_cf);
        let duration_ms = job.started_at_us.map(|s| (now - s) / 1000).unwrap_or(0);
        let users: std::collections::BTreeSet<_> = files.iter().filter_map(|f| f.user_id.clone()).collect();
        job.status = status::COMPLETED.into();
        job.completed_at_us = Some(now);
        job.result = Some(
            serde_json::json!({
                "records_flushed": records,
                "users_count": users.len(),
                "parquet_files": files.iter().map(|f| f.path.clone()).collect::<Vec<_>>(),
                "storage_location": base,
                "duration_ms": duration_ms,
            })
            .to_string(),
        );
        self.put_job(&mut guard.batch, &job)?;
        guard.write_and(|| self.flush_index().finished(&job.namespace_id, &job.table_name, job.completed_at_us))?;
        remove_checkpoint(&checkpoint);
        tracing::info!(job_id, table = %def.qualified_name(), records_flushed = records, duration_ms, "Flush job completed");
        self.compact_after_flush(cf_name);
        if more_users {
            let after = through.map(str::to_owned);
            match self.create_flush_job_after(&def, after) {
                Ok((next, _)) => tracing::info!(job_id, next, "flush continues with the remaining users"),
                Err(e) => tracing::warn!(job_id, error = %e, "follow-up flush job not created"),
            }
        }
        Ok(FlushSummary { records_flushed: records, files: files.len() as u64 })
    }

    /// A flush leaves one tombstone per flushed row in the table's column family, and every
    /// scan of the buffer would step over them until RocksDB compacts them away. Compacting
    /// the family right after the commit (in the background; after a flush it holds little
    /// else) keeps buffer scans proportional to the rows actually buffered.
    fn compact_after_flush(self: &Arc<Self>, cf_name: String) {
        let engine = self.clone();
        let compact = move || match engine.store.cf(&cf_name) {
            Ok(cf) => {
                let started = std::time::Instant::now();
                engine.store.db().compact_range_cf(&cf, None::<&[u8]>, None::<&[u8]>);
                tracing::debug!(cf = cf_name, ms = started.elapsed().as_millis() as u64, "compacted after flush");
            }
            Err(e) => tracing::debug!(cf = cf_name, error = %e, "table gone before its compaction"),
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => drop(handle.spawn_blocking(compact)),
            Err(_) => compact(),
        }
    }

    /// Records a failed attempt. Every row stays in the buffer. A stale attempt's failure is
    /// ignored (a newer attempt is running).
    pub fn fail_flush(&self, job_id: &str, attempt: u32, error: &str) -> Result<(), EngineError> {
        let mut guard = self.store.begin();
        let mut job = self.job(job_id)?;
        remove_checkpoint(&self.checkpoint_path(job_id, attempt));
        if job.attempts != attempt || !status::ACTIVE.contains(&job.status.as_str()) {
            return Ok(());
        }
        job.error_message = Some(error.to_owned());
        let now = wall_clock_us();
        if job.attempts < self.cfg.flush.max_retries + 1 {
            // Exponential back-off: base, 2 × base, 4 × base, … up to the maximum.
            let shift = job.attempts.saturating_sub(1).min(30);
            let delay_ms =
                self.cfg.flush.retry_base_delay_ms.saturating_mul(1 << shift).min(self.cfg.flush.retry_max_delay_ms);
            job.status = status::RETRYING.into();
            job.next_retry_at_us = Some(now.saturating_add(i64::try_from(delay_ms).unwrap_or(i64::MAX / 1000) * 1000));
            self.put_job(&mut guard.batch, &job)?;
            guard.write()?;
            tracing::warn!(job_id, error, attempt, delay_ms, "flush attempt failed; retrying");
        } else {
            job.status = status::FAILED.into();
            job.dead_letter = true;
            job.next_retry_at_us = None;
            job.completed_at_us = Some(now);
            self.put_job(&mut guard.batch, &job)?;
            guard.write_and(|| self.flush_index().dead_lettered(&job.namespace_id, &job.table_name, now))?;
            tracing::error!(
                job_id,
                error,
                attempts = job.attempts,
                "flush job failed after its last attempt (dead letter)"
            );
        }
        Ok(())
    }

    /// The committed files of one partition of a job's table (paths relative to their storage
    /// base, whatever base they were written under): what a flush must never delete. Paths
    /// carry their job id, so a path recorded under another base cannot name another file.
    pub fn committed_files(&self, job_id: &str, user: Option<&str>) -> Result<Vec<String>, EngineError> {
        let job = self.job(job_id)?;
        let def = self.catalog.require_table(&job.namespace_id, &job.table_name)?;
        let user = match (def.table_type, user) {
            (TableType::Shared, _) => None,
            (_, Some(u)) => Some(kalam_types::ids::UserId::parse(u).map_err(EngineError::User)?),
            (_, None) => return Err(EngineError::internal("committed files of a USER table need a user")),
        };
        Ok(crate::read::manifest_entries(self, &def, user.as_ref())?.into_iter().map(|e| e.path).collect())
    }

    /// Flush jobs that failed after their last attempt, oldest first.
    pub fn dead_letters(&self) -> Result<Vec<kalam_rpc::DeadLetter>, EngineError> {
        let mut out: Vec<_> = self
            .jobs()?
            .into_iter()
            .filter(|j| j.dead_letter && j.status == status::FAILED)
            .map(|j| kalam_rpc::DeadLetter {
                job_id: j.job_id,
                namespace: j.namespace_id,
                table: j.table_name,
                attempts: j.attempts,
                error_message: j.error_message,
                failed_at_us: j.completed_at_us,
            })
            .collect();
        out.sort_by_key(|d| d.failed_at_us);
        Ok(out)
    }

    /// Every USER/SHARED table with a time trigger, for kalam-flushd's scheduler.
    pub fn flush_candidates(&self) -> Result<Vec<FlushCandidate>, EngineError> {
        let mut out = Vec::new();
        for def in self.catalog.tables() {
            let Some(interval_seconds) = def.flush_policy.interval_seconds else { continue };
            let (ns, table) = (def.namespace.as_str(), def.name.as_str());
            let cooling_down = self.cooling_down(ns, table);
            if def.table_type == TableType::Stream || self.flush_paused(&def) || cooling_down {
                continue;
            }
            let buffered_rows = self.store.read_counter(&counter_key(ns, table, None))?;
            let index = self.flush_index();
            out.push(FlushCandidate {
                namespace: ns.to_owned(),
                table: table.to_owned(),
                buffered_rows,
                interval_seconds,
                last_flush_at_us: timer_origin(&def, index.last_flush_us(ns, table)),
                active: index.active_job(ns, table).is_some(),
            });
        }
        Ok(out)
    }

    /// Unfinished flush jobs that may run now: every active job except a `retrying` one whose
    /// back-off has not elapsed (kalam-flushd's scheduler picks that up when it is due).
    ///
    /// Read from the flush index (every active job, one per table), not by scanning the job
    /// history: kalam-flushd asks every scheduler tick.
    pub fn runnable_flush_jobs(&self) -> Result<Vec<String>, EngineError> {
        let now = wall_clock_us();
        let active: Vec<String> = self.flush_index().active.values().cloned().collect();
        let mut out = Vec::with_capacity(active.len());
        for job_id in active {
            let job = match self.job(&job_id) {
                Ok(j) => j,
                Err(EngineError::User(_)) => continue,
                Err(e) => return Err(e),
            };
            let due = job.status != status::RETRYING || job.next_retry_at_us.is_none_or(|t| t <= now);
            if status::ACTIVE.contains(&job.status.as_str()) && due {
                out.push(job_id);
            }
        }
        out.sort();
        Ok(out)
    }
}

/// Where a table's interval timer counts from: its last completed flush, or its creation, or
/// the last change of its definition (ALTER FLUSH SETTINGS, RESUME FLUSH), whichever is latest.
/// A table overdue when kalamd starts flushes at once.
pub fn timer_origin(def: &TableDefinition, last_flush_us: Option<i64>) -> i64 {
    last_flush_us.unwrap_or(def.created_at_us).max(def.updated_at_us)
}

fn open_checkpoint(path: &std::path::Path, cf_name: &str) -> Result<DB, EngineError> {
    let opts = Options::default();
    DB::open_cf_for_read_only(&opts, path, [cf_name], false).map_err(|e| {
        EngineError::User(KalamError::new(
            ErrorCode::InvalidOperation,
            format!("checkpoint of this job is unusable; run the job again ({e})"),
        ))
    })
}

fn remove_checkpoint(path: &std::path::Path) {
    if let Err(e) = std::fs::remove_dir_all(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "could not remove checkpoint");
    }
}

pub(crate) fn random_suffix() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_i64(wall_clock_us());
    h.finish() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(min: Option<&[u8]>, max: Option<&[u8]>) -> ManifestEntry {
        ManifestEntry {
            storage_id: "local".into(),
            path: "p".into(),
            size_bytes: 0,
            row_count: 0,
            min_updated_us: 0,
            max_updated_us: 0,
            min_pk: min.map(encode_hex),
            max_pk: max.map(encode_hex),
            schema_version: 1,
            job_id: "j".into(),
            created_at_us: 0,
            base: None,
        }
    }

    async fn engine_with_rows() -> (tempfile::TempDir, std::sync::Arc<Engine>, std::sync::Arc<TableDefinition>) {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = kalam_config::KalamConfig::test_config(dir.path(), 1);
        cfg.resolve_paths().unwrap();
        let engine = Engine::open(cfg).unwrap();
        let user = kalam_types::ids::UserId::parse("alice").unwrap();
        let sql =
            "CREATE NAMESPACE app; CREATE USER TABLE app.t (id BIGINT PRIMARY KEY); INSERT INTO app.t VALUES (1), (2)";
        assert!(crate::sql::execute_batch(&engine, sql, None, &user).await.1.is_none());
        let def = engine.catalog.table("app", "t").unwrap();
        (dir, engine, def)
    }

    fn file(rows: u64) -> FlushedFile {
        FlushedFile {
            user_id: Some("alice".into()),
            path: "app/users/t/alice/f.parquet".into(),
            size_bytes: 1,
            row_count: rows,
            min_updated_us: 0,
            max_updated_us: 0,
            min_pk: vec![],
            max_pk: vec![],
        }
    }

    #[tokio::test]
    async fn a_stale_attempt_cannot_commit() {
        let (_dir, engine, def) = engine_with_rows().await;
        let (job, _) = engine.create_flush_job(&def).unwrap();
        let first = engine.begin_flush(&job).unwrap();
        let second = engine.begin_flush(&job).unwrap();
        assert_eq!((first.attempt, second.attempt), (1, 2));
        let err = engine.commit_flush(&job, first.attempt, &[file(2)]).unwrap_err().to_client();
        assert_eq!(err.code, ErrorCode::InvalidOperation);
        // A stale failure does not fail the running attempt either.
        engine.fail_flush(&job, first.attempt, "late").unwrap();
        assert_eq!(engine.job(&job).unwrap().status, status::RUNNING);
        let done = engine.commit_flush(&job, second.attempt, &[file(2)]).unwrap();
        assert_eq!(done.records_flushed, 2);
        assert_eq!(engine.job(&job).unwrap().status, status::COMPLETED);
    }

    #[tokio::test]
    async fn a_commit_whose_files_miss_rows_is_refused_and_keeps_the_buffer() {
        let (_dir, engine, def) = engine_with_rows().await;
        let (job, _) = engine.create_flush_job(&def).unwrap();
        let plan = engine.begin_flush(&job).unwrap();
        assert!(engine.commit_flush(&job, plan.attempt, &[file(1)]).is_err());
        // The failed attempt is retried later (back-off), not given up at once.
        let record = engine.job(&job).unwrap();
        assert_eq!(record.status, status::RETRYING);
        assert!(record.next_retry_at_us.is_some());
        assert!(record.error_message.unwrap().contains("hold 1 rows but the checkpoint has 2"));
        let counter = engine.store.read_counter(&counter_key("app", "t", None)).unwrap();
        assert_eq!(counter, 2, "no buffered row was removed");
        let rows = crate::read::read_partition(&engine, &def, Some(&kalam_types::ids::UserId::parse("alice").unwrap()));
        assert_eq!(rows.unwrap().len(), 2);
    }

    #[test]
    fn key_ranges_prune_files_conservatively() {
        let e = entry(Some(b"b"), Some(b"d"));
        assert!(e.may_contain(b"b") && e.may_contain(b"c") && e.may_contain(b"d"));
        assert!(!e.may_contain(b"a") && !e.may_contain(b"e"));
        assert!(entry(None, None).may_contain(b"anything"), "files without a range are always read");
    }
}
