//! The runtime SQL requests run on, apart from the one that accepts connections and serves
//! RPC, health checks and the WebSocket hand-off.
//!
//! DataFusion runs its operators as async tasks on whatever runtime polls the query, and a large
//! result is turned into JSON right after. On one shared runtime a few large scans keep every
//! worker busy, and a credential check kalam-lived asks for, or the supervisor's health check,
//! waits behind them until it times out. With the SQL work on its own workers, the operating
//! system shares the cores between the two runtimes, and the control paths answer at once.

use std::future::Future;

use kalam_types::error::KalamError;
use tokio_util::task::AbortOnDropHandle;

/// Stack of every runtime thread: room for planning the deepest expression the parser admits
/// (see `sql::nesting::MAX_EXPRESSION_DEPTH`).
pub const SQL_THREAD_STACK: usize = 32 << 20;

pub struct SqlRuntime {
    /// Always `Some` until dropped.
    runtime: Option<tokio::runtime::Runtime>,
}

impl SqlRuntime {
    /// One worker per core.
    pub fn new() -> std::io::Result<SqlRuntime> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name("kalamd-sql")
            .thread_stack_size(SQL_THREAD_STACK)
            .enable_all()
            .build()?;
        Ok(SqlRuntime { runtime: Some(runtime) })
    }

    /// Runs `work` on the SQL runtime and waits for it. Dropping the returned future (the
    /// client went away) cancels the work, as it would on the caller's own runtime.
    pub async fn run<F>(&self, work: F) -> Result<F::Output, KalamError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        // `None` only inside `drop`, which no caller can overlap.
        let Some(runtime) = self.runtime.as_ref() else { return Err(KalamError::internal()) };
        AbortOnDropHandle::new(runtime.spawn(work)).await.map_err(|e| {
            tracing::error!(error = %e, "a SQL request failed");
            KalamError::internal()
        })
    }
}

impl Drop for SqlRuntime {
    /// The engine may be dropped inside another runtime, where blocking on this one's shutdown
    /// is not allowed.
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
