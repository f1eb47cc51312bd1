//! The merged read of one partition (storage.md §9): Parquet files from the manifest plus the
//! RocksDB buffer, one version per primary key (greatest `_updated`, the buffer winning ties).

use std::collections::BTreeMap;
use std::fs::File;

use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use kalam_types::arrow::{COLUMN_ID_KEY, value_at};
use kalam_types::codec;
use kalam_types::ids::UserId;
use kalam_types::schema::{
    ColumnDefinition, DELETED_COLUMN, TableDefinition, TableType, UPDATED_COLUMN, added_column_value,
};
use kalam_types::{KalamType, Value};

use crate::engine::Engine;
use crate::error::EngineError;
use crate::flush::ManifestEntry;
use crate::store::{cf, manifest_prefix, table_cf_name};

/// One visible row version.
#[derive(Debug, Clone, PartialEq)]
pub struct MergedRow {
    pub values: Vec<Value>,
    pub updated_us: i64,
    pub deleted: bool,
    /// The version comes from the RocksDB buffer (or the stream buffer), not from a file.
    pub buffered: bool,
}

/// The partition's manifest entries (USER tables: one user's files).
pub fn manifest_entries(
    engine: &Engine,
    def: &TableDefinition,
    user: Option<&UserId>,
) -> Result<Vec<ManifestEntry>, EngineError> {
    let prefix = manifest_prefix(def.namespace.as_str(), def.name.as_str(), user.map(UserId::as_str));
    engine
        .store
        .scan_prefix(cf::TABLE_FILES, &prefix)?
        .into_iter()
        .map(|(_, v)| serde_json::from_slice(&v).map_err(|e| EngineError::corrupt(cf::TABLE_FILES, e)))
        .collect()
}

/// Reads a partition, merged by primary key, in key order. Deleted versions are kept (callers
/// decide whether to show them).
pub fn read_partition(
    engine: &Engine,
    def: &TableDefinition,
    user: Option<&UserId>,
) -> Result<Vec<MergedRow>, EngineError> {
    let user = if def.table_type == TableType::Shared { None } else { user };
    if def.table_type == TableType::Stream {
        let user = user.ok_or_else(|| EngineError::internal("stream read without a user"))?;
        return Ok(engine.streams.rows(def, user));
    }
    // The buffer is read before the manifest: a flush committing in between moves rows from the
    // buffer into a file we then also read, so a row is seen at least once (the merge removes
    // the duplicate). The other order could miss it.
    let prefix = user.map(codec::user_prefix).unwrap_or_default();
    let hot = engine.store.scan_prefix(&table_cf_name(def), &prefix)?;
    let mut merged = read_cold(engine, def, &manifest_entries(engine, def, user)?)?;
    let decoder = codec::RowDecoder::new(def);
    for (key, bytes) in hot {
        let pk = key[prefix.len()..].to_vec();
        let row = decoder.decode(&bytes).map_err(|e| EngineError::corrupt("table", e))?;
        let row = MergedRow { values: row.values, updated_us: row.updated_us, deleted: row.deleted, buffered: true };
        match merged.get(&pk) {
            Some(existing) if existing.updated_us > row.updated_us => {}
            _ => {
                merged.insert(pk, row);
            }
        }
    }
    Ok(merged.into_values().collect())
}

/// Every partition of a table: `[None]` for SHARED tables, each user with buffered rows or
/// flushed files for USER tables, each user with retained rows for STREAM tables.
pub fn partitions(engine: &Engine, def: &TableDefinition) -> Result<Vec<Option<UserId>>, EngineError> {
    match def.table_type {
        TableType::Shared => Ok(vec![None]),
        TableType::Stream => Ok(engine.streams.users(def).into_iter().map(Some).collect()),
        TableType::User => {
            let mut users: std::collections::BTreeSet<String> =
                engine.store.buffered_users(&table_cf_name(def))?.into_iter().collect();
            let prefix = format!("{}:{}:", def.namespace, def.name).into_bytes();
            for (key, _) in engine.store.scan_prefix(cf::TABLE_FILES, &prefix)? {
                let rest = &key[prefix.len()..];
                if let Some(end) = rest.iter().position(|b| *b == b':') {
                    users.insert(String::from_utf8_lossy(&rest[..end]).into_owned());
                }
            }
            Ok(users.into_iter().filter_map(|u| UserId::parse(&u).ok()).map(Some).collect())
        }
    }
}

/// True when any visible row of any partition holds NULL in column `idx`.
pub fn any_visible_null(engine: &Engine, def: &TableDefinition, idx: usize) -> Result<bool, EngineError> {
    for user in partitions(engine, def)? {
        let rows = read_partition(engine, def, user.as_ref())?;
        if rows.iter().any(|r| !r.deleted && r.values[idx].is_null()) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The newest version of every key in the given flushed files, keyed by primary-key bytes.
pub fn read_cold(
    engine: &Engine,
    def: &TableDefinition,
    entries: &[ManifestEntry],
) -> Result<BTreeMap<Vec<u8>, MergedRow>, EngineError> {
    let mut merged: BTreeMap<Vec<u8>, MergedRow> = BTreeMap::new();
    let pk_idx = def.primary_key_index();
    for entry in entries {
        for row in read_parquet(engine, def, entry)? {
            let Some(pk) = codec::encode_pk(&row.values[pk_idx]) else { continue };
            match merged.get(&pk) {
                Some(existing) if existing.updated_us >= row.updated_us => {}
                _ => {
                    merged.insert(pk, row);
                }
            }
        }
    }
    Ok(merged)
}

/// Reads one flushed file, projecting its columns onto the current definition by column id
/// (field metadata), so files written before an ALTER TABLE read through the current schema.
fn read_parquet(engine: &Engine, def: &TableDefinition, entry: &ManifestEntry) -> Result<Vec<MergedRow>, EngineError> {
    let path = engine.storage_base().join(&entry.path);
    let file = File::open(&path).map_err(|e| EngineError::Parquet(format!("{}: {e}", path.display())))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .map_err(|e| EngineError::Parquet(format!("{}: {e}", path.display())))?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| EngineError::Parquet(format!("{}: {e}", path.display())))?;
        let schema = batch.schema();
        let col_of = |name: &str| schema.index_of(name).ok().map(|i| batch.column(i).clone());
        let by_id = |id: u32| {
            let id = id.to_string();
            let field = schema.fields().iter().position(|f| f.metadata().get(COLUMN_ID_KEY) == Some(&id));
            field.map(|i| batch.column(i).clone())
        };
        let columns: Vec<_> = def.columns.iter().map(|c| by_id(c.column_id)).collect();
        let (Some(updated), Some(deleted)) = (col_of(UPDATED_COLUMN), col_of(DELETED_COLUMN)) else {
            return Err(EngineError::Parquet(format!("{}: system columns missing", path.display())));
        };
        for r in 0..batch.num_rows() {
            let values = def
                .columns
                .iter()
                .zip(&columns)
                .map(|(c, arr)| match arr {
                    Some(a) => cold_value(a.as_ref(), r, c),
                    None => added_column_value(c),
                })
                .collect();
            let updated_us = match value_at(updated.as_ref(), r, KalamType::Timestamp) {
                Some(Value::Timestamp(t)) => t,
                _ => 0,
            };
            let deleted = matches!(value_at(deleted.as_ref(), r, KalamType::Boolean), Some(Value::Boolean(true)));
            rows.push(MergedRow { values, updated_us, deleted, buffered: false });
        }
    }
    Ok(rows)
}

/// A cell of a flushed file as a value of the column's current type (INT files widen to BIGINT).
fn cold_value(array: &dyn datafusion::arrow::array::Array, row: usize, col: &ColumnDefinition) -> Value {
    if col.data_type == KalamType::BigInt && array.data_type() == &datafusion::arrow::datatypes::DataType::Int32 {
        return match value_at(array, row, KalamType::Int) {
            Some(Value::Int(i)) => Value::BigInt(i64::from(i)),
            _ => Value::Null,
        };
    }
    value_at(array, row, col.data_type).unwrap_or(Value::Null)
}
