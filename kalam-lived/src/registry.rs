//! The subscription registry: which connection wants which partition's changes. The pump reads
//! it for every change record; sessions add and remove their subscriptions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use kalam_rpc::LiveSubscription;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// `(namespace, table, user_id)` — one USER-table partition.
pub type PartitionKey = (String, String, String);

/// An outgoing message for one connection.
#[derive(Debug)]
pub enum Outgoing {
    /// A change for subscription `subscription_id` (generation `generation`).
    Change { subscription_id: String, generation: u64, text: String },
}

pub struct Subscription {
    pub connection_id: String,
    pub subscription_id: String,
    pub user_id: String,
    pub sql: String,
    /// Options as sent (JSON object text).
    pub options: Option<String>,
    pub columns: Vec<String>,
    /// Changes at or before this commit sequence predate the subscription.
    pub start_after: u64,
    /// Per-connection generation of this subscription id (a re-subscribe gets a new one), so
    /// messages queued for an earlier subscription with the same id are dropped.
    pub generation: u64,
    /// Per-subscription message counter (`seq` of change messages).
    pub seq: AtomicU64,
    pub changes: AtomicU64,
    pub created_at_us: i64,
    /// Microseconds; updated with every delivered change.
    pub last_update_us: AtomicI64,
    pub tx: mpsc::Sender<Outgoing>,
    /// Cancelled when the connection must close (slow consumer).
    pub close: CancellationToken,
}

impl Subscription {
    pub fn live_id(&self) -> String {
        format!("{}/{}", self.connection_id, self.subscription_id)
    }
}

#[derive(Default)]
pub struct Registry {
    by_partition: RwLock<HashMap<PartitionKey, Vec<Arc<Subscription>>>>,
}

impl Registry {
    pub fn add(&self, key: PartitionKey, sub: Arc<Subscription>) {
        self.by_partition.write().unwrap_or_else(|p| p.into_inner()).entry(key).or_default().push(sub);
    }

    /// Removes one subscription of a connection; true when it existed.
    pub fn remove(&self, connection_id: &str, subscription_id: &str) -> bool {
        let mut map = self.by_partition.write().unwrap_or_else(|p| p.into_inner());
        let mut found = false;
        map.retain(|_, subs| {
            subs.retain(|s| {
                let hit = s.connection_id == connection_id && s.subscription_id == subscription_id;
                found |= hit;
                !hit
            });
            !subs.is_empty()
        });
        found
    }

    /// Removes every subscription of a connection.
    pub fn remove_connection(&self, connection_id: &str) {
        let mut map = self.by_partition.write().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, subs| {
            subs.retain(|s| s.connection_id != connection_id);
            !subs.is_empty()
        });
    }

    /// The subscriptions of one partition (a snapshot of the list).
    pub fn subscribers(&self, key: &PartitionKey) -> Vec<Arc<Subscription>> {
        self.by_partition.read().unwrap_or_else(|p| p.into_inner()).get(key).cloned().unwrap_or_default()
    }

    pub fn list(&self) -> Vec<LiveSubscription> {
        let map = self.by_partition.read().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .flat_map(|((ns, table, _), subs)| {
                subs.iter().map(move |s| LiveSubscription {
                    live_id: s.live_id(),
                    connection_id: s.connection_id.clone(),
                    subscription_id: s.subscription_id.clone(),
                    user_id: s.user_id.clone(),
                    namespace: ns.clone(),
                    table: table.clone(),
                    sql: s.sql.clone(),
                    options: s.options.clone(),
                    changes: s.changes.load(Ordering::Relaxed),
                    created_at_us: s.created_at_us,
                    last_update_us: s.last_update_us.load(Ordering::Relaxed),
                })
            })
            .collect()
    }
}
