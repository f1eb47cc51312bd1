//! Change-log records: one per changed row, keyed by the global commit sequence. kalamd writes
//! them in the same batch as the data; kalam-lived reads them to deliver live changes.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    Insert,
    Update,
    Delete,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Insert => "insert",
            Self::Update => "update",
            Self::Delete => "delete",
        }
    }
}

/// One changed row. Rows are JSON objects (text) in the result encoding of sql.md §2.3,
/// including `_updated` and `_deleted`, so every consumer renders them the same way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeRecord {
    pub commit_seq: u64,
    pub namespace: String,
    pub table: String,
    /// The partition owner for USER/STREAM tables.
    pub user_id: Option<String>,
    pub kind: ChangeKind,
    pub old_row: Option<String>,
    pub new_row: Option<String>,
    /// Commit time, microseconds since the epoch.
    pub commit_time_us: i64,
}

impl ChangeRecord {
    /// A record of `def`'s table; its sequence is assigned when the commit takes it.
    pub fn of(
        def: &crate::schema::TableDefinition,
        user_id: Option<String>,
        kind: ChangeKind,
        old_row: Option<String>,
        new_row: Option<String>,
        commit_time_us: i64,
    ) -> ChangeRecord {
        ChangeRecord {
            commit_seq: 0,
            namespace: def.namespace.to_string(),
            table: def.name.to_string(),
            user_id,
            kind,
            old_row,
            new_row,
            commit_time_us,
        }
    }
}
