//! Rows as ordered JSON objects: keys follow the column order (result envelopes, live rows and
//! change-log records all use this).

use kalam_types::Value;
use kalam_types::schema::{DELETED_COLUMN, TableDefinition, TableType, UPDATED_COLUMN};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value as Json;

/// A JSON object whose keys keep their insertion order when serialized.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OrderedRow(pub Vec<(String, Json)>);

impl Serialize for OrderedRow {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// The full row of a table version, system columns included (STREAM tables have none), as JSON
/// text.
pub fn full_row_json(def: &TableDefinition, values: &[Value], updated_us: i64, deleted: bool) -> String {
    let mut row = OrderedRow(Vec::with_capacity(values.len() + 2));
    for (col, v) in def.columns.iter().zip(values) {
        row.0.push((col.name.clone(), v.to_json()));
    }
    if def.table_type != TableType::Stream {
        row.0.push((UPDATED_COLUMN.to_owned(), Value::Timestamp(updated_us).to_json()));
        row.0.push((DELETED_COLUMN.to_owned(), Json::Bool(deleted)));
    }
    serde_json::to_string(&row).unwrap_or_else(|_| "{}".to_owned())
}
