//! The subscription registry: which subscription wants which partition's changes. The pump
//! reads it for every batch of change records while holding its read lock, and advances the
//! dispatch cursor under that lock; a subscription registers under the write lock and learns
//! the cursor, so it knows exactly which changes the pump will hand it and which it must read
//! from the change log itself.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use kalam_filter::RowFilter;
use kalam_rpc::{LiveStats, LiveSubscription};
use kalam_types::schema::TableType;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// `(namespace, table, user_id)` — one USER/STREAM partition.
pub type PartitionKey = (String, String, String);

/// A message for one connection's socket.
#[derive(Debug)]
pub enum Outgoing {
    /// A message of subscription `subscription_id` (generation `generation`): dropped by the
    /// session when that subscription is gone.
    Data { subscription_id: String, generation: u64, text: String },
    /// The subscription was ended by the server (`KILL LIVE QUERY`, or its change log no
    /// longer reaches back far enough): the session forgets it and sends `text`.
    Ended { subscription_id: String, generation: u64, text: String },
}

/// A change that matched a subscription, waiting for its `seq`.
#[derive(Debug, Clone)]
pub struct Event {
    pub commit_seq: u64,
    pub change_type: &'static str,
    pub timestamp_us: i64,
    pub rows: Option<String>,
    pub old_values: Option<String>,
}

/// Where a subscription is in its start-up.
#[derive(Debug)]
pub enum Delivery {
    /// Its snapshot or change-log catch-up is still being sent: the pump parks matching
    /// changes here, in order.
    Starting(VecDeque<Event>),
    /// Changes go straight to the connection's queue, except those at or before the
    /// sequence the start already covered (a snapshot can be newer than the pump).
    Live(u64),
}

/// The connection a subscription sends to.
pub struct Conn {
    pub tx: mpsc::Sender<Outgoing>,
    /// Cancelled when the connection must close as a slow consumer.
    pub slow: CancellationToken,
}

pub struct Subscription {
    pub connection_id: String,
    pub subscription_id: String,
    pub user_id: String,
    pub namespace: String,
    pub table: String,
    pub table_type: TableType,
    pub sql: String,
    /// Options as sent (JSON object text).
    pub options: Option<String>,
    /// Projected columns (`None` = `SELECT *`).
    pub columns: Option<Vec<String>>,
    pub filter: Arc<RowFilter>,
    /// Per-connection generation of this subscription id (a re-subscribe gets a new one).
    pub generation: u64,
    pub delivery: Mutex<Delivery>,
    /// Most events parked while starting before the connection counts as too slow.
    pub max_parked: usize,
    /// Last `seq` sent.
    pub seq: AtomicU64,
    pub changes: AtomicU64,
    pub created_at_us: i64,
    /// Microseconds; updated with every delivered change.
    pub last_update_us: AtomicI64,
    pub conn: Arc<Conn>,
}

impl Subscription {
    pub fn live_id(&self) -> String {
        format!("{}/{}", self.connection_id, self.subscription_id)
    }

    /// Hands one matched change to the subscription: queued for the socket when live,
    /// parked while starting. A full queue closes the connection (slow consumer).
    pub fn offer(&self, event: Event, delivered: &AtomicU64) {
        let mut delivery = self.delivery.lock().unwrap_or_else(|p| p.into_inner());
        match &mut *delivery {
            Delivery::Starting(parked) => {
                if parked.len() >= self.max_parked {
                    self.conn.slow.cancel();
                } else {
                    parked.push_back(event);
                }
            }
            Delivery::Live(covered) => {
                if event.commit_seq > *covered {
                    self.send(event, delivered);
                }
            }
        }
    }

    /// Numbers and queues one change; false when the queue is full (the connection is then
    /// closed as a slow consumer).
    pub fn send(&self, event: Event, delivered: &AtomicU64) -> bool {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        let text = change_message(&self.subscription_id, seq, &event);
        let out = Outgoing::Data { subscription_id: self.subscription_id.clone(), generation: self.generation, text };
        match self.conn.tx.try_send(out) {
            Ok(()) => {
                self.changes.fetch_add(1, Ordering::Relaxed);
                self.last_update_us.store(chrono::Utc::now().timestamp_micros(), Ordering::Relaxed);
                delivered.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.conn.slow.cancel();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Ends the start-up: parked changes after `after_seq` are queued in order, then the
    /// subscription is live; changes at or before `after_seq` that the pump hands over later
    /// are dropped too.
    pub fn go_live(&self, after_seq: u64, delivered: &AtomicU64) {
        let mut delivery = self.delivery.lock().unwrap_or_else(|p| p.into_inner());
        if let Delivery::Starting(parked) = std::mem::replace(&mut *delivery, Delivery::Live(after_seq)) {
            for event in parked.into_iter().filter(|e| e.commit_seq > after_seq) {
                if !self.send(event, delivered) {
                    break;
                }
            }
        }
    }
}

/// The `change` message of api.md §4.3. `rows` / `old_values` are JSON object text.
pub fn change_message(subscription_id: &str, seq: u64, e: &Event) -> String {
    let mut out = String::with_capacity(
        160 + e.rows.as_ref().map_or(0, String::len) + e.old_values.as_ref().map_or(0, String::len),
    );
    out.push_str(r#"{"type":"change","subscription_id":"#);
    out.push_str(&serde_json::to_string(subscription_id).unwrap_or_default());
    out.push_str(r#","change_type":""#);
    out.push_str(e.change_type);
    out.push_str(&format!(
        r#"","seq":{seq},"commit_seq":{},"timestamp":"{}""#,
        e.commit_seq,
        kalam_types::time::format_timestamp_micros(e.timestamp_us)
    ));
    if let Some(rows) = &e.rows {
        out.push_str(r#","rows":["#);
        out.push_str(rows);
        out.push(']');
    }
    if let Some(old) = &e.old_values {
        out.push_str(r#","old_values":["#);
        out.push_str(old);
        out.push(']');
    }
    out.push('}');
    out
}

/// Why a subscription could not be registered.
#[derive(Debug, PartialEq, Eq)]
pub enum RegisterError {
    /// The dispatcher has not reached kalamd's change log yet.
    NotReady,
    /// `rate_limit.max_subscriptions_per_user` reached.
    UserLimit(usize),
}

type FilterKey = (String, String, u32, Option<String>);

#[derive(Default)]
struct Inner {
    by_partition: HashMap<PartitionKey, Vec<Arc<Subscription>>>,
    by_live_id: HashMap<String, (PartitionKey, Arc<Subscription>)>,
    per_user: HashMap<String, usize>,
}

pub struct Registry {
    inner: RwLock<Inner>,
    /// Newest change-log sequence the pump has dispatched; `u64::MAX` until its first poll.
    cursor: AtomicU64,
    filters: Mutex<HashMap<FilterKey, Weak<RowFilter>>>,
    max_per_user: usize,
    pub delivered: AtomicU64,
    pub connections: AtomicU64,
    pub channels: AtomicU64,
}

impl Registry {
    pub fn new(max_per_user: usize) -> Self {
        Self {
            inner: RwLock::default(),
            cursor: AtomicU64::new(u64::MAX),
            filters: Mutex::default(),
            max_per_user,
            delivered: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            channels: AtomicU64::new(0),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The compiled filter for a table version and predicate, shared by every subscription
    /// that uses the same one.
    pub fn filter(
        &self,
        def: &kalam_types::schema::TableDefinition,
        predicate: Option<&str>,
    ) -> Result<Arc<RowFilter>, kalam_types::error::KalamError> {
        let key = (def.namespace.to_string(), def.name.to_string(), def.schema_version, predicate.map(str::to_owned));
        let mut cache = self.filters.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = cache.get(&key).and_then(Weak::upgrade) {
            return Ok(f);
        }
        let compiled = Arc::new(RowFilter::compile(def, predicate)?);
        cache.retain(|_, w| w.strong_count() > 0);
        cache.insert(key, Arc::downgrade(&compiled));
        Ok(compiled)
    }

    /// Registers a subscription; returns the dispatch cursor: the pump hands it every change
    /// after that sequence, and nothing before.
    pub fn register(&self, key: PartitionKey, sub: Arc<Subscription>) -> Result<u64, RegisterError> {
        let mut inner = self.write();
        let cursor = self.cursor.load(Ordering::SeqCst);
        if cursor == u64::MAX {
            return Err(RegisterError::NotReady);
        }
        let count = inner.per_user.get(&sub.user_id).copied().unwrap_or(0);
        if count >= self.max_per_user {
            return Err(RegisterError::UserLimit(self.max_per_user));
        }
        *inner.per_user.entry(sub.user_id.clone()).or_default() += 1;
        inner.by_live_id.insert(sub.live_id(), (key.clone(), sub.clone()));
        inner.by_partition.entry(key).or_default().push(sub);
        Ok(cursor)
    }

    /// Removes a subscription by live id; returns it when it existed.
    pub fn remove(&self, live_id: &str) -> Option<Arc<Subscription>> {
        let mut inner = self.write();
        let (key, sub) = inner.by_live_id.remove(live_id)?;
        if let Some(subs) = inner.by_partition.get_mut(&key) {
            subs.retain(|s| !Arc::ptr_eq(s, &sub));
            if subs.is_empty() {
                inner.by_partition.remove(&key);
            }
        }
        if let Some(n) = inner.per_user.get_mut(&sub.user_id) {
            *n -= 1;
            if *n == 0 {
                inner.per_user.remove(&sub.user_id);
            }
        }
        Some(sub)
    }

    /// Runs `f` over the subscriptions while the registry cannot change, then sets the
    /// dispatch cursor to `cursor` (the pump's step: nothing registers in between).
    pub fn dispatch<R>(
        &self,
        cursor: u64,
        f: impl FnOnce(&dyn Fn(&PartitionKey) -> Option<Vec<Arc<Subscription>>>) -> R,
    ) -> R {
        let inner = self.read();
        let lookup = |key: &PartitionKey| inner.by_partition.get(key).cloned();
        let out = f(&lookup);
        self.cursor.store(cursor, Ordering::SeqCst);
        out
    }

    pub fn cursor(&self) -> Option<u64> {
        let c = self.cursor.load(Ordering::SeqCst);
        (c != u64::MAX).then_some(c)
    }

    /// Moves the cursor without dispatching (first start, or a change log that no longer
    /// reaches back to it) and removes every subscription, which could otherwise miss
    /// changes; they are returned so their clients can be told.
    pub fn reset(&self, cursor: u64) -> Vec<Arc<Subscription>> {
        let mut inner = self.write();
        self.cursor.store(cursor, Ordering::SeqCst);
        let gone: Vec<Arc<Subscription>> = inner.by_live_id.drain().map(|(_, (_, s))| s).collect();
        inner.by_partition.clear();
        inner.per_user.clear();
        gone
    }

    pub fn list(&self) -> Vec<LiveSubscription> {
        self.read()
            .by_live_id
            .values()
            .map(|(_, s)| LiveSubscription {
                live_id: s.live_id(),
                connection_id: s.connection_id.clone(),
                subscription_id: s.subscription_id.clone(),
                user_id: s.user_id.clone(),
                namespace: s.namespace.clone(),
                table: s.table.clone(),
                sql: s.sql.clone(),
                options: s.options.clone(),
                changes: s.changes.load(Ordering::Relaxed),
                created_at_us: s.created_at_us,
                last_update_us: s.last_update_us.load(Ordering::Relaxed),
            })
            .collect()
    }

    pub fn stats(&self) -> LiveStats {
        let inner = self.read();
        let filters =
            self.filters.lock().unwrap_or_else(|p| p.into_inner()).values().filter(|w| w.strong_count() > 0).count();
        LiveStats {
            connections: self.connections.load(Ordering::Relaxed),
            subscriptions: inner.by_live_id.len() as u64,
            partitions: inner.by_partition.len() as u64,
            filters: filters as u64,
            channels: self.channels.load(Ordering::Relaxed),
            tasks: tokio::runtime::Handle::try_current().map(|h| h.metrics().num_alive_tasks() as u64).unwrap_or(0),
            cursor: self.cursor().unwrap_or(0),
            delivered: self.delivered.load(Ordering::Relaxed),
        }
    }
}
