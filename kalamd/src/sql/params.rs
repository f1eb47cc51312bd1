//! Positional parameters `$1 … $N` (sql.md §10). Each placeholder in the parsed statement is
//! replaced by a literal node built from its JSON value, so a parameter can never change the
//! statement's structure; the literal then goes through the usual coercion of its context.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{Expr, Statement, Value as SqlValue, visit_expressions, visit_expressions_mut};
use kalam_types::error::{ErrorCode, KalamError};
use serde_json::Value as Json;

/// Replaces the placeholders of `stmt` with `params`.
pub fn bind(stmt: &mut Statement, params: &[Json]) -> Result<(), KalamError> {
    let mut used = BTreeSet::new();
    let mut invalid = None;
    let _ = visit_expressions(stmt, |e| {
        if let Expr::Value(v) = e
            && let SqlValue::Placeholder(text) = &v.value
        {
            match text.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()).filter(|n| *n >= 1) {
                Some(n) => {
                    used.insert(n);
                }
                None => invalid = Some(text.clone()),
            }
        }
        ControlFlow::<()>::Continue(())
    });
    let max = used.last().copied().unwrap_or(0);
    if let Some(text) = invalid {
        return Err(KalamError::new(ErrorCode::InvalidSql, format!("invalid parameter placeholder: {text}")));
    }
    if let Some(gap) = (1..=max).find(|n| !used.contains(n)) {
        return Err(KalamError::new(
            ErrorCode::InvalidSql,
            format!("invalid parameter placeholder: ${gap} is missing"),
        ));
    }
    if params.len() != max {
        return Err(KalamError::new(
            ErrorCode::ParamCountMismatch,
            format!("parameter mismatch: expected {max} parameters, got {}", params.len()),
        ));
    }
    let _ = visit_expressions_mut(stmt, |e| {
        if let Expr::Value(v) = e
            && let SqlValue::Placeholder(text) = &v.value
            && let Some(param) =
                text.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()).and_then(|n| params.get(n - 1))
        {
            *e = Expr::Value(literal(param).into());
        }
        ControlFlow::<()>::Continue(())
    });
    Ok(())
}

fn literal(param: &Json) -> SqlValue {
    match param {
        Json::Null => SqlValue::Null,
        Json::Bool(b) => SqlValue::Boolean(*b),
        Json::Number(n) => SqlValue::Number(n.to_string(), false),
        Json::String(s) => SqlValue::SingleQuotedString(s.clone()),
        // Objects and arrays are JSON column values.
        other => SqlValue::SingleQuotedString(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;
    use serde_json::json;

    use super::*;

    fn parse(sql: &str) -> Statement {
        Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap().remove(0)
    }

    #[test]
    fn placeholders_become_literals() {
        let mut stmt = parse("SELECT * FROM t WHERE a = $1 AND b = $2 AND c = $1");
        bind(&mut stmt, &[json!("it's"), json!(7)]).unwrap();
        assert_eq!(stmt.to_string(), "SELECT * FROM t WHERE a = 'it''s' AND b = 7 AND c = 'it''s'");
        let mut stmt = parse("INSERT INTO t VALUES ($1, $2, $3)");
        bind(&mut stmt, &[json!(null), json!(true), json!({"k": [1]})]).unwrap();
        assert_eq!(stmt.to_string(), r#"INSERT INTO t VALUES (NULL, true, '{"k":[1]}')"#);
    }

    #[test]
    fn counts_and_numbering_are_checked() {
        let err = bind(&mut parse("SELECT $1, $2"), &[json!(1)]).unwrap_err();
        assert_eq!(
            (err.code, err.message.as_str()),
            (ErrorCode::ParamCountMismatch, "parameter mismatch: expected 2 parameters, got 1")
        );
        assert!(bind(&mut parse("SELECT $2"), &[json!(1), json!(2)]).unwrap_err().message.contains("$1 is missing"));
        assert!(bind(&mut parse("SELECT 1"), &[json!(1)]).is_err());
        assert!(bind(&mut parse("SELECT 1"), &[]).is_ok());
    }
}
