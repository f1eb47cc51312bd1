//! INSERT, UPDATE and DELETE on `system.users` (sql.md §14): validation and verbatim errors,
//! key changes that take effect at once, soft delete with restoration, and the cleanup that
//! removes a deleted user's data once the grace period has passed.

use kalam_e2e::{Cluster, files, flush, wait_status};
use serde_json::{Value as Json, json};

/// Posts `sql` with one credential header; returns the HTTP status and the body.
async fn post(cluster: &Cluster, header: (&str, &str), sql: &str) -> (u16, Json) {
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/api/sql", cluster.url()))
        .header(header.0, header.1)
        .json(&json!({ "sql": sql }))
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("json body"))
}

const SYSTEM: (&str, &str) = ("X-USER-ID", "system");

async fn ok(cluster: &Cluster, sql: &str) -> Json {
    let (status, body) = post(cluster, SYSTEM, sql).await;
    assert_eq!(status, 200, "{sql}: {body}");
    body
}

async fn error(cluster: &Cluster, header: (&str, &str), sql: &str) -> (u16, String, String) {
    let (status, body) = post(cluster, header, sql).await;
    let e = &body["error"];
    assert!(e.is_object(), "{sql} must fail: {body}");
    (status, e["code"].as_str().unwrap_or_default().to_owned(), e["message"].as_str().unwrap_or_default().to_owned())
}

/// The status of a `SELECT 1` made with API key `key`.
async fn key_status(cluster: &Cluster, key: &str) -> u16 {
    post(cluster, ("X-API-KEY", key), "SELECT 1").await.0
}

async fn count(cluster: &Cluster, sql: &str) -> usize {
    ok(cluster, sql).await["results"][0]["rows"].as_array().unwrap().len()
}

async fn user_ids(cluster: &Cluster, filter: &str) -> Vec<String> {
    let body = ok(cluster, &format!("SELECT user_id FROM system.users {filter} ORDER BY user_id")).await;
    body["results"][0]["rows"].as_array().unwrap().iter().map(|r| r["user_id"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_are_inserted_updated_deleted_and_restored_through_system_users() {
    let cluster = Cluster::start().await;
    let body = ok(
        &cluster,
        "INSERT INTO system.users (user_id, username, role, apikey, metadata) VALUES \
         ('ann', 'Ann', 'user', 'ann-key-123', '{\"team\":\"eng\"}'), ('bob', 'Bob', 'service', NULL, NULL)",
    )
    .await;
    assert_eq!(body["results"][0]["message"], "Inserted 2 row(s)");
    assert_eq!(key_status(&cluster, "ann-key-123").await, 200);
    let body =
        ok(&cluster, "SELECT username, role, apikey, storage_mode FROM system.users WHERE user_id = 'ann'").await;
    assert_eq!(
        body["results"][0]["rows"],
        json!([{"username": "Ann", "role": "user", "apikey": "***", "storage_mode": "table"}])
    );

    // Refusals, verbatim; a failing row keeps the whole statement from inserting anything.
    let cases = [
        (
            "INSERT INTO system.users (user_id, username) VALUES ('carl', 'Carl'), ('ann', 'Again')",
            "USER_EXISTS",
            "User with user_id 'ann' already exists",
        ),
        (
            "INSERT INTO system.users (user_id) VALUES ('dora')",
            "CONSTRAINT_VIOLATION",
            "NOT NULL violation: column 'username' cannot be null",
        ),
        (
            "INSERT INTO system.users (user_id, username, role) VALUES ('eve', 'Eve', 'system')",
            "INVALID_OPERATION",
            "Role 'system' is reserved for internal use",
        ),
        (
            "INSERT INTO system.users (user_id, username, created_at) VALUES ('fay', 'Fay', '2020-01-01')",
            "INVALID_SQL",
            "Column 'created_at' of system.users cannot be inserted (it is set by the server)",
        ),
        (
            "UPDATE system.users SET user_id = 'x' WHERE user_id = 'ann'",
            "INVALID_OPERATION",
            "Column 'user_id' of system.users cannot be updated",
        ),
        (
            "UPDATE system.users SET username = 'Z' WHERE user_id = 'zed'",
            "USER_NOT_FOUND",
            "User with user_id 'zed' not found",
        ),
        ("DELETE FROM system.users WHERE user_id = 'zed'", "USER_NOT_FOUND", "User with user_id 'zed' not found"),
        (
            "DELETE FROM system.users WHERE user_id = 'system'",
            "INVALID_OPERATION",
            "The built-in system user cannot be deleted",
        ),
        (
            "UPDATE system.users SET apikey = 'short' WHERE user_id = 'bob'",
            "INVALID_OPERATION",
            "An API key must have at least 8 characters and no surrounding spaces",
        ),
        (
            "UPDATE system.users SET apikey = 'ann-key-123' WHERE user_id = 'bob'",
            "CONSTRAINT_VIOLATION",
            "API key is already in use by another user",
        ),
    ];
    for (sql, code, message) in cases {
        let (_, got_code, got_message) = error(&cluster, SYSTEM, sql).await;
        assert_eq!(
            (got_code.as_str(), got_message.as_str()),
            (code, format!("Statement 1 failed: {message}").as_str()),
            "{sql}"
        );
    }
    assert_eq!(user_ids(&cluster, "").await, ["ann", "bob", "system"], "no row of a failed INSERT stays");
    let (_, _, message) = error(
        &cluster,
        SYSTEM,
        "INSERT INTO system.users (user_id, username, metadata) VALUES ('gil', 'Gil', '{oops')",
    )
    .await;
    assert!(message.contains("metadata must be valid JSON"), "{message}");

    // Partial updates leave the other columns alone; updated_at moves.
    ok(&cluster, "UPDATE system.users SET username = 'Annie', email = 'a@x.io' WHERE user_id = 'ann'").await;
    let body = ok(
        &cluster,
        "SELECT username, email, metadata, updated_at > created_at AS moved FROM system.users WHERE user_id = 'ann'",
    )
    .await;
    assert_eq!(
        body["results"][0]["rows"],
        json!([{"username": "Annie", "email": "a@x.io", "metadata": "{\"team\":\"eng\"}", "moved": true}])
    );

    // Key changes apply to the next request.
    ok(&cluster, "UPDATE system.users SET apikey = NULL WHERE user_id = 'ann'").await;
    assert_eq!(key_status(&cluster, "ann-key-123").await, 401);
    ok(&cluster, "UPDATE system.users SET apikey = 'ann-key-456' WHERE user_id = 'ann'").await;
    assert_eq!(key_status(&cluster, "ann-key-456").await, 200);

    // Only dba and system manage users.
    let (status, code, _) =
        error(&cluster, ("X-API-KEY", "ann-key-456"), "UPDATE system.users SET username = 'x' WHERE user_id = 'ann'")
            .await;
    assert_eq!((status, code.as_str()), (403, "PERMISSION_DENIED"));

    // Soft delete: no more authentication, hidden unless the WHERE clause names deleted_at.
    let body = ok(&cluster, "DELETE FROM system.users WHERE user_id = 'ann'").await;
    assert_eq!(body["results"][0]["message"], "Deleted 1 row(s)");
    assert_eq!(key_status(&cluster, "ann-key-456").await, 401);
    assert_eq!(user_ids(&cluster, "").await, ["bob", "system"]);
    assert_eq!(user_ids(&cluster, "WHERE deleted_at IS NOT NULL").await, ["ann"]);

    // Restoration within the grace period.
    let body = ok(&cluster, "UPDATE system.users SET deleted_at = NULL WHERE user_id = 'ann'").await;
    assert_eq!(body["results"][0]["message"], "Updated 1 row(s)");
    assert_eq!(key_status(&cluster, "ann-key-456").await, 200);
    assert_eq!(user_ids(&cluster, "").await, ["ann", "bob", "system"]);
    let (_, code, message) =
        error(&cluster, SYSTEM, "UPDATE system.users SET deleted_at = NOW() WHERE user_id = 'ann'").await;
    assert_eq!(code, "INVALID_OPERATION", "{message}");

    // Not inside a transaction.
    let (_, code, _) =
        error(&cluster, SYSTEM, "BEGIN; UPDATE system.users SET username = 'x' WHERE user_id = 'ann'; COMMIT").await;
    assert_eq!(code, "TRANSACTION_ERROR");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cleanup_removes_a_deleted_users_data_and_nothing_else() {
    let cluster = Cluster::start_with_config("[auth]\nuser_deletion_grace_period_days = 0\n").await;
    ok(
        &cluster,
        "CREATE NAMESPACE app; CREATE USER TABLE app.t (id BIGINT PRIMARY KEY, v TEXT); \
         CREATE STREAM TABLE app.s (id BIGINT PRIMARY KEY, v TEXT) TTL 3600; \
         CREATE USER 'ann' WITH ROLE user; CREATE USER 'bob' WITH ROLE user",
    )
    .await;
    for user in ["ann", "bob"] {
        let header = ("X-USER-ID", user);
        let (status, body) =
            post(&cluster, header, &format!("INSERT INTO app.t (id, v) VALUES (1, '{user}-1'), (2, '{user}-2')")).await;
        assert_eq!(status, 200, "{body}");
        post(&cluster, header, &format!("INSERT INTO app.s (id, v) VALUES (1, '{user}')")).await;
    }
    let system = cluster.client("system");
    let job = flush(&system, "app.t").await;
    wait_status(&system, &job, "completed").await;
    post(&cluster, ("X-USER-ID", "ann"), "INSERT INTO app.t (id, v) VALUES (3, 'ann-3')").await;
    let data = cluster.data_dir();
    let parquet = |user: &str| {
        files(&data, &|n| n.ends_with(".parquet")).into_iter().filter(|p| p.contains(&format!("/{user}/"))).count()
    };
    assert!(parquet("ann") > 0 && parquet("bob") > 0, "both users have flushed files");

    // No grace period: the cleanup runs with the DELETE.
    ok(&cluster, "DELETE FROM system.users WHERE user_id = 'ann'").await;
    assert_eq!(parquet("ann"), 0, "ann's Parquet files are gone");
    assert!(parquet("bob") > 0, "bob's files stay");
    assert_eq!(count(&cluster, "SELECT * FROM app.ann.t").await, 0, "ann's buffered and flushed rows are gone");
    assert_eq!(count(&cluster, "SELECT * FROM app.ann.s").await, 0, "ann's stream rows are gone");
    assert_eq!(count(&cluster, "SELECT * FROM app.bob.t").await, 2);
    assert_eq!(count(&cluster, "SELECT * FROM app.bob.s").await, 1);
    assert!(user_ids(&cluster, "WHERE deleted_at IS NOT NULL OR deleted_at IS NULL").await == ["bob", "system"]);
    let body = ok(&cluster, "SELECT status, user_id, result FROM system.jobs WHERE job_type = 'user_cleanup'").await;
    let job = &body["results"][0]["rows"][0];
    assert_eq!((job["status"].as_str(), job["user_id"].as_str()), (Some("completed"), Some("ann")), "{body}");
    let (_, code, _) = error(&cluster, SYSTEM, "UPDATE system.users SET deleted_at = NULL WHERE user_id = 'ann'").await;
    assert_eq!(code, "USER_NOT_FOUND", "a purged user cannot be restored");
    // The id is free again, with nothing of the old data.
    ok(&cluster, "CREATE USER 'ann' WITH ROLE user").await;
    assert_eq!(count(&cluster, "SELECT * FROM app.ann.t").await, 0);
}
