//! `system.users` rows (system-tables.md). The built-in `system` user is created at first start
//! and always exists.

use kalam_types::error::ErrorCode;
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

/// One user by id (soft-deleted ones included).
pub fn get(store: &Store, user_id: &str) -> Result<Option<UserRecord>, EngineError> {
    store
        .get(cf::USERS, user_id.as_bytes())?
        .map(|v| serde_json::from_slice(&v).map_err(|e| EngineError::corrupt(cf::USERS, e)))
        .transpose()
}

/// SHA-256 of an API key, hex: the only form in which keys are stored.
pub fn hash_api_key(key: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(key.as_bytes()))
}

/// The user an API key belongs to, through the key index (one lookup, no scan).
pub fn by_api_key(store: &Store, key: &str) -> Result<Option<UserRecord>, EngineError> {
    let Some(user_id) = store.get(cf::USER_APIKEYS, hash_api_key(key).as_bytes())? else { return Ok(None) };
    let user = get(store, &String::from_utf8_lossy(&user_id))?;
    // The index is written with the row; a row whose key changed no longer matches.
    Ok(user.filter(|u| u.apikey_sha256.as_deref() == Some(hash_api_key(key).as_str())))
}

/// Shortest API key a statement may set (generated keys have 36 characters).
const MIN_API_KEY_LEN: usize = 8;

/// A new random API key (UUID v4 from the operating system's generator).
pub fn generate_api_key() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn user_not_found(user_id: &str) -> EngineError {
    EngineError::user(ErrorCode::UserNotFound, format!("User with user_id '{user_id}' not found"))
}

/// Writes `rec` (and its key index entries) in one batch under the commit lock. `old_hash` is
/// the key hash the row had, whose index entry goes.
fn write(store: &Store, rec: &UserRecord, old_hash: Option<&str>) -> Result<(), EngineError> {
    let bytes = serde_json::to_vec(rec).map_err(EngineError::internal)?;
    let mut guard = store.begin();
    {
        let users = store.cf(cf::USERS)?;
        let keys = store.cf(cf::USER_APIKEYS)?;
        if let Some(old) = old_hash
            && Some(old) != rec.apikey_sha256.as_deref()
        {
            guard.batch.delete_cf(&keys, old.as_bytes());
        }
        if let Some(hash) = &rec.apikey_sha256 {
            guard.batch.put_cf(&keys, hash.as_bytes(), rec.user_id.as_bytes());
        }
        guard.batch.put_cf(&users, rec.user_id.as_bytes(), bytes);
    }
    guard.write()?;
    Ok(())
}

/// What `CREATE USER` (or an INSERT into system.users) asks for.
#[derive(Clone, Default)]
pub struct NewUser {
    pub user_id: String,
    pub username: Option<String>,
    pub email: Option<String>,
    pub role: Option<String>,
    /// `None` = generate one; `Some(None)` = no key (key authentication disabled).
    pub apikey: Option<Option<String>>,
    pub metadata: Option<String>,
    /// `table` (the default) or `region`.
    pub storage_mode: Option<String>,
    pub storage_id: Option<String>,
}

// The clear key never reaches a log line.
impl std::fmt::Debug for NewUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewUser")
            .field("user_id", &self.user_id)
            .field("username", &self.username)
            .field("role", &self.role)
            .field("apikey", &self.apikey.as_ref().map(|k| k.as_ref().map(|_| "***")))
            .finish_non_exhaustive()
    }
}

/// Roles a statement may give a user (`system` is reserved).
fn checked_role(role: &str) -> Result<String, EngineError> {
    match role.to_ascii_lowercase().as_str() {
        r @ ("user" | "service" | "dba") => Ok(r.to_owned()),
        "system" => Err(EngineError::user(ErrorCode::InvalidOperation, "Role 'system' is reserved for internal use")),
        _ => Err(EngineError::user(
            ErrorCode::InvalidOperation,
            format!("Invalid role '{role}'. Allowed roles: user, service, dba"),
        )),
    }
}

fn checked_username(name: &str) -> Result<String, EngineError> {
    if name.is_empty() || name.chars().count() > 128 {
        return Err(EngineError::user(ErrorCode::InvalidOperation, "username must be 1 to 128 characters"));
    }
    Ok(name.to_owned())
}

fn checked_metadata(json: &str) -> Result<String, EngineError> {
    serde_json::from_str::<serde_json::Value>(json)
        .map_err(|e| EngineError::user(ErrorCode::TypeError, format!("metadata must be valid JSON: {e}")))?;
    Ok(json.to_owned())
}

/// A key a statement sets: at least `MIN_API_KEY_LEN` characters, no surrounding spaces.
fn checked_key(key: String) -> Result<String, EngineError> {
    if key.trim() != key || key.chars().count() < MIN_API_KEY_LEN {
        return Err(EngineError::user(
            ErrorCode::InvalidOperation,
            format!("An API key must have at least {MIN_API_KEY_LEN} characters and no surrounding spaces"),
        ));
    }
    Ok(key)
}

fn checked_storage_mode(mode: &str) -> Result<String, EngineError> {
    match mode {
        "table" | "region" => Ok(mode.to_owned()),
        other => Err(EngineError::user(
            ErrorCode::InvalidOperation,
            format!("Invalid storage_mode '{other}'. Allowed: table, region"),
        )),
    }
}

/// Checks a set of users to insert together, so that either all or none are created: valid
/// fields, ids new and distinct, explicit keys distinct and unused.
pub fn check_new(store: &Store, new_users: &[NewUser]) -> Result<(), EngineError> {
    let mut ids = std::collections::HashSet::new();
    let mut keys = std::collections::HashSet::new();
    for new in new_users {
        let user_id = kalam_types::ids::UserId::parse(&new.user_id)?.as_str().to_owned();
        if !ids.insert(user_id.clone()) || get(store, &user_id)?.is_some() {
            return Err(EngineError::user(
                ErrorCode::UserExists,
                format!("User with user_id '{user_id}' already exists"),
            ));
        }
        checked_username(new.username.as_deref().unwrap_or(&user_id))?;
        checked_role(new.role.as_deref().unwrap_or("user"))?;
        new.metadata.as_deref().map(checked_metadata).transpose()?;
        checked_storage_mode(new.storage_mode.as_deref().unwrap_or("table"))?;
        if let Some(Some(key)) = &new.apikey {
            let hash = hash_api_key(&checked_key(key.clone())?);
            ensure_key_free(store, &hash, &user_id)?;
            if !keys.insert(hash) {
                return Err(EngineError::user(
                    ErrorCode::ConstraintViolation,
                    "API key is already in use by another user",
                ));
            }
        }
    }
    Ok(())
}

/// The columns an `UPDATE system.users` sets (`None`: unchanged).
#[derive(Default)]
pub struct UserPatch {
    pub username: Option<String>,
    pub email: Option<Option<String>>,
    pub role: Option<String>,
    pub metadata: Option<Option<String>>,
    /// `Some(None)` disables key authentication.
    pub apikey: Option<Option<String>>,
    pub storage_mode: Option<String>,
    pub storage_id: Option<Option<String>>,
    /// `deleted_at = NULL`: undo a soft delete (within the grace period, while the row exists).
    pub restore: bool,
}

/// Applies an UPDATE to one user.
pub fn patch(store: &Store, user_id: &str, patch: &UserPatch, now_us: i64) -> Result<(), EngineError> {
    let mut rec = get(store, user_id)?.ok_or_else(|| user_not_found(user_id))?;
    if rec.role == "system" {
        return Err(EngineError::user(ErrorCode::InvalidOperation, "The built-in system user cannot be altered"));
    }
    let old_hash = rec.apikey_sha256.clone();
    if let Some(name) = &patch.username {
        rec.username = checked_username(name)?;
    }
    if let Some(email) = &patch.email {
        rec.email = email.clone();
    }
    if let Some(role) = &patch.role {
        rec.role = checked_role(role)?;
    }
    if let Some(metadata) = &patch.metadata {
        rec.metadata = metadata.as_deref().map(checked_metadata).transpose()?;
    }
    if let Some(mode) = &patch.storage_mode {
        rec.storage_mode = checked_storage_mode(mode)?;
    }
    if let Some(id) = &patch.storage_id {
        rec.storage_id = id.clone();
    }
    match &patch.apikey {
        Some(Some(key)) => {
            let hash = hash_api_key(&checked_key(key.clone())?);
            ensure_key_free(store, &hash, user_id)?;
            rec.apikey_sha256 = Some(hash);
        }
        Some(None) => rec.apikey_sha256 = None,
        None => {}
    }
    if patch.restore {
        rec.deleted_at_us = None;
    }
    rec.updated_at_us = now_us;
    write(store, &rec, old_hash.as_deref())
}

/// Checks that no other user holds `hash`.
fn ensure_key_free(store: &Store, hash: &str, user_id: &str) -> Result<(), EngineError> {
    match store.get(cf::USER_APIKEYS, hash.as_bytes())? {
        Some(owner) if owner != user_id.as_bytes() => {
            Err(EngineError::user(ErrorCode::ConstraintViolation, "API key is already in use by another user"))
        }
        _ => Ok(()),
    }
}

/// Creates a user; returns the row and the clear API key (shown once).
pub fn create(store: &Store, new: NewUser, now_us: i64) -> Result<(UserRecord, Option<String>), EngineError> {
    let user_id = kalam_types::ids::UserId::parse(&new.user_id)?.as_str().to_owned();
    if get(store, &user_id)?.is_some() {
        return Err(EngineError::user(ErrorCode::UserExists, format!("User with user_id '{user_id}' already exists")));
    }
    let key = match new.apikey {
        None => Some(generate_api_key()),
        Some(Some(k)) => Some(checked_key(k)?),
        Some(None) => None,
    };
    let apikey_sha256 = key.as_deref().map(hash_api_key);
    if let Some(hash) = &apikey_sha256 {
        ensure_key_free(store, hash, &user_id)?;
    }
    let rec = UserRecord {
        username: checked_username(new.username.as_deref().unwrap_or(&user_id))?,
        email: new.email,
        role: checked_role(new.role.as_deref().unwrap_or("user"))?,
        apikey_sha256,
        metadata: new.metadata.as_deref().map(checked_metadata).transpose()?,
        storage_mode: checked_storage_mode(new.storage_mode.as_deref().unwrap_or("table"))?,
        storage_id: new.storage_id,
        created_at_us: now_us,
        updated_at_us: now_us,
        deleted_at_us: None,
        user_id,
    };
    write(store, &rec, None)?;
    Ok((rec, key))
}

/// A change `ALTER USER` makes.
#[derive(Debug, Clone, PartialEq)]
pub enum UserChange {
    Role(String),
    Username(String),
    Metadata(String),
    /// A new random key replaces the old one.
    ResetApiKey,
}

/// Applies one change; returns the new clear key for `ResetApiKey`.
pub fn alter(store: &Store, user_id: &str, change: UserChange, now_us: i64) -> Result<Option<String>, EngineError> {
    let mut rec = get(store, user_id)?.ok_or_else(|| user_not_found(user_id))?;
    if rec.role == "system" {
        return Err(EngineError::user(ErrorCode::InvalidOperation, "The built-in system user cannot be altered"));
    }
    let old_hash = rec.apikey_sha256.clone();
    let mut new_key = None;
    match change {
        UserChange::Role(r) => rec.role = checked_role(&r)?,
        UserChange::Username(n) => rec.username = checked_username(&n)?,
        UserChange::Metadata(m) => rec.metadata = Some(checked_metadata(&m)?),
        UserChange::ResetApiKey => {
            let key = generate_api_key();
            rec.apikey_sha256 = Some(hash_api_key(&key));
            new_key = Some(key);
        }
    }
    rec.updated_at_us = now_us;
    write(store, &rec, old_hash.as_deref())?;
    Ok(new_key)
}

/// Soft delete: the user can no longer authenticate; data stays until the grace period ends.
pub fn soft_delete(store: &Store, user_id: &str, now_us: i64) -> Result<(), EngineError> {
    let mut rec = get(store, user_id)?.filter(|u| u.deleted_at_us.is_none()).ok_or_else(|| user_not_found(user_id))?;
    if rec.role == "system" {
        return Err(EngineError::user(ErrorCode::InvalidOperation, "The built-in system user cannot be deleted"));
    }
    rec.deleted_at_us = Some(now_us);
    rec.updated_at_us = now_us;
    let hash = rec.apikey_sha256.clone();
    write(store, &rec, hash.as_deref())
}
