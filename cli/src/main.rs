//! kalam: the KalamDB command-line client (cli.md §1).
//!
//! In: flags, `~/.kalam/config.toml`, SQL from `-c`, `-f`, standard input or the interactive
//! shell. Out: results as tables, JSON or CSV, and live changes. All connectivity is kalam-link;
//! this crate holds the terminal UI, command parsing and formatting. `kalam admin …` is the
//! exception: it talks to the daemons' internal RPC sockets on the server's machine.

#[macro_use]
mod out;

mod admin;
mod complete;
mod config;
mod format;
mod live;
mod repl;
mod session;
mod settings;
mod split;

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use kalam_link::SubscriptionConfig;

use crate::format::{Format, Style};
use crate::session::{Outcome, Session};
use crate::settings::{Flags, Settings};
use crate::split::LineBuffer;

// No `Debug`: it holds credentials.
#[derive(Parser)]
#[command(name = "kalam", version, about = "KalamDB SQL client", disable_help_flag = true)]
struct Args {
    /// Server URL (`http://host:port`), or a bare host name combined with --port.
    #[arg(short = 'h', long, visible_alias = "url")]
    host: Option<String>,
    /// Port used when --host has none (default 8080).
    #[arg(short, long)]
    port: Option<u16>,
    /// Acting user id (sent as X-USER-ID).
    #[arg(short, long)]
    user: Option<String>,
    /// JWT credential (Authorization: Bearer).
    #[arg(long, env = "KALAM_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// API-key credential (X-API-KEY).
    #[arg(long, env = "KALAM_APIKEY", hide_env_values = true, conflicts_with = "token")]
    apikey: Option<String>,
    /// Same as --format json.
    #[arg(long, conflicts_with_all = ["csv", "format"])]
    json: bool,
    /// Same as --format csv.
    #[arg(long, conflicts_with = "format")]
    csv: bool,
    /// Output format.
    #[arg(long, value_parser = ["table", "json", "csv"])]
    format: Option<String>,
    /// ANSI colors (default: when stdout is a terminal).
    #[arg(long, value_parser = clap::value_parser!(bool), conflicts_with = "no_color")]
    color: Option<bool>,
    /// No ANSI colors.
    #[arg(long)]
    no_color: bool,
    /// Execute one command (SQL or meta-command) and exit.
    #[arg(short, long, conflicts_with = "file")]
    command: Option<String>,
    /// Execute a SQL file and exit.
    #[arg(short, long)]
    file: Option<PathBuf>,
    /// Configuration file (default ~/.kalam/config.toml).
    #[arg(long, env = "KALAM_CONFIG")]
    config: Option<PathBuf>,
    /// Debug logging to ~/.kalam/kalam.log and stderr (credentials are never logged).
    #[arg(short, long)]
    verbose: bool,
    /// Print help.
    #[arg(long, short = '?', action = clap::ArgAction::Help)]
    help: Option<bool>,
    #[command(subcommand)]
    command_name: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Execute SQL (like -c) or a file (like -f) and exit.
    Exec {
        sql: Option<String>,
        #[arg(long, conflicts_with = "sql")]
        file: Option<PathBuf>,
    },
    /// Print live changes of a query until Ctrl+C, resuming across reconnects.
    Subscribe {
        /// `SELECT … FROM <ns>.<table> [WHERE …]`.
        sql: String,
        /// Start with the N most recent matching rows.
        #[arg(long)]
        last_rows: Option<u64>,
        /// Start with every row changed after this timestamp.
        #[arg(long)]
        since: Option<String>,
    },
    /// User management.
    User {
        #[command(subcommand)]
        action: UserCommand,
    },
    /// Operator commands over the daemons' local sockets (on the server's machine).
    Admin {
        /// The server's data directory (its sockets are in <data-dir>/run).
        #[arg(long, env = "KALAMDB_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
        #[command(subcommand)]
        action: admin::AdminCommand,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// CREATE USER and print the generated API key.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "user", value_parser = ["user", "service", "dba"])]
        role: String,
    },
}

fn init_logging(verbose: bool) {
    if !verbose {
        return;
    }
    use tracing_subscriber::fmt::writer::MakeWriterExt;
    let file = config::open_private_file(&config::kalam_dir().join("kalam.log"));
    let filter = tracing_subscriber::EnvFilter::new("warn,kalam=debug,kalam_cli=debug,kalam_link=debug");
    match file {
        Ok(f) => {
            let f = Arc::new(f);
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(false)
                .with_writer(std::io::stderr.and(f))
                .init();
        }
        Err(_) => tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init(),
    }
}

fn main() {
    let args = Args::parse();
    init_logging(args.verbose);
    std::process::exit(match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ERROR: {e:#}");
            1
        }
    });
}

fn run(args: Args) -> anyhow::Result<i32> {
    let config_path = args.config.clone().unwrap_or_else(|| config::kalam_dir().join("config.toml"));
    let file = match config::load(&config_path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("ERROR: invalid configuration {e}");
            return Ok(2);
        }
    };
    let format = if args.json {
        Some(Format::Json)
    } else if args.csv {
        Some(Format::Csv)
    } else {
        args.format.as_deref().and_then(Format::parse)
    };
    let flags = Flags {
        host: args.host.clone(),
        port: args.port,
        user: args.user.clone(),
        token: args.token.clone().filter(|t| !t.is_empty()),
        apikey: args.apikey.clone().filter(|k| !k.is_empty()),
        format,
        color: if args.no_color { Some(false) } else { args.color },
    };
    let settings = Settings::resolve(&flags, &file, config_path, std::io::stdout().is_terminal());
    let rt = Arc::new(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?);

    if let Some(Command::Admin { data_dir, action }) = args.command_name {
        let style = Style { format: settings.format, color: settings.color, width: session::terminal_width() };
        return rt.block_on(admin::run(&data_dir, action, style));
    }

    let client = match settings.client_for(&settings.url, settings.user.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ERROR: {e}");
            return Ok(2);
        }
    };
    // The server is checked before anything else (cli.md §1.3).
    match rt.block_on(client.health_check()) {
        Ok(h) if h.is_healthy() => {}
        Ok(h) => {
            let reason = h.error.unwrap_or_else(|| format!("server is {}", h.status));
            eprintln!("Cannot connect to KalamDB server at {}: {reason}", settings.url);
            return Ok(1);
        }
        Err(e) => {
            eprintln!("Cannot connect to KalamDB server at {}: {e}", settings.url);
            return Ok(1);
        }
    }

    let (command, file_arg) = match args.command_name {
        Some(Command::Exec { sql, file }) => (sql, file),
        Some(Command::Subscribe { sql, last_rows, since }) => {
            let mut session = Session::new(rt, settings, client, false);
            let mut config = SubscriptionConfig::new(sql.trim().trim_end_matches(';'));
            if let Some(n) = last_rows {
                config = config.with_last_rows(n);
            }
            if let Some(s) = since {
                config = config.with_since(s);
            }
            return Ok(if session.subscribe(config) { 0 } else { 1 });
        }
        Some(Command::User { action: UserCommand::Create { name, role } }) => {
            let mut session = Session::new(rt, settings, client, false);
            let sql = format!("CREATE USER {} ROLE {role}", session::quote(&name));
            return Ok(if session.request(&sql) { 0 } else { 1 });
        }
        Some(Command::Admin { .. }) => unreachable!("handled above"),
        None => (args.command, args.file),
    };

    if let Some(sql) = command {
        let session = Session::new(rt, settings, client, false);
        return Ok(run_lines(session, std::io::Cursor::new(sql.into_bytes())));
    }
    if let Some(path) = file_arg {
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("ERROR: cannot read {}: {e}", path.display());
                return Ok(2);
            }
        };
        let session = Session::new(rt, settings, client, false);
        return Ok(run_lines(session, std::io::BufReader::new(file)));
    }
    if std::io::stdin().is_terminal() {
        let mut session = Session::new(rt, settings, client, true);
        return Ok(repl::run(&mut session));
    }
    let session = Session::new(rt, settings, client, false);
    Ok(run_lines(session, std::io::stdin().lock()))
}

/// Runs statements and meta-commands from `input` one by one, stopping at the first failure
/// (cli.md §1.7); returns the exit code.
fn run_lines(mut session: Session, input: impl BufRead) -> i32 {
    let mut buffer = LineBuffer::new(false);
    let mut lines = input.lines();
    loop {
        let ready = match lines.next() {
            Some(Ok(line)) => buffer.push_line(&line),
            Some(Err(e)) => {
                eprintln!("ERROR: cannot read input: {e}");
                return 1;
            }
            None => break,
        };
        match ready.map(|input| session.run(input)) {
            Some(Outcome::Failed) => return 1,
            Some(Outcome::Quit) => return 0,
            Some(Outcome::Ok) | None => {}
        }
    }
    let last = match buffer.take() {
        Some(input) => session.run(input),
        None => Outcome::Ok,
    };
    match last {
        Outcome::Failed => 1,
        Outcome::Quit => 0,
        Outcome::Ok => i32::from(session.finish() == Outcome::Failed),
    }
}
