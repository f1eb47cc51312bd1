//! kalam-storage: where flushed files live and what they are called.
//!
//! In: a table's namespace, name and type, a user id, a job id. Out: the directory of a flush
//! group under a storage's base ([`group_dir`], from the path templates of storage.md §7) and
//! Parquet file names derived from the job ([`parquet_file_name`]), so that a retried job
//! overwrites its own files instead of adding new ones. kalamd reads these files through the
//! manifest; kalam-flushd writes them. Both call this crate, so the layout is defined once.

use chrono::DateTime;
use kalam_types::schema::{Sharding, TableType};

/// Default template of SHARED tables in storage `local`.
pub const DEFAULT_SHARED_TEMPLATE: &str = "{namespace}/shared/{tableName}";
/// Default template of USER tables in storage `local`.
pub const DEFAULT_USER_TEMPLATE: &str = "{namespace}/users/{tableName}/{shard}/{userId}";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("Unresolved template variable '{variable}' in path '{path}'")]
    Unresolved { variable: String, path: String },
    #[error("Path '{0}' escapes its storage")]
    Escapes(String),
}

/// Values substituted into a template.
#[derive(Debug, Clone, Copy)]
pub struct TemplateVars<'a> {
    pub namespace: &'a str,
    pub table: &'a str,
    pub user_id: Option<&'a str>,
    pub shard: &'a str,
}

/// Substitutes `{namespace}`, `{tableName}`, `{userId}`, `{shard}` (and the `${…}` and legacy
/// `${user_id}` / `${table_name}` spellings) in one pass, collapses `//`, trims `/`, and checks
/// that the result stays inside the storage.
pub fn resolve_template(template: &str, vars: TemplateVars<'_>) -> Result<String, PathError> {
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let dollar = start > 0 && rest.as_bytes()[start - 1] == b'$';
        out.push_str(&rest[..if dollar { start - 1 } else { start }]);
        let end = rest[start..]
            .find('}')
            .map(|e| start + e)
            .ok_or_else(|| PathError::Unresolved { variable: rest[start..].to_owned(), path: template.to_owned() })?;
        let name = &rest[start + 1..end];
        let value = match name {
            "namespace" => Some(vars.namespace),
            "tableName" | "table_name" => Some(vars.table),
            "userId" | "user_id" => vars.user_id,
            "shard" => Some(vars.shard),
            _ => None,
        };
        let value = value
            .ok_or_else(|| PathError::Unresolved { variable: format!("{{{name}}}"), path: template.to_owned() })?;
        out.push_str(value);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    let segments: Vec<&str> = out.split('/').filter(|s| !s.is_empty()).collect();
    if segments.iter().any(|s| *s == ".." || *s == ".") || template.starts_with('/') {
        return Err(PathError::Escapes(out));
    }
    Ok(segments.join("/"))
}

/// The directory (relative to the storage base) holding one flush group's files.
/// `sharding` gives `{shard}` of USER tables.
pub fn group_dir(
    table_type: TableType,
    namespace: &str,
    table: &str,
    user_id: Option<&str>,
    sharding: Sharding,
) -> Result<String, PathError> {
    let template = match table_type {
        TableType::Shared => DEFAULT_SHARED_TEMPLATE,
        TableType::User | TableType::Stream => DEFAULT_USER_TEMPLATE,
    };
    let shard = user_id.map(|u| sharding.shard_of(u)).unwrap_or_default();
    resolve_template(template, TemplateVars { namespace, table, user_id, shard: &shard })
}

/// `<YYYY-MM-DDTHH-MM-SS>-<job_id>-<n>.parquet`, the time being the job's creation (UTC).
pub fn parquet_file_name(job_created_at_us: i64, job_id: &str, n: u32) -> String {
    let stamp = DateTime::from_timestamp_micros(job_created_at_us)
        .map(|t| t.format("%Y-%m-%dT%H-%M-%S").to_string())
        .unwrap_or_else(|| "1970-01-01T00-00-00".to_owned());
    format!("{stamp}-{job_id}-{n}.parquet")
}

/// Temporary name a file is written under before it is renamed into place.
pub fn temp_file_name(final_name: &str) -> String {
    format!(".{final_name}.tmp")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(user: Option<&'static str>) -> TemplateVars<'static> {
        TemplateVars { namespace: "app", table: "messages", user_id: user, shard: "" }
    }

    #[test]
    fn default_templates_match_the_documented_layout() {
        assert_eq!(
            group_dir(TableType::User, "app", "messages", Some("user123"), Sharding::None).unwrap(),
            "app/users/messages/user123"
        );
        assert_eq!(group_dir(TableType::Shared, "app", "config", None, Sharding::None).unwrap(), "app/shared/config");
        assert_eq!(
            group_dir(TableType::User, "app", "messages", Some("user123"), Sharding::Alphabetic).unwrap(),
            "app/users/messages/u/user123"
        );
    }

    #[test]
    fn aliases_and_errors() {
        assert_eq!(resolve_template("${namespace}/x/${user_id}", vars(Some("u1"))).unwrap(), "app/x/u1");
        let err = resolve_template("{namespace}/{bogus}", vars(None)).unwrap_err();
        assert_eq!(err.to_string(), "Unresolved template variable '{bogus}' in path '{namespace}/{bogus}'");
        assert!(matches!(resolve_template("{namespace}/{userId}", vars(None)), Err(PathError::Unresolved { .. })));
        assert!(matches!(resolve_template("{namespace}/../x", vars(None)), Err(PathError::Escapes(_))));
    }

    #[test]
    fn file_names_carry_the_job() {
        assert_eq!(
            parquet_file_name(1_761_143_400_000_000, "flush-messages-1-ab", 1),
            "2025-10-22T14-30-00-flush-messages-1-ab-1.parquet"
        );
    }
}
