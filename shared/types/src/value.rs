//! Column values: coercion of SQL literals into one of the ten types (sql.md §2.2), validation,
//! and the JSON encoding of results and live rows (sql.md §2.3).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_PAD_INDIFFERENT;
use serde_json::Value as Json;

use crate::datatype::KalamType;
use crate::error::{ErrorCode, KalamError};
use crate::numeric::{Decimal, Integral};
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

impl Literal {
    /// A JSON value as the literal it spells (objects and arrays as their JSON text): how
    /// stored DEFAULTs and computed values are written into columns with the rules of §2.2.
    pub fn from_json(json: &Json) -> Literal {
        match json {
            Json::Null => Literal::Null,
            Json::Bool(b) => Literal::Boolean(*b),
            Json::Number(n) => Literal::Number(n.to_string()),
            Json::String(s) => Literal::String(s.clone()),
            other => Literal::String(other.to_string()),
        }
    }

    /// The literal as SQL text: `NULL`, `TRUE`, `-12`, `'it''s'`.
    pub fn as_sql(&self) -> String {
        match self {
            Literal::Null => "NULL".into(),
            Literal::Boolean(b) => if *b { "TRUE" } else { "FALSE" }.into(),
            Literal::Number(n) => n.clone(),
            Literal::String(s) => format!("'{}'", s.replace('\'', "''")),
        }
    }
}

impl Value {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// Converts `lit` into a value of `ty` for column `column`, or fails with `TYPE_ERROR`
    /// (sql.md §2.2). Messages show the offending value as it was written: strings quoted
    /// (`'yes'`), numbers and booleans bare.
    pub fn coerce(lit: &Literal, ty: KalamType, column: &str) -> Result<Value, KalamError> {
        let type_error = |message: String| KalamError::new(ErrorCode::TypeError, message);
        let invalid = || type_error(format!("Invalid {ty} value for column '{column}': {}", lit.as_sql()));
        let value = match (lit, ty) {
            (Literal::Null, _) => Value::Null,
            (Literal::Boolean(b), KalamType::Boolean) => Value::Boolean(*b),
            (Literal::String(s), KalamType::Boolean) => Value::Boolean(parse_boolean(s).ok_or_else(invalid)?),
            (Literal::Number(n) | Literal::String(n), KalamType::Int | KalamType::BigInt) => {
                let out_of_range =
                    || type_error(format!("{ty} value out of range for column '{column}': {}", lit.as_sql()));
                let wide = match Decimal::parse(n).ok_or_else(invalid)?.integral() {
                    Integral::Value(v) => v,
                    Integral::OutOfRange => return Err(out_of_range()),
                    Integral::Fraction => return Err(invalid()),
                };
                if ty == KalamType::Int {
                    Value::Int(i32::try_from(wide).map_err(|_| out_of_range())?)
                } else {
                    Value::BigInt(wide)
                }
            }
            (Literal::Number(n), KalamType::Double) => Value::Double(n.parse().map_err(|_| invalid())?),
            (Literal::String(s), KalamType::Double) => Value::Double(parse_double(s).ok_or_else(invalid)?),
            (Literal::String(s), KalamType::Text) => {
                if s.contains('\0') {
                    return Err(type_error(format!(
                        "Invalid TEXT value for column '{column}': text must not contain NUL characters"
                    )));
                }
                Value::Text(s.clone())
            }
            (Literal::Number(n), KalamType::Text) => Value::Text(canonical_number_text(n).ok_or_else(invalid)?),
            (Literal::Boolean(b), KalamType::Text) => Value::Text(b.to_string()),
            (Literal::String(s), KalamType::Timestamp) => {
                Value::Timestamp(time::parse_timestamp_micros(s).ok_or_else(invalid)?)
            }
            (Literal::Number(n), KalamType::Timestamp) => {
                let micros = match Decimal::parse(n).map(|d| d.integral()) {
                    Some(Integral::Value(v)) => time::check_timestamp_micros(v),
                    _ => None,
                };
                Value::Timestamp(micros.ok_or_else(invalid)?)
            }
            // `YYYY-MM-DD`, or a timestamp truncated to its UTC date (§2.2).
            (Literal::String(s), KalamType::Date) => Value::Date(
                time::parse_date_days(s)
                    .or_else(|| {
                        let micros = time::parse_timestamp_micros(s)?;
                        i32::try_from(micros.div_euclid(86_400_000_000)).ok()
                    })
                    .ok_or_else(invalid)?,
            ),
            (Literal::String(s), KalamType::Time) => Value::Time(time::parse_time_micros(s).ok_or_else(invalid)?),
            (_, KalamType::Json) => match lit {
                Literal::String(s)
                    if matches!(serde_json::from_str::<Json>(s), Ok(Json::Object(_) | Json::Array(_))) =>
                {
                    Value::Json(s.clone())
                }
                _ => {
                    return Err(type_error(format!(
                        "Invalid JSON value for column '{column}': expected object or array"
                    )));
                }
            },
            (Literal::String(s), KalamType::Bytes) => Value::Bytes(decode_bytes_text(s).ok_or_else(invalid)?),
            (Literal::Boolean(_) | Literal::Number(_), _) => return Err(invalid()),
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

/// Inverse of [`encode_hex`]: `0x` + an even number of hex digits (either case).
pub fn decode_hex(text: &str) -> Option<Vec<u8>> {
    decode_hex_digits(text.strip_prefix("0x")?)
}

fn decode_hex_digits(hex: &str) -> Option<Vec<u8>> {
    let nibble = |b: u8| char::from(b).to_digit(16);
    let bytes = hex.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes.chunks_exact(2).map(|pair| Some((nibble(pair[0])? * 16 + nibble(pair[1])?) as u8)).collect()
}

/// BYTES written as a string: `0x`/`0X` + an even number of hex digits (`0x` alone is empty),
/// otherwise standard base64 with or without padding.
fn decode_bytes_text(text: &str) -> Option<Vec<u8>> {
    let hex = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X"));
    if let Some(bytes) = hex.and_then(decode_hex_digits) {
        return Some(bytes);
    }
    STANDARD_PAD_INDIFFERENT.decode(text).ok()
}

/// BOOLEAN written as a string: `true`, `false`, `t`, `f` (any case), `1`, `0`.
fn parse_boolean(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "t" | "1" => Some(true),
        "false" | "f" | "0" => Some(false),
        _ => None,
    }
}

/// DOUBLE written as a string: a decimal number, or `NaN`, `Infinity`, `+Infinity`, `-Infinity`
/// in any case.
fn parse_double(text: &str) -> Option<f64> {
    let text = text.trim();
    match text.to_ascii_lowercase().as_str() {
        "nan" => Some(f64::NAN),
        "infinity" | "+infinity" => Some(f64::INFINITY),
        "-infinity" => Some(f64::NEG_INFINITY),
        _ => Decimal::parse(text).and_then(|_| text.parse().ok()),
    }
}

/// A number written into TEXT becomes the text it reads back as: a whole number in the BIGINT
/// range as that integer (`42`, `-7`), anything else as the DOUBLE it is, in the text of its JSON
/// encoding (`1.5`, `1e+300`; sql.md §2.3).
fn canonical_number_text(number: &str) -> Option<String> {
    match Decimal::parse(number)?.integral() {
        Integral::Value(v) => Some(v.to_string()),
        Integral::OutOfRange | Integral::Fraction => match double_to_json(number.trim().parse().ok()?) {
            Json::String(special) => Some(special),
            finite => Some(finite.to_string()),
        },
    }
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

    fn s(text: &str) -> Literal {
        Literal::String(text.into())
    }

    fn n(text: &str) -> Literal {
        Literal::Number(text.into())
    }

    fn message(lit: &Literal, ty: KalamType, column: &str) -> String {
        let err = Value::coerce(lit, ty, column).unwrap_err();
        assert_eq!(err.code, ErrorCode::TypeError);
        err.message
    }

    #[test]
    fn booleans_accept_only_the_documented_spellings() {
        assert_eq!(Value::coerce(&Literal::Boolean(true), KalamType::Boolean, "b").unwrap(), Value::Boolean(true));
        for (text, expected) in
            [("true", true), ("TRUE", true), ("t", true), ("T", true), ("1", true), ("false", false), ("False", false)]
                .into_iter()
                .chain([("f", false), ("0", false)])
        {
            assert_eq!(Value::coerce(&s(text), KalamType::Boolean, "b").unwrap(), Value::Boolean(expected), "{text}");
        }
        assert_eq!(message(&s("yes"), KalamType::Boolean, "b"), "Invalid BOOLEAN value for column 'b': 'yes'");
        assert_eq!(message(&s("no"), KalamType::Boolean, "b"), "Invalid BOOLEAN value for column 'b': 'no'");
        assert_eq!(message(&s("2"), KalamType::Boolean, "b"), "Invalid BOOLEAN value for column 'b': '2'");
        assert_eq!(message(&s(""), KalamType::Boolean, "b"), "Invalid BOOLEAN value for column 'b': ''");
        assert_eq!(message(&n("1"), KalamType::Boolean, "b"), "Invalid BOOLEAN value for column 'b': 1");
    }

    #[test]
    fn integers_report_range_and_fractions_separately() {
        let int = |lit: &Literal| Value::coerce(lit, KalamType::Int, "i");
        let big = |lit: &Literal| Value::coerce(lit, KalamType::BigInt, "g");
        assert_eq!(int(&n("2147483647")).unwrap(), Value::Int(i32::MAX));
        assert_eq!(int(&n("-2147483648")).unwrap(), Value::Int(i32::MIN));
        assert_eq!(int(&s("42")).unwrap(), Value::Int(42));
        assert_eq!(int(&s(" -7 ")).unwrap(), Value::Int(-7));
        assert_eq!(big(&n("-9223372036854775808")).unwrap(), Value::BigInt(i64::MIN));
        assert_eq!(big(&s("9007199254740993")).unwrap(), Value::BigInt(9_007_199_254_740_993));
        assert_eq!(message(&n("2147483648"), KalamType::Int, "i"), "INT value out of range for column 'i': 2147483648");
        assert_eq!(
            message(&n("-2147483649"), KalamType::Int, "i"),
            "INT value out of range for column 'i': -2147483649"
        );
        assert_eq!(
            message(&n("9223372036854775808"), KalamType::BigInt, "g"),
            "BIGINT value out of range for column 'g': 9223372036854775808"
        );
        assert_eq!(
            message(&n("-9223372036854775809"), KalamType::BigInt, "g"),
            "BIGINT value out of range for column 'g': -9223372036854775809"
        );
        assert_eq!(
            message(&s("99999999999"), KalamType::Int, "i"),
            "INT value out of range for column 'i': '99999999999'"
        );
        assert_eq!(message(&n("1.5"), KalamType::Int, "i"), "Invalid INT value for column 'i': 1.5");
        assert_eq!(message(&s("1.5"), KalamType::Int, "i"), "Invalid INT value for column 'i': '1.5'");
        assert_eq!(message(&s("abc"), KalamType::Int, "i"), "Invalid INT value for column 'i': 'abc'");
        assert_eq!(message(&n("2.5"), KalamType::BigInt, "g"), "Invalid BIGINT value for column 'g': 2.5");
        assert_eq!(
            message(&Literal::Boolean(true), KalamType::BigInt, "g"),
            "Invalid BIGINT value for column 'g': TRUE"
        );
    }

    #[test]
    fn doubles_take_numbers_and_the_special_strings() {
        let double = |lit: &Literal| match Value::coerce(lit, KalamType::Double, "d").unwrap() {
            Value::Double(d) => d,
            other => panic!("{other:?}"),
        };
        assert_eq!(double(&n("-2.7e-3")), -0.0027);
        assert_eq!(double(&n("42")), 42.0);
        assert_eq!(double(&s("1.25")), 1.25);
        assert!(double(&s("NaN")).is_nan());
        assert!(double(&s("nan")).is_nan());
        assert_eq!(double(&s("Infinity")), f64::INFINITY);
        assert_eq!(double(&s("+Infinity")), f64::INFINITY);
        assert_eq!(double(&s("-INFINITY")), f64::NEG_INFINITY);
        assert_eq!(message(&s("abc"), KalamType::Double, "d"), "Invalid DOUBLE value for column 'd': 'abc'");
        assert!(Value::coerce(&s("inf"), KalamType::Double, "d").is_err());
    }

    #[test]
    fn numbers_and_booleans_become_their_canonical_text() {
        let text = |lit: &Literal| Value::coerce(lit, KalamType::Text, "s").unwrap();
        assert_eq!(text(&Literal::Boolean(true)), Value::Text("true".into()));
        assert_eq!(text(&Literal::Boolean(false)), Value::Text("false".into()));
        assert_eq!(text(&n("42")), Value::Text("42".into()));
        assert_eq!(text(&n("-7")), Value::Text("-7".into()));
        assert_eq!(text(&n("007")), Value::Text("7".into()));
        assert_eq!(text(&n("1.5")), Value::Text("1.5".into()));
        assert_eq!(text(&n("3.50")), Value::Text("3.5".into()));
        assert_eq!(text(&n("1e300")), Value::Text("1e+300".into()));
        // A whole number beyond BIGINT reads back as the DOUBLE it is.
        assert_eq!(text(&n("9223372036854775808")), Value::Text("9.223372036854776e+18".into()));
        // Strings are stored exactly as given.
        assert_eq!(text(&s(" padded ")), Value::Text(" padded ".into()));
        assert_eq!(text(&s("")), Value::Text(String::new()));
        assert_eq!(
            message(&s("a\0b"), KalamType::Text, "s"),
            "Invalid TEXT value for column 's': text must not contain NUL characters"
        );
    }

    #[test]
    fn timestamps_from_text_and_microseconds() {
        let ts = |lit: &Literal| Value::coerce(lit, KalamType::Timestamp, "ts").unwrap().to_json();
        assert_eq!(ts(&s("2025-10-24T14:30:00+05")), Json::String("2025-10-24T09:30:00.000000Z".into()));
        assert_eq!(ts(&s("2025-10-24 14:30Z")), Json::String("2025-10-24T14:30:00.000000Z".into()));
        assert_eq!(ts(&n("1761316200123456")), Json::String("2025-10-24T14:30:00.123456Z".into()));
        assert_eq!(
            message(&s("not a time"), KalamType::Timestamp, "ts"),
            "Invalid TIMESTAMP value for column 'ts': 'not a time'"
        );
        assert_eq!(message(&s("it's"), KalamType::Timestamp, "ts"), "Invalid TIMESTAMP value for column 'ts': 'it''s'");
        assert_eq!(message(&n("1.5"), KalamType::Timestamp, "ts"), "Invalid TIMESTAMP value for column 'ts': 1.5");
        // Microseconds outside years 0001-9999.
        assert!(Value::coerce(&n("9223372036854775807"), KalamType::Timestamp, "ts").is_err());
    }

    #[test]
    fn dates_and_times_reject_out_of_range_fields() {
        assert_eq!(Value::coerce(&s("14:30"), KalamType::Time, "tm").unwrap(), Value::Time(52_200_000_000));
        assert_eq!(message(&s("25:00:00"), KalamType::Time, "tm"), "Invalid TIME value for column 'tm': '25:00:00'");
        assert_eq!(
            message(&s("2025-02-30"), KalamType::Date, "dt"),
            "Invalid DATE value for column 'dt': '2025-02-30'"
        );
        // A timestamp is truncated to its UTC date.
        let date = Value::coerce(&s("2025-10-24T23:30:00-05:00"), KalamType::Date, "dt").unwrap();
        assert_eq!(date, Value::Date(time::parse_date_days("2025-10-25").unwrap()));
    }

    #[test]
    fn bytes_from_text_are_hex_or_base64() {
        let bytes = |text: &str| Value::coerce(&s(text), KalamType::Bytes, "y");
        let deadbeef = Value::Bytes(vec![0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(bytes("0xDEADBEEF").unwrap(), deadbeef);
        assert_eq!(bytes("0Xdeadbeef").unwrap(), deadbeef);
        assert_eq!(bytes("0x").unwrap(), Value::Bytes(vec![]));
        assert_eq!(bytes("3q2+7w==").unwrap(), deadbeef);
        assert_eq!(bytes("3q2+7w").unwrap(), deadbeef);
        assert_eq!(bytes("AAEC").unwrap(), Value::Bytes(vec![0, 1, 2]));
        assert_eq!(bytes("").unwrap(), Value::Bytes(vec![]));
        assert_eq!(
            message(&s("not base64!"), KalamType::Bytes, "y"),
            "Invalid BYTES value for column 'y': 'not base64!'"
        );
        // Odd hex digits are neither hex nor base64; URL-safe base64 and raw text are not accepted.
        assert!(bytes("0xABC").is_err());
        // `+1` is not hex (no sign allowed), but the whole text is four base64 characters.
        assert_eq!(decode_hex("0x+1"), None);
        assert_eq!(bytes("0x+1").unwrap(), Value::Bytes(vec![0xd3, 0x1f, 0xb5]));
        assert!(bytes("3q2-7w").is_err());
        assert!(bytes("\\xdeadbeef").is_err());
        assert!(bytes("hello world").is_err());
        assert_eq!(message(&n("12"), KalamType::Bytes, "y"), "Invalid BYTES value for column 'y': 12");
    }

    #[test]
    fn every_value_survives_its_json_encoding() {
        // Literal DEFAULTs are stored as the JSON of their value and coerced back (schema.rs).
        let values = [
            (Value::Boolean(true), KalamType::Boolean),
            (Value::Int(-5), KalamType::Int),
            (Value::BigInt(i64::MAX), KalamType::BigInt),
            (Value::Double(1.5), KalamType::Double),
            (Value::Double(f64::NEG_INFINITY), KalamType::Double),
            (Value::Text("x".into()), KalamType::Text),
            (Value::Timestamp(1_761_316_200_123_456), KalamType::Timestamp),
            (Value::Date(-719_162), KalamType::Date),
            (Value::Time(86_399_999_999), KalamType::Time),
            (Value::Json("{\"a\":1}".into()), KalamType::Json),
            (Value::Bytes(vec![0, 0xff]), KalamType::Bytes),
            (Value::Bytes(vec![]), KalamType::Bytes),
        ];
        for (value, ty) in values {
            let lit = match value.to_json() {
                Json::Bool(b) => Literal::Boolean(b),
                Json::Number(n) => Literal::Number(n.to_string()),
                Json::String(s) => Literal::String(s),
                other => panic!("{other}"),
            };
            assert_eq!(Value::coerce(&lit, ty, "c").unwrap(), value);
        }
    }

    #[test]
    fn json_failures_use_the_verbatim_message() {
        for lit in [n("42"), Literal::Boolean(true), s("not json"), s("null")] {
            assert_eq!(
                message(&lit, KalamType::Json, "j"),
                "Invalid JSON value for column 'j': expected object or array"
            );
        }
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
