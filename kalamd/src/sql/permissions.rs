//! The permission matrix of sql.md §17, checked once per statement before it runs, always with
//! the principal's role. Denials are PERMISSION_DENIED (403), `permission denied: <reason>`.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{ObjectName, Statement, visit_relations};
use kalam_types::auth::{Identity, Role};
use kalam_types::error::ErrorCode;
use kalam_types::schema::{AccessLevel, TableType};

use super::parse::{KalamStatement, TableRef, object_parts};
use super::system;
use crate::engine::Engine;
use crate::error::EngineError;

fn denied(reason: impl std::fmt::Display) -> EngineError {
    EngineError::user(ErrorCode::PermissionDenied, format!("permission denied: {reason}"))
}

/// Requires at least `role`; `what` names the action in the message.
pub fn require(identity: &Identity, role: Role, what: &str) -> Result<(), EngineError> {
    if identity.role >= role {
        return Ok(());
    }
    let needed = match role {
        Role::Service => "service, dba or system",
        Role::Dba => "dba or system",
        Role::System => "system",
        Role::User => "user",
    };
    Err(denied(format!("{what} requires role {needed} (you are {})", identity.role.as_str())))
}

/// System tables a `user` principal may read (sql.md §17); the rows of some of them are then
/// limited to the principal's own (`system::visible_to`).
const USER_READABLE_SYSTEM_TABLES: [&str; 8] =
    ["namespaces", "tables", "table_schemas", "table_options", "jobs", "live_queries", "flush_status", "users"];

/// May `identity` read (or, with `write`, change) the table `name` refers to?
fn check_relation(engine: &Engine, identity: &Identity, name: &ObjectName, write: bool) -> Result<(), EngineError> {
    let Ok(table) = TableRef::parse(name) else { return Ok(()) };
    if system::is_builtin_namespace(&table.namespace) && table.qualifier.is_none() {
        if write && table.namespace == system::NAMESPACE && table.table == "users" {
            return require(identity, Role::Dba, "user management");
        }
        // Writes to other built-in tables are refused by name resolution, with their own message.
        let readable = table.namespace == system::INFORMATION_SCHEMA
            || USER_READABLE_SYSTEM_TABLES.contains(&table.table.as_str());
        if identity.role == Role::User && !readable && !write {
            return require(identity, Role::Service, &format!("reading {}.{}", table.namespace, table.table));
        }
        return Ok(());
    }
    // Unknown tables (and CTE names) are reported by the statement itself.
    let Some(def) = engine.catalog.table(&table.namespace, &table.table) else { return Ok(()) };
    let qualified = format!("{}.{}", table.namespace, table.table);
    match def.table_type {
        TableType::User | TableType::Stream => match table.qualifier.as_deref() {
            Some(other) if other != "user" && other != identity.acting.as_str() && identity.role == Role::User => {
                Err(denied("users may only access their own partitions"))
            }
            _ => Ok(()),
        },
        TableType::Shared => match (def.options.access, write) {
            (AccessLevel::Public, false) => Ok(()),
            (AccessLevel::Public, true) => {
                require(identity, Role::Service, &format!("writing shared table {qualified}"))
            }
            (AccessLevel::Private, _) => require(identity, Role::Service, &format!("private shared table {qualified}")),
            (AccessLevel::Restricted, _) => {
                require(identity, Role::Dba, &format!("restricted shared table {qualified}"))
            }
        },
    }
}

/// The table an INSERT, UPDATE or DELETE writes.
fn write_target(stmt: &Statement) -> Option<ObjectName> {
    use datafusion::sql::sqlparser::ast::{FromTable, TableFactor, TableObject};
    let factor_name = |f: &TableFactor| match f {
        TableFactor::Table { name, .. } => Some(name.clone()),
        _ => None,
    };
    match stmt {
        Statement::Insert(ins) => match &ins.table {
            TableObject::TableName(name) => Some(name.clone()),
            _ => None,
        },
        Statement::Update(update) => factor_name(&update.table.relation),
        Statement::Delete(delete) => {
            let tables = match &delete.from {
                FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => t,
            };
            tables.first().and_then(|t| factor_name(&t.relation))
        }
        _ => None,
    }
}

/// Checks every table a query or DML statement names: the written one for writing, the others
/// for reading.
fn check_relations(engine: &Engine, identity: &Identity, stmt: &Statement) -> Result<(), EngineError> {
    let target = write_target(stmt);
    let mut names = Vec::new();
    let _ = visit_relations(stmt, |name| {
        names.push(name.clone());
        ControlFlow::<()>::Continue(())
    });
    if let Some(t) = &target {
        check_relation(engine, identity, t, true)?;
    }
    for name in names.iter().filter(|n| Some(*n) != target.as_ref()) {
        check_relation(engine, identity, name, false)?;
    }
    Ok(())
}

fn check_named_table(engine: &Engine, identity: &Identity, ns: &str, table: &str) -> Result<(), EngineError> {
    let name = ObjectName::from(vec![ns.into(), table.into()]);
    check_relation(engine, identity, &name, false)
}

/// Refuses `stmt` when the principal's role may not run it (sql.md §17).
pub fn check(engine: &Engine, identity: &Identity, stmt: &KalamStatement) -> Result<(), EngineError> {
    use KalamStatement as S;
    if identity.role == Role::System {
        return Ok(());
    }
    match stmt {
        S::CreateNamespace { .. } | S::AlterNamespace { .. } | S::DropNamespace { .. } => {
            require(identity, Role::Dba, "namespace DDL")
        }
        S::CreateTable(_) | S::AlterTable { .. } | S::DropTable { .. } => require(identity, Role::Dba, "table DDL"),
        S::CreateStorage { .. } | S::AlterStorage { .. } | S::DropStorage { .. } => {
            require(identity, Role::Dba, "storage DDL")
        }
        S::CreateUser { .. } | S::AlterUser { .. } | S::DropUser { .. } => {
            require(identity, Role::Dba, "user management")
        }
        S::PauseFlush { .. } | S::ResumeFlush { .. } => require(identity, Role::Dba, "PAUSE/RESUME FLUSH"),
        S::AlterFlushSettings { .. } => require(identity, Role::Dba, "ALTER FLUSH SETTINGS"),
        S::FlushAll { .. } => require(identity, Role::Dba, "FLUSH ALL TABLES"),
        S::FlushTable { .. } => require(identity, Role::Service, "FLUSH TABLE"),
        S::KillJob { .. } => require(identity, Role::Service, "KILL JOB"),
        S::RetryJob { .. } => require(identity, Role::Service, "RETRY JOB"),
        S::ShowStorages => require(identity, Role::Service, "SHOW STORAGES"),
        // A user may end only its own live queries; checked against the live query's owner.
        S::KillLiveQuery { .. } => Ok(()),
        S::ShowNamespaces | S::ShowTables { .. } => Ok(()),
        S::Begin | S::Commit | S::Rollback => Ok(()),
        S::ClearCache => require(identity, Role::Dba, "CLEAR CACHE"),
        S::Describe { namespace, table } | S::ShowTableStats { namespace, table } => {
            check_named_table(engine, identity, namespace, table)
        }
        S::Subscribe { table, .. } => {
            let (ns, t) = object_parts(table)?;
            check_named_table(engine, identity, &ns, &t)
        }
        S::Query(s) | S::Insert(s) | S::Update(s) | S::Delete(s) => check_relations(engine, identity, s),
    }
}
