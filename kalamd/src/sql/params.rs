//! Positional parameters `$1 … $N` (sql.md §10). Each placeholder in the parsed statement is
//! replaced by a literal node built from its JSON value, so a parameter can never change the
//! statement's structure; the literal then goes through the usual coercion of its context.
//!
//! Before binding, [`check_types`] checks each parameter whose column is known from its position
//! against that column's type, so a bad value is reported as the parameter's fault
//! (`PARAM_TYPE_MISMATCH`), not as a bad literal in a statement the client never wrote.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    AssignmentTarget, BinaryOperator, Delete, Expr, FromTable, ObjectName, SetExpr, Statement, TableFactor,
    TableObject, TableWithJoins, Update, Value as SqlValue, visit_expressions, visit_expressions_mut,
};
use kalam_types::KalamType;
use kalam_types::error::{ErrorCode, KalamError};
use kalam_types::ids::UserId;
use kalam_types::schema::TableDefinition;
use kalam_types::value::{Literal, Value};
use serde_json::Value as Json;

use crate::engine::Engine;
use crate::sql::parse::{TableRef, ident_name, target_column_name};

/// Replaces the placeholders of `stmt` with `params`.
#[cfg(test)]
pub fn bind(stmt: &mut Statement, params: &[Json]) -> Result<(), KalamError> {
    check_count(stmt, params)?;
    substitute(stmt, params);
    Ok(())
}

/// Checks that the placeholders are numbered `$1 … $N` without gaps and that `params` has N values.
pub fn check_count(stmt: &Statement, params: &[Json]) -> Result<(), KalamError> {
    let mut used = BTreeSet::new();
    let mut invalid = None;
    let _ = visit_expressions(stmt, |e| {
        if let Expr::Value(v) = e
            && let SqlValue::Placeholder(text) = &v.value
        {
            match placeholder_number(text) {
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
    Ok(())
}

/// Replaces each placeholder with the literal of its parameter; run [`check_count`] first.
pub fn substitute(stmt: &mut Statement, params: &[Json]) {
    let _ = visit_expressions_mut(stmt, |e| {
        if let Expr::Value(v) = e
            && let SqlValue::Placeholder(text) = &v.value
            && let Some(param) = placeholder_number(text).and_then(|n| params.get(n - 1))
        {
            *e = Expr::Value(literal(param).into());
        }
        ControlFlow::<()>::Continue(())
    });
}

/// The number `K` of a `$K` placeholder's text; None for any other spelling.
fn placeholder_number(text: &str) -> Option<usize> {
    text.strip_prefix('$')?.parse().ok().filter(|n| *n >= 1)
}

/// The number `K` of a `$K` placeholder expression.
pub(crate) fn placeholder(expr: &Expr) -> Option<usize> {
    match expr {
        Expr::Value(v) => match &v.value {
            SqlValue::Placeholder(text) => placeholder_number(text),
            _ => None,
        },
        Expr::Nested(inner) => placeholder(inner),
        _ => None,
    }
}

/// The column named by a plain or qualified identifier.
fn column_name(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Identifier(id) => Some(ident_name(id)),
        Expr::CompoundIdentifier(parts) => parts.last().map(ident_name),
        Expr::Nested(inner) => column_name(inner),
        _ => None,
    }
}

/// The single table a statement reads or writes, if it has exactly one.
fn single_table(stmt: &Statement) -> Option<&ObjectName> {
    fn relation(t: &TableWithJoins) -> Option<&ObjectName> {
        match &t.relation {
            TableFactor::Table { name, .. } if t.joins.is_empty() => Some(name),
            _ => None,
        }
    }
    match stmt {
        Statement::Insert(ins) => match &ins.table {
            TableObject::TableName(name) => Some(name),
            _ => None,
        },
        Statement::Update(Update { table, from: None, .. }) => relation(table),
        Statement::Delete(Delete {
            from: FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from), ..
        }) if from.len() == 1 => relation(&from[0]),
        Statement::Query(q) => match q.body.as_ref() {
            SetExpr::Select(select) if select.from.len() == 1 => relation(&select.from[0]),
            _ => None,
        },
        _ => None,
    }
}

/// The (placeholder, column) pairs whose column follows from the statement's shape: INSERT values,
/// UPDATE SET values and comparisons or IN lists between a column and a placeholder.
fn typed_placeholders(stmt: &Statement, def: &TableDefinition) -> Vec<(usize, String)> {
    let mut pairs = Vec::new();
    match stmt {
        Statement::Insert(ins) => {
            // Positions the INSERT itself would refuse are left to its own error.
            let positions = crate::sql::dml::column_positions(def, ins).unwrap_or_default();
            if let Some(source) = &ins.source
                && let SetExpr::Values(values) = source.body.as_ref()
            {
                for row in &values.rows {
                    pairs.extend(
                        row.iter()
                            .zip(&positions)
                            .filter_map(|(e, &idx)| Some((placeholder(e)?, def.columns[idx].name.clone()))),
                    );
                }
            }
        }
        Statement::Update(Update { assignments, .. }) => {
            for a in assignments {
                if let AssignmentTarget::ColumnName(col) = &a.target
                    && let Some(k) = placeholder(&a.value)
                {
                    pairs.push((k, target_column_name(col)));
                }
            }
        }
        _ => {}
    }
    // A column named inside a subquery may belong to another table: compare only without them.
    let nested = visit_expressions(stmt, |e| match e {
        Expr::Subquery(_) | Expr::InSubquery { .. } | Expr::Exists { .. } => ControlFlow::Break(()),
        _ => ControlFlow::Continue(()),
    });
    if nested.is_break() {
        return pairs;
    }
    let _ = visit_expressions(stmt, |e| {
        match e {
            Expr::BinaryOp {
                left,
                op:
                    BinaryOperator::Eq
                    | BinaryOperator::NotEq
                    | BinaryOperator::Lt
                    | BinaryOperator::LtEq
                    | BinaryOperator::Gt
                    | BinaryOperator::GtEq,
                right,
            } => {
                if let (Some(c), Some(k)) = (column_name(left), placeholder(right)) {
                    pairs.push((k, c));
                } else if let (Some(k), Some(c)) = (placeholder(left), column_name(right)) {
                    pairs.push((k, c));
                }
            }
            Expr::InList { expr, list, .. } => {
                if let Some(c) = column_name(expr) {
                    pairs.extend(list.iter().filter_map(|e| Some((placeholder(e)?, c.clone()))));
                }
            }
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
    pairs
}

/// The JSON kind of a parameter, as error messages name it.
fn json_kind(value: &Json) -> &'static str {
    match value {
        Json::Null => "null",
        Json::Bool(_) => "boolean",
        Json::Number(_) => "number",
        Json::String(_) => "string",
        Json::Array(_) => "array",
        Json::Object(_) => "object",
    }
}

/// Checks every parameter whose column is known from its position against that column's type
/// (sql.md §2.2); `PARAM_TYPE_MISMATCH` names the first one that does not convert. Run after
/// [`check_count`]. Statements over unknown tables pass: their own error comes later.
pub fn check_types(engine: &Engine, stmt: &Statement, params: &[Json], acting: &UserId) -> Result<(), KalamError> {
    if params.is_empty() {
        return Ok(());
    }
    let Some(def) = single_table(stmt)
        .and_then(|name| TableRef::parse(name).ok())
        .and_then(|t| crate::sql::resolve_table(engine, &t, acting).ok())
        .map(|(def, _)| def)
    else {
        return Ok(());
    };
    for (k, column) in typed_placeholders(stmt, &def) {
        let (Some(param), Some(col)) = (params.get(k - 1), def.columns.iter().find(|c| c.name == column)) else {
            continue;
        };
        let structured = matches!(param, Json::Array(_) | Json::Object(_));
        let fits = if structured {
            col.data_type == KalamType::Json
        } else {
            Value::coerce(&Literal::from_json(param), col.data_type, &col.name).is_ok()
        };
        if !fits {
            return Err(KalamError::new(
                ErrorCode::ParamTypeMismatch,
                format!("parameter type mismatch: ${k} is {}, expected {}", json_kind(param), col.data_type),
            ));
        }
    }
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
