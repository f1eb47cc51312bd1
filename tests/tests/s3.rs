//! S3 storages against a real S3-compatible server (moto, on loopback): CREATE STORAGE TYPE s3
//! with write-only credentials, flushes as one PUT per file under the URI's prefix, reads of
//! flushed rows (scans, point lookups, UPDATE of flushed rows), and DROP TABLE deleting objects.

use std::time::Duration;

use kalam_e2e::{Cluster, S3Server, wait_for};
use kalam_link::KalamLinkClient;

async fn flush_and_wait(c: &KalamLinkClient, table: &str) -> serde_json::Map<String, serde_json::Value> {
    let resp = c.query(&format!("FLUSH TABLE {table}")).await.unwrap();
    let job = resp.results[0].rows.as_ref().unwrap()[0]["job_id"].as_str().unwrap().to_owned();
    let sql = format!("SELECT status, error_message, result FROM system.jobs WHERE job_id = '{job}'");
    wait_for(Duration::from_secs(60), "flush finished", || async {
        let r = c.query(&sql).await.ok()?;
        let row = r.results[0].rows.as_ref()?.first()?.clone();
        (row["status"] != "queued" && row["status"] != "running").then_some(row)
    })
    .await
}

async fn rows(c: &KalamLinkClient, sql: &str) -> Vec<serde_json::Map<String, serde_json::Value>> {
    c.query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}")).results[0].rows.clone().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_shared_tables_flush_to_s3_and_read_back() {
    let s3 = S3Server::start().await;
    s3.create_bucket("kalam-test");
    let cluster = Cluster::start().await;
    let c = cluster.client("system");
    let create = format!(
        "CREATE STORAGE cloud TYPE s3 NAME 'Cloud' URI 's3://kalam-test/data/' \
         CREDENTIALS '{{\"access_key_id\":\"test\",\"secret_access_key\":\"test\",\"endpoint\":\"{}\"}}' REGION 'us-east-1'",
        s3.endpoint()
    );
    c.query(&create).await.unwrap();
    // Credentials are write-only.
    let storage =
        rows(&c, "SELECT storage_type, uri, credentials FROM system.storages WHERE storage_id = 'cloud'").await;
    assert_eq!(storage[0]["storage_type"], "s3");
    assert_eq!(storage[0]["uri"], "s3://kalam-test/data/");
    assert_eq!(storage[0]["credentials"], "***");
    let shown = rows(&c, "SHOW STORAGES").await;
    assert!(shown.iter().all(|s| !s.values().any(|v| v.to_string().contains("secret"))));

    c.query("CREATE NAMESPACE app; CREATE USER TABLE app.t (id BIGINT PRIMARY KEY, v TEXT) STORAGE cloud")
        .await
        .unwrap();
    c.query("CREATE SHARED TABLE app.s (k TEXT PRIMARY KEY, n INT) STORAGE cloud").await.unwrap();
    let alice = cluster.client("alice");
    alice.query("INSERT INTO app.t VALUES (1, 'a'), (2, 'b'), (3, 'c')").await.unwrap();
    alice.query("INSERT INTO app.s VALUES ('x', 1), ('y', 2)").await.unwrap();
    for table in ["app.t", "app.s"] {
        let job = flush_and_wait(&c, table).await;
        assert_eq!(job["status"], "completed", "{job:?}");
        assert!(job["result"].as_str().unwrap().contains("s3://kalam-test/data/"));
    }
    let keys = s3.keys("kalam-test");
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys.iter().any(|k| k.starts_with("data/app/users/t/alice/") && k.ends_with(".parquet")), "{keys:?}");
    assert!(keys.iter().any(|k| k.starts_with("data/app/shared/s/") && k.ends_with(".parquet")), "{keys:?}");

    // Flushed rows read back from S3: scans, point lookups, and updates of flushed rows.
    let ids: Vec<i64> =
        rows(&alice, "SELECT id FROM app.t ORDER BY id").await.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, [1, 2, 3]);
    assert_eq!(rows(&alice, "SELECT v FROM app.t WHERE id = 2").await[0]["v"], "b");
    alice.query("UPDATE app.t SET v = 'z' WHERE id = 1").await.unwrap();
    alice.query("INSERT INTO app.s VALUES ('z', 3)").await.unwrap();
    let err = alice.query("INSERT INTO app.t VALUES (3, 'dup')").await.unwrap_err().to_string();
    assert!(err.contains("Duplicate primary key value '3'"), "{err}");
    let s: Vec<i64> =
        rows(&alice, "SELECT n FROM app.s ORDER BY k").await.iter().map(|r| r["n"].as_i64().unwrap()).collect();
    assert_eq!(s, [1, 2, 3]);
    assert_eq!(rows(&alice, "SELECT v FROM app.t WHERE id = 1").await[0]["v"], "z");

    // DROP TABLE deletes the objects.
    c.query("DROP TABLE app.t").await.unwrap();
    c.query("DROP TABLE app.s").await.unwrap();
    assert!(s3.keys("kalam-test").is_empty(), "{:?}", s3.keys("kalam-test"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_storage_definitions_are_validated() {
    let cluster = Cluster::start().await;
    let c = cluster.client("system");
    for (sql, message) in [
        ("CREATE STORAGE a TYPE s3 URI 's3://bucket'", "Invalid S3 URI"),
        ("CREATE STORAGE a TYPE s3 URI 's3://bucket/prefix'", "Invalid S3 URI"),
        ("CREATE STORAGE a TYPE s3 URI 's3://b1b/' CREDENTIALS '[1]'", "Credentials must be a JSON object"),
        ("CREATE STORAGE a TYPE s3 URI 's3://b1b/' BUCKET 'x2x'", "either URI or BUCKET"),
    ] {
        let err = c.query(sql).await.unwrap_err().to_string();
        assert!(err.contains(message), "{sql}: {err}");
    }
    // BUCKET is shorthand for URI 's3://<bucket>/'; REGION goes into the credentials.
    c.query("CREATE STORAGE b TYPE s3 BUCKET 'kalam-b' REGION 'eu-west-1'").await.unwrap();
    let r = rows(&c, "SELECT uri, credentials FROM system.storages WHERE storage_id = 'b'").await;
    assert_eq!((r[0]["uri"].as_str(), r[0]["credentials"].as_str()), (Some("s3://kalam-b/"), Some("***")));
    c.query("ALTER STORAGE b SET CREDENTIALS '{\"access_key_id\":\"k\"}'").await.unwrap();
    let err = c.query("ALTER STORAGE local SET CREDENTIALS '{}'").await.unwrap_err().to_string();
    assert!(err.contains("apply to s3 storages only"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_during_an_s3_outage_dead_letters_and_commits_on_retry() {
    let s3 = S3Server::start().await;
    s3.create_bucket("kalam-test");
    let cluster =
        Cluster::start_with_config("[flush]\nmax_retries = 2\nretry_base_delay_ms = 100\nretry_max_delay_ms = 300\n")
            .await;
    let c = cluster.client("system");
    let create = format!(
        "CREATE STORAGE cloud TYPE s3 URI 's3://kalam-test/' \
         CREDENTIALS '{{\"access_key_id\":\"test\",\"secret_access_key\":\"test\",\"endpoint\":\"{}\"}}'",
        s3.endpoint()
    );
    c.query(&create).await.unwrap();
    c.query("CREATE NAMESPACE app; CREATE SHARED TABLE app.s (id BIGINT PRIMARY KEY) STORAGE cloud").await.unwrap();
    c.query("INSERT INTO app.s VALUES (1), (2), (3)").await.unwrap();

    // The server goes away: every attempt fails, the job ends as a dead letter, nothing is lost.
    let port = s3.stop();
    let job = flush_and_wait(&c, "app.s").await;
    let job_id = rows(&c, "SELECT job_id FROM system.jobs").await[0]["job_id"].as_str().unwrap().to_owned();
    let failed = wait_for(Duration::from_secs(120), "dead letter", || async {
        let r =
            rows(&c, &format!("SELECT status, dead_letter, attempts FROM system.jobs WHERE job_id = '{job_id}'")).await;
        (r[0]["status"] == "failed").then(|| r[0].clone())
    })
    .await;
    assert_eq!((failed["dead_letter"].as_bool(), failed["attempts"].as_i64()), (Some(true), Some(3)), "{job:?}");
    let ids: Vec<i64> =
        rows(&c, "SELECT id FROM app.s ORDER BY id").await.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, [1, 2, 3]);

    // Back (empty, as moto keeps no state): RETRY JOB commits the same rows once.
    let s3 = S3Server::start_on(port).await;
    s3.create_bucket("kalam-test");
    c.query(&format!("RETRY JOB '{job_id}'")).await.unwrap();
    wait_for(Duration::from_secs(60), "retried job completed", || async {
        let r = rows(&c, &format!("SELECT status FROM system.jobs WHERE job_id = '{job_id}'")).await;
        (r[0]["status"] == "completed").then_some(())
    })
    .await;
    assert_eq!(s3.keys("kalam-test").len(), 1);
    let ids: Vec<i64> =
        rows(&c, "SELECT id FROM app.s ORDER BY id").await.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, [1, 2, 3]);
    let stats = rows(&c, "SHOW TABLE STATS app.s").await;
    assert_eq!((stats[0]["buffered_rows"].as_i64(), stats[0]["flushed_rows"].as_i64()), (Some(0), Some(3)));
}
