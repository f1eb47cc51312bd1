//! kalamd: the data daemon of KalamDB.
//!
//! In: HTTP requests on the public socket (inherited from kalam-supervisor, or bound itself when
//! run alone), `Engine` RPC calls from the other daemons. Out: SQL results, WebSocket sockets
//! handed to kalam-lived, flush plans and the change log. It owns RocksDB — catalog, buffered
//! rows, change log, job records and the file manifest — and is its only writer.

mod auth;
mod catalog;
mod clock;
mod drop;
mod engine;
mod error;
mod flush;
mod http;
mod ids;
mod jobs;
mod listener;
mod live;
mod provider;
mod prune;
mod ratelimit;
mod read;
mod rowjson;
mod rpc;
mod scan;
mod secrets;
mod sql;
mod sql_runtime;
mod stats;
mod storages;
mod store;
mod stream;
mod user_cleanup;
mod users;

/// Table definitions for unit tests.
#[cfg(test)]
mod test_defs {
    use kalam_types::KalamType;
    use kalam_types::ids::{NamespaceId, TableName};
    use kalam_types::schema::{ColumnDefinition, FlushPolicy, TableDefinition, TableOptions, TableType};

    /// `app.<name>` with one column: `id BIGINT PRIMARY KEY`.
    pub fn bigint_key_table(table_type: TableType, name: &str) -> TableDefinition {
        TableDefinition {
            namespace: NamespaceId::parse("app").unwrap(),
            name: TableName::parse(name).unwrap(),
            table_type,
            columns: vec![ColumnDefinition {
                name: "id".into(),
                column_id: 1,
                data_type: KalamType::BigInt,
                nullable: false,
                is_primary_key: true,
                default: None,
            }],
            schema_version: 1,
            storage_id: String::new(),
            flush_policy: FlushPolicy { row_threshold: None, interval_seconds: None },
            created_at_us: 0,
            updated_at_us: 0,
            options: TableOptions::default(),
            history: vec![],
        }
    }
}

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use kalam_config::KalamConfig;
use kalam_rpc::Engine as _;
use kalam_rpc::transport::{bind, socket_path, sockets};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(name = "kalamd", version, about = "KalamDB data daemon (SQL, RocksDB, HTTP)")]
struct Args {
    /// Configuration file (default: ./kalam.toml if present).
    #[arg(long)]
    config: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Read before any thread exists: the inherited socket and its environment.
    let inherited = listener::inherited_listener().context("inherited listening socket")?;
    let mut cfg = KalamConfig::load(args.config.as_deref())?;
    cfg.resolve_paths()?;
    let _log = kalam_config::logging::init(&cfg.logging, "kalamd");
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Subscriptions are planned on its blocking threads.
        .thread_stack_size(sql_runtime::SQL_THREAD_STACK)
        .build()?
        .block_on(run(cfg, inherited))
}

async fn run(cfg: KalamConfig, inherited: Option<std::net::TcpListener>) -> anyhow::Result<()> {
    let std_listener = match inherited {
        Some(l) => l,
        None => {
            let addr = format!("{}:{}", cfg.server.host, cfg.server.port);
            let l = match std::net::TcpListener::bind(&addr) {
                Ok(l) => l,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    anyhow::bail!("Port {} is already in use ({addr}): address in use", cfg.server.port)
                }
                Err(e) => return Err(e).with_context(|| format!("cannot listen on {addr}")),
            };
            l.set_nonblocking(true)?;
            l
        }
    };
    let listener = tokio::net::TcpListener::from_std(std_listener)?;
    let addr = listener.local_addr()?;
    tracing::info!(version = env!("CARGO_PKG_VERSION"), rocksdb = %cfg.storage.rocksdb_path.display(), "kalamd starting");
    let engine = engine::Engine::open(cfg.clone()).context("opening RocksDB")?;

    let run_dir = cfg.run_dir();
    let rpc_listener = bind(&socket_path(&run_dir, sockets::ENGINE))?;
    let rpc_task = tokio::spawn(kalam_rpc::serve_on!(rpc_listener, rpc::EngineService(engine.clone())));

    let shutdown = CancellationToken::new();
    let app = http::router(engine.clone());
    let http_task =
        tokio::spawn(listener::serve(listener, app, socket_path(&run_dir, sockets::WS_HANDOFF), shutdown.clone()));
    tracing::info!(%addr, "kalamd serving");
    // Run as its own systemd unit (Type=notify); under kalam-supervisor there is no NOTIFY_SOCKET.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    // A running kalam-flushd does not know that this kalamd restarted: hand it every unfinished
    // flush job again (it ignores the ones it already has).
    match engine.runnable_flush_jobs() {
        Ok(jobs) => jobs.into_iter().for_each(|job| engine.notify_flusher(job)),
        Err(e) => tracing::error!(error = %e, "cannot list unfinished flush jobs"),
    }

    let eviction_task = tokio::spawn(stream::eviction_loop(engine.clone(), shutdown.clone()));
    let retention_task = tokio::spawn(live::retention_loop(engine.clone(), shutdown.clone()));
    let user_cleanup_task = tokio::spawn(user_cleanup::cleanup_loop(engine.clone(), shutdown.clone()));

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("kalamd stopping");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    engine.begin_shutdown();
    shutdown.cancel();
    let _ = http_task.await;
    rpc_task.abort();
    eviction_task.abort();
    retention_task.abort();
    user_cleanup_task.abort();
    drop(engine);
    tracing::info!("kalamd stopped");
    Ok(())
}
