//! The HTTP client: `POST /v1/api/sql` and the health check, with credentials, a timeout and
//! retries with back-off for connection failures only (never for SQL errors).

use std::time::Duration;

use serde_json::Value as Json;

use reqwest::header::{HeaderMap, HeaderValue};

use crate::error::KalamLinkError;
use crate::wire::{HealthCheckResponse, QueryRequest, QueryResponse};

/// How requests authenticate (api.md §1).
#[derive(Clone, PartialEq, Eq, Default)]
pub enum Credentials {
    /// No credential: the server's loopback bypass decides.
    #[default]
    None,
    ApiKey(String),
    Jwt(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets never reach logs.
        f.write_str(match self {
            Credentials::None => "None",
            Credentials::ApiKey(_) => "ApiKey(***)",
            Credentials::Jwt(_) => "Jwt(***)",
        })
    }
}

/// Default request timeout (cli.md §2.1).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default retries of a request that could not reach the server.
pub const DEFAULT_MAX_RETRIES: u32 = 3;
/// A failed try of a request.
enum Failure {
    /// The request did not reach the server (or is safe to repeat): it may be retried.
    Unsent(KalamLinkError),
    Other(KalamLinkError),
}

/// True when `e` says the request never reached the server (connection refused or not
/// established). The browser's fetch does not tell, so on wasm32 nothing is retried.
fn never_reached_server(e: &reqwest::Error) -> bool {
    #[cfg(not(target_arch = "wasm32"))]
    return e.is_connect();
    #[cfg(target_arch = "wasm32")]
    {
        let _ = e;
        false
    }
}

/// First wait between retries; doubled each time.
const RETRY_BACKOFF_INITIAL: Duration = Duration::from_millis(100);
/// Longest wait between retries.
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Builds a [`KalamLinkClient`].
#[derive(Debug, Clone)]
pub struct KalamLinkClientBuilder {
    base_url: Option<String>,
    user_id: Option<String>,
    credentials: Credentials,
    timeout: Duration,
    max_retries: u32,
}

impl Default for KalamLinkClientBuilder {
    fn default() -> Self {
        Self {
            base_url: None,
            user_id: None,
            credentials: Credentials::None,
            timeout: DEFAULT_TIMEOUT,
            max_retries: DEFAULT_MAX_RETRIES,
        }
    }
}

impl KalamLinkClientBuilder {
    /// `http://host:port` (required).
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = Some(url.into());
        self
    }

    /// The acting user, sent as `X-USER-ID`.
    pub fn user_id(mut self, user: impl Into<String>) -> Self {
        self.user_id = Some(user.into());
        self
    }

    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.credentials = Credentials::ApiKey(key.into());
        self
    }

    pub fn jwt_token(mut self, token: impl Into<String>) -> Self {
        self.credentials = Credentials::Jwt(token.into());
        self
    }

    pub fn credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = credentials;
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Retries of a request that could not reach the server (a statement that may have run
    /// is never sent again; the health check also retries timeouts).
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.max_retries = retries;
        self
    }

    pub fn build(self) -> Result<KalamLinkClient, KalamLinkError> {
        let base_url = self
            .base_url
            .map(|u| u.trim().trim_end_matches('/').to_owned())
            .filter(|u| !u.is_empty())
            .ok_or_else(|| KalamLinkError::ConfigurationError("a base URL is required".into()))?;
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            return Err(KalamLinkError::ConfigurationError(format!(
                "base URL '{base_url}' must start with http:// or https://"
            )));
        }
        let headers = auth_headers(self.user_id.as_deref(), &self.credentials)?;
        let http = http_client(headers.clone(), self.timeout)?;
        Ok(KalamLinkClient { config: KalamLinkClientBuilder { base_url: Some(base_url), ..self }, headers, http })
    }
}

/// The request headers that carry the acting user and the credential (credentials marked
/// sensitive, so they never show in debug output).
fn auth_headers(user: Option<&str>, credentials: &Credentials) -> Result<HeaderMap, KalamLinkError> {
    let value = |name: &str, text: &str, sensitive: bool| {
        let mut v = HeaderValue::from_str(text)
            .map_err(|_| KalamLinkError::ConfigurationError(format!("the {name} value is not a valid header value")))?;
        v.set_sensitive(sensitive);
        Ok::<_, KalamLinkError>(v)
    };
    let mut headers = HeaderMap::new();
    if let Some(u) = user {
        headers.insert("X-USER-ID", value("X-USER-ID", u, false)?);
    }
    match credentials {
        Credentials::None => {}
        Credentials::ApiKey(k) => {
            headers.insert("X-API-KEY", value("X-API-KEY", k, true)?);
        }
        Credentials::Jwt(t) => {
            headers.insert("Authorization", value("Authorization", &format!("Bearer {t}"), true)?);
        }
    }
    Ok(headers)
}

fn http_client(headers: HeaderMap, timeout: Duration) -> Result<reqwest::Client, KalamLinkError> {
    let builder = reqwest::Client::builder().default_headers(headers);
    #[cfg(not(target_arch = "wasm32"))]
    let builder = builder.timeout(timeout);
    #[cfg(target_arch = "wasm32")]
    let _ = timeout;
    builder.build().map_err(KalamLinkError::from)
}

/// A KalamDB client. Cheap to clone; clones share one connection pool.
#[derive(Clone)]
pub struct KalamLinkClient {
    /// What it was built from (`base_url` always set and checked).
    config: KalamLinkClientBuilder,
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    headers: HeaderMap,
    http: reqwest::Client,
}

impl std::fmt::Debug for KalamLinkClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The builder's `Debug` masks the credential.
        f.debug_struct("KalamLinkClient").field("config", &self.config).finish_non_exhaustive()
    }
}

/// An envelope as a result: an error envelope becomes `AuthenticationError` (401/403 before any
/// statement ran) or `ServerError`.
fn envelope_result((status, resp): (u16, QueryResponse)) -> Result<QueryResponse, KalamLinkError> {
    match &resp.error {
        Some(e) if matches!(status, 401 | 403) && resp.results.is_empty() && e.statement_index.is_none() => {
            Err(KalamLinkError::AuthenticationError {
                status_code: status,
                code: e.code.clone(),
                message: e.message.clone(),
            })
        }
        Some(e) => {
            Err(KalamLinkError::ServerError { status_code: status, code: e.code.clone(), message: e.message.clone() })
        }
        None => Ok(resp),
    }
}

impl KalamLinkClient {
    pub fn builder() -> KalamLinkClientBuilder {
        KalamLinkClientBuilder::default()
    }

    /// A client for `base_url` with no credential, the default timeout and retries. Panics on
    /// a URL [`KalamLinkClientBuilder::build`] refuses; use the builder to handle that.
    pub fn new(base_url: impl Into<String>) -> Self {
        Self::builder().base_url(base_url).build().unwrap_or_else(|e| panic!("{e}"))
    }

    /// This client acting as `user_id` (sent as `X-USER-ID`); `Err` when it cannot be a
    /// header value.
    pub fn with_user(self, user_id: impl Into<String>) -> Result<Self, KalamLinkError> {
        self.rebuilt(|b| b.user_id(user_id))
    }

    /// This client with another credential; `Err` when it cannot be a header value.
    pub fn with_credentials(self, credentials: Credentials) -> Result<Self, KalamLinkError> {
        self.rebuilt(|b| b.credentials(credentials))
    }

    fn rebuilt(
        self,
        change: impl FnOnce(KalamLinkClientBuilder) -> KalamLinkClientBuilder,
    ) -> Result<Self, KalamLinkError> {
        change(self.config).build()
    }

    pub fn base_url(&self) -> &str {
        self.config.base_url.as_deref().unwrap_or_default()
    }

    pub fn user_id(&self) -> Option<&str> {
        self.config.user_id.as_deref()
    }

    pub fn credentials(&self) -> &Credentials {
        &self.config.credentials
    }

    pub fn timeout(&self) -> Duration {
        self.config.timeout
    }

    /// Headers every request carries (acting user, credential); the WebSocket sends them too.
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    pub(crate) fn auth_headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// Runs SQL (one or more statements) and returns the envelope; an error envelope is an `Err`.
    pub async fn execute_query(&self, sql: &str) -> Result<QueryResponse, KalamLinkError> {
        envelope_result(self.send(&QueryRequest { sql: sql.to_owned(), params: None }).await?)
    }

    /// Runs one statement with values for its `$1 … $N` placeholders.
    pub async fn execute_query_with_params(
        &self,
        sql: &str,
        params: Vec<Json>,
    ) -> Result<QueryResponse, KalamLinkError> {
        envelope_result(self.send(&QueryRequest { sql: sql.to_owned(), params: Some(params) }).await?)
    }

    /// Runs `statements` in order in one request (api.md §2.3: each commits on its own, the
    /// first failure stops the rest). One result per statement.
    pub async fn execute_batch<S: AsRef<str>>(&self, statements: &[S]) -> Result<QueryResponse, KalamLinkError> {
        let sql = batch_sql(statements)?;
        self.execute_query(&sql).await
    }

    /// Same as [`KalamLinkClient::execute_query`].
    pub async fn query(&self, sql: &str) -> Result<QueryResponse, KalamLinkError> {
        self.execute_query(sql).await
    }

    /// Same as [`KalamLinkClient::execute_query_with_params`].
    pub async fn query_with_params(&self, sql: &str, params: &[Json]) -> Result<QueryResponse, KalamLinkError> {
        self.execute_query_with_params(sql, params.to_vec()).await
    }

    /// Runs SQL and returns the HTTP status and envelope whatever the outcome.
    pub async fn query_raw(&self, sql: &str) -> Result<(u16, QueryResponse), KalamLinkError> {
        self.send(&QueryRequest { sql: sql.to_owned(), params: None }).await
    }

    /// Runs SQL with parameters and returns the HTTP status and envelope whatever the outcome.
    pub async fn query_raw_with_params(
        &self,
        sql: &str,
        params: Vec<Json>,
    ) -> Result<(u16, QueryResponse), KalamLinkError> {
        self.send(&QueryRequest { sql: sql.to_owned(), params: Some(params) }).await
    }

    async fn send(&self, request: &QueryRequest) -> Result<(u16, QueryResponse), KalamLinkError> {
        let url = format!("{}/v1/api/sql", self.base_url());
        self.with_retries(|| async {
            // Only a request that never reached the server is sent again: once it may have
            // run, a retry could run a write twice.
            let resp = self.http.post(&url).json(request).send().await.map_err(|e| {
                if never_reached_server(&e) { Failure::Unsent(e.into()) } else { Failure::Other(e.into()) }
            })?;
            let status = resp.status().as_u16();
            let body = resp.bytes().await.map_err(|e| Failure::Other(e.into()))?;
            let envelope: QueryResponse = serde_json::from_slice(&body).map_err(|e| {
                Failure::Other(KalamLinkError::SerializationError(format!(
                    "HTTP {status} without a KalamDB envelope ({e})"
                )))
            })?;
            Ok((status, envelope))
        })
        .await
    }

    /// `f` again after a failure that may be retried, up to `max_retries` times with doubling
    /// waits.
    async fn with_retries<T, F, Fut>(&self, mut f: F) -> Result<T, KalamLinkError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Failure>>,
    {
        let mut attempt = 0;
        loop {
            // fetch has no timeout of its own; natively reqwest applies it.
            #[cfg(target_arch = "wasm32")]
            let result = crate::rt::timeout(self.config.timeout, f()).await.unwrap_or_else(|| {
                Err(Failure::Other(KalamLinkError::TimeoutError(format!(
                    "no answer within {} ms",
                    self.config.timeout.as_millis()
                ))))
            });
            #[cfg(not(target_arch = "wasm32"))]
            let result = f().await;
            match result {
                Ok(v) => return Ok(v),
                Err(Failure::Unsent(_)) if attempt < self.config.max_retries => {
                    attempt += 1;
                    let wait = RETRY_BACKOFF_INITIAL.saturating_mul(1 << (attempt - 1).min(16)).min(RETRY_BACKOFF_MAX);
                    crate::rt::sleep(wait).await;
                }
                Err(Failure::Unsent(e) | Failure::Other(e)) => return Err(e),
            }
        }
    }

    /// `GET /v1/api/healthcheck` (read-only, so timeouts are retried too). An unhealthy server
    /// (503) is an `Ok` whose status says so.
    pub async fn health_check(&self) -> Result<HealthCheckResponse, KalamLinkError> {
        let url = format!("{}/v1/api/healthcheck", self.base_url());
        let retry_if_transient = |e: reqwest::Error| {
            let e = KalamLinkError::from(e);
            if e.is_transient() { Failure::Unsent(e) } else { Failure::Other(e) }
        };
        self.with_retries(|| async {
            let resp = self.http.get(&url).send().await.map_err(retry_if_transient)?;
            let status = resp.status().as_u16();
            let body = resp.bytes().await.map_err(retry_if_transient)?;
            serde_json::from_slice(&body).map_err(|e| {
                Failure::Other(KalamLinkError::SerializationError(format!(
                    "HTTP {status} is not a KalamDB health check ({e})"
                )))
            })
        })
        .await
    }

    /// `Ok(true)` when the server says it is healthy.
    pub async fn health(&self) -> Result<bool, KalamLinkError> {
        Ok(self.health_check().await?.is_healthy())
    }

    /// The WebSocket URL of this server.
    pub fn ws_url(&self) -> String {
        let base = self.base_url().replacen("http://", "ws://", 1).replacen("https://", "wss://", 1);
        format!("{base}/v1/ws")
    }
}

/// One request's SQL from separate statements (a trailing `;` on each is optional).
fn batch_sql<S: AsRef<str>>(statements: &[S]) -> Result<String, KalamLinkError> {
    let parts: Vec<&str> =
        statements.iter().map(|s| s.as_ref().trim().trim_end_matches(';').trim()).filter(|s| !s.is_empty()).collect();
    if parts.is_empty() {
        return Err(KalamLinkError::ConfigurationError("a batch needs at least one statement".into()));
    }
    Ok(parts.join(";\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ws_url_follows_the_scheme() {
        assert_eq!(KalamLinkClient::new("http://h:1/").ws_url(), "ws://h:1/v1/ws");
        assert_eq!(KalamLinkClient::new("https://h").ws_url(), "wss://h/v1/ws");
    }

    #[test]
    fn the_builder_refuses_what_cannot_work() {
        let err = KalamLinkClient::builder().build().unwrap_err();
        assert!(matches!(err, KalamLinkError::ConfigurationError(_)), "{err}");
        let err = KalamLinkClient::builder().base_url("db:8080").build().unwrap_err();
        assert!(err.to_string().contains("http://"), "{err}");
        let err = KalamLinkClient::builder().base_url("http://h").api_key("a\nb").build().unwrap_err();
        assert!(err.to_string().contains("X-API-KEY"), "{err}");
    }

    #[test]
    fn credentials_become_headers_and_stay_out_of_debug_output() {
        let c =
            KalamLinkClient::builder().base_url("http://h").user_id("u1").jwt_token("secret.jwt.x").build().unwrap();
        assert_eq!(c.auth_headers()["X-USER-ID"], "u1");
        assert_eq!(c.auth_headers()["Authorization"], "Bearer secret.jwt.x");
        assert!(!format!("{c:?}").contains("secret"), "{c:?}");
        assert_eq!(format!("{:?}", Credentials::ApiKey("k".into())), "ApiKey(***)");
    }

    #[test]
    fn batches_join_statements() {
        assert_eq!(batch_sql(&["SELECT 1;", " SELECT 2 ", ""]).unwrap(), "SELECT 1;\nSELECT 2");
        assert!(batch_sql::<&str>(&[]).is_err());
    }

    #[test]
    fn auth_refusals_and_statement_errors_are_told_apart() {
        let err: QueryResponse = serde_json::from_str(
            r#"{"status":"error","results":[],"took_ms":0,"error":{"code":"INVALID_API_KEY","message":"bad key"}}"#,
        )
        .unwrap();
        assert!(matches!(envelope_result((401, err.clone())), Err(KalamLinkError::AuthenticationError { .. })));
        assert!(matches!(envelope_result((400, err)), Err(KalamLinkError::ServerError { .. })));
    }
}
