//! One daemon at a time: each driver starts a single daemon of this build in a temporary
//! directory and plays its RPC peers itself, so the daemon's own ceiling is measured and its
//! faults can be provoked without the rest of the system.
//!
//! The fakes answer with data recorded from a real kalamd run alone beforehand (subscription
//! plans, a change record, a flush plan with its checkpoint), so they never restate the
//! engine's formats.

pub mod fake;
pub mod flushd;
pub mod kalamd;
pub mod lived;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kalam_e2e::{bin_dir, free_port, wait_for};
use kalam_link::KalamLinkClient;

/// A daemon started by a driver: SIGTERM and reaped on drop.
pub struct Daemon {
    child: Child,
}

impl Daemon {
    /// Starts `name` from the build's binary directory with `data_dir` and `env`, output to
    /// `<dir>/<name>.log`.
    pub fn start(name: &'static str, dir: &Path, data_dir: &Path, env: &[(&str, String)]) -> anyhow::Result<Daemon> {
        let bin = bin_dir().join(name);
        anyhow::ensure!(bin.exists(), "{} is missing: build the workspace binaries first", bin.display());
        let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
        let child = Command::new(bin)
            .current_dir(dir)
            .env("KALAMDB_DATA_DIR", data_dir)
            .env("KALAMDB_LOG_LEVEL", "warn")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        Ok(Daemon { child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then waits up to `timeout` (SIGKILL after it).
    pub fn stop(mut self, timeout: Duration) {
        self.terminate(timeout);
    }

    fn terminate(&mut self, timeout: Duration) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate(Duration::from_secs(10));
        }
    }
}

/// kalamd by itself on a free port, with no flushd or lived, once its HTTP API answers.
pub struct LoneKalamd {
    pub daemon: Daemon,
    pub url: String,
    pub data_dir: PathBuf,
}

impl LoneKalamd {
    pub async fn start(dir: &Path, config: &str) -> anyhow::Result<LoneKalamd> {
        std::fs::write(dir.join("kalam.toml"), config)?;
        let data_dir = dir.join("data");
        let port = free_port();
        let daemon = Daemon::start(
            "kalamd",
            dir,
            &data_dir,
            &[("KALAMDB_SERVER_HOST", "127.0.0.1".into()), ("KALAMDB_SERVER_PORT", port.to_string())],
        )?;
        let url = format!("http://127.0.0.1:{port}");
        let client = KalamLinkClient::new(url.clone());
        wait_for(Duration::from_secs(120), "kalamd health", || {
            let client = client.clone();
            async move { client.health().await.ok().filter(|ok| *ok) }
        })
        .await;
        Ok(LoneKalamd { daemon, url, data_dir })
    }

    pub fn run_dir(&self) -> PathBuf {
        self.data_dir.join("run")
    }

    pub async fn engine(&self) -> anyhow::Result<kalam_rpc::EngineClient> {
        Ok(kalam_rpc::transport::connect_engine(&self.run_dir()).await?)
    }
}

/// Peak resident memory of `pid`, sampled every 50 ms until the returned handle is aborted.
pub fn sample_peak_rss(pid: u32) -> (std::sync::Arc<std::sync::atomic::AtomicU64>, tokio::task::JoinHandle<()>) {
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let p = peak.clone();
    let task = tokio::spawn(async move {
        loop {
            if let Some(kb) = kalam_e2e::rss_kb(pid) {
                p.fetch_max(kb, std::sync::atomic::Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    (peak, task)
}

/// A tarpc error of a call the fake does not serve.
pub fn unsupported(what: &str) -> kalam_rpc::RpcError {
    kalam_rpc::RpcError::new(kalam_types::ErrorCode::InvalidOperation, format!("{what} is not served by this fake"))
}
