//! Limits that keep one client from hurting the others (issue: oversized bodies, absurdly
//! nested expressions, a cartesian join that would run for minutes, too many statements): each
//! is answered with a clear error within 5 s, and the server stays healthy (same kalamd, fast
//! answers afterwards).

use std::time::{Duration, Instant};

use kalam_e2e::Cluster;
use serde_json::{Value as Json, json};

async fn post(cluster: &Cluster, body: Vec<u8>) -> (u16, Json, Duration) {
    let started = Instant::now();
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/api/sql", cluster.url()))
        .header("content-type", "application/json")
        .body(body)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    let body = resp.json::<Json>().await.unwrap_or_default();
    (status, body, started.elapsed())
}

async fn sql(cluster: &Cluster, sql: &str) -> (u16, Json, Duration) {
    post(cluster, serde_json::to_vec(&json!({ "sql": sql })).unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abusive_requests_get_clear_errors_quickly_and_the_server_stays_healthy() {
    let config =
        "[limits]\nmax_message_size = 1048576\nstatement_timeout_seconds = 2\nmax_statements_per_request = 100\n";
    let cluster = Cluster::start_with_config(config).await;
    let kalamd = cluster.running_pid("kalamd").await;
    let values: Vec<String> = (0..2000).map(|i| format!("({i})")).collect();
    let setup = format!(
        "CREATE NAMESPACE app; CREATE SHARED TABLE app.t (id BIGINT PRIMARY KEY); INSERT INTO app.t VALUES {}",
        values.join(",")
    );
    let (status, body, _) = sql(&cluster, &setup).await;
    assert_eq!(status, 200, "{body}");

    let deep_parens = format!("SELECT {}1{}", "(".repeat(10_000), ")".repeat(10_000));
    let long_chain = format!("SELECT 1{}", " + 1".repeat(10_000));
    let deep_not = format!("SELECT {}true", "NOT ".repeat(10_000));
    let many: String = (0..101).map(|i| format!("SELECT {i};")).collect();
    let long_union = vec!["SELECT 1"; 3_000].join(" UNION ALL ");
    let deep_derived = format!("SELECT * FROM {}app.t{}", "(SELECT * FROM ".repeat(3_000), ") x".repeat(3_000));
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "2 MiB body",
            serde_json::to_vec(&json!({"sql": format!("SELECT '{}'", "x".repeat(2 << 20))})).unwrap(),
            413,
            "PAYLOAD_TOO_LARGE",
        ),
        ("10,000 nested parentheses", serde_json::to_vec(&json!({ "sql": deep_parens })).unwrap(), 400, "INVALID_SQL"),
        ("10,000 chained additions", serde_json::to_vec(&json!({ "sql": long_chain })).unwrap(), 400, "INVALID_SQL"),
        ("10,000 nested NOTs", serde_json::to_vec(&json!({ "sql": deep_not })).unwrap(), 400, "INVALID_SQL"),
        ("3,000 chained UNION ALL", serde_json::to_vec(&json!({ "sql": long_union })).unwrap(), 400, "INVALID_SQL"),
        (
            "3,000 nested derived tables",
            serde_json::to_vec(&json!({ "sql": deep_derived })).unwrap(),
            400,
            "INVALID_SQL",
        ),
        ("101 statements", serde_json::to_vec(&json!({ "sql": many })).unwrap(), 400, "INVALID_REQUEST"),
        (
            "a cartesian join of 8e9 rows",
            serde_json::to_vec(
                &json!({"sql": "SELECT count(*) FROM app.t a, app.t b, app.t c WHERE a.id + b.id + c.id >= 0"}),
            )
            .unwrap(),
            400,
            "STATEMENT_TIMEOUT",
        ),
    ];
    for (name, body, status, code) in cases {
        let (got, answer, took) = post(&cluster, body).await;
        eprintln!("{name}: {got} {} in {took:?}", answer["error"]["code"]);
        assert_eq!((got, answer["error"]["code"].as_str()), (status, Some(code)), "{name}: {answer}");
        assert!(took < Duration::from_secs(5), "{name} took {took:?}");
        let (ok, _, quick) = sql(&cluster, "SELECT count(*) AS n FROM app.t").await;
        assert_eq!(ok, 200, "after {name}");
        assert!(quick < Duration::from_secs(2), "after {name} a simple query took {quick:?}");
    }
    assert_eq!(cluster.running_pid("kalamd").await, kalamd, "kalamd restarted");
}
