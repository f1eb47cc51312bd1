//! Where flushed files land (storage.md §7): a storage's URI and templates, sharding, a URI
//! change after files exist, and DROP TABLE removing every file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kalam_e2e::{Cluster, wait_for};
use kalam_link::KalamLinkClient;

async fn flush_and_wait(c: &KalamLinkClient, table: &str) {
    let resp = c.query(&format!("FLUSH TABLE {table}")).await.unwrap();
    let job = resp.results[0].rows.as_ref().unwrap()[0]["job_id"].as_str().unwrap().to_owned();
    let sql = format!("SELECT status FROM system.jobs WHERE job_id = '{job}'");
    wait_for(Duration::from_secs(60), "flush completed", || async {
        let r = c.query(&sql).await.ok()?;
        (r.results[0].rows.as_ref()?.first()?["status"] == "completed").then_some(())
    })
    .await;
}

/// Every Parquet file under `dir`, relative to it.
fn parquet_files(dir: &Path) -> Vec<String> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, base, out);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                out.push(path.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn dirs_of(files: &[String]) -> Vec<String> {
    files.iter().map(|f| Path::new(f).parent().unwrap().display().to_string()).collect()
}

async fn ids(c: &KalamLinkClient, table: &str) -> Vec<i64> {
    let r = c.query(&format!("SELECT id FROM {table} ORDER BY id")).await.unwrap();
    r.results[0].rows.as_ref().unwrap().iter().map(|row| row["id"].as_i64().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_follow_the_storage_templates_and_survive_a_uri_change() {
    let cluster = Cluster::start().await;
    let c = cluster.client("system");
    let first: PathBuf = cluster.dir.path().join("archive");
    let second: PathBuf = cluster.dir.path().join("archive2");
    c.query(&format!(
        "CREATE STORAGE archive TYPE filesystem URI '{}' \
         SHARED_TABLES_TEMPLATE '{{namespace}}/{{tableName}}' USER_TABLES_TEMPLATE '{{namespace}}/{{tableName}}/{{userId}}'",
        first.display()
    ))
    .await
    .unwrap();
    c.query("CREATE NAMESPACE app; CREATE USER TABLE app.t (id BIGINT PRIMARY KEY) STORAGE archive").await.unwrap();
    c.query("CREATE SHARED TABLE app.s (id BIGINT PRIMARY KEY) STORAGE archive").await.unwrap();
    assert!(first.join("app/s").is_dir(), "a SHARED table's directory exists at CREATE");
    let alice = cluster.client("alice");
    alice.query("INSERT INTO app.t VALUES (1), (2)").await.unwrap();
    flush_and_wait(&c, "app.t").await;
    let files = parquet_files(&first);
    assert_eq!(dirs_of(&files), ["app/t/alice"], "{files:?}");
    assert!(!files[0].contains('{') && !files[0].contains("${"));

    // New files go to the new URI; the old ones stay readable where they are.
    c.query(&format!("ALTER STORAGE archive SET URI '{}'", second.display())).await.unwrap();
    alice.query("INSERT INTO app.t VALUES (3)").await.unwrap();
    flush_and_wait(&c, "app.t").await;
    assert_eq!(parquet_files(&first).len(), 1);
    assert_eq!(dirs_of(&parquet_files(&second)), ["app/t/alice"]);
    assert_eq!(ids(&alice, "app.t").await, [1, 2, 3]);
    let stats = c.query("SHOW TABLE STATS app.t").await.unwrap();
    let row = &stats.results[0].rows.as_ref().unwrap()[0];
    assert_eq!((row["parquet_files"].as_i64(), row["flushed_rows"].as_i64()), (Some(2), Some(3)));

    // DROP TABLE removes the files in both places.
    let resp = c.query("DROP TABLE app.t").await.unwrap();
    let message = resp.results[0].message.clone().unwrap();
    assert!(message.starts_with("Table app.t dropped successfully (2 Parquet files deleted"), "{message}");
    assert!(parquet_files(&first).is_empty() && parquet_files(&second).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alphabetic_sharding_puts_users_in_letter_directories() {
    let cluster = Cluster::start().await;
    let c = cluster.client("system");
    c.query("CREATE NAMESPACE app; CREATE USER TABLE app.m (id BIGINT PRIMARY KEY) SHARDING alphabetic").await.unwrap();
    for user in ["alice", "bob", "9x"] {
        cluster.client(user).query("INSERT INTO app.m VALUES (1)").await.unwrap();
    }
    flush_and_wait(&c, "app.m").await;
    let files = parquet_files(&cluster.data_dir().join("storage"));
    assert_eq!(dirs_of(&files), ["app/users/m/a/alice", "app/users/m/b/bob", "app/users/m/z/9x"], "{files:?}");
    for user in ["alice", "bob", "9x"] {
        assert_eq!(ids(&cluster.client(user), "app.m").await, [1]);
    }
}
