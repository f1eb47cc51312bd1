//! kalam-flush-bench: flush throughput and analytic query speed over flushed data, side by side
//! with plain DataFusion. It starts its own server (supervisor and daemons from the same build)
//! in a temporary directory, loads `--rows` rows of mixed types (BIGINT, TEXT, DOUBLE, INT,
//! BOOLEAN, TIMESTAMP) into a SHARED table with multi-row INSERTs from concurrent clients, flushes
//! them with `FLUSH TABLE` and reports rows/s and MB/s (MB = 10^6 bytes of Parquet on disk) from
//! the job's own `duration_ms`, its `started_at → completed_at` and the wall time seen by the
//! client. Then it times `count(*)`, a filtered scan, a filtered aggregate and a GROUP BY through
//! KalamDB's HTTP API and through an in-process `SessionContext` reading the same Parquet files,
//! one unreported warm-up run then `--runs` runs each, and prints medians, minimums and the ratio.
//! KalamDB times include HTTP, JSON encoding/decoding and its merge of buffer and Parquet; the
//! DataFusion times are plan + collect of Arrow batches. Compare builds of the same profile only.

use std::path::Path;
use std::time::{Duration, Instant};

use datafusion::prelude::{ParquetReadOptions, SessionContext};
use kalam_e2e::{Cluster, count, files, flush, job, rows, wait_for};
use kalam_link::KalamLinkClient;
use serde_json::Value as Json;

const TABLE: &str = "bench.mixed";
/// Concurrent HTTP clients during the load.
const LOAD_TASKS: u64 = 4;
/// Compared queries: label and SQL, `{t}` standing for the table name on each side.
const QUERIES: [(&str, &str); 4] = [
    ("count(*)", "SELECT count(*) AS n FROM {t}"),
    ("filtered scan, rows out", "SELECT id, amount FROM {t} WHERE amount > 950 AND active = true"),
    ("filtered count+sum", "SELECT count(*) AS n, sum(amount) AS s FROM {t} WHERE amount > 950 AND active = true"),
    ("GROUP BY user_name", "SELECT user_name, count(*) AS n, sum(amount) AS s FROM {t} GROUP BY user_name"),
];
/// Note text; each row takes a prefix of 22 to 51 bytes of it.
const NOTE: &str = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod";
/// 2024-01-01T00:00:00Z in microseconds; row `i` is created `i` seconds later.
const CREATED_BASE_US: u64 = 1_704_067_200_000_000;

struct Args {
    rows: u64,
    batch: u64,
    runs: usize,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args { rows: 1_000_000, batch: 1000, runs: 5 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| anyhow::anyhow!("{flag} needs a value"));
        match flag.as_str() {
            "--rows" => args.rows = value()?.parse()?,
            "--batch" => args.batch = value()?.parse()?,
            "--runs" => args.runs = value()?.parse()?,
            other => anyhow::bail!("unknown flag {other} (use --rows N --batch B --runs R)"),
        }
    }
    anyhow::ensure!(args.rows > 0 && args.batch > 0 && args.runs > 0, "--rows, --batch and --runs must be > 0");
    Ok(args)
}

/// SplitMix64: a fixed pseudo-random value per row id, so every run loads the same data.
fn mix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One `(…)` tuple: 1000 user names, amounts in [0, 1000), notes of 30 to 59 bytes.
fn row_values(i: u64) -> String {
    let h = mix(i);
    let amount = ((h >> 10) % 100_000) as f64 / 100.0;
    let note = &NOTE[..22 + (h >> 40) as usize % 30];
    let created = CREATED_BASE_US + i * 1_000_000;
    format!(
        "({i}, 'user_{:04}', {amount}, {}, {}, {created}, '{i:07} {note}')",
        h % 1000,
        (h >> 30) % 500,
        (h >> 50) & 1 == 1
    )
}

/// Inserts ids `0..rows` in statements of `batch` rows from [`LOAD_TASKS`] concurrent clients.
async fn load(client: &KalamLinkClient, rows: u64, batch: u64) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..LOAD_TASKS {
        let client = client.clone();
        tasks.spawn(async move {
            let mut first = task * batch;
            while first < rows {
                let values: Vec<String> = (first..(first + batch).min(rows)).map(row_values).collect();
                client.query(&format!("INSERT INTO {TABLE} VALUES {}", values.join(", "))).await?;
                first += LOAD_TASKS * batch;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(started.elapsed())
}

/// Flush timings of one job, in ms.
struct FlushTimes {
    wall_ms: f64,
    job_ms: f64,
    running_ms: f64,
    records: u64,
}

/// `FLUSH TABLE`, waits for the job to complete and reads its timings from `system.jobs`.
async fn flush_table(client: &KalamLinkClient) -> anyhow::Result<FlushTimes> {
    let started = Instant::now();
    let job_id = flush(client, TABLE).await;
    let status = wait_for(Duration::from_secs(1800), &format!("flush job {job_id}"), || async {
        let status = job(client, &job_id).await["status"].as_str().unwrap_or_default().to_owned();
        matches!(status.as_str(), "completed" | "failed" | "cancelled").then_some(status)
    })
    .await;
    let wall_ms = started.elapsed().as_secs_f64() * 1000.0;
    anyhow::ensure!(status == "completed", "flush job {job_id} ended {status}");
    let sql = format!(
        "SELECT result, CAST(completed_at AS BIGINT) - CAST(started_at AS BIGINT) AS running_us \
         FROM system.jobs WHERE job_id = '{job_id}'"
    );
    let row = rows(client, &sql).await.into_iter().next().ok_or_else(|| anyhow::anyhow!("job {job_id} missing"))?;
    let result: Json = serde_json::from_str(row["result"].as_str().unwrap_or("{}"))?;
    Ok(FlushTimes {
        wall_ms,
        job_ms: result["duration_ms"].as_f64().unwrap_or(f64::NAN),
        running_ms: row["running_us"].as_f64().unwrap_or(f64::NAN) / 1000.0,
        records: result["records_flushed"].as_u64().unwrap_or(0),
    })
}

fn report_flush(what: &str, records: u64, bytes: u64, ms: f64) {
    let (secs, mb) = (ms / 1000.0, bytes as f64 / 1e6);
    println!(
        "{what:<38} {records:>9} rows {mb:>7.1} MB in {ms:>8.1} ms  {:>9.0} rows/s {:>7.1} MB/s",
        records as f64 / secs,
        mb / secs
    );
}

/// Median and minimum of `runs` timed calls (after one warm-up call), in ms, and the rows
/// the last call returned.
async fn time<F, Fut>(runs: usize, mut run: F) -> anyhow::Result<(f64, f64, usize)>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<usize>>,
{
    let mut out = run().await?;
    let mut ms = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        out = run().await?;
        ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    Ok((ms[ms.len() / 2], ms[0], out))
}

/// A `SessionContext` with the table's Parquet directory registered as `mixed`.
async fn datafusion_context(dir: &Path) -> anyhow::Result<SessionContext> {
    let ctx = SessionContext::new();
    ctx.register_parquet("mixed", format!("{}/", dir.display()), ParquetReadOptions::default()).await?;
    Ok(ctx)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let cluster = Cluster::start().await;
    let client = KalamLinkClient::new(cluster.url());
    // ROW_THRESHOLD is at most 999 999, so the table has only a (day-long) time trigger and
    // nothing is flushed before FLUSH TABLE.
    client
        .query(&format!(
            "CREATE NAMESPACE bench; CREATE SHARED TABLE {TABLE} (id BIGINT PRIMARY KEY, user_name TEXT, \
             amount DOUBLE, qty INT, active BOOLEAN, created TIMESTAMP, note TEXT) FLUSH INTERVAL 86399s"
        ))
        .await?;
    let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
    println!(
        "{} rows, INSERTs of {} rows from {LOAD_TASKS} clients, {} runs per query ({profile} build)\n",
        args.rows, args.batch, args.runs
    );

    let elapsed = load(&client, args.rows, args.batch).await?;
    let stats = rows(&client, &format!("SHOW TABLE STATS {TABLE}")).await;
    anyhow::ensure!(stats[0]["buffered_rows"].as_u64() == Some(args.rows), "not all rows buffered: {stats:?}");
    println!(
        "{:<38} {:>9} rows in {:>8.1} ms  {:>9.0} rows/s",
        "load (multi-row INSERT over HTTP)",
        args.rows,
        elapsed.as_secs_f64() * 1000.0,
        args.rows as f64 / elapsed.as_secs_f64()
    );

    let flushed = flush_table(&client).await?;
    anyhow::ensure!(flushed.records == args.rows, "flushed {} of {} rows", flushed.records, args.rows);
    let dir = cluster.data_dir().join("storage/bench/shared/mixed");
    let parquet = files(&dir, &|name| name.ends_with(".parquet") && !name.starts_with('.'));
    let bytes = parquet.iter().map(|f| std::fs::metadata(f).map(|m| m.len())).sum::<Result<u64, _>>()?;
    report_flush("flush (job result.duration_ms)", flushed.records, bytes, flushed.job_ms);
    report_flush("flush (job started_at → completed_at)", flushed.records, bytes, flushed.running_ms);
    report_flush("flush (wall: FLUSH TABLE → completed)", flushed.records, bytes, flushed.wall_ms);
    println!("  {} Parquet file(s), {bytes} bytes, {:.1} bytes/row\n", parquet.len(), bytes as f64 / args.rows as f64);

    let ctx = datafusion_context(&dir).await?;
    let df_count = ctx.sql("SELECT count(*) FROM mixed").await?.collect().await?;
    let df_count =
        df_count[0].column(0).as_any().downcast_ref::<datafusion::arrow::array::Int64Array>().map(|a| a.value(0));
    anyhow::ensure!(df_count == Some(count(&client, TABLE).await), "KalamDB and DataFusion counts differ");

    println!(
        "{:<24} {:>14} {:>14} {:>14} {:>14} {:>7} {:>15}",
        "query", "KalamDB med", "KalamDB min", "DataFusion med", "DataFusion min", "ratio", "rows out K / DF"
    );
    for (label, sql) in QUERIES {
        let (client, ctx) = (&client, &ctx);
        let kalam_sql = sql.replace("{t}", TABLE);
        let kalam_sql = kalam_sql.as_str();
        let (k_med, k_min, k_rows) =
            time(args.runs, move || async move { Ok(rows(client, kalam_sql).await.len()) }).await?;
        let df_sql = sql.replace("{t}", "mixed");
        let df_sql = df_sql.as_str();
        let (d_med, d_min, d_rows) = time(args.runs, move || async move {
            let batches = ctx.sql(df_sql).await?.collect().await?;
            Ok(batches.iter().map(|b| b.num_rows()).sum())
        })
        .await?;
        println!(
            "{label:<24} {k_med:>11.1} ms {k_min:>11.1} ms {d_med:>11.1} ms {d_min:>11.1} ms {:>6.1}x {:>15}",
            k_med / d_med,
            format!("{k_rows} / {d_rows}")
        );
    }
    for (label, sql) in QUERIES {
        println!("  {label}: {}", sql.replace("{t}", TABLE));
    }
    Ok(())
}
