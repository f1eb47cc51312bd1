//! STREAM tables (storage.md §10): per table and user, an in-memory map ordered by insertion
//! time. Nothing reaches RocksDB or Parquet; rows older than the table's TTL are invisible at
//! once and removed by the eviction task; a full partition evicts its oldest rows first. Their
//! change-log records live in the store's in-memory tail.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use kalam_types::Value;
use kalam_types::ids::UserId;
use kalam_types::schema::TableDefinition;

use crate::engine::Engine;
use crate::error::EngineError;
use crate::flush::JobRecord;
use crate::read::MergedRow;

/// One user's rows of one STREAM table.
#[derive(Default)]
struct Partition {
    /// `(insertion time µs, primary-key bytes)` → values.
    by_time: BTreeMap<(i64, Vec<u8>), Vec<Value>>,
    /// Primary-key bytes → insertion time.
    by_pk: HashMap<Vec<u8>, i64>,
}

impl Partition {
    fn remove(&mut self, pk: &[u8]) -> Option<Vec<Value>> {
        let at = self.by_pk.remove(pk)?;
        self.by_time.remove(&(at, pk.to_vec()))
    }

    /// Removes rows inserted before `cutoff_us`; returns how many.
    fn evict_before(&mut self, cutoff_us: i64) -> usize {
        let mut n = 0;
        while let Some(entry) = self.by_time.first_entry() {
            if entry.key().0 >= cutoff_us {
                break;
            }
            let ((_, pk), _) = entry.remove_entry();
            self.by_pk.remove(&pk);
            n += 1;
        }
        n
    }
}

type TableKey = (String, String);

#[derive(Default)]
pub struct StreamBuffers {
    tables: Mutex<HashMap<TableKey, HashMap<String, Partition>>>,
}

fn key(def: &TableDefinition) -> TableKey {
    (def.namespace.to_string(), def.name.to_string())
}

fn now_us() -> i64 {
    crate::clock::wall_clock_us()
}

impl StreamBuffers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TableKey, HashMap<String, Partition>>> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cutoff(def: &TableDefinition, now: i64) -> i64 {
        now.saturating_sub(i64::try_from(def.options.ttl_seconds).unwrap_or(i64::MAX).saturating_mul(1_000_000))
    }

    /// The user's non-expired rows, oldest first.
    pub fn rows(&self, def: &TableDefinition, user: &UserId) -> Vec<MergedRow> {
        let cutoff = Self::cutoff(def, now_us());
        let tables = self.lock();
        let Some(partition) = tables.get(&key(def)).and_then(|t| t.get(user.as_str())) else { return Vec::new() };
        partition
            .by_time
            .range((cutoff, Vec::new())..)
            .map(|((at, _), values)| MergedRow {
                values: values.clone(),
                updated_us: *at,
                deleted: false,
                buffered: true,
            })
            .collect()
    }

    /// Users with retained rows.
    pub fn users(&self, def: &TableDefinition) -> Vec<UserId> {
        let tables = self.lock();
        let Some(table) = tables.get(&key(def)) else { return Vec::new() };
        let mut users: Vec<UserId> =
            table.iter().filter(|(_, p)| !p.by_time.is_empty()).filter_map(|(u, _)| UserId::parse(u).ok()).collect();
        users.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        users
    }

    /// True when the partition holds a non-expired row with this key.
    pub fn contains(&self, def: &TableDefinition, user: &UserId, pk: &[u8]) -> bool {
        let cutoff = Self::cutoff(def, now_us());
        let tables = self.lock();
        let at = tables.get(&key(def)).and_then(|t| t.get(user.as_str())).and_then(|p| p.by_pk.get(pk));
        at.is_some_and(|at| *at >= cutoff)
    }

    /// Adds rows `(pk, values, insertion time)`; a full partition drops its oldest rows first
    /// (silently: evictions are not changes).
    pub fn insert(&self, def: &TableDefinition, user: &UserId, rows: Vec<(Vec<u8>, Vec<Value>, i64)>) {
        let max = usize::try_from(def.options.max_buffer).unwrap_or(usize::MAX).max(1);
        let cutoff = Self::cutoff(def, now_us());
        let mut tables = self.lock();
        let partition = tables.entry(key(def)).or_default().entry(user.to_string()).or_default();
        partition.evict_before(cutoff);
        for (pk, values, at) in rows {
            partition.remove(&pk);
            partition.by_pk.insert(pk.clone(), at);
            partition.by_time.insert((at, pk), values);
        }
        while partition.by_time.len() > max {
            if let Some(((_, pk), _)) = partition.by_time.pop_first() {
                partition.by_pk.remove(&pk);
            }
        }
    }

    /// Removes rows by key (DELETE is a hard delete on STREAM tables).
    pub fn delete(&self, def: &TableDefinition, user: &UserId, pks: &[Vec<u8>]) {
        let mut tables = self.lock();
        if let Some(partition) = tables.get_mut(&key(def)).and_then(|t| t.get_mut(user.as_str())) {
            for pk in pks {
                partition.remove(pk);
            }
        }
    }

    /// Removes every expired row of the given tables; returns how many were evicted.
    pub fn evict_expired(&self, defs: &[std::sync::Arc<TableDefinition>]) -> usize {
        let now = now_us();
        let mut tables = self.lock();
        let mut evicted = 0;
        for def in defs {
            let cutoff = Self::cutoff(def, now);
            if let Some(table) = tables.get_mut(&key(def)) {
                for partition in table.values_mut() {
                    evicted += partition.evict_before(cutoff);
                }
                table.retain(|_, p| !p.by_time.is_empty());
            }
        }
        evicted
    }

    /// Forgets one user's rows of a table (user cleanup).
    pub fn drop_user(&self, def: &TableDefinition, user: &UserId) {
        if let Some(table) = self.lock().get_mut(&key(def)) {
            table.remove(user.as_str());
        }
    }

    /// Forgets a dropped table's rows.
    pub fn drop_table(&self, ns: &str, table: &str) {
        self.lock().remove(&(ns.to_owned(), table.to_owned()));
    }
}

/// Evicts expired STREAM rows every `stream.eviction_interval_seconds` until `stop`.
pub async fn eviction_loop(engine: std::sync::Arc<Engine>, stop: tokio_util::sync::CancellationToken) {
    let period = std::time::Duration::from_secs(engine.cfg.stream.eviction_interval_seconds);
    crate::engine::every(engine, period, stop, "stream eviction", |e| e.evict_streams().map(|n| n as u64)).await;
}

impl Engine {
    /// One eviction pass: expired rows leave the buffers and expired change records leave the
    /// in-memory log. A pass that evicted rows is recorded in `system.jobs`.
    pub fn evict_streams(&self) -> Result<usize, EngineError> {
        let started = crate::clock::wall_clock_us();
        let defs: Vec<_> = self
            .catalog
            .tables()
            .into_iter()
            .filter(|d| d.table_type == kalam_types::schema::TableType::Stream)
            .collect();
        let evicted = self.streams.evict_expired(&defs);
        let ttl: HashMap<(&str, &str), i64> =
            defs.iter().map(|d| ((d.namespace.as_str(), d.name.as_str()), StreamBuffers::cutoff(d, started))).collect();
        // Records of dropped tables go too (a table created during this pass is not one of
        // them); persistent records are never in this tail.
        self.store.trim_transient(|r| match ttl.get(&(r.namespace.as_str(), r.table.as_str())) {
            Some(cutoff) => r.commit_time_us < *cutoff,
            None => self.catalog.table(&r.namespace, &r.table).is_none(),
        });
        if evicted > 0 {
            let job = JobRecord::completed("stream_eviction", started, serde_json::json!({ "rows_evicted": evicted }));
            let mut guard = self.store.begin();
            self.put_job(&mut guard.batch, &job)?;
            guard.write()?;
            tracing::debug!(evicted, "stream rows evicted");
        }
        Ok(evicted)
    }
}

#[cfg(test)]
mod tests {
    use kalam_types::schema::{TableOptions, TableType};

    use super::*;

    fn def(ttl: u64, max: u64) -> TableDefinition {
        let mut def = crate::test_defs::bigint_key_table(TableType::Stream, "events");
        def.options = TableOptions { ttl_seconds: ttl, max_buffer: max, ..TableOptions::default() };
        def
    }

    fn row(id: i64, at: i64) -> (Vec<u8>, Vec<Value>, i64) {
        (kalam_types::codec::encode_pk(&Value::BigInt(id)).unwrap(), vec![Value::BigInt(id)], at)
    }

    #[test]
    fn expired_rows_are_invisible_and_evicted() {
        let d = def(10, 100);
        let buffers = StreamBuffers::default();
        let alice = UserId::parse("alice").unwrap();
        let now = now_us();
        buffers.insert(&d, &alice, vec![row(1, now - 20_000_000), row(2, now)]);
        let ids: Vec<_> = buffers.rows(&d, &alice).into_iter().map(|r| r.values[0].clone()).collect();
        assert_eq!(ids, vec![Value::BigInt(2)]);
        assert_eq!(buffers.evict_expired(&[std::sync::Arc::new(d.clone())]), 1);
        assert_eq!(buffers.users(&d), vec![alice.clone()]);
        assert!(buffers.rows(&d, &UserId::parse("bob").unwrap()).is_empty());
    }

    #[test]
    fn a_full_partition_keeps_the_newest_rows() {
        let d = def(3600, 2);
        let buffers = StreamBuffers::default();
        let alice = UserId::parse("alice").unwrap();
        let now = now_us();
        buffers.insert(&d, &alice, vec![row(1, now), row(2, now + 1), row(3, now + 2)]);
        let ids: Vec<_> = buffers.rows(&d, &alice).into_iter().map(|r| r.values[0].clone()).collect();
        assert_eq!(ids, vec![Value::BigInt(2), Value::BigInt(3)]);
        buffers.delete(&d, &alice, &[kalam_types::codec::encode_pk(&Value::BigInt(2)).unwrap()]);
        assert_eq!(buffers.rows(&d, &alice).len(), 1);
        assert!(!buffers.contains(&d, &alice, &kalam_types::codec::encode_pk(&Value::BigInt(2)).unwrap()));
    }
}
