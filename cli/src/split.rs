//! Collecting typed lines until they hold complete statements (cli.md §1.4, §1.7). Where a
//! statement ends is decided by the server's own splitter (`kalam_types::split`), so the CLI
//! and kalamd always agree.

use kalam_types::split::scan;

/// True when `text` ends a statement: it has one, and after its last `;` nothing but
/// comments and whitespace, with no quote or comment left open.
pub fn ends_statement(text: &str) -> bool {
    let s = scan(text);
    s.open.is_none() && s.rest.is_empty() && !s.statements.is_empty()
}

/// True when `text` holds code (not only comments and whitespace), or an open quote.
fn has_code(text: &str) -> bool {
    let s = scan(text);
    s.open.is_some() || !s.rest.is_empty() || !s.statements.is_empty()
}

/// One unit of input to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// SQL text: one or more statements.
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
        has_code(&self.text)
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
        // A blank line inside an open quote or comment is part of it.
        if trimmed.is_empty() && self.blank_line_ends && self.is_pending() && scan(&self.text).open.is_none() {
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
        has_code(&text).then(|| Input::Sql(text.trim().to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_ends_only_at_a_real_semicolon() {
        assert!(ends_statement("SELECT 1;"));
        assert!(ends_statement("SELECT 1; -- done"));
        assert!(!ends_statement("SELECT ';"));
        assert!(!ends_statement("SELECT 1 /* ; "));
        assert!(!ends_statement("SELECT 1; SELECT"));
        // Comments do not nest (as on the server).
        assert!(ends_statement("SELECT 1; /* /* */ SELECT 2;"));
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
        // A blank line inside a string literal does not end the statement.
        assert_eq!(b.push_line("INSERT INTO t VALUES ('a"), None);
        assert_eq!(b.push_line(""), None);
        assert_eq!(b.push_line("b');"), Some(Input::Sql("INSERT INTO t VALUES ('a\n\nb');".into())));
        // In files a blank line does not end a statement.
        let mut f = LineBuffer::new(false);
        assert_eq!(f.push_line("SELECT 3"), None);
        assert_eq!(f.push_line(""), None);
        assert_eq!(f.take(), Some(Input::Sql("SELECT 3".into())));
        assert_eq!(f.push_line("-- just a comment"), None);
        assert_eq!(f.take(), None);
    }
}
