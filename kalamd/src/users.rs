//! `system.users` rows (system-tables.md). The built-in `system` user is created at first start
//! and always exists.

use serde::{Deserialize, Serialize};

use crate::error::EngineError;
use crate::store::{Store, cf};

/// Id of the built-in user of role `system`.
pub const SYSTEM_USER: &str = "system";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserRecord {
    pub user_id: String,
    pub username: String,
    pub email: Option<String>,
    pub role: String,
    /// SHA-256 (hex) of the API key; the clear key is never stored.
    pub apikey_sha256: Option<String>,
    pub metadata: Option<String>,
    pub storage_mode: String,
    pub storage_id: Option<String>,
    pub created_at_us: i64,
    pub updated_at_us: i64,
    pub deleted_at_us: Option<i64>,
}

/// Creates the `system` user when it is missing.
pub fn seed(store: &Store, now_us: i64) -> Result<(), EngineError> {
    if store.get(cf::USERS, SYSTEM_USER.as_bytes())?.is_some() {
        return Ok(());
    }
    let rec = UserRecord {
        user_id: SYSTEM_USER.into(),
        username: SYSTEM_USER.into(),
        email: None,
        role: "system".into(),
        apikey_sha256: None,
        metadata: None,
        storage_mode: "table".into(),
        storage_id: None,
        created_at_us: now_us,
        updated_at_us: now_us,
        deleted_at_us: None,
    };
    store.put_json(cf::USERS, SYSTEM_USER.as_bytes(), &rec)?;
    Ok(())
}

/// Every user row, by user id.
pub fn list(store: &Store) -> Result<Vec<UserRecord>, EngineError> {
    store
        .scan_prefix(cf::USERS, b"")?
        .into_iter()
        .map(|(_, v)| serde_json::from_slice(&v).map_err(|e| EngineError::corrupt(cf::USERS, e)))
        .collect()
}
