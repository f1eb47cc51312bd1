//! kalam-bench: end-to-end throughput and latency numbers for the hot paths (insert, flush,
//! insert after flush, point queries, live delivery). It starts its own server (supervisor and
//! daemons from the same build) in a temporary directory unless `--url` is given, and prints
//! one line per measurement. Compare builds of the same profile only.

use std::time::{Duration, Instant};

use kalam_e2e::{Cluster, wait_for};
use kalam_link::KalamLinkClient;

struct Args {
    rows: usize,
    batch: usize,
    users: usize,
    url: Option<String>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args { rows: 20_000, batch: 100, users: 4, url: None };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| anyhow::anyhow!("{flag} needs a value"));
        match flag.as_str() {
            "--rows" => args.rows = value()?.parse()?,
            "--batch" => args.batch = value()?.parse()?,
            "--users" => args.users = value()?.parse()?,
            "--url" => args.url = Some(value()?),
            other => anyhow::bail!("unknown flag {other} (use --rows N --batch B --users U --url URL)"),
        }
    }
    anyhow::ensure!(args.rows > 0 && args.batch > 0 && args.users > 0, "--rows, --batch and --users must be > 0");
    Ok(args)
}

fn report(what: &str, count: usize, elapsed: Duration) {
    let per_sec = count as f64 / elapsed.as_secs_f64();
    println!("{what:<40} {count:>8} in {:>8.1} ms  {per_sec:>10.0}/s", elapsed.as_secs_f64() * 1000.0);
}

async fn insert_rows(clients: &[KalamLinkClient], first_id: usize, args: &Args) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let per_user = args.rows / args.users;
    for (u, client) in clients.iter().enumerate() {
        let mut id = first_id;
        while id < first_id + per_user {
            let end = (id + args.batch).min(first_id + per_user);
            let values: Vec<String> = (id..end).map(|i| format!("({i}, 'user {u} row {i} payload')")).collect();
            client.query(&format!("INSERT INTO bench.t (id, payload) VALUES {}", values.join(", "))).await?;
            id = end;
        }
    }
    Ok(started.elapsed())
}

fn report_latency(what: &str, latencies: &mut [Duration]) {
    latencies.sort();
    println!(
        "{what:<40} {:>8} p50 {:>6.2} ms  p99 {:>6.2} ms",
        latencies.len(),
        percentile(latencies, 0.5).as_secs_f64() * 1000.0,
        percentile(latencies, 0.99).as_secs_f64() * 1000.0
    );
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let cluster = match &args.url {
        Some(_) => None,
        None => Some(Cluster::start().await),
    };
    let url = args.url.clone().unwrap_or_else(|| cluster.as_ref().map(Cluster::url).unwrap_or_default());
    let admin = KalamLinkClient::new(url.clone());
    admin.query("CREATE NAMESPACE IF NOT EXISTS bench; CREATE USER TABLE IF NOT EXISTS bench.t (id BIGINT PRIMARY KEY, payload TEXT)").await?;
    let clients: Vec<_> =
        (0..args.users).map(|u| admin.clone().with_user(format!("bench{u}")).expect("acting user")).collect();
    let total = args.rows / args.users * args.users;

    report(&format!("insert (batches of {})", args.batch), total, insert_rows(&clients, 0, &args).await?);

    let started = Instant::now();
    let resp = clients[0].query("FLUSH TABLE bench.t").await?;
    let job =
        resp.results[0].rows.as_ref().and_then(|r| r[0]["job_id"].as_str().map(str::to_owned)).unwrap_or_default();
    let sql = format!("SELECT status FROM system.jobs WHERE job_id = '{job}'");
    wait_for(Duration::from_secs(600), "flush", || async {
        let r = admin.query(&sql).await.ok()?;
        (r.results[0].rows.as_ref()?.first()?["status"] == "completed").then_some(())
    })
    .await;
    report("flush (rows moved to Parquet)", total, started.elapsed());

    report("insert after flush (new keys)", total, insert_rows(&clients, 1_000_000, &args).await?);

    let samples = 500;
    let mut latencies = Vec::with_capacity(samples);
    for i in 0..samples {
        let started = Instant::now();
        clients[i % args.users].query(&format!("SELECT payload FROM bench.t WHERE id = {}", i * 7 % total)).await?;
        latencies.push(started.elapsed());
    }
    report_latency("point SELECT by primary key", &mut latencies);

    // The plan cache: the same shapes with a new key each time, as text (a miss every time)
    // and parametrized (a hit after the first), interleaved so load drift hits both alike.
    let (mut text, mut param) = (Vec::with_capacity(samples), Vec::with_capacity(samples));
    let (mut agg_text, mut agg_param) = (Vec::with_capacity(samples), Vec::with_capacity(samples));
    for i in 0..samples {
        let (client, id) = (&clients[i % args.users], (i * 7 % total) as i64);
        let started = Instant::now();
        client.query(&format!("SELECT payload FROM bench.t WHERE id = {id}")).await?;
        text.push(started.elapsed());
        let started = Instant::now();
        client.query_with_params("SELECT payload FROM bench.t WHERE id = $1", &[id.into()]).await?;
        param.push(started.elapsed());
        let started = Instant::now();
        client.query(&format!("SELECT COUNT(*) AS c FROM bench.t WHERE id > {id} AND payload LIKE '%row%'")).await?;
        agg_text.push(started.elapsed());
        let started = Instant::now();
        let sql = "SELECT COUNT(*) AS c FROM bench.t WHERE id > $1 AND payload LIKE '%row%'";
        client.query_with_params(sql, &[id.into()]).await?;
        agg_param.push(started.elapsed());
    }
    report_latency("point SELECT as text (cache miss)", &mut text);
    report_latency("point SELECT with $1 (cache hit)", &mut param);
    report_latency("filtered COUNT as text (cache miss)", &mut agg_text);
    report_latency("filtered COUNT with $1 (cache hit)", &mut agg_param);

    let mut latencies = Vec::with_capacity(samples);
    for i in 0..samples {
        let started = Instant::now();
        let sql = format!("INSERT INTO bench.t (id, payload) VALUES ({}, 'single row')", 3_000_000 + i);
        clients[i % args.users].query(&sql).await?;
        latencies.push(started.elapsed());
    }
    report_latency("single-row INSERT", &mut latencies);

    let mut latencies = Vec::with_capacity(samples);
    for i in 0..samples {
        let started = Instant::now();
        let sql = format!("UPDATE bench.t SET payload = 'updated' WHERE id = {}", i * 7 % total);
        clients[i % args.users].query(&sql).await?;
        latencies.push(started.elapsed());
    }
    report_latency("UPDATE by primary key", &mut latencies);

    let batches = 10;
    let started = Instant::now();
    for b in 0..batches {
        let first = 4_000_000 + b * 1000;
        let values: Vec<String> = (first..first + 1000).map(|i| format!("({i}, 'bulk row {i}')")).collect();
        clients[b % args.users]
            .query(&format!("INSERT INTO bench.t (id, payload) VALUES {}", values.join(", ")))
            .await?;
    }
    report("1,000-row INSERT statements", batches * 1000, started.elapsed());

    let mut ws = clients[0].connect_live().await?;
    ws.subscribe("bench", "SELECT * FROM bench.t").await?;
    ws.next_message().await?;
    let mut latencies = Vec::new();
    for i in 0..200 {
        let started = Instant::now();
        clients[0].query(&format!("INSERT INTO bench.t (id, payload) VALUES ({}, 'live')", 2_000_000 + i)).await?;
        ws.next_message().await?;
        latencies.push(started.elapsed());
    }
    report_latency("insert → live change delivered", &mut latencies);
    Ok(())
}
