//! kalamd alone over HTTP: no flushd and no lived, so every cycle goes to SQL. The same INSERT,
//! point-SELECT and buffered-query benchmarks as the full run, without flushing.

use crate::Sizes;
use crate::procs::Procs;
use crate::report::Results;

use super::LoneKalamd;

pub async fn run(results: &mut Results, sizes: &Sizes) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let kalamd = LoneKalamd::start(dir.path(), "[rate_limit]\nmax_queries_per_sec = 1000000\n").await?;
    let procs = Procs(vec![("kalamd".into(), kalamd.daemon.pid())]);
    crate::sql::run(results, &kalamd.url, &procs, sizes, None).await?;
    kalamd.daemon.stop(std::time::Duration::from_secs(30));
    Ok(())
}
