//! Wire types of the HTTP API (api.md §2–§3) and of subscription requests (api.md §4.2).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

/// The body of `POST /v1/api/sql`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryRequest {
    pub sql: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Vec<Json>>,
}

/// The `error` object of the envelope.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    #[serde(default)]
    pub details: Option<String>,
    #[serde(default)]
    pub statement_index: Option<usize>,
}

/// Former name of [`ErrorDetail`].
pub type ErrorInfo = ErrorDetail;

/// One statement's result. `rows` keys appear in the server's order in `columns`; use
/// [`QueryResult::ordered_row`] to walk a row in that order.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct QueryResult {
    #[serde(default)]
    pub columns: Vec<String>,
    #[serde(default)]
    pub rows: Option<Vec<Map<String, Json>>>,
    pub row_count: u64,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub cache_hit: Option<bool>,
}

impl QueryResult {
    /// Row `index`'s values in column order (`Null` for a column the row lacks).
    pub fn ordered_row(&self, index: usize) -> Option<Vec<&Json>> {
        const NULL: Json = Json::Null;
        let row = self.rows.as_ref()?.get(index)?;
        Some(self.columns.iter().map(|c| row.get(c).unwrap_or(&NULL)).collect())
    }

    /// The `subscription` object of a `SUBSCRIBE TO` result (sql.md §12), if this is one.
    /// Options that ask for no snapshot become `None`. The result's `ws_url` is not followed:
    /// the WebSocket goes to the server the client already talks to (same host and scheme,
    /// so credentials never travel to another address or over a weaker transport).
    pub fn subscription_required(&self) -> Option<SubscriptionConfig> {
        let row = self.rows.as_ref()?.first()?;
        if row.get("status").and_then(Json::as_str) != Some("subscription_required") {
            return None;
        }
        let sub = row.get("subscription")?;
        let sql = sub.get("sql")?.as_str()?.to_owned();
        let options = match sub.get("options") {
            Some(o) if !o.is_null() => Some(serde_json::from_value::<SubscriptionOptions>(o.clone()).ok()?),
            _ => None,
        };
        Some(SubscriptionConfig {
            id: sub.get("id").and_then(Json::as_str).map(str::to_owned),
            sql,
            options: options.filter(SubscriptionOptions::wants_snapshot),
            ws_url: None,
        })
    }
}

/// The whole response envelope.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct QueryResponse {
    pub status: String,
    #[serde(default)]
    pub results: Vec<QueryResult>,
    #[serde(default)]
    pub took_ms: u64,
    #[serde(default)]
    pub error: Option<ErrorDetail>,
}

/// `GET /v1/api/healthcheck` (api.md §3).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct HealthCheckResponse {
    pub status: String,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub api_version: Option<String>,
    #[serde(default)]
    pub uptime_seconds: Option<u64>,
    #[serde(default)]
    pub timestamp: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
}

impl HealthCheckResponse {
    pub fn is_healthy(&self) -> bool {
        self.status == "healthy"
    }
}

/// Snapshot options of a subscription (api.md §4.2). `from_seq` is not here: resuming is the
/// library's job.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SubscriptionOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rows: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// A number for BIGINT keys, a string for TEXT keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_id: Option<Json>,
}

impl SubscriptionOptions {
    /// True when the server will answer with `initial_data` (`last_rows = 0` alone asks for
    /// none).
    pub fn wants_snapshot(&self) -> bool {
        self.last_rows.is_some_and(|n| n > 0) || self.since.is_some() || self.from_id.is_some()
    }
}

/// One subscription to open (cli.md §2.2).
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriptionConfig {
    /// `sub-<uuid>` when `None`.
    pub id: Option<String>,
    pub sql: String,
    pub options: Option<SubscriptionOptions>,
    /// The WebSocket URL; the client's base URL with `/v1/ws` when `None`.
    pub ws_url: Option<String>,
}

impl SubscriptionConfig {
    pub fn new(sql: impl Into<String>) -> Self {
        Self { id: None, sql: sql.into(), options: None, ws_url: None }
    }

    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    fn options_mut(&mut self) -> &mut SubscriptionOptions {
        self.options.get_or_insert_with(SubscriptionOptions::default)
    }

    pub fn with_last_rows(mut self, n: u64) -> Self {
        self.options_mut().last_rows = Some(n);
        self
    }

    pub fn with_since(mut self, timestamp: impl Into<String>) -> Self {
        self.options_mut().since = Some(timestamp.into());
        self
    }

    pub fn with_from_id(mut self, id: impl Into<Json>) -> Self {
        self.options_mut().from_id = Some(id.into());
        self
    }

    pub fn with_ws_url(mut self, url: impl Into<String>) -> Self {
        self.ws_url = Some(url.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_parse() {
        let body = r#"{"status":"error","results":[{"columns":[],"row_count":1,"message":"Inserted 1 row(s)","cache_hit":true}],
            "took_ms":3,"error":{"code":"TABLE_NOT_FOUND","message":"x","statement_index":2}}"#;
        let r: QueryResponse = serde_json::from_str(body).unwrap();
        assert_eq!(r.results[0].row_count, 1);
        assert_eq!(r.results[0].cache_hit, Some(true));
        assert_eq!(r.error.unwrap().statement_index, Some(2));
    }

    #[test]
    fn rows_walk_in_column_order() {
        let body = r#"{"columns":["z","a"],"rows":[{"z":1,"a":"x"}],"row_count":1}"#;
        let r: QueryResult = serde_json::from_str(body).unwrap();
        assert_eq!(r.ordered_row(0).unwrap(), vec![&Json::from(1), &Json::from("x")]);
        assert!(r.ordered_row(1).is_none());
    }

    #[test]
    fn subscribe_to_results_become_subscription_configs() {
        let body = r#"{"columns":["status","ws_url","subscription","message"],"row_count":1,
          "rows":[{"status":"subscription_required","ws_url":"ws://h:1/v1/ws",
                   "subscription":{"id":"sub-1","sql":"SELECT * FROM app.m","options":{"last_rows":10}},
                   "message":"m"}]}"#;
        let r: QueryResult = serde_json::from_str(body).unwrap();
        let cfg = r.subscription_required().unwrap();
        assert_eq!(cfg, SubscriptionConfig::new("SELECT * FROM app.m").with_id("sub-1").with_last_rows(10));
        assert!(cfg.options.unwrap().wants_snapshot());
        let none = body.replace(r#"{"last_rows":10}"#, "{}");
        let r: QueryResult = serde_json::from_str(&none).unwrap();
        assert_eq!(r.subscription_required().unwrap().options, None);
        assert!(!SubscriptionOptions { last_rows: Some(0), ..Default::default() }.wants_snapshot());
    }
}
