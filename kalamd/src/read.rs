//! The merged read of one partition (storage.md §9): Parquet files from the manifest plus the
//! RocksDB buffer, one version per primary key (greatest `_updated`, the buffer winning ties).

use std::collections::{BTreeMap, HashSet};
use std::fs::File;

use datafusion::parquet::arrow::ProjectionMask;
use datafusion::parquet::arrow::arrow_reader::{ArrowReaderMetadata, ParquetRecordBatchReaderBuilder, RowSelection};
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
    manifest_under(engine, &prefix)
}

/// Every manifest entry of a table (all users).
pub fn table_files(engine: &Engine, def: &TableDefinition) -> Result<Vec<ManifestEntry>, EngineError> {
    manifest_under(engine, format!("{}:{}:", def.namespace, def.name).as_bytes())
}

fn manifest_under(engine: &Engine, prefix: &[u8]) -> Result<Vec<ManifestEntry>, EngineError> {
    engine
        .store
        .scan_prefix(cf::TABLE_FILES, prefix)?
        .into_iter()
        .map(|(_, v)| serde_json::from_slice(&v).map_err(|e| EngineError::corrupt(cf::TABLE_FILES, e)))
        .collect()
}

/// Keeps `row` for its key unless a version at least as new is there (files: the newest
/// `_updated` wins).
fn keep_newest(merged: &mut BTreeMap<Vec<u8>, MergedRow>, def: &TableDefinition, row: MergedRow) {
    let Some(pk) = codec::encode_pk(&row.values[def.primary_key_index()]) else { return };
    match merged.get(&pk) {
        Some(existing) if existing.updated_us >= row.updated_us => {}
        _ => {
            merged.insert(pk, row);
        }
    }
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
    let hot = read_buffer(engine, def, user)?;
    let mut merged = read_cold(engine, def, &manifest_entries(engine, def, user)?)?;
    let pk_idx = def.primary_key_index();
    for row in hot {
        let Some(pk) = codec::encode_pk(&row.values[pk_idx]) else { continue };
        match merged.get(&pk) {
            Some(existing) if existing.updated_us > row.updated_us => {}
            _ => {
                merged.insert(pk, row);
            }
        }
    }
    Ok(merged.into_values().collect())
}

/// The buffered rows of a USER/SHARED partition (`user` is `None` for SHARED tables), in
/// primary-key order, decoded onto `def`'s schema.
pub fn read_buffer(
    engine: &Engine,
    def: &TableDefinition,
    user: Option<&UserId>,
) -> Result<Vec<MergedRow>, EngineError> {
    let prefix = user.map(codec::user_prefix).unwrap_or_default();
    let newer = engine.catalog.newer_version(def);
    let decoder = match &newer {
        Some(n) => codec::RowDecoder::with_versions(def, n),
        None => codec::RowDecoder::new(def),
    };
    engine
        .store
        .scan_prefix(&table_cf_name(def), &prefix)?
        .into_iter()
        .map(|(_, bytes)| {
            let row = decoder.decode(&bytes).map_err(|e| EngineError::corrupt("table", e))?;
            Ok(MergedRow { values: row.values, updated_us: row.updated_us, deleted: row.deleted, buffered: true })
        })
        .collect()
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
fn read_cold(
    engine: &Engine,
    def: &TableDefinition,
    entries: &[ManifestEntry],
) -> Result<BTreeMap<Vec<u8>, MergedRow>, EngineError> {
    let mut merged: BTreeMap<Vec<u8>, MergedRow> = BTreeMap::new();
    for entry in entries {
        for row in read_parquet(engine, def, entry)? {
            keep_newest(&mut merged, def, row);
        }
    }
    Ok(merged)
}

fn parquet_error(path: &std::path::Path, e: impl std::fmt::Display) -> EngineError {
    EngineError::Parquet(format!("{}: {e}", path.display()))
}

/// Reads one flushed file, projecting its columns onto the current definition by column id
/// (field metadata), so files written before an ALTER TABLE read through the current schema.
fn read_parquet(engine: &Engine, def: &TableDefinition, entry: &ManifestEntry) -> Result<Vec<MergedRow>, EngineError> {
    let (path, source) = engine.open_file(entry)?;
    let metadata = engine.parquet_metadata(&path, &source)?;
    let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(source, metadata)
        .build()
        .map_err(|e| parquet_error(&path, e))?;
    let mut rows = Vec::new();
    for batch in reader {
        batch_rows(def, &batch.map_err(|e| parquet_error(&path, e))?, &path, &mut rows)?;
    }
    Ok(rows)
}

/// Reads only the rows of one flushed file whose primary key is in `wanted`: a first pass
/// decodes the key column alone, a second reads the matching rows.
fn lookup_parquet(
    engine: &Engine,
    def: &TableDefinition,
    entry: &ManifestEntry,
    wanted: &HashSet<Vec<u8>>,
) -> Result<Vec<MergedRow>, EngineError> {
    let (path, source) = engine.open_file(entry)?;
    let pk_col = &def.columns[def.primary_key_index()];
    let metadata = engine.parquet_metadata(&path, &source)?;
    let open = || {
        let source = source.try_clone().map_err(|e| parquet_error(&path, e))?;
        Ok::<_, EngineError>(ParquetRecordBatchReaderBuilder::new_with_metadata(source, metadata.clone()))
    };
    let builder = open()?;
    let id = pk_col.column_id.to_string();
    let Some(leaf) = builder.schema().fields().iter().position(|f| f.metadata().get(COLUMN_ID_KEY) == Some(&id)) else {
        // A file without the key column cannot be matched by key: read it whole.
        return read_parquet(engine, def, entry);
    };
    let mask = ProjectionMask::leaves(builder.parquet_schema(), [leaf]);
    let mut selected: Vec<std::ops::Range<usize>> = Vec::new();
    let mut offset = 0;
    for batch in builder.with_projection(mask).build().map_err(|e| parquet_error(&path, e))? {
        let batch = batch.map_err(|e| parquet_error(&path, e))?;
        let keys = batch.column(0);
        for r in 0..batch.num_rows() {
            let value = cold_value(keys.as_ref(), r, pk_col);
            if codec::encode_pk(&value).is_some_and(|pk| wanted.contains(&pk)) {
                selected.push(offset + r..offset + r + 1);
            }
        }
        offset += batch.num_rows();
    }
    if selected.is_empty() {
        return Ok(Vec::new());
    }
    let selection = RowSelection::from_consecutive_ranges(selected.into_iter(), offset);
    let reader = open()?.with_row_selection(selection).build().map_err(|e| parquet_error(&path, e))?;
    let mut rows = Vec::new();
    for batch in reader {
        batch_rows(def, &batch.map_err(|e| parquet_error(&path, e))?, &path, &mut rows)?;
    }
    Ok(rows)
}

/// Converts one batch of a flushed file into rows of the current schema.
fn batch_rows(
    def: &TableDefinition,
    batch: &datafusion::arrow::record_batch::RecordBatch,
    path: &std::path::Path,
    rows: &mut Vec<MergedRow>,
) -> Result<(), EngineError> {
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
    Ok(())
}

/// The newest version of each of `pks` in the given flushed files (only files whose key range
/// may hold a wanted key are opened, and only matching rows are decoded).
pub fn lookup_cold(
    engine: &Engine,
    def: &TableDefinition,
    entries: &[ManifestEntry],
    pks: &[Vec<u8>],
) -> Result<BTreeMap<Vec<u8>, MergedRow>, EngineError> {
    let mut merged: BTreeMap<Vec<u8>, MergedRow> = BTreeMap::new();
    for entry in entries {
        let wanted: HashSet<Vec<u8>> = pks.iter().filter(|pk| entry.may_contain(pk)).cloned().collect();
        if wanted.is_empty() {
            continue;
        }
        for row in lookup_parquet(engine, def, entry, &wanted)? {
            keep_newest(&mut merged, def, row);
        }
    }
    Ok(merged)
}

/// The merged newest version of each of `pks` in one partition (buffer and files), without
/// reading the rest of the partition: the point-lookup path of primary-key SELECTs.
pub fn lookup_keys(
    engine: &Engine,
    def: &TableDefinition,
    user: Option<&UserId>,
    pks: &[Vec<u8>],
) -> Result<BTreeMap<Vec<u8>, MergedRow>, EngineError> {
    let user = if def.table_type == TableType::Shared { None } else { user };
    let cf_name = table_cf_name(def);
    let newer = engine.catalog.newer_version(def);
    let decoder = match &newer {
        Some(n) => codec::RowDecoder::with_versions(def, n),
        None => codec::RowDecoder::new(def),
    };
    // Buffer before manifest, as in `read_partition`.
    let mut hot = BTreeMap::new();
    for pk in pks {
        let key = match user {
            Some(u) => codec::user_row_key(u, pk),
            None => pk.clone(),
        };
        if let Some(bytes) = engine.store.get(&cf_name, &key)? {
            let row = decoder.decode(&bytes).map_err(|e| EngineError::corrupt("table", e))?;
            hot.insert(
                pk.clone(),
                MergedRow { values: row.values, updated_us: row.updated_us, deleted: row.deleted, buffered: true },
            );
        }
    }
    let mut merged = lookup_cold(engine, def, &manifest_entries(engine, def, user)?, pks)?;
    for (pk, row) in hot {
        match merged.get(&pk) {
            Some(existing) if existing.updated_us > row.updated_us => {}
            _ => {
                merged.insert(pk, row);
            }
        }
    }
    Ok(merged)
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

/// Parsed footers of flushed files, which never change once written: point lookups open the
/// same files again and again. Bounded; emptied when full.
#[derive(Default)]
pub struct ParquetMetadataCache {
    entries: std::sync::Mutex<std::collections::HashMap<std::path::PathBuf, ArrowReaderMetadata>>,
}

impl ParquetMetadataCache {
    /// Empties the cache; returns how many footers it held.
    pub fn clear(&self) -> usize {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let n = entries.len();
        entries.clear();
        n
    }
}

/// Most cached footers.
const MAX_CACHED_FOOTERS: usize = 4096;

impl Engine {
    /// The parsed footer of a flushed file (cached by its path or URI).
    pub fn parquet_metadata(
        &self,
        path: &std::path::Path,
        source: &FileSource,
    ) -> Result<ArrowReaderMetadata, EngineError> {
        let cache = &self.parquet_footers.entries;
        if let Some(m) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(path) {
            return Ok(m.clone());
        }
        let metadata = ArrowReaderMetadata::load(source, Default::default()).map_err(|e| parquet_error(path, e))?;
        let mut entries = cache.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_CACHED_FOOTERS {
            entries.clear();
        }
        entries.insert(path.to_path_buf(), metadata.clone());
        Ok(metadata)
    }
}

/// A flushed file to read: a local file, or the bytes of an S3 object (fetched whole).
pub enum FileSource {
    File(File),
    Bytes(bytes::Bytes),
}

impl FileSource {
    fn try_clone(&self) -> std::io::Result<FileSource> {
        Ok(match self {
            FileSource::File(f) => FileSource::File(f.try_clone()?),
            FileSource::Bytes(b) => FileSource::Bytes(b.clone()),
        })
    }
}

impl datafusion::parquet::file::reader::Length for FileSource {
    fn len(&self) -> u64 {
        match self {
            FileSource::File(f) => f.len(),
            FileSource::Bytes(b) => b.len() as u64,
        }
    }
}

impl datafusion::parquet::file::reader::ChunkReader for FileSource {
    type T = Box<dyn std::io::Read + Send>;

    fn get_read(&self, start: u64) -> datafusion::parquet::errors::Result<Self::T> {
        Ok(match self {
            FileSource::File(f) => Box::new(f.get_read(start)?),
            FileSource::Bytes(b) => Box::new(b.get_read(start)?),
        })
    }

    fn get_bytes(&self, start: u64, length: usize) -> datafusion::parquet::errors::Result<bytes::Bytes> {
        match self {
            FileSource::File(f) => f.get_bytes(start, length),
            FileSource::Bytes(b) => b.get_bytes(start, length),
        }
    }
}

impl Engine {
    /// Opens a manifest entry's file: local files by path, S3 objects through their storage.
    pub fn open_file(&self, entry: &ManifestEntry) -> Result<(std::path::PathBuf, FileSource), EngineError> {
        let path = entry.full_path(self);
        match entry.base.as_deref().filter(|b| b.starts_with("s3://")) {
            None => {
                let file = File::open(&path).map_err(|e| parquet_error(&path, e))?;
                Ok((path, FileSource::File(file)))
            }
            Some(base) => {
                let store = self.s3_store_at(&entry.storage_id, base)?;
                let bytes = store.get(&entry.path).map_err(|e| parquet_error(&path, e))?;
                Ok((path, FileSource::Bytes(bytes)))
            }
        }
    }
}
