//! kalam-live-bench: live-query figures on this machine. It starts its own server (supervisor
//! and daemons from the same build) in a temporary directory and reports:
//!
//! 1. INSERT-to-notification latency with 1 subscriber: `--inserts` sequential single-row
//!    INSERTs over HTTP, each timed from just before the request to the arrival of its
//!    `change` message;
//! 2. the same with 1,000 subscribers on the partition (20 connections × 50 subscriptions):
//!    latency to the last of the 1,000 notifications, and over all of them;
//! 3. notifications delivered per second at saturation: multi-row INSERTs as fast as the server
//!    takes them, counted at the 1,000 subscribers;
//! 4. kalam-lived's RSS with `--conns` connections × `--subs` subscriptions (one user per
//!    connection, filters `n > k` with ten distinct `k`), and the delivery rate of one row per
//!    user fanned out to every subscription.
//!
//! The client runs on the same machine and takes CPU from the server; compare release builds.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kalam_e2e::{Cluster, wait_for};
use kalam_link::live::LiveConnection;
use serde_json::{Value as Json, json};
use tokio::sync::Mutex;

struct Args {
    inserts: usize,
    burst_rows: usize,
    conns: usize,
    subs: usize,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args { inserts: 300, burst_rows: 2_000, conns: 1_000, subs: 100 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| anyhow::anyhow!("{flag} needs a value"));
        match flag.as_str() {
            "--inserts" => args.inserts = value()?.parse()?,
            "--burst-rows" => args.burst_rows = value()?.parse()?,
            "--conns" => args.conns = value()?.parse()?,
            "--subs" => args.subs = value()?.parse()?,
            other => anyhow::bail!("unknown flag {other} (use --inserts N --burst-rows N --conns N --subs N)"),
        }
    }
    Ok(args)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn rss_mb(pid: u32) -> f64 {
    kalam_e2e::rss_kb(pid).unwrap_or(0) as f64 / 1024.0
}

async fn next(ws: &mut LiveConnection) -> anyhow::Result<Json> {
    tokio::time::timeout(Duration::from_secs(60), ws.next_message())
        .await
        .map_err(|_| anyhow::anyhow!("no message within 60 s"))??
        .ok_or_else(|| anyhow::anyhow!("connection closed"))
}

/// Opens a connection as `user` with `subs` subscriptions of `sql(i)`, waiting for every ack.
async fn subscribe_many(
    cluster: &Cluster,
    user: &str,
    subs: usize,
    sql: impl Fn(usize) -> String,
) -> anyhow::Result<LiveConnection> {
    let mut ws = cluster.client(user).connect_live().await?;
    let list: Vec<Json> = (0..subs).map(|i| json!({"id": format!("s{i}"), "sql": sql(i)})).collect();
    ws.send_json(&json!({"type": "subscribe", "subscriptions": list})).await?;
    for _ in 0..subs {
        let m = next(&mut ws).await?;
        anyhow::ensure!(m["type"] == "subscription_ack", "unexpected {m}");
    }
    Ok(ws)
}

/// Reads change messages until the task is aborted, recording the arrival of each row id.
fn spawn_reader(
    mut ws: LiveConnection,
    arrivals: Arc<Mutex<HashMap<i64, Vec<Instant>>>>,
    count: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok(Some(m)) = ws.next_message().await {
            if m["type"] != "change" {
                continue;
            }
            let now = Instant::now();
            count.fetch_add(1, Ordering::Relaxed);
            if let Some(id) = m["rows"][0]["id"].as_i64() {
                arrivals.lock().await.entry(id).or_default().push(now);
            }
        }
    })
}

/// Single-row INSERTs one after the other; returns (to first, to last) notification latency
/// per insert and every individual latency.
async fn latency_run(
    cluster: &Cluster,
    first_id: i64,
    inserts: usize,
    listeners: usize,
    arrivals: &Arc<Mutex<HashMap<i64, Vec<Instant>>>>,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let writer = cluster.client("u0");
    let mut to_last = Vec::with_capacity(inserts);
    let mut all = Vec::with_capacity(inserts * listeners);
    for i in 0..inserts as i64 {
        let id = first_id + i;
        let sent = Instant::now();
        writer.query(&format!("INSERT INTO bench.t VALUES ({id}, 1, 'x')")).await?;
        let got = wait_for(Duration::from_secs(30), "notifications", || {
            let arrivals = arrivals.clone();
            async move {
                let a = arrivals.lock().await;
                a.get(&id).filter(|v| v.len() >= listeners).cloned()
            }
        })
        .await;
        to_last.push(got.iter().max().map(|t| *t - sent).unwrap_or_default());
        all.extend(got.iter().map(|t| *t - sent));
    }
    to_last.sort();
    all.sort();
    Ok((to_last, all))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let max_users = args.subs.max(1_000) * 2;
    let config = format!(
        "[websocket]\nmax_subscriptions_per_connection = {}\nmax_pending_messages = 100000\n\
         [rate_limit]\nmax_subscriptions_per_user = {max_users}\n",
        args.subs.max(50)
    );
    let cluster = Cluster::start_with_config(&config).await;
    let admin = cluster.client("u0");
    admin.query("CREATE NAMESPACE bench; CREATE USER TABLE bench.t (id BIGINT PRIMARY KEY, n INT, v TEXT)").await?;
    let lived = cluster.running_pid("kalam-lived").await;
    println!("kalam-live-bench: lived pid {lived}, RSS at start {:.1} MB", rss_mb(lived));

    // 1. One subscriber.
    let arrivals = Arc::new(Mutex::new(HashMap::new()));
    let count = Arc::new(AtomicU64::new(0));
    let ws = subscribe_many(&cluster, "u0", 1, |_| "SELECT * FROM bench.t".into()).await?;
    let reader = spawn_reader(ws, arrivals.clone(), count.clone());
    let (one, _) = latency_run(&cluster, 0, args.inserts, 1, &arrivals).await?;
    reader.abort();
    println!(
        "INSERT→notification, 1 subscriber ({} inserts): p50 {} p99 {}",
        args.inserts,
        ms(percentile(&one, 0.5)),
        ms(percentile(&one, 0.99))
    );

    // 2. 1,000 subscribers on the same partition.
    arrivals.lock().await.clear();
    let mut readers = Vec::new();
    for _ in 0..20 {
        let ws = subscribe_many(&cluster, "u0", 50, |_| "SELECT * FROM bench.t".into()).await?;
        readers.push(spawn_reader(ws, arrivals.clone(), count.clone()));
    }
    let (last, all) = latency_run(&cluster, 1_000_000, args.inserts, 1_000, &arrivals).await?;
    println!(
        "INSERT→notification, 1000 subscribers: to the last one p50 {} p99 {}; all deliveries p50 {} p99 {}",
        ms(percentile(&last, 0.5)),
        ms(percentile(&last, 0.99)),
        ms(percentile(&all, 0.5)),
        ms(percentile(&all, 0.99))
    );

    // 3. Saturation: bursts of 100-row INSERTs from 4 writers.
    arrivals.lock().await.clear();
    let before = count.load(Ordering::Relaxed);
    let expected = before + args.burst_rows as u64 * 1_000;
    let start = Instant::now();
    let mut writers = Vec::new();
    for w in 0..4usize {
        let client = cluster.client("u0");
        let rows = args.burst_rows;
        writers.push(tokio::spawn(async move {
            let mut i = w * 100;
            while i < rows {
                let values: Vec<String> =
                    (i..(i + 100).min(rows)).map(|id| format!("({}, 2, 'y')", 2_000_000 + id)).collect();
                client.query(&format!("INSERT INTO bench.t VALUES {}", values.join(","))).await.expect("insert");
                i += 400;
            }
        }));
    }
    for w in writers {
        w.await?;
    }
    let wrote = start.elapsed();
    wait_for(Duration::from_secs(600), "burst delivered", || {
        let count = count.clone();
        async move { (count.load(Ordering::Relaxed) >= expected).then_some(()) }
    })
    .await;
    let took = start.elapsed();
    println!(
        "saturation: {} rows × 1000 subscribers = {} notifications in {:.2} s (writes took {:.2} s): {:.0} notifications/s; lived RSS {:.1} MB",
        args.burst_rows,
        args.burst_rows * 1_000,
        took.as_secs_f64(),
        wrote.as_secs_f64(),
        (args.burst_rows * 1_000) as f64 / took.as_secs_f64(),
        rss_mb(lived)
    );
    for r in readers {
        r.abort();
    }

    // 4. Many connections and subscriptions.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = rss_mb(lived);
    let start = Instant::now();
    let fan_count = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for c in 0..args.conns {
        let ws = subscribe_many(&cluster, &format!("f{c}"), args.subs, |i| {
            format!("SELECT * FROM bench.t WHERE n > {}", i % 10)
        })
        .await?;
        readers.push(spawn_reader(ws, Arc::new(Mutex::new(HashMap::new())), fan_count.clone()));
    }
    let subscribe_time = start.elapsed();
    let rss_after = rss_mb(lived);
    let total = (args.conns * args.subs) as u64;
    println!(
        "{} connections × {} subscriptions = {total}: subscribed in {:.1} s; lived RSS {:.1} MB → {:.1} MB ({:.0} bytes per subscription)",
        args.conns,
        args.subs,
        subscribe_time.as_secs_f64(),
        rss_before,
        rss_after,
        (rss_after - rss_before) * 1024.0 * 1024.0 / total as f64
    );
    let start = Instant::now();
    let mut writers = Vec::new();
    for w in 0..4usize {
        let cluster_url = cluster.url();
        let conns = args.conns;
        writers.push(tokio::spawn(async move {
            for c in (w..conns).step_by(4) {
                let client = kalam_link::KalamLinkClient::new(cluster_url.clone())
                    .with_user(format!("f{c}"))
                    .expect("acting user");
                client.query("INSERT INTO bench.t VALUES (1, 20, 'z')").await.expect("insert");
            }
        }));
    }
    for w in writers {
        w.await?;
    }
    wait_for(Duration::from_secs(600), "fan-out delivered", || {
        let fan_count = fan_count.clone();
        async move { (fan_count.load(Ordering::Relaxed) >= total).then_some(()) }
    })
    .await;
    let took = start.elapsed();
    println!(
        "fan-out: 1 row per user to {total} subscriptions in {:.2} s: {:.0} notifications/s; lived RSS {:.1} MB",
        took.as_secs_f64(),
        total as f64 / took.as_secs_f64(),
        rss_mb(lived)
    );
    for r in readers {
        r.abort();
    }
    Ok(())
}
