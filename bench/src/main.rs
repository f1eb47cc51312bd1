//! kalam-bench: KalamDB's performance figures on this machine, each next to the ceiling it
//! is bounded by, measured in the same run.
//!
//! `kalam-bench` (no subcommand) starts a server of this build (supervisor and daemons, in a
//! temporary directory) and runs every benchmark: INSERTs, point SELECTs, scans, aggregates
//! and joins over buffered and flushed data, flushing, live queries, idle footprint. It
//! prints a table, writes the results as JSON (`--out`) and compares them with an earlier
//! results file (`--compare`). `kalam-bench lived|flushd|kalamd` runs one daemon by itself
//! against fakes of its RPC peers and reports that daemon's ceiling.
//!
//! The client runs on the same machine and takes CPU from the server; compare runs of the
//! same build profile (`scripts/bench.sh` builds release) on the same machine only.

mod baselines;
mod drivers;
mod live;
mod load;
mod procs;
mod report;
mod sql;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use kalam_e2e::Cluster;

use crate::procs::Procs;
use crate::report::{Measurement, Results};

#[derive(Debug, Parser)]
#[command(name = "kalam-bench", about = "KalamDB benchmarks and per-daemon stress drivers")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Small sizes: a smoke run that checks every benchmark works (figures are not meaningful).
    #[arg(long, global = true)]
    quick: bool,
    /// Write the results as JSON to this file.
    #[arg(long, global = true)]
    out: Option<PathBuf>,
    /// Compare with this earlier results file.
    #[arg(long, global = true)]
    compare: Option<PathBuf>,
    /// Benchmark groups of the full run, comma-separated: baselines, sql, live, idle.
    #[arg(long, value_delimiter = ',', default_value = "baselines,sql,live,idle")]
    only: Vec<Group>,
    /// Rows of the analytic (scan, aggregate, join, flush) benchmarks.
    #[arg(long)]
    rows: Option<u64>,
    /// Connections of the fan-out benchmark.
    #[arg(long)]
    fanout_conns: Option<usize>,
    /// Subscriptions per connection of the fan-out benchmark.
    #[arg(long)]
    fanout_subs: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Group {
    Baselines,
    Sql,
    Live,
    Idle,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// kalam-lived alone, fed a synthetic change log by a fake kalamd.
    Lived(drivers::lived::Args),
    /// kalam-flushd alone, given a prepared checkpoint and fast, slow or failing storage.
    Flushd(drivers::flushd::Args),
    /// kalamd alone over HTTP, without flushd and lived.
    Kalamd,
}

/// How much each benchmark does.
#[derive(Debug, Clone)]
pub struct Sizes {
    pub single_inserts: u64,
    pub concurrent_inserts: u64,
    /// 1,000-row INSERT statements.
    pub batch_inserts: u64,
    pub point_selects: u64,
    pub analytic_rows: u64,
    pub query_runs: usize,
    pub snapshots: u64,
    pub notify_inserts: u64,
    pub notify_subscribers: usize,
    pub resumes: u64,
    pub resume_missed: u64,
    pub fanout_conns: usize,
    pub fanout_subs: usize,
    pub idle_seconds: u64,
    pub baseline_requests: u64,
}

impl Sizes {
    fn new(cli: &Cli) -> Sizes {
        let full = Sizes {
            single_inserts: 2_000,
            concurrent_inserts: 20_000,
            batch_inserts: 20,
            point_selects: 2_000,
            analytic_rows: 200_000,
            query_runs: 10,
            snapshots: 50,
            notify_inserts: 200,
            notify_subscribers: 1_000,
            resumes: 20,
            resume_missed: 100,
            fanout_conns: 1_000,
            fanout_subs: 100,
            idle_seconds: 5,
            baseline_requests: 20_000,
        };
        let mut sizes = if cli.quick {
            Sizes {
                single_inserts: 100,
                concurrent_inserts: 640,
                batch_inserts: 3,
                point_selects: 100,
                analytic_rows: 5_000,
                query_runs: 3,
                snapshots: 5,
                notify_inserts: 20,
                notify_subscribers: 100,
                resumes: 3,
                resume_missed: 10,
                fanout_conns: 20,
                fanout_subs: 10,
                idle_seconds: 1,
                baseline_requests: 500,
            }
        } else {
            full
        };
        sizes.analytic_rows = cli.rows.unwrap_or(sizes.analytic_rows).max(1);
        sizes.fanout_conns = cli.fanout_conns.unwrap_or(sizes.fanout_conns).max(1);
        sizes.fanout_subs = cli.fanout_subs.unwrap_or(sizes.fanout_subs).max(1);
        sizes
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(old) = &cli.compare {
        // Read it first: a typo should not cost a whole run.
        Results::read(old)?;
    }
    let sizes = Sizes::new(&cli);
    let mut results = Results::new(cli.quick);
    match &cli.command {
        None => full_run(&mut results, &cli.only, &sizes).await?,
        Some(Command::Lived(args)) => {
            let mut args = args.clone();
            if cli.quick {
                (args.conns, args.subs, args.rate, args.seconds, args.saturate_seconds) = (20, 5, 200, 2, 2);
            }
            drivers::lived::run(&mut results, &args).await?
        }
        Some(Command::Flushd(args)) => {
            let mut args = args.clone();
            if cli.quick {
                (args.rows, args.jobs, args.slow_ms) = (2_000, 2, 50);
            }
            drivers::flushd::run(&mut results, &args).await?
        }
        Some(Command::Kalamd) => {
            results.prefix = "kalamd_alone.".into();
            drivers::kalamd::run(&mut results, &sizes).await?
        }
    }
    println!("\n{}", results.table());
    if let Some(path) = &cli.out {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        results.write(path)?;
        println!("results written to {}", path.display());
    }
    if let Some(old) = &cli.compare {
        print!("{}", results.compare(&Results::read(old)?));
    }
    Ok(())
}

async fn full_run(results: &mut Results, groups: &[Group], sizes: &Sizes) -> anyhow::Result<()> {
    if groups.contains(&Group::Baselines) {
        println!("baselines …");
        baselines::axum_hello(results, sizes.baseline_requests, &[1, 64]).await?;
        baselines::rocksdb_puts(results, sizes.single_inserts * 5, sizes.batch_inserts * 5)?;
    }
    if !groups.iter().any(|g| matches!(g, Group::Sql | Group::Live | Group::Idle)) {
        return Ok(());
    }
    let cluster = Cluster::start_with_config(&live::server_config(sizes)).await;
    let mut procs = Procs(vec![("kalam-supervisor".into(), cluster.supervisor_pid())]);
    for daemon in ["kalamd", "kalam-flushd", "kalam-lived"] {
        procs.0.push((daemon.into(), cluster.running_pid(daemon).await));
    }
    if groups.contains(&Group::Idle) {
        idle(results, &procs, "idle.start", "idle after start", sizes.idle_seconds).await;
    }
    if groups.contains(&Group::Sql) {
        println!("SQL over HTTP …");
        sql::run(results, &cluster.url(), &procs, sizes, Some(&cluster.data_dir())).await?;
        for (name, baselines) in [
            ("insert.single.c1", &["baseline.axum_hello.c1", "baseline.rocksdb.single"][..]),
            ("insert.single.c64", &["baseline.axum_hello.c64", "baseline.rocksdb.single"]),
            ("insert.batch1000", &["baseline.rocksdb.batch1000"]),
            ("insert.load.c4", &["baseline.rocksdb.batch1000"]),
            ("select.point.text", &["baseline.axum_hello.c1"]),
            ("select.point.param", &["baseline.axum_hello.c1"]),
        ] {
            results.relate(name, baselines);
        }
    }
    if groups.contains(&Group::Live) {
        println!("live queries …");
        let lived = procs.0.iter().find(|(n, _)| n == "kalam-lived").map_or(0, |(_, pid)| *pid);
        live::run(results, &cluster.url(), &procs, lived, sizes).await?;
    }
    if groups.contains(&Group::Idle) {
        idle(results, &procs, "idle.after", "idle after the run", sizes.idle_seconds).await;
    }
    Ok(())
}

/// Memory and CPU of every process over `seconds` without load (after a settling second).
async fn idle(results: &mut Results, procs: &Procs, name: &str, title: &str, seconds: u64) {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mark = procs.mark();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let m = Measurement::new(name, title, "s", 0, Duration::from_secs(seconds), &mut []);
    results.push(procs.attach(&mark, m));
}
