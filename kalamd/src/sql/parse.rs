//! The KalamDB dialect on top of sqlparser: one parser drives every statement. KalamDB's own
//! statements (`CREATE NAMESPACE`, `CREATE USER|SHARED|STREAM TABLE ... <options>`,
//! `FLUSH TABLE`) are recognised by their leading words and parsed with the same parser;
//! everything else is sqlparser's PostgreSQL-flavoured grammar.

use datafusion::sql::sqlparser::ast::{Expr, Ident, ObjectName, Statement, UnaryOperator, Value as SqlValue};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};
use kalam_types::error::{ErrorCode, KalamError};
use kalam_types::ids::{NamespaceId, RESERVED_NAMESPACES, TableName, UserId};
use kalam_types::schema::TableType;
use kalam_types::value::Literal;

use super::nesting::{check_depth, check_structure};
pub use super::parse_table::{AlterTableOp, ColumnSpec, CreateTableSpec, FlushSettingsChange};
use super::parse_table::{parse_alter_table, parse_create_table, parse_flush_settings, parse_option_list};
use crate::storages::StorageSpec;

/// Namespace of unqualified table names.
pub const DEFAULT_NAMESPACE: &str = "default";

#[derive(Debug, Clone)]
pub enum KalamStatement {
    CreateNamespace {
        name: NamespaceId,
        if_not_exists: bool,
    },
    AlterNamespace {
        name: String,
        options: serde_json::Map<String, serde_json::Value>,
    },
    CreateTable(CreateTableSpec),
    AlterTable {
        namespace: String,
        table: String,
        op: AlterTableOp,
    },
    ShowTableStats {
        namespace: String,
        table: String,
    },
    FlushTable {
        namespace: NamespaceId,
        table: TableName,
    },
    /// `FLUSH ALL TABLES [IN ns]`.
    FlushAll {
        namespace: Option<String>,
    },
    /// `PAUSE FLUSH <ns>.<t>` (`None` = `PAUSE FLUSH ALL`).
    PauseFlush {
        table: Option<(String, String)>,
    },
    /// `RESUME FLUSH <ns>.<t>` (`None` = `RESUME FLUSH ALL`).
    ResumeFlush {
        table: Option<(String, String)>,
    },
    AlterFlushSettings {
        namespace: String,
        table: String,
        change: FlushSettingsChange,
    },
    KillJob {
        job_id: String,
    },
    /// `KILL LIVE QUERY '<live_id>'`.
    KillLiveQuery {
        live_id: String,
    },
    /// `SUBSCRIBE TO <ns>.<t> [WHERE …] [OPTIONS (…) | LAST n]` (sql.md §12).
    Subscribe {
        table: ObjectName,
        filter: Option<Box<Expr>>,
        options: serde_json::Map<String, serde_json::Value>,
    },
    RetryJob {
        job_id: String,
    },
    CreateStorage {
        id: String,
        if_not_exists: bool,
        spec: StorageSpec,
    },
    AlterStorage {
        id: String,
        spec: StorageSpec,
    },
    DropStorage {
        id: String,
        if_exists: bool,
    },
    ShowStorages,
    DropTable {
        namespace: String,
        table: String,
        if_exists: bool,
    },
    DropNamespace {
        name: String,
        if_exists: bool,
        cascade: bool,
    },
    ShowNamespaces,
    ShowTables {
        namespace: Option<String>,
    },
    Describe {
        namespace: String,
        table: String,
    },
    Insert(Box<Statement>),
    Update(Box<Statement>),
    Delete(Box<Statement>),
    Query(Box<Statement>),
    CreateUser {
        user: crate::users::NewUser,
        if_not_exists: bool,
    },
    AlterUser {
        user_id: String,
        change: crate::users::UserChange,
    },
    DropUser {
        user_id: String,
        if_exists: bool,
    },
    /// `CLEAR CACHE` (sql.md §15).
    ClearCache,
    /// `BEGIN`, `BEGIN TRANSACTION`, `START TRANSACTION` (sql.md §9).
    Begin,
    Commit,
    Rollback,
}

impl KalamStatement {
    /// The statement's kind as users write it, for messages such as
    /// `CREATE TABLE is not allowed inside a transaction`.
    pub fn kind_name(&self) -> &'static str {
        use KalamStatement as S;
        match self {
            S::CreateNamespace { .. } => "CREATE NAMESPACE",
            S::AlterNamespace { .. } => "ALTER NAMESPACE",
            S::CreateTable(_) => "CREATE TABLE",
            S::AlterTable { .. } => "ALTER TABLE",
            S::ShowTableStats { .. } => "SHOW STATS",
            S::FlushTable { .. } => "FLUSH TABLE",
            S::FlushAll { .. } => "FLUSH ALL TABLES",
            S::PauseFlush { .. } => "PAUSE FLUSH",
            S::ResumeFlush { .. } => "RESUME FLUSH",
            S::AlterFlushSettings { .. } => "ALTER FLUSH SETTINGS",
            S::KillJob { .. } => "KILL JOB",
            S::KillLiveQuery { .. } => "KILL LIVE QUERY",
            S::Subscribe { .. } => "SUBSCRIBE TO",
            S::RetryJob { .. } => "RETRY JOB",
            S::CreateStorage { .. } => "CREATE STORAGE",
            S::AlterStorage { .. } => "ALTER STORAGE",
            S::DropStorage { .. } => "DROP STORAGE",
            S::ShowStorages => "SHOW STORAGES",
            S::DropTable { .. } => "DROP TABLE",
            S::DropNamespace { .. } => "DROP NAMESPACE",
            S::ShowNamespaces => "SHOW NAMESPACES",
            S::ShowTables { .. } => "SHOW TABLES",
            S::Describe { .. } => "DESCRIBE TABLE",
            S::Insert(_) => "INSERT",
            S::Update(_) => "UPDATE",
            S::Delete(_) => "DELETE",
            S::Query(_) => "SELECT",
            S::CreateUser { .. } => "CREATE USER",
            S::AlterUser { .. } => "ALTER USER",
            S::DropUser { .. } => "DROP USER",
            S::ClearCache => "CLEAR CACHE",
            S::Begin => "BEGIN",
            S::Commit => "COMMIT",
            S::Rollback => "ROLLBACK",
        }
    }
}

/// sqlparser's error in the PostgreSQL form of the catalogue: `syntax error at or near "<token>"`
/// (`syntax error at end of input` when the statement stops early).
pub(super) fn invalid_sql(e: ParserError) -> KalamError {
    let msg = match e {
        ParserError::ParserError(m) | ParserError::TokenizerError(m) => m,
        ParserError::RecursionLimitExceeded => "statement nested too deeply".to_owned(),
    };
    let found = msg.split_once("found: ").map(|(_, rest)| rest.split(" at Line:").next().unwrap_or(rest).trim());
    let text = match found {
        Some("EOF") => "syntax error at end of input".to_owned(),
        Some(token) => format!("syntax error at or near \"{token}\""),
        None => msg,
    };
    KalamError::new(ErrorCode::InvalidSql, text)
}

/// Folds an identifier: unquoted names are lower-cased, quoted ones keep their case.
pub fn ident_name(id: &Ident) -> String {
    if id.quote_style.is_some() { id.value.clone() } else { id.value.to_ascii_lowercase() }
}

/// The column an assignment target or INSERT column list entry names: its last part.
pub fn target_column_name(name: &ObjectName) -> String {
    name.0.last().and_then(|p| p.as_ident()).map(ident_name).unwrap_or_default()
}

/// A table reference of DML and queries: `[ns.]table`, or `ns.<qualifier>.table` addressing a
/// user's partition of a USER or STREAM table (sql.md §1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRef {
    pub namespace: String,
    pub table: String,
    /// The middle part of a three-part name (`user` = the acting user).
    pub qualifier: Option<String>,
}

impl TableRef {
    pub fn parse(name: &ObjectName) -> Result<TableRef, KalamError> {
        if let [ns, qualifier, table] = name.0.as_slice()
            && let (Some(ns), Some(qualifier), Some(table)) = (ns.as_ident(), qualifier.as_ident(), table.as_ident())
        {
            // Folded like every identifier (as DataFusion will when it plans the query): a user
            // id with upper-case letters is written quoted, `app."Alice".notes`.
            return Ok(TableRef {
                namespace: ident_name(ns),
                table: ident_name(table),
                qualifier: Some(ident_name(qualifier)),
            });
        }
        let (namespace, table) = object_parts(name)?;
        Ok(TableRef { namespace, table, qualifier: None })
    }

    /// The user whose partition the reference addresses.
    /// The user a three-part name fixes; `None` when the partition is the acting user's
    /// (two-part names and `ns.user.table`).
    pub fn fixed_partition(&self) -> Option<Result<UserId, KalamError>> {
        match self.qualifier.as_deref() {
            None | Some("user") => None,
            Some(other) => Some(UserId::parse(other)),
        }
    }

    pub fn partition_user(&self, acting: &UserId) -> Result<UserId, KalamError> {
        match self.qualifier.as_deref() {
            None | Some("user") => Ok(acting.clone()),
            Some(other) => UserId::parse(other),
        }
    }
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

pub(super) fn next_is_word(p: &Parser<'_>, word: &str) -> bool {
    matches!(&p.peek_token().token, Token::Word(w) if w.value.eq_ignore_ascii_case(word) && w.quote_style.is_none())
}

pub(super) fn parse_word(p: &mut Parser<'_>, word: &str) -> bool {
    let found = next_is_word(p, word);
    if found {
        p.next_token();
    }
    found
}

pub(super) fn expect_end(p: &mut Parser<'_>) -> Result<(), KalamError> {
    while p.consume_token(&Token::SemiColon) {}
    match p.peek_token().token {
        Token::EOF => Ok(()),
        other => Err(syntax_error(&other)),
    }
}

/// The PostgreSQL-style syntax error for an unexpected token.
pub(super) fn syntax_error(token: &Token) -> KalamError {
    let text = match token {
        Token::EOF => "syntax error at end of input".to_owned(),
        other => format!("syntax error at or near \"{other}\""),
    };
    KalamError::new(ErrorCode::InvalidSql, text)
}

/// Tokenizes `sql` in the dialect, accepting KalamDB's `CURRENT_USER()` spelling (the
/// PostgreSQL grammar knows only the bare `CURRENT_USER`).
pub fn tokenize(sql: &str) -> Result<Vec<TokenWithSpan>, KalamError> {
    let mut tokens = Tokenizer::new(&PostgreSqlDialect {}, sql)
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
    parse_tokens(sql, tokenize(sql)?)
}

/// Parses one statement from its [`tokenize`]d form (`sql` is its text, for messages).
pub fn parse_tokens(sql: &str, tokens: Vec<TokenWithSpan>) -> Result<KalamStatement, KalamError> {
    let dialect = PostgreSqlDialect {};
    check_structure(&tokens)?;
    let mut p = Parser::new(&dialect).with_tokens_with_locations(tokens);
    if next_is_word(&p, "CLEAR") {
        p.next_token();
        if parse_word(&mut p, "CACHE") {
            expect_end(&mut p)?;
            return Ok(KalamStatement::ClearCache);
        }
        return Err(unsupported(sql));
    }
    if next_is_word(&p, "CREATE") {
        let start = p.index();
        p.next_token();
        if super::parse_user::is_user_statement(&p) {
            return super::parse_user::create(&mut p, sql);
        }
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
        if parse_word(&mut p, "STORAGE") {
            let if_not_exists = p.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
            let id = ident_name(&p.parse_identifier().map_err(invalid_sql)?);
            let spec = parse_storage_clauses(&mut p, false)?;
            expect_end(&mut p)?;
            return Ok(KalamStatement::CreateStorage { id, if_not_exists, spec });
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
            reject_auto_increment(&p)?;
            return Ok(KalamStatement::CreateTable(parse_create_table(&mut p, kind.unwrap_or(TableType::Shared))?));
        }
        // Not ours: rewind and let the standard grammar report it.
        while p.index() > start {
            p.prev_token();
        }
    }
    if next_is_word(&p, "ALTER") {
        let start = p.index();
        p.next_token();
        if super::parse_user::is_user_statement(&p) {
            return super::parse_user::alter(&mut p);
        }
        if parse_word(&mut p, "STORAGE") {
            let id = ident_name(&p.parse_identifier().map_err(invalid_sql)?);
            let spec = parse_storage_clauses(&mut p, true)?;
            expect_end(&mut p)?;
            return Ok(KalamStatement::AlterStorage { id, spec });
        }
        if parse_word(&mut p, "FLUSH") {
            if !parse_word(&mut p, "SETTINGS") {
                return Err(syntax_error(&p.peek_token().token));
            }
            let (namespace, table) = qualified_table(&mut p, "ALTER FLUSH SETTINGS")?;
            let change = parse_flush_settings(&mut p)?;
            expect_end(&mut p)?;
            return Ok(KalamStatement::AlterFlushSettings { namespace, table, change });
        }
        if parse_word(&mut p, "NAMESPACE") {
            let name = ident_name(&p.parse_identifier().map_err(invalid_sql)?);
            if !(parse_word(&mut p, "SET") && parse_word(&mut p, "OPTIONS")) {
                return Err(syntax_error(&p.peek_token().token));
            }
            let options = parse_option_list(&mut p)?;
            expect_end(&mut p)?;
            return Ok(KalamStatement::AlterNamespace { name, options });
        }
        let _kind = parse_word(&mut p, "USER") || parse_word(&mut p, "SHARED") || parse_word(&mut p, "STREAM");
        if p.parse_keyword(Keyword::TABLE) {
            let (namespace, table, op) = parse_alter_table(&mut p)?;
            if RESERVED_NAMESPACES.contains(&namespace.as_str()) {
                return Err(KalamError::new(ErrorCode::InvalidOperation, "System tables cannot be altered"));
            }
            return Ok(KalamStatement::AlterTable { namespace, table, op });
        }
        while p.index() > start {
            p.prev_token();
        }
    }
    if next_is_word(&p, "DROP") {
        let start = p.index();
        p.next_token();
        if super::parse_user::is_user_statement(&p) {
            return super::parse_user::drop(&mut p);
        }
        if parse_word(&mut p, "STORAGE") {
            let if_exists = p.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
            let id = ident_name(&p.parse_identifier().map_err(invalid_sql)?);
            expect_end(&mut p)?;
            return Ok(KalamStatement::DropStorage { id, if_exists });
        }
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
        if parse_word(&mut p, "STORAGES") {
            expect_end(&mut p)?;
            return Ok(KalamStatement::ShowStorages);
        }
        let stats_for = parse_word(&mut p, "STATS") && parse_word(&mut p, "FOR") && p.parse_keyword(Keyword::TABLE);
        if stats_for || (parse_word(&mut p, "TABLE") && parse_word(&mut p, "STATS")) {
            let name = p.parse_object_name(false).map_err(invalid_sql)?;
            expect_end(&mut p)?;
            let (namespace, table) = object_parts(&name)?;
            return Ok(KalamStatement::ShowTableStats { namespace, table });
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
    for (word, pause) in [("PAUSE", true), ("RESUME", false)] {
        if next_is_word(&p, word)
            && matches!(&p.peek_nth_token(1).token, Token::Word(w) if w.value.eq_ignore_ascii_case("FLUSH"))
        {
            p.next_token();
            p.next_token();
            let table = if parse_word(&mut p, "ALL") {
                None
            } else {
                Some(qualified_table(&mut p, if pause { "PAUSE FLUSH" } else { "RESUME FLUSH" })?)
            };
            expect_end(&mut p)?;
            return Ok(if pause {
                KalamStatement::PauseFlush { table }
            } else {
                KalamStatement::ResumeFlush { table }
            });
        }
    }
    if next_is_word(&p, "KILL")
        && matches!(&p.peek_nth_token(1).token, Token::Word(w) if w.value.eq_ignore_ascii_case("LIVE"))
    {
        p.next_token();
        p.next_token();
        if !parse_word(&mut p, "QUERY") {
            return Err(syntax_error(&p.peek_token().token));
        }
        let live_id = match p.next_token().token {
            Token::SingleQuotedString(s) => s,
            other => return Err(syntax_error(&other)),
        };
        expect_end(&mut p)?;
        return Ok(KalamStatement::KillLiveQuery { live_id });
    }
    if next_is_word(&p, "SUBSCRIBE") {
        p.next_token();
        if !parse_word(&mut p, "TO") {
            return Err(syntax_error(&p.peek_token().token));
        }
        let table = p.parse_object_name(false).map_err(invalid_sql)?;
        if table.0.len() != 2 {
            return Err(KalamError::new(
                ErrorCode::InvalidSql,
                "Namespace must be specified (SUBSCRIBE TO <namespace>.<table>)",
            ));
        }
        let filter =
            if p.parse_keyword(Keyword::WHERE) { Some(Box::new(p.parse_expr().map_err(invalid_sql)?)) } else { None };
        let mut options = serde_json::Map::new();
        if parse_word(&mut p, "OPTIONS") {
            options = parse_option_list(&mut p)?;
        } else if parse_word(&mut p, "LAST") {
            let n = match p.next_token().token {
                Token::Number(n, _) => n,
                other => return Err(syntax_error(&other)),
            };
            let n: u64 = n.parse().map_err(|_| {
                KalamError::new(ErrorCode::InvalidSql, "Invalid option value: last_rows must be a non-negative integer")
            })?;
            options.insert("last_rows".into(), n.into());
        }
        expect_end(&mut p)?;
        if let Some(f) = &filter {
            check_depth(f.as_ref())?;
        }
        return Ok(KalamStatement::Subscribe { table, filter, options });
    }
    for (word, retry) in [("KILL", false), ("RETRY", true)] {
        if next_is_word(&p, word)
            && matches!(&p.peek_nth_token(1).token, Token::Word(w) if w.value.eq_ignore_ascii_case("JOB"))
        {
            p.next_token();
            p.next_token();
            let job_id = match p.next_token().token {
                Token::SingleQuotedString(s) => s,
                Token::Word(w) => {
                    // A bare id: words and dashes (`flush-t-123-abc`) up to the end.
                    let mut id = w.value;
                    loop {
                        match &p.peek_token().token {
                            Token::Minus => id.push('-'),
                            Token::Word(w) => id.push_str(&w.value),
                            Token::Number(n, _) => id.push_str(n),
                            _ => break,
                        }
                        p.next_token();
                    }
                    id
                }
                other => return Err(syntax_error(&other)),
            };
            expect_end(&mut p)?;
            return Ok(if retry { KalamStatement::RetryJob { job_id } } else { KalamStatement::KillJob { job_id } });
        }
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
        if parse_word(&mut p, "ALL") {
            if !parse_word(&mut p, "TABLES") {
                return Err(syntax_error(&p.peek_token().token));
            }
            let namespace = if parse_word(&mut p, "IN") {
                Some(ident_name(&p.parse_identifier().map_err(invalid_sql)?))
            } else {
                None
            };
            expect_end(&mut p)?;
            return Ok(KalamStatement::FlushAll { namespace });
        }
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
    check_depth(&stmt)?;
    match stmt {
        Statement::Insert(_) => Ok(KalamStatement::Insert(Box::new(stmt))),
        Statement::Update(_) => Ok(KalamStatement::Update(Box::new(stmt))),
        Statement::Delete(_) => Ok(KalamStatement::Delete(Box::new(stmt))),
        Statement::Query(_) => Ok(KalamStatement::Query(Box::new(stmt))),
        Statement::StartTransaction {
            modes,
            modifier: None,
            statements,
            exception: None,
            has_end_keyword: false,
            ..
        } if modes.is_empty() && statements.is_empty() => Ok(KalamStatement::Begin),
        Statement::Commit { chain: false, end: false, modifier: None } => Ok(KalamStatement::Commit),
        Statement::Rollback { chain: false, savepoint: None } => Ok(KalamStatement::Rollback),
        _ => Err(unsupported(sql)),
    }
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
            Literal::Number(n) => match n.strip_prefix('-') {
                // `- -5`
                Some(positive) => Ok(Literal::Number(positive.to_owned())),
                None => Ok(Literal::Number(format!("-{n}"))),
            },
            _ => Err(invalid(format!("cannot negate {expr}"))),
        },
        Expr::Nested(inner) => literal(inner),
        other => Err(KalamError::new(
            ErrorCode::UnsupportedStatement,
            format!("expected a literal value; '{other}' is not supported here yet"),
        )),
    }
}

/// The clauses of CREATE STORAGE (`TYPE x`, `NAME 'n'`, `URI 'u'`, …) or, with `alter`, of
/// ALTER STORAGE (`SET NAME 'n'`, `SET URI = 'u'`, optionally comma-separated).
fn parse_storage_clauses(p: &mut Parser<'_>, alter: bool) -> Result<StorageSpec, KalamError> {
    let mut spec = StorageSpec::default();
    loop {
        if alter {
            let _ = p.consume_token(&Token::Comma);
            if !parse_word(p, "SET") {
                break;
            }
        }
        let Token::Word(w) = p.peek_token().token else { break };
        let key = w.value.to_ascii_uppercase();
        let slot: &mut Option<String> = match key.as_str() {
            "TYPE" => &mut spec.storage_type,
            "NAME" => &mut spec.name,
            "DESCRIPTION" => &mut spec.description,
            "URI" | "PATH" | "BASE_DIRECTORY" => &mut spec.uri,
            "BUCKET" => &mut spec.bucket,
            "REGION" => &mut spec.region,
            "SHARED_TABLES_TEMPLATE" => &mut spec.shared_template,
            "USER_TABLES_TEMPLATE" => &mut spec.user_template,
            "CREDENTIALS" => &mut spec.credentials,
            _ if alter => return Err(syntax_error(&Token::Word(w))),
            _ => break,
        };
        p.next_token();
        if slot.is_some() {
            return Err(KalamError::new(ErrorCode::InvalidSql, format!("{key} specified more than once")));
        }
        let _ = p.consume_token(&Token::Eq);
        *slot = Some(match (key.as_str(), p.next_token().token) {
            ("TYPE", Token::Word(w)) => w.value.to_ascii_lowercase(),
            ("TYPE", Token::SingleQuotedString(s)) => s.to_ascii_lowercase(),
            (_, Token::SingleQuotedString(s)) => s,
            (_, other) => return Err(syntax_error(&other)),
        });
    }
    Ok(spec)
}

/// A `<ns>.<table>` name (statements that require qualification).
fn qualified_table(p: &mut Parser<'_>, statement: &str) -> Result<(String, String), KalamError> {
    let name = p.parse_object_name(false).map_err(invalid_sql)?;
    if name.0.len() != 2 {
        return Err(KalamError::new(
            ErrorCode::InvalidSql,
            format!("Table name must be qualified (namespace.table) for {statement}"),
        ));
    }
    object_parts(&name)
}

/// `AUTO_INCREMENT` is not a column option of any table kind; say what to use instead.
fn reject_auto_increment(p: &Parser<'_>) -> Result<(), KalamError> {
    let mut i = 0;
    loop {
        match &p.peek_nth_token(i).token {
            Token::EOF => return Ok(()),
            Token::Word(w)
                if w.quote_style.is_none()
                    && ["AUTO_INCREMENT", "AUTOINCREMENT"].contains(&w.value.to_ascii_uppercase().as_str()) =>
            {
                return Err(KalamError::new(
                    ErrorCode::InvalidSql,
                    "AUTO_INCREMENT is not supported. Use DEFAULT SNOWFLAKE_ID() (BIGINT) or DEFAULT UUID_V7() / ULID() (TEXT)",
                ));
            }
            _ => i += 1,
        }
    }
}

fn unsupported(sql: &str) -> KalamError {
    let first = sql.lines().next().unwrap_or("").trim();
    KalamError::new(ErrorCode::UnsupportedStatement, format!("Unsupported SQL statement: {first}"))
}

#[cfg(test)]
mod tests {
    use kalam_types::schema::{AccessLevel, ColumnDefault, Sharding};

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
        assert_eq!(s.options.storage.as_deref(), Some("local"));
        assert_eq!((s.options.flush_interval_seconds, s.options.flush_row_threshold), (Some(30), Some(100)));
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

    #[test]
    fn table_options_in_clause_and_with_forms() {
        let s = create(
            "CREATE USER TABLE a.t (id BIGINT PRIMARY KEY) SHARDING hash(4) DELETED_RETENTION '2d' USE_USER_STORAGE FLUSH ROWS 50",
        );
        assert_eq!(s.options.sharding, Some(Sharding::Hash(4)));
        assert_eq!(s.options.deleted_retention_hours, Some(Some(48)));
        assert_eq!(s.options.use_user_storage, Some(true));
        assert_eq!(s.options.flush_row_threshold, Some(50));
        let s = create(
            "CREATE SHARED TABLE a.t (id BIGINT PRIMARY KEY) WITH (storage = 'local', flush_row_threshold = 1000, deleted_retention = 'off', access = 'restricted')",
        );
        assert_eq!(s.options.access, Some(AccessLevel::Restricted));
        assert_eq!(s.options.deleted_retention_hours, Some(None));
        let s = create("CREATE STREAM TABLE a.e (id TEXT PRIMARY KEY) TTL 10s MAX_BUFFER 1000 EPHEMERAL");
        assert_eq!(
            (s.options.ttl_seconds, s.options.max_buffer, s.options.ephemeral),
            (Some(10), Some(1000), Some(true))
        );
        let s = create(
            "CREATE SHARED TABLE a.t (id BIGINT PRIMARY KEY) FLUSH POLICY COMBINED ROW_LIMIT 10 TIME_INTERVAL 60",
        );
        assert_eq!((s.options.flush_row_threshold, s.options.flush_interval_seconds), (Some(10), Some(60)));
    }

    #[test]
    fn table_option_errors() {
        let err = |sql: &str| parse_statement(sql).unwrap_err().message;
        assert_eq!(
            err("CREATE USER TABLE a.t (id BIGINT PRIMARY KEY) TTL 5s"),
            "Option TTL is only valid for STREAM tables"
        );
        assert_eq!(
            err("CREATE USER TABLE a.t (id BIGINT PRIMARY KEY) ACCESS public"),
            "Option ACCESS is only valid for SHARED tables"
        );
        assert!(
            err("CREATE SHARED TABLE a.t (id BIGINT PRIMARY KEY) ACCESS everyone").starts_with("Invalid ACCESS value")
        );
        assert!(
            err("CREATE SHARED TABLE a.t (id BIGINT PRIMARY KEY) TABLE_TYPE shared")
                .starts_with("TABLE_TYPE is not supported")
        );
        assert_eq!(err("CREATE SHARED TABLE a.t (id BIGINT PRIMARY KEY) OWNER_ID 'x'"), "OWNER_ID is not supported");
        assert!(
            err("CREATE SHARED TABLE a.t (id BIGINT PRIMARY KEY AUTO_INCREMENT)")
                .starts_with("AUTO_INCREMENT is not supported")
        );
        assert_eq!(
            err("CREATE SHARED TABLE a.t (id BIGINT PRIMARY KEY) FLUSH ROW_THRESHOLD 0"),
            "ROW_THRESHOLD must be between 1 and 999999"
        );
        assert_eq!(
            err("CREATE SHARED TABLE a.t (id BIGINT PRIMARY KEY) STORAGE local STORAGE local"),
            "Option STORAGE specified more than once"
        );
    }

    #[test]
    fn alter_statements() {
        let alter = |sql: &str| match parse_statement(sql).unwrap() {
            KalamStatement::AlterTable { namespace, table, op } => (namespace, table, op),
            other => panic!("not ALTER TABLE: {other:?}"),
        };
        let (ns, t, op) = alter("ALTER USER TABLE app.m ADD COLUMN priority TEXT NOT NULL DEFAULT 'low'");
        assert_eq!((ns.as_str(), t.as_str()), ("app", "m"));
        assert!(matches!(op, AlterTableOp::Add(c) if c.name == "priority" && !c.nullable));
        assert!(matches!(alter("ALTER TABLE app.m DROP body").2, AlterTableOp::Drop(c) if c == "body"));
        assert!(matches!(alter("ALTER TABLE app.m RENAME COLUMN a TO b").2, AlterTableOp::Rename { .. }));
        assert!(matches!(
            alter("ALTER TABLE app.m MODIFY COLUMN n BIGINT NOT NULL").2,
            AlterTableOp::Modify { nullable: Some(false), .. }
        ));
        assert_eq!(
            parse_statement("ALTER TABLE system.users ADD COLUMN x TEXT").unwrap_err().message,
            "System tables cannot be altered"
        );
        assert!(matches!(
            parse_statement("ALTER NAMESPACE app SET OPTIONS (retention_days = 90, owner = 'team-a')").unwrap(),
            KalamStatement::AlterNamespace { options, .. } if options.len() == 2
        ));
        assert!(matches!(parse_statement("SHOW TABLE STATS app.m").unwrap(), KalamStatement::ShowTableStats { .. }));
        assert!(matches!(
            parse_statement("SHOW STATS FOR TABLE app.m").unwrap(),
            KalamStatement::ShowTableStats { .. }
        ));
    }

    #[test]
    fn three_part_names_address_a_user_partition() {
        let name = ObjectName::from(vec![Ident::new("app"), Ident::with_quote('"', "Alice"), Ident::new("messages")]);
        let r = TableRef::parse(&name).unwrap();
        assert_eq!(r.qualifier.as_deref(), Some("Alice"));
        let me = UserId::parse("bob").unwrap();
        assert_eq!(r.partition_user(&me).unwrap().as_str(), "Alice");
        let own = TableRef { qualifier: Some("user".into()), ..r };
        assert_eq!(own.partition_user(&me).unwrap(), me);
    }

    #[test]
    fn no_token_soup_panics_the_parser() {
        let words = [
            "CREATE",
            "ALTER",
            "DROP",
            "SHOW",
            "TABLE",
            "USER",
            "STREAM",
            "NAMESPACE",
            "app.t",
            "a.b.c",
            "(",
            ")",
            ",",
            "=",
            "'x'",
            "1",
            "-",
            "FLUSH",
            "WITH",
            "TTL",
            "STATS",
            "ADD",
            "COLUMN",
            "MODIFY",
            "INT",
            "NOT",
            "NULL",
            ";",
            "SELECT",
            "*",
            "FROM",
            "$1",
            "DEFAULT",
            "NOW()",
            "RENAME",
            "TO",
        ];
        let mut checked = 0;
        for a in words {
            for b in words {
                for c in words {
                    let sql = format!("{a} {b} {c}");
                    let _ = parse_statement(&sql);
                    let _ = parse_statement(&format!("{sql} {a} ({b} {c}"));
                    checked += 2;
                }
            }
        }
        assert!(checked > 90_000);
    }
}
