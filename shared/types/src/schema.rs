//! Table definitions: the catalog entry kalamd stores and hands to kalam-flushd with every flush.

use serde::{Deserialize, Serialize};

use crate::datatype::KalamType;
use crate::error::{ErrorCode, KalamError};
use crate::ids::{NamespaceId, TableName};
use crate::value::{Literal, Value};

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

/// Visibility of a SHARED table for non-privileged roles (sql.md §17).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLevel {
    #[default]
    Public,
    Private,
    Restricted,
}

impl AccessLevel {
    pub fn parse(text: &str) -> Result<Self, KalamError> {
        match text.to_ascii_lowercase().as_str() {
            "public" => Ok(Self::Public),
            "private" => Ok(Self::Private),
            "restricted" => Ok(Self::Restricted),
            _ => Err(KalamError::new(
                ErrorCode::InvalidSql,
                format!("Invalid ACCESS value '{text}'. Allowed values: public, private, restricted"),
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::Private => "private",
            Self::Restricted => "restricted",
        }
    }
}

/// How `{shard}` is computed in USER table paths (storage.md §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sharding {
    #[default]
    None,
    Alphabetic,
    Numeric,
    Hash(u32),
}

impl Sharding {
    /// `none`, `alphabetic`, `numeric` or `hash(<n>)` with 1 ≤ n ≤ 10 000.
    pub fn parse(text: &str) -> Result<Self, KalamError> {
        let lower = text.trim().to_ascii_lowercase();
        let invalid = || {
            KalamError::new(
                ErrorCode::InvalidSql,
                format!("Invalid SHARDING value '{text}'. Allowed values: none, alphabetic, numeric, hash(<n>)"),
            )
        };
        match lower.as_str() {
            "none" => Ok(Self::None),
            "alphabetic" => Ok(Self::Alphabetic),
            "numeric" => Ok(Self::Numeric),
            _ => {
                let n = lower
                    .strip_prefix("hash(")
                    .and_then(|r| r.strip_suffix(')'))
                    .and_then(|n| n.trim().parse::<u32>().ok())
                    .filter(|n| (1..=10_000).contains(n))
                    .ok_or_else(invalid)?;
                Ok(Self::Hash(n))
            }
        }
    }

    /// The `{shard}` path segment of `user_id` (storage.md §7; empty for `none`).
    pub fn shard_of(self, user_id: &str) -> String {
        match self {
            Self::None => String::new(),
            Self::Alphabetic => match user_id.chars().next().map(|c| c.to_ascii_lowercase()) {
                Some(c @ 'a'..='z') => c.to_string(),
                _ => "z".into(),
            },
            Self::Numeric => user_id.chars().find(char::is_ascii_digit).unwrap_or('9').to_string(),
            Self::Hash(n) => format!("shard-{:04}", fnv1a_64(user_id.as_bytes()) % u64::from(n.max(1))),
        }
    }

    pub fn name(self) -> String {
        match self {
            Self::None => "none".into(),
            Self::Alphabetic => "alphabetic".into(),
            Self::Numeric => "numeric".into(),
            Self::Hash(n) => format!("hash({n})"),
        }
    }
}

/// FNV-1a, 64-bit (the hash of `hash(N)` sharding; fixed by the storage layout).
fn fnv1a_64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// Per-table options of sql.md §7.1 that are not the flush policy or the storage. Fields that do
/// not apply to the table's type keep their defaults and are reported as NULL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TableOptions {
    /// SHARED tables.
    pub access: AccessLevel,
    /// USER tables.
    pub sharding: Sharding,
    /// USER tables: resolve the storage per user.
    pub use_user_storage: bool,
    /// USER and SHARED tables; `None` = keep soft-deleted rows forever (`off`).
    pub deleted_retention_hours: Option<u64>,
    /// STREAM tables: row lifetime.
    pub ttl_seconds: u64,
    /// STREAM tables: most rows kept per user partition.
    pub max_buffer: u64,
    /// STREAM tables: drop rows for users without a subscription.
    pub ephemeral: bool,
    /// Set by PAUSE / RESUME FLUSH.
    pub flush_paused: bool,
}

impl Default for TableOptions {
    fn default() -> Self {
        Self {
            access: AccessLevel::Public,
            sharding: Sharding::None,
            use_user_storage: false,
            deleted_retention_hours: Some(168),
            ttl_seconds: 10,
            max_buffer: 10_000,
            ephemeral: false,
            flush_paused: false,
        }
    }
}

/// The user columns of one earlier schema version, kept so rows and files written under it can
/// be read through the current schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchemaVersion {
    pub version: u32,
    pub columns: Vec<ColumnDefinition>,
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
    /// Last DDL or settings change (µs); `created_at_us` until the first change.
    #[serde(default)]
    pub updated_at_us: i64,
    #[serde(default)]
    pub options: TableOptions,
    /// Column lists of the earlier schema versions, oldest first.
    #[serde(default)]
    pub history: Vec<SchemaVersion>,
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

    /// The user columns of schema version `version` (current or historical).
    pub fn columns_of(&self, version: u32) -> Option<&[ColumnDefinition]> {
        if version == self.schema_version {
            return Some(&self.columns);
        }
        self.history.iter().find(|h| h.version == version).map(|h| h.columns.as_slice())
    }

    /// The next unused column id (ids are never reused, even after DROP COLUMN).
    pub fn next_column_id(&self) -> u32 {
        let all = self.columns.iter().chain(self.history.iter().flat_map(|h| h.columns.iter()));
        all.map(|c| c.column_id).max().unwrap_or(0) + 1
    }

    /// Projects values written under the columns `from` onto the current schema (storage.md §9
    /// step 5): columns are matched by id, so renamed columns keep their data, dropped ones
    /// disappear, added ones read their literal DEFAULT (or NULL), and INT values widened to
    /// BIGINT are converted.
    pub fn project(&self, from: &[ColumnDefinition], values: Vec<Value>) -> Vec<Value> {
        let mut values: Vec<Option<Value>> = values.into_iter().map(Some).collect();
        self.columns
            .iter()
            .map(|col| match from.iter().position(|c| c.column_id == col.column_id) {
                Some(i) => widen(values.get_mut(i).and_then(Option::take).unwrap_or(Value::Null), col.data_type),
                None => added_column_value(col),
            })
            .collect()
    }
}

/// What rows written before `col` was added read for it: its literal DEFAULT, or NULL.
pub fn added_column_value(col: &ColumnDefinition) -> Value {
    let value = col.default.as_ref().map(|d| d.literal_value(col.data_type, &col.name));
    value.and_then(|v| v.ok().flatten()).unwrap_or(Value::Null)
}

fn widen(v: Value, ty: KalamType) -> Value {
    match (v, ty) {
        (Value::Int(i), KalamType::BigInt) => Value::BigInt(i64::from(i)),
        (v, _) => v,
    }
}

impl ColumnDefault {
    /// The value of a literal DEFAULT; `Ok(None)` for DEFAULT functions.
    pub fn literal_value(&self, ty: KalamType, column: &str) -> Result<Option<Value>, KalamError> {
        let ColumnDefault::Literal(json) = self else { return Ok(None) };
        let parsed = serde_json::from_str::<serde_json::Value>(json).map_err(|e| {
            KalamError::new(ErrorCode::InternalError, format!("stored DEFAULT of column '{column}': {e}"))
        })?;
        let lit = Literal::from_json(&parsed);
        Value::coerce(&lit, ty, column).map(Some)
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

    #[test]
    fn shard_segments_follow_the_storage_layout() {
        assert_eq!(Sharding::None.shard_of("alice"), "");
        assert_eq!(Sharding::Alphabetic.shard_of("alice"), "a");
        assert_eq!(Sharding::Alphabetic.shard_of("Bob"), "b");
        assert_eq!(Sharding::Alphabetic.shard_of("9x"), "z");
        assert_eq!(Sharding::Numeric.shard_of("user42"), "4");
        assert_eq!(Sharding::Numeric.shard_of("alice"), "9");
        // FNV-1a-64("a") = 0xaf63dc4c8601ec8c.
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(Sharding::Hash(16).shard_of("a"), format!("shard-{:04}", 0xaf63_dc4c_8601_ec8c_u64 % 16));
        assert_eq!(Sharding::parse("hash(10000)").unwrap(), Sharding::Hash(10_000));
        assert!(Sharding::parse("hash(0)").is_err());
    }
}
