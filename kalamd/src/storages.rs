//! Storages (sql.md §6, storage.md §7): where a table's Parquet files go. Rows of
//! `system.storages` live in the `system_storages` column family; `local` is created at first
//! start and cannot be dropped. Filesystem storages are served here; a storage's URI and
//! templates apply to files written afterwards (every manifest entry records the base it was
//! written under).

use std::path::PathBuf;

use kalam_storage::Templates;
use kalam_types::error::ErrorCode;
use kalam_types::ids::is_valid_name;
use kalam_types::schema::TableType;
use serde::{Deserialize, Serialize};

use crate::clock::wall_clock_us;
use crate::engine::Engine;
use crate::error::EngineError;
use crate::store::{Store, cf};

/// The built-in storage.
pub const LOCAL: &str = "local";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StorageRecord {
    pub storage_id: String,
    pub storage_name: String,
    pub description: Option<String>,
    /// `filesystem` (only kind served so far) or `s3`.
    pub storage_type: String,
    /// Directory (absolute, or relative to `storage.data_dir`); empty for `local` (meaning
    /// `storage.default_storage_path`).
    pub uri: String,
    pub shared_tables_template: String,
    pub user_tables_template: String,
    pub created_at_us: i64,
    pub updated_at_us: i64,
}

impl StorageRecord {
    pub fn templates(&self) -> Templates {
        Templates { shared: self.shared_tables_template.clone(), user: self.user_tables_template.clone() }
    }
}

/// What `CREATE STORAGE` / `ALTER STORAGE` give; `None` = not given.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StorageSpec {
    pub storage_type: Option<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub uri: Option<String>,
    pub bucket: Option<String>,
    pub region: Option<String>,
    pub shared_template: Option<String>,
    pub user_template: Option<String>,
    pub credentials: Option<String>,
}

fn not_found(id: &str) -> EngineError {
    EngineError::user(ErrorCode::InvalidOperation, format!("Storage '{id}' not found"))
}

fn invalid(message: impl Into<String>) -> EngineError {
    EngineError::user(ErrorCode::InvalidSql, message)
}

/// Creates `local` when it is missing.
pub fn seed(store: &Store, now_us: i64) -> Result<(), EngineError> {
    if store.get(cf::STORAGES, LOCAL.as_bytes())?.is_some() {
        return Ok(());
    }
    let templates = Templates::default();
    let local = StorageRecord {
        storage_id: LOCAL.into(),
        storage_name: LOCAL.into(),
        description: Some("Server data directory (storage.default_storage_path)".into()),
        storage_type: "filesystem".into(),
        uri: String::new(),
        shared_tables_template: templates.shared,
        user_tables_template: templates.user,
        created_at_us: now_us,
        updated_at_us: now_us,
    };
    let mut guard = store.begin();
    let storages = store.cf(cf::STORAGES)?;
    guard.batch.put_cf(&storages, LOCAL, serde_json::to_vec(&local).map_err(EngineError::internal)?);
    drop(storages);
    guard.write()?;
    Ok(())
}

/// Checks the parts every storage must satisfy and applies the spec's templates.
fn check_templates(rec: &StorageRecord) -> Result<(), EngineError> {
    kalam_storage::validate_template(TableType::Shared, &rec.shared_tables_template).map_err(invalid)?;
    kalam_storage::validate_template(TableType::User, &rec.user_tables_template).map_err(invalid)?;
    Ok(())
}

fn unsupported_kind(kind: &str) -> Result<(), EngineError> {
    match kind {
        "filesystem" => Ok(()),
        "s3" => Err(EngineError::user(
            ErrorCode::UnsupportedStatement,
            "S3 storages are not available in this version; use TYPE filesystem",
        )),
        other => Err(invalid(format!("Invalid storage type '{other}'. Allowed types: filesystem, s3"))),
    }
}

impl Engine {
    /// Every storage: `local` first, then by name.
    pub fn storages(&self) -> Result<Vec<StorageRecord>, EngineError> {
        let mut list: Vec<StorageRecord> = self
            .store
            .scan_prefix(cf::STORAGES, b"")?
            .into_iter()
            .map(|(_, v)| serde_json::from_slice(&v).map_err(|e| EngineError::corrupt(cf::STORAGES, e)))
            .collect::<Result<_, _>>()?;
        list.sort_by(|a, b| (a.storage_id != LOCAL, &a.storage_name).cmp(&(b.storage_id != LOCAL, &b.storage_name)));
        Ok(list)
    }

    pub fn storage(&self, id: &str) -> Result<Option<StorageRecord>, EngineError> {
        self.store
            .get(cf::STORAGES, id.as_bytes())?
            .map(|v| serde_json::from_slice(&v).map_err(|e| EngineError::corrupt(cf::STORAGES, e)))
            .transpose()
    }

    /// The storage a table writes to.
    pub fn require_storage(&self, id: &str) -> Result<StorageRecord, EngineError> {
        self.storage(id)?.ok_or_else(|| {
            EngineError::user(ErrorCode::InvalidOperation, format!("Storage '{id}' does not exist in system.storages"))
        })
    }

    /// The directory a filesystem storage's templates are resolved under.
    pub fn storage_dir(&self, rec: &StorageRecord) -> PathBuf {
        if rec.uri.is_empty() {
            return self.storage_base();
        }
        let uri = PathBuf::from(&rec.uri);
        if uri.is_absolute() { uri } else { self.cfg.storage.data_dir.join(uri) }
    }

    /// Tables (`ns.t`) whose files go to `storage_id`.
    fn tables_using(&self, storage_id: &str) -> Vec<String> {
        self.catalog
            .tables()
            .into_iter()
            .filter(|t| t.table_type != TableType::Stream && t.storage_id == storage_id)
            .map(|t| t.qualified_name())
            .collect()
    }

    pub fn create_storage(&self, id: &str, if_not_exists: bool, spec: StorageSpec) -> Result<String, EngineError> {
        if !is_valid_name(id) {
            return Err(invalid(format!("Invalid storage id '{id}': names must match ^[a-z][a-z0-9_]{{0,63}}$")));
        }
        let kind = spec.storage_type.clone().ok_or_else(|| invalid("CREATE STORAGE needs TYPE filesystem | s3"))?;
        unsupported_kind(&kind)?;
        if spec.credentials.is_some() || spec.bucket.is_some() || spec.region.is_some() {
            return Err(invalid("CREDENTIALS, BUCKET and REGION apply to s3 storages only"));
        }
        let uri = spec.uri.clone().ok_or_else(|| invalid("CREATE STORAGE needs URI '<directory>'"))?;
        if uri.is_empty() {
            return Err(invalid("URI must not be empty"));
        }
        let defaults = Templates::default();
        let now = wall_clock_us();
        let rec = StorageRecord {
            storage_id: id.to_owned(),
            storage_name: spec.name.clone().unwrap_or_else(|| id.to_owned()),
            description: spec.description.clone(),
            storage_type: kind,
            uri,
            shared_tables_template: spec.shared_template.clone().unwrap_or(defaults.shared),
            user_tables_template: spec.user_template.clone().unwrap_or(defaults.user),
            created_at_us: now,
            updated_at_us: now,
        };
        check_templates(&rec)?;
        let mut guard = self.store.begin();
        if self.storage(id)?.is_some() {
            if if_not_exists {
                return Ok(format!("Storage '{id}' already exists (skipped)"));
            }
            return Err(EngineError::user(ErrorCode::AlreadyExists, format!("Storage '{id}' already exists")));
        }
        let storages = self.store.cf(cf::STORAGES)?;
        guard.batch.put_cf(&storages, id, serde_json::to_vec(&rec).map_err(EngineError::internal)?);
        drop(storages);
        guard.write()?;
        tracing::info!(storage = id, uri = %rec.uri, "storage created");
        Ok(format!("Storage '{id}' created successfully"))
    }

    pub fn alter_storage(&self, id: &str, spec: StorageSpec) -> Result<String, EngineError> {
        if spec.storage_type.is_some() {
            return Err(invalid("The type of a storage cannot be changed"));
        }
        if spec.credentials.is_some() || spec.bucket.is_some() || spec.region.is_some() {
            return Err(invalid("CREDENTIALS, BUCKET and REGION apply to s3 storages only"));
        }
        let mut guard = self.store.begin();
        let mut rec = self.storage(id)?.ok_or_else(|| not_found(id))?;
        if let Some(uri) = spec.uri {
            if id == LOCAL {
                return Err(invalid("The URI of 'local' is storage.default_storage_path in the server configuration"));
            }
            if uri.is_empty() {
                return Err(invalid("URI must not be empty"));
            }
            rec.uri = uri;
        }
        if let Some(name) = spec.name {
            rec.storage_name = name;
        }
        if let Some(d) = spec.description {
            rec.description = Some(d);
        }
        if let Some(t) = spec.shared_template {
            rec.shared_tables_template = t;
        }
        if let Some(t) = spec.user_template {
            rec.user_tables_template = t;
        }
        check_templates(&rec)?;
        rec.updated_at_us = wall_clock_us();
        let storages = self.store.cf(cf::STORAGES)?;
        guard.batch.put_cf(&storages, id, serde_json::to_vec(&rec).map_err(EngineError::internal)?);
        drop(storages);
        guard.write()?;
        Ok(format!("Storage '{id}' updated successfully"))
    }

    pub fn drop_storage(&self, id: &str, if_exists: bool) -> Result<String, EngineError> {
        if id == LOCAL {
            return Err(EngineError::user(ErrorCode::DependencyExists, "Cannot delete 'local' storage (protected)"));
        }
        // Under the commit lock: CREATE TABLE checks the storage under it too.
        let mut guard = self.store.begin();
        let Some(rec) = self.storage(id)? else {
            if if_exists {
                return Ok(format!("Storage '{id}' does not exist (skipped)"));
            }
            return Err(not_found(id));
        };
        let tables = self.tables_using(id);
        if !tables.is_empty() {
            let mut listed = tables.iter().take(10).cloned().collect::<Vec<_>>().join(", ");
            if tables.len() > 10 {
                listed.push_str(", …");
            }
            return Err(EngineError::user(
                ErrorCode::DependencyExists,
                format!(
                    "Cannot delete storage '{}': {} table(s) still reference it. Tables: {listed}",
                    rec.storage_name,
                    tables.len()
                ),
            ));
        }
        let storages = self.store.cf(cf::STORAGES)?;
        guard.batch.delete_cf(&storages, id);
        drop(storages);
        guard.write()?;
        Ok(format!("Storage '{id}' dropped successfully"))
    }

    /// Number of tables per storage id (SHOW STORAGES).
    pub fn storage_table_count(&self, id: &str) -> usize {
        self.tables_using(id).len()
    }
}
