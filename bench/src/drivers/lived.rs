//! kalam-lived alone: a fake kalamd serves it a synthetic change log at a chosen rate (then as
//! fast as it takes it) and hands it the WebSocket connections of N clients holding M
//! subscriptions each. Reports delivery rate, INSERT-to-client latency (from the record's
//! commit time), memory and CPU.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kalam_e2e::wait_for;
use kalam_link::KalamLinkClient;
use kalam_rpc::transport::{bind, socket_path, sockets};
use kalam_rpc::{ChangeBatch, ChangeKind, ChangeRecord, RpcError, SubscriptionPlan};
use serde_json::{Map, Value as Json, json};
use tokio::sync::watch;

use super::fake::FakeEngine;
use super::{Daemon, LoneKalamd, sample_peak_rss};
use crate::procs::Procs;
use crate::report::{Measurement, Results};
use kalam_rpc::Engine as _;

/// Change records the fake log keeps (oldest dropped first, like kalamd's retention).
const LOG_CAPACITY: usize = 1_000_000;
/// Notifications the saturation phase keeps in flight (appended but not yet received by the
/// clients): enough to keep kalam-lived busy, few enough per connection that no queue reaches
/// `max_pending_messages` and cuts a client off as a slow consumer.
const SATURATION_IN_FLIGHT: u64 = 20_000;
/// After the saturation phase: how long without a new notification ends the wait for the rest.
const DRAIN_QUIET: Duration = Duration::from_secs(5);
/// Distinct filters: subscription `i` is `n > i % FILTERS`.
const FILTERS: usize = 10;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// WebSocket connections, one user each.
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,
    /// Subscriptions per connection.
    #[arg(long, default_value_t = 10)]
    pub subs: usize,
    /// Change records per second in the fixed-rate phase (each one goes to one user's M
    /// subscriptions).
    #[arg(long, default_value_t = 2000)]
    pub rate: u64,
    /// Length of the fixed-rate phase, seconds.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Length of the saturation phase, seconds (0 skips it).
    #[arg(long, default_value_t = 10)]
    pub saturate_seconds: u64,
}

/// The change log and the recorded plans behind the fake engine.
pub struct LiveSide {
    /// Plans recorded from a real kalamd, by SQL text.
    plans: HashMap<String, SubscriptionPlan>,
    template: ChangeRecord,
    row: Map<String, Json>,
    log: Mutex<VecDeque<ChangeRecord>>,
    head: watch::Sender<u64>,
    /// Newest position kalam-lived has asked to read after.
    cursor: AtomicU64,
}

impl LiveSide {
    pub fn head(&self) -> u64 {
        *self.head.borrow()
    }

    /// Appends one insert per user, stamped with the time now.
    fn append<'a>(&self, users: impl Iterator<Item = &'a str>) {
        let now_us = chrono::Utc::now().timestamp_micros();
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let mut seq = self.head();
        for user in users {
            seq += 1;
            let mut row = self.row.clone();
            row.insert("id".into(), json!(seq));
            row.insert("n".into(), json!(FILTERS * 2));
            row.insert("v".into(), json!(now_us.to_string()));
            log.push_back(ChangeRecord {
                commit_seq: seq,
                user_id: Some(user.to_owned()),
                kind: ChangeKind::Insert,
                old_row: None,
                new_row: Some(Json::Object(row).to_string()),
                commit_time_us: now_us,
                ..self.template.clone()
            });
        }
        while log.len() > LOG_CAPACITY {
            log.pop_front();
        }
        drop(log);
        self.head.send_replace(seq);
    }

    pub async fn poll(&self, after: u64, max: u32, wait_ms: u32) -> ChangeBatch {
        self.cursor.fetch_max(after, Ordering::Relaxed);
        let mut rx = self.head.subscribe();
        let wait = rx.wait_for(|head| *head > after);
        let _ = tokio::time::timeout(Duration::from_millis(wait_ms.into()), wait).await;
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let head = self.head();
        let first = log.front().map_or(head + 1, |r| r.commit_seq);
        let skip = after.saturating_add(1).saturating_sub(first).min(log.len() as u64) as usize;
        let records = log.iter().skip(skip).take(max as usize).cloned().collect();
        ChangeBatch { records, head_seq: head, floor_seq: first - 1, stream_floor_seq: first - 1 }
    }

    pub fn plan(&self, _user: &str, sql: &str) -> Result<SubscriptionPlan, RpcError> {
        let mut plan = self.plans.get(sql).cloned().ok_or_else(|| {
            RpcError::new(kalam_types::ErrorCode::InvalidSql, format!("the fake engine has no plan for: {sql}"))
        })?;
        plan.start_after = self.head();
        Ok(plan)
    }
}

fn filter_sql(i: usize) -> String {
    format!("SELECT * FROM bench.live WHERE n > {}", i % FILTERS)
}

/// Plans and a change record of `bench.live` from a real kalamd run alone.
async fn record(dir: &std::path::Path) -> anyhow::Result<LiveSide> {
    let kalamd = LoneKalamd::start(dir, "").await?;
    let admin = KalamLinkClient::new(kalamd.url.clone());
    admin
        .execute_query("CREATE NAMESPACE bench; CREATE USER TABLE bench.live (id BIGINT PRIMARY KEY, n INT, v TEXT)")
        .await?;
    admin.clone().with_user("f0")?.execute_query("INSERT INTO bench.live VALUES (1, 20, 'x')").await?;
    let engine = kalamd.engine().await?;
    let ctx = tarpc::context::current;
    let batch = engine.poll_changes(ctx(), 0, 10_000, 0).await??;
    let template =
        batch.records.into_iter().rfind(|r| r.table == "live").ok_or_else(|| anyhow::anyhow!("no change record"))?;
    let row: Map<String, Json> = serde_json::from_str(template.new_row.as_deref().unwrap_or("{}"))?;
    let mut plans = HashMap::new();
    for i in 0..FILTERS {
        let sql = filter_sql(i);
        let plan = engine.plan_subscription(ctx(), "f0".into(), sql.clone()).await??;
        plans.insert(sql, plan);
    }
    kalamd.daemon.stop(Duration::from_secs(30));
    Ok(LiveSide {
        plans,
        template,
        row,
        log: Mutex::new(VecDeque::new()),
        head: watch::channel(0).0,
        cursor: AtomicU64::new(0),
    })
}

/// Accepts TCP connections and hands each to kalam-lived, as kalamd does for `/v1/ws`.
async fn hand_off(listener: tokio::net::TcpListener, run_dir: std::path::PathBuf) {
    let path = socket_path(&run_dir, sockets::WS_HANDOFF);
    loop {
        let Ok((stream, peer)) = listener.accept().await else { continue };
        let path = path.clone();
        tokio::task::spawn_blocking(move || {
            let stream = stream.into_std()?;
            let channel = std::os::unix::net::UnixStream::connect(&path)?;
            kalam_rpc::handoff::send_socket(&channel, std::os::fd::AsRawFd::as_raw_fd(&stream), peer)
        });
    }
}

pub async fn run(results: &mut Results, args: &Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let record_dir = dir.path().join("record");
    std::fs::create_dir_all(&record_dir)?;
    println!("kalam-lived alone: recording plans from a lone kalamd …");
    let side = Arc::new(record(&record_dir).await?);

    let lived_dir = dir.path().join("lived");
    let data = lived_dir.join("data");
    let run_dir = data.join("run");
    std::fs::create_dir_all(&lived_dir)?;
    let engine = FakeEngine { live: Some(side.clone()), flush: None };
    let server = tokio::spawn(kalam_rpc::serve_on!(bind(&socket_path(&run_dir, sockets::ENGINE))?, engine));
    std::fs::write(
        lived_dir.join("kalam.toml"),
        format!(
            "[websocket]\nmax_subscriptions_per_connection = {}\nmax_pending_messages = 100000\n\
             client_timeout_seconds = 120\n[rate_limit]\nmax_subscriptions_per_user = {}\n",
            args.subs.max(1),
            args.subs.max(1) * 2
        ),
    )?;
    let lived = Daemon::start("kalam-lived", &lived_dir, &data, &[])?;
    let live_rpc = wait_for(Duration::from_secs(60), "kalam-lived serving", || async {
        let c = kalam_rpc::transport::connect_live(&run_dir).await.ok()?;
        c.health(tarpc::context::current()).await.ok().map(|_| c)
    })
    .await;
    let front = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", front.local_addr()?);
    let front = tokio::spawn(hand_off(front, run_dir.clone()));
    let procs = Procs(vec![("kalam-lived".into(), lived.pid())]);

    let rss_start = crate::procs::rss_mb(lived.pid());
    let rows = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let recording = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let started = Instant::now();
    let mut readers = Vec::with_capacity(args.conns);
    for c in 0..args.conns {
        let mut ws = KalamLinkClient::new(url.clone()).with_user(format!("f{c}"))?.connect_live().await?;
        let list: Vec<Json> = (0..args.subs).map(|i| json!({"id": format!("s{i}"), "sql": filter_sql(i)})).collect();
        ws.send_json(&json!({"type": "subscribe", "subscriptions": list})).await?;
        let mut acked = 0;
        while acked < args.subs {
            let m = ws.next_message().await?.ok_or_else(|| anyhow::anyhow!("closed while subscribing"))?;
            anyhow::ensure!(m["type"] != "error", "subscribe refused: {m}");
            acked += usize::from(m["type"] == "subscription_ack");
        }
        let (rows, latencies, recording) = (rows.clone(), latencies.clone(), recording.clone());
        readers.push(tokio::spawn(async move {
            while let Ok(Some(m)) = ws.next_message().await {
                if m["type"] != "change" {
                    continue;
                }
                let now_us = chrono::Utc::now().timestamp_micros();
                for row in m["rows"].as_array().into_iter().flatten() {
                    rows.fetch_add(1, Ordering::Relaxed);
                    if recording.load(Ordering::Relaxed) {
                        let sent: i64 = row["v"].as_str().and_then(|v| v.parse().ok()).unwrap_or(now_us);
                        let lat = Duration::from_micros((now_us - sent).max(0) as u64);
                        latencies.lock().unwrap_or_else(|p| p.into_inner()).push(lat);
                    }
                }
            }
        }));
    }
    let subs_total = (args.conns * args.subs) as u64;
    let subscribed = started.elapsed();
    let rss_subscribed = crate::procs::rss_mb(lived.pid());
    let stats = live_rpc.stats(tarpc::context::current()).await?;
    anyhow::ensure!(
        stats.subscriptions == subs_total,
        "kalam-lived holds {} of {subs_total} subscriptions",
        stats.subscriptions
    );
    println!(
        "  {} connections × {} subscriptions in {:.1} s; kalam-lived RSS {rss_start:.0} → {rss_subscribed:.0} MB",
        args.conns,
        args.subs,
        subscribed.as_secs_f64()
    );
    let users: Vec<String> = (0..args.conns).map(|c| format!("f{c}")).collect();

    // Fixed rate, in 10 ms ticks.
    let (peak, sampler) = sample_peak_rss(lived.pid());
    let mark = procs.mark();
    let started = Instant::now();
    let mut sent = 0u64;
    let mut next_user = 0usize;
    let total = args.rate * args.seconds;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while sent < total {
        tick.tick().await;
        let due = ((started.elapsed().as_secs_f64() * args.rate as f64) as u64).min(total);
        let n = due.saturating_sub(sent) as usize;
        side.append((0..n).map(|k| users[(next_user + k) % users.len()].as_str()));
        next_user = (next_user + n) % users.len();
        sent = due;
    }
    let expected = total * args.subs as u64;
    let r = rows.clone();
    wait_for(Duration::from_secs(600), "fixed-rate changes delivered", || {
        let r = r.clone();
        async move { (r.load(Ordering::Relaxed) >= expected).then_some(()) }
    })
    .await;
    let elapsed = started.elapsed();
    recording.store(false, Ordering::Relaxed);
    let mut lat = std::mem::take(&mut *latencies.lock().unwrap_or_else(|p| p.into_inner()));
    let m = Measurement::new(
        "lived.fixed_rate",
        &format!("kalam-lived alone: {} changes/s to {} conns × {} subs", args.rate, args.conns, args.subs),
        "notifications",
        rows.load(Ordering::Relaxed),
        elapsed,
        &mut lat,
    )
    .extra("subscriptions", subs_total as f64)
    .extra("peak_rss_mb", peak.load(Ordering::Relaxed) as f64 / 1024.0)
    .extra("bytes_per_subscription", (rss_subscribed - rss_start).max(0.0) * 1024.0 * 1024.0 / subs_total as f64);
    results.push(procs.attach(&mark, m));

    if args.saturate_seconds > 0 {
        let before = rows.load(Ordering::Relaxed);
        let mark = procs.mark();
        let started = Instant::now();
        let mut appended = 0u64;
        let subs = args.subs as u64;
        while started.elapsed() < Duration::from_secs(args.saturate_seconds) {
            let received = rows.load(Ordering::Relaxed) - before;
            // Append another 1,000 records while that keeps the notifications in flight
            // within the bound (always at least one batch in flight).
            if (appended + 1000) * subs <= received + SATURATION_IN_FLIGHT.max(1000 * subs) {
                side.append((0..1000).map(|k| users[(next_user + k) % users.len()].as_str()));
                next_user = (next_user + 1000) % users.len();
                appended += 1000;
            } else {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        // Everything appended is due; a client cut off on the way shows as undelivered.
        let expected = before + appended * subs;
        let mut last = (rows.load(Ordering::Relaxed), Instant::now());
        while last.0 < expected && last.1.elapsed() < DRAIN_QUIET {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = rows.load(Ordering::Relaxed);
            if now != last.0 {
                last = (now, Instant::now());
            }
        }
        let m = Measurement::new(
            "lived.saturation",
            "kalam-lived alone: change log as fast as it reads it (delivery ceiling)",
            "notifications",
            rows.load(Ordering::Relaxed) - before,
            started.elapsed(),
            &mut [],
        )
        .extra("records_per_s", appended as f64 / started.elapsed().as_secs_f64())
        .extra("undelivered", expected.saturating_sub(rows.load(Ordering::Relaxed)) as f64)
        .extra("peak_rss_mb", peak.load(Ordering::Relaxed) as f64 / 1024.0);
        results.push(procs.attach(&mark, m));
    }
    sampler.abort();
    for r in readers {
        r.abort();
    }
    front.abort();
    lived.stop(Duration::from_secs(10));
    server.abort();
    Ok(())
}
