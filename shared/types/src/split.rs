//! Splitting SQL text into statements at top-level `;`, honouring quotes (`'…'` and `"…"`, a
//! doubled quote stays inside) and comments (`-- …` to the end of the line, `/* … */`, not
//! nested). kalamd splits request bodies with it and the CLI decides with it when typed input
//! holds complete statements, so both always agree.

use crate::error::{ErrorCode, KalamError};

/// A quote or comment still open at the end of the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Open {
    String,
    Identifier,
    Comment,
}

/// What [`scan`] found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Scan {
    /// The statements ended by a `;`, trimmed, comments replaced by a space; pieces without
    /// code are dropped.
    pub statements: Vec<String>,
    /// The text after the last `;`, the same way (empty when it holds no code).
    pub rest: String,
    /// A quote or comment left open at the end.
    pub open: Option<Open>,
}

/// Scans `sql` once.
pub fn scan(sql: &str) -> Scan {
    let mut out = Scan::default();
    let mut current = String::new();
    let mut has_code = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                has_code = true;
                current.push(c);
                let mut closed = false;
                while let Some(d) = chars.next() {
                    current.push(d);
                    if d == c {
                        if chars.peek() == Some(&c) {
                            current.push(c);
                            chars.next();
                            continue;
                        }
                        closed = true;
                        break;
                    }
                }
                if !closed {
                    out.open = Some(if c == '\'' { Open::String } else { Open::Identifier });
                }
            }
            '-' if chars.peek() == Some(&'-') => {
                for d in chars.by_ref() {
                    if d == '\n' {
                        break;
                    }
                }
                current.push(' ');
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut prev = ' ';
                let mut closed = false;
                for d in chars.by_ref() {
                    if prev == '*' && d == '/' {
                        closed = true;
                        break;
                    }
                    prev = d;
                }
                if !closed {
                    out.open = Some(Open::Comment);
                }
                current.push(' ');
            }
            ';' => {
                if has_code {
                    out.statements.push(current.trim().to_owned());
                }
                current.clear();
                has_code = false;
            }
            _ => {
                if !c.is_whitespace() {
                    has_code = true;
                }
                current.push(c);
            }
        }
    }
    if has_code {
        out.rest = current.trim().to_owned();
    }
    out
}

/// The non-empty statements of `sql` (a last one without `;` included), or
/// `BATCH_PARSE_ERROR` for an unterminated quote or comment.
pub fn split_statements(sql: &str) -> Result<Vec<String>, KalamError> {
    let Scan { mut statements, rest, open } = scan(sql);
    match open {
        Some(Open::Comment) => {
            return Err(KalamError::new(ErrorCode::BatchParseError, "unterminated comment in SQL batch"));
        }
        Some(o) => {
            let what = if o == Open::String { "string" } else { "identifier" };
            return Err(KalamError::new(
                ErrorCode::BatchParseError,
                format!("unterminated quoted {what} in SQL batch"),
            ));
        }
        None => {}
    }
    if !rest.is_empty() {
        statements.push(rest);
    }
    Ok(statements)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_on_top_level_semicolons_only() {
        let s = split_statements("INSERT INTO t VALUES ('a;b'); -- c;\nSELECT \"x;\" FROM t;;  ").unwrap();
        assert_eq!(s, vec!["INSERT INTO t VALUES ('a;b')", "SELECT \"x;\" FROM t"]);
    }

    #[test]
    fn comments_and_blank_pieces_vanish() {
        assert!(split_statements(" -- only a comment\n /* and ; this */ ;").unwrap().is_empty());
        assert_eq!(split_statements("SELECT 'it''s'").unwrap(), vec!["SELECT 'it''s'"]);
        // Block comments do not nest: the first `*/` ends it.
        assert_eq!(split_statements("SELECT 1; /* /* */ SELECT 2;").unwrap(), vec!["SELECT 1", "SELECT 2"]);
    }

    #[test]
    fn unterminated_quotes_are_batch_errors() {
        assert_eq!(split_statements("SELECT 'oops").unwrap_err().code, ErrorCode::BatchParseError);
        assert_eq!(split_statements("SELECT 1 /* x").unwrap_err().code, ErrorCode::BatchParseError);
    }

    #[test]
    fn scans_report_the_unfinished_part() {
        let s = scan("SELECT 1; SELECT 'a\n");
        assert_eq!((s.statements, s.open), (vec!["SELECT 1".to_owned()], Some(Open::String)));
        let s = scan("SELECT 2; -- done");
        assert_eq!((s.rest.as_str(), s.open), ("", None));
    }
}
