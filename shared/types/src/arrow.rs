//! The Arrow mapping of the ten types (sql.md §2): schema fields, building arrays from values
//! and reading values back. Used by kalamd's read path and kalam-flushd's Parquet writer.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, Date32Builder, Float64Builder, Int32Builder, Int64Builder, StringBuilder,
    Time64MicrosecondBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Float64Type, Int32Type, Int64Type, Time64MicrosecondType, TimestampMicrosecondType,
};
use arrow_array::{Array, ArrayRef};
use arrow_schema::{DataType, Field, Schema, TimeUnit};

use crate::datatype::KalamType;
use crate::schema::{DELETED_COLUMN, TableDefinition, UPDATED_COLUMN};
use crate::value::Value;

/// Field metadata key carrying a column's stable id.
pub const COLUMN_ID_KEY: &str = "kalamdb.column_id";

pub fn arrow_type(ty: KalamType) -> DataType {
    match ty {
        KalamType::Boolean => DataType::Boolean,
        KalamType::Int => DataType::Int32,
        KalamType::BigInt => DataType::Int64,
        KalamType::Double => DataType::Float64,
        KalamType::Text | KalamType::Json => DataType::Utf8,
        KalamType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
        KalamType::Date => DataType::Date32,
        KalamType::Time => DataType::Time64(TimeUnit::Microsecond),
        KalamType::Bytes => DataType::Binary,
    }
}

/// The Arrow schema of a table: user columns in ordinal order, then `_updated` and `_deleted`
/// when `with_system_columns`. Only the primary key is non-nullable in Arrow: NOT NULL is
/// enforced on writes, and soft-deleted or older versions of a row may still hold NULL in a
/// column made NOT NULL later.
pub fn table_schema(def: &TableDefinition, with_system_columns: bool) -> Schema {
    let mut fields: Vec<Field> = def
        .columns
        .iter()
        .map(|c| {
            Field::new(&c.name, arrow_type(c.data_type), !c.is_primary_key)
                .with_metadata(HashMap::from([(COLUMN_ID_KEY.to_owned(), c.column_id.to_string())]))
        })
        .collect();
    if with_system_columns {
        fields.push(Field::new(UPDATED_COLUMN, arrow_type(KalamType::Timestamp), false));
        fields.push(Field::new(DELETED_COLUMN, DataType::Boolean, false));
    }
    Schema::new(fields)
}

/// Builds one Arrow array of type `ty` from `values` (NULLs become validity bits). A value of
/// another type is stored as NULL; callers validate before building.
pub fn build_array<'a>(ty: KalamType, values: impl Iterator<Item = &'a Value>) -> ArrayRef {
    macro_rules! build {
        ($builder:expr, $pat:pat => $out:expr) => {{
            let mut b = $builder;
            for v in values {
                match v {
                    $pat => b.append_value($out),
                    _ => b.append_null(),
                }
            }
            Arc::new(b.finish()) as ArrayRef
        }};
    }
    match ty {
        KalamType::Boolean => build!(BooleanBuilder::new(), Value::Boolean(x) => *x),
        KalamType::Int => build!(Int32Builder::new(), Value::Int(x) => *x),
        KalamType::BigInt => build!(Int64Builder::new(), Value::BigInt(x) => *x),
        KalamType::Double => build!(Float64Builder::new(), Value::Double(x) => *x),
        KalamType::Text => build!(StringBuilder::new(), Value::Text(x) => x),
        KalamType::Json => build!(StringBuilder::new(), Value::Json(x) => x),
        KalamType::Timestamp => build!(TimestampMicrosecondBuilder::new(), Value::Timestamp(x) => *x),
        KalamType::Date => build!(Date32Builder::new(), Value::Date(x) => *x),
        KalamType::Time => build!(Time64MicrosecondBuilder::new(), Value::Time(x) => *x),
        KalamType::Bytes => build!(BinaryBuilder::new(), Value::Bytes(x) => x),
    }
}

/// Reads row `row` of `array` as a value of `ty`. Returns `None` when the array's Arrow type is
/// not the mapping of `ty` (a file written under another schema needs projection first).
pub fn value_at(array: &dyn Array, row: usize, ty: KalamType) -> Option<Value> {
    if array.data_type() != &arrow_type(ty) {
        return None;
    }
    if array.is_null(row) {
        return Some(Value::Null);
    }
    Some(match ty {
        KalamType::Boolean => Value::Boolean(array.as_boolean().value(row)),
        KalamType::Int => Value::Int(array.as_primitive::<Int32Type>().value(row)),
        KalamType::BigInt => Value::BigInt(array.as_primitive::<Int64Type>().value(row)),
        KalamType::Double => Value::Double(array.as_primitive::<Float64Type>().value(row)),
        KalamType::Text => Value::Text(array.as_string::<i32>().value(row).to_owned()),
        KalamType::Json => Value::Json(array.as_string::<i32>().value(row).to_owned()),
        KalamType::Timestamp => Value::Timestamp(array.as_primitive::<TimestampMicrosecondType>().value(row)),
        KalamType::Date => Value::Date(array.as_primitive::<Date32Type>().value(row)),
        KalamType::Time => Value::Time(array.as_primitive::<Time64MicrosecondType>().value(row)),
        KalamType::Bytes => Value::Bytes(array.as_binary::<i32>().value(row).to_vec()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_round_trip_every_type() {
        let cases = [
            (KalamType::Boolean, Value::Boolean(true)),
            (KalamType::Int, Value::Int(i32::MIN)),
            (KalamType::BigInt, Value::BigInt(i64::MAX)),
            (KalamType::Double, Value::Double(-0.5)),
            (KalamType::Text, Value::Text("t".into())),
            (KalamType::Timestamp, Value::Timestamp(123)),
            (KalamType::Date, Value::Date(19000)),
            (KalamType::Time, Value::Time(5)),
            (KalamType::Json, Value::Json("[1]".into())),
            (KalamType::Bytes, Value::Bytes(vec![1, 2])),
        ];
        for (ty, v) in cases {
            let arr = build_array(ty, [v.clone(), Value::Null].iter());
            assert_eq!(value_at(arr.as_ref(), 0, ty), Some(v));
            assert_eq!(value_at(arr.as_ref(), 1, ty), Some(Value::Null));
        }
    }
}
