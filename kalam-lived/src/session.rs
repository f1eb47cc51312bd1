//! One WebSocket connection: handshake with authentication, then the subscribe / unsubscribe /
//! ping protocol of api.md §4, heartbeats, and a bounded outgoing queue.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use kalam_config::KalamConfig;
use kalam_rpc::EngineClient;
use kalam_types::ErrorCode;
use kalam_types::auth::loopback_bypass;
use kalam_types::ids::UserId;
use serde::Deserialize;
use serde_json::{Value as Json, json};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_util::sync::CancellationToken;

use crate::registry::{Outgoing, Registry, Subscription};

/// Longest time a client may take to complete the upgrade.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest client-chosen subscription id.
const MAX_SUBSCRIPTION_ID_LEN: usize = 128;

pub struct Shared {
    pub cfg: KalamConfig,
    pub registry: Arc<Registry>,
    pub shutdown: CancellationToken,
    engine: tokio::sync::Mutex<Option<EngineClient>>,
}

impl Shared {
    pub fn new(cfg: KalamConfig, registry: Arc<Registry>, shutdown: CancellationToken) -> Self {
        Self { cfg, registry, shutdown, engine: tokio::sync::Mutex::new(None) }
    }

    async fn engine(&self) -> Option<EngineClient> {
        let mut slot = self.engine.lock().await;
        if slot.is_none() {
            *slot = kalam_rpc::transport::connect_engine(&self.cfg.run_dir()).await.ok();
        }
        slot.clone()
    }

    async fn forget_engine(&self) {
        *self.engine.lock().await = None;
    }
}

fn reject(status: u16, code: ErrorCode, message: &str) -> ErrorResponse {
    let body = json!({"status": "error", "results": [], "took_ms": 0,
        "error": {"code": code.as_str(), "message": message}})
    .to_string();
    let mut resp = ErrorResponse::new(Some(body));
    *resp.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::from_u16(status)
        .unwrap_or(tokio_tungstenite::tungstenite::http::StatusCode::BAD_REQUEST);
    resp.headers_mut().insert("content-type", "application/json".parse().expect("static header"));
    resp
}

/// Why an upgrade request is refused: HTTP status, code, message.
type Rejection = (u16, ErrorCode, String);

/// Authenticates the upgrade request (api.md §1, loopback bypass) and picks the acting user.
fn authenticate(cfg: &KalamConfig, peer: SocketAddr, req: &Request) -> Result<UserId, Rejection> {
    if req.uri().path() != "/v1/ws" {
        return Err((404, ErrorCode::InvalidRequest, "Not found".into()));
    }
    let headers = req.headers();
    if !loopback_bypass(cfg.auth.localhost_bypass, peer.ip(), |h| headers.contains_key(h)) {
        return Err((401, ErrorCode::Unauthorized, "Authentication required".into()));
    }
    let from_query =
        req.uri().query().and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("user_id=")).map(str::to_owned));
    let requested = headers.get("x-user-id").and_then(|v| v.to_str().ok()).map(str::to_owned).or(from_query);
    let raw = requested.unwrap_or_else(|| cfg.auth.localhost_default_user.clone());
    UserId::parse(raw.trim()).map_err(|e| (400, e.code, e.message))
}

fn error_msg(subscription_id: &str, code: ErrorCode, message: &str) -> String {
    json!({"type": "error", "subscription_id": subscription_id, "code": code.as_str(), "message": message}).to_string()
}

#[derive(Debug, Deserialize)]
struct ClientMessage {
    #[serde(rename = "type")]
    kind: Option<String>,
    subscriptions: Option<Vec<SubscriptionRequest>>,
    subscription_ids: Option<Vec<String>>,
    subscription_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct SubscriptionRequest {
    id: String,
    sql: String,
    #[serde(default)]
    options: Option<serde_json::Map<String, Json>>,
}

/// Runs one handed-off connection to its end.
// The handshake callback's error type is tungstenite's `ErrorResponse` (an HTTP response).
#[allow(clippy::result_large_err)]
pub async fn run(shared: Arc<Shared>, fd: OwnedFd, peer: SocketAddr) {
    let std_stream = std::net::TcpStream::from(fd);
    if std_stream.set_nonblocking(true).is_err() {
        return;
    }
    let Ok(tcp) = TcpStream::from_std(std_stream) else { return };
    let user_slot: Arc<Mutex<Option<UserId>>> = Arc::default();
    let slot = user_slot.clone();
    let cfg = shared.cfg.clone();
    let callback = move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let user = authenticate(&cfg, peer, req).map_err(|(status, code, message)| reject(status, code, &message))?;
        *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(user);
        Ok(resp)
    };
    let ws_config = WebSocketConfig::default()
        .max_message_size(Some(shared.cfg.limits.max_message_size))
        .max_frame_size(Some(shared.cfg.limits.max_message_size));
    let handshake = tokio_tungstenite::accept_hdr_async_with_config(tcp, callback, Some(ws_config));
    let ws = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "WebSocket handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "WebSocket handshake timed out");
            return;
        }
    };
    let Some(user) = user_slot.lock().unwrap_or_else(|p| p.into_inner()).take() else { return };
    let connection_id = uuid::Uuid::now_v7().to_string();
    tracing::info!(%peer, connection_id, user = %user, "WebSocket connected");
    let conn = Connection {
        shared: shared.clone(),
        connection_id: connection_id.clone(),
        user,
        subscriptions: HashMap::new(),
        next_generation: 1,
    };
    conn.serve(ws).await;
    shared.registry.remove_connection(&connection_id);
    tracing::info!(connection_id, "WebSocket closed");
}

struct Connection {
    shared: Arc<Shared>,
    connection_id: String,
    user: UserId,
    /// Active subscription ids and their generations.
    subscriptions: HashMap<String, u64>,
    next_generation: u64,
}

impl Connection {
    async fn serve(mut self, ws: tokio_tungstenite::WebSocketStream<TcpStream>) {
        let (mut sink, mut stream) = ws.split();
        let cfg = &self.shared.cfg.websocket;
        let (tx, mut rx) = mpsc::channel::<Outgoing>(cfg.max_pending_messages);
        let close = CancellationToken::new();
        let mut heartbeat = tokio::time::interval(Duration::from_secs(cfg.heartbeat_interval_seconds.max(1)));
        let client_timeout = Duration::from_secs(cfg.client_timeout_seconds.max(1));
        let mut last_seen = Instant::now();
        let close_with =
            |code: CloseCode, reason: &'static str| Message::Close(Some(CloseFrame { code, reason: reason.into() }));
        loop {
            tokio::select! {
                _ = self.shared.shutdown.cancelled() => {
                    let _ = sink.send(close_with(CloseCode::Away, "server shutting down")).await;
                    break;
                }
                _ = close.cancelled() => {
                    let msg = error_msg("*", ErrorCode::SlowConsumer, "Too many pending messages");
                    let _ = sink.send(Message::Text(msg.into())).await;
                    let _ = sink.send(close_with(CloseCode::Policy, "slow consumer")).await;
                    break;
                }
                Some(Outgoing::Change { subscription_id, generation, text }) = rx.recv() => {
                    // Skip changes queued before an unsubscribe (or for an earlier subscription
                    // that had the same id).
                    if self.subscriptions.get(&subscription_id) != Some(&generation) {
                        continue;
                    }
                    if sink.send(Message::Text(text.into())).await.is_err() {
                        break;
                    }
                }
                _ = heartbeat.tick() => {
                    if last_seen.elapsed() > client_timeout {
                        let _ = sink.send(close_with(CloseCode::Library(4000), "heartbeat timeout")).await;
                        break;
                    }
                    if sink.send(Message::Ping(Vec::new().into())).await.is_err() {
                        break;
                    }
                }
                incoming = stream.next() => {
                    let Some(Ok(msg)) = incoming else { break };
                    last_seen = Instant::now();
                    match msg {
                        Message::Text(text) => {
                            for reply in self.handle_text(&text, &tx, &close).await {
                                if sink.send(Message::Text(reply.into())).await.is_err() {
                                    return;
                                }
                            }
                        }
                        Message::Close(_) => break,
                        _ => {}
                    }
                }
            }
        }
    }

    async fn handle_text(&mut self, text: &str, tx: &mpsc::Sender<Outgoing>, close: &CancellationToken) -> Vec<String> {
        let msg: ClientMessage = match serde_json::from_str(text) {
            Ok(m) => m,
            Err(e) => {
                return vec![error_msg(
                    "*",
                    ErrorCode::InvalidSubscription,
                    &format!("Failed to parse subscription request: {e}"),
                )];
            }
        };
        let kind = msg.kind.as_deref().unwrap_or(if msg.subscriptions.is_some() { "subscribe" } else { "" });
        match kind {
            "subscribe" => {
                let Some(subs) = msg.subscriptions else {
                    return vec![error_msg(
                        "*",
                        ErrorCode::InvalidSubscription,
                        "Failed to parse subscription request: missing field `subscriptions`",
                    )];
                };
                let mut out = Vec::new();
                for sub in subs {
                    out.push(self.subscribe(sub, tx, close).await);
                }
                out
            }
            "unsubscribe" => {
                let ids = msg.subscription_ids.unwrap_or_default().into_iter().chain(msg.subscription_id);
                ids.map(|id| {
                    if self.subscriptions.remove(&id).is_some() && self.shared.registry.remove(&self.connection_id, &id)
                    {
                        json!({"type": "unsubscribed", "subscription_id": id, "reason": "client_request"}).to_string()
                    } else {
                        error_msg(&id, ErrorCode::SubscriptionNotFound, &format!("Subscription '{id}' not found"))
                    }
                })
                .collect()
            }
            "ping" => {
                let now = kalam_types::time::format_timestamp_micros(chrono::Utc::now().timestamp_micros());
                vec![json!({"type": "pong", "timestamp": now}).to_string()]
            }
            other => vec![error_msg("*", ErrorCode::UnknownMessageType, &format!("Unknown message type '{other}'"))],
        }
    }

    async fn subscribe(
        &mut self,
        req: SubscriptionRequest,
        tx: &mpsc::Sender<Outgoing>,
        close: &CancellationToken,
    ) -> String {
        let id = req.id;
        if id.is_empty() || id.chars().count() > MAX_SUBSCRIPTION_ID_LEN {
            return error_msg(&id, ErrorCode::InvalidSubscription, "Subscription id must be 1-128 characters");
        }
        if self.subscriptions.contains_key(&id) {
            return error_msg(
                &id,
                ErrorCode::DuplicateSubscriptionId,
                &format!("Subscription id '{id}' is already in use"),
            );
        }
        if self.subscriptions.len() >= self.shared.cfg.websocket.max_subscriptions_per_connection {
            return error_msg(&id, ErrorCode::SubscriptionLimitExceeded, "Too many subscriptions on this connection");
        }
        let options = req.options.unwrap_or_default();
        let snapshot_requested = options.iter().any(|(k, v)| !(k == "last_rows" && v.as_u64() == Some(0)));
        if snapshot_requested {
            return error_msg(
                &id,
                ErrorCode::InvalidSubscription,
                "Subscription options are not supported in this version",
            );
        }
        let Some(engine) = self.shared.engine().await else {
            return error_msg(&id, ErrorCode::ServiceUnavailable, "The database is restarting; try again");
        };
        let plan =
            match engine.plan_subscription(tarpc::context::current(), self.user.to_string(), req.sql.clone()).await {
                Ok(Ok(plan)) => plan,
                Ok(Err(e)) => return error_msg(&id, e.code, &e.message),
                Err(_) => {
                    self.shared.forget_engine().await;
                    return error_msg(&id, ErrorCode::ServiceUnavailable, "The database is restarting; try again");
                }
            };
        let generation = self.next_generation;
        self.next_generation += 1;
        let now_us = chrono::Utc::now().timestamp_micros();
        let sub = Arc::new(Subscription {
            connection_id: self.connection_id.clone(),
            subscription_id: id.clone(),
            user_id: self.user.to_string(),
            sql: req.sql,
            options: (!options.is_empty()).then(|| Json::Object(options.clone()).to_string()),
            columns: plan.columns,
            start_after: plan.start_after,
            generation,
            seq: AtomicU64::new(0),
            changes: AtomicU64::new(0),
            created_at_us: now_us,
            last_update_us: AtomicI64::new(now_us),
            tx: tx.clone(),
            close: close.clone(),
        });
        let live_id = sub.live_id();
        self.shared.registry.add((plan.namespace, plan.table, self.user.to_string()), sub);
        self.subscriptions.insert(id.clone(), generation);
        json!({"type": "subscription_ack", "subscription_id": id, "live_id": live_id, "options": options}).to_string()
    }
}
