//! Closed-loop load: `concurrency` tasks take operation numbers from a shared counter until
//! `total` are done, each timed from send to answer.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Runs operations `0..total` over `concurrency` tasks; returns the wall time and every
/// operation's latency. The first error stops the run.
pub async fn closed_loop<F, Fut>(concurrency: usize, total: u64, op: F) -> anyhow::Result<(Duration, Vec<Duration>)>
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..concurrency.max(1) {
        let (op, next) = (op.clone(), next.clone());
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return anyhow::Ok(latencies);
                }
                let sent = Instant::now();
                op(worker, i).await?;
                latencies.push(sent.elapsed());
            }
        });
    }
    let mut all = Vec::with_capacity(total as usize);
    while let Some(done) = tasks.join_next().await {
        all.extend(done??);
    }
    Ok((started.elapsed(), all))
}

/// Runs `op` once unreported, then `runs` times; returns the total time and each run's time.
pub async fn repeat<F, Fut>(runs: usize, mut op: F) -> anyhow::Result<(Duration, Vec<Duration>)>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    op().await?;
    let mut times = Vec::with_capacity(runs);
    let started = Instant::now();
    for _ in 0..runs {
        let sent = Instant::now();
        op().await?;
        times.push(sent.elapsed());
    }
    Ok((started.elapsed(), times))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_operation_runs_once_and_an_error_stops_the_run() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = seen.clone();
        let (_, latencies) = closed_loop(8, 100, move |_, i| {
            let s = s.clone();
            async move {
                s.lock().unwrap().push(i);
                Ok(())
            }
        })
        .await
        .unwrap();
        let mut seen = seen.lock().unwrap().clone();
        seen.sort();
        assert_eq!(seen, (0..100).collect::<Vec<_>>());
        assert_eq!(latencies.len(), 100);
        let err = closed_loop(2, 10, |_, i| async move {
            anyhow::ensure!(i != 5, "op 5 failed");
            Ok(())
        })
        .await;
        assert!(err.unwrap_err().to_string().contains("op 5 failed"));
    }
}
