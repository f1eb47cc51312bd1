//! The binary encodings of the hot buffer (storage.md §2–3): row values, primary-key bytes and
//! row keys. kalamd writes them; kalam-flushd reads them back from checkpoints.

use crate::datatype::KalamType;
use crate::ids::UserId;
use crate::schema::TableDefinition;
use crate::value::Value;

/// Version byte at the start of every encoded row.
pub const ROW_FORMAT_VERSION: u8 = 0x01;
const TAG_NULL: u8 = 0xFF;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("row value truncated at byte {offset}")]
    Truncated { offset: usize },
    #[error("unknown row format version {0:#04x}")]
    UnknownVersion(u8),
    #[error("column {index}: tag {found:#04x} does not match type {expected}")]
    TagMismatch { index: usize, expected: KalamType, found: u8 },
    #[error("row has {found} columns, schema version has {expected}")]
    ColumnCount { expected: usize, found: usize },
    #[error("invalid UTF-8 in column {index}")]
    Utf8 { index: usize },
    #[error("value of column {index} does not fit the row format")]
    TooLarge { index: usize },
    #[error("row written under unknown schema version {0}")]
    UnknownSchemaVersion(u32),
    #[error("row key has no user separator")]
    BadKey,
}

/// A buffered row version: user columns in ordinal order plus the two system columns.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRow {
    pub schema_version: u32,
    pub values: Vec<Value>,
    /// `_updated`, microseconds since the epoch.
    pub updated_us: i64,
    /// `_deleted`.
    pub deleted: bool,
}

pub fn encode_row(row: &StoredRow) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(16 + row.values.len() * 9);
    out.push(ROW_FORMAT_VERSION);
    out.extend_from_slice(&row.schema_version.to_le_bytes());
    let count = u16::try_from(row.values.len()).map_err(|_| CodecError::TooLarge { index: 0 })?;
    out.extend_from_slice(&count.to_le_bytes());
    for (index, v) in row.values.iter().enumerate() {
        encode_value(&mut out, v, index)?;
    }
    encode_value(&mut out, &Value::Timestamp(row.updated_us), row.values.len())?;
    encode_value(&mut out, &Value::Boolean(row.deleted), row.values.len() + 1)?;
    Ok(out)
}

fn encode_value(out: &mut Vec<u8>, v: &Value, index: usize) -> Result<(), CodecError> {
    let var = |tag: u8, bytes: &[u8], out: &mut Vec<u8>| -> Result<(), CodecError> {
        let len = u32::try_from(bytes.len()).map_err(|_| CodecError::TooLarge { index })?;
        out.push(tag);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(bytes);
        Ok(())
    };
    match v {
        Value::Null => out.push(TAG_NULL),
        Value::Boolean(b) => out.extend_from_slice(&[KalamType::Boolean.tag(), u8::from(*b)]),
        Value::Int(i) => push_fixed(out, KalamType::Int, &i.to_le_bytes()),
        Value::BigInt(i) => push_fixed(out, KalamType::BigInt, &i.to_le_bytes()),
        Value::Double(d) => push_fixed(out, KalamType::Double, &d.to_bits().to_le_bytes()),
        Value::Text(s) => var(KalamType::Text.tag(), s.as_bytes(), out)?,
        Value::Timestamp(t) => push_fixed(out, KalamType::Timestamp, &t.to_le_bytes()),
        Value::Date(d) => push_fixed(out, KalamType::Date, &d.to_le_bytes()),
        Value::Time(t) => push_fixed(out, KalamType::Time, &t.to_le_bytes()),
        Value::Json(s) => var(KalamType::Json.tag(), s.as_bytes(), out)?,
        Value::Bytes(b) => var(KalamType::Bytes.tag(), b, out)?,
    }
    Ok(())
}

fn push_fixed(out: &mut Vec<u8>, ty: KalamType, bytes: &[u8]) {
    out.push(ty.tag());
    out.extend_from_slice(bytes);
}

/// Decodes a row written under a schema version whose user column types are `types`.
pub fn decode_row(bytes: &[u8], types: &[KalamType]) -> Result<StoredRow, CodecError> {
    let mut r = Reader { bytes, pos: 0 };
    let version = r.take(1)?[0];
    if version != ROW_FORMAT_VERSION {
        return Err(CodecError::UnknownVersion(version));
    }
    let schema_version = u32::from_le_bytes(r.array()?);
    let count = u16::from_le_bytes(r.array()?) as usize;
    if count != types.len() {
        return Err(CodecError::ColumnCount { expected: types.len(), found: count });
    }
    let mut values = Vec::with_capacity(count);
    for (index, ty) in types.iter().enumerate() {
        values.push(r.value(*ty, index)?);
    }
    let updated_us = match r.value(KalamType::Timestamp, count)? {
        Value::Timestamp(t) => t,
        _ => return Err(CodecError::TagMismatch { index: count, expected: KalamType::Timestamp, found: TAG_NULL }),
    };
    let deleted = match r.value(KalamType::Boolean, count + 1)? {
        Value::Boolean(b) => b,
        _ => return Err(CodecError::TagMismatch { index: count + 1, expected: KalamType::Boolean, found: TAG_NULL }),
    };
    Ok(StoredRow { schema_version, values, updated_us, deleted })
}

/// Decodes the buffered rows of one table, whatever schema version wrote them, as rows of its
/// current schema (storage.md §3: older rows are decoded with their own version's columns and
/// projected like Parquet files).
pub struct RowDecoder<'a> {
    def: &'a TableDefinition,
    /// Where the column lists of other versions come from: `def` itself, or a newer definition
    /// of the same table (a reader planned before an ALTER TABLE meets rows written after it).
    versions: &'a TableDefinition,
    types: Vec<KalamType>,
}

impl<'a> RowDecoder<'a> {
    pub fn new(def: &'a TableDefinition) -> Self {
        Self { def, versions: def, types: def.column_types() }
    }

    /// Decodes into `def`'s schema, looking up versions in `newer` (same table, later version).
    pub fn with_versions(def: &'a TableDefinition, newer: &'a TableDefinition) -> Self {
        Self { def, versions: newer, types: def.column_types() }
    }

    pub fn decode(&self, bytes: &[u8]) -> Result<StoredRow, CodecError> {
        let version = row_schema_version(bytes)?;
        if version == self.def.schema_version {
            return decode_row(bytes, &self.types);
        }
        let columns = self.versions.columns_of(version).ok_or(CodecError::UnknownSchemaVersion(version))?;
        let types: Vec<KalamType> = columns.iter().map(|c| c.data_type).collect();
        let mut row = decode_row(bytes, &types)?;
        row.values = self.def.project(columns, row.values);
        row.schema_version = self.def.schema_version;
        Ok(row)
    }
}

/// Reads only the schema version of an encoded row.
pub fn row_schema_version(bytes: &[u8]) -> Result<u32, CodecError> {
    let mut r = Reader { bytes, pos: 0 };
    let version = r.take(1)?[0];
    if version != ROW_FORMAT_VERSION {
        return Err(CodecError::UnknownVersion(version));
    }
    Ok(u32::from_le_bytes(r.array()?))
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], CodecError> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.bytes.len());
        let end = end.ok_or(CodecError::Truncated { offset: self.pos })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn var(&mut self) -> Result<&[u8], CodecError> {
        let len = u32::from_le_bytes(self.array()?) as usize;
        self.take(len)
    }

    fn value(&mut self, ty: KalamType, index: usize) -> Result<Value, CodecError> {
        let tag = self.take(1)?[0];
        if tag == TAG_NULL {
            return Ok(Value::Null);
        }
        if tag != ty.tag() {
            return Err(CodecError::TagMismatch { index, expected: ty, found: tag });
        }
        let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| CodecError::Utf8 { index });
        Ok(match ty {
            KalamType::Boolean => Value::Boolean(self.take(1)?[0] != 0),
            KalamType::Int => Value::Int(i32::from_le_bytes(self.array()?)),
            KalamType::BigInt => Value::BigInt(i64::from_le_bytes(self.array()?)),
            KalamType::Double => Value::Double(f64::from_bits(u64::from_le_bytes(self.array()?))),
            KalamType::Text => Value::Text(text(self.var()?)?),
            KalamType::Timestamp => Value::Timestamp(i64::from_le_bytes(self.array()?)),
            KalamType::Date => Value::Date(i32::from_le_bytes(self.array()?)),
            KalamType::Time => Value::Time(i64::from_le_bytes(self.array()?)),
            KalamType::Json => Value::Json(text(self.var()?)?),
            KalamType::Bytes => Value::Bytes(self.var()?.to_vec()),
        })
    }
}

/// Primary-key bytes: BIGINT as big-endian with the sign bit flipped (byte order = numeric
/// order), TEXT as UTF-8. Other values cannot be keys.
pub fn encode_pk(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BigInt(i) => Some(((*i as u64) ^ (1 << 63)).to_be_bytes().to_vec()),
        Value::Text(s) => Some(s.as_bytes().to_vec()),
        _ => None,
    }
}

/// Key of a USER-table row: `<user_id> 0x00 <pk bytes>`.
pub fn user_row_key(user: &UserId, pk: &[u8]) -> Vec<u8> {
    let mut k = user_prefix(user);
    k.extend_from_slice(pk);
    k
}

/// Prefix of one user's partition in a USER-table column family.
pub fn user_prefix(user: &UserId) -> Vec<u8> {
    let mut k = Vec::with_capacity(user.as_str().len() + 1);
    k.extend_from_slice(user.as_str().as_bytes());
    k.push(0);
    k
}

/// The smallest USER-table key above every key of `user`'s partition: where the partitions of
/// the users after it start.
pub fn users_after(user: &str) -> Vec<u8> {
    let mut key = user.as_bytes().to_vec();
    key.push(1);
    key
}

/// Splits a USER-table row key into the user id and the primary-key bytes.
pub fn split_user_row_key(key: &[u8]) -> Result<(&str, &[u8]), CodecError> {
    let sep = key.iter().position(|b| *b == 0).ok_or(CodecError::BadKey)?;
    let user = std::str::from_utf8(&key[..sep]).map_err(|_| CodecError::BadKey)?;
    Ok((user, &key[sep + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_types() -> (Vec<KalamType>, Vec<Value>) {
        (
            vec![
                KalamType::Boolean,
                KalamType::Int,
                KalamType::BigInt,
                KalamType::Double,
                KalamType::Text,
                KalamType::Timestamp,
                KalamType::Date,
                KalamType::Time,
                KalamType::Json,
                KalamType::Bytes,
                KalamType::Text,
            ],
            vec![
                Value::Boolean(true),
                Value::Int(-7),
                Value::BigInt(i64::MIN),
                Value::Double(f64::NAN),
                Value::Text("héllo".into()),
                Value::Timestamp(1_700_000_000_123_456),
                Value::Date(-1),
                Value::Time(86_399_999_999),
                Value::Json("{\"a\":[1]}".into()),
                Value::Bytes(vec![0, 255]),
                Value::Null,
            ],
        )
    }

    #[test]
    fn rows_round_trip_for_every_type() {
        let (types, values) = all_types();
        let row = StoredRow { schema_version: 3, values, updated_us: 99, deleted: true };
        let bytes = encode_row(&row).unwrap();
        assert_eq!(bytes[0], ROW_FORMAT_VERSION);
        let back = decode_row(&bytes, &types).unwrap();
        assert_eq!(back.schema_version, 3);
        assert_eq!(back.updated_us, 99);
        assert!(back.deleted);
        // NaN != NaN, so compare the encodings.
        assert_eq!(encode_row(&back).unwrap(), bytes);
        assert_eq!(row_schema_version(&bytes).unwrap(), 3);
    }

    #[test]
    fn decoding_checks_tags_and_length() {
        let row = StoredRow { schema_version: 1, values: vec![Value::BigInt(1)], updated_us: 1, deleted: false };
        let bytes = encode_row(&row).unwrap();
        assert!(matches!(decode_row(&bytes, &[KalamType::Text]), Err(CodecError::TagMismatch { .. })));
        assert!(matches!(
            decode_row(&bytes[..bytes.len() - 1], &[KalamType::BigInt]),
            Err(CodecError::Truncated { .. })
        ));
        assert!(matches!(decode_row(&bytes, &[]), Err(CodecError::ColumnCount { .. })));
    }

    #[test]
    fn bigint_key_bytes_sort_numerically() {
        let mut nums = [-5i64, 3, i64::MIN, 0, i64::MAX, -1];
        let mut keys: Vec<_> = nums.iter().map(|n| encode_pk(&Value::BigInt(*n)).unwrap()).collect();
        keys.sort();
        nums.sort();
        let expected: Vec<_> = nums.iter().map(|n| encode_pk(&Value::BigInt(*n)).unwrap()).collect();
        assert_eq!(keys, expected);
    }

    #[test]
    fn user_keys_split_at_the_first_zero() {
        let user = UserId::parse("alice").unwrap();
        let key = user_row_key(&user, &[0, 1, 2]);
        assert_eq!(split_user_row_key(&key).unwrap(), ("alice", &[0u8, 1, 2][..]));
    }
}
