//! One flush attempt on kalam-flushd's side: read the job's checkpoint (read-only), group rows
//! by user (USER tables) or as one group (SHARED), and write each group as Parquet under a name
//! derived from the job, via a temporary file that is fsynced and renamed.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use kalam_rpc::{FlushPlan, FlushedFile};
use kalam_storage::s3::{S3Location, S3Store};
use kalam_storage::{Templates, group_dir, parquet_file_name, temp_file_name};
use kalam_types::arrow::{build_array, table_schema};
use kalam_types::codec::{self, StoredRow};
use kalam_types::schema::{TableDefinition, TableType};
use kalam_types::{KalamType, Value};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use rocksdb::{DB, IteratorMode, Options};

#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    #[error("checkpoint {path}: {source}")]
    Checkpoint { path: String, source: rocksdb::Error },
    #[error("checkpoint {0} lacks the table's column family")]
    MissingColumnFamily(String),
    #[error("row codec: {0}")]
    Codec(#[from] codec::CodecError),
    #[error("storage path: {0}")]
    Path(#[from] kalam_storage::PathError),
    #[error("writing {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("parquet {path}: {source}")]
    Parquet { path: String, source: parquet::errors::ParquetError },
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("the job was cancelled")]
    Cancelled,
    #[error("object store {path}: {detail}")]
    ObjectStore { path: String, detail: String },
}

/// The S3 client of the plan's storage (`None` for filesystem storages).
fn s3_store(plan: &FlushPlan) -> Result<Option<S3Store>, FlushError> {
    if plan.storage_type != "s3" {
        return Ok(None);
    }
    let fail = |detail: String| FlushError::ObjectStore { path: plan.storage_base.clone(), detail };
    let location = S3Location::parse(&plan.storage_base).map_err(fail)?;
    let credentials = match plan.credentials.as_deref() {
        Some(text) => serde_json::from_str(text).map_err(|e: serde_json::Error| fail(e.to_string()))?,
        None => serde_json::Map::new(),
    };
    S3Store::open(location, &credentials).map(Some).map_err(fail)
}

impl FlushError {
    /// The error as recorded in `system.jobs`: its kind, without paths or backend detail
    /// (those are in kalam-flushd's log).
    pub fn public_message(&self) -> String {
        match self {
            FlushError::Checkpoint { .. } | FlushError::MissingColumnFamily(_) => "cannot read the job's checkpoint",
            FlushError::Codec(_) => "a buffered row could not be decoded",
            FlushError::Path(_) => "the storage path template could not be resolved",
            FlushError::Io { .. } => "storage I/O error while writing Parquet",
            FlushError::Parquet { .. } | FlushError::Arrow(_) => "Parquet encoding error",
            FlushError::Cancelled => "cancelled",
            FlushError::ObjectStore { .. } => "storage I/O error while writing Parquet",
        }
        .to_owned()
    }
}

/// Writes every group of the plan and returns the files, ready for kalamd's commit. When it
/// fails, or `cancelled` turns true between groups, the files already written are removed:
/// nothing of an attempt that will not commit stays in the storage.
pub fn write_job(plan: &FlushPlan, cancelled: &dyn Fn() -> bool) -> Result<Vec<FlushedFile>, FlushError> {
    let mut files = Vec::new();
    match write_groups(plan, cancelled, &mut files) {
        Ok(()) => Ok(files),
        Err(e) => {
            remove_files(plan, &files);
            Err(e)
        }
    }
}

/// Deletes files of an attempt that did not (and will not) commit.
pub fn remove_files(plan: &FlushPlan, files: &[FlushedFile]) {
    if let Ok(Some(s3)) = s3_store(plan) {
        for f in files {
            if let Err(e) = s3.delete(&f.path) {
                tracing::warn!(path = %f.path, error = %e, "could not remove an uncommitted flush object");
            }
        }
        return;
    }
    for f in files {
        let path = Path::new(&plan.storage_base).join(&f.path);
        if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "could not remove an uncommitted flush file");
        }
    }
}

fn write_groups(
    plan: &FlushPlan,
    cancelled: &dyn Fn() -> bool,
    files: &mut Vec<FlushedFile>,
) -> Result<(), FlushError> {
    let def = &plan.table;
    let db =
        DB::open_cf_for_read_only(&Options::default(), &plan.checkpoint_path, [plan.column_family.as_str()], false)
            .map_err(|source| FlushError::Checkpoint { path: plan.checkpoint_path.clone(), source })?;
    let cf = db
        .cf_handle(&plan.column_family)
        .ok_or_else(|| FlushError::MissingColumnFamily(plan.checkpoint_path.clone()))?;
    let decoder = codec::RowDecoder::new(def);
    let schema: SchemaRef = Arc::new(table_schema(def, true));
    let mut group: Vec<StoredRow> = Vec::new();
    let mut group_user: Option<String> = None;
    for item in db.iterator_cf(&cf, IteratorMode::Start) {
        let (key, value) =
            item.map_err(|source| FlushError::Checkpoint { path: plan.checkpoint_path.clone(), source })?;
        let user = match def.table_type {
            TableType::Shared => None,
            _ => Some(codec::split_user_row_key(&key)?.0.to_owned()),
        };
        if user != group_user && !group.is_empty() {
            if cancelled() {
                return Err(FlushError::Cancelled);
            }
            files.push(write_group(plan, &schema, group_user.as_deref(), &std::mem::take(&mut group))?);
        }
        group_user = user;
        group.push(decoder.decode(&value)?);
    }
    if !group.is_empty() {
        if cancelled() {
            return Err(FlushError::Cancelled);
        }
        files.push(write_group(plan, &schema, group_user.as_deref(), &group)?);
    }
    Ok(())
}

fn write_group(
    plan: &FlushPlan,
    schema: &SchemaRef,
    user: Option<&str>,
    rows: &[StoredRow],
) -> Result<FlushedFile, FlushError> {
    let def = &plan.table;
    let templates = Templates { shared: plan.shared_template.clone(), user: plan.user_template.clone() };
    let rel_dir =
        group_dir(def.table_type, def.namespace.as_str(), def.name.as_str(), user, def.options.sharding, &templates)?;
    let name = parquet_file_name(plan.job_created_at_us, &plan.job_id, 1);
    let batch = to_batch(def, schema, rows)?;
    let pk_idx = def.primary_key_index();
    let pk_of = |r: Option<&StoredRow>| r.and_then(|r| codec::encode_pk(&r.values[pk_idx])).unwrap_or_default();
    let (min_pk, max_pk) = (pk_of(rows.first()), pk_of(rows.last()));
    let min_updated = rows.iter().map(|r| r.updated_us).min().unwrap_or(0);
    let max_updated = rows.iter().map(|r| r.updated_us).max().unwrap_or(0);
    let props = writer_properties(plan, user, min_updated, max_updated);
    let rel_path = PathBuf::from(&rel_dir).join(&name).display().to_string();
    let flushed = |size_bytes| FlushedFile {
        user_id: user.map(str::to_owned),
        path: rel_path.clone(),
        size_bytes,
        row_count: rows.len() as u64,
        min_updated_us: min_updated,
        max_updated_us: max_updated,
        min_pk: min_pk.clone(),
        max_pk: max_pk.clone(),
    };
    if let Some(s3) = s3_store(plan)? {
        // One PUT of the whole file: an object is either absent or complete.
        let parquet_err = |source| FlushError::Parquet { path: rel_path.clone(), source };
        let mut writer = ArrowWriter::try_new(Vec::new(), schema.clone(), Some(props)).map_err(parquet_err)?;
        writer.write(&batch).map_err(parquet_err)?;
        let bytes = writer.into_inner().map_err(parquet_err)?;
        let size = bytes.len() as u64;
        s3.put(&rel_path, bytes).map_err(|e| FlushError::ObjectStore { path: rel_path.clone(), detail: e })?;
        return Ok(flushed(size));
    }
    let dir = Path::new(&plan.storage_base).join(&rel_dir);
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| FlushError::Io { path, source }
    };
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let final_path = dir.join(&name);
    let temp_path = dir.join(temp_file_name(&name));
    let written = (|| {
        let file = File::create(&temp_path).map_err(io(&temp_path))?;
        let parquet_err = |source| FlushError::Parquet { path: temp_path.display().to_string(), source };
        let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(parquet_err)?;
        writer.write(&batch).map_err(parquet_err)?;
        let file = writer.into_inner().map_err(parquet_err)?;
        file.sync_all().map_err(io(&temp_path))?;
        let size_bytes = file.metadata().map_err(io(&temp_path))?.len();
        drop(file);
        std::fs::rename(&temp_path, &final_path).map_err(io(&final_path))?;
        Ok(size_bytes)
    })();
    let size_bytes = match written {
        Ok(n) => n,
        Err(e) => {
            // A half-written temporary file is never visible, but it must not stay either.
            let _ = std::fs::remove_file(&temp_path);
            return Err(e);
        }
    };
    File::open(&dir).and_then(|d| d.sync_all()).map_err(io(&dir))?;
    Ok(flushed(size_bytes))
}

fn to_batch(def: &TableDefinition, schema: &SchemaRef, rows: &[StoredRow]) -> Result<RecordBatch, FlushError> {
    let mut arrays = Vec::with_capacity(def.columns.len() + 2);
    for (i, col) in def.columns.iter().enumerate() {
        arrays.push(build_array(col.data_type, rows.iter().map(|r| &r.values[i])));
    }
    let updated: Vec<Value> = rows.iter().map(|r| Value::Timestamp(r.updated_us)).collect();
    let deleted: Vec<Value> = rows.iter().map(|r| Value::Boolean(r.deleted)).collect();
    arrays.push(build_array(KalamType::Timestamp, updated.iter()));
    arrays.push(build_array(KalamType::Boolean, deleted.iter()));
    Ok(RecordBatch::try_new(schema.clone(), arrays)?)
}

fn writer_properties(plan: &FlushPlan, user: Option<&str>, min_updated: i64, max_updated: i64) -> WriterProperties {
    let def = &plan.table;
    let mut meta = vec![
        KeyValue::new("kalamdb.format_version".into(), "1".to_owned()),
        KeyValue::new("kalamdb.schema_version".into(), def.schema_version.to_string()),
        KeyValue::new("kalamdb.namespace".into(), def.namespace.to_string()),
        KeyValue::new("kalamdb.table".into(), def.name.to_string()),
        KeyValue::new("kalamdb.job_id".into(), plan.job_id.clone()),
        KeyValue::new("kalamdb.min_updated".into(), min_updated.to_string()),
        KeyValue::new("kalamdb.max_updated".into(), max_updated.to_string()),
    ];
    if let Some(u) = user {
        meta.push(KeyValue::new("kalamdb.user_id".into(), u.to_owned()));
    }
    let pk = &def.columns[def.primary_key_index()].name;
    WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_key_value_metadata(Some(meta))
        .set_column_bloom_filter_enabled(ColumnPath::from(pk.as_str()), true)
        .set_column_bloom_filter_enabled(ColumnPath::from("_updated"), true)
        .build()
}
