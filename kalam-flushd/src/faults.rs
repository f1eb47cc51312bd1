//! Fault injection for crash and storage-failure tests. Inert unless the environment variable
//! [`FAULTS_DIR_ENV`] names a directory; then, at each named step of a flush, kalam-flushd looks
//! in that directory for:
//!
//! - `kill`: holds a [`Step`] name. When the flush reaches that step the file is renamed to
//!   `kill.fired` and the process SIGKILLs itself (so the restarted daemon does not fire again),
//!   exactly as an external `kill -9` at that moment would.
//! - `fail_writes`: holds N. Every N-th Parquet file write (local or S3) of this process fails
//!   with an I/O error before it touches the storage, as a flaky disk or network would.
//! - `slow_writes_ms`: holds M. Every Parquet file write of this process first waits M ms, as
//!   a slow disk or a distant object store would (`kalam-bench flushd --slow-ms`).
//!
//! Production never sets the variable; the cost when it is unset is one cached lookup per step.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// Names the fault-control directory.
pub const FAULTS_DIR_ENV: &str = "KALAM_TEST_FAULTS_DIR";

/// Points of a flush attempt where a test can kill the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// kalamd created the attempt's checkpoint; nothing is written yet.
    AfterCheckpoint,
    /// The first group's Parquet data is partly written to its temporary file (S3: before the PUT).
    MidWrite,
    /// Every file is durable; kalamd has not been asked to commit.
    BeforeCommit,
    /// kalamd committed; the daemon has not logged it yet.
    AfterCommit,
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Step::AfterCheckpoint => "after_checkpoint",
            Step::MidWrite => "mid_write",
            Step::BeforeCommit => "before_commit",
            Step::AfterCommit => "after_commit",
        }
    }
}

fn dir() -> Option<&'static PathBuf> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| std::env::var_os(FAULTS_DIR_ENV).map(PathBuf::from)).as_ref()
}

/// True when fault injection is enabled for this process.
pub fn armed() -> bool {
    dir().is_some()
}

/// SIGKILLs this process if the test asked for a kill at `step`.
pub fn at(step: Step) {
    let Some(dir) = dir() else { return };
    let kill = dir.join("kill");
    let Ok(wanted) = std::fs::read_to_string(&kill) else { return };
    if wanted.trim() != step.name() {
        return;
    }
    // Consume the request first, so the restarted daemon finishes the job.
    if std::fs::rename(&kill, dir.join("kill.fired")).is_ok() {
        tracing::warn!(step = step.name(), "fault injection: killing kalam-flushd");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

/// Slows this write down, or fails it, if the test asked for it. Runs on the write's
/// blocking thread.
pub fn storage_write(path: &str) -> std::io::Result<()> {
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let Some(dir) = dir() else { return Ok(()) };
    if let Some(ms) =
        std::fs::read_to_string(dir.join("slow_writes_ms")).ok().and_then(|t| t.trim().parse::<u64>().ok())
    {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    let Some(every) = std::fs::read_to_string(dir.join("fail_writes")).ok().and_then(|t| t.trim().parse::<u64>().ok())
    else {
        return Ok(());
    };
    let n = WRITES.fetch_add(1, Ordering::Relaxed) + 1;
    if every > 0 && n.is_multiple_of(every) {
        tracing::warn!(path, write = n, "fault injection: failing a storage write");
        return Err(std::io::Error::other("injected storage write failure"));
    }
    Ok(())
}
