//! `BEGIN … COMMIT | ROLLBACK` inside one request (sql.md §9): writes are staged and applied
//! atomically at COMMIT, later statements of the block see the block's earlier writes, SELECTs
//! see committed data only, failures roll the whole block back, and live notifications follow
//! the commit in statement order.

mod live_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value as Json, json};

use live_support::*;

/// Posts `sql` as user `alice` (loopback bypass); returns the HTTP status and the body.
async fn post(cluster: &kalam_e2e::Cluster, sql: &str) -> (u16, Json) {
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/api/sql", cluster.url()))
        .header("X-USER-ID", "alice")
        .json(&json!({ "sql": sql }))
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("json body"))
}

fn messages(body: &Json) -> Vec<String> {
    body["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["message"].as_str().unwrap_or("").to_owned())
        .collect()
}

async fn ids(cluster: &kalam_e2e::Cluster) -> Vec<(i64, String)> {
    let (status, body) = post(cluster, "SELECT id, body FROM app.m ORDER BY id").await;
    assert_eq!(status, 200, "{body}");
    body["results"][0]["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| (r["id"].as_i64().expect("id"), r["body"].as_str().unwrap_or("").to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_block_applies_every_write_and_reads_its_own_staged_rows() {
    let cluster = start(SETUP).await;
    let (status, body) = post(
        &cluster,
        "INSERT INTO app.m (id, body, n) VALUES (100, 'before', 1); \
         BEGIN; \
         INSERT INTO app.m (id, body, n) VALUES (1, 'one', 1), (2, 'two', 2); \
         UPDATE app.m SET body = 'uno' WHERE id = 1; \
         SELECT COUNT(*) AS c FROM app.m; \
         UPDATE app.m SET n = n + 10 WHERE n < 5; \
         DELETE FROM app.m WHERE id = 2; \
         COMMIT; \
         SELECT COUNT(*) AS c FROM app.m",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        messages(&body),
        [
            "Inserted 1 row(s)",
            "Transaction started",
            "Inserted 2 row(s)",
            "Updated 1 row(s)",
            "",
            "Updated 3 row(s)",
            "Deleted 1 row(s)",
            "Transaction committed (5 statement(s))",
            "",
        ]
    );
    // The SELECT inside the block saw committed data only; the one after it sees the commit.
    assert_eq!(body["results"][4]["rows"], json!([{"c": 1}]), "{body}");
    assert_eq!(body["results"][8]["rows"], json!([{"c": 2}]), "{body}");
    assert_eq!(ids(&cluster).await, [(1, "uno".to_owned()), (100, "before".to_owned())]);
    let (_, body) = post(&cluster, "SELECT id, n FROM app.m ORDER BY id").await;
    assert_eq!(body["results"][0]["rows"], json!([{"id": 1, "n": 11}, {"id": 100, "n": 11}]));

    // A key written by an earlier statement of the block is a duplicate for a later one.
    let (status, body) = post(
        &cluster,
        "BEGIN; INSERT INTO app.m (id, body) VALUES (5, 'a'); INSERT INTO app.m (id, body) VALUES (5, 'b'); COMMIT",
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "CONSTRAINT_VIOLATION", "{body}");
    assert_eq!(body["error"]["statement_index"], 3, "{body}");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.starts_with("Statement 3 failed: Duplicate primary key value '5'"), "{message}");
    assert!(message.ends_with("(transaction rolled back)"), "{message}");
    assert_eq!(body["results"], json!([]), "nothing of a rolled-back block is reported as done: {body}");
    assert_eq!(ids(&cluster).await.len(), 2, "the first INSERT of the failed block is not applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_failures_and_forbidden_statements_leave_nothing_behind() {
    let cluster = start(SETUP).await;

    let (status, body) = post(
        &cluster,
        "BEGIN; INSERT INTO app.m (id, body) VALUES (1, 'x'); ROLLBACK; SELECT COUNT(*) AS c FROM app.m",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(messages(&body), ["Transaction started", "Inserted 1 row(s)", "Transaction rolled back", ""]);
    assert_eq!(body["results"][3]["rows"], json!([{"c": 0}]));

    // DDL and admin statements are refused inside a block; the block is rolled back.
    for (stmt, kind) in [
        ("CREATE USER TABLE app.z (id BIGINT PRIMARY KEY)", "CREATE TABLE"),
        ("FLUSH TABLE app.m", "FLUSH TABLE"),
        ("DROP NAMESPACE app", "DROP NAMESPACE"),
        ("BEGIN", "BEGIN"),
    ] {
        let sql =
            format!("INSERT INTO app.m (id) VALUES (7); BEGIN; INSERT INTO app.m (id) VALUES (8); {stmt}; COMMIT");
        let (status, body) = post(&cluster, &sql).await;
        assert_eq!(status, 400, "{sql}: {body}");
        assert_eq!(body["error"]["code"], "TRANSACTION_ERROR", "{body}");
        assert_eq!(
            body["error"]["message"],
            format!("Statement 4 failed: {kind} is not allowed inside a transaction (transaction rolled back)"),
            "{body}"
        );
        // The statement before the block committed on its own.
        assert_eq!(messages(&body), ["Inserted 1 row(s)"], "{body}");
        assert_eq!(ids(&cluster).await.iter().map(|r| r.0).collect::<Vec<_>>(), [7], "{sql}");
        post(&cluster, "DELETE FROM app.m WHERE id = 7").await;
    }

    // A block still open at the end of the request is rolled back.
    let (status, body) = post(&cluster, "BEGIN; INSERT INTO app.m (id) VALUES (9)").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "TRANSACTION_ERROR", "{body}");
    assert_eq!(body["error"]["message"], "Transaction not committed: missing COMMIT", "{body}");
    assert!(ids(&cluster).await.is_empty());

    // A failing SELECT inside the block rolls it back too; an earlier failing write is the
    // one reported.
    let (_, body) = post(&cluster, "BEGIN; INSERT INTO app.m (id) VALUES (10); SELECT nope FROM app.m; COMMIT").await;
    assert_eq!(body["error"]["statement_index"], 3, "{body}");
    let (_, body) = post(&cluster, "BEGIN; INSERT INTO app.m (id) VALUES (NULL); SELECT nope FROM app.m; COMMIT").await;
    assert_eq!(body["error"]["statement_index"], 2, "{body}");
    assert_eq!(body["error"]["code"], "CONSTRAINT_VIOLATION", "{body}");
    assert!(ids(&cluster).await.is_empty());

    // COMMIT and ROLLBACK without BEGIN only warn.
    let (status, body) = post(&cluster, "COMMIT; ROLLBACK; START TRANSACTION; COMMIT").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        messages(&body),
        [
            "No transaction in progress",
            "No transaction in progress",
            "Transaction started",
            "Transaction committed (0 statement(s))"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_see_a_block_all_at_once_and_subscribers_get_it_after_the_commit() {
    let cluster = start(SETUP).await;
    let mut ws = connect(&cluster, "alice").await;
    subscribe(&mut ws, "tx", "SELECT * FROM app.m", Json::Null).await;

    // A rolled-back block notifies nobody.
    let (status, body) = post(&cluster, "BEGIN; INSERT INTO app.m (id, body) VALUES (1, 'gone'); ROLLBACK").await;
    assert_eq!(status, 200, "{body}");
    assert_quiet(&mut ws, "a rolled-back block").await;

    // Blocks of 10 inserts commit while a reader counts: it only ever sees multiples of 10.
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (url, done) = (cluster.url(), done.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut seen = Vec::new();
            while !done.load(Ordering::SeqCst) {
                let body: Json = http
                    .post(format!("{url}/v1/api/sql"))
                    .header("X-USER-ID", "alice")
                    .json(&json!({"sql": "SELECT COUNT(*) AS c FROM app.m"}))
                    .send()
                    .await
                    .expect("count")
                    .json()
                    .await
                    .expect("count body");
                seen.push(body["results"][0]["rows"][0]["c"].as_i64().expect("count"));
            }
            seen
        })
    };
    let blocks: i64 = 20;
    for b in 0..blocks {
        let values: Vec<String> = (0..10).map(|i| format!("({}, 'b{b}', {i})", b * 10 + i + 1)).collect();
        let sql = format!(
            "BEGIN; INSERT INTO app.m (id, body, n) VALUES {}; UPDATE app.m SET n = n + 100 WHERE body = 'b{b}'; COMMIT",
            values.join(", ")
        );
        let (status, body) = post(&cluster, &sql).await;
        assert_eq!(status, 200, "{body}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    done.store(true, Ordering::SeqCst);
    let seen = join(reader).await;
    eprintln!("reader took {} counts during {blocks} blocks", seen.len());
    assert!(seen.iter().all(|c| c % 10 == 0), "a reader saw part of a block: {seen:?}");

    // Each block's changes arrive after its commit, in statement order: 10 inserts, then 10
    // updates.
    let msgs = changes(&mut ws, "tx", blocks as usize * 20, "20 blocks").await;
    for (b, block) in msgs.chunks(20).enumerate() {
        for (i, m) in block.iter().enumerate() {
            let expected = if i < 10 { "insert" } else { "update" };
            assert_eq!(kind(m), expected, "{m}");
            assert_eq!(row(m)["body"], format!("b{b}"), "{m}");
            assert_eq!(row(m)["id"], (b * 10 + i % 10 + 1) as i64, "{m}");
        }
    }
    assert_quiet(&mut ws, "exactly the committed changes").await;
}
