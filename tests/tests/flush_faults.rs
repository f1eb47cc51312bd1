//! kalam-flushd killed with SIGKILL at arbitrary points of flushes while writers keep inserting
//! (storage.md §6, §11): afterwards every acknowledged row is stored exactly once, every job ends
//! `completed`, and no temporary or uncommitted file is visible.

use std::collections::BTreeSet;
use std::time::Duration;

use kalam_e2e::{Cluster, files, insert_through_faults, wait_for};
use kalam_link::KalamLinkClient;

/// Kills per run: the supervisor restarts a daemon at most 5 times a minute.
const KILLS: usize = 5;

async fn ids(client: &KalamLinkClient, table: &str) -> Vec<i64> {
    let r = client.query(&format!("SELECT id FROM {table} ORDER BY id")).await.expect("select");
    r.results[0].rows.as_ref().unwrap().iter().map(|row| row["id"].as_i64().unwrap()).collect()
}

async fn run(table_sql: &str, table: &'static str, users: &[&str]) {
    let cluster = Cluster::start().await;
    let admin = cluster.client("system");
    admin.query(&format!("CREATE NAMESPACE app; {table_sql}")).await.expect("setup");
    let writers: Vec<_> = users
        .iter()
        .enumerate()
        .map(|(u, user)| {
            let from = (u as i64) * 100_000;
            tokio::spawn(insert_through_faults(cluster.client(user), table, from, from + 400))
        })
        .collect();

    // Kill kalam-flushd at different moments after a flush starts: before, during and after it
    // writes files, and around the commit.
    for i in 0..KILLS {
        wait_for(Duration::from_secs(30), "a flush job", || async {
            admin.query(&format!("FLUSH TABLE {table}")).await.ok()
        })
        .await;
        tokio::time::sleep(Duration::from_millis(5 + (i as u64 * 37) % 120)).await;
        cluster.kill_and_wait_restart("kalam-flushd").await;
    }
    let mut acked = BTreeSet::new();
    for w in writers {
        acked.extend(w.await.expect("writer"));
    }

    // Every job the kills interrupted resumes and completes; one more flush empties the buffer.
    let resp = admin.query(&format!("FLUSH TABLE {table}")).await.expect("flush");
    let last = resp.results[0].rows.as_ref().unwrap()[0]["job_id"].as_str().unwrap().to_owned();
    wait_for(Duration::from_secs(120), "every flush job finished", || async {
        let r = admin.query("SELECT job_id, status FROM system.jobs WHERE job_type = 'flush'").await.ok()?;
        let rows = r.results[0].rows.clone()?;
        let open = rows.iter().any(|j| j["status"] != "completed");
        let last_done = rows.iter().any(|j| j["job_id"] == last.as_str() && j["status"] == "completed");
        (!open && last_done).then_some(())
    })
    .await;

    let mut stored = Vec::new();
    for user in users {
        stored.extend(ids(&cluster.client(user), table).await);
    }
    let unique: BTreeSet<i64> = stored.iter().copied().collect();
    assert_eq!(unique.len(), stored.len(), "no row is duplicated");
    for id in &acked {
        assert!(unique.contains(id), "acknowledged row {id} lost");
    }
    let expected: BTreeSet<i64> =
        users.iter().enumerate().flat_map(|(u, _)| (u as i64 * 100_000)..(u as i64 * 100_000 + 400)).collect();
    assert_eq!(unique, expected, "every row stored exactly once");

    // Nothing half-written is visible, and every Parquet file is one the manifest knows.
    let storage = cluster.data_dir().join("storage");
    assert!(files(&storage, &|n| n.ends_with(".tmp")).is_empty(), "temporary files left");
    let on_disk = files(&storage, &|n| n.ends_with(".parquet")).len() as i64;
    let stats = admin.query(&format!("SHOW TABLE STATS {table}")).await.expect("stats");
    let row = &stats.results[0].rows.as_ref().unwrap()[0];
    assert_eq!(row["parquet_files"].as_i64(), Some(on_disk), "files on disk match the manifest");
    assert_eq!(row["buffered_rows"].as_i64(), Some(0));
    assert_eq!(row["flushed_rows"].as_i64(), Some(expected.len() as i64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_table_flushes_survive_kill_9_of_flushd() {
    run(
        "CREATE USER TABLE app.notes (id BIGINT PRIMARY KEY, body TEXT) FLUSH ROW_THRESHOLD 150",
        "app.notes",
        &["alice", "bob"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_table_flushes_survive_kill_9_of_flushd() {
    run(
        "CREATE SHARED TABLE app.config (id BIGINT PRIMARY KEY, body TEXT) FLUSH INTERVAL 1s",
        "app.config",
        &["carol"],
    )
    .await;
}
