//! Live queries over WebSocket: subscribe with a 1,000-row snapshot, INSERT-to-notification
//! latency at 1 and at 1,000 subscribers, fan-out to many subscriptions over many
//! connections, and reconnect-and-resume.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kalam_e2e::wait_for;
use kalam_link::{KalamLinkClient, LiveConnection};
use serde_json::{Value as Json, json};
use tokio::sync::Mutex;

use crate::Sizes;
use crate::procs::Procs;
use crate::report::{Measurement, Results};

const TABLE: &str = "bench.live";

/// Server settings the live benchmarks need: many subscriptions per connection and user, and
/// queues deep enough for a burst to one slow-reading benchmark client.
pub fn server_config(sizes: &Sizes) -> String {
    format!(
        "[websocket]\nmax_subscriptions_per_connection = {}\nmax_pending_messages = 100000\n\
         client_timeout_seconds = 120\n\
         [rate_limit]\nmax_queries_per_sec = 1000000\nmax_messages_per_sec = 100000\n\
         max_subscriptions_per_user = {}\n",
        sizes.fanout_subs.max(50),
        sizes.notify_subscribers.max(sizes.fanout_subs).max(100) * 2
    )
}

async fn next(ws: &mut LiveConnection) -> anyhow::Result<Json> {
    tokio::time::timeout(Duration::from_secs(120), ws.next_message())
        .await
        .map_err(|_| anyhow::anyhow!("no message within 120 s"))??
        .ok_or_else(|| anyhow::anyhow!("connection closed"))
}

/// Reads until a message of `kind` for subscription `id` (any subscription when `None`).
async fn next_of(ws: &mut LiveConnection, kind: &str, id: Option<&str>) -> anyhow::Result<Json> {
    loop {
        let m = next(ws).await?;
        if m["type"] == "error" {
            anyhow::bail!("server error: {m}");
        }
        if m["type"] == kind && id.is_none_or(|id| m["subscription_id"] == id) {
            return Ok(m);
        }
    }
}

/// A connection as `user` with `subs` subscriptions of `sql(i)` in one message, every ack read.
async fn subscribe_many(
    client: &KalamLinkClient,
    subs: usize,
    sql: impl Fn(usize) -> String,
) -> anyhow::Result<LiveConnection> {
    let mut ws = client.connect_live().await?;
    let list: Vec<Json> = (0..subs).map(|i| json!({"id": format!("s{i}"), "sql": sql(i)})).collect();
    ws.send_json(&json!({"type": "subscribe", "subscriptions": list})).await?;
    for _ in 0..subs {
        next_of(&mut ws, "subscription_ack", None).await?;
    }
    Ok(ws)
}

/// Arrival times of each row id, over every reader.
type Arrivals = Arc<Mutex<HashMap<i64, Vec<Instant>>>>;

/// Reads change messages until aborted, counting rows and (with `arrivals`) timing each id.
fn spawn_reader(
    mut ws: LiveConnection,
    arrivals: Option<Arrivals>,
    rows: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok(Some(m)) = ws.next_message().await {
            if m["type"] != "change" {
                continue;
            }
            let now = Instant::now();
            let changed = m["rows"].as_array().map_or(0, Vec::len) as u64;
            rows.fetch_add(changed, Ordering::Relaxed);
            if let Some(arrivals) = &arrivals {
                let mut a = arrivals.lock().await;
                for row in m["rows"].as_array().into_iter().flatten() {
                    if let Some(id) = row["id"].as_i64() {
                        a.entry(id).or_default().push(now);
                    }
                }
            }
        }
    })
}

pub async fn run(results: &mut Results, url: &str, procs: &Procs, lived: u32, sizes: &Sizes) -> anyhow::Result<()> {
    let admin = KalamLinkClient::builder().base_url(url).timeout(Duration::from_secs(600)).build()?;
    admin
        .execute_query(&format!(
            "CREATE NAMESPACE IF NOT EXISTS bench; CREATE USER TABLE {TABLE} (id BIGINT PRIMARY KEY, n INT, v TEXT)"
        ))
        .await?;
    let user = |u: &str| admin.clone().with_user(u.to_owned());
    snapshot(results, &user("snap")?, procs, sizes).await?;
    notify_latency(results, &user("n0")?, procs, 1, sizes.notify_inserts).await?;
    notify_latency(results, &user("n1")?, procs, sizes.notify_subscribers, sizes.notify_inserts).await?;
    resume(results, &user("r0")?, procs, sizes).await?;
    fanout(results, &admin, procs, lived, sizes).await
}

/// Subscriptions with `last_rows = 1000` over a 1,000-row partition: subscribe → every
/// initial row received, one subscription at a time on one connection.
async fn snapshot(results: &mut Results, client: &KalamLinkClient, procs: &Procs, sizes: &Sizes) -> anyhow::Result<()> {
    let values: Vec<String> = (0..1000).map(|i| format!("({i}, {}, 'snapshot row {i}')", i % 10)).collect();
    client.execute_query(&format!("INSERT INTO {TABLE} VALUES {}", values.join(", "))).await?;
    let mut ws = client.connect_live().await?;
    let mut lat = Vec::with_capacity(sizes.snapshots as usize);
    let mark = procs.mark();
    let started = Instant::now();
    for i in 0..sizes.snapshots {
        let id = format!("snap{i}");
        let sent = Instant::now();
        ws.send_json(&json!({"type": "subscribe", "subscriptions": [
            {"id": id, "sql": format!("SELECT * FROM {TABLE}"), "options": {"last_rows": 1000}}]}))
            .await?;
        let mut rows = 0;
        loop {
            let m = next_of(&mut ws, "initial_data", Some(&id)).await?;
            rows += m["rows"].as_array().map_or(0, Vec::len);
            if m["has_more"] != true {
                break;
            }
        }
        lat.push(sent.elapsed());
        anyhow::ensure!(rows == 1000, "snapshot of {rows} rows, not 1000");
        ws.send_json(&json!({"type": "unsubscribe", "subscription_ids": [id]})).await?;
        next_of(&mut ws, "unsubscribed", Some(&id)).await?;
    }
    let m = Measurement::new(
        "live.subscribe.snapshot1000",
        "subscribe with a 1,000-row snapshot (until the last initial row)",
        "subscriptions",
        sizes.snapshots,
        started.elapsed(),
        &mut lat,
    );
    results.push(procs.attach(&mark, m));
    let _ = ws.close().await;
    Ok(())
}

/// Sequential single-row INSERTs, each timed from the request to the arrival of its change at
/// the last of `subscribers` subscriptions (50 per connection) on the writer's partition.
async fn notify_latency(
    results: &mut Results,
    client: &KalamLinkClient,
    procs: &Procs,
    subscribers: usize,
    inserts: u64,
) -> anyhow::Result<()> {
    let arrivals: Arrivals = Arc::default();
    let rows = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    let mut left = subscribers;
    while left > 0 {
        let subs = left.min(50);
        let ws = subscribe_many(client, subs, |_| format!("SELECT * FROM {TABLE}")).await?;
        readers.push(spawn_reader(ws, Some(arrivals.clone()), rows.clone()));
        left -= subs;
    }
    let mut to_last = Vec::with_capacity(inserts as usize);
    let mut every = Vec::with_capacity(inserts as usize * subscribers);
    let mark = procs.mark();
    let started = Instant::now();
    for i in 0..inserts as i64 {
        let id = 10_000 + i;
        let sent = Instant::now();
        client.execute_query(&format!("INSERT INTO {TABLE} VALUES ({id}, 1, 'latency')")).await?;
        let got = wait_for(Duration::from_secs(60), "notifications", || {
            let arrivals = arrivals.clone();
            async move { arrivals.lock().await.get(&id).filter(|v| v.len() >= subscribers).cloned() }
        })
        .await;
        to_last.push(got.iter().max().map(|t| *t - sent).unwrap_or_default());
        every.extend(got.iter().map(|t| *t - sent));
    }
    let elapsed = started.elapsed();
    for r in readers {
        r.abort();
    }
    let all = crate::report::Percentiles::of(&mut every).unwrap_or_default();
    let m = Measurement::new(
        &format!("live.notify.subs{subscribers}"),
        &format!("INSERT → change at the last of {subscribers} subscriber(s)"),
        "notifications",
        rows.load(Ordering::Relaxed),
        elapsed,
        &mut to_last,
    )
    .extra("every_delivery_p50_ms", all.p50_ms)
    .extra("every_delivery_p99_ms", all.p99_ms);
    results.push(procs.attach(&mark, m));
    Ok(())
}

/// A subscriber drops, `resume_missed` rows are written, and it comes back with `from_seq`:
/// timed from opening the new connection to the last missed row received.
async fn resume(results: &mut Results, client: &KalamLinkClient, procs: &Procs, sizes: &Sizes) -> anyhow::Result<()> {
    let sql = format!("SELECT * FROM {TABLE}");
    let mut ws = client.connect_live().await?;
    ws.send_json(&json!({"type": "subscribe", "subscriptions": [{"id": "r", "sql": sql}]})).await?;
    let ack = next_of(&mut ws, "subscription_ack", Some("r")).await?;
    let mut last_seq = ack["commit_seq"].as_u64().ok_or_else(|| anyhow::anyhow!("ack without commit_seq: {ack}"))?;
    let mut lat = Vec::with_capacity(sizes.resumes as usize);
    let mark = procs.mark();
    let started = Instant::now();
    let missed = sizes.resume_missed;
    for round in 0..sizes.resumes {
        let _ = ws.close().await;
        let first = 100_000 + round * missed;
        let values: Vec<String> = (first..first + missed).map(|i| format!("({i}, 2, 'missed')")).collect();
        client.execute_query(&format!("INSERT INTO {TABLE} VALUES {}", values.join(", "))).await?;
        let sent = Instant::now();
        ws = client.connect_live().await?;
        ws.send_json(&json!({"type": "subscribe", "subscriptions": [
            {"id": "r", "sql": sql, "options": {"from_seq": last_seq}}]}))
            .await?;
        let mut got = 0;
        while got < missed {
            let m = next_of(&mut ws, "change", Some("r")).await?;
            for row in m["rows"].as_array().into_iter().flatten() {
                let id = row["id"].as_u64().unwrap_or(0);
                anyhow::ensure!(id == first + got, "resume delivered id {id}, expected {}", first + got);
                got += 1;
            }
            last_seq = m["commit_seq"].as_u64().unwrap_or(last_seq);
        }
        lat.push(sent.elapsed());
    }
    let m = Measurement::new(
        "live.resume",
        &format!("reconnect and resume with from_seq, {missed} missed rows each"),
        "resumes",
        sizes.resumes,
        started.elapsed(),
        &mut lat,
    );
    results.push(procs.attach(&mark, m));
    let _ = ws.close().await;
    Ok(())
}

/// `fanout_conns` connections (one user each) with `fanout_subs` subscriptions each (filters
/// `n > k`, ten distinct k), then one matching row per user: kalam-lived's memory per
/// subscription and the delivery rate.
async fn fanout(
    results: &mut Results,
    admin: &KalamLinkClient,
    procs: &Procs,
    lived: u32,
    sizes: &Sizes,
) -> anyhow::Result<()> {
    let (conns, subs) = (sizes.fanout_conns, sizes.fanout_subs);
    let total = (conns * subs) as u64;
    let rss_before = crate::procs::rss_mb(lived);
    let rows = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::with_capacity(conns);
    let started = Instant::now();
    for c in 0..conns {
        let client = admin.clone().with_user(format!("f{c}"))?;
        let ws = subscribe_many(&client, subs, |i| format!("SELECT * FROM {TABLE} WHERE n > {}", i % 10)).await?;
        readers.push(spawn_reader(ws, None, rows.clone()));
    }
    let subscribed = started.elapsed();
    let rss_after = crate::procs::rss_mb(lived);
    let mark = procs.mark();
    let started = Instant::now();
    let url = admin.base_url().to_owned();
    let (elapsed_writes, _) = crate::load::closed_loop(4, conns as u64, move |_, c| {
        let url = url.clone();
        async move {
            let client = KalamLinkClient::new(url).with_user(format!("f{c}"))?;
            client.execute_query(&format!("INSERT INTO {TABLE} VALUES (1, 20, 'fan-out')")).await?;
            Ok(())
        }
    })
    .await?;
    let r = rows.clone();
    wait_for(Duration::from_secs(600), "fan-out delivered", || {
        let r = r.clone();
        async move { (r.load(Ordering::Relaxed) >= total).then_some(()) }
    })
    .await;
    let elapsed = started.elapsed();
    let m = Measurement::new(
        "live.fanout",
        &format!("one row per user fanned out to {conns} connections × {subs} subscriptions"),
        "notifications",
        total,
        elapsed,
        &mut [],
    )
    .extra("subscriptions", total as f64)
    .extra("subscribe_s", subscribed.as_secs_f64())
    .extra("writes_s", elapsed_writes.as_secs_f64())
    .extra("lived_bytes_per_subscription", (rss_after - rss_before).max(0.0) * 1024.0 * 1024.0 / total as f64);
    results.push(procs.attach(&mark, m));
    for r in readers {
        r.abort();
    }
    Ok(())
}
