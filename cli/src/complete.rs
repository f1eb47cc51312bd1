//! TAB completion (cli.md §1.9): SQL keywords, meta-commands, namespaces, tables and the
//! columns of tables named in the line. Pure functions over a [`Catalog`] the shell keeps.

use std::collections::HashMap;

pub const KEYWORDS: &[&str] = &[
    "SELECT",
    "INSERT",
    "INTO",
    "VALUES",
    "UPDATE",
    "SET",
    "DELETE",
    "CREATE",
    "DROP",
    "ALTER",
    "SHOW",
    "DESCRIBE",
    "SUBSCRIBE",
    "TO",
    "FLUSH",
    "KILL",
    "LIVE",
    "QUERY",
    "JOB",
    "RETRY",
    "FROM",
    "WHERE",
    "AND",
    "OR",
    "NOT",
    "NULL",
    "IS",
    "IN",
    "LIKE",
    "AS",
    "ORDER BY",
    "GROUP BY",
    "HAVING",
    "LIMIT",
    "OFFSET",
    "JOIN",
    "INNER",
    "LEFT",
    "RIGHT",
    "OUTER",
    "ON",
    "DISTINCT",
    "COUNT",
    "NAMESPACE",
    "NAMESPACES",
    "TABLE",
    "TABLES",
    "USER",
    "SHARED",
    "STREAM",
    "STORAGE",
    "STORAGES",
    "IF",
    "EXISTS",
    "PRIMARY KEY",
    "DEFAULT",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "OPTIONS",
    "LAST",
    "ALL",
    "PAUSE",
    "RESUME",
    "STATS",
    "BIGINT",
    "INT",
    "TEXT",
    "BOOLEAN",
    "DOUBLE",
    "FLOAT",
    "TIMESTAMP",
    "DATE",
    "JSON",
    "BYTES",
];

/// The meta-commands of cli.md §1.5, as typed.
pub const META_COMMANDS: &[&str] = &[
    "\\quit",
    "\\q",
    "\\help",
    "\\?",
    "\\connect",
    "\\c",
    "\\config",
    "\\dt",
    "\\tables",
    "\\d",
    "\\describe",
    "\\dn",
    "\\format",
    "\\timing",
    "\\flush",
    "\\health",
    "\\subscribe",
    "\\watch",
    "\\unsubscribe",
    "\\unwatch",
    "\\pause",
    "\\continue",
    "\\live",
    "\\kill",
    "\\refresh-tables",
    "\\refresh",
];

/// What the server has, as far as completion knows.
#[derive(Debug, Default, Clone)]
pub struct Catalog {
    /// (namespace, table), sorted.
    pub tables: Vec<(String, String)>,
    /// Columns by `namespace.table` (lower case), fetched on demand.
    pub columns: HashMap<String, Vec<String>>,
}

impl Catalog {
    pub fn namespaces(&self) -> Vec<&str> {
        let mut ns: Vec<&str> = self.tables.iter().map(|(n, _)| n.as_str()).collect();
        ns.dedup();
        ns
    }

    /// The tables named in `line` (qualified, or unqualified when the name is unique), as
    /// `namespace.table`.
    pub fn tables_in(&self, line: &str) -> Vec<String> {
        let words = line.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.')).filter(|w| !w.is_empty());
        let mut out = Vec::new();
        for w in words {
            let w = w.to_ascii_lowercase();
            let found = self.tables.iter().find(|(n, t)| {
                let q = format!("{n}.{t}").to_ascii_lowercase();
                q == w
                    || (t.eq_ignore_ascii_case(&w)
                        && self.tables.iter().filter(|(_, o)| o.eq_ignore_ascii_case(&w)).count() == 1)
            });
            if let Some((n, t)) = found {
                let q = format!("{n}.{t}");
                if !out.contains(&q) {
                    out.push(q);
                }
            }
        }
        out
    }
}

/// Byte offset where the word under the cursor starts.
pub fn word_start(line: &str, pos: usize) -> usize {
    line[..pos]
        .char_indices()
        .rev()
        .find(|&(_, c)| !(c.is_alphanumeric() || matches!(c, '_' | '.' | '\\' | '-')))
        .map(|(i, c)| i + c.len_utf8())
        .unwrap_or(0)
}

/// `candidate` in the case the user is typing: lower case when the prefix is.
fn in_case_of(prefix: &str, candidate: &str) -> String {
    if !prefix.is_empty() && prefix.chars().all(|c| !c.is_alphabetic() || c.is_lowercase()) {
        candidate.to_lowercase()
    } else {
        candidate.to_owned()
    }
}

fn starts_with_ci(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s.is_char_boundary(prefix.len()) && s[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// Candidates for the word before `pos` and where it starts. `columns` gives the columns of
/// a `namespace.table` named in the line (the shell fetches them lazily).
pub fn complete(line: &str, pos: usize, catalog: &Catalog) -> (usize, Vec<String>) {
    let start = word_start(line, pos);
    let word = &line[start..pos];
    let before = line[..start].trim();
    let mut out: Vec<String> = Vec::new();
    let mut add = |c: String| {
        if !out.contains(&c) {
            out.push(c);
        }
    };
    if before.is_empty() && word.starts_with('\\') {
        META_COMMANDS.iter().filter(|m| starts_with_ci(m, word)).for_each(|m| add((*m).to_owned()));
        return (start, out);
    }
    let command = before.strip_prefix('\\').map(|m| m.split_whitespace().next().unwrap_or_default());
    if let Some(command) = command.filter(|c| !matches!(*c, "subscribe" | "watch")) {
        // Arguments of meta-commands: tables for those that take one, nothing otherwise
        // (`\subscribe` takes SQL and completes as SQL).
        if matches!(command, "d" | "describe" | "flush") && !before.contains(char::is_whitespace) {
            for (n, t) in &catalog.tables {
                let q = format!("{n}.{t}");
                if starts_with_ci(&q, word) {
                    add(q);
                }
            }
        }
        return (start, out);
    }
    if let Some((ns, rest)) = word.split_once('.') {
        // `ns.` + table, or `table.` + column.
        for (n, t) in &catalog.tables {
            if n.eq_ignore_ascii_case(ns) && starts_with_ci(t, rest) {
                add(format!("{n}.{t}"));
            }
        }
        for table in catalog.tables_in(line) {
            let short = table.rsplit('.').next().unwrap_or_default();
            if short.eq_ignore_ascii_case(ns) {
                for c in catalog.columns.get(&table.to_ascii_lowercase()).into_iter().flatten() {
                    if starts_with_ci(c, rest) {
                        add(format!("{ns}.{c}"));
                    }
                }
            }
        }
        return (start, out);
    }
    for k in KEYWORDS.iter().filter(|k| starts_with_ci(k, word)) {
        add(in_case_of(word, k));
    }
    if !word.is_empty() {
        for ns in catalog.namespaces() {
            if starts_with_ci(ns, word) {
                add(ns.to_owned());
            }
        }
        for (n, t) in &catalog.tables {
            if starts_with_ci(t, word) {
                add(t.clone());
            }
            let q = format!("{n}.{t}");
            if starts_with_ci(&q, word) {
                add(q);
            }
        }
        for table in catalog.tables_in(line) {
            for c in catalog.columns.get(&table.to_ascii_lowercase()).into_iter().flatten() {
                if starts_with_ci(c, word) {
                    add(c.clone());
                }
            }
        }
    }
    (start, out)
}

/// The rest of the word when exactly one candidate completes it (shown as a gray hint).
pub fn hint(line: &str, pos: usize, catalog: &Catalog) -> Option<String> {
    if pos != line.len() {
        return None;
    }
    let (start, candidates) = complete(line, pos, catalog);
    let word = &line[start..pos];
    if word.len() < 2 || candidates.len() != 1 {
        return None;
    }
    let c = &candidates[0];
    (c.len() > word.len() && starts_with_ci(c, word)).then(|| c[word.len()..].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        let mut c = Catalog {
            tables: vec![
                ("app".into(), "messages".into()),
                ("app".into(), "todos".into()),
                ("chat".into(), "rooms".into()),
            ],
            ..Default::default()
        };
        c.columns.insert("app.messages".into(), vec!["id".into(), "content".into(), "created_at".into()]);
        c
    }

    #[test]
    fn keywords_follow_the_typed_case() {
        let (start, c) = complete("sel", 3, &catalog());
        assert_eq!((start, c), (0, vec!["select".to_owned()]));
        let (_, c) = complete("SELECT * FR", 11, &catalog());
        assert_eq!(c, vec!["FROM"]);
        let (_, c) = complete("", 0, &catalog());
        assert!(c.len() >= 30 && c.contains(&"SELECT".to_owned()));
    }

    #[test]
    fn namespaces_tables_and_columns_complete() {
        let cat = catalog();
        let (start, c) = complete("SELECT * FROM app.m", 19, &cat);
        assert_eq!((start, c), (14, vec!["app.messages".to_owned()]));
        let (_, c) = complete("SELECT * FROM ch", 16, &cat);
        assert_eq!(c, vec!["chat".to_owned(), "chat.rooms".to_owned()]);
        let (_, c) = complete("SELECT cont FROM app.messages", 11, &cat);
        assert_eq!(c, vec!["content".to_owned()]);
        let (_, c) = complete("SELECT messages.cr FROM app.messages", 18, &cat);
        assert_eq!(c, vec!["messages.created_at".to_owned()]);
        assert_eq!(cat.tables_in("select * from todos join chat.rooms"), vec!["app.todos", "chat.rooms"]);
    }

    #[test]
    fn meta_commands_complete_at_line_start() {
        let (_, c) = complete("\\d", 2, &catalog());
        assert_eq!(c, vec!["\\dt", "\\d", "\\describe", "\\dn"]);
        assert_eq!(hint("\\subsc", 6, &catalog()).as_deref(), Some("ribe"));
        assert_eq!(hint("SELECT * FROM app.to", 20, &catalog()).as_deref(), Some("dos"));
        assert_eq!(hint("SELECT * FROM app.", 18, &catalog()), None);
        // Meta-command arguments: tables where a table is expected, never SQL keywords.
        assert_eq!(complete("\\d app.t", 8, &catalog()).1, vec!["app.todos"]);
        assert!(complete("\\timing o", 9, &catalog()).1.is_empty());
    }
}
