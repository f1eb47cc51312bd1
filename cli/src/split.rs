//! Splitting input into statements the way the server does (sql.md: `;` outside quotes and
//! comments), and collecting lines until a statement is complete (cli.md §1.4, §1.7).

/// Lexical state while scanning SQL text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Code,
    /// Inside `'…'` (a doubled `''` stays inside).
    Single,
    /// Inside `"…"`.
    Double,
    LineComment,
    /// Inside `/* … */`, with its nesting depth.
    Block(u32),
}

/// The statements of `text`: split at `;` outside quotes and comments, trimmed, with
/// statements that hold only comments dropped. The `;` is not kept.
pub fn split_statements(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut start = 0;
    scan(text, |i| {
        push_statement(&mut out, &text[start..i]);
        start = i + 1;
    });
    push_statement(&mut out, &text[start..]);
    out
}

fn push_statement(out: &mut Vec<String>, piece: &str) {
    let piece = piece.trim();
    if !strip_comments(piece).trim().is_empty() {
        out.push(piece.to_owned());
    }
}

/// Walks `text`, calling `on_semicolon` with the byte offset of each statement-ending `;`;
/// returns the state at the end.
fn scan(text: &str, mut on_semicolon: impl FnMut(usize)) -> State {
    let bytes = text.as_bytes();
    let mut state = State::Code;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let next = bytes.get(i + 1).copied();
        match state {
            State::Code => match (b, next) {
                (b'\'', _) => state = State::Single,
                (b'"', _) => state = State::Double,
                (b'-', Some(b'-')) => {
                    state = State::LineComment;
                    i += 1;
                }
                (b'/', Some(b'*')) => {
                    state = State::Block(1);
                    i += 1;
                }
                (b';', _) => on_semicolon(i),
                _ => {}
            },
            State::Single => {
                if b == b'\'' {
                    if next == Some(b'\'') {
                        i += 1;
                    } else {
                        state = State::Code;
                    }
                }
            }
            State::Double => {
                if b == b'"' {
                    state = State::Code;
                }
            }
            State::LineComment => {
                if b == b'\n' {
                    state = State::Code;
                }
            }
            State::Block(depth) => match (b, next) {
                (b'*', Some(b'/')) => {
                    state = if depth == 1 { State::Code } else { State::Block(depth - 1) };
                    i += 1;
                }
                (b'/', Some(b'*')) => {
                    state = State::Block(depth + 1);
                    i += 1;
                }
                _ => {}
            },
        }
        i += 1;
    }
    state
}

/// `text` without its comments (quotes kept as they are).
pub fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut state = State::Code;
    let mut chars = text.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        let next = chars.peek().map(|&(_, n)| n);
        match state {
            State::Code => match (c, next) {
                ('-', Some('-')) => {
                    chars.next();
                    state = State::LineComment;
                }
                ('/', Some('*')) => {
                    chars.next();
                    state = State::Block(1);
                }
                _ => {
                    if c == '\'' {
                        state = State::Single;
                    } else if c == '"' {
                        state = State::Double;
                    }
                    out.push(c);
                }
            },
            State::Single | State::Double => {
                let quote = if state == State::Single { '\'' } else { '"' };
                out.push(c);
                if c == quote {
                    if state == State::Single && next == Some('\'') {
                        chars.next();
                        out.push('\'');
                    } else {
                        state = State::Code;
                    }
                }
            }
            State::LineComment => {
                if c == '\n' {
                    out.push('\n');
                    state = State::Code;
                }
            }
            State::Block(depth) => match (c, next) {
                ('*', Some('/')) => {
                    chars.next();
                    state = if depth == 1 { State::Code } else { State::Block(depth - 1) };
                    out.push(' ');
                }
                ('/', Some('*')) => {
                    chars.next();
                    state = State::Block(depth + 1);
                }
                _ => {}
            },
        }
    }
    out
}

/// True when `text` ends a statement: its last code character (comments and whitespace
/// aside) is a `;` outside quotes and comments.
pub fn ends_statement(text: &str) -> bool {
    let mut last_semicolon = None;
    let state = scan(text, |i| last_semicolon = Some(i));
    if matches!(state, State::Single | State::Double | State::Block(_)) {
        return false;
    }
    match last_semicolon {
        Some(i) => strip_comments(&text[i + 1..]).trim().is_empty(),
        None => false,
    }
}

/// One unit of input to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// SQL text: one or more complete statements.
    Sql(String),
    /// A meta-command line (`\dt`, `\q`, …).
    Meta(String),
}

/// Collects input lines into statements and meta-commands.
#[derive(Debug, Default)]
pub struct LineBuffer {
    text: String,
    /// Interactive input: an empty line after text also ends the statement.
    blank_line_ends: bool,
}

impl LineBuffer {
    pub fn new(blank_line_ends: bool) -> Self {
        Self { text: String::new(), blank_line_ends }
    }

    /// True while a statement is being continued.
    pub fn is_pending(&self) -> bool {
        !strip_comments(&self.text).trim().is_empty()
    }

    pub fn clear(&mut self) {
        self.text.clear();
    }

    /// Adds one line; returns what became ready to run.
    pub fn push_line(&mut self, line: &str) -> Option<Input> {
        let trimmed = line.trim();
        if !self.is_pending() && trimmed.starts_with('\\') {
            self.text.clear();
            return Some(Input::Meta(trimmed.to_owned()));
        }
        if trimmed.is_empty() && self.blank_line_ends && self.is_pending() {
            return self.take();
        }
        if !self.text.is_empty() {
            self.text.push('\n');
        }
        self.text.push_str(line);
        if ends_statement(&self.text) { self.take() } else { None }
    }

    /// Whatever is left (at end of input).
    pub fn take(&mut self) -> Option<Input> {
        let text = std::mem::take(&mut self.text);
        (!strip_comments(&text).trim().is_empty()).then(|| Input::Sql(text.trim().to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semicolons_in_quotes_and_comments_do_not_split() {
        let sql = "INSERT INTO t VALUES ('a;b', 'it''s;'); -- c;\nSELECT \"x;y\" /* ; /* ; */ */ FROM t;;  -- only\n";
        assert_eq!(
            split_statements(sql),
            vec!["INSERT INTO t VALUES ('a;b', 'it''s;')", "-- c;\nSELECT \"x;y\" /* ; /* ; */ */ FROM t"]
        );
        assert!(split_statements("-- nothing\n/* here */ ;").is_empty());
    }

    #[test]
    fn statement_ends_only_at_a_real_semicolon() {
        assert!(ends_statement("SELECT 1;"));
        assert!(ends_statement("SELECT 1; -- done"));
        assert!(!ends_statement("SELECT ';"));
        assert!(!ends_statement("SELECT 1 /* ; "));
        assert!(!ends_statement("SELECT 1; SELECT"));
    }

    #[test]
    fn lines_collect_until_complete_and_meta_commands_stand_alone() {
        let mut b = LineBuffer::new(true);
        assert_eq!(b.push_line("\\dt"), Some(Input::Meta("\\dt".into())));
        assert_eq!(b.push_line("SELECT"), None);
        assert!(b.is_pending());
        assert_eq!(b.push_line("  \\not-meta"), None);
        assert_eq!(b.push_line("1;"), Some(Input::Sql("SELECT\n  \\not-meta\n1;".into())));
        assert_eq!(b.push_line("SELECT 2"), None);
        assert_eq!(b.push_line(""), Some(Input::Sql("SELECT 2".into())));
        // In files a blank line does not end a statement.
        let mut f = LineBuffer::new(false);
        assert_eq!(f.push_line("SELECT 3"), None);
        assert_eq!(f.push_line(""), None);
        assert_eq!(f.take(), Some(Input::Sql("SELECT 3".into())));
        assert_eq!(f.push_line("-- just a comment"), None);
        assert_eq!(f.take(), None);
    }
}
