//! The ten column types: their SQL spellings, the rejection messages for everything else, and
//! the type tags of the row codec. This module is the single source of truth for a type's name;
//! the codec ([`crate::codec`]), the Arrow mapping ([`crate::arrow`]) and value validation
//! ([`crate::value`]) all dispatch on [`KalamType`].

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, KalamError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum KalamType {
    Boolean,
    Int,
    BigInt,
    Double,
    Text,
    Timestamp,
    Date,
    Time,
    Json,
    Bytes,
}

const SUPPORTED_HINT: &str = "Supported types: BOOLEAN, INT, BIGINT, DOUBLE, TEXT, TIMESTAMP, DATE, TIME, JSON, BYTES";

impl KalamType {
    /// Parses a SQL type spelling (`BIGINT`, `VARCHAR(20)`, `DOUBLE PRECISION`, ...). Rejected
    /// types fail with the catalogue message `Data type <T> not supported. <hint>`, where `<T>` is
    /// the whole spelling without its parenthesised arguments (`INT UNSIGNED`, `TIMESTAMP WITH TIME
    /// ZONE`, `DECIMAL`).
    pub fn from_sql(spelling: &str) -> Result<Self, KalamError> {
        let name = type_name(spelling);
        let ty = match name.as_str() {
            "BOOLEAN" | "BOOL" => Self::Boolean,
            "INT" | "INTEGER" | "INT4" => Self::Int,
            "BIGINT" | "INT8" => Self::BigInt,
            "DOUBLE" | "DOUBLE PRECISION" | "FLOAT8" => Self::Double,
            "TEXT" | "STRING" | "VARCHAR" | "CHAR" | "CHARACTER VARYING" | "CHARACTER" => Self::Text,
            "TIMESTAMP" | "DATETIME" | "TIMESTAMP WITHOUT TIME ZONE" => Self::Timestamp,
            "DATE" => Self::Date,
            "TIME" | "TIME WITHOUT TIME ZONE" => Self::Time,
            "JSON" | "JSONB" | "OBJECT" => Self::Json,
            "BYTES" | "BINARY" | "BYTEA" | "BLOB" | "VARBINARY" => Self::Bytes,
            _ => return Err(rejected(&name)),
        };
        Ok(ty)
    }

    /// The canonical upper-case name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Boolean => "BOOLEAN",
            Self::Int => "INT",
            Self::BigInt => "BIGINT",
            Self::Double => "DOUBLE",
            Self::Text => "TEXT",
            Self::Timestamp => "TIMESTAMP",
            Self::Date => "DATE",
            Self::Time => "TIME",
            Self::Json => "JSON",
            Self::Bytes => "BYTES",
        }
    }

    /// The codec tag of a non-null value of this type (storage.md §3).
    pub fn tag(self) -> u8 {
        match self {
            Self::Boolean => 0x01,
            Self::Int => 0x02,
            Self::BigInt => 0x03,
            Self::Double => 0x04,
            Self::Text => 0x05,
            Self::Timestamp => 0x06,
            Self::Date => 0x07,
            Self::Time => 0x08,
            Self::Json => 0x09,
            Self::Bytes => 0x0A,
        }
    }

    /// Types allowed as a primary key.
    pub fn can_be_primary_key(self) -> bool {
        matches!(self, Self::BigInt | Self::Text)
    }
}

impl fmt::Display for KalamType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The spelling upper-cased, with parenthesised arguments dropped and whitespace collapsed:
/// `varchar(20)` -> `VARCHAR`, `INT(11)  unsigned` -> `INT UNSIGNED`.
fn type_name(spelling: &str) -> String {
    let mut bare = String::with_capacity(spelling.len());
    let mut depth = 0usize;
    for c in spelling.chars() {
        match c {
            '(' => {
                depth += 1;
                bare.push(' ');
            }
            ')' => depth = depth.saturating_sub(1),
            _ if depth == 0 => bare.push(c.to_ascii_uppercase()),
            _ => {}
        }
    }
    bare.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn rejected(name: &str) -> KalamError {
    let hint = if name.split_whitespace().any(|word| word == "UNSIGNED") {
        "Use BIGINT for larger positive ranges"
    } else {
        match name.split_whitespace().next().unwrap_or("") {
            "DECIMAL" | "NUMERIC" | "FLOAT" | "FLOAT4" | "REAL" => {
                "Use DOUBLE for floating point or BIGINT for large integers"
            }
            "SMALLINT" | "INT2" | "TINYINT" | "MEDIUMINT" => "Use INT for small integers",
            "UUID" => "Use TEXT with DEFAULT UUID_V7()",
            "SERIAL" | "BIGSERIAL" | "SMALLSERIAL" => "Use BIGINT PRIMARY KEY DEFAULT SNOWFLAKE_ID()",
            _ => SUPPORTED_HINT,
        }
    };
    KalamError::new(ErrorCode::UnsupportedType, format!("Data type {name} not supported. {hint}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_map_to_the_ten_types() {
        assert_eq!(KalamType::from_sql("varchar(20)").unwrap(), KalamType::Text);
        assert_eq!(KalamType::from_sql("DOUBLE PRECISION").unwrap(), KalamType::Double);
        assert_eq!(KalamType::from_sql("int8").unwrap(), KalamType::BigInt);
        assert_eq!(KalamType::from_sql("jsonb").unwrap(), KalamType::Json);
    }

    #[test]
    fn rejected_types_carry_the_catalogue_message() {
        let err = KalamType::from_sql("DECIMAL(10,2)").unwrap_err();
        assert_eq!(err.code, ErrorCode::UnsupportedType);
        assert_eq!(
            err.message,
            "Data type DECIMAL not supported. Use DOUBLE for floating point or BIGINT for large integers"
        );
        assert!(KalamType::from_sql("UUID").unwrap_err().message.contains("UUID_V7()"));
        assert!(KalamType::from_sql("INTERVAL").unwrap_err().message.contains(SUPPORTED_HINT));
    }

    #[test]
    fn unsigned_types_are_named_in_full() {
        let message = |s: &str| KalamType::from_sql(s).unwrap_err().message;
        assert_eq!(
            message("INT UNSIGNED"),
            "Data type INT UNSIGNED not supported. Use BIGINT for larger positive ranges"
        );
        assert_eq!(
            message("BIGINT UNSIGNED"),
            "Data type BIGINT UNSIGNED not supported. Use BIGINT for larger positive ranges"
        );
        // MySQL's display width is dropped from the name, the UNSIGNED is not.
        assert_eq!(
            message("int(11)  unsigned"),
            "Data type INT UNSIGNED not supported. Use BIGINT for larger positive ranges"
        );
        assert!(message("DOUBLE PRECISION UNSIGNED").ends_with("Use BIGINT for larger positive ranges"));
    }

    #[test]
    fn time_zone_types_are_named_as_written() {
        let message = |s: &str| KalamType::from_sql(s).unwrap_err().message;
        assert_eq!(message("TIMESTAMPTZ"), format!("Data type TIMESTAMPTZ not supported. {SUPPORTED_HINT}"));
        assert_eq!(
            message("TIMESTAMP WITH TIME ZONE"),
            format!("Data type TIMESTAMP WITH TIME ZONE not supported. {SUPPORTED_HINT}")
        );
        // A precision before the zone clause must not hide it.
        assert_eq!(
            message("TIMESTAMP(3) WITH TIME ZONE"),
            format!("Data type TIMESTAMP WITH TIME ZONE not supported. {SUPPORTED_HINT}")
        );
        assert_eq!(
            message("TIME WITH TIME ZONE"),
            format!("Data type TIME WITH TIME ZONE not supported. {SUPPORTED_HINT}")
        );
        assert_eq!(KalamType::from_sql("TIMESTAMP WITHOUT TIME ZONE").unwrap(), KalamType::Timestamp);
    }

    #[test]
    fn arrays_and_lengths() {
        assert_eq!(KalamType::from_sql("CHARACTER VARYING(20)").unwrap(), KalamType::Text);
        assert_eq!(
            KalamType::from_sql("INT[]").unwrap_err().message,
            format!("Data type INT[] not supported. {SUPPORTED_HINT}")
        );
        assert_eq!(
            KalamType::from_sql("NUMERIC(10, 2)").unwrap_err().message,
            "Data type NUMERIC not supported. Use DOUBLE for floating point or BIGINT for large integers"
        );
    }
}
