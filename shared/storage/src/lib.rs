//! kalam-storage: where flushed files live and what they are called.
//!
//! In: a table's namespace, name and type, a user id, a job id. Out: the directory of a flush
//! group under a storage's base ([`group_dir`], from the path templates of storage.md §7) and
//! Parquet file names derived from the job ([`parquet_file_name`]), so that a retried job
//! overwrites its own files instead of adding new ones. kalamd reads these files through the
//! manifest; kalam-flushd writes them. Both call this crate, so the layout is defined once.

pub mod s3;

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

/// The two path templates of a storage.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Templates {
    pub shared: String,
    pub user: String,
}

impl Default for Templates {
    fn default() -> Self {
        Self { shared: DEFAULT_SHARED_TEMPLATE.to_owned(), user: DEFAULT_USER_TEMPLATE.to_owned() }
    }
}

/// The variables of a template in order of appearance (`${…}` and legacy spellings folded to
/// their canonical names); an unknown variable is an error.
fn template_variables(template: &str) -> Result<Vec<&'static str>, String> {
    let mut vars = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let end = rest[start..].find('}').map(|e| start + e).ok_or_else(|| format!("unclosed '{{' in '{template}'"))?;
        vars.push(match &rest[start + 1..end] {
            "namespace" => "namespace",
            "tableName" | "table_name" => "tableName",
            "userId" | "user_id" => "userId",
            "shard" => "shard",
            other => return Err(format!("unknown variable '{{{other}}}'")),
        });
        rest = &rest[end + 1..];
    }
    Ok(vars)
}

/// Checks a storage template against the rules of storage.md §7 (at CREATE/ALTER STORAGE). The
/// error names the rule, e.g. `User table template: {userId} is required`.
pub fn validate_template(table_type: TableType, template: &str) -> Result<(), String> {
    let kind = if table_type == TableType::Shared { "Shared table template" } else { "User table template" };
    let fail = |rule: String| Err(format!("{kind}: {rule}"));
    if template.starts_with('/') || template.split('/').any(|s| s == ".." || s == ".") {
        return fail("must be a relative path without '.' or '..' segments".into());
    }
    let vars = match template_variables(template) {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    let position = |v: &str| vars.iter().position(|x| *x == v);
    if vars.iter().enumerate().any(|(i, v)| vars[..i].contains(v)) {
        return fail("a variable appears more than once".into());
    }
    if table_type == TableType::Shared {
        if position("userId").is_some() {
            return fail("{userId} is not allowed".into());
        }
        if position("shard").is_some() {
            return fail("{shard} is not allowed".into());
        }
        match (position("namespace"), position("tableName")) {
            (None, _) => return fail("{namespace} is required".into()),
            (_, None) => return fail("{tableName} is required".into()),
            (Some(n), Some(t)) if n > t => return fail("{namespace} must come before {tableName}".into()),
            _ => {}
        }
    } else {
        if position("userId").is_none() {
            return fail("{userId} is required".into());
        }
        let order = ["namespace", "tableName", "shard", "userId"];
        let present: Vec<usize> = order.iter().filter_map(|v| position(v)).collect();
        if present.windows(2).any(|w| w[0] > w[1]) {
            return fail("variables must appear in the order {namespace}, {tableName}, {shard}, {userId}".into());
        }
    }
    Ok(())
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
/// `sharding` gives `{shard}` of USER tables; `templates` are the storage's.
pub fn group_dir(
    table_type: TableType,
    namespace: &str,
    table: &str,
    user_id: Option<&str>,
    sharding: Sharding,
    templates: &Templates,
) -> Result<String, PathError> {
    let template = match table_type {
        TableType::Shared => templates.shared.as_str(),
        TableType::User | TableType::Stream => templates.user.as_str(),
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

/// The job id in the name of a file a flush writes (final or temporary), or `None` for any
/// other name: `<stamp>-<job_id>-<n>.parquet` and `.<that>.tmp`.
pub fn flush_file_job(name: &str) -> Option<&str> {
    let name = name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")).unwrap_or(name);
    let stem = name.strip_suffix(".parquet")?;
    let (rest, n) = stem.rsplit_once('-')?;
    // The stamp is `YYYY-MM-DDTHH-MM-SS` (19 characters), then `-`.
    let job = rest.get(20..).filter(|_| rest.as_bytes().get(19) == Some(&b'-'))?;
    let numbered = !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit());
    (numbered && rest.as_bytes().get(10) == Some(&b'T') && !job.is_empty()).then_some(job)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_file_names_give_back_their_job() {
        let name = parquet_file_name(1_700_000_000_000_000, "flush-t-1-00ab", 3);
        assert_eq!(flush_file_job(&name), Some("flush-t-1-00ab"));
        assert_eq!(flush_file_job(&temp_file_name(&name)), Some("flush-t-1-00ab"));
        for other in ["notes.parquet", "x.csv", "2023-11-14T22-13-20-flush-t-1-00ab-x.parquet", ".hidden"] {
            assert_eq!(flush_file_job(other), None, "{other}");
        }
    }

    fn vars(user: Option<&'static str>) -> TemplateVars<'static> {
        TemplateVars { namespace: "app", table: "messages", user_id: user, shard: "" }
    }

    #[test]
    fn default_templates_match_the_documented_layout() {
        assert_eq!(
            group_dir(TableType::User, "app", "messages", Some("user123"), Sharding::None, &Templates::default())
                .unwrap(),
            "app/users/messages/user123"
        );
        let t = Templates::default();
        assert_eq!(
            group_dir(TableType::Shared, "app", "config", None, Sharding::None, &t).unwrap(),
            "app/shared/config"
        );
        assert_eq!(
            group_dir(TableType::User, "app", "messages", Some("user123"), Sharding::Alphabetic, &t).unwrap(),
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
    fn templates_are_validated_with_the_rule_that_failed() {
        let user = |t| validate_template(TableType::User, t);
        let shared = |t| validate_template(TableType::Shared, t);
        assert!(user(DEFAULT_USER_TEMPLATE).is_ok() && shared(DEFAULT_SHARED_TEMPLATE).is_ok());
        assert!(user("{namespace}/{tableName}/{userId}").is_ok());
        assert!(user("${namespace}/${table_name}/${user_id}").is_ok());
        assert_eq!(user("{namespace}/{tableName}").unwrap_err(), "User table template: {userId} is required");
        assert!(user("{userId}/{namespace}").unwrap_err().contains("in the order"));
        assert!(user("{namespace}/{bogus}/{userId}").unwrap_err().contains("unknown variable '{bogus}'"));
        assert_eq!(
            shared("{tableName}/{namespace}").unwrap_err(),
            "Shared table template: {namespace} must come before {tableName}"
        );
        assert_eq!(
            shared("{namespace}/{tableName}/{userId}").unwrap_err(),
            "Shared table template: {userId} is not allowed"
        );
        assert!(shared("/abs/{namespace}/{tableName}").is_err());
        assert!(shared("{namespace}/../{tableName}").is_err());
    }

    #[test]
    fn file_names_carry_the_job() {
        assert_eq!(
            parquet_file_name(1_761_143_400_000_000, "flush-messages-1-ab", 1),
            "2025-10-22T14-30-00-flush-messages-1-ab-1.parquet"
        );
    }
}
