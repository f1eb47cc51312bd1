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
    /// S3 credentials JSON, encrypted ([`crate::secrets`]); never shown to clients.
    #[serde(default)]
    pub credentials: Option<String>,
}

impl StorageRecord {
    pub fn is_s3(&self) -> bool {
        self.storage_type == "s3"
    }

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
        credentials: None,
    };
    store.put_json(cf::STORAGES, LOCAL.as_bytes(), &local)?;
    Ok(())
}

/// Checks both templates of a storage against the rules of storage.md §7.
fn check_templates(rec: &StorageRecord) -> Result<(), EngineError> {
    kalam_storage::validate_template(TableType::Shared, &rec.shared_tables_template).map_err(invalid)?;
    kalam_storage::validate_template(TableType::User, &rec.user_tables_template).map_err(invalid)?;
    Ok(())
}

fn check_kind(kind: &str) -> Result<(), EngineError> {
    match kind {
        "filesystem" | "s3" => Ok(()),
        other => Err(invalid(format!("Invalid storage type '{other}'. Allowed types: filesystem, s3"))),
    }
}

/// The credentials of CREATE/ALTER STORAGE: a JSON object; `REGION` goes in as `region` unless
/// the object has one.
fn credentials_json(credentials: Option<&str>, region: Option<&str>) -> Result<Option<String>, EngineError> {
    let mut object = match credentials {
        Some(text) => match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => return Err(invalid("Credentials must be a JSON object")),
        },
        None if region.is_some() => serde_json::Map::new(),
        None => return Ok(None),
    };
    if let Some(r) = region {
        object.entry("region").or_insert_with(|| serde_json::Value::String(r.to_owned()));
    }
    Ok(Some(serde_json::Value::Object(object).to_string()))
}

/// The URI of an S3 storage from `URI` or `BUCKET`, validated.
fn s3_uri(uri: Option<String>, bucket: Option<String>) -> Result<String, EngineError> {
    let uri = match (uri, bucket) {
        (Some(u), None) => u,
        (None, Some(b)) => format!("s3://{b}/"),
        (Some(_), Some(_)) => return Err(invalid("Give either URI or BUCKET, not both")),
        (None, None) => return Err(invalid("CREATE STORAGE … TYPE s3 needs URI 's3://bucket/[prefix/]' or BUCKET")),
    };
    kalam_storage::s3::S3Location::parse(&uri).map_err(invalid)?;
    Ok(uri)
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
        check_kind(&kind)?;
        let (uri, credentials) = if kind == "s3" {
            let uri = s3_uri(spec.uri.clone(), spec.bucket.clone())?;
            let creds = credentials_json(spec.credentials.as_deref(), spec.region.as_deref())?;
            (uri, creds.map(|c| self.secrets.seal(&c)).transpose()?)
        } else {
            if spec.credentials.is_some() || spec.bucket.is_some() || spec.region.is_some() {
                return Err(invalid("CREDENTIALS, BUCKET and REGION apply to s3 storages only"));
            }
            let uri = spec.uri.clone().ok_or_else(|| invalid("CREATE STORAGE needs URI '<directory>'"))?;
            if uri.is_empty() {
                return Err(invalid("URI must not be empty"));
            }
            (uri, None)
        };
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
            credentials,
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
        let mut guard = self.store.begin();
        let mut rec = self.storage(id)?.ok_or_else(|| not_found(id))?;
        if !rec.is_s3() && (spec.credentials.is_some() || spec.bucket.is_some() || spec.region.is_some()) {
            return Err(invalid("CREDENTIALS, BUCKET and REGION apply to s3 storages only"));
        }
        if let Some(uri) = spec.uri.clone().or(spec.bucket.as_ref().map(|b| format!("s3://{b}/"))) {
            if id == LOCAL {
                return Err(invalid("The URI of 'local' is storage.default_storage_path in the server configuration"));
            }
            if uri.is_empty() {
                return Err(invalid("URI must not be empty"));
            }
            if rec.is_s3() {
                kalam_storage::s3::S3Location::parse(&uri).map_err(invalid)?;
            }
            rec.uri = uri;
        }
        if spec.credentials.is_some() {
            // SET CREDENTIALS replaces the stored object.
            let creds = credentials_json(spec.credentials.as_deref(), spec.region.as_deref())?;
            rec.credentials = creds.map(|c| self.secrets.seal(&c)).transpose()?;
        } else if let Some(region) = spec.region.as_deref() {
            let current = rec.credentials.as_deref().map(|c| self.secrets.open_sealed(c)).transpose()?;
            let mut object: serde_json::Map<String, serde_json::Value> =
                current.and_then(|c| serde_json::from_str(&c).ok()).unwrap_or_default();
            object.insert("region".into(), serde_json::Value::String(region.to_owned()));
            rec.credentials = Some(self.secrets.seal(&serde_json::Value::Object(object).to_string())?);
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

    /// The decrypted credentials object of an S3 storage (empty when none are stored).
    pub fn storage_credentials(
        &self,
        rec: &StorageRecord,
    ) -> Result<serde_json::Map<String, serde_json::Value>, EngineError> {
        let Some(sealed) = &rec.credentials else { return Ok(serde_json::Map::new()) };
        let text = self.secrets.open_sealed(sealed)?;
        serde_json::from_str(&text).map_err(|e| EngineError::internal(format!("stored credentials: {e}")))
    }

    /// A client for the S3 location `base` (an earlier URI of the storage is fine) with the
    /// storage's current credentials; cached per storage version and location.
    pub fn s3_store_at(&self, storage_id: &str, base: &str) -> Result<kalam_storage::s3::S3Store, EngineError> {
        let rec = self
            .storage(storage_id)?
            .ok_or_else(|| EngineError::Parquet(format!("storage '{storage_id}' of an S3 file no longer exists")))?;
        let key = (rec.storage_id.clone(), rec.updated_at_us, base.to_owned());
        if let Some(s) = self.s3_clients.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(s.clone());
        }
        let location = kalam_storage::s3::S3Location::parse(base).map_err(EngineError::internal)?;
        let store = kalam_storage::s3::S3Store::open(location, &self.storage_credentials(&rec)?)
            .map_err(|e| EngineError::Parquet(format!("storage '{storage_id}': {e}")))?;
        let mut clients = self.s3_clients.lock().unwrap_or_else(|p| p.into_inner());
        // Clients of older versions of this storage go (their credentials may be stale).
        clients.retain(|(id, version, _), _| id != &rec.storage_id || *version == rec.updated_at_us);
        clients.insert(key, store.clone());
        Ok(store)
    }

    /// Number of tables per storage id (SHOW STORAGES).
    pub fn storage_table_count(&self, id: &str) -> usize {
        self.tables_using(id).len()
    }
}
