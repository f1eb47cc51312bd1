//! The grammar of `CREATE … TABLE` and `ALTER … TABLE` (sql.md §7), built from sqlparser's own
//! column-definition parser plus KalamDB's table options.

use std::collections::HashSet;

use datafusion::sql::sqlparser::ast::Value as SqlValue;
use datafusion::sql::sqlparser::ast::{ColumnDef, ColumnOption, Expr, FunctionArguments, TableConstraint};
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::Token;
use kalam_types::datatype::KalamType;
use kalam_types::error::{ErrorCode, KalamError};
use kalam_types::ids::{NamespaceId, TableName, is_valid_name};
use kalam_types::schema::{AccessLevel, ColumnDefault, Sharding, TableType};
use kalam_types::value::Value;

use super::parse::{
    expect_end, ident_name, invalid_sql, literal, next_is_word, object_parts, parse_word, syntax_error,
};

#[derive(Debug, Clone, PartialEq)]
pub struct ColumnSpec {
    pub name: String,
    pub data_type: KalamType,
    pub nullable: bool,
    pub is_primary_key: bool,
    pub default: Option<ColumnDefault>,
}

/// Table options as written; `None` = not given (server defaults apply).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TableOptionSpec {
    pub storage: Option<String>,
    pub use_user_storage: Option<bool>,
    pub flush_row_threshold: Option<u64>,
    pub flush_interval_seconds: Option<u64>,
    pub sharding: Option<Sharding>,
    /// `Some(None)` = `off`.
    pub deleted_retention_hours: Option<Option<u64>>,
    pub access: Option<AccessLevel>,
    pub ttl_seconds: Option<u64>,
    pub max_buffer: Option<u64>,
    pub ephemeral: Option<bool>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CreateTableSpec {
    pub table_type: TableType,
    pub namespace: NamespaceId,
    pub name: TableName,
    pub if_not_exists: bool,
    pub columns: Vec<ColumnSpec>,
    pub options: TableOptionSpec,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AlterTableOp {
    /// ADD COLUMN.
    Add(ColumnSpec),
    /// DROP COLUMN.
    Drop(String),
    /// RENAME COLUMN.
    Rename { from: String, to: String },
    /// MODIFY COLUMN: INT → BIGINT widening and nullability.
    Modify { column: String, data_type: KalamType, nullable: Option<bool> },
}

impl AlterTableOp {
    /// The change description kept in the schema history.
    pub fn describe(&self) -> String {
        match self {
            Self::Add(c) => format!("ADD COLUMN {} {}", c.name, c.data_type),
            Self::Drop(c) => format!("DROP COLUMN {c}"),
            Self::Rename { from, to } => format!("RENAME COLUMN {from} TO {to}"),
            Self::Modify { column, data_type, nullable } => {
                let null = match nullable {
                    Some(true) => " NULL",
                    Some(false) => " NOT NULL",
                    None => "",
                };
                format!("MODIFY COLUMN {column} {data_type}{null}")
            }
        }
    }
}

fn user_error(code: ErrorCode, message: impl Into<String>) -> KalamError {
    KalamError::new(code, message)
}

/// `[IF NOT EXISTS] <name> (<columns>) [<options>]` after `CREATE <kind> TABLE`.
pub fn parse_create_table(p: &mut Parser<'_>, table_type: TableType) -> Result<CreateTableSpec, KalamError> {
    let if_not_exists = p.parse_keywords(&[
        datafusion::sql::sqlparser::keywords::Keyword::IF,
        datafusion::sql::sqlparser::keywords::Keyword::NOT,
        datafusion::sql::sqlparser::keywords::Keyword::EXISTS,
    ]);
    let name = p.parse_object_name(false).map_err(invalid_sql)?;
    let (columns, constraints) = p.parse_columns().map_err(invalid_sql)?;
    let (ns, table) = object_parts(&name)?;
    let namespace = NamespaceId::parse(&ns)?;
    let name = TableName::parse(&table)?;
    let columns = table_columns(&columns, &constraints)?;
    let options = parse_table_options(p)?;
    expect_end(p)?;
    check_options_apply(table_type, &options)?;
    Ok(CreateTableSpec { table_type, namespace, name, if_not_exists, columns, options })
}

/// One column definition (CREATE TABLE or ALTER TABLE ADD COLUMN).
pub fn column_spec(col: &ColumnDef) -> Result<ColumnSpec, KalamError> {
    let col_name = ident_name(&col.name);
    if col_name.starts_with('_') {
        return Err(user_error(
            ErrorCode::InvalidSql,
            format!("Column '{col_name}' is a system column and cannot be written"),
        ));
    }
    if !is_valid_name(&col_name) {
        return Err(user_error(
            ErrorCode::InvalidSql,
            format!("Invalid column name '{col_name}': names must match ^[a-z][a-z0-9_]{{0,63}}$"),
        ));
    }
    let data_type = KalamType::from_sql(&col.data_type.to_string())?;
    let mut spec =
        ColumnSpec { name: col_name.clone(), data_type, nullable: true, is_primary_key: false, default: None };
    for opt in &col.options {
        match &opt.option {
            ColumnOption::Null => spec.nullable = true,
            ColumnOption::NotNull => spec.nullable = false,
            ColumnOption::PrimaryKey(_) => spec.is_primary_key = true,
            ColumnOption::Default(expr) => spec.default = Some(column_default(expr, data_type, &col_name)?),
            other => {
                return Err(user_error(
                    ErrorCode::UnsupportedStatement,
                    format!("Column option '{other}' on column '{col_name}' is not supported"),
                ));
            }
        }
    }
    Ok(spec)
}

fn table_columns(columns: &[ColumnDef], constraints: &[TableConstraint]) -> Result<Vec<ColumnSpec>, KalamError> {
    if columns.is_empty() {
        return Err(user_error(ErrorCode::InvalidSql, "A table needs at least one column"));
    }
    let mut specs: Vec<ColumnSpec> = Vec::with_capacity(columns.len());
    for col in columns {
        let spec = column_spec(col)?;
        if specs.iter().any(|c| c.name == spec.name) {
            return Err(user_error(ErrorCode::InvalidSql, format!("Duplicate column name '{}'", spec.name)));
        }
        specs.push(spec);
    }
    for constraint in constraints {
        match constraint {
            TableConstraint::PrimaryKey(pk) => {
                for ic in &pk.columns {
                    let pk_name = ic.column.expr.to_string().trim_matches('"').to_ascii_lowercase();
                    match specs.iter_mut().find(|c| c.name == pk_name) {
                        Some(c) => c.is_primary_key = true,
                        None => {
                            return Err(user_error(
                                ErrorCode::ColumnNotFound,
                                format!("column \"{pk_name}\" does not exist"),
                            ));
                        }
                    }
                }
            }
            other => {
                return Err(user_error(
                    ErrorCode::UnsupportedStatement,
                    format!("Table constraint '{other}' is not supported"),
                ));
            }
        }
    }
    let pks: Vec<&ColumnSpec> = specs.iter().filter(|c| c.is_primary_key).collect();
    match pks.as_slice() {
        [] => {
            return Err(user_error(
                ErrorCode::InvalidSql,
                "PRIMARY KEY is required: every USER, SHARED and STREAM table must declare exactly one primary key column",
            ));
        }
        [pk] if !pk.data_type.can_be_primary_key() => {
            return Err(user_error(
                ErrorCode::InvalidSql,
                format!(
                    "PRIMARY KEY '{}' has invalid type {}. Only BIGINT or TEXT are allowed.",
                    pk.name, pk.data_type
                ),
            ));
        }
        [_] => {}
        _ => return Err(user_error(ErrorCode::InvalidSql, "Multiple PRIMARY KEY columns not supported")),
    }
    for c in specs.iter_mut().filter(|c| c.is_primary_key) {
        c.nullable = false;
    }
    Ok(specs)
}

/// A DEFAULT clause: one of the DEFAULT functions (no arguments) or a literal valid for the
/// column type.
fn column_default(expr: &Expr, ty: KalamType, column: &str) -> Result<ColumnDefault, KalamError> {
    if let Expr::Function(f) = expr {
        let has_args = match &f.args {
            FunctionArguments::None => false,
            FunctionArguments::List(list) => !list.args.is_empty(),
            FunctionArguments::Subquery(_) => true,
        };
        let name = f.name.to_string();
        if has_args {
            return Err(user_error(
                ErrorCode::InvalidSql,
                format!("DEFAULT function '{name}' for column '{column}' takes no arguments"),
            ));
        }
        return ColumnDefault::function(&name, ty, column);
    }
    // `CURRENT_TIMESTAMP` and `CURRENT_USER` arrive as bare words.
    if let Expr::Identifier(id) = expr
        && id.quote_style.is_none()
        && ["CURRENT_TIMESTAMP", "CURRENT_USER"].contains(&id.value.to_ascii_uppercase().as_str())
    {
        return ColumnDefault::function(&id.value, ty, column);
    }
    let value = Value::coerce(&literal(expr)?, ty, column)?;
    Ok(ColumnDefault::Literal(value.to_json().to_string()))
}

/// A raw option value, before it is checked against its key.
enum OptionValue {
    Word(String),
    Text(String),
    Number(String),
    Bool(bool),
}

impl OptionValue {
    fn text(&self) -> String {
        match self {
            Self::Word(s) | Self::Text(s) | Self::Number(s) => s.clone(),
            Self::Bool(b) => b.to_string(),
        }
    }
}

fn parse_option_value(p: &mut Parser<'_>) -> Result<OptionValue, KalamError> {
    let tok = p.next_token().token;
    Ok(match tok {
        Token::SingleQuotedString(s) => OptionValue::Text(s),
        Token::Number(n, _) => {
            // `30s`, `5m`: a unit glued to (or following) the number.
            match &p.peek_token().token {
                Token::Word(w)
                    if w.quote_style.is_none() && ["s", "m", "h"].contains(&w.value.to_ascii_lowercase().as_str()) =>
                {
                    let unit = w.value.to_ascii_lowercase();
                    p.next_token();
                    OptionValue::Text(format!("{n}{unit}"))
                }
                _ => OptionValue::Number(n),
            }
        }
        Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case("true") => OptionValue::Bool(true),
        Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case("false") => OptionValue::Bool(false),
        Token::Word(w) => {
            let mut word = if w.quote_style.is_some() { w.value } else { w.value.to_ascii_lowercase() };
            // `hash(4)`
            if p.consume_token(&Token::LParen) {
                let n = match p.next_token().token {
                    Token::Number(n, _) => n,
                    other => return Err(syntax_error(&other)),
                };
                if !p.consume_token(&Token::RParen) {
                    return Err(syntax_error(&p.peek_token().token));
                }
                word = format!("{word}({n})");
            }
            OptionValue::Word(word)
        }
        other => return Err(syntax_error(&other)),
    })
}

/// Seconds of `<n>`, `<n>s`, `<n>m`, `<n>h`.
fn duration_seconds(key: &str, v: &OptionValue) -> Result<u64, KalamError> {
    let text = v.text().to_ascii_lowercase();
    let (digits, mult) = match text.chars().last() {
        Some('s') => (&text[..text.len() - 1], 1),
        Some('m') => (&text[..text.len() - 1], 60),
        Some('h') => (&text[..text.len() - 1], 3600),
        _ => (text.as_str(), 1),
    };
    digits
        .trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| user_error(ErrorCode::InvalidSql, format!("Invalid {key} value '{text}': expected <n>[s|m|h]")))
}

fn count(key: &str, v: &OptionValue) -> Result<u64, KalamError> {
    v.text().parse::<u64>().map_err(|_| {
        user_error(ErrorCode::InvalidSql, format!("Invalid {key} value '{}': expected a positive integer", v.text()))
    })
}

fn boolean(key: &str, v: &OptionValue) -> Result<bool, KalamError> {
    match v {
        OptionValue::Bool(b) => Ok(*b),
        other => match other.text().to_ascii_lowercase().as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            t => Err(user_error(ErrorCode::InvalidSql, format!("Invalid {key} value '{t}': expected true or false"))),
        },
    }
}

/// `'<n>h'`, `'<n>d'` or `'off'` as hours (`None` = off).
fn retention_hours(v: &OptionValue) -> Result<Option<u64>, KalamError> {
    let text = v.text().to_ascii_lowercase();
    if text == "off" {
        return Ok(None);
    }
    let invalid = || {
        user_error(
            ErrorCode::InvalidSql,
            format!("Invalid DELETED_RETENTION value '{text}': expected '<n>h', '<n>d' or 'off'"),
        )
    };
    let (digits, mult) = match text.chars().last() {
        Some('h') => (&text[..text.len() - 1], 1),
        Some('d') => (&text[..text.len() - 1], 24),
        _ => return Err(invalid()),
    };
    // At most 100 years.
    let n = digits.trim().parse::<u64>().ok().and_then(|n| n.checked_mul(mult)).filter(|h| *h <= 876_000);
    Ok(Some(n.ok_or_else(invalid)?))
}

/// Flush-policy bounds shared by CREATE TABLE and ALTER FLUSH SETTINGS.
pub fn check_flush_bounds(row_threshold: Option<u64>, interval: Option<u64>) -> Result<(), KalamError> {
    if let Some(n) = row_threshold
        && !(1..=999_999).contains(&n)
    {
        return Err(user_error(ErrorCode::InvalidSql, "ROW_THRESHOLD must be between 1 and 999999"));
    }
    if let Some(n) = interval
        && !(1..=86_399).contains(&n)
    {
        return Err(user_error(ErrorCode::InvalidSql, "INTERVAL must be between 1s and 86399s"));
    }
    Ok(())
}

struct OptionSink {
    spec: TableOptionSpec,
    seen: HashSet<&'static str>,
}

impl OptionSink {
    fn once(&mut self, key: &'static str, label: &str) -> Result<(), KalamError> {
        if !self.seen.insert(key) {
            return Err(user_error(ErrorCode::InvalidSql, format!("Option {label} specified more than once")));
        }
        Ok(())
    }

    /// Applies one option by its WITH key (the clause forms map onto the same keys).
    fn set(&mut self, key: &str, v: &OptionValue) -> Result<(), KalamError> {
        match key {
            "storage" => {
                self.once("storage", "STORAGE")?;
                self.spec.storage = Some(v.text().to_ascii_lowercase());
            }
            "use_user_storage" => {
                self.once("use_user_storage", "USE_USER_STORAGE")?;
                self.spec.use_user_storage = Some(boolean("use_user_storage", v)?);
            }
            "flush_interval" => {
                self.once("flush_interval", "FLUSH INTERVAL")?;
                self.spec.flush_interval_seconds = Some(duration_seconds("flush_interval", v)?);
            }
            "flush_row_threshold" => {
                self.once("flush_row_threshold", "FLUSH ROW_THRESHOLD")?;
                self.spec.flush_row_threshold = Some(count("flush_row_threshold", v)?);
            }
            "sharding" => {
                self.once("sharding", "SHARDING")?;
                self.spec.sharding = Some(Sharding::parse(&v.text())?);
            }
            "deleted_retention" => {
                self.once("deleted_retention", "DELETED_RETENTION")?;
                self.spec.deleted_retention_hours = Some(retention_hours(v)?);
            }
            "access" => {
                self.once("access", "ACCESS")?;
                self.spec.access = Some(AccessLevel::parse(&v.text())?);
            }
            "ttl" | "retention" => {
                self.once("ttl", "TTL")?;
                let secs = duration_seconds("ttl", v)?;
                if secs == 0 {
                    return Err(user_error(ErrorCode::InvalidSql, "TTL must be at least 1s"));
                }
                self.spec.ttl_seconds = Some(secs);
            }
            "max_buffer" => {
                self.once("max_buffer", "MAX_BUFFER")?;
                let n = count("max_buffer", v)?;
                if n == 0 {
                    return Err(user_error(ErrorCode::InvalidSql, "MAX_BUFFER must be at least 1"));
                }
                self.spec.max_buffer = Some(n);
            }
            "ephemeral" => {
                self.once("ephemeral", "EPHEMERAL")?;
                self.spec.ephemeral = Some(boolean("ephemeral", v)?);
            }
            "table_type" => {
                return Err(user_error(
                    ErrorCode::InvalidSql,
                    "TABLE_TYPE is not supported; use CREATE USER TABLE, CREATE SHARED TABLE or CREATE STREAM TABLE",
                ));
            }
            "owner_id" => return Err(user_error(ErrorCode::InvalidSql, "OWNER_ID is not supported")),
            other => return Err(user_error(ErrorCode::InvalidSql, format!("Unknown table option '{other}'"))),
        }
        Ok(())
    }
}

/// Table options after the column list, in any order (sql.md §7.1).
fn parse_table_options(p: &mut Parser<'_>) -> Result<TableOptionSpec, KalamError> {
    let mut sink = OptionSink { spec: TableOptionSpec::default(), seen: HashSet::new() };
    loop {
        if parse_word(p, "WITH") {
            if !p.consume_token(&Token::LParen) {
                return Err(syntax_error(&p.peek_token().token));
            }
            loop {
                let key = ident_name(&p.parse_identifier().map_err(invalid_sql)?);
                if !p.consume_token(&Token::Eq) {
                    return Err(syntax_error(&p.peek_token().token));
                }
                let value = parse_option_value(p)?;
                sink.set(&key, &value)?;
                if !p.consume_token(&Token::Comma) {
                    break;
                }
            }
            if !p.consume_token(&Token::RParen) {
                return Err(syntax_error(&p.peek_token().token));
            }
        } else if parse_word(p, "FLUSH") {
            parse_flush_clause(p, &mut sink)?;
        } else if parse_word(p, "USE_USER_STORAGE") {
            sink.set("use_user_storage", &OptionValue::Bool(true))?;
        } else if parse_word(p, "EPHEMERAL") {
            sink.set("ephemeral", &OptionValue::Bool(true))?;
        } else if let Some(key) = [
            "STORAGE",
            "SHARDING",
            "DELETED_RETENTION",
            "ACCESS",
            "TTL",
            "RETENTION",
            "MAX_BUFFER",
            "TABLE_TYPE",
            "OWNER_ID",
        ]
        .into_iter()
        .find(|w| next_is_word(p, w))
        {
            p.next_token();
            let value = parse_option_value(p)?;
            sink.set(&key.to_ascii_lowercase(), &value)?;
        } else {
            break;
        }
    }
    let spec = sink.spec;
    check_flush_bounds(spec.flush_row_threshold, spec.flush_interval_seconds)?;
    Ok(spec)
}

/// `FLUSH [INTERVAL <d>] [ROW_THRESHOLD <n>]` and its aliases `FLUSH ROWS <n>`,
/// `FLUSH SECONDS <n>`, `FLUSH POLICY ROW_LIMIT <n> | TIME_INTERVAL <n> | COMBINED ROW_LIMIT <n> TIME_INTERVAL <n>`.
fn parse_flush_clause(p: &mut Parser<'_>, sink: &mut OptionSink) -> Result<(), KalamError> {
    if parse_word(p, "POLICY") {
        parse_word(p, "COMBINED");
    }
    let mut any = false;
    loop {
        if parse_word(p, "INTERVAL") || parse_word(p, "SECONDS") || parse_word(p, "TIME_INTERVAL") {
            let v = parse_option_value(p)?;
            sink.set("flush_interval", &v)?;
        } else if parse_word(p, "ROW_THRESHOLD") || parse_word(p, "ROWS") || parse_word(p, "ROW_LIMIT") {
            let v = parse_option_value(p)?;
            sink.set("flush_row_threshold", &v)?;
        } else {
            break;
        }
        any = true;
    }
    if !any {
        return Err(user_error(ErrorCode::InvalidSql, "FLUSH needs INTERVAL and/or ROW_THRESHOLD"));
    }
    Ok(())
}

/// Options that do not apply to the table type are rejected.
fn check_options_apply(table_type: TableType, o: &TableOptionSpec) -> Result<(), KalamError> {
    use TableType::*;
    let checks: [(&str, bool, &[TableType]); 9] = [
        ("STORAGE", o.storage.is_some(), &[User, Shared]),
        ("USE_USER_STORAGE", o.use_user_storage.is_some(), &[User]),
        ("FLUSH", o.flush_row_threshold.is_some() || o.flush_interval_seconds.is_some(), &[User, Shared]),
        ("SHARDING", o.sharding.is_some(), &[User]),
        ("DELETED_RETENTION", o.deleted_retention_hours.is_some(), &[User, Shared]),
        ("ACCESS", o.access.is_some(), &[Shared]),
        ("TTL", o.ttl_seconds.is_some(), &[Stream]),
        ("MAX_BUFFER", o.max_buffer.is_some(), &[Stream]),
        ("EPHEMERAL", o.ephemeral.is_some(), &[Stream]),
    ];
    for (name, given, allowed) in checks {
        if given && !allowed.contains(&table_type) {
            let kinds = match allowed {
                [User] => "USER tables",
                [Shared] => "SHARED tables",
                [Stream] => "STREAM tables",
                _ => "USER and SHARED tables",
            };
            return Err(user_error(ErrorCode::InvalidSql, format!("Option {name} is only valid for {kinds}")));
        }
    }
    Ok(())
}

/// `<name> ADD|DROP|RENAME|MODIFY …` after `ALTER [kind] TABLE`.
pub fn parse_alter_table(p: &mut Parser<'_>) -> Result<(String, String, AlterTableOp), KalamError> {
    let name = p.parse_object_name(false).map_err(invalid_sql)?;
    let (ns, table) = object_parts(&name)?;
    let op = if parse_word(p, "ADD") {
        parse_word(p, "COLUMN");
        let def = p.parse_column_def().map_err(invalid_sql)?;
        let spec = column_spec(&def)?;
        if spec.is_primary_key {
            return Err(user_error(ErrorCode::InvalidSql, "Cannot add a PRIMARY KEY column"));
        }
        AlterTableOp::Add(spec)
    } else if parse_word(p, "DROP") {
        parse_word(p, "COLUMN");
        AlterTableOp::Drop(ident_name(&p.parse_identifier().map_err(invalid_sql)?))
    } else if parse_word(p, "RENAME") {
        if !parse_word(p, "COLUMN") {
            return Err(syntax_error(&p.peek_token().token));
        }
        let from = ident_name(&p.parse_identifier().map_err(invalid_sql)?);
        if !parse_word(p, "TO") {
            return Err(syntax_error(&p.peek_token().token));
        }
        let to = ident_name(&p.parse_identifier().map_err(invalid_sql)?);
        AlterTableOp::Rename { from, to }
    } else if parse_word(p, "MODIFY") {
        parse_word(p, "COLUMN");
        let column = ident_name(&p.parse_identifier().map_err(invalid_sql)?);
        let data_type = KalamType::from_sql(&p.parse_data_type().map_err(invalid_sql)?.to_string())?;
        let nullable = if parse_word(p, "NOT") {
            if !parse_word(p, "NULL") {
                return Err(syntax_error(&p.peek_token().token));
            }
            Some(false)
        } else if parse_word(p, "NULL") {
            Some(true)
        } else {
            None
        };
        AlterTableOp::Modify { column, data_type, nullable }
    } else {
        return Err(syntax_error(&p.peek_token().token));
    };
    expect_end(p)?;
    Ok((ns, table, op))
}

/// `(<key> = <literal> [, ...])` of ALTER NAMESPACE … SET OPTIONS, as a JSON object.
pub fn parse_option_list(p: &mut Parser<'_>) -> Result<serde_json::Map<String, serde_json::Value>, KalamError> {
    if !p.consume_token(&Token::LParen) {
        return Err(syntax_error(&p.peek_token().token));
    }
    let mut out = serde_json::Map::new();
    loop {
        let key = ident_name(&p.parse_identifier().map_err(invalid_sql)?);
        if !p.consume_token(&Token::Eq) {
            return Err(syntax_error(&p.peek_token().token));
        }
        // A leading minus belongs to the number, so the option's own check can name the problem.
        let negative = p.consume_token(&Token::Minus);
        let value = match p.parse_value().map_err(invalid_sql)?.value {
            SqlValue::Number(n, long) if negative => SqlValue::Number(format!("-{n}"), long),
            _ if negative => return Err(syntax_error(&Token::Minus)),
            other => other,
        };
        let value = match value {
            SqlValue::SingleQuotedString(s) => serde_json::Value::String(s),
            SqlValue::Boolean(b) => serde_json::Value::Bool(b),
            SqlValue::Number(n, _) => serde_json::from_str::<serde_json::Value>(&n)
                .ok()
                .filter(serde_json::Value::is_number)
                .ok_or_else(|| user_error(ErrorCode::InvalidSql, format!("Invalid number '{n}' for option '{key}'")))?,
            other => {
                return Err(user_error(
                    ErrorCode::InvalidSql,
                    format!("Invalid value {other} for option '{key}': expected a string, number or boolean"),
                ));
            }
        };
        out.insert(key, value);
        if !p.consume_token(&Token::Comma) {
            break;
        }
    }
    if !p.consume_token(&Token::RParen) {
        return Err(syntax_error(&p.peek_token().token));
    }
    Ok(out)
}

/// The changes of `ALTER FLUSH SETTINGS <t> SET … | RESET` (sql.md §11); `None` = unchanged,
/// `Some(None)` = `NONE`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlushSettingsChange {
    /// Back to the server defaults.
    pub reset: bool,
    pub interval_seconds: Option<Option<u64>>,
    pub row_threshold: Option<Option<u64>>,
    pub sharding: Option<Sharding>,
}

/// `SET INTERVAL <d>|NONE, ROW_THRESHOLD <n>|NONE, SHARDING <s>` or `RESET`.
pub fn parse_flush_settings(p: &mut Parser<'_>) -> Result<FlushSettingsChange, KalamError> {
    let mut change = FlushSettingsChange::default();
    if parse_word(p, "RESET") {
        change.reset = true;
        return Ok(change);
    }
    if !parse_word(p, "SET") {
        return Err(syntax_error(&p.peek_token().token));
    }
    let none = |p: &mut Parser<'_>| parse_word(p, "NONE");
    loop {
        if parse_word(p, "INTERVAL") {
            if change.interval_seconds.is_some() {
                return Err(user_error(ErrorCode::InvalidSql, "INTERVAL specified more than once"));
            }
            change.interval_seconds =
                Some(if none(p) { None } else { Some(duration_seconds("INTERVAL", &parse_option_value(p)?)?) });
        } else if parse_word(p, "ROW_THRESHOLD") {
            if change.row_threshold.is_some() {
                return Err(user_error(ErrorCode::InvalidSql, "ROW_THRESHOLD specified more than once"));
            }
            change.row_threshold =
                Some(if none(p) { None } else { Some(count("ROW_THRESHOLD", &parse_option_value(p)?)?) });
        } else if parse_word(p, "SHARDING") {
            if change.sharding.is_some() {
                return Err(user_error(ErrorCode::InvalidSql, "SHARDING specified more than once"));
            }
            change.sharding = Some(Sharding::parse(&parse_option_value(p)?.text())?);
        } else {
            return Err(syntax_error(&p.peek_token().token));
        }
        if !p.consume_token(&Token::Comma) {
            break;
        }
    }
    check_flush_bounds(change.row_threshold.flatten(), change.interval_seconds.flatten())?;
    Ok(change)
}
