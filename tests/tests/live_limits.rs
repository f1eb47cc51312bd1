//! End-to-end: live-query limits and clean-up (api.md §4.7): a slow consumer is closed without
//! hurting others, and thousands of connect/subscribe/disconnect cycles leave nothing behind.

mod live_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kalam_e2e::{rss_kb, wait_for};
use kalam_link::KalamLinkClient;
use serde_json::Value as Json;
use tokio::sync::watch;

use live_support::*;

// ---------------------------------------------------------------------------------------------
// Slow consumers and resource clean-up
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_disconnected_without_hurting_others() {
    const ROWS: i64 = 3000;
    const BATCH: i64 = 20;
    const BODY: usize = 20 * 1024;
    const RSS_BOUND_KB: u64 = 200 * 1024;
    let cluster = start_cfg(
        "[websocket]\nmax_pending_messages = 50\nclient_timeout_seconds = 300\n",
        "CREATE NAMESPACE app; CREATE USER TABLE app.big (id BIGINT PRIMARY KEY, body TEXT)",
    )
    .await;
    let lived = cluster.running_pid("kalam-lived").await;
    // The slow consumer: a small receive buffer, and it never reads until the end.
    let mut slow = RawWs::connect(cluster.port, "alice", Some(64 * 1024)).await;
    slow.send_text(&sub("slow", "SELECT * FROM app.big", Json::Null).to_string()).await.expect("subscribe");
    wait_for(Duration::from_secs(10), "slow subscription registered", || async {
        (!live_rows(&cluster, "subscription_id = 'slow'").await.is_empty()).then_some(())
    })
    .await;
    let mut fast = connect(&cluster, "alice").await;
    subscribe(&mut fast, "fast", "SELECT * FROM app.big", Json::Null).await;
    let reader = spawn_changes(fast, "fast", ROWS as usize, "the normal subscriber");

    let rss_before = rss_kb(lived).expect("kalam-lived VmRSS");
    let peak = Arc::new(AtomicU64::new(rss_before));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                let Some(rss) = rss_kb(lived) else { break };
                peak.fetch_max(rss, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let alice = cluster.client("alice");
    let pad = "x".repeat(BODY);
    let started = Instant::now();
    for batch in 0..ROWS / BATCH {
        let values: Vec<String> =
            (1..=BATCH).map(|i| batch * BATCH + i).map(|id| format!("({id}, '{id}:{pad}')")).collect();
        exec(&alice, &format!("INSERT INTO app.big (id, body) VALUES {}", values.join(", "))).await;
    }
    let written = started.elapsed();
    let (_fast, msgs) = join(reader).await;
    eprintln!(
        "{ROWS} rows of {BODY} bytes written in {written:?}; normal subscriber had all after {:?}",
        started.elapsed()
    );
    assert_sequenced(&msgs, "normal subscriber");
    for (m, id) in msgs.iter().zip(1..) {
        assert_eq!(id_of(m), id, "normal subscriber in commit order");
        assert!(row(m)["body"].as_str().is_some_and(|b| b.len() == BODY + format!("{id}:").len()), "full row data");
    }
    drop(msgs);
    // The slow consumer, still not reading, must have been dropped from system.live_queries.
    let waited = Instant::now();
    let removed = loop {
        if live_rows(&cluster, "subscription_id = 'slow'").await.is_empty() {
            break Some(waited.elapsed());
        }
        if waited.elapsed() > Duration::from_secs(30) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("slow consumer's row removed: {removed:?} after the normal subscriber finished");
    sampling.store(false, Ordering::Relaxed);
    join(sampler).await;
    let (peak, after) = (peak.load(Ordering::Relaxed), rss_kb(lived).unwrap_or_default());
    eprintln!("kalam-lived VmRSS: before {rss_before} kB, peak {peak} kB, after {after} kB");
    assert!(peak < rss_before + RSS_BOUND_KB, "kalam-lived grew by {} kB (bound {RSS_BOUND_KB} kB)", peak - rss_before);

    // Now read what the slow consumer was sent.
    let (mut delivered, mut error, mut close, mut end) = (0u64, None::<Json>, None::<Option<u16>>, "end of stream");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if Instant::now() >= deadline {
            end = "still open after 15 s of reading";
            break;
        }
        match tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), slow.read()).await {
            Err(_) => continue,
            Ok(Err(e)) => {
                eprintln!("slow consumer read: {e}");
                end = "reset";
                break;
            }
            Ok(Ok(None)) => break,
            Ok(Ok(Some(Frame::Close(code)))) => {
                close = Some(code);
                end = "close frame";
                break;
            }
            Ok(Ok(Some(Frame::Other))) => {}
            Ok(Ok(Some(Frame::Text(t)))) => {
                let m: Json = serde_json::from_str(&t).expect("JSON message");
                match m["type"].as_str() {
                    Some("change") => {
                        assert!(error.is_none(), "a change after the SLOW_CONSUMER error: seq {}", m["seq"]);
                        delivered += 1;
                        assert_eq!(m["seq"], delivered, "no gap in what the slow consumer did get");
                    }
                    Some("error") => error = Some(m),
                    Some("subscription_ack") if delivered == 0 => {}
                    _ => panic!("unexpected message for the slow consumer: {t:.200}"),
                }
            }
        }
    }
    let outcome = format!(
        "{delivered} changes read, then error {:?}, ended by {end} {close:?}",
        error.as_ref().map(|e| e["code"].clone())
    );
    eprintln!("slow consumer: {outcome}");
    assert!(
        removed.is_some(),
        "the slow consumer's live query was still in system.live_queries 30 s after the normal subscriber had \
         all {ROWS} changes (max_pending_messages = 50); reading its socket afterwards: {outcome}"
    );
    assert!(end != "still open after 15 s of reading", "the slow consumer's socket was never closed: {outcome}");
    assert!(delivered < ROWS as u64, "the slow consumer was never cut off: {outcome}");
    // It catches up well within the client timeout, so the last frames reach it.
    let error = error.unwrap_or_else(|| panic!("no SLOW_CONSUMER error after what it was sent: {outcome}"));
    assert_eq!(error["code"], "SLOW_CONSUMER", "{error}");
    assert_eq!(close, Some(Some(1008)), "a 1008 close frame after the error: {outcome}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_leave_no_resources_behind() {
    const TASKS: usize = 50;
    const CYCLES: usize = 200;
    let cluster = start_cfg("[rate_limit]\nmax_subscriptions_per_user = 100000\n", SETUP).await;
    let live = kalam_rpc::transport::connect_live(&cluster.run_dir()).await.expect("live RPC");
    // A long-lived subscriber that must not be disturbed by the churn around it.
    let mut keeper = connect(&cluster, "churn0").await;
    subscribe(&mut keeper, "keeper", "SELECT * FROM app.m", Json::Null).await;
    let (keeper_due, keeper_rx) = watch::channel(None);
    let keeper_reader = tokio::spawn(collect_until(keeper, keeper_rx, Duration::from_secs(400), "keeper".into()));
    let before = live.stats(tarpc::context::current()).await.expect("stats");
    eprintln!("before: {before:?}");

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let clients: Vec<KalamLinkClient> = (0..TASKS).map(|t| cluster.client(&format!("churn{t}"))).collect();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut keeper_ids = Vec::new();
            let mut id = 0i64;
            while !stop.load(Ordering::Relaxed) {
                id += 1;
                insert(&clients[id as usize % TASKS], id, "churn", id).await;
                if (id as usize).is_multiple_of(TASKS) {
                    keeper_ids.push(id);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            keeper_ids
        })
    };

    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        let client = cluster.client(&format!("churn{t}"));
        tasks.spawn(async move {
            let mut acks = 0;
            for c in 0..CYCLES {
                let mut ws = match tokio::time::timeout(MSG_TIMEOUT, client.connect_live()).await {
                    Ok(Ok(ws)) => ws,
                    Ok(Err(e)) => panic!("task {t} cycle {c}: connect: {e}"),
                    Err(_) => panic!("task {t} cycle {c}: connect took more than {MSG_TIMEOUT:?}"),
                };
                let sql = format!("SELECT * FROM app.m WHERE n > {}", c % 7);
                send(&mut ws, sub(&format!("c{c}"), &sql, Json::Null)).await;
                match c % 3 {
                    // Abrupt: the socket is dropped without a close frame.
                    0 => drop(ws),
                    1 => {
                        let ack = recv(&mut ws, &format!("task {t} cycle {c}: ack")).await;
                        assert_ack(&ack, &format!("c{c}"));
                        acks += 1;
                        let _ = ws.close().await;
                    }
                    _ => {
                        let _ = ws.close().await;
                    }
                }
            }
            acks
        });
    }
    let mut acks = 0;
    let churn = tokio::time::timeout(Duration::from_secs(240), async {
        while let Some(r) = tasks.join_next().await {
            acks += match r {
                Ok(n) => n,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => panic!("churn task: {e}"),
            };
        }
    })
    .await;
    assert!(churn.is_ok(), "{} connect/subscribe/close cycles did not finish within 240 s", TASKS * CYCLES);
    let elapsed = started.elapsed();
    eprintln!(
        "{} cycles in {elapsed:?} ({:.0}/s), {acks} acks read",
        TASKS * CYCLES,
        (TASKS * CYCLES) as f64 / elapsed.as_secs_f64()
    );
    stop.store(true, Ordering::Relaxed);
    let keeper_ids = join(writer).await;

    let settle = Instant::now();
    let (back, last) = loop {
        let s = live.stats(tarpc::context::current()).await.expect("stats");
        let ok = s.connections == before.connections
            && s.subscriptions == before.subscriptions
            && s.partitions == before.partitions
            && s.channels == before.channels
            && s.tasks <= before.tasks + 2;
        if ok || settle.elapsed() > Duration::from_secs(10) {
            break (ok, s);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("after {:?}: {last:?}", settle.elapsed());
    assert!(back, "kalam-lived did not return to its starting counts within 10 s: before {before:?}, after {last:?}");
    let remaining = live_rows(&cluster, "user_id LIKE 'churn%'").await;
    assert_eq!(remaining.len(), 1, "only the keeper is left in system.live_queries: {remaining:?}");

    keeper_due.send(Some(keeper_ids.len())).expect("keeper reader alive");
    let got = join(keeper_reader).await;
    assert!(got.iter().all(|m| m["type"] == "change" && m["subscription_id"] == "keeper"), "keeper messages");
    assert_sequenced(&got, "keeper");
    assert_eq!(got.iter().map(id_of).collect::<Vec<_>>(), keeper_ids, "the keeper got every write of its partition");
    eprintln!("keeper received all {} changes of its partition during the churn", keeper_ids.len());
}
