//! User management statements (sql.md §14); `permissions` admits only `dba` and `system`.

use kalam_types::error::ErrorCode;
use serde_json::Value as Json;

use super::StatementResult;
use crate::clock::wall_clock_us;
use crate::engine::Engine;
use crate::error::EngineError;
use crate::rowjson::OrderedRow;
use crate::users::{self, NewUser, UserChange};

/// The one row `user_id, apikey` through which a clear key is shown, once.
fn key_row(user_id: &str, key: Option<String>, message: String) -> StatementResult {
    let row = OrderedRow(vec![
        ("user_id".into(), Json::String(user_id.to_owned())),
        ("apikey".into(), key.map(Json::String).unwrap_or(Json::Null)),
    ]);
    StatementResult {
        columns: vec!["user_id".into(), "apikey".into()],
        rows: Some(vec![row]),
        row_count: 1,
        message: Some(message),
        cache_hit: None,
    }
}

pub fn create_user(engine: &Engine, user: NewUser, if_not_exists: bool) -> Result<StatementResult, EngineError> {
    match users::create(&engine.store, user.clone(), wall_clock_us()) {
        Ok((rec, key)) => {
            tracing::info!(user_id = rec.user_id, role = rec.role, "user created");
            let message = format!("User '{}' created", rec.user_id);
            Ok(key_row(&rec.user_id, key, message))
        }
        Err(EngineError::User(e)) if e.code == ErrorCode::UserExists && if_not_exists => {
            Ok(StatementResult::message(0, format!("User '{}' already exists (skipped)", user.user_id)))
        }
        Err(e) => Err(e),
    }
}

pub fn alter_user(engine: &Engine, user_id: &str, change: UserChange) -> Result<StatementResult, EngineError> {
    let reset = change == UserChange::ResetApiKey;
    let key = users::alter(&engine.store, user_id, change, wall_clock_us())?;
    tracing::info!(user_id, "user altered");
    if reset {
        return Ok(key_row(user_id, key, format!("API key of user '{user_id}' reset")));
    }
    Ok(StatementResult::message(1, format!("User '{user_id}' updated")))
}

pub fn drop_user(engine: &Engine, user_id: &str, if_exists: bool) -> Result<StatementResult, EngineError> {
    match users::soft_delete(&engine.store, user_id, wall_clock_us()) {
        Ok(()) => {
            tracing::info!(user_id, "user deleted (soft)");
            // Without a grace period the cleanup is due at once.
            if engine.cfg.auth.user_deletion_grace_period_days == 0 {
                engine.purge_deleted_users()?;
            }
            Ok(StatementResult::message(1, format!("User '{user_id}' deleted")))
        }
        Err(EngineError::User(e)) if e.code == ErrorCode::UserNotFound && if_exists => {
            Ok(StatementResult::message(0, format!("User '{user_id}' does not exist (skipped)")))
        }
        Err(e) => Err(e),
    }
}
