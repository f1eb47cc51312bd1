//! The interactive shell (cli.md §1.3–§1.5): rustyline line editing with persistent history,
//! completion and hints, multi-line statements, and a subscription printing above the prompt.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustyline::completion::Completer;
use rustyline::config::{CompletionType, Config, EditMode};
use rustyline::error::ReadlineError;
use rustyline::highlight::{CmdKind, Highlighter};
use rustyline::hint::Hinter;
use rustyline::history::FileHistory;
use rustyline::validate::Validator;
use rustyline::{Context, Editor, ExternalPrinter, Helper};

use crate::complete;
use crate::session::{Outcome, Session, Shared, fetch_columns};
use crate::split::{Input, LineBuffer};

/// Longest wait for a table's columns while completing (then it completes without them).
const COLUMN_FETCH_TIMEOUT: Duration = Duration::from_secs(1);

const PROMPT: &str = "● kalam> ";
const PROMPT_TXN: &str = "● kalam*> ";
const PROMPT_PLAIN: &str = "kalam> ";
const PROMPT_PLAIN_TXN: &str = "kalam*> ";
const CONTINUATION: &str = "    -> ";

struct ShellHelper {
    shared: Arc<Mutex<Shared>>,
    rt: tokio::runtime::Handle,
    online: Arc<AtomicBool>,
    color: bool,
}

impl ShellHelper {
    fn catalog(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fetches the columns of the tables `line` names that are not cached yet.
    fn load_columns(&self, line: &str) {
        let (client, missing) = {
            let shared = self.catalog();
            let missing: Vec<String> = shared
                .catalog
                .tables_in(line)
                .into_iter()
                .filter(|t| !shared.catalog.columns.contains_key(&t.to_ascii_lowercase()))
                .collect();
            (shared.client.clone(), missing)
        };
        for table in missing {
            let columns = self
                .rt
                .block_on(async { tokio::time::timeout(COLUMN_FETCH_TIMEOUT, fetch_columns(&client, &table)).await })
                .map_err(|_| "timed out".to_owned())
                .and_then(|r| r.map_err(|e| e.to_string()));
            tracing::debug!(table, ?columns, "columns for completion");
            let columns = columns.unwrap_or_default();
            self.catalog().catalog.columns.insert(table.to_ascii_lowercase(), columns);
        }
    }
}

impl Completer for ShellHelper {
    type Candidate = String;

    fn complete(&self, line: &str, pos: usize, _ctx: &Context<'_>) -> rustyline::Result<(usize, Vec<String>)> {
        self.load_columns(line);
        Ok(complete::complete(line, pos, &self.catalog().catalog))
    }
}

impl Hinter for ShellHelper {
    type Hint = String;

    fn hint(&self, line: &str, pos: usize, _ctx: &Context<'_>) -> Option<String> {
        // The same candidates as TAB, so a hint never offers what TAB would not.
        self.load_columns(line);
        complete::hint(line, pos, &self.catalog().catalog)
    }
}

impl Highlighter for ShellHelper {
    fn highlight_prompt<'b, 's: 'b, 'p: 'b>(&'s self, prompt: &'p str, _default: bool) -> Cow<'b, str> {
        match prompt.strip_prefix('●') {
            Some(rest) if self.color => {
                let dot = if self.online.load(Ordering::SeqCst) {
                    console::style("●").green()
                } else {
                    console::style("●").red()
                };
                Cow::Owned(format!("{}{rest}", dot.force_styling(true)))
            }
            _ => Cow::Borrowed(prompt),
        }
    }

    fn highlight_hint<'h>(&self, hint: &'h str) -> Cow<'h, str> {
        if self.color {
            Cow::Owned(console::style(hint).dim().force_styling(true).to_string())
        } else {
            Cow::Borrowed(hint)
        }
    }

    fn highlight_char(&self, _line: &str, _pos: usize, _kind: CmdKind) -> bool {
        false
    }
}

impl Validator for ShellHelper {}

impl Helper for ShellHelper {}

/// `~/.kalam/history`, created private when missing.
fn history_path() -> PathBuf {
    let path = crate::config::kalam_dir().join("history");
    if !path.exists() {
        let _ = crate::config::create_private_file(&path, "");
    }
    path
}

fn banner(session: &Session) {
    let client = session.client();
    let version =
        session.rt.block_on(client.health_check()).ok().and_then(|h| h.version).unwrap_or_else(|| "unknown".into());
    outln!("KalamDB CLI {} — connected to {}", env!("CARGO_PKG_VERSION"), client.base_url());
    if let Some(u) = client.user_id() {
        outln!("Acting user: {u}");
    }
    outln!("Server version: {version}");
    outln!("Type \\help for help, \\quit to exit");
}

/// Runs the shell until `\quit` or end of input; returns the exit code.
pub fn run(session: &mut Session) -> i32 {
    let config = Config::builder()
        .max_history_size(session.settings.history_size.max(1))
        .map(|b| b.auto_add_history(false).completion_type(CompletionType::List).edit_mode(EditMode::Emacs).build());
    let mut editor: Editor<ShellHelper, FileHistory> = match config.and_then(Editor::with_config) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("ERROR: cannot start the line editor: {e}");
            return 1;
        }
    };
    editor.set_helper(Some(ShellHelper {
        shared: session.shared.clone(),
        rt: session.rt.handle().clone(),
        online: session.online.clone(),
        color: session.style.color,
    }));
    let history = history_path();
    let _ = editor.load_history(&history);
    // Subscription events print above the prompt through one shared printer.
    if let Ok(printer) = editor.create_external_printer() {
        let printer = Arc::new(Mutex::new(printer));
        session.printer = Some(Box::new(move || {
            let printer = printer.clone();
            Some(Box::new(move |line: String| {
                let mut p = printer.lock().unwrap_or_else(|e| e.into_inner());
                // Outside the prompt (while a statement runs) rustyline writes the text as
                // it is, so each line brings its own newline.
                let _ = p.print(format!("{line}\n"));
            }) as crate::live::Printer)
        }));
    }
    // Ctrl+C while a request runs must reach the session, not end the process.
    let _sigint =
        session.rt.block_on(async { tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()) });

    banner(session);
    session.refresh_catalog(false);
    let mut buffer = LineBuffer::new(true);
    loop {
        let prompt = match (buffer.is_pending(), session.style.color, session.in_transaction()) {
            (true, _, _) => CONTINUATION,
            (false, true, false) => PROMPT,
            (false, true, true) => PROMPT_TXN,
            (false, false, false) => PROMPT_PLAIN,
            (false, false, true) => PROMPT_PLAIN_TXN,
        };
        match editor.readline(prompt) {
            Ok(line) => {
                let Some(input) = buffer.push_line(&line) else { continue };
                let entry = match &input {
                    Input::Meta(m) => m.clone(),
                    Input::Sql(s) => s.clone(),
                };
                if editor.add_history_entry(entry).is_ok() {
                    let _ = editor.append_history(&history);
                }
                if session.run(input) == Outcome::Quit {
                    break;
                }
            }
            Err(ReadlineError::Interrupted) => {
                if buffer.is_pending() || !session.has_subscription() {
                    buffer.clear();
                    outln!("Command cancelled");
                } else {
                    session.unsubscribe();
                }
            }
            Err(ReadlineError::Eof) => {
                outln!("Goodbye!");
                break;
            }
            Err(e) => {
                eprintln!("ERROR: {e}");
                break;
            }
        }
    }
    session.finish();
    session.close();
    0
}
