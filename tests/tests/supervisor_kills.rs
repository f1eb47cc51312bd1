//! kill -9 of kalam-flushd and kalam-lived, 100 times each in turn, under a steady write and
//! subscription load: no write fails, every kill is followed by a restart, the subscriber
//! resumes each time, and the p99 write latency while daemons are being killed stays within
//! +20 % of the p99 between kill bursts.
//!
//! Calm and kill windows alternate through one run, so both see the same table (inserts get
//! slower as flushed files accumulate; comparing an early calm phase with a later kill phase
//! would measure that, not the kills). Rounds swap the order of their two windows, so neither
//! kind is always the later one. The few hundred milliseconds after each window belong to
//! neither. nextest runs this test alone (`.config/nextest.toml`), so other tests do not
//! distort one window more than the other.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kalam_e2e::Cluster;
use serde_json::json;

const KILLS_EACH: usize = 100;
/// Kills of each daemon per burst; bursts alternate with calm windows.
const KILLS_PER_BURST: usize = 5;
const CALM_WINDOW: Duration = Duration::from_millis(1500);
const SETTLE: Duration = Duration::from_millis(500);

const SETTLING: u8 = 0;
const CALM: u8 = 1;
const KILLING: u8 = 2;

/// Latencies of successful single-row INSERTs, by the window each one started in.
#[derive(Default)]
struct Latencies {
    calm: Vec<Duration>,
    killing: Vec<Duration>,
    failed: u64,
}

/// Single-row INSERTs from `writers` tasks until `stop`.
async fn write_load(cluster: &Cluster, writers: usize, window: Arc<AtomicU8>, stop: Arc<AtomicBool>) -> Latencies {
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (client, window, stop) = (cluster.client("u1"), window.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Latencies::default();
            let mut i = 0i64;
            while !stop.load(Ordering::Relaxed) {
                let id = w as i64 * 1_000_000_000 + i;
                i += 1;
                let (t, started_in) = (Instant::now(), window.load(Ordering::Relaxed));
                match client.query(&format!("INSERT INTO app.t VALUES ({id}, 'x')")).await {
                    Ok(r) if r.status == "success" => match started_in {
                        CALM => out.calm.push(t.elapsed()),
                        KILLING => out.killing.push(t.elapsed()),
                        _ => {}
                    },
                    other => {
                        eprintln!("write {id} failed: {other:?}");
                        out.failed += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            out
        }));
    }
    let mut all = Latencies::default();
    for t in tasks {
        let one = t.await.expect("writer");
        all.calm.extend(one.calm);
        all.killing.extend(one.killing);
        all.failed += one.failed;
    }
    all.calm.sort();
    all.killing.sort();
    all
}

/// A subscriber that resumes with `from_seq` whenever its socket is dropped; counts changes.
fn subscriber(cluster: &Cluster, stop: Arc<AtomicBool>, changes: Arc<AtomicU64>) -> tokio::task::JoinHandle<u64> {
    let client = cluster.client("u1");
    tokio::spawn(async move {
        let mut last_seq: Option<u64> = None;
        let mut reconnects = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let Ok(mut ws) = client.connect_live().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let options = match last_seq {
                Some(s) => json!({"from_seq": s}),
                None => json!({}),
            };
            let msg = json!({"subscriptions": [{"id": "s", "sql": "SELECT * FROM app.t", "options": options}]});
            if ws.send_json(&msg).await.is_err() {
                continue;
            }
            reconnects += 1;
            while !stop.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_millis(500), ws.next_message()).await {
                    Ok(Ok(Some(m))) if m["type"] == "change" => {
                        last_seq = m["commit_seq"].as_u64();
                        changes.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Ok(Some(m))) if m["type"] == "error" => {
                        // kalamd answers while lived restarts: subscribe again shortly.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        break;
                    }
                    Ok(Ok(Some(_))) | Err(_) => {}
                    Ok(Ok(None)) | Ok(Err(_)) => break,
                }
            }
        }
        reconnects
    })
}

fn p99(sorted: &[Duration]) -> Duration {
    sorted[((sorted.len() - 1) as f64 * 0.99) as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_flushd_and_lived_a_hundred_times_each_fails_no_write_and_keeps_p99() {
    let config = "[supervisor]\nmax_restarts = 10000\nrestart_backoff_min_ms = 100\nrestart_backoff_max_ms = 200\n";
    let cluster = Cluster::start_with_config(config).await;
    cluster
        .client("u1")
        .query("CREATE NAMESPACE app; CREATE USER TABLE app.t (id BIGINT PRIMARY KEY, v TEXT) WITH (FLUSH_ROW_THRESHOLD = 500)")
        .await
        .expect("setup");
    let (changes, window, stop) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU8::new(SETTLING)), Arc::new(AtomicBool::new(false)));
    let sub = subscriber(&cluster, stop.clone(), changes.clone());
    let load = {
        let (window, stop, cluster_ref) = (window.clone(), stop.clone(), &cluster);
        async move { write_load(cluster_ref, 2, window, stop).await }
    };
    let started = Instant::now();
    let kills = {
        let (window, stop, cluster_ref) = (window.clone(), stop.clone(), &cluster);
        async move {
            tokio::time::sleep(SETTLE).await;
            for round in 0..KILLS_EACH / KILLS_PER_BURST {
                let order = if round % 2 == 0 { [CALM, KILLING] } else { [KILLING, CALM] };
                for kind in order {
                    window.store(kind, Ordering::Relaxed);
                    if kind == CALM {
                        tokio::time::sleep(CALM_WINDOW).await;
                    } else {
                        for _ in 0..KILLS_PER_BURST {
                            for name in ["kalam-flushd", "kalam-lived"] {
                                cluster_ref.kill_and_wait_restart(name).await;
                            }
                        }
                    }
                    window.store(SETTLING, Ordering::Relaxed);
                    tokio::time::sleep(SETTLE).await;
                }
            }
            stop.store(true, Ordering::Relaxed);
        }
    };
    let (latencies, ()) = tokio::join!(load, kills);
    let reconnects = sub.await.expect("subscriber");

    let (calm, killing) = (p99(&latencies.calm), p99(&latencies.killing));
    eprintln!(
        "{} kills in {:.1} s; between bursts: {} writes, p99 {calm:?}; during bursts: {} writes, p99 {killing:?} \
         ({:+.0} %); subscriber resumed {reconnects} times, {} changes",
        2 * KILLS_EACH,
        started.elapsed().as_secs_f64(),
        latencies.calm.len(),
        latencies.killing.len(),
        (killing.as_secs_f64() / calm.as_secs_f64() - 1.0) * 100.0,
        changes.load(Ordering::Relaxed)
    );
    assert_eq!(latencies.failed, 0, "failed writes");
    let procs = cluster.processes().await.expect("process table");
    for name in ["kalam-flushd", "kalam-lived"] {
        let p = procs.iter().find(|p| p.name == name).unwrap();
        assert_eq!((p.state.as_str(), p.restarts as usize), ("running", KILLS_EACH), "{p:?}");
    }
    assert!(reconnects > KILLS_EACH as u64 / 2, "the subscriber resumed only {reconnects} times");
    assert!(latencies.calm.len() > 1000 && latencies.killing.len() > 1000, "the load did not run");
    assert!(
        killing.as_secs_f64() <= calm.as_secs_f64() * 1.2,
        "p99 write latency during kills {killing:?} is more than 20 % above {calm:?}"
    );
}
