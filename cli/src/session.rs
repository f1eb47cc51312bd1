//! One CLI session: runs SQL and meta-commands against a server and prints the outcome. The
//! interactive shell, `-c`, `-f` and standard input all go through it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kalam_link::{KalamLinkClient, KalamLinkError, QueryResponse, QueryResult, SubscriptionConfig};

use crate::complete::Catalog;
use crate::format::{self, Format, Style};
use crate::live::{self, Live, Printer};
use crate::settings::Settings;
use crate::split::Input;

/// Requests slower than this show a spinner (cli.md §1.4).
const SPINNER_AFTER: Duration = Duration::from_millis(200);

/// What running one input leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Failed,
    Quit,
}

impl Outcome {
    fn from_ok(ok: bool) -> Outcome {
        if ok { Outcome::Ok } else { Outcome::Failed }
    }
}

/// State the shell's line editor shares with the session (completion needs the client).
pub struct Shared {
    pub client: KalamLinkClient,
    pub catalog: Catalog,
}

pub struct Session {
    pub rt: Arc<tokio::runtime::Runtime>,
    pub settings: Settings,
    pub shared: Arc<Mutex<Shared>>,
    pub style: Style,
    pub interactive: bool,
    /// Print `Took: …` after each response.
    pub timing: bool,
    /// The last request reached the server (the prompt's green or red dot).
    pub online: Arc<AtomicBool>,
    /// Statements after `BEGIN`, sent together at `COMMIT` / `ROLLBACK`.
    transaction: Option<Vec<String>>,
    /// The interactive shell's subscription, printing behind the prompt.
    background: Option<Live>,
    /// Makes a printer that writes above the prompt (interactive shell only).
    pub printer: Option<Box<dyn FnMut() -> Option<Printer>>>,
}

pub const HELP: &str = r"SQL statements end with ';' (or an empty line in the shell). For example:
  SELECT … FROM ns.table [WHERE …]      INSERT INTO ns.table (…) VALUES (…)
  UPDATE ns.table SET … WHERE …         DELETE FROM ns.table WHERE …
  CREATE NAMESPACE | [USER|SHARED|STREAM] TABLE | USER | STORAGE …
  ALTER …  DROP …  SHOW NAMESPACES | TABLES | STORAGES  DESCRIBE TABLE ns.table
  SUBSCRIBE TO ns.table [WHERE …] [OPTIONS (last_rows = N)]
  FLUSH TABLE ns.table  KILL LIVE QUERY '<live_id>'  BEGIN … COMMIT | ROLLBACK

Meta-commands:
  \quit, \q                  exit
  \help, \?                  this help
  \connect <url> [user]      connect to another server or as another user (\c)
  \config                    the effective configuration (secrets masked)
  \dt, \tables               SHOW TABLES
  \d <table>, \describe      DESCRIBE TABLE <table>
  \dn                        SHOW NAMESPACES
  \format table|json|csv     output format
  \timing [on|off]           show the time each request took
  \flush [<ns>.<table>]      FLUSH TABLE <table>, or FLUSH ALL TABLES
  \health                    server health, version and uptime
  \subscribe <SELECT …>      start a live subscription (\watch)
  \unsubscribe               stop it (\unwatch); Ctrl+C at the prompt does too
  \pause, \continue          hold / print the subscription's events
  \live                      SELECT * FROM system.live_queries
  \kill <live_id>            KILL LIVE QUERY '<live_id>'
  \refresh-tables            re-read table names for completion (\refresh)";

/// The first word of a statement from the splitter (its comments are already blanked).
fn first_word(sql: &str) -> String {
    sql.trim_start()
        .split(|c: char| c.is_whitespace() || c == ';' || c == '(')
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase()
}

/// SQL quoting for a string literal.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl Session {
    pub fn new(
        rt: Arc<tokio::runtime::Runtime>,
        settings: Settings,
        client: KalamLinkClient,
        interactive: bool,
    ) -> Self {
        let style = Style {
            format: settings.format,
            color: settings.color,
            width: if interactive { terminal_width() } else { None },
        };
        Session {
            rt,
            timing: settings.format == Format::Table,
            settings,
            shared: Arc::new(Mutex::new(Shared { client, catalog: Catalog::default() })),
            style,
            interactive,
            online: Arc::new(AtomicBool::new(true)),
            transaction: None,
            background: None,
            printer: None,
        }
    }

    pub fn client(&self) -> KalamLinkClient {
        self.shared.lock().unwrap_or_else(|p| p.into_inner()).client.clone()
    }

    pub fn in_transaction(&self) -> bool {
        self.transaction.is_some()
    }

    /// True while a subscription prints behind the prompt.
    pub fn has_subscription(&mut self) -> bool {
        if self.background.as_ref().is_some_and(Live::is_finished) {
            self.background = None;
        }
        self.background.is_some()
    }

    fn error(&self, text: &str) {
        let text = if self.style.color { console::style(text).red().to_string() } else { text.to_owned() };
        eprintln!("{text}");
    }

    pub fn run(&mut self, input: Input) -> Outcome {
        if self.interactive {
            self.style.width = terminal_width();
        }
        match input {
            Input::Meta(line) => self.meta(&line),
            Input::Sql(text) => {
                let statements = match kalam_types::split::split_statements(&text) {
                    Ok(s) => s,
                    Err(e) => {
                        self.error(&format::error_lines(&e.code.as_str(), &e.message, None, false));
                        return Outcome::Failed;
                    }
                };
                for statement in statements {
                    if self.statement(statement) == Outcome::Failed {
                        return Outcome::Failed;
                    }
                }
                Outcome::Ok
            }
        }
    }

    /// Ends the input: a transaction left open is sent as it is (the server reports the
    /// missing COMMIT).
    pub fn finish(&mut self) -> Outcome {
        match self.transaction.take() {
            Some(statements) => Outcome::from_ok(self.request(&statements.join(";\n"))),
            None => Outcome::Ok,
        }
    }

    /// One statement: sent now, or held while a transaction is open.
    fn statement(&mut self, statement: String) -> Outcome {
        let word = first_word(&statement);
        if let Some(held) = &mut self.transaction {
            held.push(statement);
            if matches!(word.as_str(), "COMMIT" | "ROLLBACK" | "END") {
                let statements = self.transaction.take().unwrap_or_default();
                return Outcome::from_ok(self.request(&statements.join(";\n")));
            }
            return Outcome::Ok;
        }
        if word == "BEGIN" || (word == "START" && statement.to_ascii_uppercase().contains("TRANSACTION")) {
            if self.interactive {
                outln!("Transaction started: statements are sent together at COMMIT or ROLLBACK.");
            }
            self.transaction = Some(vec![statement]);
            return Outcome::Ok;
        }
        let ok = self.request(&statement);
        if ok && matches!(word.as_str(), "CREATE" | "DROP" | "ALTER") {
            self.refresh_catalog(false);
        }
        Outcome::from_ok(ok)
    }

    /// Waits for `fut`, with a spinner after a moment and Ctrl+C abandoning it (interactive).
    fn wait<T>(&self, fut: impl std::future::Future<Output = T>) -> Option<T> {
        if !self.interactive {
            return Some(self.rt.block_on(fut));
        }
        self.rt.block_on(async {
            tokio::pin!(fut);
            let started = Instant::now();
            let mut spinner: Option<indicatif::ProgressBar> = None;
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let ctrl_c = tokio::signal::ctrl_c();
            tokio::pin!(ctrl_c);
            let out = loop {
                tokio::select! {
                    v = &mut fut => break Some(v),
                    _ = &mut ctrl_c => break None,
                    _ = tick.tick() => {
                        if started.elapsed() >= SPINNER_AFTER {
                            let bar = spinner.get_or_insert_with(|| {
                                let bar = indicatif::ProgressBar::new_spinner();
                                bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                                bar
                            });
                            bar.set_message(format!("{:.1}s", started.elapsed().as_secs_f64()));
                            bar.tick();
                        }
                    }
                }
            };
            if let Some(bar) = spinner {
                bar.finish_and_clear();
            }
            out
        })
    }

    /// Sends `sql` as one request and prints the outcome; true when every statement succeeded.
    pub fn request(&mut self, sql: &str) -> bool {
        let client = self.client();
        tracing::debug!(sql_bytes = sql.len(), "request");
        let Some(answer) = self.wait(client.query_raw(sql)) else {
            self.error("Query cancelled (the server may still finish it)");
            return false;
        };
        let resp = match answer {
            Ok((_, resp)) => resp,
            Err(e) => {
                self.online.store(false, Ordering::SeqCst);
                self.error(&format!("ERROR: {e}"));
                return false;
            }
        };
        self.online.store(true, Ordering::SeqCst);
        tracing::debug!(status = %resp.status, took_ms = resp.took_ms, "response");
        let subscription = resp.results.iter().find_map(QueryResult::subscription_required);
        self.print_response(&resp);
        if let Some(e) = &resp.error {
            self.error(&format::error_lines(&e.code, &e.message, e.details.as_deref(), false));
            return false;
        }
        match subscription {
            Some(config) => self.subscribe(config),
            None => true,
        }
    }

    fn print_response(&self, resp: &QueryResponse) {
        // A SUBSCRIBE TO result becomes a subscription rather than a row.
        let results: Vec<QueryResult> =
            resp.results.iter().filter(|r| r.subscription_required().is_none()).cloned().collect();
        if results.is_empty() {
            return;
        }
        let shown = QueryResponse { results, ..resp.clone() };
        let text = format::response(&shown, self.style, self.timing);
        if self.timing && self.style.format != Format::Table {
            eprintln!("Took: {:.3} ms", resp.took_ms as f64);
        }
        self.page(&text);
    }

    /// Prints `text`, a page at a time in the interactive shell.
    fn page(&self, text: &str) {
        let page = self.settings.page_size.max(1);
        let lines: Vec<&str> = text.lines().collect();
        if !self.interactive || lines.len() <= page + 4 {
            outln!("{text}");
            return;
        }
        for (i, chunk) in lines.chunks(page).enumerate() {
            if i > 0 {
                out!("Press Enter for more... (q to stop) ");
                let mut answer = String::new();
                if std::io::stdin().read_line(&mut answer).is_err() || answer.trim().eq_ignore_ascii_case("q") {
                    return;
                }
            }
            outln!("{}", chunk.join("\n"));
        }
    }

    /// Opens a subscription: behind the prompt in the shell, in the foreground otherwise.
    pub fn subscribe(&mut self, mut config: SubscriptionConfig) -> bool {
        if config.options.is_none() && self.settings.last_rows > 0 {
            config = config.with_last_rows(self.settings.last_rows);
        }
        if self.has_subscription() {
            self.error("A subscription is already active: \\unsubscribe first");
            return false;
        }
        let table = live::table_of(&config.sql).unwrap_or_else(|| "the query".into());
        let client = self.client();
        let sub = match self.wait(client.subscribe_with_config(config)) {
            Some(Ok(sub)) => sub,
            Some(Err(e)) => {
                self.error(&start_error(&e));
                return false;
            }
            None => return false,
        };
        let printer = if self.interactive { self.printer.as_mut().and_then(|make| make()) } else { None };
        let _guard = self.rt.enter();
        match printer {
            Some(print) => {
                self.background = Some(Live::start(sub, table, print));
                true
            }
            None => {
                let stdout: Printer = Box::new(|line| outln!("{line}"));
                let sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).ok();
                !self.rt.block_on(Live::start(sub, table, stdout).run_until_interrupted(sigint))
            }
        }
    }

    /// Stops the shell's subscription; false when there was none.
    pub fn unsubscribe(&mut self) -> bool {
        if !self.has_subscription() {
            return false;
        }
        if let Some(bg) = self.background.take() {
            self.rt.block_on(bg.stop());
        }
        true
    }

    /// Re-reads table names for completion (and forgets cached columns).
    pub fn refresh_catalog(&self, verbose: bool) {
        let client = self.client();
        let fetched = self.rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), fetch_tables(&client)).await.unwrap_or_else(|_| {
                Err(KalamLinkError::TimeoutError("reading system.tables took longer than 5 s".into()))
            })
        });
        match fetched {
            Ok(tables) => {
                let n = tables.len();
                let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
                shared.catalog = Catalog { tables, ..Default::default() };
                if verbose {
                    outln!("{n} tables loaded for completion");
                }
            }
            Err(e) => eprintln!("Warning: cannot load table names for completion: {e}"),
        }
    }

    fn meta(&mut self, line: &str) -> Outcome {
        let (cmd, arg) = match line.split_once(char::is_whitespace) {
            Some((c, a)) => (c, a.trim()),
            None => (line, ""),
        };
        let ok = match cmd {
            "\\q" | "\\quit" => return Outcome::Quit,
            "\\help" | "\\?" | "\\h" => {
                outln!("{HELP}");
                true
            }
            "\\dt" | "\\tables" => self.request("SHOW TABLES"),
            "\\dn" => self.request("SHOW NAMESPACES"),
            "\\d" | "\\describe" if arg.is_empty() => self.request("SHOW TABLES"),
            "\\d" | "\\describe" => match table_name(arg) {
                Some(t) => self.request(&format!("DESCRIBE TABLE {t}")),
                None => self.usage("\\d <namespace>.<table>"),
            },
            "\\live" => self.request("SELECT * FROM system.live_queries"),
            "\\kill" if arg.is_empty() => self.usage("\\kill <live_id>"),
            "\\kill" => self.request(&format!("KILL LIVE QUERY {}", quote(arg.trim_matches('\'')))),
            "\\flush" if arg.is_empty() => self.request("FLUSH ALL TABLES"),
            "\\flush" => match table_name(arg) {
                Some(t) => self.request(&format!("FLUSH TABLE {t}")),
                None => self.usage("\\flush [<namespace>.<table>]"),
            },
            "\\format" => match Format::parse(arg) {
                Some(f) => {
                    self.style.format = f;
                    outln!("Output format is {}", f.as_str());
                    true
                }
                None => self.usage("\\format table|json|csv"),
            },
            "\\timing" => {
                self.timing = match arg {
                    "on" => true,
                    "off" => false,
                    "" => !self.timing,
                    _ => return Outcome::from_ok(self.usage("\\timing [on|off]")),
                };
                outln!("Timing is {}", if self.timing { "on" } else { "off" });
                true
            }
            "\\config" => {
                let mut s = self.settings.clone();
                s.format = self.style.format;
                outln!("{}", s.describe());
                true
            }
            "\\health" => self.health(),
            "\\connect" | "\\c" => self.connect(arg),
            "\\subscribe" | "\\watch" if arg.is_empty() => {
                self.usage("\\subscribe SELECT … FROM <ns>.<table> [WHERE …]")
            }
            "\\subscribe" | "\\watch" => self.subscribe(SubscriptionConfig::new(arg.trim_end_matches(';'))),
            "\\unsubscribe" | "\\unwatch" => {
                if !self.unsubscribe() {
                    outln!("No active subscription");
                }
                true
            }
            "\\pause" => match &self.background {
                Some(bg) => {
                    let held = self.rt.block_on(bg.pause());
                    outln!(
                        "Paused: {held} event(s) held (up to {}; then the subscription waits) until \\continue",
                        live::MAX_PAUSED_EVENTS
                    );
                    true
                }
                None => {
                    outln!("No active subscription");
                    true
                }
            },
            "\\continue" => match &self.background {
                Some(bg) => {
                    let n = self.rt.block_on(bg.resume(|line| outln!("{line}")));
                    outln!("Printed {n} held event(s); printing resumed");
                    true
                }
                None => {
                    outln!("No active subscription");
                    true
                }
            },
            "\\refresh-tables" | "\\refresh" => {
                self.refresh_catalog(true);
                true
            }
            _ => {
                self.error(&format!("Unknown command: {cmd}. Type \\help for help."));
                false
            }
        };
        Outcome::from_ok(ok)
    }

    fn usage(&self, text: &str) -> bool {
        self.error(&format!("Usage: {text}"));
        false
    }

    fn health(&self) -> bool {
        let client = self.client();
        match self.wait(client.health_check()) {
            Some(Ok(h)) => {
                self.online.store(h.is_healthy(), Ordering::SeqCst);
                outln!("Status:  {}", h.status);
                outln!("Server:  {}", client.base_url());
                outln!("Version: {}", h.version.as_deref().unwrap_or("unknown"));
                if let Some(up) = h.uptime_seconds {
                    outln!("Uptime:  {}", uptime(up));
                }
                if let Some(e) = &h.error {
                    outln!("Error:   {e}");
                }
                h.is_healthy()
            }
            Some(Err(e)) => {
                self.online.store(false, Ordering::SeqCst);
                self.error(&format!("Cannot connect to KalamDB server at {}: {e}", client.base_url()));
                false
            }
            None => false,
        }
    }

    fn connect(&mut self, arg: &str) -> bool {
        let mut parts = arg.split_whitespace();
        let Some(host) = parts.next() else {
            return self.usage("\\connect <url> [user]");
        };
        let url = crate::settings::server_url(host, None);
        let user = parts.next().map(str::to_owned);
        let client = match self.settings.client_for(&url, user.as_deref()) {
            Ok(c) => c,
            Err(e) => {
                self.error(&format!("ERROR: {e}"));
                return false;
            }
        };
        match self.wait(client.health_check()) {
            Some(Ok(h)) if h.is_healthy() => {}
            Some(Ok(h)) => {
                self.error(&format!("Cannot connect to KalamDB server at {url}: server is {}", h.status));
                return false;
            }
            Some(Err(e)) => {
                self.error(&format!("Cannot connect to KalamDB server at {url}: {e}"));
                return false;
            }
            None => return false,
        }
        self.unsubscribe();
        self.shared.lock().unwrap_or_else(|p| p.into_inner()).client = client;
        self.settings.url = url.clone();
        self.settings.user = user.clone();
        self.online.store(true, Ordering::SeqCst);
        match user {
            Some(u) => outln!("Connected to {url} as {u}"),
            None => outln!("Connected to {url}"),
        }
        self.refresh_catalog(false);
        true
    }

    /// Ends the session's subscription before exit.
    pub fn close(&mut self) {
        self.unsubscribe();
    }
}

/// `arg` when it is a table name (`ns.table` or `table`, letters, digits and `_`), so a
/// meta-command argument never carries more SQL.
fn table_name(arg: &str) -> Option<&str> {
    let ok = !arg.is_empty()
        && arg.split('.').count() <= 3
        && arg.split('.').all(|p| !p.is_empty() && p.chars().all(|c| c.is_alphanumeric() || c == '_'));
    ok.then_some(arg)
}

/// `ERROR <code>: <message>` for a subscription that could not start.
fn start_error(e: &KalamLinkError) -> String {
    match e.code() {
        Some(_) => format!("ERROR {e}"),
        None => format!("ERROR: {e}"),
    }
}

pub fn uptime(seconds: u64) -> String {
    let (d, h, m, s) = (seconds / 86_400, seconds / 3600 % 24, seconds / 60 % 60, seconds % 60);
    if d > 0 { format!("{d}d {h}h {m}m {s}s") } else { format!("{h}h {m}m {s}s") }
}

/// The terminal's width, when stdout is one.
pub fn terminal_width() -> Option<usize> {
    let term = console::Term::stdout();
    term.is_term().then(|| term.size().1 as usize).filter(|w| *w > 0)
}

/// `(namespace, table)` of every table the principal may see.
pub async fn fetch_tables(client: &KalamLinkClient) -> Result<Vec<(String, String)>, KalamLinkError> {
    let resp =
        client.query("SELECT namespace_id, table_name FROM system.tables ORDER BY namespace_id, table_name").await?;
    let rows = resp.results.first().and_then(|r| r.rows.clone()).unwrap_or_default();
    Ok(rows
        .iter()
        .filter_map(|r| Some((r.get("namespace_id")?.as_str()?.to_owned(), r.get("table_name")?.as_str()?.to_owned())))
        .collect())
}

/// Column names of `ns.table` in order.
pub async fn fetch_columns(client: &KalamLinkClient, qualified: &str) -> Result<Vec<String>, KalamLinkError> {
    let Some((ns, table)) = qualified.split_once('.') else { return Ok(Vec::new()) };
    let sql = format!(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = {} AND table_name = {} ORDER BY ordinal_position",
        quote(ns),
        quote(table)
    );
    let resp = client.query(&sql).await?;
    let rows = resp.results.first().and_then(|r| r.rows.clone()).unwrap_or_default();
    Ok(rows.iter().filter_map(|r| r.get("column_name")?.as_str().map(str::to_owned)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_told_by_their_first_word() {
        assert_eq!(first_word("   begin;"), "BEGIN");
        assert_eq!(table_name("app.notes"), Some("app.notes"));
        assert_eq!(table_name("app.notes; DROP TABLE x"), None);
        assert_eq!(table_name(""), None);
        assert_eq!(first_word("CREATE TABLE x(a INT)"), "CREATE");
        assert_eq!(quote("it's"), "'it''s'");
        assert_eq!(uptime(93_784), "1d 2h 3m 4s");
    }
}
