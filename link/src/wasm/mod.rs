//! The JavaScript face of kalam-link (`wasm` feature, wasm32): the class the TypeScript SDK
//! (`link/sdk/typescript`) wraps. HTTP goes through the same [`KalamLinkClient`] as natively;
//! subscriptions share one WebSocket ([`conn`]) and the same resume machine. Values cross as
//! JSON text (see [`crate::js_json`]): the SDK parses it, which keeps column order and big
//! integers intact.

mod conn;
mod socket;

use std::time::Duration;

use js_sys::{Function, Promise};
use serde::Deserialize;
use serde_json::Value as Json;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

use crate::client::{Credentials, KalamLinkClient};
use crate::error::KalamLinkError;
use crate::js_json;
use crate::resume::ReconnectPolicy;
use crate::wire::SubscriptionOptions;
use conn::Connection;

/// What `new WasmClient(json)` takes (the SDK's constructor options).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ClientOptions {
    url: String,
    #[serde(default)]
    api_key: Option<String>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    reconnect: Option<ReconnectOptions>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ReconnectOptions {
    initial_delay_ms: Option<u64>,
    max_delay_ms: Option<u64>,
    /// Consecutive failed attempts before a subscription ends; none = never give up.
    max_attempts: Option<u32>,
}

/// A `SubscribeOptions` of the SDK.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SubscribeOptions {
    last_rows: Option<u64>,
    since: Option<String>,
    from_id: Option<Json>,
}

/// A JavaScript `Error` with `code` (the server's error code, or the kind of client error)
/// and, for HTTP answers, `statusCode`.
fn js_error(e: &KalamLinkError) -> JsValue {
    let (code, status, message) = match e {
        KalamLinkError::ServerError { status_code, code, message }
        | KalamLinkError::AuthenticationError { status_code, code, message } => {
            (code.as_str(), Some(*status_code), message.clone())
        }
        KalamLinkError::NetworkError(_) => ("NETWORK_ERROR", None, e.to_string()),
        KalamLinkError::TimeoutError(_) => ("TIMEOUT", None, e.to_string()),
        KalamLinkError::WebSocketError(_) => ("WEBSOCKET_ERROR", None, e.to_string()),
        KalamLinkError::SerializationError(_) => ("SERIALIZATION_ERROR", None, e.to_string()),
        KalamLinkError::ConfigurationError(_) => ("CONFIGURATION_ERROR", None, e.to_string()),
    };
    coded_error(&message, code, status)
}

fn coded_error(message: &str, code: &str, status: Option<u16>) -> JsValue {
    let err = js_sys::Error::new(message);
    let _ = js_sys::Reflect::set(&err, &"code".into(), &code.into());
    if let Some(s) = status {
        let _ = js_sys::Reflect::set(&err, &"statusCode".into(), &JsValue::from(s));
    }
    err.into()
}

fn config_error(message: String) -> JsValue {
    js_error(&KalamLinkError::ConfigurationError(message))
}

fn parse<T: for<'de> Deserialize<'de>>(what: &str, json: &str) -> Result<T, JsValue> {
    serde_json::from_str(json).map_err(|e| config_error(format!("invalid {what}: {e}")))
}

/// The low-level client the SDK's `KalamLinkClient` wraps. Not meant to be used directly.
#[wasm_bindgen]
pub struct WasmClient {
    client: KalamLinkClient,
    conn: Connection,
}

#[wasm_bindgen]
impl WasmClient {
    /// `options`: JSON of `{url, apiKey?, token?, userId?, timeoutMs?, reconnect?}`.
    #[wasm_bindgen(constructor)]
    pub fn new(options: &str) -> Result<WasmClient, JsValue> {
        let o: ClientOptions = parse("client options", options)?;
        let credentials = match (o.api_key, o.token) {
            (Some(_), Some(_)) => return Err(config_error("give an API key or a token, not both".into())),
            (Some(k), None) => Credentials::ApiKey(k),
            (None, Some(t)) => Credentials::Jwt(t),
            (None, None) => Credentials::None,
        };
        let mut builder = KalamLinkClient::builder().base_url(o.url).credentials(credentials.clone());
        if let Some(u) = &o.user_id {
            builder = builder.user_id(u.clone());
        }
        if let Some(ms) = o.timeout_ms {
            builder = builder.timeout(Duration::from_millis(ms.max(1)));
        }
        let client = builder.build().map_err(|e| js_error(&e))?;
        let r = o.reconnect.unwrap_or_default();
        let default = ReconnectPolicy::default();
        let policy = ReconnectPolicy {
            // At least 10 ms: a zero delay would spin while the server is down.
            initial_delay: r.initial_delay_ms.map_or(default.initial_delay, |ms| Duration::from_millis(ms.max(10))),
            max_delay: r.max_delay_ms.map_or(default.max_delay, Duration::from_millis),
            max_attempts: r.max_attempts.unwrap_or(u32::MAX),
        };
        // Browsers cannot set headers on a WebSocket: the credential and acting user go in
        // the query string (api.md §1).
        let mut query = Vec::new();
        match &credentials {
            Credentials::ApiKey(k) => query.push(format!("api_key={}", js_sys::encode_uri_component(k))),
            Credentials::Jwt(t) => query.push(format!("token={}", js_sys::encode_uri_component(t))),
            Credentials::None => {}
        }
        if let Some(u) = &o.user_id {
            query.push(format!("user_id={}", js_sys::encode_uri_component(u)));
        }
        let mut url = client.ws_url();
        if !query.is_empty() {
            url = format!("{url}?{}", query.join("&"));
        }
        let conn = Connection::new(url, policy, client.timeout());
        Ok(WasmClient { client, conn })
    }

    /// Runs SQL (with `$1…` parameters given as a JSON array); resolves to the envelope's
    /// JSON, rejects with the server's error.
    pub fn query(&self, sql: String, params: Option<String>) -> Result<Promise, JsValue> {
        let params: Option<Vec<Json>> = params.as_deref().map(|p| parse("parameters", p)).transpose()?;
        let client = self.client.clone();
        Ok(future_to_promise(async move {
            let resp = match params {
                Some(p) => client.execute_query_with_params(&sql, p).await,
                None => client.execute_query(&sql).await,
            };
            resp.map(|r| JsValue::from_str(&js_json::envelope(&r))).map_err(|e| js_error(&e))
        }))
    }

    /// Runs statements (a JSON array of strings) as one request, in order, stopping at the
    /// first failure; resolves like `query`.
    pub fn batch(&self, statements: &str) -> Result<Promise, JsValue> {
        let statements: Vec<String> = parse("statements", statements)?;
        let client = self.client.clone();
        Ok(future_to_promise(async move {
            let resp = client.execute_batch(&statements).await;
            resp.map(|r| JsValue::from_str(&js_json::envelope(&r))).map_err(|e| js_error(&e))
        }))
    }

    /// Like `query`, resolving to the server's whole envelope (status, results, took_ms,
    /// error), also when it reports an error.
    #[wasm_bindgen(js_name = queryRaw)]
    pub fn query_raw(&self, sql: String, params: Option<String>) -> Result<Promise, JsValue> {
        let params: Option<Vec<Json>> = params.as_deref().map(|p| parse("parameters", p)).transpose()?;
        let client = self.client.clone();
        Ok(future_to_promise(async move {
            let resp = match params {
                Some(p) => client.query_raw_with_params(&sql, p).await,
                None => client.query_raw(&sql).await,
            };
            resp.map(|(_, r)| JsValue::from_str(&js_json::envelope(&r))).map_err(|e| js_error(&e))
        }))
    }

    /// `GET /v1/api/healthcheck`; resolves to its JSON.
    pub fn health(&self) -> Promise {
        let client = self.client.clone();
        future_to_promise(async move {
            let h = client.health_check().await.map_err(|e| js_error(&e))?;
            Ok(JsValue::from_str(&js_json::health(&h)))
        })
    }

    /// Opens the WebSocket; resolves once it is open. A refused connection is probed over
    /// HTTP, so bad credentials reject with the server's reason (browsers do not expose the
    /// handshake's status).
    pub fn connect(&self) -> Promise {
        let (client, conn) = (self.client.clone(), self.conn.clone());
        future_to_promise(async move {
            match conn.connect().await {
                Ok(()) => Ok(JsValue::UNDEFINED),
                Err(reason) => {
                    if let Err(e @ KalamLinkError::AuthenticationError { .. }) = client.execute_query("SELECT 1").await
                    {
                        return Err(js_error(&e));
                    }
                    let url = client.ws_url();
                    Err(js_error(&KalamLinkError::WebSocketError(format!("cannot connect to {url}: {reason}"))))
                }
            }
        })
    }

    /// Ends every subscription and closes the WebSocket. `connect` may be called again.
    pub fn disconnect(&self) {
        self.conn.disconnect();
    }

    #[wasm_bindgen(js_name = isConnected)]
    pub fn is_connected(&self) -> bool {
        self.conn.is_open()
    }

    /// `callback(true | false)` whenever the WebSocket opens or closes; `null` removes it.
    #[wasm_bindgen(js_name = onConnectionChange)]
    pub fn on_connection_change(&self, callback: Option<Function>) {
        self.conn.set_on_status(callback);
    }

    /// Starts a live query; `callback` receives every event as JSON text. Returns the
    /// subscription id (`id`, or `sub-<uuid>` when empty).
    pub fn subscribe(
        &self,
        id: Option<String>,
        sql: String,
        options: Option<String>,
        callback: Function,
    ) -> Result<String, JsValue> {
        let o: SubscribeOptions =
            options.as_deref().map(|o| parse("subscribe options", o)).transpose()?.unwrap_or_default();
        let options = SubscriptionOptions { last_rows: o.last_rows, since: o.since, from_id: o.from_id };
        let options = (options != SubscriptionOptions::default()).then_some(options);
        let id = id.filter(|i| !i.is_empty()).unwrap_or_else(|| format!("sub-{}", uuid::Uuid::new_v4()));
        self.conn.subscribe(id.clone(), sql, options, callback).map_err(|(code, m)| coded_error(&m, code, None))?;
        Ok(id)
    }

    /// Ends one subscription (its callback hears nothing more).
    pub fn unsubscribe(&self, id: &str) {
        self.conn.unsubscribe(id);
    }
}
