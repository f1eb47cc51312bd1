//! End-to-end: one request through each of the four processes, and their crash recovery.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use kalam_e2e::{Cluster, insert_through_faults, spawn_supervisor, wait_for};
use kalam_link::KalamLinkClient;
use kalam_link::live::LiveConnection;
use serde_json::Value as Json;

const SETUP: &str = "CREATE NAMESPACE app; CREATE USER TABLE app.notes (id BIGINT PRIMARY KEY, body TEXT)";

async fn ids(client: &KalamLinkClient, table: &str) -> Vec<i64> {
    let resp = client.query(&format!("SELECT id FROM {table} ORDER BY id")).await.expect("select");
    resp.results[0].rows.as_ref().expect("rows").iter().map(|r| r["id"].as_i64().expect("id")).collect()
}

/// Runs `sql`, retrying while the server restarts (connection errors), until it succeeds.
async fn query_eventually(client: &KalamLinkClient, sql: &str) {
    wait_for(Duration::from_secs(60), sql, || async { client.query(sql).await.ok() }).await;
}

async fn next_message(ws: &mut LiveConnection) -> Json {
    tokio::time::timeout(Duration::from_secs(15), ws.next_message())
        .await
        .expect("a message within 15 s")
        .expect("WebSocket read")
        .expect("connection open")
}

async fn subscribe(ws: &mut LiveConnection, id: &str, sql: &str) {
    ws.subscribe(id, sql).await.expect("send subscribe");
    let ack = next_message(ws).await;
    assert_eq!(ack["type"], "subscription_ack", "{ack}");
    assert_eq!(ack["subscription_id"], id);
}

async fn wait_job_completed(client: &KalamLinkClient, job_id: &str) {
    let sql = format!("SELECT status FROM system.jobs WHERE job_id = '{job_id}'");
    wait_for(Duration::from_secs(60), "flush job completed", || async {
        let resp = client.query(&sql).await.ok()?;
        let status = resp.results[0].rows.as_ref()?.first()?["status"].as_str()?.to_owned();
        assert_ne!(status, "failed", "flush job failed");
        (status == "completed").then_some(())
    })
    .await;
}

async fn flush(client: &KalamLinkClient, table: &str) -> String {
    let resp = client.query(&format!("FLUSH TABLE {table}")).await.expect("flush");
    let job_id = resp.results[0].rows.as_ref().expect("rows")[0]["job_id"].as_str().expect("job id").to_owned();
    wait_job_completed(client, &job_id).await;
    job_id
}

fn parquet_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_see_only_their_own_rows() {
    let cluster = Cluster::start().await;
    let admin = cluster.client("system");
    admin.query(SETUP).await.expect("setup");
    let alice = cluster.client("alice");
    let bob = cluster.client("bob");
    alice.query("INSERT INTO app.notes (id, body) VALUES (1, 'a1'), (2, 'a2'), (3, 'a3')").await.expect("alice");
    bob.query("INSERT INTO app.notes (id, body) VALUES (1, 'b1'), (2, 'b2')").await.expect("bob");
    assert_eq!(ids(&alice, "app.notes").await, vec![1, 2, 3]);
    assert_eq!(ids(&bob, "app.notes").await, vec![1, 2]);
    let resp = bob.query("SELECT body FROM app.notes ORDER BY id").await.expect("select");
    let bodies: Vec<_> = resp.results[0].rows.as_ref().unwrap().iter().map(|r| r["body"].clone()).collect();
    assert_eq!(bodies, vec![Json::from("b1"), Json::from("b2")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_subscribers_get_their_own_inserts_only() {
    let cluster = Cluster::start().await;
    cluster.client("system").query(SETUP).await.expect("setup");
    let mut ws = cluster.client("alice").connect_live().await.expect("connect");
    subscribe(&mut ws, "notes", "SELECT * FROM app.notes").await;
    let alice = cluster.client("alice");
    let bob = cluster.client("bob");
    bob.query("INSERT INTO app.notes (id, body) VALUES (100, 'bob')").await.expect("bob");
    for id in 1..=3 {
        alice.query(&format!("INSERT INTO app.notes (id, body) VALUES ({id}, 'hi {id}')")).await.expect("alice");
    }
    for (n, id) in (1..=3).enumerate() {
        let msg = next_message(&mut ws).await;
        assert_eq!(msg["type"], "change", "{msg}");
        assert_eq!(msg["subscription_id"], "notes");
        assert_eq!(msg["change_type"], "insert");
        assert_eq!(msg["seq"], n as u64 + 1);
        let row = &msg["rows"][0];
        assert_eq!(row["id"], id, "bob's row must not reach alice: {msg}");
        assert_eq!(row["body"], format!("hi {id}"));
        assert_eq!(row["_deleted"], false);
        assert!(row["_updated"].is_string());
        assert!(msg["commit_seq"].as_u64().unwrap() > 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_moves_rows_to_parquet_without_changing_results() {
    let cluster = Cluster::start().await;
    cluster.client("system").query(SETUP).await.expect("setup");
    let alice = cluster.client("alice");
    let bob = cluster.client("bob");
    alice.query("INSERT INTO app.notes VALUES (1, 'a1'), (2, 'a2'), (3, 'a3')").await.expect("alice");
    bob.query("INSERT INTO app.notes VALUES (7, 'b7')").await.expect("bob");
    let job_id = flush(&alice, "app.notes").await;

    let users_dir = cluster.data_dir().join("storage/app/users/notes");
    for user in ["alice", "bob"] {
        let files = parquet_files(&users_dir.join(user));
        assert_eq!(files.len(), 1, "one Parquet file for {user}: {files:?}");
        let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.contains(&job_id), "file name {name} carries the job id");
    }
    let engine = kalam_rpc::transport::connect_engine(&cluster.run_dir()).await.expect("engine rpc");
    let stats =
        engine.table_stats(tarpc::context::current(), "app".into(), "notes".into()).await.expect("rpc").expect("stats");
    assert_eq!(stats.buffered_rows, 0, "buffer is empty after the flush");
    assert_eq!(stats.files.len(), 2);

    assert_eq!(ids(&alice, "app.notes").await, vec![1, 2, 3]);
    assert_eq!(ids(&bob, "app.notes").await, vec![7]);
    alice.query("INSERT INTO app.notes VALUES (4, 'a4')").await.expect("insert after flush");
    assert_eq!(ids(&alice, "app.notes").await, vec![1, 2, 3, 4]);
    let resp = alice.query("SELECT id, body, _updated, _deleted FROM app.notes WHERE id = 2").await.expect("select");
    let row = &resp.results[0].rows.as_ref().unwrap()[0];
    assert_eq!((row["body"].as_str(), row["_deleted"].as_bool()), (Some("a2"), Some(false)));

    // Flushed keys still count for primary-key uniqueness.
    let (status, resp) = alice.query_raw("INSERT INTO app.notes VALUES (2, 'again')").await.expect("insert");
    assert_eq!(status, 400);
    assert_eq!(resp.error.expect("error").code, "CONSTRAINT_VIOLATION");
    assert_eq!(ids(&alice, "app.notes").await, vec![1, 2, 3, 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_tables_flush_into_one_group() {
    let cluster = Cluster::start().await;
    let admin = cluster.client("system");
    admin
        .query("CREATE NAMESPACE app; CREATE SHARED TABLE app.config (k TEXT PRIMARY KEY, v BIGINT)")
        .await
        .expect("setup");
    let shared_dir = cluster.data_dir().join("storage/app/shared/config");
    assert!(shared_dir.is_dir(), "SHARED tables get their directory at CREATE");
    cluster.client("alice").query("INSERT INTO app.config VALUES ('a', 1), ('b', 2)").await.expect("insert");
    flush(&admin, "app.config").await;
    assert_eq!(parquet_files(&shared_dir).len(), 1);
    // Every user reads the same shared rows, flushed and buffered alike.
    cluster.client("bob").query("INSERT INTO app.config VALUES ('c', 3)").await.expect("insert");
    let resp = cluster.client("carol").query("SELECT k, v FROM app.config ORDER BY k").await.expect("select");
    let rows = resp.results[0].rows.as_ref().unwrap();
    let got: Vec<(String, i64)> =
        rows.iter().map(|r| (r["k"].as_str().unwrap().to_owned(), r["v"].as_i64().unwrap())).collect();
    assert_eq!(got, vec![("a".into(), 1), ("b".into(), 2), ("c".into(), 3)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_daemon_recovers_from_kill_9_without_losing_rows() {
    let cluster = Cluster::start().await;
    let admin = cluster.client("system");
    admin.query(SETUP).await.expect("setup");
    let alice = cluster.client("alice");
    alice.query("INSERT INTO app.notes VALUES (1, 'before')").await.expect("insert");
    let mut ws = alice.connect_live().await.expect("connect");
    subscribe(&mut ws, "notes", "SELECT * FROM app.notes").await;

    // kalamd: the subscribed socket lives in kalam-lived and must survive.
    cluster.kill_and_wait_restart("kalamd").await;
    query_eventually(&alice, "INSERT INTO app.notes VALUES (2, 'after kalamd restart')").await;
    let msg = next_message(&mut ws).await;
    assert_eq!(msg["type"], "change", "{msg}");
    assert_eq!(msg["rows"][0]["id"], 2);
    assert_eq!(msg["seq"], 1);
    assert_eq!(ids(&alice, "app.notes").await, vec![1, 2]);

    // kalam-flushd: flushing works again after the restart.
    cluster.kill_and_wait_restart("kalam-flushd").await;
    flush(&alice, "app.notes").await;
    assert_eq!(ids(&alice, "app.notes").await, vec![1, 2]);
    alice.query("INSERT INTO app.notes VALUES (3, 'after flushd restart')").await.expect("insert");

    // kalam-lived: its sockets die with it; a new connection works.
    cluster.kill_and_wait_restart("kalam-lived").await;
    let mut ws2 = wait_for(Duration::from_secs(30), "WebSocket after lived restart", || async {
        alice.connect_live().await.ok()
    })
    .await;
    subscribe(&mut ws2, "again", "SELECT * FROM app.notes").await;
    alice.query("INSERT INTO app.notes VALUES (4, 'after lived restart')").await.expect("insert");
    let msg = next_message(&mut ws2).await;
    assert_eq!(msg["rows"][0]["id"], 4, "{msg}");

    // Nothing acknowledged was lost, nothing duplicated, across all three restarts.
    assert_eq!(ids(&alice, "app.notes").await, vec![1, 2, 3, 4]);
    let resp = alice.query("SELECT count(*) AS n FROM app.notes").await.expect("count");
    assert_eq!(resp.results[0].rows.as_ref().unwrap()[0]["n"], 4);
    let procs = cluster.processes().await.expect("process table");
    let names: BTreeSet<_> = procs.iter().filter(|p| p.state == "running").map(|p| p.name.clone()).collect();
    assert_eq!(names.len(), 3, "all daemons running: {procs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_supervisor_on_a_busy_port_fails_fast() {
    let cluster = Cluster::start().await;
    let other_dir = tempfile::tempdir().expect("dir");
    let started = Instant::now();
    let mut second = spawn_supervisor(other_dir.path(), cluster.port, &[]);
    let status = wait_for(Duration::from_secs(5), "second supervisor exit", || {
        let s = second.try_wait().ok().flatten();
        async move { s }
    })
    .await;
    let elapsed = started.elapsed();
    assert!(!status.success());
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
    let out = std::fs::read_to_string(other_dir.path().join(format!("supervisor-{}.out", cluster.port))).unwrap();
    assert!(out.contains("address in use"), "message: {out}");
    assert!(!other_dir.path().join("data/rocksdb").exists(), "the second supervisor opened no database");
    assert!(cluster.supervisor_alive());
    assert!(KalamLinkClient::new(cluster.url()).health().await.expect("health"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_every_daemon_and_exits_zero() {
    let cluster = Cluster::start().await;
    let procs = wait_for(Duration::from_secs(60), "all daemons running", || async {
        let procs = cluster.processes().await?;
        procs.iter().all(|p| p.state == "running").then_some(procs)
    })
    .await;
    let pids: Vec<i32> = procs.iter().filter_map(|p| p.pid).map(|p| p as i32).collect();
    assert_eq!(pids.len(), 3);
    let status = tokio::task::block_in_place(|| cluster.terminate(Duration::from_secs(60))).expect("supervisor exited");
    assert!(status.success(), "exit status {status:?}");
    for pid in pids {
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
        assert!(!alive, "daemon {pid} still running after shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_daemon_is_killed_and_restarted() {
    let cluster = Cluster::start().await;
    let old = cluster.running_pid("kalam-lived").await;
    let pid = nix::unistd::Pid::from_raw(old as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("stop lived");
    // Three missed health checks, then a kill and a restart.
    let new = cluster.running_pid_other_than("kalam-lived", Some(old)).await;
    assert_ne!(new, old);
    let mut ws = cluster.client("alice").connect_live().await.expect("lived answers again");
    ws.send_json(&serde_json::json!({"type": "ping"})).await.expect("ping");
    assert_eq!(next_message(&mut ws).await["type"], "pong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_supervisor_gives_up_on_a_crash_looping_kalamd() {
    let owned = Cluster::start().await;
    let cluster = &owned;
    // More than five restarts within a minute: the supervisor stops everything, exits non-zero.
    let mut status = None;
    for _ in 0..8 {
        let Some(procs) = cluster.processes().await else { break };
        let Some(pid) = procs.iter().find(|p| p.name == "kalamd").and_then(|p| p.pid) else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
        let gone = wait_for(Duration::from_secs(30), "kalamd back or supervisor gone", || async move {
            {
                if let Some(s) = cluster.try_exit_status() {
                    return Some(Some(s));
                }
                let procs = cluster.processes().await?;
                let p = procs.into_iter().find(|p| p.name == "kalamd")?;
                (p.state == "running" && p.pid != Some(pid)).then_some(None)
            }
        })
        .await;
        if let Some(s) = gone {
            status = Some(s);
            break;
        }
    }
    let status = match status {
        Some(s) => s,
        None => wait_for(Duration::from_secs(30), "supervisor exit", || async move { cluster.try_exit_status() }).await,
    };
    assert!(!status.success(), "the supervisor exits non-zero when kalamd cannot stay up: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_inserts_survive_kill_9_of_kalamd_under_load() {
    let cluster = Cluster::start().await;
    cluster.client("system").query(SETUP).await.expect("setup");
    let alice = cluster.client("alice");
    let writer = tokio::spawn(insert_through_faults(alice.clone(), "app.notes", 1, 301));
    // Kill kalamd while the writer is busy.
    wait_for(Duration::from_secs(30), "some rows written", || async {
        (ids(&alice, "app.notes").await.len() >= 50).then_some(())
    })
    .await;
    cluster.kill_and_wait_restart("kalamd").await;
    let acked = writer.await.expect("writer");
    let stored = ids(&alice, "app.notes").await;
    for id in &acked {
        assert!(stored.contains(id), "acknowledged row {id} lost");
    }
    let unique: BTreeSet<_> = stored.iter().collect();
    assert_eq!(unique.len(), stored.len(), "no row is duplicated");
    assert_eq!(stored, (1..301).collect::<Vec<_>>(), "every row ends up stored exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_written_during_a_flush_stay_visible_exactly_once() {
    let cluster = Cluster::start().await;
    cluster.client("system").query(SETUP).await.expect("setup");
    let alice = cluster.client("alice");
    alice.query("INSERT INTO app.notes VALUES (0, 'first')").await.expect("insert");
    let writer = tokio::spawn(insert_through_faults(alice.clone(), "app.notes", 1, 401));
    for _ in 0..3 {
        flush(&alice, "app.notes").await;
    }
    let acked = writer.await.expect("writer");
    assert_eq!(acked.len(), 400);
    flush(&alice, "app.notes").await;
    assert_eq!(ids(&alice, "app.notes").await, (0..401).collect::<Vec<_>>());
    let resp = alice.query("SELECT count(*) AS n, count(DISTINCT id) AS d FROM app.notes").await.expect("count");
    let row = &resp.results[0].rows.as_ref().unwrap()[0];
    assert_eq!((row["n"].as_i64(), row["d"].as_i64()), (Some(401), Some(401)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_and_deletes_reach_flushed_rows_and_subscribers() {
    let cluster = Cluster::start().await;
    cluster.client("system").query(SETUP).await.expect("setup");
    let alice = cluster.client("alice");
    alice.query("INSERT INTO app.notes VALUES (1, 'one'), (2, 'two'), (3, 'three')").await.expect("insert");
    flush(&alice, "app.notes").await;
    let mut ws = alice.connect_live().await.expect("connect");
    subscribe(&mut ws, "notes", "SELECT * FROM app.notes").await;

    // Flushed rows are updated and deleted through new buffered versions.
    let resp = alice.query("UPDATE app.notes SET body = body || '!' WHERE id >= 2").await.expect("update");
    assert_eq!(resp.results[0].row_count, 2);
    let resp = alice.query("DELETE FROM app.notes WHERE id = 1").await.expect("delete");
    assert_eq!(resp.results[0].row_count, 1);

    for id in [2, 3] {
        let msg = next_message(&mut ws).await;
        assert_eq!(msg["change_type"], "update", "{msg}");
        assert_eq!(msg["rows"][0]["id"], id);
        assert!(msg["rows"][0]["body"].as_str().unwrap().ends_with('!'));
        assert!(!msg["old_values"][0]["body"].as_str().unwrap().ends_with('!'));
    }
    let msg = next_message(&mut ws).await;
    assert_eq!(msg["change_type"], "delete", "{msg}");
    assert_eq!(msg["old_values"][0]["id"], 1);
    assert_eq!(msg["old_values"][0]["_deleted"], true);
    assert!(msg.get("rows").is_none());
    assert_eq!(msg["seq"], 3);

    let bodies = |resp: kalam_link::QueryResponse| -> Vec<String> {
        resp.results[0].rows.as_ref().unwrap().iter().map(|r| r["body"].as_str().unwrap().to_owned()).collect()
    };
    let before = bodies(alice.query("SELECT body FROM app.notes ORDER BY id").await.expect("select"));
    assert_eq!(before, vec!["two!", "three!"]);
    // Flushing the new versions (including the tombstone) changes nothing visible.
    flush(&alice, "app.notes").await;
    let after = bodies(alice.query("SELECT body FROM app.notes ORDER BY id").await.expect("select"));
    assert_eq!(after, before);
    let resp = alice.query("SELECT id FROM app.notes WHERE _deleted = true").await.expect("deleted rows");
    assert_eq!(resp.results[0].rows.as_ref().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_table_waits_for_live_queries_then_removes_every_file() {
    let cluster = Cluster::start().await;
    cluster.client("system").query(SETUP).await.expect("setup");
    let alice = cluster.client("alice");
    let bob = cluster.client("bob");
    alice.query("INSERT INTO app.notes VALUES (1, 'a')").await.expect("insert");
    bob.query("INSERT INTO app.notes VALUES (1, 'b')").await.expect("insert");
    flush(&alice, "app.notes").await;
    let users_dir = cluster.data_dir().join("storage/app/users/notes");
    assert_eq!(parquet_files(&users_dir.join("alice")).len(), 1);

    let mut ws = alice.connect_live().await.expect("connect");
    subscribe(&mut ws, "notes", "SELECT * FROM app.notes").await;
    let (status, resp) = alice.query_raw("DROP TABLE app.notes").await.expect("drop");
    assert_eq!(status, 400);
    let error = resp.error.expect("refused");
    assert_eq!(error.code, "DEPENDENCY_EXISTS");
    assert!(
        error.message.contains("Cannot drop table app.notes while 1 active live queries exist"),
        "{}",
        error.message
    );
    ws.close().await.expect("close");

    let resp = wait_for(Duration::from_secs(10), "subscription gone", || async {
        let (status, resp) = alice.query_raw("DROP TABLE app.notes").await.ok()?;
        (status == 200).then_some(resp)
    })
    .await;
    let message = resp.results[0].message.clone().unwrap_or_default();
    assert!(message.starts_with("Table app.notes dropped successfully (2 Parquet files deleted"), "{message}");
    assert!(!users_dir.join("alice").exists() && !users_dir.join("bob").exists(), "user directories removed");

    cluster
        .client("system")
        .query("CREATE USER TABLE app.notes (id BIGINT PRIMARY KEY, body TEXT)")
        .await
        .expect("recreate");
    assert!(ids(&alice, "app.notes").await.is_empty(), "no leftover rows after re-creation");
}

async fn completed_flushes(client: &KalamLinkClient, table: &str) -> usize {
    let resp = client
        .query(&format!("SELECT count(*) AS n FROM system.jobs WHERE table_name = '{table}' AND status = 'completed'"))
        .await
        .expect("jobs");
    resp.results[0].rows.as_ref().unwrap()[0]["n"].as_u64().unwrap() as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_threshold_and_interval_trigger_flushes_on_their_own() {
    let cluster = Cluster::start().await;
    let admin = cluster.client("system");
    admin
        .query(
            "CREATE NAMESPACE app; \
             CREATE USER TABLE app.rows (id BIGINT PRIMARY KEY) FLUSH ROW_THRESHOLD 5; \
             CREATE USER TABLE app.timed (id BIGINT PRIMARY KEY) FLUSH INTERVAL 1s",
        )
        .await
        .expect("setup");
    let alice = cluster.client("alice");

    // Below the threshold nothing happens; reaching it starts a flush.
    alice.query("INSERT INTO app.rows VALUES (1), (2), (3), (4)").await.expect("insert");
    alice.query("INSERT INTO app.timed VALUES (1)").await.expect("insert");
    assert_eq!(completed_flushes(&admin, "app.rows").await, 0);
    alice.query("INSERT INTO app.rows VALUES (5)").await.expect("insert");
    wait_for(Duration::from_secs(30), "row-threshold flush", || async {
        (completed_flushes(&admin, "app.rows").await == 1).then_some(())
    })
    .await;
    // The interval table flushes by itself too (checked every second).
    wait_for(Duration::from_secs(30), "interval flush", || async {
        (completed_flushes(&admin, "app.timed").await >= 1).then_some(())
    })
    .await;
    let dir = cluster.data_dir().join("storage/app/users");
    assert_eq!(parquet_files(&dir.join("rows/alice")).len(), 1);
    assert_eq!(parquet_files(&dir.join("timed/alice")).len(), 1);
    assert_eq!(ids(&alice, "app.rows").await, vec![1, 2, 3, 4, 5]);
}
