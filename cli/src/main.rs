//! kalam: the KalamDB command-line client. `kalam -c "<sql>"` runs SQL once and prints the
//! results; without `-c` it reads SQL from standard input (one request per line).

use std::io::{BufRead, IsTerminal, Write};

use clap::Parser;
use kalam_link::{KalamLinkClient, KalamLinkError, QueryResponse};

#[derive(Debug, Parser)]
#[command(name = "kalam", version, about = "KalamDB SQL client")]
struct Args {
    /// Server host.
    #[arg(short = 'H', long, default_value = "127.0.0.1", env = "KALAMDB_HOST")]
    host: String,
    /// Server port.
    #[arg(short, long, default_value_t = 8080, env = "KALAMDB_PORT")]
    port: u16,
    /// Acting user id (sent as X-USER-ID).
    #[arg(short, long)]
    user: Option<String>,
    /// SQL to run; reads standard input when absent.
    #[arg(short, long)]
    command: Option<String>,
    /// Print the raw JSON envelope.
    #[arg(long)]
    json: bool,
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
    let mut client = KalamLinkClient::new(format!("http://{}:{}", args.host, args.port));
    if let Some(u) = &args.user {
        client = client.with_user(u.clone());
    }
    if let Some(sql) = &args.command {
        std::process::exit(if run_one(&client, sql, args.json).await { 0 } else { 1 });
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
