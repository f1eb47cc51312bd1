//! INSERT, UPDATE and DELETE on `system.users` (sql.md §14); `permissions` admits only `dba`
//! and `system`. Values are literals (or bound parameters); UPDATE and DELETE select users with
//! any WHERE clause over the table's columns, soft-deleted users included (so
//! `SET deleted_at = NULL` can restore one).

use datafusion::arrow::array::{Array, BooleanArray};
use datafusion::common::DFSchema;
use datafusion::sql::sqlparser::ast::{
    AssignmentTarget, Delete, Expr, FromTable, Insert, SetExpr, Statement, TableFactor, TableObject, Update,
};
use kalam_types::error::ErrorCode;
use kalam_types::ids::UserId;
use kalam_types::value::Literal;

use super::StatementResult;
use super::parse::{TableRef, ident_name, literal, target_column_name};
use crate::clock::wall_clock_us;
use crate::engine::Engine;
use crate::error::EngineError;
use crate::sql::eval::ExprEvaluator;
use crate::users::{self, NewUser, UserPatch};

/// Columns an INSERT may give; the others are set by the server.
const INSERTABLE: [&str; 8] =
    ["user_id", "username", "email", "role", "metadata", "apikey", "storage_mode", "storage_id"];

/// True when `stmt` writes `system.users`.
pub fn targets_users(stmt: &Statement) -> bool {
    let name = match stmt {
        Statement::Insert(Insert { table: TableObject::TableName(name), .. }) => name,
        Statement::Update(Update { table, .. }) => match &table.relation {
            TableFactor::Table { name, .. } => name,
            _ => return false,
        },
        Statement::Delete(Delete { from: FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t), .. }) => {
            match t.first().map(|t| &t.relation) {
                Some(TableFactor::Table { name, .. }) => name,
                _ => return false,
            }
        }
        _ => return false,
    };
    TableRef::parse(name)
        .is_ok_and(|t| t.namespace == super::system::NAMESPACE && t.table == "users" && t.qualifier.is_none())
}

pub fn execute(engine: &Engine, stmt: &Statement) -> Result<StatementResult, EngineError> {
    match stmt {
        Statement::Insert(ins) => insert(engine, ins),
        Statement::Update(update) => self::update(engine, update),
        Statement::Delete(delete) => self::delete(engine, delete),
        _ => Err(EngineError::internal("users_dml::execute() called with another statement")),
    }
}

fn invalid(message: impl Into<String>) -> EngineError {
    EngineError::user(ErrorCode::InvalidSql, message)
}

/// A value written into a TEXT column of system.users: a string or NULL.
fn text_value(expr: &Expr, column: &str) -> Result<Option<String>, EngineError> {
    match literal(expr)? {
        Literal::Null => Ok(None),
        Literal::String(s) => Ok(Some(s)),
        other => Err(EngineError::user(
            ErrorCode::TypeError,
            format!("column '{column}' of system.users takes a string, not {other:?}"),
        )),
    }
}

fn insert(engine: &Engine, ins: &Insert) -> Result<StatementResult, EngineError> {
    if ins.columns.is_empty() {
        return Err(invalid("INSERT INTO system.users needs a column list (user_id, username, …)"));
    }
    let columns: Vec<String> = ins.columns.iter().map(target_column_name).collect();
    if let Some(c) = columns.iter().find(|c| !INSERTABLE.contains(&c.as_str())) {
        return Err(invalid(format!("Column '{c}' of system.users cannot be inserted (it is set by the server)")));
    }
    let Some(SetExpr::Values(values)) = ins.source.as_ref().map(|q| q.body.as_ref()) else {
        return Err(invalid("INSERT INTO system.users takes a VALUES list"));
    };
    let mut new_users = Vec::with_capacity(values.rows.len());
    for row in &values.rows {
        let row = &row.content;
        if row.len() != columns.len() {
            return Err(invalid(format!("INSERT has {} columns but {} values", columns.len(), row.len())));
        }
        let mut new = NewUser::default();
        let mut username = None;
        for (column, expr) in columns.iter().zip(row) {
            let value = text_value(expr, column)?;
            match column.as_str() {
                "user_id" => new.user_id = value.unwrap_or_default(),
                "username" => username = Some(value),
                "email" => new.email = value,
                "role" => new.role = value,
                "metadata" => new.metadata = value,
                "apikey" => new.apikey = Some(value),
                "storage_mode" => new.storage_mode = value,
                _ => new.storage_id = value,
            }
        }
        if new.user_id.is_empty() {
            return Err(not_null("user_id"));
        }
        // Unlike CREATE USER, an INSERT names the username.
        new.username = Some(username.flatten().ok_or_else(|| not_null("username"))?);
        new_users.push(new);
    }
    // Every row is checked before any is written: the statement inserts all or nothing.
    let now = wall_clock_us();
    users::check_new(&engine.store, &new_users)?;
    for id in new_users.iter().filter_map(|u| u.storage_id.as_deref()) {
        require_storage(engine, id)?;
    }
    let n = new_users.len() as u64;
    for new in new_users {
        let (rec, _) = users::create(&engine.store, new, now)?;
        tracing::info!(user_id = rec.user_id, role = rec.role, "user created");
    }
    Ok(StatementResult::message(n, format!("Inserted {n} row(s)")))
}

/// `storage_id` must name an existing storage.
fn require_storage(engine: &Engine, id: &str) -> Result<(), EngineError> {
    match engine.storage(id)? {
        Some(_) => Ok(()),
        None => Err(EngineError::user(ErrorCode::InvalidOperation, format!("Storage '{id}' does not exist"))),
    }
}

fn not_null(column: &str) -> EngineError {
    EngineError::user(ErrorCode::ConstraintViolation, format!("NOT NULL violation: column '{column}' cannot be null"))
}

/// The users a WHERE clause selects (soft-deleted ones included), in user-id order.
fn matching_users(engine: &Engine, selection: Option<&Expr>) -> Result<Vec<String>, EngineError> {
    let (schema, batch) = super::system::users_batch(engine)?;
    let ids = batch
        .column(0)
        .as_any()
        .downcast_ref::<datafusion::arrow::array::StringArray>()
        .ok_or_else(|| EngineError::internal("system.users.user_id is not text"))?
        .clone();
    let Some(predicate) = selection else {
        return Ok((0..ids.len()).map(|i| ids.value(i).to_owned()).collect());
    };
    let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
    let eval = ExprEvaluator::new(engine, &UserId::system(), wall_clock_us());
    let mask = eval.evaluate(&df_schema, &batch, predicate)?;
    let mask = mask
        .as_any()
        .downcast_ref::<BooleanArray>()
        .ok_or_else(|| EngineError::user(ErrorCode::InvalidSql, "WHERE must be a boolean condition"))?;
    Ok((0..ids.len()).filter(|&i| mask.is_valid(i) && mask.value(i)).map(|i| ids.value(i).to_owned()).collect())
}

/// `user_id = '<id>'`: the id, so a statement that matches nobody can say who was not found.
fn named_user(selection: Option<&Expr>) -> Option<String> {
    let Some(Expr::BinaryOp { left, op: datafusion::sql::sqlparser::ast::BinaryOperator::Eq, right }) = selection
    else {
        return None;
    };
    match (left.as_ref(), right.as_ref()) {
        (Expr::Identifier(id), value) | (value, Expr::Identifier(id)) if ident_name(id) == "user_id" => {
            match literal(value) {
                Ok(Literal::String(s)) => Some(s),
                _ => None,
            }
        }
        _ => None,
    }
}

fn none_matched(selection: Option<&Expr>, verb: &str) -> Result<StatementResult, EngineError> {
    match named_user(selection) {
        Some(id) => Err(EngineError::user(ErrorCode::UserNotFound, format!("User with user_id '{id}' not found"))),
        None => Ok(StatementResult::message(0, format!("{verb} 0 row(s)"))),
    }
}

fn update(engine: &Engine, update: &Update) -> Result<StatementResult, EngineError> {
    if update.from.is_some() || update.returning.is_some() || update.limit.is_some() {
        return Err(EngineError::user(
            ErrorCode::UnsupportedStatement,
            "UPDATE ... FROM / RETURNING / LIMIT is not supported",
        ));
    }
    let mut patch = UserPatch::default();
    for a in &update.assignments {
        let AssignmentTarget::ColumnName(col) = &a.target else {
            return Err(EngineError::user(ErrorCode::UnsupportedStatement, "Tuple assignment is not supported"));
        };
        let column = target_column_name(col);
        let value = || text_value(&a.value, &column);
        match column.as_str() {
            "username" => patch.username = Some(value()?.ok_or_else(|| not_null("username"))?),
            "email" => patch.email = Some(value()?),
            "role" => patch.role = Some(value()?.ok_or_else(|| not_null("role"))?),
            "metadata" => patch.metadata = Some(value()?),
            "apikey" => patch.apikey = Some(value()?),
            "storage_mode" => patch.storage_mode = Some(value()?.ok_or_else(|| not_null("storage_mode"))?),
            "storage_id" => patch.storage_id = Some(value()?),
            "deleted_at" => match literal(&a.value) {
                Ok(Literal::Null) => patch.restore = true,
                _ => {
                    return Err(EngineError::user(
                        ErrorCode::InvalidOperation,
                        "deleted_at can only be set to NULL (restore); use DELETE to delete a user",
                    ));
                }
            },
            "user_id" | "created_at" | "updated_at" => {
                return Err(EngineError::user(
                    ErrorCode::InvalidOperation,
                    format!("Column '{column}' of system.users cannot be updated"),
                ));
            }
            other => {
                return Err(EngineError::user(ErrorCode::ColumnNotFound, format!("column \"{other}\" does not exist")));
            }
        }
    }
    let matched = matching_users(engine, update.selection.as_ref())?;
    if matched.is_empty() {
        return none_matched(update.selection.as_ref(), "Updated");
    }
    // An API key belongs to one user.
    if matched.len() > 1 && matches!(patch.apikey, Some(Some(_))) {
        return Err(EngineError::user(ErrorCode::ConstraintViolation, "API key is already in use by another user"));
    }
    if let Some(Some(id)) = &patch.storage_id {
        require_storage(engine, id)?;
    }
    let now = wall_clock_us();
    for id in &matched {
        users::patch(&engine.store, id, &patch, now)?;
        tracing::info!(user_id = id, restored = patch.restore, "user updated");
    }
    let n = matched.len() as u64;
    Ok(StatementResult::message(n, format!("Updated {n} row(s)")))
}

fn delete(engine: &Engine, delete: &Delete) -> Result<StatementResult, EngineError> {
    if delete.using.is_some() || delete.returning.is_some() || delete.limit.is_some() || !delete.order_by.is_empty() {
        return Err(EngineError::user(
            ErrorCode::UnsupportedStatement,
            "DELETE ... USING / RETURNING / LIMIT / ORDER BY is not supported",
        ));
    }
    let now = wall_clock_us();
    let live: Vec<String> = matching_users(engine, delete.selection.as_ref())?
        .into_iter()
        .filter(|id| users::get(&engine.store, id).ok().flatten().is_some_and(|u| u.deleted_at_us.is_none()))
        .collect();
    if live.is_empty() {
        return none_matched(delete.selection.as_ref(), "Deleted");
    }
    if live.iter().any(|id| id == users::SYSTEM_USER) {
        return Err(EngineError::user(ErrorCode::InvalidOperation, "The built-in system user cannot be deleted"));
    }
    for id in &live {
        users::soft_delete(&engine.store, id, now)?;
        tracing::info!(user_id = id, "user deleted (soft)");
    }
    // Without a grace period the cleanup is due at once.
    if engine.cfg.auth.user_deletion_grace_period_days == 0 {
        engine.purge_deleted_users()?;
    }
    let n = live.len() as u64;
    Ok(StatementResult::message(n, format!("Deleted {n} row(s)")))
}
