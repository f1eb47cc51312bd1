//! kalam-rpc: the internal services of KalamDB and how they travel.
//!
//! In: nothing of ours but `kalam-types`. Out: the four tarpc services (`Engine` served by
//! kalamd, `Flusher` by kalam-flushd, `Live` by kalam-lived, `Supervisor` by kalam-supervisor),
//! their wire types, and the Unix-socket transport ([`transport`]): sockets live in
//! `<data_dir>/run/`, are mode 0600, and only peers with our uid are served. Every service is
//! declared here once; each process gets a typed client for the others.

pub mod handoff;
pub mod transport;
pub mod wire;

pub use kalam_types::error::KalamError as RpcError;
pub use wire::*;

/// The engine: SQL data, change log, job records. Served by kalamd.
#[tarpc::service]
pub trait Engine {
    async fn health() -> Health;
    /// Checks a WebSocket upgrade's credentials (api.md §1): who the connection runs as, or the
    /// refusal (UNAUTHORIZED, INVALID_API_KEY, INVALID_TOKEN, TOKEN_EXPIRED, USER_DISABLED,
    /// PERMISSION_DENIED).
    async fn authenticate(presented: kalam_types::auth::Presented) -> Result<kalam_types::auth::Identity, RpcError>;
    /// Marks a flush job running, creates its RocksDB checkpoint and says what to write.
    async fn begin_flush(job_id: String) -> Result<FlushPlan, RpcError>;
    /// Commits attempt `attempt` of a flush in one write batch: manifest entries plus removal
    /// of exactly the buffered row versions the attempt's checkpoint held. A stale attempt (a
    /// newer one has begun) or files that do not hold every checkpoint row are refused.
    async fn commit_flush(job_id: String, attempt: u32, files: Vec<FlushedFile>) -> Result<FlushSummary, RpcError>;
    /// Records a failed attempt; the job keeps every row in the buffer.
    async fn fail_flush(job_id: String, attempt: u32, error: String) -> Result<(), RpcError>;
    /// Flush jobs that are new, queued, running, or retrying with their back-off elapsed.
    /// kalam-flushd asks at start and on every scheduler tick, and runs those it is not already
    /// running, so no job is left without a task behind it.
    async fn runnable_flush_jobs() -> Result<Vec<String>, RpcError>;
    /// Tables with a time trigger, with what the scheduler needs to decide whether it is due.
    async fn flush_candidates() -> Result<Vec<FlushCandidate>, RpcError>;
    /// Creates a flush job for a table (or returns the active one) and hands it to kalam-flushd.
    async fn trigger_flush(namespace: String, table: String) -> Result<String, RpcError>;
    /// Change-log records after `after_seq`, waiting up to `wait_ms` for one to arrive.
    async fn poll_changes(after_seq: u64, max_records: u32, wait_ms: u32) -> Result<ChangeBatch, RpcError>;
    /// Checks a live-query SELECT for `user_id` and says what it subscribes to: table,
    /// projection and the row filter (with `CURRENT_USER()` already replaced by the user).
    async fn plan_subscription(user_id: String, sql: String) -> Result<SubscriptionPlan, RpcError>;
    /// The initial rows of a subscription (api.md §4.2 snapshot options), read at one
    /// change-log position: `commit_seq` is the newest change the rows include, and every
    /// change of the partition after it is not in them.
    async fn subscription_snapshot(
        user_id: String,
        sql: String,
        options: SnapshotOptions,
    ) -> Result<Snapshot, RpcError>;
    /// Buffered rows and manifest files of one table.
    async fn table_stats(namespace: String, table: String) -> Result<TableStats, RpcError>;
    /// Paths (relative to their storage base) of the committed files of one partition of the
    /// job's table (`user_id` for USER tables): a flush deletes any other file of a flush job
    /// it finds in the partition's directory.
    async fn committed_files(job_id: String, user_id: Option<String>) -> Result<Vec<String>, RpcError>;
    /// Every dead-lettered flush job.
    async fn dead_letters() -> Result<Vec<DeadLetter>, RpcError>;
    /// Runs SQL as the built-in `system` user for a local operator (`kalam admin`; the socket
    /// is reachable only by the server's OS user) and returns the response envelope of
    /// api.md §2 as JSON text, errors included.
    async fn admin_sql(sql: String) -> String;
}

/// The flush runner. Served by kalam-flushd.
#[tarpc::service]
pub trait Flusher {
    async fn health() -> Health;
    /// Queues a job kalamd has created; returns at once.
    async fn run_job(job_id: String) -> Result<(), RpcError>;
    /// Stops a job that was cancelled (KILL JOB): files it wrote are removed.
    async fn cancel_job(job_id: String);
    /// The dead-letter queue: flush jobs that failed after their last attempt.
    async fn dead_letters() -> Result<Vec<DeadLetter>, RpcError>;
}

/// The WebSocket sessions. Served by kalam-lived.
#[tarpc::service]
pub trait Live {
    async fn health() -> Health;
    async fn list_subscriptions() -> Vec<LiveSubscription>;
    /// Ends one subscription (KILL LIVE QUERY): the client gets `unsubscribed` with reason
    /// `killed`. Returns the subscription as it was.
    async fn kill_live_query(live_id: String) -> Result<LiveSubscription, RpcError>;
    /// Counts of what the sessions hold, for monitoring and leak checks.
    async fn stats() -> LiveStats;
}

/// The process table. Served by kalam-supervisor.
#[tarpc::service]
pub trait Supervisor {
    async fn health() -> Health;
    async fn processes() -> Vec<ProcessInfo>;
    /// Restarts one running daemon gracefully (SIGTERM, then start again at once): an operator's
    /// restart, not counted against the restart limit. INVALID_OPERATION for an unknown
    /// name or a daemon that is not running.
    async fn restart(name: String) -> Result<String, RpcError>;
    /// Stops every daemon in order and exits, as on SIGTERM.
    async fn shutdown();
}
