//! The RocksDB store: the only place kalamd opens, names and writes column families.
//!
//! Every write goes through [`Store::commit`], which holds the commit lock, assigns consecutive
//! commit sequences to the change-log records of the batch, writes data, counters, change log
//! and the sequence high-water mark in one RocksDB write batch, and then wakes the change-log
//! waiters. Column-family names are built here and nowhere else.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use kalam_types::change::ChangeRecord;
use kalam_types::schema::{TableDefinition, TableType};
use rocksdb::{BoundColumnFamily, ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBatch};
use tokio::sync::watch;

/// System column families (storage.md §2).
pub mod cf {
    pub const NAMESPACES: &str = "system_namespaces";
    pub const TABLES: &str = "information_schema_tables";
    pub const JOBS: &str = "system_jobs";
    pub const TABLE_FILES: &str = "table_files";
    pub const COUNTERS: &str = "user_table_counters";
    pub const CHANGE_LOG: &str = "change_log";
    pub const META: &str = "system_meta";
    pub const TABLE_SCHEMAS: &str = "system_table_schemas";
    pub const USERS: &str = "system_users";
    pub const STORAGES: &str = "system_storages";
    /// SHA-256 of an API key → user id.
    pub const USER_APIKEYS: &str = "system_user_apikeys";
    pub const ALL: [&str; 11] = [
        NAMESPACES,
        TABLES,
        JOBS,
        TABLE_FILES,
        COUNTERS,
        CHANGE_LOG,
        META,
        TABLE_SCHEMAS,
        USERS,
        STORAGES,
        USER_APIKEYS,
    ];
}

/// A key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

const META_COMMIT_SEQ: &[u8] = b"commit_seq";
/// Newest sequence removed from the change log by retention.
const META_CHANGE_LOG_FLOOR: &[u8] = b"change_log_floor";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("column family {0} is missing")]
    MissingColumnFamily(String),
    #[error("corrupt record in {cf}: {detail}")]
    Corrupt { cf: &'static str, detail: String },
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("a change record of {bytes} bytes exceeds the limit of {limit}")]
    RecordTooLarge { bytes: usize, limit: usize },
}

/// Largest change record (old and new row JSON together). Every record must fit one RPC frame
/// (64 MiB) on its way to kalam-lived: a larger one would stop live queries for everybody.
pub const MAX_CHANGE_RECORD_BYTES: usize = 48 << 20;

fn check_record_size(record: &ChangeRecord) -> Result<(), StoreError> {
    let bytes = record.old_row.as_ref().map_or(0, String::len) + record.new_row.as_ref().map_or(0, String::len);
    if bytes > MAX_CHANGE_RECORD_BYTES {
        return Err(StoreError::RecordTooLarge { bytes, limit: MAX_CHANGE_RECORD_BYTES });
    }
    Ok(())
}

/// The column family holding a table's buffered rows (STREAM tables have none: their rows live
/// in memory).
pub fn table_cf_name(def: &TableDefinition) -> String {
    table_cf_name_of(def.table_type, def.namespace.as_str(), def.name.as_str())
}

pub fn table_cf_name_of(table_type: TableType, namespace: &str, table: &str) -> String {
    match table_type {
        TableType::User | TableType::Stream => format!("user_table:{namespace}:{table}"),
        TableType::Shared => format!("shared_table:{namespace}:{table}"),
    }
}

/// `<ns>:<table>:<user_id or empty>` — counter key of one partition; the table total uses an
/// empty user.
pub fn counter_key(namespace: &str, table: &str, user: Option<&str>) -> Vec<u8> {
    format!("{namespace}:{table}:{}", user.unwrap_or("")).into_bytes()
}

/// Prefix of a partition's manifest entries; the file path follows it.
pub fn manifest_prefix(namespace: &str, table: &str, user: Option<&str>) -> Vec<u8> {
    format!("{namespace}:{table}:{}:", user.unwrap_or("")).into_bytes()
}

/// Most change records of STREAM tables kept in memory (oldest dropped first).
pub const MAX_TRANSIENT_CHANGES: usize = 100_000;

pub struct Store {
    db: DB,
    commit_lock: Mutex<u64>,
    head_tx: watch::Sender<u64>,
    /// Change records of STREAM tables: they take sequence numbers like every write but are
    /// never written to RocksDB (storage.md §10).
    transient: Mutex<VecDeque<ChangeRecord>>,
    /// Every persistent change record after this sequence is still in the log.
    floor: std::sync::atomic::AtomicU64,
    /// Every in-memory (STREAM) change record after this sequence is still in the tail; the
    /// tail starts empty at each open.
    transient_floor: std::sync::atomic::AtomicU64,
}

/// Rows a transaction has written, by (column family, key).
type StagedRows = HashMap<(String, Vec<u8>), Vec<u8>>;

/// A batch being prepared under the commit lock.
pub struct CommitGuard<'a> {
    store: &'a Store,
    last_seq: MutexGuard<'a, u64>,
    pub batch: WriteBatch,
    changes: Vec<ChangeRecord>,
    transient: Vec<ChangeRecord>,
    /// Counter values already set in this batch (a second change of the same counter builds on
    /// the first, not on the stored value).
    counters: HashMap<Vec<u8>, u64>,
    /// Rows written by this batch, by (column family, key), so later statements of a
    /// transaction read them (`None` outside transactions: single statements never read back
    /// their own writes).
    staged: Option<StagedRows>,
    /// Run in order after the batch is written, still under the commit lock (in-memory state
    /// that mirrors the batch: stream buffers).
    on_commit: Vec<Box<dyn FnOnce() + 'a>>,
}

impl Store {
    pub fn open(path: &Path, cfg: &kalam_config::RocksDbConfig) -> Result<Arc<Store>, StoreError> {
        std::fs::create_dir_all(path)?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // RocksDB's info LOG is bounded like our own logs: rotated by size, a fixed number kept.
        opts.set_keep_log_file_num(cfg.keep_log_file_num);
        opts.set_max_log_file_size(cfg.max_log_file_size);
        let mut names: Vec<String> = DB::list_cf(&opts, path).unwrap_or_default();
        for name in cf::ALL {
            if !names.iter().any(|n| n == name) {
                names.push(name.to_owned());
            }
        }
        let descriptors = names.iter().map(|n| ColumnFamilyDescriptor::new(n, Options::default()));
        let db = DB::open_cf_descriptors(&opts, path, descriptors)?;
        let last_seq = match db.get_cf(&handle(&db, cf::META)?, META_COMMIT_SEQ)? {
            Some(v) => u64_from_be(&v).ok_or(StoreError::Corrupt { cf: cf::META, detail: "commit_seq".into() })?,
            None => 0,
        };
        let floor = match db.get_cf(&handle(&db, cf::META)?, META_CHANGE_LOG_FLOOR)? {
            Some(v) => {
                u64_from_be(&v).ok_or(StoreError::Corrupt { cf: cf::META, detail: "change_log_floor".into() })?
            }
            None => 0,
        };
        let (head_tx, _) = watch::channel(last_seq);
        Ok(Arc::new(Store {
            db,
            commit_lock: Mutex::new(last_seq),
            head_tx,
            transient: Mutex::new(VecDeque::new()),
            floor: floor.into(),
            transient_floor: last_seq.into(),
        }))
    }

    pub fn db(&self) -> &DB {
        &self.db
    }

    pub fn cf(&self, name: &str) -> Result<Arc<BoundColumnFamily<'_>>, StoreError> {
        handle(&self.db, name)
    }

    pub fn ensure_cf(&self, name: &str) -> Result<(), StoreError> {
        if self.db.cf_handle(name).is_none() {
            self.db.create_cf(name, &Options::default())?;
        }
        Ok(())
    }

    pub fn get(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get_cf(&self.cf(cf)?, key)?)
    }

    /// All entries whose key starts with `prefix`, in key order.
    pub fn scan_prefix(&self, cf: &str, prefix: &[u8]) -> Result<Vec<Entry>, StoreError> {
        let handle = self.cf(cf)?;
        let mut out = Vec::new();
        for item in self.db.iterator_cf(&handle, IteratorMode::From(prefix, Direction::Forward)) {
            let (k, v) = item?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// Writes one JSON row by itself, under the commit lock (built-in rows created at start).
    pub fn put_json<T: serde::Serialize>(&self, cf: &str, key: &[u8], value: &T) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).map_err(|e| StoreError::Corrupt { cf: "json", detail: e.to_string() })?;
        let mut guard = self.begin();
        let handle = self.cf(cf)?;
        guard.batch.put_cf(&handle, key, bytes);
        drop(handle);
        guard.write()?;
        Ok(())
    }

    /// Visits every entry whose key starts with `prefix`, in key order, without collecting them.
    pub fn for_each_prefix<E: From<StoreError>>(
        &self,
        cf: &str,
        prefix: &[u8],
        mut visit: impl FnMut(&[u8], &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let handle = self.cf(cf)?;
        for item in self.db.iterator_cf(&handle, IteratorMode::From(prefix, Direction::Forward)) {
            let (k, v) = item.map_err(StoreError::from)?;
            if !k.starts_with(prefix) {
                break;
            }
            visit(&k, &v)?;
        }
        Ok(())
    }

    /// Entries with key ≥ `from`, in key order: at most `limit` of them and, past the first,
    /// no more than `max_bytes` of values in total.
    /// Also says whether the byte budget (not the limit or the end of the family) stopped the
    /// scan.
    pub fn scan_from_budget(
        &self,
        cf: &str,
        from: &[u8],
        limit: usize,
        max_bytes: usize,
    ) -> Result<(Vec<Entry>, bool), StoreError> {
        let handle = self.cf(cf)?;
        let mut out = Vec::new();
        let mut bytes = 0;
        for item in self.db.iterator_cf(&handle, IteratorMode::From(from, Direction::Forward)).take(limit) {
            let (k, v) = item?;
            bytes += v.len();
            if !out.is_empty() && bytes > max_bytes {
                return Ok((out, true));
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok((out, false))
    }

    /// The distinct user ids of a USER table's buffer (keys `<user> 0x00 <pk>`), found by
    /// seeking past each user's partition rather than reading it.
    pub fn buffered_users(&self, cf: &str) -> Result<Vec<String>, StoreError> {
        let handle = self.cf(cf)?;
        let mut users = Vec::new();
        let mut from: Vec<u8> = Vec::new();
        loop {
            let mut iter = self.db.iterator_cf(&handle, IteratorMode::From(&from, Direction::Forward));
            let Some(item) = iter.next() else { break };
            let (key, _) = item?;
            let Some(sep) = key.iter().position(|b| *b == 0) else { break };
            users.push(String::from_utf8_lossy(&key[..sep]).into_owned());
            // Next possible key after this user's partition.
            from = key[..sep].to_vec();
            from.push(1);
        }
        Ok(users)
    }

    pub fn read_counter(&self, key: &[u8]) -> Result<u64, StoreError> {
        Ok(self.get(cf::COUNTERS, key)?.and_then(|v| u64_from_le(&v)).unwrap_or(0))
    }

    /// Starts a commit: takes the commit lock, so reads done through the guard see a stable
    /// buffer until [`CommitGuard::write`].
    pub fn begin(&self) -> CommitGuard<'_> {
        let last_seq = self.commit_lock.lock().unwrap_or_else(|p| p.into_inner());
        CommitGuard {
            store: self,
            last_seq,
            batch: WriteBatch::default(),
            changes: Vec::new(),
            transient: Vec::new(),
            counters: HashMap::new(),
            staged: None,
            on_commit: Vec::new(),
        }
    }

    /// Runs `f` on the open transaction's guard (`txn`), or on a guard of its own that is
    /// written when `f` succeeds.
    pub fn commit_in<'a, T, E: From<StoreError>>(
        &'a self,
        txn: Option<&mut CommitGuard<'a>>,
        f: impl FnOnce(&mut CommitGuard<'a>) -> Result<T, E>,
    ) -> Result<T, E> {
        match txn {
            Some(guard) => f(guard),
            None => {
                let mut guard = self.begin();
                let out = f(&mut guard)?;
                guard.write()?;
                Ok(out)
            }
        }
    }

    /// Starts the commit of a transaction: like [`Store::begin`], but rows written through
    /// [`CommitGuard::put_row`] are read back by [`CommitGuard::get_row`] and
    /// [`CommitGuard::staged_rows`] before the batch is written. Dropping the guard without
    /// writing discards everything (ROLLBACK).
    pub fn begin_transaction(&self) -> CommitGuard<'_> {
        let mut guard = self.begin();
        guard.staged = Some(HashMap::new());
        guard
    }

    /// Newest committed sequence, and a receiver that changes when it moves.
    pub fn head(&self) -> watch::Receiver<u64> {
        self.head_tx.subscribe()
    }

    pub fn head_seq(&self) -> u64 {
        *self.head_tx.borrow()
    }

    /// The newest committed sequence, taken under the commit lock: every write up to it is
    /// visible and none after it has been written yet.
    pub fn stable_head(&self) -> u64 {
        *self.commit_lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Change-log floors: (persistent, in-memory). A reader that has seen every change up to
    /// a floor misses nothing that is still to be read.
    pub fn change_log_floors(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering;
        (self.floor.load(Ordering::Acquire), self.transient_floor.load(Ordering::Acquire))
    }

    /// Removes the change-log records committed before `cutoff_us` (retention); returns how
    /// many. The floor moves to the newest removed sequence, so resumes from before it are
    /// refused instead of silently missing changes.
    pub fn purge_change_log(&self, cutoff_us: i64) -> Result<u64, StoreError> {
        use std::sync::atomic::Ordering;
        let log = self.cf(cf::CHANGE_LOG)?;
        let mut newest_expired = None;
        let mut removed = 0u64;
        for item in self.db.iterator_cf(&log, rocksdb::IteratorMode::Start) {
            let (k, v) = item?;
            #[derive(serde::Deserialize)]
            struct Time {
                commit_time_us: i64,
            }
            let t: Time = serde_json::from_slice(&v)
                .map_err(|e| StoreError::Corrupt { cf: cf::CHANGE_LOG, detail: e.to_string() })?;
            if t.commit_time_us >= cutoff_us {
                break;
            }
            newest_expired = u64_from_be(&k);
            removed += 1;
        }
        let Some(seq) = newest_expired else { return Ok(0) };
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(&log, 0u64.to_be_bytes(), (seq + 1).to_be_bytes());
        batch.put_cf(&self.cf(cf::META)?, META_CHANGE_LOG_FLOOR, seq.to_be_bytes());
        // The floor moves first: a reader that sees it can no longer count on the records.
        self.floor.fetch_max(seq, Ordering::AcqRel);
        self.db.write(batch)?;
        Ok(removed)
    }

    /// In-memory change records with a sequence after `after_seq`, at most `limit`.
    pub fn transient_after(&self, after_seq: u64, limit: usize) -> Vec<ChangeRecord> {
        let tail = self.transient.lock().unwrap_or_else(|p| p.into_inner());
        let start = tail.partition_point(|r| r.commit_seq <= after_seq);
        tail.range(start..).take(limit).cloned().collect()
    }

    /// Drops in-memory change records for which `expired` holds.
    pub fn trim_transient(&self, expired: impl Fn(&ChangeRecord) -> bool) {
        self.transient.lock().unwrap_or_else(|p| p.into_inner()).retain(|r| !expired(r));
    }
}

impl<'a> CommitGuard<'a> {
    /// The newest committed sequence (nothing commits while the guard is held).
    pub fn last_seq(&self) -> u64 {
        *self.last_seq
    }

    /// Appends a change-log record; its sequence is assigned here (consecutive per batch).
    pub fn push_change(&mut self, mut record: ChangeRecord) -> Result<u64, StoreError> {
        check_record_size(&record)?;
        let seq = self.next_seq();
        record.commit_seq = seq;
        self.changes.push(record);
        Ok(seq)
    }

    /// Appends a change record of a STREAM table: it takes the next sequence but stays in
    /// memory.
    pub fn push_transient_change(&mut self, mut record: ChangeRecord) -> Result<u64, StoreError> {
        check_record_size(&record)?;
        let seq = self.next_seq();
        record.commit_seq = seq;
        self.transient.push(record);
        Ok(seq)
    }

    fn next_seq(&self) -> u64 {
        *self.last_seq + (self.changes.len() + self.transient.len()) as u64 + 1
    }

    /// Adds `delta` to a counter, reading its current value under the lock.
    pub fn add_counter(&mut self, key: &[u8], delta: i64) -> Result<(), StoreError> {
        let current = match self.counters.get(key) {
            Some(v) => *v,
            None => self.store.read_counter(key)?,
        };
        let next = (current as i64 + delta).max(0) as u64;
        let cf = self.store.cf(cf::COUNTERS)?;
        self.batch.put_cf(&cf, key, next.to_le_bytes());
        self.counters.insert(key.to_vec(), next);
        Ok(())
    }

    /// Writes a row of a table's column family into the batch.
    pub fn put_row(&mut self, cf_name: &str, key: Vec<u8>, bytes: Vec<u8>) -> Result<(), StoreError> {
        let cf = self.store.cf(cf_name)?;
        self.batch.put_cf(&cf, &key, &bytes);
        drop(cf);
        if let Some(staged) = &mut self.staged {
            staged.insert((cf_name.to_owned(), key), bytes);
        }
        Ok(())
    }

    /// A row as this batch leaves it: staged by an earlier statement of the transaction, else
    /// the stored one.
    pub fn get_row(&self, cf_name: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(bytes) = self.staged.as_ref().and_then(|s| s.get(&(cf_name.to_owned(), key.to_vec()))) {
            return Ok(Some(bytes.clone()));
        }
        self.store.get(cf_name, key)
    }

    /// Rows this transaction has written to `cf_name` under `prefix` (none outside a
    /// transaction).
    pub fn staged_rows<'s>(&'s self, cf_name: &'s str, prefix: &'s [u8]) -> impl Iterator<Item = (&'s [u8], &'s [u8])> {
        self.staged.iter().flatten().filter_map(move |((cf, key), bytes)| {
            (cf == cf_name && key.starts_with(prefix)).then_some((key.as_slice(), bytes.as_slice()))
        })
    }

    /// Whether this guard belongs to a transaction.
    pub fn is_transaction(&self) -> bool {
        self.staged.is_some()
    }

    /// Marks a key as taken by this transaction (STREAM rows, which live outside RocksDB);
    /// false when it already was.
    pub fn claim(&mut self, space: &str, key: Vec<u8>) -> bool {
        match &mut self.staged {
            Some(staged) => staged.insert((space.to_owned(), key), Vec::new()).is_none(),
            None => true,
        }
    }

    /// Runs `apply` once the batch is written, before the commit lock is released.
    pub fn on_commit(&mut self, apply: impl FnOnce() + 'a) {
        self.on_commit.push(Box::new(apply));
    }

    /// Writes the batch (data, counters, change log, sequence mark) atomically.
    pub fn write(mut self) -> Result<u64, StoreError> {
        self.commit()
    }

    /// Writes the batch, then runs `apply` while still holding the commit lock: in-memory state
    /// that mirrors the batch (the catalog) changes before any other writer can look at it.
    pub fn write_and(mut self, apply: impl FnOnce()) -> Result<u64, StoreError> {
        let seq = self.commit()?;
        apply();
        Ok(seq)
    }

    fn commit(&mut self) -> Result<u64, StoreError> {
        let log = self.store.cf(cf::CHANGE_LOG)?;
        for rec in &self.changes {
            let bytes = serde_json::to_vec(rec)
                .map_err(|e| StoreError::Corrupt { cf: cf::CHANGE_LOG, detail: e.to_string() })?;
            self.batch.put_cf(&log, rec.commit_seq.to_be_bytes(), bytes);
        }
        let new_last = *self.last_seq + (self.changes.len() + self.transient.len()) as u64;
        let moved = new_last != *self.last_seq;
        if moved {
            // Sequence numbers of in-memory records are persisted too, so they are never reused.
            let meta = self.store.cf(cf::META)?;
            self.batch.put_cf(&meta, META_COMMIT_SEQ, new_last.to_be_bytes());
        }
        self.store.db.write(std::mem::take(&mut self.batch))?;
        *self.last_seq = new_last;
        if !self.transient.is_empty() {
            let mut tail = self.store.transient.lock().unwrap_or_else(|p| p.into_inner());
            tail.extend(self.transient.drain(..));
            while tail.len() > MAX_TRANSIENT_CHANGES {
                if let Some(dropped) = tail.pop_front() {
                    self.store.transient_floor.fetch_max(dropped.commit_seq, std::sync::atomic::Ordering::AcqRel);
                }
            }
        }
        for apply in std::mem::take(&mut self.on_commit) {
            apply();
        }
        if moved {
            self.store.head_tx.send_replace(new_last);
        }
        Ok(new_last)
    }
}

fn handle<'a>(db: &'a DB, name: &str) -> Result<Arc<BoundColumnFamily<'a>>, StoreError> {
    db.cf_handle(name).ok_or_else(|| StoreError::MissingColumnFamily(name.to_owned()))
}

pub fn u64_from_be(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.try_into().ok()?))
}

pub fn u64_from_le(v: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(v.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_scans_stop_at_the_byte_budget_but_always_make_progress() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &Default::default()).unwrap();
        let mut guard = store.begin();
        let cf = store.cf(cf::META).unwrap();
        for k in [b"a", b"b", b"c"] {
            guard.batch.put_cf(&cf, k, [0u8; 100]);
        }
        drop(cf);
        guard.write().unwrap();
        assert_eq!(store.scan_from_budget(cf::META, b"a", 10, 250).unwrap().0.len(), 2);
        assert_eq!(store.scan_from_budget(cf::META, b"a", 10, 10).unwrap().0.len(), 1);
        assert_eq!(store.scan_from_budget(cf::META, b"a", 1, usize::MAX).unwrap().0.len(), 1);
        assert_eq!(store.scan_from_budget(cf::META, b"b", 10, usize::MAX).unwrap().0.len(), 2);
    }
}
