//! Table definitions: the catalog entry kalamd stores and hands to kalam-flushd with every flush.

use serde::{Deserialize, Serialize};

use crate::datatype::KalamType;
use crate::error::{ErrorCode, KalamError};
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
    /// Value of the column when an INSERT omits it.
    #[serde(default)]
    pub default: Option<ColumnDefault>,
}

/// A column's DEFAULT (sql.md §4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ColumnDefault {
    /// A literal, kept as the JSON encoding of its value (sql.md §2.3), which coerces back.
    Literal(String),
    /// `NOW()` / `CURRENT_TIMESTAMP`: the statement's start time.
    Now,
    SnowflakeId,
    UuidV7,
    Ulid,
    CurrentUser,
}

impl ColumnDefault {
    /// Parses a DEFAULT function name (no arguments) and checks it fits `ty`.
    pub fn function(name: &str, ty: KalamType, column: &str) -> Result<ColumnDefault, KalamError> {
        let upper = name.to_ascii_uppercase();
        let (default, needs) = match upper.as_str() {
            "NOW" | "CURRENT_TIMESTAMP" => (ColumnDefault::Now, KalamType::Timestamp),
            "SNOWFLAKE_ID" => (ColumnDefault::SnowflakeId, KalamType::BigInt),
            "UUID_V7" => (ColumnDefault::UuidV7, KalamType::Text),
            "ULID" => (ColumnDefault::Ulid, KalamType::Text),
            "CURRENT_USER" => (ColumnDefault::CurrentUser, KalamType::Text),
            _ => {
                return Err(KalamError::new(
                    ErrorCode::InvalidSql,
                    format!("Unknown DEFAULT function '{upper}' for column '{column}'"),
                ));
            }
        };
        if ty != needs {
            return Err(KalamError::new(
                ErrorCode::InvalidSql,
                format!("DEFAULT {upper}() can only be used on {needs} columns, but column '{column}' has type {ty}"),
            ));
        }
        Ok(default)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_functions_are_type_checked() {
        assert_eq!(ColumnDefault::function("now", KalamType::Timestamp, "c").unwrap(), ColumnDefault::Now);
        assert_eq!(
            ColumnDefault::function("SNOWFLAKE_ID", KalamType::BigInt, "id").unwrap(),
            ColumnDefault::SnowflakeId
        );
        let err = ColumnDefault::function("SNOWFLAKE_ID", KalamType::Text, "id").unwrap_err();
        assert_eq!(
            err.message,
            "DEFAULT SNOWFLAKE_ID() can only be used on BIGINT columns, but column 'id' has type TEXT"
        );
        let err = ColumnDefault::function("random", KalamType::Text, "c").unwrap_err();
        assert_eq!(err.message, "Unknown DEFAULT function 'RANDOM' for column 'c'");
    }
}
