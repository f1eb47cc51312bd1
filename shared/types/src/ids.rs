//! Validated identifiers. Every name that ends up in a RocksDB key or a storage path goes
//! through one of these constructors first.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, KalamError};

/// Longest namespace, table, column or storage name.
pub const MAX_NAME_LEN: usize = 64;

/// True when `name` matches `^[a-z][a-z0-9_]{0,63}$` (names after case folding).
pub fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z'))
        && name.len() <= MAX_NAME_LEN
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $ty(String);

        impl $ty {
            /// Validates a name as written: identifier folding (unquoted names to lower case)
            /// happens in the parser, so a quoted `"Upper"` stays invalid here.
            pub fn parse(raw: &str) -> Result<Self, KalamError> {
                if is_valid_name(raw) {
                    Ok(Self(raw.to_owned()))
                } else {
                    Err(KalamError::new(
                        ErrorCode::InvalidSql,
                        format!(
                            "Invalid {} name '{}': names must match ^[a-z][a-z0-9_]{{0,63}}$",
                            $kind, raw
                        ),
                    ))
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_type!(
    /// A namespace name (`app`), like a PostgreSQL schema.
    NamespaceId,
    "namespace"
);
name_type!(
    /// A table name inside a namespace.
    TableName,
    "table"
);

/// Namespaces that hold built-in tables and cannot be created by users.
pub const RESERVED_NAMESPACES: [&str; 2] = ["system", "information_schema"];

/// A user id: `^[A-Za-z0-9_.@-]{1,64}$`, not `.` or `..`. It is part of RocksDB keys (separated by
/// `0x00`) and of storage paths, which is why the alphabet is closed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(String);

impl UserId {
    pub fn parse(raw: &str) -> Result<Self, KalamError> {
        let ok = !raw.is_empty()
            && raw.len() <= MAX_NAME_LEN
            && raw != "."
            && raw != ".."
            && raw.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '@' | '-'));
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(KalamError::new(
                ErrorCode::InvalidRequest,
                format!("Invalid user id '{raw}': user ids must match ^[A-Za-z0-9_.@-]{{1,64}}$"),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The built-in `system` user.
    pub fn system() -> Self {
        Self("system".to_owned())
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A job id such as `flush-messages-1761332099970-f14aa44d`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub String);

impl JobId {
    /// A flush job id for `table` created at `created_ms` with a random suffix.
    pub fn flush(table: &TableName, created_ms: i64, suffix: u32) -> Self {
        Self(format!("flush-{table}-{created_ms}-{suffix:08x}"))
    }

    /// A job id for a job not bound to a table (`<job_type>-<unix_ms>-<8 hex>`).
    pub fn untargeted(job_type: &str, created_ms: i64, suffix: u32) -> Self {
        Self(format!("{job_type}-{created_ms}-{suffix:08x}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated_as_written() {
        assert_eq!(NamespaceId::parse("app").unwrap().as_str(), "app");
        assert!(NamespaceId::parse("App").is_err(), "a quoted mixed-case name is not a valid name");
        assert!(TableName::parse("_hidden").is_err());
        assert!(TableName::parse("1abc").is_err());
        assert!(TableName::parse(&"a".repeat(65)).is_err());
        assert!(TableName::parse(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn user_ids_cannot_escape_paths_or_keys() {
        for bad in ["", ".", "..", "a/b", "a\0b", "a:b", "a b"] {
            assert!(UserId::parse(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["alice", "user.name@example.com", "u-1_2"] {
            assert!(UserId::parse(good).is_ok(), "{good:?} rejected");
        }
    }
}
