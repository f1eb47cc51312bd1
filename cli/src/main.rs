//! kalam: the KalamDB command-line client. `kalam -c "<sql>"` or `kalam -f file.sql` runs SQL
//! once and prints the results; otherwise it reads SQL from standard input (one request per
//! line). All connectivity comes from kalam-link.

use std::io::{BufRead, IsTerminal, Write};

use clap::Parser;
use kalam_link::{KalamLinkClient, KalamLinkError, QueryResponse};

#[derive(Debug, Parser)]
#[command(name = "kalam", version, about = "KalamDB SQL client", disable_help_flag = true)]
struct Args {
    /// Server URL (`http://host:port`), or a bare host name combined with --port.
    #[arg(short = 'h', long, visible_alias = "url", default_value = "localhost")]
    host: String,
    /// Port used when --host has none.
    #[arg(short, long, default_value_t = 8080)]
    port: u16,
    /// Acting user id (sent as X-USER-ID).
    #[arg(short, long)]
    user: Option<String>,
    /// Execute one command and exit.
    #[arg(short, long, conflicts_with = "file")]
    command: Option<String>,
    /// Execute a SQL file and exit.
    #[arg(short, long)]
    file: Option<std::path::PathBuf>,
    /// Print the JSON envelope instead of a table.
    #[arg(long)]
    json: bool,
    /// Print help.
    #[arg(long, short = '?', action = clap::ArgAction::Help)]
    help: Option<bool>,
}

/// `http://host:port` from `--host` (URL or bare name) and `--port`.
fn server_url(host: &str, port: u16) -> String {
    if host.contains("://") {
        host.trim_end_matches('/').to_owned()
    } else if host.contains(':') {
        format!("http://{host}")
    } else {
        format!("http://{host}:{port}")
    }
}

fn print(resp: &QueryResponse, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "status": resp.status,
                "results": resp.results.iter().map(|r| serde_json::json!({
                    "columns": r.columns, "rows": r.rows, "row_count": r.row_count, "message": r.message
                })).collect::<Vec<_>>(),
                "took_ms": resp.took_ms,
            }))
            .unwrap_or_default()
        );
        return;
    }
    for r in &resp.results {
        if let Some(rows) = &r.rows {
            println!("{}", r.columns.join(" | "));
            for row in rows {
                let cells: Vec<String> = r
                    .columns
                    .iter()
                    .map(|c| match row.get(c) {
                        Some(serde_json::Value::String(s)) => s.clone(),
                        Some(v) => v.to_string(),
                        None => String::new(),
                    })
                    .collect();
                println!("{}", cells.join(" | "));
            }
            println!("({} row{})", r.row_count, if r.row_count == 1 { "" } else { "s" });
        } else if let Some(m) = &r.message {
            println!("{m}");
        }
    }
}

async fn run_one(client: &KalamLinkClient, sql: &str, json: bool) -> bool {
    match client.query(sql).await {
        Ok(resp) => {
            print(&resp, json);
            true
        }
        Err(KalamLinkError::ServerError { code, message, .. }) => {
            eprintln!("ERROR {code}: {message}");
            false
        }
        Err(e) => {
            eprintln!("ERROR: {e}");
            false
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    let mut client = KalamLinkClient::new(server_url(&args.host, args.port));
    if let Some(u) = &args.user {
        client = client.with_user(u.clone());
    }
    if let Some(sql) = &args.command {
        std::process::exit(if run_one(&client, sql, args.json).await { 0 } else { 1 });
    }
    if let Some(path) = &args.file {
        let sql = match std::fs::read_to_string(path) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("ERROR: cannot read {}: {e}", path.display());
                std::process::exit(2);
            }
        };
        std::process::exit(if run_one(&client, &sql, args.json).await { 0 } else { 1 });
    }
    let stdin = std::io::stdin();
    let interactive = stdin.is_terminal();
    let mut ok = true;
    loop {
        if interactive {
            print!("kalam> ");
            let _ = std::io::stdout().flush();
        }
        let mut line = String::new();
        match stdin.lock().read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let sql = line.trim();
        if sql.is_empty() {
            continue;
        }
        if matches!(sql, "\\q" | "quit" | "exit") {
            break;
        }
        ok &= run_one(&client, sql, args.json).await;
    }
    std::process::exit(if ok || interactive { 0 } else { 1 });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_accepts_urls_and_bare_names() {
        assert_eq!(server_url("http://db:9000/", 8080), "http://db:9000");
        assert_eq!(server_url("db", 9000), "http://db:9000");
        assert_eq!(server_url("db:7000", 9000), "http://db:7000");
    }
}
