//! kalam-link: the Rust client of KalamDB.
//!
//! In: a server URL and an acting user. Out: SQL results from `POST /v1/api/sql` (typed
//! envelope of api.md §2) and live-query messages from `GET /v1/ws` (api.md §4). It depends
//! on nothing heavy (no RocksDB, no DataFusion) so the CLI and, later, the WASM build stay
//! small. The native build talks HTTP with reqwest and WebSockets with tokio-tungstenite.

use serde::Deserialize;
use serde_json::Value as Json;

#[derive(Debug, thiserror::Error)]
pub enum KalamLinkError {
    #[error("HTTP transport: {0}")]
    Http(#[from] reqwest::Error),
    #[error("server error {status_code} {code}: {message}")]
    ServerError { status_code: u16, code: String, message: String },
    #[error("WebSocket: {0}")]
    WebSocket(String),
    #[error("protocol: {0}")]
    Protocol(String),
}

/// The `error` object of the envelope.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ErrorInfo {
    pub code: String,
    pub message: String,
    #[serde(default)]
    pub details: Option<String>,
    #[serde(default)]
    pub statement_index: Option<usize>,
}

/// One statement's result.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct QueryResult {
    #[serde(default)]
    pub columns: Vec<String>,
    #[serde(default)]
    pub rows: Option<Vec<serde_json::Map<String, Json>>>,
    pub row_count: u64,
    #[serde(default)]
    pub message: Option<String>,
}

/// The whole response envelope.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct QueryResponse {
    pub status: String,
    #[serde(default)]
    pub results: Vec<QueryResult>,
    pub took_ms: u64,
    #[serde(default)]
    pub error: Option<ErrorInfo>,
}

#[derive(Debug, Clone)]
pub struct KalamLinkClient {
    base_url: String,
    user_id: Option<String>,
    http: reqwest::Client,
}

/// An envelope as a result: an error envelope becomes `ServerError`.
fn envelope_result((status, resp): (u16, QueryResponse)) -> Result<QueryResponse, KalamLinkError> {
    match &resp.error {
        Some(e) => {
            Err(KalamLinkError::ServerError { status_code: status, code: e.code.clone(), message: e.message.clone() })
        }
        None => Ok(resp),
    }
}

impl KalamLinkClient {
    /// `base_url` like `http://127.0.0.1:8080`.
    pub fn new(base_url: impl Into<String>) -> Self {
        Self { base_url: base_url.into().trim_end_matches('/').to_owned(), user_id: None, http: reqwest::Client::new() }
    }

    /// Acts as `user_id` (sent as `X-USER-ID`).
    pub fn with_user(mut self, user_id: impl Into<String>) -> Self {
        self.user_id = Some(user_id.into());
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Runs SQL and returns the envelope; an error envelope becomes `ServerError`.
    pub async fn query(&self, sql: &str) -> Result<QueryResponse, KalamLinkError> {
        envelope_result(self.query_raw(sql).await?)
    }

    /// Runs one statement with values for its `$1 … $N` placeholders; an error envelope
    /// becomes `ServerError`.
    pub async fn query_with_params(
        &self,
        sql: &str,
        params: &[serde_json::Value],
    ) -> Result<QueryResponse, KalamLinkError> {
        envelope_result(self.send(serde_json::json!({ "sql": sql, "params": params })).await?)
    }

    /// Runs SQL and returns the HTTP status and envelope whatever the outcome.
    pub async fn query_raw(&self, sql: &str) -> Result<(u16, QueryResponse), KalamLinkError> {
        self.send(serde_json::json!({ "sql": sql })).await
    }

    async fn send(&self, request: serde_json::Value) -> Result<(u16, QueryResponse), KalamLinkError> {
        let mut req = self.http.post(format!("{}/v1/api/sql", self.base_url)).json(&request);
        if let Some(u) = &self.user_id {
            req = req.header("X-USER-ID", u);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await?;
        let envelope: QueryResponse = serde_json::from_slice(&body)
            .map_err(|e| KalamLinkError::Protocol(format!("unexpected response ({status}): {e}")))?;
        Ok((status, envelope))
    }

    /// `GET /v1/api/healthcheck`; `Ok(true)` when the server says it is healthy.
    pub async fn health(&self) -> Result<bool, KalamLinkError> {
        let resp = self.http.get(format!("{}/v1/api/healthcheck", self.base_url)).send().await?;
        Ok(resp.status().is_success())
    }

    /// The WebSocket URL of this server.
    pub fn ws_url(&self) -> String {
        let base = self.base_url.replacen("http://", "ws://", 1).replacen("https://", "wss://", 1);
        format!("{base}/v1/ws")
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub mod live;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_parse() {
        let body = r#"{"status":"error","results":[{"columns":[],"row_count":1,"message":"Inserted 1 row(s)"}],
            "took_ms":3,"error":{"code":"TABLE_NOT_FOUND","message":"x","statement_index":2}}"#;
        let r: QueryResponse = serde_json::from_str(body).unwrap();
        assert_eq!(r.results[0].row_count, 1);
        assert_eq!(r.error.unwrap().statement_index, Some(2));
    }

    #[test]
    fn ws_url_follows_the_scheme() {
        assert_eq!(KalamLinkClient::new("http://h:1/").ws_url(), "ws://h:1/v1/ws");
        assert_eq!(KalamLinkClient::new("https://h").ws_url(), "wss://h/v1/ws");
    }
}
