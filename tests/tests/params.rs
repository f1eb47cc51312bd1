//! Parametrized statements over HTTP (sql.md §10): values are checked against the column each
//! placeholder stands for, and are never spliced into the SQL text.

use kalam_e2e::Cluster;
use serde_json::{Value as Json, json};

/// Posts `sql` with `params` (left out when null) through the loopback bypass acting as user `u1`;
/// returns the HTTP status and the body.
async fn post(cluster: &Cluster, sql: &str, params: Json) -> (u16, Json) {
    post_with(cluster, ("X-USER-ID", "u1"), sql, params).await
}

/// Posts with one credential header.
async fn post_with(cluster: &Cluster, header: (&str, &str), sql: &str, params: Json) -> (u16, Json) {
    let request = if params.is_null() { json!({"sql": sql}) } else { json!({"sql": sql, "params": params}) };
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/api/sql", cluster.url()))
        .header(header.0, header.1)
        .json(&request)
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("json body"))
}

async fn rows(cluster: &Cluster, sql: &str, params: Json) -> Vec<Json> {
    let (status, body) = post(cluster, sql, params).await;
    assert_eq!(status, 200, "{sql}: {body}");
    body["results"][0]["rows"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_are_typed_by_their_column_and_never_spliced() {
    let cluster = Cluster::start().await;
    let (status, body) = post(
        &cluster,
        "CREATE NAMESPACE app; CREATE USER TABLE app.t (id BIGINT PRIMARY KEY, n INT, s TEXT, j JSON, b BOOLEAN); \
         CREATE SHARED TABLE app.priv (id BIGINT PRIMARY KEY, n INT) ACCESS private",
        Json::Null,
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // Values that convert under sql.md §2.2 are accepted, including numeric strings for INT.
    let insert = "INSERT INTO app.t (id, n, s, j, b) VALUES ($1, $2, $3, $4, $5)";
    let injection = "x'); DROP TABLE app.t; --";
    for params in [
        json!([1, 7, "seven", {"k": [1, 2]}, true]),
        json!([2, "42", injection, [1], "false"]),
        json!([3, null, 12, null, null]),
    ] {
        let (status, body) = post(&cluster, insert, params.clone()).await;
        assert_eq!(status, 200, "{params}: {body}");
    }
    let got = rows(&cluster, "SELECT id, n, s FROM app.t WHERE id = $1", json!([2])).await;
    assert_eq!(got, [json!({"id": 2, "n": 42, "s": injection})]);
    assert_eq!(rows(&cluster, "SELECT id FROM app.t WHERE n IN ($1, $2) ORDER BY id", json!([7, 42])).await.len(), 2);
    assert_eq!(rows(&cluster, "SELECT s FROM app.t WHERE id = $1", json!([3])).await[0]["s"], "12");

    // Each refusal names the parameter, its JSON kind and the column type; nothing is written.
    for (sql, params, message) in [
        (insert, json!([4, "abc", "s", null, null]), "parameter type mismatch: $2 is string, expected INT"),
        (insert, json!([4, 1.5, "s", null, null]), "parameter type mismatch: $2 is number, expected INT"),
        (insert, json!([4, 1, {"a": 1}, null, null]), "parameter type mismatch: $3 is object, expected TEXT"),
        (insert, json!([4, 1, "s", "not json", null]), "parameter type mismatch: $4 is string, expected JSON"),
        (insert, json!([4, 1, "s", null, "maybe"]), "parameter type mismatch: $5 is string, expected BOOLEAN"),
        (
            "UPDATE app.t SET n = $1 WHERE id = $2",
            json!(["x", 1]),
            "parameter type mismatch: $1 is string, expected INT",
        ),
        (
            "UPDATE app.t SET s = 'y' WHERE id = $1",
            json!([true]),
            "parameter type mismatch: $1 is boolean, expected BIGINT",
        ),
        ("DELETE FROM app.t WHERE $1 < n", json!(["many"]), "parameter type mismatch: $1 is string, expected INT"),
        ("SELECT * FROM app.t WHERE id = $1", json!([[1]]), "parameter type mismatch: $1 is array, expected BIGINT"),
        (
            "SELECT * FROM app.t WHERE n IN (1, $1)",
            json!(["two"]),
            "parameter type mismatch: $1 is string, expected INT",
        ),
    ] {
        let (status, body) = post(&cluster, sql, params.clone()).await;
        assert_eq!(status, 400, "{sql} {params}: {body}");
        assert_eq!(body["error"]["code"], "PARAM_TYPE_MISMATCH", "{sql} {params}: {body}");
        assert_eq!(body["error"]["message"], format!("Statement 1 failed: {message}"), "{sql} {params}");
    }
    // A table the caller may not read is refused before any parameter is compared with it.
    let (_, body) = post(&cluster, "CREATE USER 'reader' WITH ROLE user", Json::Null).await;
    let key = body["results"][0]["rows"][0]["apikey"].as_str().expect("api key").to_owned();
    let (status, body) =
        post_with(&cluster, ("x-api-key", &key), "SELECT * FROM app.priv WHERE n = $1", json!(["x"])).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("PERMISSION_DENIED")), "{body}");
    // The count is checked before the types.
    let (status, body) = post(&cluster, insert, json!(["a"])).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("PARAM_COUNT_MISMATCH")), "{body}");

    let all = rows(&cluster, "SELECT id, n, s, b FROM app.t ORDER BY id", json!([])).await;
    assert_eq!(
        all,
        [
            json!({"id": 1, "n": 7, "s": "seven", "b": true}),
            json!({"id": 2, "n": 42, "s": injection, "b": false}),
            json!({"id": 3, "n": null, "s": "12", "b": null}),
        ]
    );
}
