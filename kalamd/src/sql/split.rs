//! Splits a request body into statements at top-level `;`, honouring quotes and comments.

use kalam_types::error::{ErrorCode, KalamError};

/// Returns the non-empty statements of `sql` (comment-only pieces are dropped), or
/// `BATCH_PARSE_ERROR` for an unterminated quote or comment.
pub fn split_statements(sql: &str) -> Result<Vec<String>, KalamError> {
    let mut out = Vec::new();
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
                    return Err(KalamError::new(
                        ErrorCode::BatchParseError,
                        format!("unterminated quoted {} in SQL batch", if c == '\'' { "string" } else { "identifier" }),
                    ));
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
                    return Err(KalamError::new(ErrorCode::BatchParseError, "unterminated comment in SQL batch"));
                }
                current.push(' ');
            }
            ';' => {
                if has_code {
                    out.push(current.trim().to_owned());
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
        out.push(current.trim().to_owned());
    }
    Ok(out)
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
    }

    #[test]
    fn unterminated_quotes_are_batch_errors() {
        assert_eq!(split_statements("SELECT 'oops").unwrap_err().code, ErrorCode::BatchParseError);
        assert_eq!(split_statements("SELECT 1 /* x").unwrap_err().code, ErrorCode::BatchParseError);
    }
}
