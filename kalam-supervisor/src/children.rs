//! The process table: how each daemon is started, checked and restarted.

use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use kalam_config::KalamConfig;
use kalam_rpc::transport;
use tokio::process::{Child, Command};

/// A child healthy this long gets its restart back-off reset (the back-off and the restart
/// limit are `[supervisor]` settings).
pub const HEALTHY_RESET: Duration = Duration::from_secs(60);
/// How long a starting child has to answer `health`.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Kalamd,
    Flushd,
    Lived,
}

impl Kind {
    pub fn binary(self) -> &'static str {
        match self {
            Kind::Kalamd => "kalamd",
            Kind::Flushd => "kalam-flushd",
            Kind::Lived => "kalam-lived",
        }
    }

    /// How long the child gets to stop after SIGTERM before SIGKILL.
    pub fn stop_deadline(self) -> Duration {
        match self {
            Kind::Flushd => Duration::from_secs(60),
            _ => Duration::from_secs(15),
        }
    }

    /// The configured resident-memory limit in bytes (`None` = no limit).
    pub fn memory_limit(self, cfg: &kalam_config::SupervisorConfig) -> Option<u64> {
        let mb = match self {
            Kind::Kalamd => cfg.kalamd_memory_limit_mb,
            Kind::Flushd => cfg.flushd_memory_limit_mb,
            Kind::Lived => cfg.lived_memory_limit_mb,
        };
        (mb > 0).then(|| mb.saturating_mul(1024 * 1024))
    }

    /// One `health` call over the child's own service, answered within `limit`.
    pub async fn health(self, run_dir: &Path, limit: Duration) -> bool {
        let ctx = || transport::context_with_timeout(limit);
        let call = async {
            match self {
                Kind::Kalamd => transport::connect_engine(run_dir).await.ok()?.health(ctx()).await.ok(),
                Kind::Flushd => transport::connect_flusher(run_dir).await.ok()?.health(ctx()).await.ok(),
                Kind::Lived => transport::connect_live(run_dir).await.ok()?.health(ctx()).await.ok(),
            }
        };
        matches!(tokio::time::timeout(limit, call).await, Ok(Some(_)))
    }
}

/// Where the daemon binaries are: `KALAMDB_BIN_DIR`, else next to this executable.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KALAMDB_BIN_DIR") {
        return PathBuf::from(dir);
    }
    std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf)).unwrap_or_else(|| PathBuf::from("."))
}

/// Starts one daemon. kalamd receives the public listener as fd 3 (LISTEN_FDS=1).
pub fn spawn(
    kind: Kind,
    cfg: &KalamConfig,
    config_file: Option<&Path>,
    listener_fd: RawFd,
    started_ms: i64,
) -> std::io::Result<Child> {
    let mut cmd = Command::new(bin_dir().join(kind.binary()));
    if let Some(file) = config_file {
        cmd.arg("--config").arg(file);
    }
    cmd.envs(cfg.child_env())
        .env("KALAMDB_SUPERVISOR_STARTED_MS", started_ms.to_string())
        // Readiness is the supervisor's to report (systemd `NotifyAccess=main`).
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let pass_listener = kind == Kind::Kalamd;
    if pass_listener {
        cmd.env("LISTEN_FDS", "1").env_remove("LISTEN_PID");
    }
    // SAFETY: only async-signal-safe calls (dup2, fcntl, prctl) run between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM).map_err(std::io::Error::from)?;
            if pass_listener {
                // fd 3 without FD_CLOEXEC: dup2 gives a fresh one, or clear the flag in place.
                let failed = if listener_fd == 3 {
                    nix::libc::fcntl(3, nix::libc::F_SETFD, 0) < 0
                } else {
                    nix::libc::dup2(listener_fd, 3) < 0
                };
                if failed {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Restart bookkeeping of one child.
#[derive(Debug)]
pub struct RestartPolicy {
    limits: kalam_config::SupervisorConfig,
    backoff: Duration,
    recent: Vec<Instant>,
}

impl RestartPolicy {
    pub fn new(limits: &kalam_config::SupervisorConfig) -> Self {
        Self {
            limits: limits.clone(),
            backoff: Duration::from_millis(limits.restart_backoff_min_ms),
            recent: Vec::new(),
        }
    }

    /// Records a crash; returns the delay before the next start, or `None` to give up.
    pub fn on_exit(&mut self, ran_for: Duration) -> Option<Duration> {
        let min = Duration::from_millis(self.limits.restart_backoff_min_ms);
        if ran_for >= HEALTHY_RESET {
            self.backoff = min;
        }
        let now = Instant::now();
        let window = Duration::from_secs(self.limits.restart_window_seconds);
        self.recent.retain(|t| now.duration_since(*t) < window);
        self.recent.push(now);
        if self.recent.len() > self.limits.max_restarts {
            return None;
        }
        let delay = self.backoff;
        self.backoff = (self.backoff * 2).min(Duration::from_millis(self.limits.restart_backoff_max_ms));
        Some(delay)
    }
}

pub fn raw(l: &std::net::TcpListener) -> RawFd {
    l.as_raw_fd()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_gives_up_after_too_many_restarts() {
        let mut p = RestartPolicy::new(&kalam_config::SupervisorConfig::default());
        let delays: Vec<_> = (0..5).map(|_| p.on_exit(Duration::from_secs(1))).collect();
        assert_eq!(delays[0], Some(Duration::from_millis(100)));
        assert_eq!(delays[1], Some(Duration::from_millis(200)));
        assert_eq!(delays[4], Some(Duration::from_millis(1600)));
        assert_eq!(p.on_exit(Duration::from_secs(1)), None);
    }
}
