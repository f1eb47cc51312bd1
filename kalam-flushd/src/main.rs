//! kalam-flushd: the flush daemon of KalamDB.
//!
//! In: flush job ids (from kalamd through the `Flusher` service, and at start from kalamd's list
//! of unfinished jobs). Out: Parquet files in the table's storage, and commit/fail calls to
//! kalamd. It reads only the per-job RocksDB checkpoints kalamd creates and keeps no state of
//! its own between jobs, so a crash loses nothing: kalamd still has every row and every job.

mod faults;
mod writer;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use kalam_config::KalamConfig;
use kalam_rpc::transport::{bind, connect_engine, context_with_timeout, socket_path, sockets};
use kalam_rpc::{DeadLetter, EngineClient, Flusher as _, Health, RpcError};
use kalam_types::ErrorCode;
use tarpc::context::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

/// Jobs waiting for a worker, at most.
const MAX_QUEUED_JOBS: usize = 10_000;
/// Attempts of one job while kalamd restarts under it.
const MAX_ATTEMPTS_ON_LOST_KALAMD: usize = 5;
/// Deadline of the begin and commit calls (a checkpoint flushes memtables; a commit compares
/// every flushed row with the live buffer).
const COMMIT_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, Parser)]
#[command(name = "kalam-flushd", version, about = "KalamDB flush daemon (Parquet writer)")]
struct Args {
    #[arg(long)]
    config: Option<PathBuf>,
}

/// Job ids queued or running here, so one job is never run twice at once.
type InFlight = Arc<Mutex<HashSet<String>>>;

/// Job ids cancelled by KILL JOB while queued or running here.
type Cancelled = Arc<Mutex<HashSet<String>>>;

#[derive(Clone)]
struct FlusherService {
    run_dir: PathBuf,
    queue: mpsc::Sender<String>,
    in_flight: InFlight,
    cancelled: Cancelled,
}

impl FlusherService {
    fn enqueue(&self, job_id: String) -> Result<(), RpcError> {
        if !self.in_flight.lock().unwrap_or_else(|p| p.into_inner()).insert(job_id.clone()) {
            return Ok(());
        }
        self.queue.try_send(job_id.clone()).map_err(|_| {
            self.in_flight.lock().unwrap_or_else(|p| p.into_inner()).remove(&job_id);
            RpcError::new(ErrorCode::ServiceUnavailable, "flush queue is full")
        })
    }
}

impl kalam_rpc::Flusher for FlusherService {
    async fn health(self, _: Context) -> Health {
        Health::of("kalam-flushd")
    }

    async fn run_job(self, _: Context, job_id: String) -> Result<(), RpcError> {
        self.enqueue(job_id)
    }

    async fn cancel_job(self, _: Context, job_id: String) {
        // Only jobs queued or running here can be affected; the set is emptied as they end.
        if self.in_flight.lock().unwrap_or_else(|p| p.into_inner()).contains(&job_id) {
            self.cancelled.lock().unwrap_or_else(|p| p.into_inner()).insert(job_id);
        }
    }

    async fn dead_letters(self, _: Context) -> Result<Vec<DeadLetter>, RpcError> {
        // kalamd's job records are the source of truth; this daemon keeps no state of its own.
        let client = connect_engine(&self.run_dir)
            .await
            .map_err(|_| RpcError::new(ErrorCode::ServiceUnavailable, "kalamd is unreachable"))?;
        client
            .dead_letters(tarpc::context::current())
            .await
            .map_err(|_| RpcError::new(ErrorCode::ServiceUnavailable, "kalamd did not answer"))?
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut cfg = KalamConfig::load(args.config.as_deref())?;
    cfg.resolve_paths()?;
    let _log = kalam_config::logging::init(&cfg.logging, "kalam-flushd");
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run(cfg))
}

async fn run(cfg: KalamConfig) -> anyhow::Result<()> {
    let run_dir = cfg.run_dir();
    let (tx, rx) = mpsc::channel(MAX_QUEUED_JOBS);
    let service =
        FlusherService { run_dir: run_dir.clone(), queue: tx, in_flight: Arc::default(), cancelled: Arc::default() };
    let rpc_listener = bind(&socket_path(&run_dir, sockets::FLUSHER))?;
    let rpc_task = tokio::spawn(kalam_rpc::serve_on!(rpc_listener, service.clone()));
    let shutdown = CancellationToken::new();
    let workers = tokio::spawn(run_workers(
        run_dir.clone(),
        cfg.flush.max_concurrent_jobs.max(1),
        rx,
        service.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(resume_jobs(run_dir.clone(), service.clone(), shutdown.clone()));
    let check_every = Duration::from_secs(cfg.flush.check_interval_seconds.max(1));
    let scheduler =
        tokio::spawn(schedule_time_triggers(run_dir.clone(), check_every, service.clone(), shutdown.clone()));
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "kalam-flushd serving");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("kalam-flushd stopping; waiting for running jobs");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    shutdown.cancel();
    let _ = scheduler.await;
    let _ = workers.await;
    rpc_task.abort();
    Ok(())
}

/// Time triggers (storage.md §5): every `check_every`, ask kalamd for the tables with an
/// interval and have it create a job for each one that is due. kalamd hands the job back to
/// this daemon like any other. When a table holding rows falls due before the next check, the
/// scheduler wakes at its due time instead.
async fn schedule_time_triggers(
    run_dir: PathBuf,
    check_every: Duration,
    service: FlusherService,
    shutdown: CancellationToken,
) {
    let mut wait = Duration::ZERO;
    let mut client: Option<EngineClient> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = check_every;
        if client.is_none() {
            client = connect_engine(&run_dir).await.ok();
        }
        let Some(c) = client.clone() else { continue };
        // Every unfinished job with a due attempt runs here (retries after their back-off, jobs
        // re-queued by RETRY JOB, jobs whose notification was lost); running ones are skipped.
        match c.runnable_flush_jobs(tarpc::context::current()).await {
            Ok(Ok(jobs)) => {
                for job in jobs {
                    if let Err(e) = service.enqueue(job) {
                        tracing::warn!(error = %e, "could not queue a runnable job");
                    }
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "kalamd refused the runnable jobs"),
            Err(_) => {
                client = None;
                continue;
            }
        }
        let candidates = match c.flush_candidates(tarpc::context::current()).await {
            Ok(Ok(list)) => list,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "kalamd refused the flush candidates");
                continue;
            }
            Err(_) => {
                client = None;
                continue;
            }
        };
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        let next_due = candidates.iter().filter(|t| t.waiting() && !t.is_due(now_us)).map(|t| t.due_at_us()).min();
        if let Some(next) = next_due {
            wait = wait.min(Duration::from_micros(u64::try_from(next.saturating_sub(now_us)).unwrap_or(0)));
        }
        for due in candidates.into_iter().filter(|t| t.is_due(now_us)) {
            match c.trigger_flush(tarpc::context::current(), due.namespace.clone(), due.table.clone()).await {
                Ok(Ok(job_id)) => {
                    tracing::info!(job_id, table = %format!("{}.{}", due.namespace, due.table), "interval flush triggered")
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "interval flush not started"),
                Err(_) => {
                    client = None;
                    break;
                }
            }
        }
    }
}

/// Asks kalamd (retrying until it answers) for every unfinished flush job and queues it.
async fn resume_jobs(run_dir: PathBuf, service: FlusherService, shutdown: CancellationToken) {
    let mut delay = Duration::from_millis(50);
    loop {
        if let Ok(client) = connect_engine(&run_dir).await
            && let Ok(Ok(jobs)) = client.runnable_flush_jobs(tarpc::context::current()).await
        {
            if !jobs.is_empty() {
                tracing::info!(count = jobs.len(), "resuming unfinished flush jobs");
            }
            for job in jobs {
                if let Err(e) = service.enqueue(job) {
                    tracing::warn!(error = %e, "could not queue resumed job");
                }
            }
            return;
        }
        tokio::select! { _ = shutdown.cancelled() => return, _ = tokio::time::sleep(delay) => {} }
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

async fn run_workers(
    run_dir: PathBuf,
    max_jobs: usize,
    mut rx: mpsc::Receiver<String>,
    service: FlusherService,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(max_jobs));
    let mut running = tokio::task::JoinSet::new();
    loop {
        let job_id = tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(_) = running.join_next(), if !running.is_empty() => continue,
            job = rx.recv() => match job { Some(j) => j, None => break },
        };
        let Ok(permit) = permits.clone().acquire_owned().await else { break };
        let run_dir = run_dir.clone();
        let service = service.clone();
        running.spawn(async move {
            // A kalamd restart in the middle of an attempt is not the job's fault: run it again
            // once kalamd is back (it still has every row and the job record).
            let mut delay = Duration::from_millis(200);
            for _ in 0..MAX_ATTEMPTS_ON_LOST_KALAMD {
                if run_one(&run_dir, &job_id, &service.cancelled).await == Attempt::Finished {
                    break;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            service.cancelled.lock().unwrap_or_else(|p| p.into_inner()).remove(&job_id);
            service.in_flight.lock().unwrap_or_else(|p| p.into_inner()).remove(&job_id);
            drop(permit);
        });
    }
    while running.join_next().await.is_some() {}
}

async fn engine(run_dir: &std::path::Path) -> Option<EngineClient> {
    let mut delay = Duration::from_millis(50);
    for _ in 0..20 {
        if let Ok(c) = connect_engine(run_dir).await {
            return Some(c);
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
    None
}

#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    /// Committed, failed, or refused by kalamd: nothing more to do here.
    Finished,
    /// kalamd went away mid-attempt; the job is still pending there.
    KalamdLost,
}

/// Runs one attempt of a job. Failures leave every row in kalamd's buffer.
async fn run_one(run_dir: &std::path::Path, job_id: &str, cancelled: &Cancelled) -> Attempt {
    let Some(client) = engine(run_dir).await else {
        tracing::error!(job_id, "kalamd unreachable");
        return Attempt::KalamdLost;
    };
    let plan = match client.begin_flush(context_with_timeout(COMMIT_TIMEOUT), job_id.to_owned()).await {
        Ok(Ok(plan)) => plan,
        Ok(Err(e)) => {
            tracing::warn!(job_id, error = %e, "kalamd refused to start the job");
            return Attempt::Finished;
        }
        Err(e) => {
            tracing::warn!(job_id, error = %e, "lost kalamd while starting the job");
            return Attempt::KalamdLost;
        }
    };
    tracing::info!(job_id, table = %plan.table.qualified_name(), namespace = %plan.table.namespace, "Flush job started");
    faults::at(faults::Step::AfterCheckpoint);
    let written = {
        let plan = plan.clone();
        let (cancelled, id) = (cancelled.clone(), job_id.to_owned());
        let is_cancelled = move || cancelled.lock().unwrap_or_else(|p| p.into_inner()).contains(&id);
        let (engine, handle, id) = (client.clone(), tokio::runtime::Handle::current(), job_id.to_owned());
        // Runs on the blocking thread of the write, so it may wait on the runtime.
        let committed = move |user: Option<&str>| {
            let call = engine.committed_files(tarpc::context::current(), id.clone(), user.map(str::to_owned));
            match handle.block_on(call) {
                Ok(Ok(paths)) => Some(paths.into_iter().collect()),
                Ok(Err(e)) => {
                    tracing::warn!(job_id = %id, error = %e, "kalamd refused the committed file list");
                    None
                }
                Err(_) => None,
            }
        };
        tokio::task::spawn_blocking(move || writer::write_job(&plan, &is_cancelled, &committed)).await
    };
    let files = match written {
        Ok(Ok(files)) => files,
        Ok(Err(writer::FlushError::Cancelled)) => {
            tracing::info!(job_id, "flush job cancelled; its files were removed");
            return Attempt::Finished;
        }
        Ok(Err(e)) => {
            tracing::error!(job_id, error = %e, "flush write failed");
            let _ =
                client.fail_flush(tarpc::context::current(), job_id.to_owned(), plan.attempt, e.public_message()).await;
            return Attempt::Finished;
        }
        Err(e) => {
            tracing::error!(job_id, error = %e, "flush task panicked");
            let _ = client
                .fail_flush(tarpc::context::current(), job_id.to_owned(), plan.attempt, "flush task failed".into())
                .await;
            return Attempt::Finished;
        }
    };
    faults::at(faults::Step::BeforeCommit);
    let committed =
        client.commit_flush(context_with_timeout(COMMIT_TIMEOUT), job_id.to_owned(), plan.attempt, files.clone()).await;
    match committed {
        Ok(Ok(summary)) => {
            faults::at(faults::Step::AfterCommit);
            tracing::info!(
                job_id,
                table = %plan.table.qualified_name(),
                records_flushed = summary.records_flushed,
                files = summary.files,
                "Flush job completed"
            );
            Attempt::Finished
        }
        Ok(Err(e)) => {
            // Refused (cancelled, or the files do not match the checkpoint): these files will
            // never be in the manifest. No other attempt of this job runs while this one does.
            tracing::warn!(job_id, error = %e, "kalamd refused the commit; removing the attempt's files");
            // Blocking I/O (S3 deletes block on the runtime): off the async workers.
            let _ = tokio::task::spawn_blocking(move || writer::remove_files(&plan, &files)).await;
            Attempt::Finished
        }
        Err(e) => {
            tracing::warn!(job_id, error = %e, "lost kalamd during commit; trying the job again");
            Attempt::KalamdLost
        }
    }
}
