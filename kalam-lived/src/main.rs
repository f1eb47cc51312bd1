//! kalam-lived: the live-query daemon of KalamDB.
//!
//! In: client sockets handed over by kalamd (SCM_RIGHTS on `run/kalam-lived-handoff.sock`) and
//! kalamd's change log (long-polled over the `Engine` service). Out: WebSocket messages to
//! subscribed clients and the `Live` service. It owns the sessions and their subscriptions and
//! holds no table data, so a kalamd restart does not drop a single socket.

mod pump;
mod registry;
mod session;

use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use kalam_config::KalamConfig;
use kalam_rpc::transport::{bind, socket_path, sockets};
use kalam_rpc::{Health, Live as _, LiveSubscription};
use tarpc::context::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(name = "kalam-lived", version, about = "KalamDB live-query daemon (WebSocket sessions)")]
struct Args {
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Clone)]
struct LiveService(Arc<registry::Registry>);

impl kalam_rpc::Live for LiveService {
    async fn health(self, _: Context) -> Health {
        Health::of("kalam-lived")
    }

    async fn list_subscriptions(self, _: Context) -> Vec<LiveSubscription> {
        self.0.list()
    }

    async fn kill_live_query(self, _: Context, live_id: String) -> Result<LiveSubscription, kalam_rpc::RpcError> {
        let found = self.0.list().into_iter().find(|s| s.live_id == live_id);
        let (Some(info), Some(sub)) = (found, self.0.remove(&live_id)) else {
            return Err(kalam_rpc::RpcError::new(
                kalam_types::ErrorCode::LiveQueryNotFound,
                format!("Live query '{live_id}' not found"),
            ));
        };
        let text = serde_json::json!({"type": "unsubscribed", "subscription_id": sub.subscription_id,
            "reason": "killed"})
        .to_string();
        let out = registry::Outgoing::Ended {
            subscription_id: sub.subscription_id.clone(),
            generation: sub.generation,
            text,
        };
        if sub.conn.tx.try_send(out).is_err() {
            sub.conn.slow.cancel();
        }
        tracing::info!(live_id, "live query killed");
        Ok(info)
    }

    async fn stats(self, _: Context) -> kalam_rpc::LiveStats {
        self.0.stats()
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut cfg = KalamConfig::load(args.config.as_deref())?;
    cfg.resolve_paths()?;
    let _log = kalam_config::logging::init(&cfg.logging, "kalam-lived");
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Compiling a subscription's filter with DataFusion recurses once per expression level;
        // kalamd admits at most 256 levels, which this stack holds even in debug builds.
        .thread_stack_size(32 << 20)
        .build()?
        .block_on(run(cfg))
}

async fn run(cfg: KalamConfig) -> anyhow::Result<()> {
    let run_dir = cfg.run_dir();
    let registry = Arc::new(registry::Registry::new(cfg.rate_limit.max_subscriptions_per_user));
    let shutdown = CancellationToken::new();

    let pump = pump::Pump { registry: registry.clone(), run_dir: run_dir.clone() };
    let pump_task = tokio::spawn(pump.run(shutdown.clone()));

    let rpc_listener = bind(&socket_path(&run_dir, sockets::LIVE))?;
    let rpc_task = tokio::spawn(kalam_rpc::serve_on!(rpc_listener, LiveService(registry.clone())));

    let shared = Arc::new(session::Shared::new(cfg.clone(), registry.clone(), shutdown.clone()));
    let handoff = bind(&socket_path(&run_dir, sockets::WS_HANDOFF))?;
    let mut sessions = tokio::task::JoinSet::new();
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "kalam-lived serving");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            accepted = kalam_rpc::transport::accept(&handoff) => {
                let stream = match accepted {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(error = %e, "hand-off accept failed");
                        continue;
                    }
                };
                let received = match stream.into_std() {
                    Ok(std_stream) => tokio::task::spawn_blocking(move || {
                        std_stream.set_nonblocking(false)?;
                        std_stream.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
                        kalam_rpc::handoff::recv_socket(&std_stream)
                    })
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(e))),
                    Err(e) => Err(e),
                };
                match received {
                    Ok(Some((fd, peer))) => {
                        sessions.spawn(session::run(shared.clone(), fd, peer));
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "hand-off receive failed"),
                }
            }
        }
    }
    tracing::info!("kalam-lived stopping; closing WebSockets");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    shutdown.cancel();
    let drain = async { while sessions.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), drain).await;
    let _ = pump_task.await;
    rpc_task.abort();
    Ok(())
}
