//! Bounded stress tests: each runs a burst against the real daemons and asserts a bound it
//! states, printing what it measured.

use std::time::Duration;

use kalam_e2e::{Cluster, wait_for};
use kalam_link::LiveConnection;
use serde_json::Value as Json;

/// Connections of the burst, spread over users so no per-user limit is reached.
const CONNECTIONS: usize = 200;
const USERS: usize = 20;
/// Open file descriptors kalam-lived may keep above its baseline once every client is gone.
const FD_SLACK: usize = 8;
/// Resident memory kalam-lived may keep above its baseline once every client is gone.
const RSS_SLACK_MB: u64 = 32;

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

fn rss_mb(pid: u32) -> u64 {
    kalam_e2e::rss_kb(pid).unwrap_or(0) / 1024
}

async fn live_count(cluster: &Cluster) -> Option<i64> {
    let r = cluster.client("system").execute_query("SELECT count(*) AS c FROM system.live_queries").await.ok()?;
    r.results.first()?.rows.as_ref()?.first()?.get("c")?.as_i64()
}

async fn next_of(ws: &mut LiveConnection, kind: &str) -> Json {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(20), ws.next_message())
            .await
            .unwrap_or_else(|_| panic!("no {kind} within 20 s"))
            .expect("read")
            .unwrap_or_else(|| panic!("closed before {kind}"));
        if m["type"] == kind {
            return m;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_connections_and_memory_are_released_after_a_burst() {
    // The burst holds sockets unread for a while on a loaded machine: a heartbeat timeout
    // must not close them before they are measured.
    let cluster = Cluster::start_with_config("[websocket]\nclient_timeout_seconds = 300\n").await;
    let system = cluster.client("system");
    system.execute_query("CREATE NAMESPACE app; CREATE USER TABLE app.m (n BIGINT PRIMARY KEY)").await.expect("setup");
    let lived = cluster.running_pid("kalam-lived").await;
    // Let the daemon settle before the baseline.
    wait_for(Duration::from_secs(10), "no live queries", || async {
        (live_count(&cluster).await == Some(0)).then_some(())
    })
    .await;
    let (fds_before, rss_before) = (open_fds(lived), rss_mb(lived));

    let mut conns = Vec::with_capacity(CONNECTIONS);
    for i in 0..CONNECTIONS {
        let user = format!("u{}", i % USERS);
        let mut ws = cluster.client(&user).connect_live().await.expect("connect");
        ws.subscribe(&format!("s{i}"), "SELECT * FROM app.m").await.expect("subscribe");
        next_of(&mut ws, "subscription_ack").await;
        conns.push((user, ws));
    }
    assert_eq!(live_count(&cluster).await, Some(CONNECTIONS as i64));
    // Every connection gets its user's change.
    for u in 0..USERS {
        cluster.client(&format!("u{u}")).execute_query("INSERT INTO app.m VALUES (1)").await.expect("insert");
    }
    for (user, ws) in &mut conns {
        let change = next_of(ws, "change").await;
        assert_eq!(change["rows"][0]["n"], 1, "{user}: {change}");
    }
    let (fds_loaded, rss_loaded) = (open_fds(lived), rss_mb(lived));

    // Half close cleanly, half vanish without a close frame.
    for (i, (_, ws)) in conns.into_iter().enumerate() {
        if i % 2 == 0 {
            // The server may already have closed an idle socket (heartbeat timeout on a loaded
            // machine); either way the connection is gone, which is what is measured.
            let _ = ws.close().await;
        } else {
            drop(ws);
        }
    }
    wait_for(Duration::from_secs(20), "every live query removed", || async {
        (live_count(&cluster).await == Some(0)).then_some(())
    })
    .await;
    let fds_after = wait_for(Duration::from_secs(20), "kalam-lived's sockets closed", || async {
        let n = open_fds(lived);
        (n <= fds_before + FD_SLACK).then_some(n)
    })
    .await;
    let rss_after = rss_mb(lived);
    eprintln!(
        "kalam-lived: fds {fds_before} → {fds_loaded} with {CONNECTIONS} connections → {fds_after}; \
         RSS {rss_before} MB → {rss_loaded} MB → {rss_after} MB"
    );
    assert!(fds_loaded >= fds_before + CONNECTIONS, "the connections were counted: {fds_loaded}");
    assert!(
        rss_after <= rss_before + RSS_SLACK_MB,
        "kalam-lived keeps {rss_after} MB after the burst (baseline {rss_before} MB, allowed +{RSS_SLACK_MB})"
    );
}
