//! kalam-flushd alone: a fake kalamd hands it flush jobs of a prepared checkpoint (recorded
//! from a real kalamd run alone) and counts what it commits, while the storage is fast, slow
//! (every file write waits) or failing (every N-th write fails and the job is retried).
//! Reports rows/s, retries, memory and CPU.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kalam_e2e::wait_for;
use kalam_link::KalamLinkClient;
use kalam_rpc::transport::{bind, socket_path, sockets};
use kalam_rpc::{FlushPlan, FlushSummary, FlushedFile, RpcError};
use kalam_types::ErrorCode;

use super::fake::FakeEngine;
use super::{Daemon, LoneKalamd, sample_peak_rss};
use crate::procs::Procs;
use crate::report::{Measurement, Results};
use kalam_rpc::Engine as _;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Rows in the prepared checkpoint (each job flushes all of them).
    #[arg(long, default_value_t = 200_000)]
    pub rows: u64,
    /// Jobs per scenario.
    #[arg(long, default_value_t = 5)]
    pub jobs: usize,
    /// Delay before every file write in the slow-storage scenario, ms.
    #[arg(long, default_value_t = 500)]
    pub slow_ms: u64,
    /// In the failing-storage scenario every N-th file write fails.
    #[arg(long, default_value_t = 2)]
    pub fail_every: u64,
}

#[derive(Debug, Default)]
struct Job {
    attempts: u32,
    rows: Option<u64>,
}

/// The jobs behind the fake engine.
pub struct FlushSide {
    plan: FlushPlan,
    jobs: Mutex<BTreeMap<String, Job>>,
    failures: AtomicU64,
}

impl FlushSide {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Job>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn begin(&self, job_id: &str) -> Result<FlushPlan, RpcError> {
        let mut jobs = self.lock();
        let job = jobs
            .get_mut(job_id)
            .filter(|j| j.rows.is_none())
            .ok_or_else(|| RpcError::new(ErrorCode::JobNotFound, format!("Job not found: {job_id}")))?;
        job.attempts += 1;
        Ok(FlushPlan { job_id: job_id.to_owned(), attempt: job.attempts, ..self.plan.clone() })
    }

    pub fn commit(&self, job_id: &str, attempt: u32, files: &[FlushedFile]) -> Result<FlushSummary, RpcError> {
        let mut jobs = self.lock();
        let job = jobs.get_mut(job_id).filter(|j| j.attempts == attempt && j.rows.is_none()).ok_or_else(|| {
            RpcError::new(ErrorCode::InvalidOperation, format!("stale attempt {attempt} of {job_id}"))
        })?;
        let rows = files.iter().map(|f| f.row_count).sum();
        job.rows = Some(rows);
        Ok(FlushSummary { records_flushed: rows, files: files.len() as u64 })
    }

    pub fn fail(&self, _job_id: &str, _attempt: u32, _error: &str) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn pending(&self) -> Vec<String> {
        self.lock().iter().filter(|(_, j)| j.rows.is_none()).map(|(id, _)| id.clone()).collect()
    }
}

/// A flush plan (with its checkpoint) of `rows` rows of the benchmark's fact table.
async fn record(dir: &std::path::Path, rows: u64) -> anyhow::Result<FlushPlan> {
    let kalamd = LoneKalamd::start(dir, "").await?;
    let admin = KalamLinkClient::builder().base_url(&kalamd.url).timeout(Duration::from_secs(600)).build()?;
    admin
        .execute_query(&format!(
            "CREATE NAMESPACE bench; CREATE SHARED TABLE {} (id BIGINT PRIMARY KEY, user_name TEXT, amount DOUBLE, \
             qty INT, active BOOLEAN, created TIMESTAMP, note TEXT) FLUSH INTERVAL 86399s",
            crate::sql::SHARED
        ))
        .await?;
    for b in 0..rows.div_ceil(1000) {
        let values: Vec<String> = (b * 1000..((b + 1) * 1000).min(rows)).map(crate::sql::fact_row).collect();
        admin.execute_query(&format!("INSERT INTO {} VALUES {}", crate::sql::SHARED, values.join(", "))).await?;
    }
    let engine = kalamd.engine().await?;
    let job_id = engine.trigger_flush(tarpc::context::current(), "bench".into(), "mixed".into()).await??;
    let plan =
        engine.begin_flush(kalam_rpc::transport::context_with_timeout(Duration::from_secs(120)), job_id).await??;
    kalamd.daemon.stop(Duration::from_secs(30));
    anyhow::ensure!(
        std::path::Path::new(&plan.checkpoint_path).exists(),
        "kalamd removed the checkpoint {} on shutdown",
        plan.checkpoint_path
    );
    Ok(plan)
}

pub async fn run(results: &mut Results, args: &Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let record_dir = dir.path().join("record");
    std::fs::create_dir_all(&record_dir)?;
    println!("kalam-flushd alone: preparing a checkpoint of {} rows with a lone kalamd …", args.rows);
    let plan = record(&record_dir, args.rows).await?;

    let flushd_dir = dir.path().join("flushd");
    let data = flushd_dir.join("data");
    let run_dir = data.join("run");
    let faults = flushd_dir.join("faults");
    std::fs::create_dir_all(&faults)?;
    let side = Arc::new(FlushSide { plan, jobs: Mutex::default(), failures: AtomicU64::new(0) });
    let engine = FakeEngine { live: None, flush: Some(side.clone()) };
    let server = tokio::spawn(kalam_rpc::serve_on!(bind(&socket_path(&run_dir, sockets::ENGINE))?, engine));
    let flushd =
        Daemon::start("kalam-flushd", &flushd_dir, &data, &[("KALAM_TEST_FAULTS_DIR", faults.display().to_string())])?;
    let flusher = wait_for(Duration::from_secs(60), "kalam-flushd serving", || async {
        let c = kalam_rpc::transport::connect_flusher(&run_dir).await.ok()?;
        c.health(tarpc::context::current()).await.ok().map(|_| c)
    })
    .await;
    let procs = Procs(vec![("kalam-flushd".into(), flushd.pid())]);

    let scenarios = [
        ("flushd.local", "local disk".to_owned(), 0, 0),
        ("flushd.slow_storage", format!("every file write waits {} ms", args.slow_ms), args.slow_ms, 0),
        ("flushd.failing_storage", format!("every {}th file write fails", args.fail_every), 0, args.fail_every),
    ];
    for (round, (name, what, slow_ms, fail_every)) in scenarios.into_iter().enumerate() {
        std::fs::write(faults.join("slow_writes_ms"), slow_ms.to_string())?;
        std::fs::write(faults.join("fail_writes"), fail_every.to_string())?;
        let ids: Vec<String> = (0..args.jobs).map(|j| format!("bench-{round}-{j}")).collect();
        side.lock().extend(ids.iter().map(|id| (id.clone(), Job::default())));
        let failures_before = side.failures.load(Ordering::Relaxed);
        let (peak, sampler) = sample_peak_rss(flushd.pid());
        let mark = procs.mark();
        let started = Instant::now();
        let deadline = started + Duration::from_secs(1800);
        loop {
            let pending = side.pending();
            if pending.is_empty() {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "{name}: {} jobs not committed after 30 min", pending.len());
            // One job of the table at a time, as kalamd allows (the fake's empty committed-file
            // list would let concurrent jobs delete each other's files). kalam-flushd ignores a
            // job it is already running, so asking again is how a failed attempt is retried
            // (kalamd does it after a back-off).
            flusher.run_job(tarpc::context::current(), pending[0].clone()).await??;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let elapsed = started.elapsed();
        sampler.abort();
        let (rows, attempts) = {
            let jobs = side.lock();
            let mine = ids.iter().filter_map(|id| jobs.get(id));
            mine.fold((0, 0), |(r, a), j| (r + j.rows.unwrap_or(0), a + j.attempts as u64))
        };
        anyhow::ensure!(rows == args.rows * args.jobs as u64, "{name}: committed {rows} rows");
        let m = Measurement::new(name, &format!("kalam-flushd alone, {what}"), "rows", rows, elapsed, &mut [])
            .extra("jobs", args.jobs as f64)
            .extra("retries", (attempts - args.jobs as u64) as f64)
            .extra("failed_attempts", (side.failures.load(Ordering::Relaxed) - failures_before) as f64)
            .extra("peak_rss_mb", peak.load(Ordering::Relaxed) as f64 / 1024.0);
        results.push(procs.attach(&mark, m));
    }
    flushd.stop(Duration::from_secs(30));
    server.abort();
    Ok(())
}
