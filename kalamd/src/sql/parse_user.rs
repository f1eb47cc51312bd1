//! `CREATE USER`, `ALTER USER` and `DROP USER` (sql.md §14). The leading `CREATE` / `ALTER` /
//! `DROP` has been consumed and the next word is `USER` (not `USER TABLE`).

use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::Token;
use kalam_types::error::{ErrorCode, KalamError};

use super::parse::{KalamStatement, expect_end, next_is_word, parse_word, syntax_error};
use crate::users::{NewUser, UserChange};

/// True when the statement continues with `USER` naming a user rather than `USER TABLE`.
pub(super) fn is_user_statement(p: &Parser<'_>) -> bool {
    next_is_word(p, "USER") && !matches!(&p.peek_nth_token(1).token, Token::Word(w) if w.keyword == Keyword::TABLE)
}

/// A user id or clause value: a quoted string, or a bare word taken as written.
fn value(p: &mut Parser<'_>) -> Result<String, KalamError> {
    let token = p.next_token().token;
    match token {
        Token::SingleQuotedString(s) => Ok(s),
        // Bare words (`ROLE user`, `CREATE USER alice`) are taken as written, keywords included.
        Token::Word(w) if w.quote_style.is_none() || w.quote_style == Some('"') => Ok(w.value),
        other => Err(syntax_error(&other)),
    }
}

fn reject_owner_id(sql: &str) -> Result<(), KalamError> {
    if sql.to_ascii_uppercase().contains("OWNER_ID") {
        return Err(KalamError::new(ErrorCode::InvalidSql, "OWNER_ID is not supported; use CREATE USER <user_id>"));
    }
    Ok(())
}

/// `CREATE USER [IF NOT EXISTS] '<id>' [WITH] [ROLE r] [USERNAME 'n'] [EMAIL 'e'] [APIKEY 'k']
/// [METADATA '<json>']`, clauses in any order, each at most once.
pub(super) fn create(p: &mut Parser<'_>, sql: &str) -> Result<KalamStatement, KalamError> {
    reject_owner_id(sql)?;
    parse_word(p, "USER");
    let if_not_exists = p.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    let mut user = NewUser { user_id: value(p)?, ..Default::default() };
    parse_word(p, "WITH");
    loop {
        let clause = match &p.peek_token().token {
            Token::Word(w) if w.quote_style.is_none() => w.value.to_ascii_uppercase(),
            _ => break,
        };
        p.next_token();
        let duplicate = || KalamError::new(ErrorCode::InvalidSql, format!("{clause} given twice"));
        let slot = match clause.as_str() {
            "ROLE" => &mut user.role,
            "USERNAME" => &mut user.username,
            "EMAIL" => &mut user.email,
            "METADATA" => &mut user.metadata,
            "APIKEY" => {
                if user.apikey.is_some() {
                    return Err(duplicate());
                }
                user.apikey = Some(Some(value(p)?));
                continue;
            }
            _ => {
                p.prev_token();
                return Err(syntax_error(&p.peek_token().token));
            }
        };
        if slot.is_some() {
            return Err(duplicate());
        }
        *slot = Some(value(p)?);
    }
    expect_end(p)?;
    Ok(KalamStatement::CreateUser { user, if_not_exists })
}

/// `ALTER USER '<id>' SET ROLE r | SET USERNAME 'n' | SET METADATA '<json>' | RESET APIKEY`.
pub(super) fn alter(p: &mut Parser<'_>) -> Result<KalamStatement, KalamError> {
    parse_word(p, "USER");
    let user_id = value(p)?;
    let change = if parse_word(p, "RESET") {
        if !parse_word(p, "APIKEY") {
            return Err(syntax_error(&p.peek_token().token));
        }
        UserChange::ResetApiKey
    } else if p.parse_keyword(Keyword::SET) {
        if parse_word(p, "ROLE") {
            UserChange::Role(value(p)?)
        } else if parse_word(p, "USERNAME") {
            UserChange::Username(value(p)?)
        } else if parse_word(p, "METADATA") {
            UserChange::Metadata(value(p)?)
        } else {
            return Err(syntax_error(&p.peek_token().token));
        }
    } else {
        return Err(syntax_error(&p.peek_token().token));
    };
    expect_end(p)?;
    Ok(KalamStatement::AlterUser { user_id, change })
}

/// `DROP USER [IF EXISTS] '<id>'`.
pub(super) fn drop(p: &mut Parser<'_>) -> Result<KalamStatement, KalamError> {
    parse_word(p, "USER");
    let if_exists = p.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
    let user_id = value(p)?;
    expect_end(p)?;
    Ok(KalamStatement::DropUser { user_id, if_exists })
}

#[cfg(test)]
mod tests {
    use super::super::parse::parse_statement;
    use super::*;

    #[test]
    fn create_user_takes_clauses_in_any_order() {
        let s = parse_statement("CREATE USER 'alice' WITH EMAIL 'a@x.io' ROLE service APIKEY 'k1'").unwrap();
        assert!(!format!("{s:?}").contains("k1"), "the clear key is never in debug output");
        let KalamStatement::CreateUser { user, if_not_exists } = s else { panic!("{s:?}") };
        assert!(!if_not_exists);
        assert_eq!(user.user_id, "alice");
        assert_eq!((user.role.as_deref(), user.email.as_deref()), (Some("service"), Some("a@x.io")));
        assert_eq!(user.apikey, Some(Some("k1".into())));
        let s = parse_statement("CREATE USER IF NOT EXISTS bob").unwrap();
        assert!(matches!(s, KalamStatement::CreateUser { if_not_exists: true, .. }));
    }

    #[test]
    fn user_tables_are_not_users() {
        assert!(matches!(
            parse_statement("CREATE USER TABLE app.t (id BIGINT PRIMARY KEY)").unwrap(),
            KalamStatement::CreateTable(_)
        ));
    }

    #[test]
    fn alter_and_drop_user() {
        let s = parse_statement("ALTER USER 'alice' SET ROLE dba").unwrap();
        assert!(
            matches!(&s, KalamStatement::AlterUser { user_id, change: UserChange::Role(r) } if user_id == "alice" && r == "dba"),
            "{s:?}"
        );
        let s = parse_statement("ALTER USER 'alice' RESET APIKEY").unwrap();
        assert!(matches!(s, KalamStatement::AlterUser { change: UserChange::ResetApiKey, .. }), "{s:?}");
        let s = parse_statement("DROP USER IF EXISTS 'alice'").unwrap();
        assert!(matches!(&s, KalamStatement::DropUser { user_id, if_exists: true } if user_id == "alice"), "{s:?}");
    }

    #[test]
    fn bad_user_statements_are_refused() {
        let e = parse_statement("CREATE USER 'a' OWNER_ID 'b'").unwrap_err();
        assert_eq!(e.message, "OWNER_ID is not supported; use CREATE USER <user_id>");
        assert!(parse_statement("CREATE USER 'a' ROLE dba ROLE user").is_err());
        assert!(parse_statement("ALTER USER 'a' SET PASSWORD 'x'").is_err());
        assert!(parse_statement("CREATE USER 'a' COLOUR 'blue'").is_err());
    }
}
