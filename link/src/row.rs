//! [`Row`]: a JSON object that keeps its keys in the order the server sent them (the column
//! order), which `serde_json::Map` does not without its `preserve_order` feature.

use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value as Json};

/// One row of a live result: column name → value, in column order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Row(Vec<(String, Json)>);

const NULL: Json = Json::Null;

impl Row {
    pub fn new() -> Self {
        Self::default()
    }

    /// The value of `column`, if the row has it.
    pub fn get(&self, column: &str) -> Option<&Json> {
        self.0.iter().find(|(k, _)| k == column).map(|(_, v)| v)
    }

    /// Sets `column` (in place when present, appended otherwise).
    pub fn insert(&mut self, column: impl Into<String>, value: Json) {
        let column = column.into();
        match self.0.iter_mut().find(|(k, _)| *k == column) {
            Some((_, v)) => *v = value,
            None => self.0.push((column, value)),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Json)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The row as a `serde_json` object (keys sorted).
    pub fn to_map(&self) -> Map<String, Json> {
        self.0.iter().cloned().collect()
    }
}

impl std::ops::Index<&str> for Row {
    type Output = Json;

    /// `Null` for a column the row lacks, like `serde_json::Value`'s indexing.
    fn index(&self, column: &str) -> &Json {
        self.get(column).unwrap_or(&NULL)
    }
}

impl FromIterator<(String, Json)> for Row {
    fn from_iter<I: IntoIterator<Item = (String, Json)>>(iter: I) -> Self {
        let mut row = Row::new();
        for (k, v) in iter {
            row.insert(k, v);
        }
        row
    }
}

/// Compact JSON text, keys in column order.
impl fmt::Display for Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&serde_json::to_string(self).map_err(|_| fmt::Error)?)
    }
}

impl Serialize for Row {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Row {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RowVisitor;
        impl<'de> Visitor<'de> for RowVisitor {
            type Value = Row;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Row, A::Error> {
                let mut row = Row(Vec::with_capacity(access.size_hint().unwrap_or(0)));
                while let Some((k, v)) = access.next_entry::<String, Json>()? {
                    row.insert(k, v);
                }
                Ok(row)
            }
        }
        deserializer.deserialize_map(RowVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_their_order_through_a_round_trip() {
        let row: Row = serde_json::from_str(r#"{"z":1,"a":{"y":2,"b":3},"m":null}"#).unwrap();
        assert_eq!(row.iter().map(|(k, _)| k).collect::<Vec<_>>(), vec!["z", "a", "m"]);
        assert_eq!(row.to_string(), r#"{"z":1,"a":{"b":3,"y":2},"m":null}"#);
        assert_eq!(row["z"], 1);
        assert_eq!(row["missing"], Json::Null);
        assert!(serde_json::from_str::<Row>("[1]").is_err());
    }
}
