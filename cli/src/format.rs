//! Result output (cli.md §1.6): psql-like tables, JSON and CSV, and error lines.

use comfy_table::{ContentArrangement, Table};
use kalam_link::{QueryResponse, QueryResult};
use serde_json::Value as Json;
use unicode_width::UnicodeWidthChar;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Csv,
}

impl Format {
    pub fn parse(s: &str) -> Option<Format> {
        match s.trim().to_ascii_lowercase().as_str() {
            "table" => Some(Format::Table),
            "json" => Some(Format::Json),
            "csv" => Some(Format::Csv),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Table => "table",
            Format::Json => "json",
            Format::Csv => "csv",
        }
    }
}

/// Box drawing as psql-like tables have it: solid lines, a rule under the header only.
const BOX: &str = "││──├─┼┤│    ┬┴┌┐└┘";

/// How output is drawn.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    pub format: Format,
    pub color: bool,
    /// Terminal width in columns (tables are truncated to it); `None` = unlimited.
    pub width: Option<usize>,
}

/// The text of a value in a table cell: NULL, strings as they are, others as JSON.
pub fn cell_text(v: &Json) -> String {
    match v {
        Json::Null => "NULL".to_owned(),
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `s` cut to `max` display columns, ending in `…` when cut. Control characters (newlines,
/// tabs) are shown as spaces so every row stays one line.
pub fn truncate(s: &str, max: usize) -> String {
    let mut out = String::new();
    let mut width = 0;
    let total: usize = s.chars().map(|c| c.width().unwrap_or(1)).sum();
    for c in s.chars() {
        let c = if c.is_control() { ' ' } else { c };
        let w = c.width().unwrap_or(0);
        if total > max && width + w + 1 > max {
            out.push('…');
            return out;
        }
        width += w;
        out.push(c);
    }
    out
}

/// The widest a column may be so that all fit in `available` columns (the widest columns are
/// capped first); `None` when all fit as they are.
fn column_cap(widths: &[usize], available: usize) -> Option<usize> {
    if widths.iter().sum::<usize>() <= available {
        return None;
    }
    let mut cap = widths.iter().copied().max().unwrap_or(0);
    while cap > 1 && widths.iter().map(|w| (*w).min(cap)).sum::<usize>() > available {
        cap -= 1;
    }
    Some(cap.max(1))
}

fn display_width(s: &str) -> usize {
    s.chars().map(|c| if c.is_control() { 1 } else { c.width().unwrap_or(0) }).sum()
}

/// One result as a table with its `(N rows)` footer.
pub fn table(result: &QueryResult, style: Style) -> String {
    let rows = result.rows.as_deref().unwrap_or_default();
    let cells: Vec<Vec<String>> =
        (0..rows.len()).filter_map(|i| result.ordered_row(i)).map(|r| r.into_iter().map(cell_text).collect()).collect();
    let mut widths: Vec<usize> = result.columns.iter().map(|c| display_width(c)).collect();
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(display_width(cell));
        }
    }
    // Each column costs its text plus two spaces of padding and one border.
    let cap = style.width.and_then(|w| column_cap(&widths, w.saturating_sub(3 * widths.len() + 1)));
    let fit = |s: &str| match cap {
        Some(c) => truncate(s, c),
        None => truncate(s, usize::MAX),
    };
    let mut t = Table::new();
    t.load_preset(BOX).set_content_arrangement(ContentArrangement::Disabled);
    t.set_header(result.columns.iter().map(|c| {
        let text = fit(c);
        if style.color { console::style(text).bold().to_string() } else { text }
    }));
    for row in &cells {
        t.add_row(row.iter().map(|c| fit(c)));
    }
    let n = result.row_count;
    format!("{t}\n({n} row{})", if n == 1 { "" } else { "s" })
}

/// JSON text of a row with its keys in column order.
fn json_row(result: &QueryResult, index: usize, indent: &str) -> String {
    let values = result.ordered_row(index).unwrap_or_default();
    if values.is_empty() {
        return format!("{indent}{{}}");
    }
    let fields: Vec<String> = result
        .columns
        .iter()
        .zip(values)
        .map(|(c, v)| format!("{indent}  {}: {}", Json::String(c.clone()), v))
        .collect();
    format!("{indent}{{\n{}\n{indent}}}", fields.join(",\n"))
}

/// One result as JSON: its rows (pretty, column order), or `{"message", "row_count"}`.
pub fn json(result: &QueryResult) -> String {
    match &result.rows {
        Some(rows) if rows.is_empty() => "[]".to_owned(),
        Some(rows) => {
            let items: Vec<String> = (0..rows.len()).map(|i| json_row(result, i, "  ")).collect();
            format!("[\n{}\n]", items.join(",\n"))
        }
        None => {
            let message = result.message.clone().map(Json::String).unwrap_or(Json::Null);
            format!("{{\"message\": {message}, \"row_count\": {}}}", result.row_count)
        }
    }
}

/// A CSV field (RFC 4180): quoted when it holds `,`, `"` or a line break, quotes doubled.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_owned() }
}

/// One result as CSV: a header line, then a line per row (NULL is an empty field). A result
/// without rows prints its message.
pub fn csv(result: &QueryResult) -> String {
    let Some(rows) = &result.rows else {
        return result.message.clone().unwrap_or_default();
    };
    let mut lines = vec![result.columns.iter().map(|c| csv_field(c)).collect::<Vec<_>>().join(",")];
    for i in 0..rows.len() {
        let values = result.ordered_row(i).unwrap_or_default();
        let fields: Vec<String> = values
            .into_iter()
            .map(|v| match v {
                Json::Null => String::new(),
                Json::String(s) => csv_field(s),
                other => csv_field(&other.to_string()),
            })
            .collect();
        lines.push(fields.join(","));
    }
    lines.join("\n")
}

/// Every result of a response in `style`, then (tables only, with `timing`) `Took: X.XXX ms`.
pub fn response(resp: &QueryResponse, style: Style, timing: bool) -> String {
    let mut parts = Vec::new();
    for r in &resp.results {
        let text = match style.format {
            Format::Table if r.rows.is_some() => table(r, style),
            Format::Table => r.message.clone().unwrap_or_else(|| format!("OK ({} rows)", r.row_count)),
            Format::Json => json(r),
            Format::Csv => csv(r),
        };
        if !text.is_empty() {
            parts.push(text);
        }
    }
    if timing && style.format == Format::Table {
        parts.push(format!("Took: {:.3} ms", resp.took_ms as f64));
    }
    parts.join("\n")
}

/// `ERROR <code>: <message>` (red with color) and `Details: …` when present.
pub fn error_lines(code: &str, message: &str, details: Option<&str>, color: bool) -> String {
    let head = format!("ERROR {code}: {message}");
    let head = if color { console::style(head).red().to_string() } else { head };
    match details {
        Some(d) if !d.is_empty() => format!("{head}\nDetails: {d}"),
        _ => head,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(text: &str) -> QueryResult {
        serde_json::from_str(text).unwrap()
    }

    const ROWS: &str = r#"{"columns":["id","user_id","content"],"row_count":2,
        "rows":[{"id":1,"user_id":"jamal","content":"Hello, world!"},{"id":2,"user_id":null,"content":"a,\"b\"\nc"}]}"#;

    fn plain() -> Style {
        Style { format: Format::Table, color: false, width: None }
    }

    #[test]
    fn tables_are_boxed_in_column_order_with_a_footer() {
        let t = table(&result(ROWS), plain());
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "┌────┬─────────┬───────────────┐");
        assert_eq!(lines[1], "│ id │ user_id │ content       │");
        assert_eq!(lines[2], "├────┼─────────┼───────────────┤");
        assert!(lines[3].starts_with("│ 1  │ jamal   │ Hello, world!"), "{t}");
        assert!(lines[4].contains("NULL") && lines[4].contains("a,\"b\" c"), "{t}");
        assert_eq!(lines.last(), Some(&"(2 rows)"));
    }

    #[test]
    fn wide_values_are_cut_to_the_terminal_width() {
        let wide = r#"{"columns":["k","v"],"row_count":1,"rows":[{"k":"x","v":"数据库数据库数据库数据库数据库数据库数据库"}]}"#;
        let t = table(&result(wide), Style { width: Some(30), ..plain() });
        for line in t.lines() {
            assert!(display_width(line) <= 30, "{line:?} is {} wide", display_width(line));
        }
        assert!(t.contains('…'), "{t}");
    }

    #[test]
    fn truncation_keeps_short_text_and_marks_cuts() {
        assert_eq!(truncate("hello", 10), "hello");
        assert_eq!(truncate("hello world", 6), "hello…");
        assert_eq!(truncate("数据库", 4), "数…");
        assert_eq!(truncate("a\tb", 10), "a b");
    }

    #[test]
    fn json_keeps_column_order_and_messages() {
        let j = json(&result(ROWS));
        assert!(j.find("\"id\"").unwrap() < j.find("\"user_id\"").unwrap());
        let parsed: Json = serde_json::from_str(&j).unwrap();
        assert_eq!(parsed[1]["user_id"], Json::Null);
        assert_eq!(json(&result(r#"{"columns":["a"],"rows":[],"row_count":0}"#)), "[]");
        let m = json(&result(r#"{"columns":[],"row_count":2,"message":"Inserted 2 row(s)"}"#));
        assert_eq!(
            serde_json::from_str::<Json>(&m).unwrap(),
            serde_json::json!({"message":"Inserted 2 row(s)","row_count":2})
        );
    }

    #[test]
    fn csv_quotes_per_rfc_4180() {
        assert_eq!(csv(&result(ROWS)), "id,user_id,content\n1,jamal,\"Hello, world!\"\n2,,\"a,\"\"b\"\"\nc\"");
    }

    #[test]
    fn responses_end_with_the_time_taken_and_errors_carry_details() {
        let resp: QueryResponse = serde_json::from_str(
            r#"{"status":"success","took_ms":12,"results":[{"columns":[],"row_count":1,"message":"Inserted 1 row(s)"}]}"#,
        )
        .unwrap();
        assert_eq!(response(&resp, plain(), true), "Inserted 1 row(s)\nTook: 12.000 ms");
        assert_eq!(response(&resp, plain(), false), "Inserted 1 row(s)");
        assert_eq!(error_lines("X", "bad", Some("SELECT"), false), "ERROR X: bad\nDetails: SELECT");
    }
}
