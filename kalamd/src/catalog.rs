//! The catalog: namespaces and table definitions, cached in memory and persisted in RocksDB.
//! Writes go through the store's commit lock so that definitions and column families appear
//! together.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use kalam_types::error::{ErrorCode, KalamError};
use kalam_types::ids::NamespaceId;
use kalam_types::schema::TableDefinition;
use serde::{Deserialize, Serialize};

use crate::error::EngineError;
use crate::store::{Store, cf, table_cf_name};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamespaceRecord {
    pub name: String,
    pub created_at_us: i64,
}

pub struct Catalog {
    store: Arc<Store>,
    namespaces: RwLock<BTreeMap<String, NamespaceRecord>>,
    tables: RwLock<BTreeMap<(String, String), Arc<TableDefinition>>>,
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
            store.ensure_cf(&table_cf_name(&def))?;
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
        let rec = NamespaceRecord { name: ns.to_string(), created_at_us: now_us };
        let mut guard = guard;
        let cf = self.store.cf(cf::NAMESPACES)?;
        guard.batch.put_cf(&cf, ns.as_str(), serde_json::to_vec(&rec).map_err(EngineError::internal)?);
        guard.write()?;
        self.namespaces.write().unwrap_or_else(|p| p.into_inner()).insert(rec.name.clone(), rec);
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

    /// The table or `TABLE_NOT_FOUND` with the catalogue message.
    pub fn require_table(&self, ns: &str, table: &str) -> Result<Arc<TableDefinition>, KalamError> {
        self.table(ns, table).ok_or_else(|| {
            KalamError::new(ErrorCode::TableNotFound, format!("relation \"{ns}.{table}\" does not exist"))
        })
    }

    /// Creates the table's column family and stores its definition; `Ok(false)` if it existed.
    pub fn create_table(&self, def: TableDefinition) -> Result<bool, EngineError> {
        let mut guard = self.store.begin();
        if self.table(def.namespace.as_str(), def.name.as_str()).is_some() {
            return Ok(false);
        }
        self.store.ensure_cf(&table_cf_name(&def))?;
        let cf = self.store.cf(cf::TABLES)?;
        let key = table_key(def.namespace.as_str(), def.name.as_str());
        guard.batch.put_cf(&cf, key, serde_json::to_vec(&def).map_err(EngineError::internal)?);
        guard.write()?;
        let key = (def.namespace.to_string(), def.name.to_string());
        self.tables.write().unwrap_or_else(|p| p.into_inner()).insert(key, Arc::new(def));
        Ok(true)
    }
}
