//! The catalog: namespaces and table definitions, cached in memory and persisted in RocksDB.
//! Writes go through the store's commit lock so that definitions and column families appear
//! together.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use kalam_types::error::{ErrorCode, KalamError};
use kalam_types::ids::NamespaceId;
use kalam_types::schema::{DELETED_COLUMN, TableDefinition, TableType, UPDATED_COLUMN};
use serde::{Deserialize, Serialize};

use crate::error::EngineError;
use crate::store::{Store, cf, table_cf_name};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamespaceRecord {
    pub name: String,
    pub created_at_us: i64,
    /// Set by `ALTER NAMESPACE … SET OPTIONS`.
    #[serde(default)]
    pub options: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub updated_at_us: i64,
}

/// One row of `system.table_schemas` (key `<ns>:<table>:<version zero-padded to 10>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableSchemaRecord {
    pub namespace_id: String,
    pub table_name: String,
    pub version: u32,
    /// `{"fields":[{"name","data_type","nullable","column_id"}…]}`, system columns included.
    pub arrow_schema: String,
    pub changes: String,
    pub created_at_us: i64,
}

impl TableSchemaRecord {
    pub fn of(def: &TableDefinition, changes: String, now_us: i64) -> Self {
        let mut fields: Vec<serde_json::Value> = def
            .columns
            .iter()
            .map(|c| {
                serde_json::json!({
                    "name": c.name, "data_type": c.data_type.name(),
                    "nullable": c.nullable && !c.is_primary_key, "column_id": c.column_id,
                })
            })
            .collect();
        if def.table_type != TableType::Stream {
            for (name, ty) in [(UPDATED_COLUMN, "TIMESTAMP"), (DELETED_COLUMN, "BOOLEAN")] {
                fields.push(serde_json::json!({"name": name, "data_type": ty, "nullable": false, "column_id": null}));
            }
        }
        TableSchemaRecord {
            namespace_id: def.namespace.to_string(),
            table_name: def.name.to_string(),
            version: def.schema_version,
            arrow_schema: serde_json::json!({ "fields": fields }).to_string(),
            changes,
            created_at_us: now_us,
        }
    }

    pub fn key(&self) -> Vec<u8> {
        format!("{}:{}:{:010}", self.namespace_id, self.table_name, self.version).into_bytes()
    }
}

pub struct Catalog {
    store: Arc<Store>,
    namespaces: RwLock<BTreeMap<String, NamespaceRecord>>,
    tables: RwLock<BTreeMap<(String, String), Arc<TableDefinition>>>,
}

/// `TABLE_NOT_FOUND` with the catalogue message (sql.md §19).
pub fn table_not_found(ns: &str, table: &str) -> KalamError {
    KalamError::new(ErrorCode::TableNotFound, format!("relation \"{ns}.{table}\" does not exist"))
}

fn table_key(ns: &str, table: &str) -> Vec<u8> {
    format!("{ns}:{table}").into_bytes()
}

impl Catalog {
    /// Loads every namespace and table definition.
    pub fn load(store: Arc<Store>) -> Result<Catalog, EngineError> {
        let mut namespaces = BTreeMap::new();
        for (_, v) in store.scan_prefix(cf::NAMESPACES, b"")? {
            let rec: NamespaceRecord =
                serde_json::from_slice(&v).map_err(|e| EngineError::corrupt(cf::NAMESPACES, e))?;
            namespaces.insert(rec.name.clone(), rec);
        }
        let mut tables = BTreeMap::new();
        for (_, v) in store.scan_prefix(cf::TABLES, b"")? {
            let def: TableDefinition = serde_json::from_slice(&v).map_err(|e| EngineError::corrupt(cf::TABLES, e))?;
            if def.table_type != TableType::Stream {
                store.ensure_cf(&table_cf_name(&def))?;
            }
            tables.insert((def.namespace.to_string(), def.name.to_string()), Arc::new(def));
        }
        Ok(Catalog { store, namespaces: RwLock::new(namespaces), tables: RwLock::new(tables) })
    }

    pub fn namespace_exists(&self, ns: &str) -> bool {
        self.namespaces.read().unwrap_or_else(|p| p.into_inner()).contains_key(ns)
    }

    /// Creates a namespace; `Ok(false)` when it already existed.
    pub fn create_namespace(&self, ns: &NamespaceId, now_us: i64) -> Result<bool, EngineError> {
        let guard = self.store.begin();
        if self.namespace_exists(ns.as_str()) {
            return Ok(false);
        }
        let rec = NamespaceRecord {
            name: ns.to_string(),
            created_at_us: now_us,
            options: serde_json::Map::new(),
            updated_at_us: now_us,
        };
        let mut guard = guard;
        let cf = self.store.cf(cf::NAMESPACES)?;
        guard.batch.put_cf(&cf, ns.as_str(), serde_json::to_vec(&rec).map_err(EngineError::internal)?);
        drop(cf);
        guard.write_and(|| {
            self.namespaces.write().unwrap_or_else(|p| p.into_inner()).insert(rec.name.clone(), rec);
        })?;
        Ok(true)
    }

    /// Removes a dropped table from the in-memory catalog.
    pub fn forget_table(&self, ns: &str, table: &str) {
        self.tables.write().unwrap_or_else(|p| p.into_inner()).remove(&(ns.to_owned(), table.to_owned()));
    }

    /// Removes a dropped namespace from the in-memory catalog.
    pub fn forget_namespace(&self, ns: &str) {
        self.namespaces.write().unwrap_or_else(|p| p.into_inner()).remove(ns);
    }

    /// Every namespace, by name.
    pub fn namespaces(&self) -> Vec<NamespaceRecord> {
        self.namespaces.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    /// Number of tables in `ns`.
    pub fn table_count(&self, ns: &str) -> usize {
        self.tables.read().unwrap_or_else(|p| p.into_inner()).keys().filter(|(n, _)| n == ns).count()
    }

    /// Every table, by namespace then name.
    pub fn tables(&self) -> Vec<Arc<TableDefinition>> {
        self.tables.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    pub fn table(&self, ns: &str, table: &str) -> Option<Arc<TableDefinition>> {
        self.tables.read().unwrap_or_else(|p| p.into_inner()).get(&(ns.to_owned(), table.to_owned())).cloned()
    }

    /// Called under the commit lock by writes: `TABLE_NOT_FOUND` when `def`'s table was dropped
    /// (or dropped and created again) since the statement resolved it, and
    /// [`EngineError::DefinitionChanged`] when an ALTER TABLE committed in between (the
    /// statement then runs again against the new definition).
    pub fn check_current(&self, def: &TableDefinition) -> Result<(), EngineError> {
        let (ns, table) = (def.namespace.as_str(), def.name.as_str());
        match self.table(ns, table) {
            Some(current) if current.created_at_us == def.created_at_us => {
                if current.schema_version == def.schema_version { Ok(()) } else { Err(EngineError::DefinitionChanged) }
            }
            _ => Err(table_not_found(ns, table).into()),
        }
    }

    /// The current definition of `def`'s table when it is a newer version of the same table
    /// (readers use it to decode rows written after they resolved `def`).
    pub fn newer_version(&self, def: &TableDefinition) -> Option<Arc<TableDefinition>> {
        self.table(def.namespace.as_str(), def.name.as_str())
            .filter(|t| t.created_at_us == def.created_at_us && t.schema_version > def.schema_version)
    }

    /// The table or `TABLE_NOT_FOUND` with the catalogue message.
    pub fn require_table(&self, ns: &str, table: &str) -> Result<Arc<TableDefinition>, KalamError> {
        self.table(ns, table).ok_or_else(|| table_not_found(ns, table))
    }

    /// Merges `options` into a namespace's options object; `Ok(false)` if it does not exist.
    pub fn alter_namespace(
        &self,
        ns: &str,
        options: serde_json::Map<String, serde_json::Value>,
        now_us: i64,
    ) -> Result<bool, EngineError> {
        let mut guard = self.store.begin();
        let Some(mut rec) = self.namespaces.read().unwrap_or_else(|p| p.into_inner()).get(ns).cloned() else {
            return Ok(false);
        };
        rec.options.extend(options);
        rec.updated_at_us = now_us;
        let cf = self.store.cf(cf::NAMESPACES)?;
        guard.batch.put_cf(&cf, ns, serde_json::to_vec(&rec).map_err(EngineError::internal)?);
        drop(cf);
        guard.write_and(|| {
            self.namespaces.write().unwrap_or_else(|p| p.into_inner()).insert(rec.name.clone(), rec);
        })?;
        Ok(true)
    }

    /// Creates the table's column family and stores its definition with schema version 1 in its
    /// history (replacing the history of an earlier table of the same name); `Ok(false)` if it
    /// existed.
    pub fn create_table(&self, def: TableDefinition) -> Result<bool, EngineError> {
        let mut guard = self.store.begin();
        // Checked again under the commit lock: a concurrent DROP NAMESPACE cannot leave a table
        // in a missing namespace.
        if !self.namespace_exists(def.namespace.as_str()) {
            return Err(EngineError::user(
                ErrorCode::NamespaceNotFound,
                format!("Namespace '{}' does not exist. Create it first with CREATE NAMESPACE.", def.namespace),
            ));
        }
        if self.table(def.namespace.as_str(), def.name.as_str()).is_some() {
            return Ok(false);
        }
        // Under the lock too: a concurrent DROP STORAGE cannot leave the table without one.
        if def.table_type != TableType::Stream && self.store.get(cf::STORAGES, def.storage_id.as_bytes())?.is_none() {
            return Err(EngineError::user(
                ErrorCode::InvalidOperation,
                format!("Storage '{}' does not exist in system.storages", def.storage_id),
            ));
        }
        if def.table_type != TableType::Stream {
            self.store.ensure_cf(&table_cf_name(&def))?;
        }
        let schemas = self.store.cf(cf::TABLE_SCHEMAS)?;
        let history_prefix = format!("{}:{}:", def.namespace, def.name).into_bytes();
        for (key, _) in self.store.scan_prefix(cf::TABLE_SCHEMAS, &history_prefix)? {
            guard.batch.delete_cf(&schemas, key);
        }
        let schema = TableSchemaRecord::of(&def, "Initial schema".into(), def.created_at_us);
        guard.batch.put_cf(&schemas, schema.key(), serde_json::to_vec(&schema).map_err(EngineError::internal)?);
        let cf = self.store.cf(cf::TABLES)?;
        let key = table_key(def.namespace.as_str(), def.name.as_str());
        guard.batch.put_cf(&cf, key, serde_json::to_vec(&def).map_err(EngineError::internal)?);
        drop((cf, schemas));
        let key = (def.namespace.to_string(), def.name.to_string());
        guard.write_and(|| {
            self.tables.write().unwrap_or_else(|p| p.into_inner()).insert(key, Arc::new(def));
        })?;
        Ok(true)
    }

    /// Replaces a table's definition by `change(current)` under the commit lock, so concurrent
    /// DDL cannot interleave. When the change bumps the schema version, its history row is
    /// written in the same batch. Returns the new definition.
    pub fn update_table(
        &self,
        ns: &str,
        table: &str,
        change: impl FnOnce(&TableDefinition) -> Result<(TableDefinition, Option<String>), EngineError>,
    ) -> Result<Arc<TableDefinition>, EngineError> {
        let mut guard = self.store.begin();
        let current = self.require_table(ns, table)?;
        let (def, history) = change(&current)?;
        if let Some(changes) = history {
            let schemas = self.store.cf(cf::TABLE_SCHEMAS)?;
            let schema = TableSchemaRecord::of(&def, changes, def.updated_at_us);
            guard.batch.put_cf(&schemas, schema.key(), serde_json::to_vec(&schema).map_err(EngineError::internal)?);
        }
        let cf = self.store.cf(cf::TABLES)?;
        guard.batch.put_cf(&cf, table_key(ns, table), serde_json::to_vec(&def).map_err(EngineError::internal)?);
        drop(cf);
        let def = Arc::new(def);
        guard.write_and(|| {
            let key = (ns.to_owned(), table.to_owned());
            self.tables.write().unwrap_or_else(|p| p.into_inner()).insert(key, def.clone());
        })?;
        Ok(def)
    }

    /// Every schema-history row, by table then version.
    pub fn table_schemas(&self) -> Result<Vec<TableSchemaRecord>, EngineError> {
        self.store
            .scan_prefix(cf::TABLE_SCHEMAS, b"")?
            .into_iter()
            .map(|(_, v)| serde_json::from_slice(&v).map_err(|e| EngineError::corrupt(cf::TABLE_SCHEMAS, e)))
            .collect()
    }
}
