//! The KalamDB dialect on top of sqlparser: one parser drives every statement. KalamDB's own
//! statements (`CREATE NAMESPACE`, `CREATE USER|SHARED|STREAM TABLE ... <options>`,
//! `FLUSH TABLE`) are recognised by their leading words and parsed with the same parser;
//! everything else is sqlparser's PostgreSQL-flavoured grammar.

use datafusion::sql::sqlparser::ast::{
    ColumnOption, CreateTable, Expr, FunctionArguments, Ident, ObjectName, Statement, TableConstraint, UnaryOperator,
    Value as SqlValue,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};
use kalam_types::datatype::KalamType;
use kalam_types::error::{ErrorCode, KalamError};
use kalam_types::ids::{NamespaceId, RESERVED_NAMESPACES, TableName, is_valid_name};
use kalam_types::schema::{ColumnDefault, TableType};
use kalam_types::value::{Literal, Value};

/// Namespace of unqualified table names.
pub const DEFAULT_NAMESPACE: &str = "default";

#[derive(Debug)]
pub enum KalamStatement {
    CreateNamespace { name: NamespaceId, if_not_exists: bool },
    CreateTable(CreateTableSpec),
    FlushTable { namespace: NamespaceId, table: TableName },
    DropTable { namespace: String, table: String, if_exists: bool },
    DropNamespace { name: String, if_exists: bool, cascade: bool },
    ShowNamespaces,
    ShowTables { namespace: Option<String> },
    Describe { namespace: String, table: String },
    Insert(Box<Statement>),
    Update(Box<Statement>),
    Delete(Box<Statement>),
    Query(Box<Statement>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ColumnSpec {
    pub name: String,
    pub data_type: KalamType,
    pub nullable: bool,
    pub is_primary_key: bool,
    pub default: Option<ColumnDefault>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CreateTableSpec {
    pub table_type: TableType,
    pub namespace: NamespaceId,
    pub name: TableName,
    pub if_not_exists: bool,
    pub columns: Vec<ColumnSpec>,
    pub storage: Option<String>,
    pub flush_row_threshold: Option<u64>,
    pub flush_interval_seconds: Option<u64>,
}

fn invalid_sql(e: ParserError) -> KalamError {
    let msg = match e {
        ParserError::ParserError(m) | ParserError::TokenizerError(m) => m,
        ParserError::RecursionLimitExceeded => "statement nested too deeply".to_owned(),
    };
    KalamError::new(ErrorCode::InvalidSql, msg)
}

/// Folds an identifier: unquoted names are lower-cased, quoted ones keep their case.
pub fn ident_name(id: &Ident) -> String {
    if id.quote_style.is_some() { id.value.clone() } else { id.value.to_ascii_lowercase() }
}

/// Splits `[ns.]table` into folded parts; unqualified names resolve to `default`.
pub fn object_parts(name: &ObjectName) -> Result<(String, String), KalamError> {
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|p| p.as_ident().map(ident_name))
        .collect::<Option<_>>()
        .ok_or_else(|| KalamError::new(ErrorCode::InvalidSql, format!("invalid table name {name}")))?;
    match parts.as_slice() {
        [table] => Ok((DEFAULT_NAMESPACE.to_owned(), table.clone())),
        [ns, table] => Ok((ns.clone(), table.clone())),
        _ => Err(KalamError::new(ErrorCode::InvalidSql, format!("invalid table name {name}"))),
    }
}

fn next_is_word(p: &Parser<'_>, word: &str) -> bool {
    matches!(&p.peek_token().token, Token::Word(w) if w.value.eq_ignore_ascii_case(word) && w.quote_style.is_none())
}

fn parse_word(p: &mut Parser<'_>, word: &str) -> bool {
    let found = next_is_word(p, word);
    if found {
        p.next_token();
    }
    found
}

fn expect_end(p: &mut Parser<'_>) -> Result<(), KalamError> {
    while p.consume_token(&Token::SemiColon) {}
    match p.peek_token().token {
        Token::EOF => Ok(()),
        other => Err(KalamError::new(ErrorCode::InvalidSql, format!("syntax error at or near \"{other}\""))),
    }
}

/// Tokenizes `sql`, accepting KalamDB's `CURRENT_USER()` spelling (the PostgreSQL grammar
/// knows only the bare `CURRENT_USER`).
fn tokenize(dialect: &PostgreSqlDialect, sql: &str) -> Result<Vec<TokenWithSpan>, KalamError> {
    let mut tokens = Tokenizer::new(dialect, sql)
        .tokenize_with_location()
        .map_err(|e| KalamError::new(ErrorCode::InvalidSql, e.to_string()))?;
    let significant = |tokens: &[TokenWithSpan], from: usize| {
        (from..tokens.len()).find(|&i| !matches!(tokens[i].token, Token::Whitespace(_)))
    };
    let mut i = 0;
    while i < tokens.len() {
        let is_current_user = matches!(&tokens[i].token,
            Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case("CURRENT_USER"));
        if is_current_user
            && let Some(open) = significant(&tokens, i + 1)
            && tokens[open].token == Token::LParen
            && let Some(close) = significant(&tokens, open + 1)
            && tokens[close].token == Token::RParen
        {
            tokens.drain(i + 1..=close);
        }
        i += 1;
    }
    Ok(tokens)
}

/// Parses one statement of the dialect.
pub fn parse_statement(sql: &str) -> Result<KalamStatement, KalamError> {
    let dialect = PostgreSqlDialect {};
    let tokens = tokenize(&dialect, sql)?;
    let mut p = Parser::new(&dialect).with_tokens_with_locations(tokens);
    if next_is_word(&p, "CREATE") {
        let start = p.index();
        p.next_token();
        if parse_word(&mut p, "NAMESPACE") {
            let if_not_exists = p.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
            let raw = p.parse_identifier().map_err(invalid_sql)?;
            expect_end(&mut p)?;
            let name = NamespaceId::parse(&ident_name(&raw))?;
            if RESERVED_NAMESPACES.contains(&name.as_str()) {
                return Err(KalamError::new(
                    ErrorCode::InvalidOperation,
                    format!("Namespace name '{name}' is reserved"),
                ));
            }
            return Ok(KalamStatement::CreateNamespace { name, if_not_exists });
        }
        let kind = if parse_word(&mut p, "USER") {
            Some(TableType::User)
        } else if parse_word(&mut p, "SHARED") {
            Some(TableType::Shared)
        } else if parse_word(&mut p, "STREAM") {
            Some(TableType::Stream)
        } else {
            None
        };
        if p.parse_keyword(Keyword::TABLE) {
            let create = p.parse_create_table(false, false, None, false).map_err(invalid_sql)?;
            let mut spec = create_table_spec(kind.unwrap_or(TableType::Shared), &create)?;
            parse_table_options(&mut p, &mut spec)?;
            expect_end(&mut p)?;
            return Ok(KalamStatement::CreateTable(spec));
        }
        // Not ours: rewind and let the standard grammar report it.
        while p.index() > start {
            p.prev_token();
        }
    }
    if next_is_word(&p, "DROP") {
        let start = p.index();
        p.next_token();
        if parse_word(&mut p, "NAMESPACE") {
            let if_exists = p.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
            let name = ident_name(&p.parse_identifier().map_err(invalid_sql)?);
            let cascade = parse_word(&mut p, "CASCADE");
            expect_end(&mut p)?;
            return Ok(KalamStatement::DropNamespace { name, if_exists, cascade });
        }
        let _kind = parse_word(&mut p, "USER") || parse_word(&mut p, "SHARED") || parse_word(&mut p, "STREAM");
        if p.parse_keyword(Keyword::TABLE) {
            let if_exists = p.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
            let name = p.parse_object_name(false).map_err(invalid_sql)?;
            expect_end(&mut p)?;
            let (namespace, table) = object_parts(&name)?;
            return Ok(KalamStatement::DropTable { namespace, table, if_exists });
        }
        while p.index() > start {
            p.prev_token();
        }
    }
    if parse_word(&mut p, "SHOW") {
        if parse_word(&mut p, "NAMESPACES") {
            expect_end(&mut p)?;
            return Ok(KalamStatement::ShowNamespaces);
        }
        if parse_word(&mut p, "TABLES") {
            let namespace = if parse_word(&mut p, "IN") || parse_word(&mut p, "FROM") {
                Some(ident_name(&p.parse_identifier().map_err(invalid_sql)?))
            } else {
                None
            };
            expect_end(&mut p)?;
            return Ok(KalamStatement::ShowTables { namespace });
        }
        return Err(unsupported(sql));
    }
    if parse_word(&mut p, "DESCRIBE")
        || (next_is_word(&p, "DESC") && {
            p.next_token();
            next_is_word(&p, "TABLE")
        })
    {
        parse_word(&mut p, "TABLE");
        let name = p.parse_object_name(false).map_err(invalid_sql)?;
        expect_end(&mut p)?;
        let (namespace, table) = object_parts(&name)?;
        return Ok(KalamStatement::Describe { namespace, table });
    }
    if parse_word(&mut p, "FLUSH") {
        if !p.parse_keyword(Keyword::TABLE) {
            return Err(unsupported(sql));
        }
        let name = p.parse_object_name(false).map_err(invalid_sql)?;
        expect_end(&mut p)?;
        if name.0.len() != 2 {
            return Err(KalamError::new(
                ErrorCode::InvalidSql,
                "Table name must be qualified (namespace.table) for FLUSH TABLE",
            ));
        }
        let (ns, table) = object_parts(&name)?;
        return Ok(KalamStatement::FlushTable {
            namespace: NamespaceId::parse(&ns)?,
            table: TableName::parse(&table)?,
        });
    }
    let stmt = p.parse_statement().map_err(invalid_sql)?;
    expect_end(&mut p)?;
    match stmt {
        Statement::Insert(_) => Ok(KalamStatement::Insert(Box::new(stmt))),
        Statement::Update(_) => Ok(KalamStatement::Update(Box::new(stmt))),
        Statement::Delete(_) => Ok(KalamStatement::Delete(Box::new(stmt))),
        Statement::Query(_) => Ok(KalamStatement::Query(Box::new(stmt))),
        _ => Err(unsupported(sql)),
    }
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
            return Err(KalamError::new(
                ErrorCode::InvalidSql,
                format!("DEFAULT function '{name}' for column '{column}' takes no arguments"),
            ));
        }
        return ColumnDefault::function(&name, ty, column);
    }
    let value = Value::coerce(&literal(expr)?, ty, column)?;
    Ok(ColumnDefault::Literal(value.to_json().to_string()))
}

/// A literal of a VALUES list or DEFAULT clause (`-` numbers and parentheses included).
pub fn literal(expr: &Expr) -> Result<Literal, KalamError> {
    let invalid = |m: String| KalamError::new(ErrorCode::InvalidSql, m);
    match expr {
        Expr::Value(v) => match &v.value {
            SqlValue::Null => Ok(Literal::Null),
            SqlValue::Boolean(b) => Ok(Literal::Boolean(*b)),
            SqlValue::Number(n, _) => Ok(Literal::Number(n.clone())),
            SqlValue::SingleQuotedString(s) | SqlValue::EscapedStringLiteral(s) => Ok(Literal::String(s.clone())),
            other => Err(invalid(format!("unsupported literal {other}"))),
        },
        Expr::UnaryOp { op: UnaryOperator::Minus, expr } => match literal(expr)? {
            Literal::Number(n) => Ok(Literal::Number(format!("-{n}"))),
            _ => Err(invalid(format!("cannot negate {expr}"))),
        },
        Expr::Nested(inner) => literal(inner),
        other => Err(KalamError::new(
            ErrorCode::UnsupportedStatement,
            format!("expected a literal value; '{other}' is not supported here yet"),
        )),
    }
}

fn unsupported(sql: &str) -> KalamError {
    let first = sql.lines().next().unwrap_or("").trim();
    KalamError::new(ErrorCode::UnsupportedStatement, format!("Unsupported SQL statement: {first}"))
}

fn create_table_spec(table_type: TableType, create: &CreateTable) -> Result<CreateTableSpec, KalamError> {
    let (ns, table) = object_parts(&create.name)?;
    let namespace = NamespaceId::parse(&ns)?;
    let name = TableName::parse(&table)?;
    if create.columns.is_empty() {
        return Err(KalamError::new(ErrorCode::InvalidSql, "A table needs at least one column"));
    }
    let mut columns: Vec<ColumnSpec> = Vec::with_capacity(create.columns.len());
    for col in &create.columns {
        let col_name = ident_name(&col.name);
        if col_name.starts_with('_') {
            return Err(KalamError::new(
                ErrorCode::InvalidSql,
                format!("Column '{col_name}' is a system column and cannot be written"),
            ));
        }
        if !is_valid_name(&col_name) {
            return Err(KalamError::new(
                ErrorCode::InvalidSql,
                format!("Invalid column name '{col_name}': names must match ^[a-z][a-z0-9_]{{0,63}}$"),
            ));
        }
        if columns.iter().any(|c| c.name == col_name) {
            return Err(KalamError::new(ErrorCode::InvalidSql, format!("Duplicate column name '{col_name}'")));
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
                    return Err(KalamError::new(
                        ErrorCode::UnsupportedStatement,
                        format!("Column option '{other}' on column '{col_name}' is not supported"),
                    ));
                }
            }
        }
        columns.push(spec);
    }
    for constraint in &create.constraints {
        match constraint {
            TableConstraint::PrimaryKey(pk) => {
                for ic in &pk.columns {
                    let pk_name = ic.column.expr.to_string().trim_matches('"').to_ascii_lowercase();
                    match columns.iter_mut().find(|c| c.name == pk_name) {
                        Some(c) => c.is_primary_key = true,
                        None => {
                            return Err(KalamError::new(
                                ErrorCode::ColumnNotFound,
                                format!("column \"{pk_name}\" does not exist"),
                            ));
                        }
                    }
                }
            }
            other => {
                return Err(KalamError::new(
                    ErrorCode::UnsupportedStatement,
                    format!("Table constraint '{other}' is not supported"),
                ));
            }
        }
    }
    let pks: Vec<&ColumnSpec> = columns.iter().filter(|c| c.is_primary_key).collect();
    match pks.as_slice() {
        [] => {
            return Err(KalamError::new(
                ErrorCode::InvalidSql,
                "PRIMARY KEY is required: every USER, SHARED and STREAM table must declare exactly one primary key column",
            ));
        }
        [pk] if !pk.data_type.can_be_primary_key() => {
            return Err(KalamError::new(
                ErrorCode::InvalidSql,
                format!(
                    "PRIMARY KEY '{}' has invalid type {}. Only BIGINT or TEXT are allowed.",
                    pk.name, pk.data_type
                ),
            ));
        }
        [_] => {}
        _ => return Err(KalamError::new(ErrorCode::InvalidSql, "Multiple PRIMARY KEY columns not supported")),
    }
    for c in columns.iter_mut().filter(|c| c.is_primary_key) {
        c.nullable = false;
    }
    Ok(CreateTableSpec {
        table_type,
        namespace,
        name,
        if_not_exists: create.if_not_exists,
        columns,
        storage: None,
        flush_row_threshold: None,
        flush_interval_seconds: None,
    })
}

/// Table options after the column list: `STORAGE <id>` and
/// `FLUSH [INTERVAL <n>[s|m|h]] [ROW_THRESHOLD <n>]`.
fn parse_table_options(p: &mut Parser<'_>, spec: &mut CreateTableSpec) -> Result<(), KalamError> {
    loop {
        if parse_word(p, "STORAGE") {
            spec.storage = Some(ident_name(&p.parse_identifier().map_err(invalid_sql)?));
        } else if parse_word(p, "FLUSH") {
            let mut any = false;
            loop {
                if parse_word(p, "INTERVAL") {
                    spec.flush_interval_seconds = Some(parse_duration_seconds(p)?);
                } else if parse_word(p, "ROW_THRESHOLD") {
                    spec.flush_row_threshold = Some(p.parse_literal_uint().map_err(invalid_sql)?);
                } else {
                    break;
                }
                any = true;
            }
            if !any {
                return Err(KalamError::new(ErrorCode::InvalidSql, "FLUSH needs INTERVAL and/or ROW_THRESHOLD"));
            }
        } else {
            break;
        }
    }
    if let Some(n) = spec.flush_row_threshold
        && !(1..=999_999).contains(&n)
    {
        return Err(KalamError::new(ErrorCode::InvalidSql, "ROW_THRESHOLD must be between 1 and 999999"));
    }
    if let Some(n) = spec.flush_interval_seconds
        && !(1..=86_399).contains(&n)
    {
        return Err(KalamError::new(ErrorCode::InvalidSql, "INTERVAL must be between 1s and 86399s"));
    }
    Ok(())
}

/// `<n>`, `<n>s`, `<n>m`, `<n>h` (the unit may be glued to the number or separate).
fn parse_duration_seconds(p: &mut Parser<'_>) -> Result<u64, KalamError> {
    let tok = p.next_token().token;
    let text = match tok {
        Token::Number(n, _) => {
            let unit = match &p.peek_token().token {
                Token::Word(w) if ["s", "m", "h"].contains(&w.value.to_ascii_lowercase().as_str()) => {
                    let u = w.value.to_ascii_lowercase();
                    p.next_token();
                    u
                }
                _ => String::new(),
            };
            format!("{n}{unit}")
        }
        other => return Err(KalamError::new(ErrorCode::InvalidSql, format!("syntax error at or near \"{other}\""))),
    };
    let (digits, mult) = match text.chars().last() {
        Some('s') => (&text[..text.len() - 1], 1),
        Some('m') => (&text[..text.len() - 1], 60),
        Some('h') => (&text[..text.len() - 1], 3600),
        _ => (text.as_str(), 1),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| KalamError::new(ErrorCode::InvalidSql, format!("invalid interval '{text}'")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(sql: &str) -> CreateTableSpec {
        match parse_statement(sql).unwrap() {
            KalamStatement::CreateTable(s) => s,
            other => panic!("not a CREATE TABLE: {other:?}"),
        }
    }

    #[test]
    fn create_table_kinds_and_options() {
        let s = create(
            "CREATE USER TABLE App.Messages (id BIGINT PRIMARY KEY, body TEXT NOT NULL) STORAGE local FLUSH INTERVAL 30s ROW_THRESHOLD 100",
        );
        assert_eq!(s.table_type, TableType::User);
        assert_eq!((s.namespace.as_str(), s.name.as_str()), ("app", "messages"));
        assert!(s.columns[0].is_primary_key && !s.columns[0].nullable);
        assert!(!s.columns[1].nullable);
        assert_eq!(s.storage.as_deref(), Some("local"));
        assert_eq!((s.flush_interval_seconds, s.flush_row_threshold), (Some(30), Some(100)));
        let s = create("CREATE TABLE IF NOT EXISTS t (k TEXT, v BIGINT, PRIMARY KEY (k))");
        assert_eq!(s.table_type, TableType::Shared);
        assert_eq!(s.namespace.as_str(), DEFAULT_NAMESPACE);
        assert!(s.if_not_exists && s.columns[0].is_primary_key);
    }

    #[test]
    fn defaults_are_parsed_and_checked_at_create() {
        let s = create(
            "CREATE USER TABLE a.t (id BIGINT PRIMARY KEY DEFAULT SNOWFLAKE_ID(), at TIMESTAMP DEFAULT NOW(), \
             who TEXT DEFAULT CURRENT_USER(), n INT DEFAULT -3, ok BOOLEAN DEFAULT TRUE, ts TIMESTAMP DEFAULT CURRENT_TIMESTAMP)",
        );
        let d: Vec<_> = s.columns.iter().map(|c| c.default.clone()).collect();
        assert_eq!(d[0], Some(ColumnDefault::SnowflakeId));
        assert_eq!(d[1], Some(ColumnDefault::Now));
        assert_eq!(d[2], Some(ColumnDefault::CurrentUser));
        assert_eq!(d[3], Some(ColumnDefault::Literal("-3".into())));
        assert_eq!(d[4], Some(ColumnDefault::Literal("true".into())));
        assert_eq!(d[5], Some(ColumnDefault::Now));
        let err = parse_statement("CREATE USER TABLE a.t (id TEXT PRIMARY KEY DEFAULT SNOWFLAKE_ID())").unwrap_err();
        assert_eq!(
            err.message,
            "DEFAULT SNOWFLAKE_ID() can only be used on BIGINT columns, but column 'id' has type TEXT"
        );
        let err = parse_statement("CREATE USER TABLE a.t (id BIGINT PRIMARY KEY, n INT DEFAULT 'x')").unwrap_err();
        assert_eq!(err.code, ErrorCode::TypeError);
    }

    #[test]
    fn create_table_errors_use_the_catalogue() {
        let err = parse_statement("CREATE USER TABLE a.t (id BIGINT, v TEXT)").unwrap_err();
        assert!(err.message.starts_with("PRIMARY KEY is required"));
        let err = parse_statement("CREATE USER TABLE a.t (id DECIMAL(10,2) PRIMARY KEY)").unwrap_err();
        assert_eq!(err.code, ErrorCode::UnsupportedType);
        let err = parse_statement("CREATE USER TABLE a.t (id INT PRIMARY KEY)").unwrap_err();
        assert_eq!(err.message, "PRIMARY KEY 'id' has invalid type INT. Only BIGINT or TEXT are allowed.");
        let err = parse_statement("CREATE USER TABLE a.t (id BIGINT PRIMARY KEY, k TEXT PRIMARY KEY)").unwrap_err();
        assert_eq!(err.message, "Multiple PRIMARY KEY columns not supported");
    }

    #[test]
    fn kalam_statements_and_standard_ones() {
        assert!(matches!(
            parse_statement("create namespace if not exists App").unwrap(),
            KalamStatement::CreateNamespace { if_not_exists: true, .. }
        ));
        assert_eq!(parse_statement("CREATE NAMESPACE system").unwrap_err().code, ErrorCode::InvalidOperation);
        assert!(matches!(parse_statement("FLUSH TABLE app.t").unwrap(), KalamStatement::FlushTable { .. }));
        assert!(parse_statement("FLUSH TABLE t").unwrap_err().message.contains("must be qualified"));
        assert!(matches!(parse_statement("INSERT INTO a.t (id) VALUES (1)").unwrap(), KalamStatement::Insert(_)));
        assert!(matches!(parse_statement("SELECT 1").unwrap(), KalamStatement::Query(_)));
        assert_eq!(parse_statement("SELEC 1").unwrap_err().code, ErrorCode::InvalidSql);
        assert_eq!(parse_statement("DROP VIEW v").unwrap_err().code, ErrorCode::UnsupportedStatement);
    }
}
