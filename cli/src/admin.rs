//! `kalam admin …`: operator commands over the daemons' internal RPC sockets in
//! `<data_dir>/run/` (ARCHITECTURE.md). They work only on the server's machine, as the
//! server's OS user (the sockets are 0600 and check the peer's uid).

use std::path::{Path, PathBuf};

use kalam_link::{QueryResponse, QueryResult};
use tarpc::context;

use crate::format::{self, Style};
use crate::session::quote;

#[derive(Debug, Clone, clap::Subcommand)]
pub enum AdminCommand {
    /// The supervisor's process table (pid, state, restarts, uptime, memory, CPU).
    Processes,
    /// The newest jobs (system.jobs).
    Jobs {
        /// How many jobs to show.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Buffered rows and flush state of every table (system.flush_status).
    FlushStatus,
    /// Runs a failed or dead-lettered job again (RETRY JOB).
    Retry { job_id: String },
    /// Ends one live query (its `live_id` from system.live_queries).
    KillLive { live_id: String },
}

fn unreachable(daemon: &str, run_dir: &Path, e: std::io::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "cannot reach {daemon}'s admin socket in {} ({e}). kalam admin works on the server's machine, as the \
         server's OS user, with --data-dir naming its data directory",
        run_dir.display()
    )
}

fn rpc_failed(daemon: &str, e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{daemon} did not answer: {e}")
}

/// Runs one admin command; prints its outcome and returns the exit code.
pub async fn run(data_dir: &Path, command: AdminCommand, style: Style) -> anyhow::Result<i32> {
    let run_dir: PathBuf = data_dir.join("run");
    match command {
        AdminCommand::Processes => {
            let supervisor = kalam_rpc::transport::connect_supervisor(&run_dir)
                .await
                .map_err(|e| unreachable("kalam-supervisor", &run_dir, e))?;
            let procs =
                supervisor.processes(context::current()).await.map_err(|e| rpc_failed("kalam-supervisor", e))?;
            let now_us = chrono::Utc::now().timestamp_micros();
            let rows: Vec<serde_json::Value> = procs
                .iter()
                .map(|p| {
                    serde_json::json!({
                        "name": p.name,
                        "pid": p.pid,
                        "state": p.state,
                        "restarts": p.restarts,
                        "uptime": p.started_at_us.map(|s| crate::session::uptime(((now_us - s).max(0) / 1_000_000) as u64)),
                        "memory_mb": p.memory_bytes.map(|b| format!("{:.1}", b as f64 / 1_048_576.0)),
                        "cpu_percent": p.cpu_percent.map(|c| format!("{c:.1}")),
                    })
                })
                .collect();
            let columns = ["name", "pid", "state", "restarts", "uptime", "memory_mb", "cpu_percent"];
            print_rows(&columns, rows, style);
            Ok(0)
        }
        AdminCommand::Jobs { limit } => {
            sql(
                &run_dir,
                &format!(
                    "SELECT job_id, job_type, status, table_name, attempts, dead_letter, created_at, completed_at, \
                     error_message FROM system.jobs ORDER BY created_at DESC LIMIT {limit}"
                ),
                style,
            )
            .await
        }
        AdminCommand::FlushStatus => sql(&run_dir, "SELECT * FROM system.flush_status", style).await,
        AdminCommand::Retry { job_id } => sql(&run_dir, &format!("RETRY JOB {}", quote(&job_id)), style).await,
        AdminCommand::KillLive { live_id } => {
            let live = kalam_rpc::transport::connect_live(&run_dir)
                .await
                .map_err(|e| unreachable("kalam-lived", &run_dir, e))?;
            match live
                .kill_live_query(context::current(), live_id.clone())
                .await
                .map_err(|e| rpc_failed("kalam-lived", e))?
            {
                Ok(sub) => {
                    outln!("Killed live query {} (user {}, {})", sub.live_id, sub.user_id, sub.sql);
                    Ok(0)
                }
                Err(e) => {
                    eprintln!("{}", format::error_lines(&e.code.as_str(), &e.message, None, style.color));
                    Ok(1)
                }
            }
        }
    }
}

/// Runs `statement` through kalamd's admin SQL call and prints the envelope.
async fn sql(run_dir: &Path, statement: &str, style: Style) -> anyhow::Result<i32> {
    let engine = kalam_rpc::transport::connect_engine(run_dir).await.map_err(|e| unreachable("kalamd", run_dir, e))?;
    let text = engine.admin_sql(context::current(), statement.to_owned()).await.map_err(|e| rpc_failed("kalamd", e))?;
    let resp: QueryResponse = serde_json::from_str(&text)?;
    if !resp.results.is_empty() {
        outln!("{}", format::response(&resp, style, true));
    }
    match &resp.error {
        Some(e) => {
            eprintln!("{}", format::error_lines(&e.code, &e.message, e.details.as_deref(), style.color));
            Ok(1)
        }
        None => Ok(0),
    }
}

fn print_rows(columns: &[&str], rows: Vec<serde_json::Value>, style: Style) {
    let rows: Vec<_> = rows.into_iter().filter_map(|r| r.as_object().cloned()).collect();
    let result = QueryResult {
        columns: columns.iter().map(|c| (*c).to_owned()).collect(),
        row_count: rows.len() as u64,
        rows: Some(rows),
        message: None,
        cache_hit: None,
    };
    let resp = QueryResponse { status: "success".into(), results: vec![result], took_ms: 0, error: None };
    outln!("{}", format::response(&resp, style, false));
}
