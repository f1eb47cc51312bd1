//! Flush administration end to end (sql.md §11, storage.md §11): retries with back-off and dead
//! letters, RETRY JOB, KILL JOB, PAUSE / RESUME FLUSH, ALTER FLUSH SETTINGS, FLUSH ALL TABLES.
//! Storage failures are injected by putting a plain file where a table's directory must be.

use std::path::PathBuf;
use std::time::Duration;

use kalam_e2e::{Cluster, count, flush, job, rows, wait_for, wait_status};
use kalam_link::KalamLinkClient;
use serde_json::Value as Json;

/// Fast retries so a job runs out of attempts in about a second.
const FAST_RETRIES: &str = "[flush]\nmax_retries = 2\nretry_base_delay_ms = 100\nretry_max_delay_ms = 400\n";

async fn error_of(client: &KalamLinkClient, sql: &str) -> String {
    match client.query(sql).await {
        Ok(_) => panic!("{sql} succeeded"),
        Err(e) => e.to_string(),
    }
}

async fn message(client: &KalamLinkClient, sql: &str) -> String {
    let resp = client.query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    resp.results.last().and_then(|r| r.message.clone()).unwrap_or_default()
}

fn shared_dir(cluster: &Cluster, ns: &str, table: &str) -> PathBuf {
    cluster.data_dir().join("storage").join(ns).join("shared").join(table)
}

/// Replaces a SHARED table's directory by a file, so every write into it fails.
fn block(dir: &std::path::Path) {
    std::fs::remove_dir_all(dir).expect("remove table dir");
    std::fs::write(dir, b"not a directory").expect("blocking file");
}

fn unblock(dir: &std::path::Path) {
    std::fs::remove_file(dir).expect("remove blocking file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_attempts_retry_then_dead_letter_and_retry_job_commits() {
    let cluster = Cluster::start_with_config(FAST_RETRIES).await;
    let c = cluster.client("system");
    c.query("CREATE NAMESPACE app; CREATE SHARED TABLE app.s (id BIGINT PRIMARY KEY, v TEXT) FLUSH ROW_THRESHOLD 1000")
        .await
        .unwrap();
    c.query("INSERT INTO app.s VALUES (1, 'a'), (2, 'b'), (3, 'c')").await.unwrap();
    let dir = shared_dir(&cluster, "app", "s");
    block(&dir);

    let job_id = flush(&c, "app.s").await;
    // First a retry is scheduled with its time, then the last attempt fails for good.
    let retrying = wait_status(&c, &job_id, "retrying").await;
    assert!(retrying["next_retry_at"].is_string(), "{retrying:?}");
    assert_eq!(retrying["dead_letter"], false);
    let failed = wait_status(&c, &job_id, "failed").await;
    assert_eq!(failed["attempts"], 3, "{failed:?}");
    assert_eq!(failed["max_attempts"], 3);
    assert_eq!(failed["dead_letter"], true);
    assert!(failed["completed_at"].is_string());
    assert!(failed["next_retry_at"].is_null());
    assert_eq!(failed["error_message"], "storage I/O error while writing Parquet");
    let dead = rows(&c, "SELECT job_id FROM system.jobs WHERE dead_letter = true").await;
    assert_eq!(dead.len(), 1);
    // Nothing lost while failing: every row still buffered and visible once.
    assert_eq!(count(&c, "app.s").await, 3);
    let status =
        rows(&c, "SELECT buffered_rows, consecutive_failures, last_error, last_flush_status FROM system.flush_status")
            .await;
    assert_eq!(status[0]["buffered_rows"], 3);
    assert_eq!(status[0]["consecutive_failures"], 1);
    assert_eq!(status[0]["last_flush_status"], "failed");

    // A dead-lettered job cannot be killed, but it can be retried once the fault is fixed.
    let err = error_of(&c, &format!("KILL JOB '{job_id}'")).await;
    assert!(err.contains(&format!("Job '{job_id}' cannot be cancelled (status: failed)")), "{err}");
    unblock(&dir);
    assert_eq!(message(&c, &format!("RETRY JOB '{job_id}'")).await, format!("Job '{job_id}' re-queued"));
    let done = wait_status(&c, &job_id, "completed").await;
    assert_eq!(done["attempts"], 1);
    assert_eq!(done["dead_letter"], false);
    assert_eq!(count(&c, "app.s").await, 3);
    let status = rows(&c, "SELECT buffered_rows, consecutive_failures FROM system.flush_status").await;
    assert_eq!(status[0]["buffered_rows"], 0);
    assert_eq!(status[0]["consecutive_failures"], 0);
    // No temporary or uncommitted files are left behind.
    let names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(names[0].ends_with(".parquet") && !names[0].starts_with('.'));

    let err = error_of(&c, &format!("RETRY JOB '{job_id}'")).await;
    assert!(err.contains("cannot be retried (status: completed)"), "{err}");
    let err = error_of(&c, "RETRY JOB 'flush-nope-1-00000000'").await;
    assert!(err.contains("Job not found: flush-nope-1-00000000"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_job_cancels_a_pending_flush_and_keeps_the_rows() {
    // Long back-off: the job waits in `retrying` until it is killed.
    let cluster = Cluster::start_with_config("[flush]\nretry_base_delay_ms = 60000\n").await;
    let c = cluster.client("system");
    c.query("CREATE NAMESPACE app; CREATE SHARED TABLE app.s (id BIGINT PRIMARY KEY) FLUSH ROW_THRESHOLD 1000")
        .await
        .unwrap();
    c.query("INSERT INTO app.s VALUES (1), (2)").await.unwrap();
    let dir = shared_dir(&cluster, "app", "s");
    block(&dir);
    let job_id = flush(&c, "app.s").await;
    wait_status(&c, &job_id, "retrying").await;

    assert_eq!(message(&c, &format!("KILL JOB {job_id}")).await, format!("Job '{job_id}' cancelled successfully"));
    let cancelled = job(&c, &job_id).await;
    assert_eq!(cancelled["status"], "cancelled");
    assert!(cancelled["completed_at"].is_string());
    assert_eq!(count(&c, "app.s").await, 2);
    let err = error_of(&c, "KILL JOB 'no-such-job'").await;
    assert!(err.to_lowercase().contains("job not found"), "{err}");

    // A new FLUSH TABLE starts a new job; the cancelled one can also be retried later.
    unblock(&dir);
    let second = flush(&c, "app.s").await;
    assert_ne!(second, job_id);
    wait_status(&c, &second, "completed").await;
    let err = error_of(&c, &format!("KILL JOB '{second}'")).await;
    assert!(err.contains("cannot be cancelled (status: completed)"), "{err}");
    assert_eq!(message(&c, &format!("RETRY JOB '{job_id}'")).await, format!("Job '{job_id}' re-queued"));
    wait_status(&c, &job_id, "completed").await;
    assert_eq!(count(&c, "app.s").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_tables_never_flush_until_resumed_and_the_pause_survives_restarts() {
    let cluster = Cluster::start().await;
    let c = cluster.client("system");
    c.query("CREATE NAMESPACE app; CREATE USER TABLE app.t (id BIGINT PRIMARY KEY) FLUSH ROW_THRESHOLD 5")
        .await
        .unwrap();
    assert_eq!(message(&c, "PAUSE FLUSH app.t").await, "Flush paused for table 'app.t'");
    let alice = cluster.client("alice");
    alice.query("INSERT INTO app.t VALUES (1), (2), (3), (4), (5), (6)").await.unwrap();
    let err = error_of(&c, "FLUSH TABLE app.t").await;
    assert!(err.contains("Flush is paused for table 'app.t'. Use RESUME FLUSH first."), "{err}");
    let paused = rows(&c, "SELECT t.flush_paused, f.paused FROM system.tables t JOIN system.flush_status f ON t.table_name = f.table_name").await;
    assert_eq!((paused[0]["flush_paused"].clone(), paused[0]["paused"].clone()), (Json::Bool(true), Json::Bool(true)));

    // The row threshold was reached, but no job starts while paused — across a kalamd restart.
    cluster.kill_and_wait_restart("kalamd").await;
    let c = cluster.client("system");
    wait_for(Duration::from_secs(30), "kalamd back", || async { c.query("SELECT 1").await.ok() }).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(rows(&c, "SELECT job_id FROM system.jobs WHERE job_type = 'flush'").await.is_empty());
    assert_eq!(rows(&c, "SELECT flush_paused FROM system.tables").await[0]["flush_paused"], true);

    // RESUME fires the pending row trigger.
    assert_eq!(message(&c, "RESUME FLUSH app.t").await, "Flush resumed for table 'app.t'");
    wait_for(Duration::from_secs(30), "flush after resume", || async {
        let done = rows(&c, "SELECT job_id FROM system.jobs WHERE job_type = 'flush' AND status = 'completed'").await;
        (!done.is_empty()).then_some(())
    })
    .await;

    // Server-wide pause: persisted, refuses every flush, lifted by RESUME FLUSH ALL.
    assert_eq!(message(&c, "PAUSE FLUSH ALL").await, "Flush paused for all tables");
    cluster.kill_and_wait_restart("kalamd").await;
    let c = cluster.client("system");
    wait_for(Duration::from_secs(30), "kalamd back", || async { c.query("SELECT 1").await.ok() }).await;
    let err = error_of(&c, "FLUSH TABLE app.t").await;
    assert!(err.contains("Flush is paused for all tables"), "{err}");
    let err = error_of(&c, "FLUSH ALL TABLES").await;
    assert!(err.contains("Flush is paused for all tables"), "{err}");
    assert_eq!(message(&c, "RESUME FLUSH ALL").await, "Flush resumed for all tables");
    flush(&c, "app.t").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_settings_and_flush_all_tables() {
    let cluster = Cluster::start().await;
    let c = cluster.client("system");
    c.query(
        "CREATE NAMESPACE app; CREATE NAMESPACE other; \
         CREATE USER TABLE app.b (id BIGINT PRIMARY KEY); CREATE SHARED TABLE app.a (id BIGINT PRIMARY KEY); \
         CREATE SHARED TABLE other.c (id BIGINT PRIMARY KEY); CREATE STREAM TABLE app.e (id BIGINT PRIMARY KEY) TTL 10s",
    )
    .await
    .unwrap();

    assert_eq!(
        message(&c, "ALTER FLUSH SETTINGS app.b SET INTERVAL 60s, ROW_THRESHOLD 5000").await,
        "Flush settings updated for table 'app.b'"
    );
    let t =
        rows(&c, "SELECT flush_row_threshold, flush_interval_seconds FROM system.tables WHERE table_name = 'b'").await;
    assert_eq!((t[0]["flush_row_threshold"].clone(), t[0]["flush_interval_seconds"].clone()), (5000.into(), 60.into()));
    message(&c, "ALTER FLUSH SETTINGS app.b SET ROW_THRESHOLD NONE, SHARDING alphabetic").await;
    let t = rows(
        &c,
        "SELECT flush_row_threshold, flush_interval_seconds, sharding FROM system.tables WHERE table_name = 'b'",
    )
    .await;
    assert_eq!(t[0]["flush_row_threshold"], Json::Null);
    assert_eq!(t[0]["sharding"], "alphabetic");
    message(&c, "ALTER FLUSH SETTINGS app.b RESET").await;
    let t = rows(
        &c,
        "SELECT flush_row_threshold, flush_interval_seconds, sharding FROM system.tables WHERE table_name = 'b'",
    )
    .await;
    assert_eq!(
        (t[0]["flush_row_threshold"].clone(), t[0]["flush_interval_seconds"].clone()),
        (10000.into(), 300.into())
    );
    assert_eq!(t[0]["sharding"], "none");
    for bad in [
        "ALTER FLUSH SETTINGS app.b SET ROW_THRESHOLD 0",
        "ALTER FLUSH SETTINGS app.b SET INTERVAL 86400s",
        "ALTER FLUSH SETTINGS app.a SET SHARDING alphabetic",
        "ALTER FLUSH SETTINGS app.e SET INTERVAL 5s",
        "ALTER FLUSH SETTINGS b SET INTERVAL 5s",
    ] {
        error_of(&c, bad).await;
    }

    // One job per USER/SHARED table, ordered by namespace then table; streams are skipped.
    let all = c.query("FLUSH ALL TABLES").await.unwrap();
    let result = &all.results[0];
    let tables: Vec<String> = result
        .rows
        .as_ref()
        .unwrap()
        .iter()
        .map(|r| format!("{}.{}", r["namespace_id"].as_str().unwrap(), r["table_name"].as_str().unwrap()))
        .collect();
    assert_eq!(tables, ["app.a", "app.b", "other.c"]);
    let ids: Vec<&str> = result.rows.as_ref().unwrap().iter().map(|r| r["job_id"].as_str().unwrap()).collect();
    assert_eq!(
        result.message.as_deref(),
        Some(format!("Flush started for 3 table(s). Job IDs: [{}]", ids.join(", ")).as_str())
    );
    for id in &ids {
        wait_status(&c, id, "completed").await;
    }
    let in_app = rows(&c, "FLUSH ALL TABLES IN app").await;
    assert_eq!(in_app.len(), 2);
    let err = error_of(&c, "FLUSH ALL TABLES IN nope").await;
    assert!(err.contains("Namespace 'nope' does not exist"), "{err}");
    c.query("CREATE NAMESPACE empty").await.unwrap();
    assert_eq!(message(&c, "FLUSH ALL TABLES IN empty").await, "No tables to flush");
}

fn now_us() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64
}

/// A timestamp column of one row, in microseconds.
async fn micros(client: &KalamLinkClient, sql: &str) -> i64 {
    rows(client, sql).await[0]["t"].as_i64().unwrap_or_else(|| panic!("{sql}: no timestamp"))
}

/// The flush jobs of a table (`ns.table`): (created_at, completed_at) in microseconds, oldest first.
async fn job_times(client: &KalamLinkClient, table: &str) -> Vec<(i64, Option<i64>)> {
    let sql = format!(
        "SELECT CAST(created_at AS BIGINT) AS c, CAST(completed_at AS BIGINT) AS d FROM system.jobs \
         WHERE job_type = 'flush' AND table_name = '{table}' ORDER BY created_at"
    );
    rows(client, &sql).await.iter().map(|r| (r["c"].as_i64().unwrap(), r["d"].as_i64())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triggers_fire_on_time_as_recorded_by_their_jobs() {
    let cluster = Cluster::start().await;
    let c = cluster.client("system");
    c.query(
        "CREATE NAMESPACE app; \
         CREATE SHARED TABLE app.counted (id BIGINT PRIMARY KEY) FLUSH ROW_THRESHOLD 3; \
         CREATE SHARED TABLE app.timed (id BIGINT PRIMARY KEY) FLUSH INTERVAL 2s",
    )
    .await
    .expect("setup");

    // Row threshold: the write that reaches it creates the job (within 100 ms of it).
    c.query("INSERT INTO app.counted VALUES (1), (2)").await.unwrap();
    assert!(job_times(&c, "app.counted").await.is_empty());
    let before = now_us();
    c.query("INSERT INTO app.counted VALUES (3)").await.unwrap();
    let jobs = job_times(&c, "app.counted").await;
    assert_eq!(jobs.len(), 1, "the threshold write started a flush");
    assert!(
        (-5_000..=100_000).contains(&(jobs[0].0 - before)),
        "job created {} µs after the write",
        jobs[0].0 - before
    );

    // Interval: due two seconds after creation, then two seconds after the last flush; each job
    // starts within a second of that.
    c.query("INSERT INTO app.timed VALUES (1)").await.unwrap();
    let created =
        micros(&c, "SELECT CAST(created_at AS BIGINT) AS t FROM system.tables WHERE table_name = 'timed'").await;
    let mut due = created + 2_000_000;
    for round in 0..2 {
        let (job_created, completed) = wait_for(Duration::from_secs(30), "an interval flush", || async {
            job_times(&c, "app.timed").await.get(round).copied().filter(|(_, done)| done.is_some())
        })
        .await;
        let late = job_created - due;
        assert!((0..=1_000_000).contains(&late), "round {round}: the job came {late} µs after its due time");
        c.query(&format!("INSERT INTO app.timed VALUES ({})", round + 2)).await.unwrap();
        due = completed.unwrap() + 2_000_000;
    }
    assert_eq!(count(&c, "app.timed").await, 3);
}
