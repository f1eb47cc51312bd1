//! SQL over HTTP: single-row and multi-row INSERTs, point SELECTs (text and parametrized),
//! and a filtered scan, an aggregate and a join over buffered and over flushed data, next to
//! DataFusion reading the same Parquet files.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use datafusion::prelude::{ParquetReadOptions, SessionContext};
use kalam_e2e::{files, job, wait_for};
use kalam_link::KalamLinkClient;
use serde_json::Value as Json;

use crate::Sizes;
use crate::load::{closed_loop, repeat};
use crate::procs::Procs;
use crate::report::{Measurement, Results};

/// Users (and so partitions and HTTP clients) of the concurrent INSERT benchmark.
const CONCURRENCY: usize = 64;
pub const SHARED: &str = "bench.mixed";
const DIM: &str = "bench.users";
/// Compared queries: name, label and SQL with `{t}` for the fact table and `{u}` for the
/// 1,000-row dimension table.
pub const QUERIES: [(&str, &str, &str); 3] = [
    ("scan", "filtered scan", "SELECT id, amount FROM {t} WHERE amount > 990 AND active = true"),
    (
        "aggregate",
        "filtered GROUP BY",
        "SELECT user_name, count(*) AS n, sum(amount) AS s FROM {t} WHERE qty < 250 GROUP BY user_name",
    ),
    (
        "join",
        "join + GROUP BY",
        "SELECT u.tier, count(*) AS n, sum(m.amount) AS s FROM {t} m JOIN {u} u ON m.user_name = u.user_name \
         WHERE m.active = true GROUP BY u.tier",
    ),
];
const NOTE: &str = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod";
/// 2024-01-01T00:00:00Z in microseconds.
const CREATED_BASE_US: u64 = 1_704_067_200_000_000;

/// SplitMix64: a fixed pseudo-random value per row id, so every run loads the same data.
fn mix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One fact row: 1,000 user names, amounts in [0, 1000), notes of 22 to 51 bytes.
pub fn fact_row(i: u64) -> String {
    let h = mix(i);
    let amount = ((h >> 10) % 100_000) as f64 / 100.0;
    let note = &NOTE[..22 + (h >> 40) as usize % 30];
    format!(
        "({i}, 'user_{:04}', {amount}, {}, {}, {}, '{i:07} {note}')",
        h % 1000,
        (h >> 30) % 500,
        (h >> 50) & 1 == 1,
        CREATED_BASE_US + i * 1_000_000
    )
}

/// Rows of the first result of `sql`.
pub async fn query_rows(client: &KalamLinkClient, sql: &str) -> anyhow::Result<Vec<serde_json::Map<String, Json>>> {
    let resp = client.execute_query(sql).await?;
    let first = resp.results.into_iter().next().ok_or_else(|| anyhow::anyhow!("no result for {sql}"))?;
    Ok(first.rows.unwrap_or_default())
}

/// INSERTs, point SELECTs and the analytic queries. `url` serves SQL; `data_dir` is the
/// server's data directory: with it the tables are flushed, queried again and compared with
/// DataFusion over their Parquet files; without it (kalamd alone) only buffered data is
/// queried.
pub async fn run(
    results: &mut Results,
    url: &str,
    procs: &Procs,
    sizes: &Sizes,
    data_dir: Option<&Path>,
) -> anyhow::Result<()> {
    let admin = KalamLinkClient::builder().base_url(url).timeout(Duration::from_secs(600)).build()?;
    admin
        .execute_query(
            "CREATE NAMESPACE IF NOT EXISTS bench; \
             CREATE USER TABLE IF NOT EXISTS bench.t (id BIGINT PRIMARY KEY, payload TEXT)",
        )
        .await?;
    let users: Vec<KalamLinkClient> =
        (0..CONCURRENCY).map(|u| admin.clone().with_user(format!("b{u}"))).collect::<Result<_, _>>()?;
    inserts(results, &users, procs, sizes).await?;
    point_selects(results, &users[0], procs, sizes).await?;
    analytic(results, &admin, procs, sizes, data_dir).await
}

async fn inserts(results: &mut Results, users: &[KalamLinkClient], procs: &Procs, sizes: &Sizes) -> anyhow::Result<()> {
    for (concurrency, total, first_id) in
        [(1, sizes.single_inserts, 0), (CONCURRENCY, sizes.concurrent_inserts, 1 << 20)]
    {
        let clients = users.to_vec();
        let mark = procs.mark();
        let (elapsed, mut lat) = closed_loop(concurrency, total, move |worker, i| {
            let client = clients[worker].clone();
            async move {
                let id = first_id + i;
                client
                    .execute_query(&format!("INSERT INTO bench.t (id, payload) VALUES ({id}, 'row {id} payload')"))
                    .await?;
                Ok(())
            }
        })
        .await?;
        let m = Measurement::new(
            &format!("insert.single.c{concurrency}"),
            &format!("single-row INSERT, concurrency {concurrency}"),
            "rows",
            total,
            elapsed,
            &mut lat,
        );
        results.push(procs.attach(&mark, m));
    }
    let client = users[0].clone();
    let mark = procs.mark();
    let (elapsed, mut lat) = closed_loop(1, sizes.batch_inserts, move |_, i| {
        let client = client.clone();
        async move {
            let first = (1 << 30) + i * 1000;
            let values: Vec<String> = (first..first + 1000).map(|id| format!("({id}, 'bulk row {id}')")).collect();
            client.execute_query(&format!("INSERT INTO bench.t (id, payload) VALUES {}", values.join(", "))).await?;
            Ok(())
        }
    })
    .await?;
    let m = Measurement::new(
        "insert.batch1000",
        "1,000-row INSERT statements",
        "rows",
        sizes.batch_inserts * 1000,
        elapsed,
        &mut lat,
    );
    results.push(procs.attach(&mark, m));
    Ok(())
}

async fn point_selects(
    results: &mut Results,
    client: &KalamLinkClient,
    procs: &Procs,
    sizes: &Sizes,
) -> anyhow::Result<()> {
    // User b0 holds ids 0..single_inserts from the concurrency-1 INSERTs.
    let keys = sizes.single_inserts.max(1);
    for (name, title, parametrized) in [
        ("select.point.text", "point SELECT by primary key, SQL text (plan-cache miss)", false),
        ("select.point.param", "point SELECT by primary key, $1 parameter (plan-cache hit)", true),
    ] {
        let client = client.clone();
        let mark = procs.mark();
        let (elapsed, mut lat) = closed_loop(1, sizes.point_selects, move |_, i| {
            let client = client.clone();
            async move {
                let id = (i * 7919) % keys;
                let resp = if parametrized {
                    client
                        .execute_query_with_params("SELECT payload FROM bench.t WHERE id = $1", vec![id.into()])
                        .await?
                } else {
                    client.execute_query(&format!("SELECT payload FROM bench.t WHERE id = {id}")).await?
                };
                let found = resp.results.first().and_then(|r| r.rows.as_ref()).map_or(0, Vec::len);
                anyhow::ensure!(found == 1, "id {id}: {found} rows");
                Ok(())
            }
        })
        .await?;
        let m = Measurement::new(name, title, "queries", sizes.point_selects, elapsed, &mut lat);
        results.push(procs.attach(&mark, m));
    }
    Ok(())
}

/// Loads the SHARED fact table and its dimension table, queries them buffered, flushes
/// (measuring the flush), queries them flushed, then runs the same queries in DataFusion.
async fn analytic(
    results: &mut Results,
    admin: &KalamLinkClient,
    procs: &Procs,
    sizes: &Sizes,
    data_dir: Option<&Path>,
) -> anyhow::Result<()> {
    // The row threshold stays above the load, so nothing is flushed before FLUSH TABLE.
    admin
        .execute_query(&format!(
            "CREATE SHARED TABLE {SHARED} (id BIGINT PRIMARY KEY, user_name TEXT, amount DOUBLE, qty INT, \
             active BOOLEAN, created TIMESTAMP, note TEXT) FLUSH INTERVAL 86399s; \
             CREATE SHARED TABLE {DIM} (user_name TEXT PRIMARY KEY, tier TEXT) FLUSH INTERVAL 86399s"
        ))
        .await?;
    let dims: Vec<String> = (0..1000).map(|u| format!("('user_{u:04}', 'tier_{}')", u % 7)).collect();
    admin.execute_query(&format!("INSERT INTO {DIM} VALUES {}", dims.join(", "))).await?;

    let rows = sizes.analytic_rows;
    let batches = rows.div_ceil(1000);
    let client = admin.clone();
    let mark = procs.mark();
    let (elapsed, mut lat) = closed_loop(4, batches, move |_, b| {
        let client = client.clone();
        async move {
            let values: Vec<String> = (b * 1000..((b + 1) * 1000).min(rows)).map(fact_row).collect();
            client.execute_query(&format!("INSERT INTO {SHARED} VALUES {}", values.join(", "))).await?;
            Ok(())
        }
    })
    .await?;
    let m = Measurement::new(
        "insert.load.c4",
        "1,000-row INSERTs of mixed types, 4 clients",
        "rows",
        rows,
        elapsed,
        &mut lat,
    );
    results.push(procs.attach(&mark, m));

    let mut kalam_rows = Vec::new();
    for (name, label, sql) in QUERIES {
        let sql = sql.replace("{t}", SHARED).replace("{u}", DIM);
        let (m, n) = time_query(
            admin,
            &format!("query.{name}.buffered"),
            &format!("{label}, {rows} buffered rows"),
            &sql,
            sizes.query_runs,
            procs,
        )
        .await?;
        results.push(m);
        kalam_rows.push(n);
    }

    let Some(data_dir) = data_dir else { return Ok(()) };
    let mark = procs.mark();
    let flushed = flush_table(admin, SHARED).await?;
    anyhow::ensure!(flushed.records == rows, "flushed {} of {rows} rows", flushed.records);
    let dir = data_dir.join("storage/bench/shared");
    let bytes: u64 =
        parquet_files(&dir.join("mixed")).iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum();
    let m = Measurement::new(
        "flush.rows",
        "FLUSH TABLE of the fact table (job duration)",
        "rows",
        rows,
        Duration::from_secs_f64(flushed.job_ms / 1e3),
        &mut [],
    )
    .extra("MB_per_s", bytes as f64 / 1e6 / (flushed.job_ms / 1e3))
    .extra("wall_ms", flushed.wall_ms)
    .extra("parquet_bytes_per_row", bytes as f64 / rows as f64);
    results.push(procs.attach(&mark, m));
    flush_table(admin, DIM).await?;

    for (name, label, sql) in QUERIES {
        let sql = sql.replace("{t}", SHARED).replace("{u}", DIM);
        let (m, _) = time_query(
            admin,
            &format!("query.{name}.flushed"),
            &format!("{label}, {rows} flushed rows"),
            &sql,
            sizes.query_runs,
            procs,
        )
        .await?;
        results.push(m);
    }

    let ctx = SessionContext::new();
    ctx.register_parquet("mixed", format!("{}/", dir.join("mixed").display()), ParquetReadOptions::default()).await?;
    ctx.register_parquet("users", format!("{}/", dir.join("users").display()), ParquetReadOptions::default()).await?;
    for ((name, label, sql), expected) in QUERIES.iter().zip(kalam_rows) {
        let sql = sql.replace("{t}", "mixed").replace("{u}", "users");
        let out = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (ctx, o) = (&ctx, out.clone());
        let (elapsed, mut lat) = repeat(sizes.query_runs, || {
            let (sql, o) = (sql.clone(), o.clone());
            async move {
                let batches = ctx.sql(&sql).await?.collect().await?;
                o.store(batches.iter().map(|b| b.num_rows()).sum(), std::sync::atomic::Ordering::Relaxed);
                Ok(())
            }
        })
        .await?;
        let got = out.load(std::sync::atomic::Ordering::Relaxed);
        anyhow::ensure!(got == expected, "{name}: DataFusion returned {got} rows, KalamDB {expected}");
        results.push(Measurement::new(
            &format!("baseline.datafusion.{name}"),
            &format!("{label} in DataFusion over the same Parquet (query ceiling)"),
            "queries",
            sizes.query_runs as u64,
            elapsed,
            &mut lat,
        ));
        for state in ["buffered", "flushed"] {
            results.relate(&format!("query.{name}.{state}"), &[&format!("baseline.datafusion.{name}")]);
        }
    }
    Ok(())
}

fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    files(dir, &|name| name.ends_with(".parquet") && !name.starts_with('.')).into_iter().map(PathBuf::from).collect()
}

/// One unreported warm-up, then `runs` timed runs; returns the measurement and the rows out.
async fn time_query(
    client: &KalamLinkClient,
    name: &str,
    title: &str,
    sql: &str,
    runs: usize,
    procs: &Procs,
) -> anyhow::Result<(Measurement, usize)> {
    let out = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mark = procs.mark();
    let o = out.clone();
    let (elapsed, mut lat) = repeat(runs, || {
        let o = o.clone();
        async move {
            o.store(query_rows(client, sql).await?.len(), std::sync::atomic::Ordering::Relaxed);
            Ok(())
        }
    })
    .await?;
    let n = out.load(std::sync::atomic::Ordering::Relaxed);
    let m = Measurement::new(name, title, "queries", runs as u64, elapsed, &mut lat).extra("rows_out", n as f64);
    Ok((procs.attach(&mark, m), n))
}

/// Timings of one flush job, in ms, and the rows it moved.
pub struct FlushTimes {
    pub wall_ms: f64,
    pub job_ms: f64,
    pub records: u64,
}

/// `FLUSH TABLE`, then waits for the job and reads its own `duration_ms`.
pub async fn flush_table(client: &KalamLinkClient, table: &str) -> anyhow::Result<FlushTimes> {
    let started = Instant::now();
    let job_id = kalam_e2e::flush(client, table).await;
    let status = wait_for(Duration::from_secs(1800), &format!("flush job {job_id}"), || async {
        let status = job(client, &job_id).await.get("status").and_then(Json::as_str).unwrap_or_default().to_owned();
        matches!(status.as_str(), "completed" | "failed" | "cancelled").then_some(status)
    })
    .await;
    let wall_ms = started.elapsed().as_secs_f64() * 1e3;
    anyhow::ensure!(status == "completed", "flush job {job_id} ended {status}");
    let record = query_rows(client, &format!("SELECT result FROM system.jobs WHERE job_id = '{job_id}'")).await?;
    // `result` is JSON text in system.jobs; accept it already parsed too.
    let result: Json = match record.first().and_then(|r| r.get("result")) {
        Some(Json::String(text)) => serde_json::from_str(text)?,
        Some(other) => other.clone(),
        None => Json::Null,
    };
    Ok(FlushTimes {
        wall_ms,
        job_ms: result["duration_ms"].as_f64().unwrap_or(wall_ms),
        records: result["records_flushed"].as_u64().unwrap_or(0),
    })
}
