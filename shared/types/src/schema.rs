//! Table definitions: the catalog entry kalamd stores and hands to kalam-flushd with every flush.

use serde::{Deserialize, Serialize};

use crate::datatype::KalamType;
use crate::ids::{NamespaceId, TableName};

/// Name of the hidden last-write-time column.
pub const UPDATED_COLUMN: &str = "_updated";
/// Name of the hidden soft-delete column.
pub const DELETED_COLUMN: &str = "_deleted";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TableType {
    /// One partition per user.
    User,
    /// One global data set.
    Shared,
    /// Per-user, memory only.
    Stream,
}

impl TableType {
    pub fn name(self) -> &'static str {
        match self {
            Self::User => "USER",
            Self::Shared => "SHARED",
            Self::Stream => "STREAM",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnDefinition {
    pub name: String,
    /// Stable id; survives renames.
    pub column_id: u32,
    pub data_type: KalamType,
    pub nullable: bool,
    pub is_primary_key: bool,
}

/// The flush policy of a table; `None` parts are disabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlushPolicy {
    pub row_threshold: Option<u64>,
    pub interval_seconds: Option<u64>,
}

/// A complete table definition (schema version `schema_version`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableDefinition {
    pub namespace: NamespaceId,
    pub name: TableName,
    pub table_type: TableType,
    pub columns: Vec<ColumnDefinition>,
    pub schema_version: u32,
    pub storage_id: String,
    pub flush_policy: FlushPolicy,
    /// Microseconds since the epoch.
    pub created_at_us: i64,
}

impl TableDefinition {
    /// `ns.table`.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.namespace, self.name)
    }

    pub fn primary_key_index(&self) -> usize {
        self.columns.iter().position(|c| c.is_primary_key).unwrap_or(0)
    }

    pub fn column_types(&self) -> Vec<KalamType> {
        self.columns.iter().map(|c| c.data_type).collect()
    }

    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
}
