//! kalam-supervisor: starts and keeps alive the three KalamDB daemons.
//!
//! In: configuration (defaults → `kalam.toml` → `KALAMDB_*` → flags) and signals. Out: the
//! bound public port (handed to kalamd as fd 3, and held across kalamd restarts), the child
//! processes kalamd → kalam-flushd, kalam-lived (each counted as started once its `health`
//! answers), restarts with back-off, and the `Supervisor` service. It is never on the data path.

mod children;
mod sampler;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use children::{Kind, RestartPolicy};
use clap::Parser;
use kalam_config::KalamConfig;
use kalam_rpc::transport::{bind, socket_path, sockets};
use kalam_rpc::{Health, ProcessInfo, Supervisor as _};
use tarpc::context::Context;
use tokio::process::Child;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(name = "kalam-supervisor", version, about = "Runs the KalamDB daemons (kalamd, kalam-flushd, kalam-lived)")]
struct Args {
    /// Configuration file (default: ./kalam.toml if present).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Listen host (overrides server.host).
    #[arg(long)]
    host: Option<String>,
    /// Listen port (overrides server.port).
    #[arg(long)]
    port: Option<u16>,
    /// Data directory (overrides storage.data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

type Table = Arc<Mutex<Vec<ProcessInfo>>>;

fn set_state(table: &Table, kind: Kind, f: impl FnOnce(&mut ProcessInfo)) {
    let mut t = table.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = t.iter_mut().find(|p| p.name == kind.binary()) {
        f(p);
    }
}

/// Records that `kind` has no running instance: `state`, no pid or figures, and one more
/// restart when one follows.
fn mark_down(table: &Table, kind: Kind, state: &str, restarting: bool) {
    set_state(table, kind, |p| {
        p.pid = None;
        p.state = state.into();
        p.restarts += u32::from(restarting);
        p.started_at_us = None;
        p.memory_bytes = None;
        p.cpu_percent = None;
    });
}

#[derive(Clone)]
struct SupervisorService {
    table: Table,
    /// One restart request per daemon, taken by its `watch`.
    restart: Arc<[(Kind, Arc<tokio::sync::Notify>); 3]>,
    shutdown: CancellationToken,
}

impl kalam_rpc::Supervisor for SupervisorService {
    async fn health(self, _: Context) -> Health {
        Health::of("kalam-supervisor")
    }

    async fn processes(self, _: Context) -> Vec<ProcessInfo> {
        self.table.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn restart(self, _: Context, name: String) -> Result<String, kalam_rpc::RpcError> {
        use kalam_types::ErrorCode;
        let Some((kind, notify)) = self.restart.iter().find(|(k, _)| k.binary() == name) else {
            return Err(kalam_rpc::RpcError::new(
                ErrorCode::InvalidOperation,
                format!("No daemon named '{name}' (kalamd, kalam-flushd, kalam-lived)"),
            ));
        };
        let state = self
            .table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.state.clone());
        if state.as_deref() != Some("running") {
            return Err(kalam_rpc::RpcError::new(
                ErrorCode::InvalidOperation,
                format!("{name} is {}, not running", state.unwrap_or_default()),
            ));
        }
        tracing::info!(process = kind.binary(), "restart requested");
        notify.notify_one();
        Ok(format!("Restarting {name}"))
    }

    async fn shutdown(self, _: Context) {
        tracing::info!("shutdown requested");
        self.shutdown.cancel();
    }
}

fn main() {
    let args = Args::parse();
    match start(args) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("kalam-supervisor: {e:#}");
            std::process::exit(1);
        }
    }
}

fn start(args: Args) -> anyhow::Result<i32> {
    let config_file = args.config.clone().or_else(|| {
        let default = PathBuf::from("kalam.toml");
        default.exists().then_some(default)
    });
    let config_file = match config_file {
        Some(f) => Some(std::fs::canonicalize(&f).with_context(|| format!("config file {}", f.display()))?),
        None => None,
    };
    let mut cfg = KalamConfig::load(config_file.as_deref())?;
    cfg.merge_flags(args.host, args.port, args.data_dir);
    cfg.validate()?;
    cfg.resolve_paths()?;

    // The port first: a busy port must fail before any daemon opens RocksDB.
    let addr = format!("{}:{}", cfg.server.host, cfg.server.port);
    let listener = match std::net::TcpListener::bind(&addr) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            anyhow::bail!("Port {} is already in use ({addr}): address in use", cfg.server.port);
        }
        Err(e) => return Err(e).with_context(|| format!("cannot listen on {addr}")),
    };
    std::fs::create_dir_all(&cfg.storage.data_dir)
        .with_context(|| format!("cannot create data directory {}", cfg.storage.data_dir.display()))?;
    let _log = kalam_config::logging::init(&cfg.logging, "kalam-supervisor");
    tracing::info!(version = env!("CARGO_PKG_VERSION"), %addr, data_dir = %cfg.storage.data_dir.display(), "kalam-supervisor starting");
    for key in KalamConfig::unknown_keys(config_file.as_deref()) {
        tracing::warn!(key, "unknown configuration key ignored");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(supervise_all(cfg, config_file, listener))
}

struct Ctx {
    cfg: KalamConfig,
    config_file: Option<PathBuf>,
    listener: std::net::TcpListener,
    started_ms: i64,
    table: Table,
    /// Signalled by the sampler when a daemon is over its memory limit.
    over_memory: sampler::OverMemory,
    /// Restart requests from the `Supervisor` service.
    restart: Arc<[(Kind, Arc<tokio::sync::Notify>); 3]>,
}

enum Outcome {
    Stopped,
    GaveUp,
}

async fn supervise_all(
    cfg: KalamConfig,
    config_file: Option<PathBuf>,
    listener: std::net::TcpListener,
) -> anyhow::Result<i32> {
    let table: Table = Arc::new(Mutex::new(
        [Kind::Kalamd, Kind::Flushd, Kind::Lived]
            .iter()
            .map(|k| ProcessInfo {
                name: k.binary().into(),
                pid: None,
                state: "stopped".into(),
                restarts: 0,
                started_at_us: None,
                memory_bytes: None,
                cpu_percent: None,
            })
            .collect(),
    ));
    let run_dir = cfg.run_dir();
    let restart: Arc<[(Kind, Arc<tokio::sync::Notify>); 3]> =
        Arc::new([Kind::Kalamd, Kind::Flushd, Kind::Lived].map(|k| (k, Arc::default())));
    let shutdown = CancellationToken::new();
    let service = SupervisorService { table: table.clone(), restart: restart.clone(), shutdown: shutdown.clone() };
    let rpc_listener = bind(&socket_path(&run_dir, sockets::SUPERVISOR))?;
    let rpc_task = tokio::spawn(kalam_rpc::serve_on!(rpc_listener, service));
    let over_memory: sampler::OverMemory = Default::default();
    let sampler_task = tokio::spawn(sampler::run(cfg.supervisor.clone(), table.clone(), over_memory.clone()));
    let ctx = Arc::new(Ctx {
        cfg,
        config_file,
        listener,
        started_ms: chrono::Utc::now().timestamp_millis(),
        table,
        over_memory,
        restart,
    });

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let stops: Vec<CancellationToken> = (0..3).map(|_| CancellationToken::new()).collect();

    let (ready_tx, ready_rx) = oneshot::channel();
    let mut kalamd = tokio::spawn(supervise(Kind::Kalamd, ctx.clone(), Some(ready_tx), stops[0].clone()));
    let mut others: Vec<(Kind, tokio::task::JoinHandle<Outcome>)> = Vec::new();
    let mut exit_code = 0;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = shutdown.cancelled() => {}
        r = ready_rx => {
            if r.is_ok() {
                let (flushd_tx, flushd_rx) = oneshot::channel();
                let (lived_tx, lived_rx) = oneshot::channel();
                others.push((Kind::Flushd, tokio::spawn(supervise(Kind::Flushd, ctx.clone(), Some(flushd_tx), stops[1].clone()))));
                others.push((Kind::Lived, tokio::spawn(supervise(Kind::Lived, ctx.clone(), Some(lived_tx), stops[2].clone()))));
                tracing::info!("kalamd is up; started kalam-flushd and kalam-lived");
                // Readiness for systemd (Type=notify) once every daemon answers `health`.
                tokio::spawn(async move {
                    if flushd_rx.await.is_ok() && lived_rx.await.is_ok() {
                        tracing::info!("all daemons healthy");
                        if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
                            tracing::warn!(error = %e, "could not notify systemd");
                        }
                    }
                });
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                    _ = shutdown.cancelled() => {}
                    outcome = &mut kalamd => {
                        if matches!(outcome, Ok(Outcome::GaveUp)) {
                            tracing::error!("kalamd keeps failing; shutting down");
                            exit_code = 1;
                        }
                    }
                }
            } else {
                tracing::error!("kalamd never became healthy; shutting down");
                exit_code = 1;
            }
        }
    }
    tracing::info!("kalam-supervisor stopping daemons");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    // Reverse start order: kalam-lived, kalam-flushd, then kalamd.
    for (kind, handle) in others.into_iter().rev() {
        let idx = if kind == Kind::Flushd { 1 } else { 2 };
        stops[idx].cancel();
        let _ = handle.await;
    }
    stops[0].cancel();
    if !kalamd.is_finished() {
        let _ = kalamd.await;
    }
    rpc_task.abort();
    sampler_task.abort();
    tracing::info!(exit_code, "kalam-supervisor stopped");
    Ok(exit_code)
}

/// Runs one child until `stop`: start, wait for health, watch, restart with back-off.
async fn supervise(
    kind: Kind,
    ctx: Arc<Ctx>,
    mut ready: Option<oneshot::Sender<()>>,
    stop: CancellationToken,
) -> Outcome {
    let mut policy = RestartPolicy::new(&ctx.cfg.supervisor);
    loop {
        let started = Instant::now();
        let spawned =
            children::spawn(kind, &ctx.cfg, ctx.config_file.as_deref(), children::raw(&ctx.listener), ctx.started_ms);
        let reason = match spawned {
            Ok(mut child) => {
                let pid = child.id();
                set_state(&ctx.table, kind, |p| {
                    p.pid = pid;
                    p.state = "starting".into();
                    p.started_at_us = Some(chrono::Utc::now().timestamp_micros());
                    p.memory_bytes = None;
                    p.cpu_percent = None;
                });
                tracing::info!(process = kind.binary(), pid = pid.unwrap_or_default(), "started");
                let over_memory = sampler::notifier(&ctx.over_memory, kind);
                let requested =
                    ctx.restart.iter().find(|(k, _)| *k == kind).map(|(_, n)| n.clone()).unwrap_or_default();
                let reason = watch(kind, &mut child, &ctx, &stop, &over_memory, &requested, &mut ready).await;
                if matches!(reason, Watch::Requested) {
                    // An operator's restart: graceful, at once, outside the back-off and limit.
                    stop_child(kind, &mut child).await;
                    mark_down(&ctx.table, kind, "starting", true);
                    continue;
                }
                if matches!(reason, Watch::Stop) {
                    stop_child(kind, &mut child).await;
                    mark_down(&ctx.table, kind, "stopped", false);
                    return Outcome::Stopped;
                }
                let _ = child.start_kill();
                let _ = child.wait().await;
                reason
            }
            Err(e) => {
                tracing::error!(process = kind.binary(), error = %e, "cannot start");
                Watch::Exited
            }
        };
        tracing::warn!(process = kind.binary(), reason = ?reason, "daemon went down");
        let Some(delay) = policy.on_exit(started.elapsed()) else {
            tracing::error!(process = kind.binary(), "too many restarts; giving up");
            mark_down(&ctx.table, kind, "failed", false);
            return Outcome::GaveUp;
        };
        mark_down(&ctx.table, kind, "backoff", true);
        tokio::select! {
            _ = stop.cancelled() => return Outcome::Stopped,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

#[derive(Debug)]
enum Watch {
    Stop,
    Exited,
    Unhealthy,
    OverMemory,
    Requested,
}

async fn watch(
    kind: Kind,
    child: &mut Child,
    ctx: &Ctx,
    stop: &CancellationToken,
    over_memory: &tokio::sync::Notify,
    requested: &tokio::sync::Notify,
    ready: &mut Option<oneshot::Sender<()>>,
) -> Watch {
    let run_dir = ctx.cfg.run_dir();
    let run_dir = run_dir.as_path();
    let table = &ctx.table;
    let interval = Duration::from_millis(ctx.cfg.supervisor.health_interval_ms);
    // A hung child never answers: each check waits at most one interval (and 2 s).
    let check_limit = interval.min(Duration::from_secs(2));
    // Starting: poll health until it answers, the child dies, or the start times out.
    let deadline = tokio::time::Instant::now() + children::STARTUP_TIMEOUT;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Watch::Stop,
            _ = child.wait() => return Watch::Exited,
            healthy = kind.health(run_dir, Duration::from_secs(2)) => {
                if healthy {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    return Watch::Unhealthy;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    set_state(table, kind, |p| p.state = "running".into());
    tracing::info!(process = kind.binary(), "healthy");
    if let Some(tx) = ready.take() {
        let _ = tx.send(());
    }
    let mut misses = 0;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Watch::Stop,
            _ = child.wait() => return Watch::Exited,
            _ = over_memory.notified() => return Watch::OverMemory,
            _ = requested.notified() => return Watch::Requested,
            _ = ticker.tick() => {
                if kind.health(run_dir, check_limit).await {
                    misses = 0;
                } else {
                    misses += 1;
                    tracing::warn!(process = kind.binary(), misses, "health check not answered");
                    if misses >= ctx.cfg.supervisor.health_misses {
                        return Watch::Unhealthy;
                    }
                }
            }
        }
    }
}

/// SIGTERM, then SIGKILL after the child's deadline.
async fn stop_child(kind: Kind, child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
    }
    match tokio::time::timeout(kind.stop_deadline(), child.wait()).await {
        Ok(_) => tracing::info!(process = kind.binary(), "stopped"),
        Err(_) => {
            tracing::warn!(process = kind.binary(), "did not stop in time; killing");
            let _ = child.kill().await;
        }
    }
}
