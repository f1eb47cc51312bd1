//! The HTTP API (api.md §2–3): `POST /v1/api/sql` and the health check. Requests are
//! authenticated by `crate::auth` (API key, JWT or the loopback bypass, judged on the real TCP
//! peer).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Extension, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use kalam_types::auth::{Identity, Presented, loopback_bypass};
use kalam_types::error::{ErrorCode, KalamError};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::engine::Engine;
use crate::sql::{BatchError, StatementResult, execute_request};

/// The TCP peer of the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

pub fn router(engine: Arc<Engine>) -> Router {
    let limit = engine.cfg.limits.max_message_size;
    // Browsers may call the API from any origin; they never get the loopback bypass (an
    // `Origin` header disables it), so they must bring credentials.
    let origins = &engine.cfg.server.cors_allowed_origins;
    let allow_origin = if origins.iter().any(|o| o == "*") {
        Some(AllowOrigin::any())
    } else if origins.is_empty() {
        None
    } else {
        // Validated with the configuration.
        Some(AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok())))
    };
    let router = Router::new()
        .route("/v1/api/sql", post(sql))
        .route("/v1/api/healthcheck", get(health))
        .route("/health", get(health))
        .route("/v1/ws", get(ws_on_reused_connection))
        .layer(DefaultBodyLimit::max(limit));
    let router = match allow_origin {
        Some(origin) => router.layer(
            CorsLayer::new()
                .allow_origin(origin)
                .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
                .allow_headers([
                    header::CONTENT_TYPE,
                    header::AUTHORIZATION,
                    HeaderName::from_static("x-api-key"),
                    HeaderName::from_static("x-user-id"),
                ]),
        ),
        None => router,
    };
    router.with_state(engine)
}

/// `GET /v1/ws` reaches the router only as a later request on a kept-alive HTTP connection
/// (the listener hands a connection whose first request is the upgrade to kalam-lived). Some
/// clients do that: Node's WebSocket shares fetch's connection pool. The answer closes the
/// connection, so the client's next attempt comes on a fresh one, which is handed off.
async fn ws_on_reused_connection() -> Response {
    let error = KalamError::new(
        ErrorCode::ServiceUnavailable,
        "a WebSocket must be opened on a new connection, not on a kept-alive HTTP one: try again",
    );
    let mut resp = error_response(&error, 0);
    resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("0"));
    resp
}

#[derive(Debug, Serialize)]
struct ErrorBody {
    code: String,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    statement_index: Option<usize>,
}

#[derive(Debug, Serialize)]
pub struct Envelope {
    status: &'static str,
    results: Vec<StatementResult>,
    took_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorBody>,
}

/// The error envelope with the status derived from the code.
pub fn error_response(error: &KalamError, took_ms: u64) -> Response {
    let failure = BatchError { error: error.clone(), statement_index: None, statement: None };
    envelope_response(vec![], Some(failure), took_ms)
}

/// The envelope as the response: the HTTP status comes from the failure's code (200 without
/// one).
fn envelope_response(results: Vec<StatementResult>, failure: Option<BatchError>, took_ms: u64) -> Response {
    let (status, body) = envelope(results, failure, took_ms);
    (StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), axum::Json(body)).into_response()
}

/// The response envelope of api.md §2 and its HTTP status: the results of the statements that
/// succeeded, then the failure if one stopped the request.
pub fn envelope(results: Vec<StatementResult>, failure: Option<BatchError>, took_ms: u64) -> (u16, Envelope) {
    let Some(failure) = failure else {
        return (200, Envelope { status: "success", results, took_ms, error: None });
    };
    let status = failure.error.code.http_status();
    let body = Envelope {
        status: "error",
        results,
        took_ms,
        error: Some(ErrorBody {
            code: failure.error.code.as_str(),
            message: failure.error.message,
            details: failure.statement,
            statement_index: failure.statement_index,
        }),
    };
    (status, body)
}

#[derive(Debug, Deserialize)]
struct SqlRequest {
    sql: String,
    /// Values of `$1 … $N` (single statement only).
    #[serde(default)]
    params: Option<Vec<serde_json::Value>>,
}

/// Who a request runs as (api.md §1), and whether it came through the loopback bypass; or the
/// 401/403 refusal.
pub fn identify(engine: &Engine, peer: SocketAddr, headers: &HeaderMap) -> Result<(Identity, bool), KalamError> {
    let bypass = loopback_bypass(engine.cfg.auth.localhost_bypass, peer.ip(), |h| headers.contains_key(h));
    let presented = Presented::read(|h| headers.get(h).map(kalam_types::auth::header_text), |_| None, bypass);
    let identity = crate::auth::authenticate(engine, &presented).map_err(|e| e.to_client())?;
    // Credentials win over the bypass when both are present.
    let bypassed = presented.bypass && presented.api_key.is_none() && presented.bearer.is_none();
    Ok((identity, bypassed))
}

async fn sql(
    State(engine): State<Arc<Engine>>,
    Extension(Peer(peer)): Extension<Peer>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let took = || started.elapsed().as_millis() as u64;
    let body = match body {
        Ok(b) => b,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            let limit = engine.cfg.limits.max_message_size;
            let e = KalamError::new(ErrorCode::PayloadTooLarge, format!("Request body exceeds {limit} bytes"));
            return error_response(&e, took());
        }
        Err(rejection) => {
            let e =
                KalamError::new(ErrorCode::InvalidRequest, format!("Invalid request body: {}", rejection.body_text()));
            return error_response(&e, took());
        }
    };
    if engine.is_shutting_down() {
        return error_response(&KalamError::new(ErrorCode::ShuttingDown, "Server is shutting down"), took());
    }
    let identity = match identify(&engine, peer, &headers) {
        Ok((identity, bypass)) if engine.query_limiter.allow(&identity, bypass) => identity,
        Ok(_) => {
            let e = KalamError::new(ErrorCode::RateLimitExceeded, "Too many queries per second. Please slow down.");
            return error_response(&e, took());
        }
        Err(e) => return error_response(&e, took()),
    };
    let request: SqlRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error_response(
                &KalamError::new(ErrorCode::InvalidRequest, format!("Invalid request body: {e}")),
                took(),
            );
        }
    };
    // On the SQL runtime, the result's JSON included (see `sql_runtime`).
    let sql_engine = engine.clone();
    let work = async move {
        let (results, failure) = execute_request(&sql_engine, &request.sql, request.params.as_deref(), &identity).await;
        let (status, body) = envelope(results, failure, started.elapsed().as_millis() as u64);
        (status, serde_json::to_vec(&body))
    };
    match engine.sql_runtime.run(work).await {
        Ok((status, Ok(body))) => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            body,
        )
            .into_response(),
        Ok((_, Err(e))) => {
            tracing::error!(error = %e, "a SQL response could not be encoded");
            error_response(&KalamError::internal(), took())
        }
        Err(e) => error_response(&e, took()),
    }
}

async fn health(State(engine): State<Arc<Engine>>) -> Response {
    let now = chrono::Utc::now();
    let uptime = ((now.timestamp_millis() - engine.uptime_origin_ms) / 1000).max(0);
    let timestamp = kalam_types::time::format_timestamp_micros(now.timestamp_micros());
    if engine.is_shutting_down() {
        let body = json!({"status": "unhealthy", "error": "shutting down", "version": env!("CARGO_PKG_VERSION"),
            "api_version": "v1", "uptime_seconds": uptime, "timestamp": timestamp});
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
    }
    let body = json!({"status": "healthy", "version": env!("CARGO_PKG_VERSION"), "api_version": "v1",
        "uptime_seconds": uptime, "timestamp": timestamp});
    (StatusCode::OK, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn call(app: &Router, peer: &str, sql: &str, user: Option<&str>) -> (StatusCode, serde_json::Value) {
        call_body(app, peer, json!({ "sql": sql }), user).await
    }

    async fn call_body(
        app: &Router,
        peer: &str,
        body: serde_json::Value,
        user: Option<&str>,
    ) -> (StatusCode, serde_json::Value) {
        let mut req = Request::post("/v1/api/sql").header("content-type", "application/json");
        if let Some(u) = user {
            req = req.header("x-user-id", u);
        }
        let mut req = req.body(Body::from(body.to_string())).unwrap();
        req.extensions_mut().insert(Peer(peer.parse().unwrap()));
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    fn engine() -> (tempfile::TempDir, Arc<Engine>) {
        engine_with(|_| {})
    }

    fn engine_with(change: impl FnOnce(&mut kalam_config::KalamConfig)) -> (tempfile::TempDir, Arc<Engine>) {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = kalam_config::KalamConfig::test_config(dir.path(), 1);
        change(&mut cfg);
        cfg.resolve_paths().unwrap();
        let engine = Engine::open(cfg).unwrap();
        (dir, engine)
    }

    async fn preflight(app: &Router, origin: &str) -> Option<String> {
        let mut req = Request::builder()
            .method("OPTIONS")
            .uri("/v1/api/sql")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .body(Body::empty())
            .unwrap();
        req.extensions_mut().insert(Peer("127.0.0.1:1".parse().unwrap()));
        let resp = app.clone().oneshot(req).await.unwrap();
        resp.headers().get("access-control-allow-origin").map(|v| v.to_str().unwrap().to_owned())
    }

    #[tokio::test]
    async fn cors_origins_come_from_the_configuration() {
        let (_dir, engine) = engine_with(|c| c.server.cors_allowed_origins = vec!["https://a.example".into()]);
        let app = router(engine);
        assert_eq!(preflight(&app, "https://a.example").await.as_deref(), Some("https://a.example"));
        assert_eq!(preflight(&app, "https://evil.example").await, None);
        let (_dir, engine) = engine_with(|c| c.server.cors_allowed_origins = vec![]);
        assert_eq!(preflight(&router(engine), "https://a.example").await, None, "an empty list turns CORS off");
        let mut cfg = kalam_config::KalamConfig::default();
        cfg.server.cors_allowed_origins = vec!["https://a.example/path".into()];
        assert!(cfg.validate().is_err(), "an origin has no path");
    }

    #[tokio::test]
    async fn user_principals_over_their_query_rate_get_429() {
        let (_dir, engine) = engine_with(|c| c.rate_limit.max_queries_per_sec = 3);
        let app = router(engine.clone());
        let lo = "127.0.0.1:5000";
        call(&app, lo, "CREATE USER 'rl' WITH ROLE user APIKEY 'rl-secret-key'", None).await;
        let mut statuses = Vec::new();
        let started = std::time::Instant::now();
        for _ in 0..6 {
            let mut req = Request::post("/v1/api/sql")
                .header("content-type", "application/json")
                .header("x-api-key", "rl-secret-key")
                .body(Body::from(json!({"sql": "SELECT 1"}).to_string()))
                .unwrap();
            req.extensions_mut().insert(Peer("10.0.0.9:1".parse().unwrap()));
            let resp = app.clone().oneshot(req).await.unwrap();
            let status = resp.status();
            if status == StatusCode::TOO_MANY_REQUESTS {
                let body: serde_json::Value =
                    serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
                assert_eq!(body["error"]["code"], "RATE_LIMIT_EXCEEDED");
                assert_eq!(body["error"]["message"], "Too many queries per second. Please slow down.");
            }
            statuses.push(status.as_u16());
        }
        // The bucket refills 3 tokens a second: a slow machine may earn one back meanwhile.
        if started.elapsed() < std::time::Duration::from_millis(300) {
            assert_eq!(statuses, [200, 200, 200, 429, 429, 429]);
        } else {
            assert_eq!(statuses[..3], [200, 200, 200]);
            assert!(statuses.contains(&429), "{statuses:?}");
        }
        // The loopback bypass (role system) is never limited.
        for _ in 0..10 {
            assert_eq!(call(&app, lo, "SELECT 1", None).await.0, StatusCode::OK);
        }
    }

    #[tokio::test]
    async fn user_tables_partition_rows_by_acting_user() {
        let (_dir, engine) = engine();
        let app = router(engine);
        let lo = "127.0.0.1:5000";
        let (s, body) =
            call(&app, lo, "CREATE NAMESPACE app; CREATE USER TABLE app.t (id BIGINT PRIMARY KEY, body TEXT)", None)
                .await;
        assert_eq!(s, StatusCode::OK, "{body}");
        assert_eq!(body["results"][1]["message"], "Table 'app.t' created successfully");
        let (s, body) = call(&app, lo, "INSERT INTO app.t (id, body) VALUES (1, 'a'), (2, 'b')", Some("alice")).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        assert_eq!(body["results"][0]["row_count"], 2);
        call(&app, lo, "INSERT INTO app.t VALUES (1, 'bob-1')", Some("bob")).await;
        let (_, body) = call(&app, lo, "SELECT * FROM app.t ORDER BY id", Some("alice")).await;
        assert_eq!(body["results"][0]["columns"], json!(["id", "body"]));
        assert_eq!(body["results"][0]["rows"], json!([{"id": 1, "body": "a"}, {"id": 2, "body": "b"}]));
        let (_, body) = call(&app, lo, "SELECT body FROM app.t", Some("bob")).await;
        assert_eq!(body["results"][0]["rows"], json!([{"body": "bob-1"}]));
    }

    #[tokio::test]
    async fn errors_use_the_envelope_and_keep_earlier_results() {
        let (_dir, engine) = engine();
        let app = router(engine);
        let lo = "127.0.0.1:5000";
        let (s, body) = call(&app, lo, "CREATE NAMESPACE app; SELECT * FROM app.missing", None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(body["status"], "error");
        assert_eq!(body["results"].as_array().unwrap().len(), 1);
        assert_eq!(body["error"]["code"], "TABLE_NOT_FOUND");
        assert_eq!(body["error"]["statement_index"], 2);
        assert_eq!(body["error"]["message"], "Statement 2 failed: relation \"app.missing\" does not exist");
        let (s, body) = call(&app, lo, "  -- nothing\n", None).await;
        assert_eq!((s, body["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("EMPTY_SQL")));
        let (s, body) = call(&app, "10.1.2.3:5000", "SELECT 1", None).await;
        assert_eq!((s, body["error"]["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("UNAUTHORIZED")));
        let (s, body) = call(&app, lo, "CREATE USER TABLE app.d (id DECIMAL PRIMARY KEY)", None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(
            body["error"]["message"],
            "Statement 1 failed: Data type DECIMAL not supported. Use DOUBLE for floating point or BIGINT for large integers"
        );
    }

    #[tokio::test]
    async fn cors_preflight_is_answered_and_origin_requests_get_no_bypass() {
        let (_dir, engine) = engine();
        let app = router(engine);
        let mut req = Request::builder()
            .method("OPTIONS")
            .uri("/v1/api/sql")
            .header("origin", "https://app.example")
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type,x-user-id")
            .body(Body::empty())
            .unwrap();
        req.extensions_mut().insert(Peer("127.0.0.1:1".parse().unwrap()));
        let resp = app.clone().oneshot(req).await.unwrap();
        assert!(resp.status().is_success());
        assert_eq!(resp.headers()["access-control-allow-origin"], "*");

        let mut req = Request::post("/v1/api/sql")
            .header("origin", "https://app.example")
            .body(Body::from(json!({"sql": "SELECT 1"}).to_string()))
            .unwrap();
        req.extensions_mut().insert(Peer("127.0.0.1:1".parse().unwrap()));
        let resp = app.oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn params_bind_to_placeholders_of_a_single_statement() {
        let (_dir, engine) = engine();
        let app = router(engine);
        let lo = "127.0.0.1:5000";
        call(&app, lo, "CREATE NAMESPACE app; CREATE SHARED TABLE app.kv (k TEXT PRIMARY KEY, n BIGINT, j JSON)", None)
            .await;
        let insert =
            json!({"sql": "INSERT INTO app.kv VALUES ($1, $2, $3)", "params": ["a'; DROP TABLE x; --", 5, {"x": 1}]});
        let (s, body) = call_body(&app, lo, insert, None).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        let select = json!({"sql": "SELECT k, n, j FROM app.kv WHERE n = $1", "params": [5]});
        let (_, body) = call_body(&app, lo, select, None).await;
        assert_eq!(body["results"][0]["rows"], json!([{"k": "a'; DROP TABLE x; --", "n": 5, "j": "{\"x\":1}"}]));
        let (s, body) = call_body(&app, lo, json!({"sql": "SELECT $1, $2", "params": [1]}), None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"]["code"], "PARAM_COUNT_MISMATCH");
        let (s, body) = call_body(&app, lo, json!({"sql": "SELECT 1; SELECT 2", "params": []}), None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"]["message"], "params are only supported with a single statement");
    }

    #[tokio::test]
    async fn only_versioned_routes_are_served() {
        let (_dir, engine) = engine();
        let app = router(engine);
        for (method, uri, expected) in [
            ("GET", "/v1/api/healthcheck", StatusCode::OK),
            ("GET", "/health", StatusCode::OK),
            ("POST", "/api/sql", StatusCode::NOT_FOUND),
            ("POST", "/sql", StatusCode::NOT_FOUND),
        ] {
            let mut req = Request::builder().method(method).uri(uri).body(Body::from("{}")).unwrap();
            req.extensions_mut().insert(Peer("127.0.0.1:1".parse().unwrap()));
            let resp = app.clone().oneshot(req).await.unwrap();
            assert_eq!(resp.status(), expected, "{method} {uri}");
        }
    }

    #[tokio::test]
    async fn oversized_bodies_get_413_in_the_envelope() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = kalam_config::KalamConfig::test_config(dir.path(), 1);
        cfg.limits.max_message_size = 64;
        cfg.resolve_paths().unwrap();
        let app = router(Engine::open(cfg).unwrap());
        let (s, body) = call(&app, "127.0.0.1:5000", &format!("SELECT '{}'", "x".repeat(100)), None).await;
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body["error"]["code"], "PAYLOAD_TOO_LARGE");
    }

    #[tokio::test]
    async fn duplicate_keys_fail_the_whole_statement() {
        let (_dir, engine) = engine();
        let app = router(engine);
        let lo = "127.0.0.1:5000";
        call(&app, lo, "CREATE NAMESPACE app; CREATE SHARED TABLE app.s (k TEXT PRIMARY KEY, n BIGINT)", None).await;
        call(&app, lo, "INSERT INTO app.s VALUES ('a', 1)", None).await;
        let (s, body) = call(&app, lo, "INSERT INTO app.s VALUES ('b', 2), ('a', 3)", None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"]["message"], "Statement 1 failed: Duplicate primary key value 'a' for table 'app.s'");
        let (_, body) = call(&app, lo, "SELECT count(*) AS n FROM app.s", None).await;
        assert_eq!(body["results"][0]["rows"], json!([{"n": 1}]));
    }
}
