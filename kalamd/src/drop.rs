//! DROP TABLE and DROP NAMESPACE (sql.md §5, §7.3; storage.md §12). The catalog row, manifest
//! entries, counters and active flush jobs go in one write batch; then the table's column
//! family and its Parquet files are removed. A crash in between leaves only unreferenced files.

use std::path::Path;

use kalam_types::error::ErrorCode;
use kalam_types::schema::TableDefinition;

use crate::clock::wall_clock_us;
use crate::engine::Engine;
use crate::error::EngineError;
use crate::flush::{ManifestEntry, status};
use crate::store::{cf, table_cf_name};

/// What a DROP TABLE removed from storage.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    pub files: u64,
    pub bytes: u64,
}

impl Engine {
    /// Active live queries on `ns.table` (all tables of `ns` when `table` is `None`), as
    /// kalam-lived reports them; 0 when it is not running (it then holds no sockets).
    pub async fn live_queries_on(&self, ns: &str, table: Option<&str>) -> usize {
        let Ok(client) = kalam_rpc::transport::connect_live(&self.cfg.run_dir()).await else { return 0 };
        match client.list_subscriptions(tarpc::context::current()).await {
            Ok(subs) => subs.iter().filter(|s| s.namespace == ns && table.is_none_or(|t| s.table == t)).count(),
            Err(_) => 0,
        }
    }

    /// Whether `user` has a live subscription on the table, asked from a blocking thread (the
    /// EPHEMERAL check of STREAM inserts). Without an answer within a second, the rows are kept.
    pub fn has_subscriber_blocking(&self, def: &TableDefinition, user: &kalam_types::ids::UserId) -> bool {
        let Ok(handle) = tokio::runtime::Handle::try_current() else { return true };
        let (ns, table, user) = (def.namespace.as_str(), def.name.as_str(), user.as_str());
        let ask = async {
            let client = kalam_rpc::transport::connect_live(&self.cfg.run_dir()).await.ok()?;
            let subs = client.list_subscriptions(tarpc::context::current()).await.ok()?;
            Some(subs.iter().any(|s| s.namespace == ns && s.table == table && s.user_id == user))
        };
        // Not running (no answer at all) means nobody can be subscribed.
        match handle.block_on(tokio::time::timeout(std::time::Duration::from_secs(1), ask)) {
            Ok(Some(found)) => found,
            Ok(None) => false,
            Err(_) => true,
        }
    }

    /// The SQL of the live queries on `ns.table` (empty when kalam-lived is not running).
    pub async fn live_queries_sql(&self, ns: &str, table: &str) -> Vec<String> {
        let Ok(client) = kalam_rpc::transport::connect_live(&self.cfg.run_dir()).await else { return Vec::new() };
        match client.list_subscriptions(tarpc::context::current()).await {
            Ok(subs) => subs.into_iter().filter(|s| s.namespace == ns && s.table == table).map(|s| s.sql).collect(),
            Err(_) => Vec::new(),
        }
    }

    pub fn drop_table(&self, def: &TableDefinition) -> Result<Dropped, EngineError> {
        let (ns, table) = (def.namespace.as_str(), def.name.as_str());
        let table_prefix = format!("{ns}:{table}:").into_bytes();
        let mut guard = self.store.begin();
        let mut entries = Vec::new();
        {
            let files_cf = self.store.cf(cf::TABLE_FILES)?;
            for (key, value) in self.store.scan_prefix(cf::TABLE_FILES, &table_prefix)? {
                let entry: ManifestEntry =
                    serde_json::from_slice(&value).map_err(|e| EngineError::corrupt(cf::TABLE_FILES, e))?;
                entries.push(entry);
                guard.batch.delete_cf(&files_cf, key);
            }
            let counters_cf = self.store.cf(cf::COUNTERS)?;
            for (key, _) in self.store.scan_prefix(cf::COUNTERS, &table_prefix)? {
                guard.batch.delete_cf(&counters_cf, key);
            }
            let tables_cf = self.store.cf(cf::TABLES)?;
            guard.batch.delete_cf(&tables_cf, format!("{ns}:{table}"));
        }
        // Active flush jobs of the table are cancelled; their commits will be refused.
        for mut job in self.jobs()? {
            if job.job_type == "flush"
                && job.namespace_id == ns
                && job.table_name == table
                && status::ACTIVE.contains(&job.status.as_str())
            {
                job.status = "cancelled".into();
                job.completed_at_us = Some(wall_clock_us());
                job.error_message = Some("table dropped".into());
                self.put_job(&mut guard.batch, &job)?;
            }
        }
        // The column family goes before the lock is released: a CREATE TABLE of the same name
        // right after must create a fresh one.
        guard.write_and(|| {
            self.flush_index().forget_table(ns, table);
            self.catalog.forget_table(ns, table);
            if def.table_type == kalam_types::schema::TableType::Stream {
                self.streams.drop_table(ns, table);
            } else if let Err(e) = self.store.db().drop_cf(&table_cf_name(def)) {
                tracing::warn!(table = %def.qualified_name(), error = %e, "could not drop the column family");
            }
        })?;
        let dropped = self.delete_files(entries);
        tracing::info!(table = %def.qualified_name(), files = dropped.files, bytes = dropped.bytes, "table dropped");
        Ok(dropped)
    }

    /// Deletes the files of manifest entries that are already gone from the manifest (a
    /// dropped table, a purged user), with the directories they leave empty. Failures are
    /// logged: the files are unreferenced, and the orphan sweep of later flushes finds them.
    pub fn delete_files(&self, entries: Vec<ManifestEntry>) -> Dropped {
        let mut dropped = Dropped::default();
        for entry in entries {
            if let Some(base) = entry.base.as_deref().filter(|b| b.starts_with("s3://")) {
                let deleted = self.s3_store_at(&entry.storage_id, base).and_then(|s| {
                    s.delete(&entry.path).map_err(|e| EngineError::Parquet(format!("{base}{}: {e}", entry.path)))
                });
                match deleted {
                    Ok(()) => {
                        dropped.files += 1;
                        dropped.bytes += entry.size_bytes;
                    }
                    Err(e) => tracing::warn!(error = %e, "could not delete a removed S3 object"),
                }
                continue;
            }
            let path = entry.full_path(self);
            let base = entry.base.as_ref().map(std::path::PathBuf::from).unwrap_or_else(|| self.storage_base());
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    dropped.files += 1;
                    dropped.bytes += entry.size_bytes;
                    remove_empty_parents(&path, &base);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "could not delete a removed file"),
            }
        }
        dropped
    }

    pub fn drop_namespace(&self, ns: &str) -> Result<(), EngineError> {
        // Under the commit lock, so no CREATE TABLE can slip in between the count and the drop.
        let mut guard = self.store.begin();
        let remaining = self.catalog.table_count(ns);
        if remaining > 0 {
            return Err(EngineError::user(
                ErrorCode::DependencyExists,
                format!(
                    "Cannot drop namespace '{ns}': namespace contains {remaining} table(s). Drop all tables first."
                ),
            ));
        }
        let namespaces = self.store.cf(cf::NAMESPACES)?;
        guard.batch.delete_cf(&namespaces, ns);
        drop(namespaces);
        guard.write_and(|| self.catalog.forget_namespace(ns))?;
        Ok(())
    }
}

/// Removes the directories above a deleted file while they are empty, up to `base`.
fn remove_empty_parents(file: &Path, base: &Path) {
    let mut dir = file.parent();
    while let Some(d) = dir {
        if d == base || !d.starts_with(base) || std::fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
}
