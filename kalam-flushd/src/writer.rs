//! One flush attempt on kalam-flushd's side: read the job's checkpoint (read-only), group rows
//! by user (USER tables) or as one group (SHARED), and write each group as Parquet under a name
//! derived from the job, via a temporary file that is fsynced and renamed.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use kalam_rpc::{FlushPlan, FlushedFile};
use kalam_storage::s3::{S3Location, S3Store};
use kalam_storage::{Templates, flush_file_job, group_dir, parquet_file_name, temp_file_name};
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

use crate::faults;

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

/// The committed files of one partition (`None` = SHARED), relative to the storage base; `None`
/// when kalamd cannot say (then no file of that directory is garbage-collected).
pub type CommittedFiles<'a> = &'a dyn Fn(Option<&str>) -> Option<HashSet<String>>;

/// Writes every group of the plan and returns the files, ready for kalamd's commit. When it
/// fails, or `cancelled` turns true between files, the files already written are removed:
/// nothing of an attempt that will not commit stays in the storage. Each group's directory is
/// also swept of files left by earlier flushes that never committed (storage.md §7).
pub fn write_job(
    plan: &FlushPlan,
    cancelled: &dyn Fn() -> bool,
    committed: CommittedFiles<'_>,
) -> Result<Vec<FlushedFile>, FlushError> {
    let mut files = Vec::new();
    let result = s3_store(plan).and_then(|s3| {
        let job = JobWriter {
            plan,
            s3,
            schema: Arc::new(table_schema(&plan.table, true)),
            templates: Templates { shared: plan.shared_template.clone(), user: plan.user_template.clone() },
            cancelled,
            committed,
        };
        job.write_groups(&mut files)
    });
    match result {
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

struct JobWriter<'a> {
    plan: &'a FlushPlan,
    s3: Option<S3Store>,
    schema: SchemaRef,
    templates: Templates,
    cancelled: &'a dyn Fn() -> bool,
    committed: CommittedFiles<'a>,
}

impl JobWriter<'_> {
    /// Streams the checkpoint in key order. A group (one user, or the whole SHARED table) is
    /// written in files of at most `max_rows_per_file` rows; at most one file's rows are held
    /// in memory.
    fn write_groups(&self, files: &mut Vec<FlushedFile>) -> Result<(), FlushError> {
        let plan = self.plan;
        let def = &plan.table;
        let db =
            DB::open_cf_for_read_only(&Options::default(), &plan.checkpoint_path, [plan.column_family.as_str()], false)
                .map_err(|source| FlushError::Checkpoint { path: plan.checkpoint_path.clone(), source })?;
        let cf = db
            .cf_handle(&plan.column_family)
            .ok_or_else(|| FlushError::MissingColumnFamily(plan.checkpoint_path.clone()))?;
        let decoder = codec::RowDecoder::new(def);
        let max_rows = usize::try_from(plan.max_rows_per_file.max(1)).unwrap_or(usize::MAX);
        let limited = plan.max_users_per_job > 0 && def.table_type == TableType::User;
        let start = plan.after_user.as_deref().filter(|_| def.table_type == TableType::User).map(codec::users_after);
        let mode = match &start {
            Some(key) => IteratorMode::From(key, rocksdb::Direction::Forward),
            None => IteratorMode::Start,
        };
        let mut rows: Vec<StoredRow> = Vec::new();
        let mut group_user: Option<String> = None;
        let mut users = 0u64;
        // Number of the next file of the current group (1-based).
        let mut file_no = 1u32;
        for item in db.iterator_cf(&cf, mode) {
            let (key, value) =
                item.map_err(|source| FlushError::Checkpoint { path: plan.checkpoint_path.clone(), source })?;
            let user = match def.table_type {
                TableType::Shared => None,
                _ => Some(codec::split_user_row_key(&key)?.0.to_owned()),
            };
            if user != group_user {
                if !rows.is_empty() {
                    files.push(self.write_file(group_user.as_deref(), file_no, &std::mem::take(&mut rows))?);
                }
                // The users after the limit are a follow-up job's (kalamd queues it).
                if limited && users == plan.max_users_per_job {
                    return Ok(());
                }
                users += 1;
                file_no = 1;
                group_user = user;
            }
            rows.push(decoder.decode(&value)?);
            if rows.len() >= max_rows {
                files.push(self.write_file(group_user.as_deref(), file_no, &std::mem::take(&mut rows))?);
                file_no += 1;
            }
        }
        if !rows.is_empty() {
            files.push(self.write_file(group_user.as_deref(), file_no, &rows)?);
        }
        Ok(())
    }

    /// Writes file `n` of a group. Before a group's first file, its directory is swept.
    fn write_file(&self, user: Option<&str>, n: u32, rows: &[StoredRow]) -> Result<FlushedFile, FlushError> {
        if (self.cancelled)() {
            return Err(FlushError::Cancelled);
        }
        let plan = self.plan;
        let def = &plan.table;
        let rel_dir = group_dir(
            def.table_type,
            def.namespace.as_str(),
            def.name.as_str(),
            user,
            def.options.sharding,
            &self.templates,
        )?;
        if n == 1 {
            self.collect_garbage(&rel_dir, user);
        }
        let name = parquet_file_name(plan.job_created_at_us, &plan.job_id, n);
        let batch = to_batch(def, &self.schema, rows)?;
        let pk_idx = def.primary_key_index();
        let pk_of = |r: Option<&StoredRow>| r.and_then(|r| codec::encode_pk(&r.values[pk_idx])).unwrap_or_default();
        let (min_pk, max_pk) = (pk_of(rows.first()), pk_of(rows.last()));
        let min_updated = rows.iter().map(|r| r.updated_us).min().unwrap_or(0);
        let max_updated = rows.iter().map(|r| r.updated_us).max().unwrap_or(0);
        let props = writer_properties(plan, user, min_updated, max_updated);
        let rel_path = PathBuf::from(&rel_dir).join(&name).display().to_string();
        faults::storage_write(&rel_path).map_err(|source| FlushError::Io { path: rel_path.clone(), source })?;
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
        if let Some(s3) = &self.s3 {
            // One PUT of the whole file: an object is either absent or complete.
            let parquet_err = |source| FlushError::Parquet { path: rel_path.clone(), source };
            let mut writer = ArrowWriter::try_new(Vec::new(), self.schema.clone(), Some(props)).map_err(parquet_err)?;
            writer.write(&batch).map_err(parquet_err)?;
            faults::at(faults::Step::MidWrite);
            let bytes = writer.into_inner().map_err(parquet_err)?;
            let size = bytes.len() as u64;
            s3.put(&rel_path, bytes).map_err(|e| FlushError::ObjectStore { path: rel_path.clone(), detail: e })?;
            return Ok(flushed(size));
        }
        let dir = Path::new(&plan.storage_base).join(&rel_dir);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let final_path = dir.join(&name);
        let temp_path = dir.join(temp_file_name(&name));
        let written = (|| {
            let file = File::create(&temp_path).map_err(io(&temp_path))?;
            let parquet_err = |source| FlushError::Parquet { path: temp_path.display().to_string(), source };
            let mut writer = ArrowWriter::try_new(file, self.schema.clone(), Some(props)).map_err(parquet_err)?;
            writer.write(&batch).map_err(parquet_err)?;
            if faults::armed() {
                // Push the row group out so a kill here leaves a partly written file behind.
                writer.flush().map_err(parquet_err)?;
                faults::at(faults::Step::MidWrite);
            }
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

    /// Deletes the files of flush jobs in `rel_dir` that are neither committed nor this job's
    /// own (which its files overwrite): files of attempts that wrote but never committed, such
    /// as a daemon killed before the commit of a job that was then cancelled. Only names a
    /// flush writes are touched; errors are logged, never fatal.
    fn collect_garbage(&self, rel_dir: &str, user: Option<&str>) {
        let names: Vec<String> = match &self.s3 {
            Some(s3) => match s3.list(rel_dir) {
                Ok(paths) => paths.into_iter().filter_map(|p| p.rsplit('/').next().map(str::to_owned)).collect(),
                Err(e) => {
                    tracing::warn!(dir = rel_dir, error = %e, "cannot list a flush directory");
                    return;
                }
            },
            None => match std::fs::read_dir(Path::new(&self.plan.storage_base).join(rel_dir)) {
                Ok(dir) => dir.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
                Err(_) => return,
            },
        };
        let stale: Vec<String> = names
            .into_iter()
            .filter(|n| flush_file_job(n).is_some_and(|job| job != self.plan.job_id))
            .map(|n| PathBuf::from(rel_dir).join(n).display().to_string())
            .collect();
        if stale.is_empty() {
            return;
        }
        let Some(committed) = (self.committed)(user) else { return };
        for path in stale.into_iter().filter(|p| !committed.contains(p)) {
            tracing::info!(path, "removing a flush file no manifest entry refers to");
            let removed = match &self.s3 {
                Some(s3) => s3.delete(&path).map_err(|e| e.to_string()),
                None => match std::fs::remove_file(Path::new(&self.plan.storage_base).join(&path)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.to_string()),
                    _ => Ok(()),
                },
            };
            if let Err(e) = removed {
                tracing::warn!(path, error = %e, "could not remove an orphan flush file");
            }
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FlushError + use<> {
    let path = path.display().to_string();
    move |source| FlushError::Io { path, source }
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
    let compression = match plan.compression.as_str() {
        "none" => Compression::UNCOMPRESSED,
        "zstd" => Compression::ZSTD(Default::default()),
        _ => Compression::SNAPPY,
    };
    WriterProperties::builder()
        .set_compression(compression)
        .set_key_value_metadata(Some(meta))
        .set_column_bloom_filter_enabled(ColumnPath::from(pk.as_str()), true)
        .set_column_bloom_filter_enabled(ColumnPath::from("_updated"), true)
        .build()
}
