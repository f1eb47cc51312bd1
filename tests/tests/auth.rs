//! Authentication over HTTP and the WebSocket upgrade (api.md §1): API keys, HS256 JWTs, the
//! loopback bypass and the acting-user rules, with the forged and misused credentials a server
//! facing browsers meets. Every refusal is checked on both paths.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use kalam_e2e::Cluster;
use serde_json::{Value as Json, json};
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Request headers of one case.
type Headers = Vec<(&'static str, String)>;

const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn jwt(alg: Algorithm, secret: &str, claims: Json) -> String {
    jsonwebtoken::encode(&Header::new(alg), &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
}

fn b64(v: &Json) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

/// A token whose header and payload are written by hand (forgeries the encoder refuses).
fn handmade(header: Json, payload: Json, signature: &str) -> String {
    format!("{}.{}.{signature}", b64(&header), b64(&payload))
}

/// What the server said: HTTP status, error code (or "ok"), and the acting user when it
/// succeeded (`SELECT CURRENT_USER()`).
#[derive(Debug, PartialEq)]
struct Outcome {
    status: u16,
    code: String,
    acting: Option<String>,
}

async fn over_http(cluster: &Cluster, headers: &[(&str, &str)]) -> Outcome {
    let mut req = reqwest::Client::new()
        .post(format!("{}/v1/api/sql", cluster.url()))
        .json(&json!({"sql": "SELECT CURRENT_USER() AS me"}));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let body: Json = resp.json().await.expect("json body");
    match body["status"].as_str() {
        Some("success") => Outcome {
            status,
            code: "ok".into(),
            acting: body["results"][0]["rows"][0]["me"].as_str().map(str::to_owned),
        },
        _ => Outcome { status, code: body["error"]["code"].as_str().unwrap_or("?").to_owned(), acting: None },
    }
}

/// The same credentials on the WebSocket upgrade, as headers and `query` parameters.
async fn over_ws(cluster: &Cluster, headers: &[(&str, &str)], query: &str) -> Outcome {
    let url = format!("ws://127.0.0.1:{}/v1/ws{query}", cluster.port);
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            tungstenite::http::HeaderValue::from_str(v).unwrap(),
        );
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok(_) => Outcome { status: 101, code: "ok".into(), acting: None },
        Err(tungstenite::Error::Http(resp)) => {
            let status = resp.status().as_u16();
            let body: Json = resp.body().as_ref().and_then(|b| serde_json::from_slice(b).ok()).unwrap_or_default();
            Outcome { status, code: body["error"]["code"].as_str().unwrap_or("?").to_owned(), acting: None }
        }
        Err(e) => panic!("WebSocket connect: {e}"),
    }
}

/// Creates a user and returns its API key.
async fn create_user(cluster: &Cluster, id: &str, role: &str) -> String {
    let resp = cluster.client("system").query(&format!("CREATE USER '{id}' WITH ROLE {role}")).await.expect("create");
    assert_eq!(resp.status, "success", "{resp:?}");
    resp.results[0].rows.as_ref().unwrap()[0]["apikey"].as_str().expect("clear key").to_owned()
}

/// The error code and message `sql` fails with, run by the built-in `system` user.
async fn server_error(cluster: &Cluster, sql: &str) -> (String, String) {
    match cluster.client("system").query(sql).await {
        Err(kalam_link::KalamLinkError::ServerError { code, message, .. }) => (code, message),
        other => panic!("{sql}: {other:?}"),
    }
}

/// The rows of the last result of `sql`, run by the built-in `system` user.
async fn admin(cluster: &Cluster, sql: &str) -> Vec<serde_json::Map<String, Json>> {
    let resp = cluster.client("system").query(sql).await.expect(sql);
    assert_eq!(resp.status, "success", "{sql}: {resp:?}");
    resp.results.last().and_then(|r| r.rows.clone()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_misused_credentials_are_refused_over_http_and_websocket() {
    let cluster = Cluster::start_with_config(&format!("[auth]\njwt_secret = \"{SECRET}\"\n")).await;
    let alice_key = create_user(&cluster, "alice", "user").await;
    let svc_key = create_user(&cluster, "svc", "service").await;
    let gone_key = create_user(&cluster, "gone", "user").await;
    let rotated_key = create_user(&cluster, "rotated", "user").await;
    admin(&cluster, "DROP USER 'gone'").await;
    let reset = admin(&cluster, "ALTER USER 'rotated' RESET APIKEY").await;
    let new_rotated_key = reset[0]["apikey"].as_str().unwrap().to_owned();
    assert_ne!(new_rotated_key, rotated_key);

    let exp = now() + 600;
    let good = jwt(Algorithm::HS256, SECRET, json!({"sub": "alice", "exp": exp}));
    let parts: Vec<&str> = good.split('.').collect();
    let tampered = format!("{}.{}.{}", parts[0], b64(&json!({"sub": "svc", "exp": exp})), parts[2]);
    let bearer = |t: &str| format!("Bearer {t}");

    // (name, headers, expected status, expected code)
    let cases: Vec<(&str, Headers, u16, &str)> = vec![
        ("browser page without credentials", vec![("origin", "http://evil.example".into())], 401, "UNAUTHORIZED"),
        ("X-Forwarded-For from loopback", vec![("x-forwarded-for", "127.0.0.1".into())], 401, "UNAUTHORIZED"),
        ("Forwarded from loopback", vec![("forwarded", "for=127.0.0.1".into())], 401, "UNAUTHORIZED"),
        ("X-Real-IP from loopback", vec![("x-real-ip", "127.0.0.1".into())], 401, "UNAUTHORIZED"),
        ("unknown API key", vec![("x-api-key", "00000000-0000-4000-8000-000000000000".into())], 401, "INVALID_API_KEY"),
        ("empty API key", vec![("x-api-key", String::new())], 401, "INVALID_API_KEY"),
        ("API key of a deleted user", vec![("x-api-key", gone_key.clone())], 401, "USER_DISABLED"),
        ("API key replaced by RESET APIKEY", vec![("x-api-key", rotated_key.clone())], 401, "INVALID_API_KEY"),
        (
            "unknown API key even with a forwarding header",
            vec![("x-api-key", "nope".into()), ("x-forwarded-for", "127.0.0.1".into())],
            401,
            "INVALID_API_KEY",
        ),
        (
            "expired token",
            vec![("authorization", bearer(&jwt(Algorithm::HS256, SECRET, json!({"sub": "alice", "exp": now() - 5}))))],
            401,
            "TOKEN_EXPIRED",
        ),
        (
            "token signed with another secret",
            vec![(
                "authorization",
                bearer(&jwt(
                    Algorithm::HS256,
                    "another-secret-of-at-least-32-bytes!!",
                    json!({"sub": "alice", "exp": exp}),
                )),
            )],
            401,
            "INVALID_TOKEN",
        ),
        (
            "alg none",
            vec![(
                "authorization",
                bearer(&handmade(json!({"alg": "none", "typ": "JWT"}), json!({"sub": "alice", "exp": exp}), "")),
            )],
            401,
            "INVALID_TOKEN",
        ),
        (
            "alg None spelled differently",
            vec![("authorization", bearer(&handmade(json!({"alg": "NONE"}), json!({"sub": "svc", "exp": exp}), "")))],
            401,
            "INVALID_TOKEN",
        ),
        (
            "HS512 with the right secret",
            vec![("authorization", bearer(&jwt(Algorithm::HS512, SECRET, json!({"sub": "alice", "exp": exp}))))],
            401,
            "INVALID_TOKEN",
        ),
        (
            "RS256 header on an HMAC signature",
            vec![(
                "authorization",
                bearer(&handmade(json!({"alg": "RS256"}), json!({"sub": "alice", "exp": exp}), parts[2])),
            )],
            401,
            "INVALID_TOKEN",
        ),
        ("tampered payload", vec![("authorization", bearer(&tampered))], 401, "INVALID_TOKEN"),
        (
            "token without exp",
            vec![("authorization", bearer(&jwt(Algorithm::HS256, SECRET, json!({"sub": "alice"}))))],
            401,
            "INVALID_TOKEN",
        ),
        (
            "token for an unknown user",
            vec![("authorization", bearer(&jwt(Algorithm::HS256, SECRET, json!({"sub": "mallory", "exp": exp}))))],
            401,
            "INVALID_TOKEN",
        ),
        (
            "token for a deleted user",
            vec![("authorization", bearer(&jwt(Algorithm::HS256, SECRET, json!({"sub": "gone", "exp": exp}))))],
            401,
            "USER_DISABLED",
        ),
        ("garbage token", vec![("authorization", "Bearer not.a.token".into())], 401, "INVALID_TOKEN"),
        ("HTTP Basic", vec![("authorization", "Basic YWxpY2U6cGFzc3dvcmQ=".into())], 401, "INVALID_TOKEN"),
        (
            "token claims roles it does not have",
            vec![
                (
                    "authorization",
                    bearer(&jwt(Algorithm::HS256, SECRET, json!({"sub": "alice", "exp": exp, "roles": ["system"]}))),
                ),
                ("x-user-id", "svc".into()),
            ],
            403,
            "PERMISSION_DENIED",
        ),
        (
            "user acting as another user",
            vec![("x-api-key", alice_key.clone()), ("x-user-id", "bob".into())],
            403,
            "PERMISSION_DENIED",
        ),
        (
            "invalid acting user id",
            vec![("x-api-key", svc_key.clone()), ("x-user-id", "../etc".into())],
            400,
            "INVALID_REQUEST",
        ),
    ];
    assert!(cases.len() >= 20);
    for (name, headers, status, code) in &cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let http = over_http(&cluster, &headers).await;
        assert_eq!((http.status, http.code.as_str()), (*status, *code), "HTTP: {name}");
        let ws = over_ws(&cluster, &headers, "").await;
        assert_eq!((ws.status, ws.code.as_str()), (*status, *code), "WebSocket: {name}");
    }
    // A credential header that is not text is still a credential: refused, never the bypass.
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/api/sql", cluster.url()))
        .header("x-api-key", reqwest::header::HeaderValue::from_bytes(&[0xff, 0xfe]).unwrap())
        .json(&json!({"sql": "SELECT 1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    // The browser spellings on the WebSocket: query parameters.
    for (name, query, status, code) in [
        ("?api_key= unknown", "?api_key=nope".to_owned(), 401, "INVALID_API_KEY"),
        (
            "?token= expired",
            format!("?token={}", jwt(Algorithm::HS256, SECRET, json!({"sub": "alice", "exp": now() - 5}))),
            401,
            "TOKEN_EXPIRED",
        ),
        ("?user_id= of another user", format!("?api_key={alice_key}&user_id=bob"), 403, "PERMISSION_DENIED"),
    ] {
        let ws = over_ws(&cluster, &[("origin", "http://app.example")], &query).await;
        assert_eq!((ws.status, ws.code.as_str()), (status, code), "WebSocket: {name}");
    }

    // And what is accepted.
    let ok = |acting: &str| Outcome { status: 200, code: "ok".into(), acting: Some(acting.into()) };
    assert_eq!(over_http(&cluster, &[("x-api-key", &alice_key), ("origin", "http://app.example")]).await, ok("alice"));
    assert_eq!(over_http(&cluster, &[("x-api-key", &alice_key), ("x-user-id", "alice")]).await, ok("alice"));
    assert_eq!(over_http(&cluster, &[("x-api-key", &svc_key), ("x-user-id", "bob")]).await, ok("bob"));
    assert_eq!(over_http(&cluster, &[("x-api-key", &new_rotated_key)]).await, ok("rotated"));
    assert_eq!(over_http(&cluster, &[("authorization", &bearer(&good))]).await, ok("alice"));
    let by_user_id = jwt(Algorithm::HS256, SECRET, json!({"sub": "nobody", "user_id": "svc", "exp": exp}));
    assert_eq!(over_http(&cluster, &[("authorization", &bearer(&by_user_id))]).await, ok("svc"));
    // An API key wins over a token, even a bad one.
    assert_eq!(over_http(&cluster, &[("x-api-key", &alice_key), ("authorization", "Bearer junk")]).await, ok("alice"));
    assert_eq!(over_http(&cluster, &[]).await, ok("system"));
    let ws = over_ws(&cluster, &[("origin", "http://app.example")], &format!("?api_key={svc_key}&user_id=bob")).await;
    assert_eq!(ws.code, "ok");
    let ws = over_ws(&cluster, &[("authorization", &bearer(&good))], "").await;
    assert_eq!(ws.code, "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_are_managed_by_dba_and_system_only_and_keys_are_never_shown_again() {
    let cluster = Cluster::start().await;
    let alice_key = create_user(&cluster, "alice", "user").await;
    let dba_key = create_user(&cluster, "ops", "dba").await;
    let http = |key: String, sql: &'static str| {
        let url = cluster.url();
        async move {
            let resp = reqwest::Client::new()
                .post(format!("{url}/v1/api/sql"))
                .header("x-api-key", key)
                .json(&json!({ "sql": sql }))
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.json::<Json>().await.unwrap())
        }
    };
    let (status, body) = http(alice_key.clone(), "CREATE USER 'eve' WITH ROLE dba").await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("PERMISSION_DENIED")), "{body}");
    let (status, body) = http(dba_key.clone(), "CREATE USER 'carol' WITH EMAIL 'c@x.io'").await;
    assert_eq!(status, 200, "{body}");
    let carol_key = body["results"][0]["rows"][0]["apikey"].as_str().unwrap();
    assert_eq!(carol_key.len(), 36, "a UUID v4 key: {carol_key}");

    let rows = admin(&cluster, "SELECT user_id, role, apikey, email FROM system.users ORDER BY user_id").await;
    let ids: Vec<&str> = rows.iter().map(|r| r["user_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["alice", "carol", "ops", "system"]);
    assert!(rows.iter().all(|r| r["apikey"] == "***" || r["apikey"].is_null()), "{rows:?}");
    assert_eq!(rows[1]["email"], "c@x.io");

    for (sql, code, message) in [
        ("CREATE USER 'alice'", "USER_EXISTS", "User with user_id 'alice' already exists"),
        ("ALTER USER 'nobody' SET ROLE dba", "USER_NOT_FOUND", "User with user_id 'nobody' not found"),
        ("DROP USER 'nobody'", "USER_NOT_FOUND", "User with user_id 'nobody' not found"),
        ("CREATE USER 'x' WITH ROLE system", "INVALID_OPERATION", "Role 'system' is reserved for internal use"),
        (
            "CREATE USER 'x' WITH ROLE root",
            "INVALID_OPERATION",
            "Invalid role 'root'. Allowed roles: user, service, dba",
        ),
        ("CREATE USER 'x' METADATA '{not json'", "TYPE_ERROR", ""),
        ("CREATE USER 'x' OWNER_ID 'y'", "INVALID_SQL", "OWNER_ID is not supported; use CREATE USER <user_id>"),
        ("CREATE USER 'a/b'", "INVALID_REQUEST", ""),
        ("DROP USER 'system'", "INVALID_OPERATION", "The built-in system user cannot be deleted"),
        ("CREATE USER 'x' APIKEY ''", "INVALID_OPERATION", "at least 8 characters and no surrounding spaces"),
        ("CREATE USER 'x' APIKEY 'short'", "INVALID_OPERATION", "at least 8 characters and no surrounding spaces"),
    ] {
        let (actual, text) = server_error(&cluster, sql).await;
        assert_eq!(actual, code, "{sql}: {text}");
        assert!(text.ends_with(message), "{sql}: {text}");
    }
    admin(&cluster, "CREATE USER IF NOT EXISTS 'alice'").await;
    admin(&cluster, "DROP USER IF EXISTS 'nobody'").await;
    // A key given in CREATE USER is used as is, and must be unique.
    admin(&cluster, "CREATE USER 'dave' APIKEY 'dave-key-0001'").await;
    assert_eq!(server_error(&cluster, "CREATE USER 'dave2' APIKEY 'dave-key-0001'").await.0, "CONSTRAINT_VIOLATION");
    let (status, body) = http("dave-key-0001".into(), "SELECT CURRENT_USER() AS me").await;
    assert_eq!((status, body["results"][0]["rows"][0]["me"].as_str()), (200, Some("dave")), "{body}");
    // Role changes take effect on the next request.
    admin(&cluster, "ALTER USER 'alice' SET ROLE dba").await;
    let (status, body) = http(alice_key, "CREATE USER 'eve'").await;
    assert_eq!(status, 200, "{body}");
}
