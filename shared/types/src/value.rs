//! Column values: coercion of SQL literals into one of the ten types (sql.md §2.2), validation,
//! and the JSON encoding of results and live rows (sql.md §2.3).

use serde_json::Value as Json;

use crate::datatype::KalamType;
use crate::error::{ErrorCode, KalamError};
use crate::time;

/// Largest TEXT / JSON / BYTES value accepted (16 MiB).
pub const MAX_VALUE_BYTES: usize = 16 * 1024 * 1024;

/// One typed value. Temporal values keep their integer encodings.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Boolean(bool),
    Int(i32),
    BigInt(i64),
    Double(f64),
    Text(String),
    /// Microseconds since the Unix epoch, UTC.
    Timestamp(i64),
    /// Days since the Unix epoch.
    Date(i32),
    /// Microseconds since midnight.
    Time(i64),
    /// Validated JSON text, stored as given.
    Json(String),
    Bytes(Vec<u8>),
}

/// A SQL literal before it meets a column type.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Null,
    Boolean(bool),
    /// The number as written (`-12`, `3.5`, `1e3`).
    Number(String),
    String(String),
}

impl Value {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// Converts `lit` into a value of `ty` for column `column`, or fails with `TYPE_ERROR`.
    pub fn coerce(lit: &Literal, ty: KalamType, column: &str) -> Result<Value, KalamError> {
        let invalid = |shown: &str| {
            KalamError::new(ErrorCode::TypeError, format!("Invalid {ty} value for column '{column}': {shown}"))
        };
        let value = match (lit, ty) {
            (Literal::Null, _) => Value::Null,
            (Literal::Boolean(b), KalamType::Boolean) => Value::Boolean(*b),
            (Literal::String(s), KalamType::Boolean) => match s.to_ascii_lowercase().as_str() {
                "true" | "t" | "1" | "yes" => Value::Boolean(true),
                "false" | "f" | "0" | "no" => Value::Boolean(false),
                _ => return Err(invalid(s)),
            },
            (Literal::Number(n), KalamType::Int) | (Literal::String(n), KalamType::Int) => {
                let wide: i64 = parse_integer(n).ok_or_else(|| invalid(n))?;
                let narrow = i32::try_from(wide).map_err(|_| {
                    KalamError::new(ErrorCode::TypeError, format!("INT value out of range for column '{column}': {n}"))
                })?;
                Value::Int(narrow)
            }
            (Literal::Number(n), KalamType::BigInt) | (Literal::String(n), KalamType::BigInt) => {
                Value::BigInt(parse_integer(n).ok_or_else(|| {
                    KalamError::new(
                        ErrorCode::TypeError,
                        format!("BIGINT value out of range or invalid for column '{column}': {n}"),
                    )
                })?)
            }
            (Literal::Number(n), KalamType::Double) => Value::Double(n.parse().map_err(|_| invalid(n))?),
            (Literal::String(s), KalamType::Double) => Value::Double(match s.as_str() {
                "NaN" => f64::NAN,
                "Infinity" => f64::INFINITY,
                "-Infinity" => f64::NEG_INFINITY,
                other => other.parse().map_err(|_| invalid(other))?,
            }),
            (Literal::String(s), KalamType::Text) => {
                if s.contains('\0') {
                    return Err(invalid("text must not contain NUL characters"));
                }
                Value::Text(s.clone())
            }
            (Literal::Number(n), KalamType::Text) => Value::Text(n.clone()),
            (Literal::String(s), KalamType::Timestamp) => {
                Value::Timestamp(time::parse_timestamp_micros(s).ok_or_else(|| invalid(s))?)
            }
            (Literal::Number(n), KalamType::Timestamp) => Value::Timestamp(parse_integer(n).ok_or_else(|| invalid(n))?),
            (Literal::String(s), KalamType::Date) => Value::Date(time::parse_date_days(s).ok_or_else(|| invalid(s))?),
            (Literal::String(s), KalamType::Time) => Value::Time(time::parse_time_micros(s).ok_or_else(|| invalid(s))?),
            (Literal::String(s), KalamType::Json) => match serde_json::from_str::<Json>(s) {
                Ok(Json::Object(_)) | Ok(Json::Array(_)) => Value::Json(s.clone()),
                _ => {
                    return Err(KalamError::new(
                        ErrorCode::TypeError,
                        format!("Invalid JSON value for column '{column}': expected object or array"),
                    ));
                }
            },
            (Literal::String(s), KalamType::Bytes) => {
                Value::Bytes(match s.strip_prefix("0x").or_else(|| s.strip_prefix("\\x")) {
                    Some(hex) => decode_hex_digits(hex).ok_or_else(|| invalid(s))?,
                    None => s.as_bytes().to_vec(),
                })
            }
            (Literal::Boolean(b), _) => return Err(invalid(&b.to_string())),
            (Literal::Number(n), _) => return Err(invalid(n)),
        };
        value.check_size(column)?;
        Ok(value)
    }

    /// Checks a value computed by an expression (not a literal) against its column type: valid
    /// JSON for JSON columns, no NUL in TEXT, the size limit.
    pub fn validate(self, ty: KalamType, column: &str) -> Result<Value, KalamError> {
        match (&self, ty) {
            (Value::Json(s), KalamType::Json) | (Value::Text(s), KalamType::Json) => {
                Value::coerce(&Literal::String(s.clone()), KalamType::Json, column)
            }
            (Value::Text(s), KalamType::Text) => Value::coerce(&Literal::String(s.clone()), KalamType::Text, column),
            _ => {
                self.check_size(column)?;
                Ok(self)
            }
        }
    }

    fn check_size(&self, column: &str) -> Result<(), KalamError> {
        let len = match self {
            Value::Text(s) | Value::Json(s) => s.len(),
            Value::Bytes(b) => b.len(),
            _ => 0,
        };
        if len > MAX_VALUE_BYTES {
            return Err(KalamError::new(
                ErrorCode::TypeError,
                format!("Value too large for column '{column}': {len} bytes (limit {MAX_VALUE_BYTES})"),
            ));
        }
        Ok(())
    }

    /// The JSON encoding of sql.md §2.3.
    pub fn to_json(&self) -> Json {
        match self {
            Value::Null => Json::Null,
            Value::Boolean(b) => Json::Bool(*b),
            Value::Int(i) => Json::from(*i),
            Value::BigInt(i) => Json::from(*i),
            Value::Double(d) => double_to_json(*d),
            Value::Text(s) | Value::Json(s) => Json::String(s.clone()),
            Value::Timestamp(us) => Json::String(time::format_timestamp_micros(*us)),
            Value::Date(d) => Json::String(time::format_date_days(*d)),
            Value::Time(t) => Json::String(time::format_time_micros(*t)),
            Value::Bytes(b) => Json::String(encode_hex(b)),
        }
    }

    /// The text shown for a primary key in messages (`Duplicate primary key value '<v>'`).
    pub fn display_key(&self) -> String {
        match self {
            Value::Text(s) => s.clone(),
            Value::BigInt(i) => i.to_string(),
            other => other.to_json().to_string(),
        }
    }
}

/// JSON for a DOUBLE: a number, or the strings `NaN`, `Infinity`, `-Infinity`.
pub fn double_to_json(d: f64) -> Json {
    if d.is_nan() {
        Json::String("NaN".into())
    } else if d.is_infinite() {
        Json::String(if d > 0.0 { "Infinity" } else { "-Infinity" }.into())
    } else {
        serde_json::Number::from_f64(d).map(Json::Number).unwrap_or(Json::Null)
    }
}

/// `0x` + lowercase hex.
pub fn encode_hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(2 + bytes.len() * 2);
    out.push_str("0x");
    for b in bytes {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Inverse of [`encode_hex`]: `0x` + hex digits.
pub fn decode_hex(text: &str) -> Option<Vec<u8>> {
    decode_hex_digits(text.strip_prefix("0x")?)
}

fn decode_hex_digits(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect()
}

fn parse_integer(text: &str) -> Option<i64> {
    text.trim().parse::<i64>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_coerce_with_range_checks() {
        let n = |s: &str| Literal::Number(s.into());
        assert_eq!(Value::coerce(&n("42"), KalamType::BigInt, "c").unwrap(), Value::BigInt(42));
        let err = Value::coerce(&n("2147483648"), KalamType::Int, "c").unwrap_err();
        assert!(err.message.starts_with("INT value out of range"));
        assert_eq!(Value::coerce(&Literal::Null, KalamType::Text, "c").unwrap(), Value::Null);
        assert!(Value::coerce(&n("1.5"), KalamType::BigInt, "c").is_err());
    }

    #[test]
    fn computed_values_are_validated_like_literals() {
        assert!(Value::Json("{}".into()).validate(KalamType::Json, "j").is_ok());
        assert_eq!(Value::Json("7".into()).validate(KalamType::Json, "j").unwrap_err().code, ErrorCode::TypeError);
        assert!(Value::Text("a\0b".into()).validate(KalamType::Text, "t").is_err());
        assert_eq!(Value::Int(3).validate(KalamType::Int, "n").unwrap(), Value::Int(3));
    }

    #[test]
    fn json_must_be_object_or_array() {
        let s = |v: &str| Literal::String(v.into());
        assert!(Value::coerce(&s("{\"a\":1}"), KalamType::Json, "m").is_ok());
        let err = Value::coerce(&s("42"), KalamType::Json, "m").unwrap_err();
        assert_eq!(err.message, "Invalid JSON value for column 'm': expected object or array");
    }

    #[test]
    fn results_use_the_documented_json_encoding() {
        assert_eq!(Value::Double(f64::NAN).to_json(), Json::String("NaN".into()));
        assert_eq!(Value::Bytes(vec![0xde, 0xad]).to_json(), Json::String("0xdead".into()));
        assert_eq!(Value::Bytes(vec![]).to_json(), Json::String("0x".into()));
        assert_eq!(decode_hex(&encode_hex(&[0, 9, 255])), Some(vec![0, 9, 255]));
        assert_eq!(decode_hex("0xzz"), None);
        assert_eq!(Value::BigInt(i64::MAX).to_json().to_string(), "9223372036854775807");
        assert_eq!(Value::Timestamp(0).to_json(), Json::String("1970-01-01T00:00:00.000000Z".into()));
    }
}
