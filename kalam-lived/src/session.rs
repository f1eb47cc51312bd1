//! One WebSocket connection: handshake with authentication, then the subscribe / unsubscribe /
//! ping protocol of api.md §4, heartbeats, and a bounded outgoing queue.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use kalam_config::KalamConfig;
use kalam_rpc::{EngineClient, SubscribeOptions, SubscriptionPlan};
use kalam_types::ErrorCode;
use kalam_types::auth::{Identity, Presented, Role, loopback_bypass};
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

use crate::pump::{Parsed, match_group, parse};
use crate::registry::{Conn, Delivery, Outgoing, RegisterError, Registry, Subscription, change_message};

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

/// The credentials of an upgrade request, with the loopback bypass judged on its real peer.
fn presented(cfg: &KalamConfig, peer: SocketAddr, req: &Request) -> Result<Presented, Rejection> {
    if req.uri().path() != "/v1/ws" {
        return Err((404, ErrorCode::InvalidRequest, "Not found".into()));
    }
    let headers = req.headers();
    let query: Vec<(String, String)> =
        form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()).into_owned().collect();
    let in_query = |key: &str| query.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    let bypass = loopback_bypass(cfg.auth.localhost_bypass, peer.ip(), |h| headers.contains_key(h));
    Ok(Presented::read(|h| headers.get(h).map(|v| kalam_types::auth::header_text(v.as_bytes())), in_query, bypass))
}

/// Longest a credential check by kalamd may hold up a handshake.
const AUTH_TIMEOUT: Duration = Duration::from_secs(2);

/// Authenticates the upgrade request (api.md §1): reads its credentials (headers, or the
/// `api_key` / `token` / `user_id` query parameters browsers need) and has kalamd, which holds
/// the users and the JWT secret, check them.
fn authenticate(shared: &Shared, peer: SocketAddr, req: &Request) -> Result<Identity, Rejection> {
    let presented = presented(&shared.cfg, peer, req)?;
    // The handshake callback is synchronous; the check is one local RPC, bounded by a timeout.
    let answer = tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(async {
            let engine = shared.engine().await?;
            let ctx = kalam_rpc::transport::context_with_timeout(AUTH_TIMEOUT);
            match tokio::time::timeout(AUTH_TIMEOUT, engine.authenticate(ctx, presented)).await {
                Ok(Ok(answer)) => Some(answer),
                _ => {
                    shared.forget_engine().await;
                    None
                }
            }
        })
    });
    match answer {
        Some(Ok(identity)) => Ok(identity),
        Some(Err(e)) => Err((e.code.http_status(), e.code, e.message)),
        None => {
            Err((503, ErrorCode::ServiceUnavailable, "Authentication is unavailable: kalamd did not answer".into()))
        }
    }
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
    let user_slot: Arc<Mutex<Option<Identity>>> = Arc::default();
    let slot = user_slot.clone();
    let for_auth = shared.clone();
    let callback = move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let identity =
            authenticate(&for_auth, peer, req).map_err(|(status, code, message)| reject(status, code, &message))?;
        *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(identity);
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
    let Some(identity) = user_slot.lock().unwrap_or_else(|p| p.into_inner()).take() else { return };
    let connection_id = uuid::Uuid::now_v7().to_string();
    let user = identity.acting;
    tracing::info!(%peer, connection_id, user = %user, principal = %identity.principal, "WebSocket connected");
    let (tx, rx) = mpsc::channel::<Outgoing>(shared.cfg.websocket.max_pending_messages);
    let _counted = Counted::new(&shared.registry);
    let conn = Connection {
        shared: shared.clone(),
        connection_id: connection_id.clone(),
        user,
        // Message rate limits apply to end users only (api.md §4.7).
        rate_limited: identity.role == Role::User,
        subscriptions: HashMap::new(),
        next_generation: 1,
        conn: Arc::new(Conn { tx, slow: CancellationToken::new() }),
        window: (Instant::now(), 0),
    };
    conn.serve(ws, rx).await;
    tracing::info!(connection_id, "WebSocket closed");
}

/// Counts a connection and its queue in the registry for as long as it lives.
struct Counted<'a>(&'a Registry);

impl<'a> Counted<'a> {
    fn new(registry: &'a Registry) -> Self {
        registry.connections.fetch_add(1, Ordering::Relaxed);
        registry.channels.fetch_add(1, Ordering::Relaxed);
        Counted(registry)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
        self.0.channels.fetch_sub(1, Ordering::Relaxed);
    }
}

type Sink = futures::stream::SplitSink<tokio_tungstenite::WebSocketStream<TcpStream>, Message>;
type Source = futures::stream::SplitStream<tokio_tungstenite::WebSocketStream<TcpStream>>;

/// The socket is gone (the connection ends).
struct Closed;

/// A refused subscription: its error code and message.
type Refusal = (ErrorCode, String);

fn refusal(code: ErrorCode, message: impl Into<String>) -> Refusal {
    (code, message.into())
}

fn unavailable() -> Refusal {
    refusal(ErrorCode::ServiceUnavailable, "The database is restarting; try again")
}

/// Writes one frame unless the connection is closed as a slow consumer first or the client
/// does not take it within `limit` (its socket buffer stays full).
async fn write(sink: &mut Sink, msg: Message, slow: &CancellationToken, limit: Duration) -> Result<(), Closed> {
    tokio::select! {
        r = tokio::time::timeout(limit, sink.send(msg)) => match r {
            Ok(Ok(())) => Ok(()),
            _ => Err(Closed),
        },
        _ = slow.cancelled() => Err(Closed),
    }
}

/// How long the final frames of a closing connection may take.
const CLOSING_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// After our close frame: waits (briefly) for the client's close reply, so the socket is not
/// reset while the client still has our last frames to read.
async fn close_reply(stream: &mut Source) {
    let reply = async {
        while let Some(Ok(msg)) = stream.next().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(CLOSING_WRITE_TIMEOUT, reply).await;
}

struct Connection {
    shared: Arc<Shared>,
    connection_id: String,
    user: UserId,
    /// `rate_limit.max_messages_per_sec` applies (principals of role `user`).
    rate_limited: bool,
    /// Active subscription ids and their generations.
    subscriptions: HashMap<String, u64>,
    next_generation: u64,
    conn: Arc<Conn>,
    /// Start of the current one-second window and messages received in it.
    window: (Instant, u32),
}

impl Connection {
    async fn serve(mut self, ws: tokio_tungstenite::WebSocketStream<TcpStream>, mut rx: mpsc::Receiver<Outgoing>) {
        let (mut sink, mut stream) = ws.split();
        let cfg = self.shared.cfg.websocket.clone();
        // The first ping goes one period after the handshake, not with it: Node 20's WebSocket
        // (undici) fails a handshake whose 101 arrives together with a frame.
        let period = Duration::from_secs(cfg.heartbeat_interval_seconds.max(1));
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        let client_timeout = Duration::from_secs(cfg.client_timeout_seconds.max(1));
        let mut last_seen = Instant::now();
        let slow = self.conn.slow.clone();
        let close_with =
            |code: CloseCode, reason: &'static str| Message::Close(Some(CloseFrame { code, reason: reason.into() }));
        loop {
            tokio::select! {
                _ = self.shared.shutdown.cancelled() => {
                    let close = close_with(CloseCode::Away, "server shutting down");
                    if let Ok(Ok(())) = tokio::time::timeout(CLOSING_WRITE_TIMEOUT, sink.send(close)).await {
                        close_reply(&mut stream).await;
                    }
                    break;
                }
                _ = slow.cancelled() => break,
                Some(out) = rx.recv() => {
                    let text = match out {
                        // Skip messages queued before an unsubscribe (or for an earlier
                        // subscription that had the same id).
                        Outgoing::Data { subscription_id, generation, text } => {
                            if self.subscriptions.get(&subscription_id) != Some(&generation) {
                                continue;
                            }
                            text
                        }
                        Outgoing::Ended { subscription_id, generation, text } => {
                            if self.subscriptions.get(&subscription_id) != Some(&generation) {
                                continue;
                            }
                            self.subscriptions.remove(&subscription_id);
                            text
                        }
                    };
                    if write(&mut sink, Message::Text(text.into()), &slow, client_timeout).await.is_err() {
                        break;
                    }
                }
                _ = heartbeat.tick() => {
                    if last_seen.elapsed() > client_timeout {
                        let close = close_with(CloseCode::Library(4000), "heartbeat timeout");
                        let _ = tokio::time::timeout(CLOSING_WRITE_TIMEOUT, sink.send(close)).await;
                        break;
                    }
                    if write(&mut sink, Message::Ping(Vec::new().into()), &slow, client_timeout).await.is_err() {
                        break;
                    }
                }
                incoming = stream.next() => {
                    let msg = match incoming {
                        Some(Ok(msg)) => msg,
                        Some(Err(tokio_tungstenite::tungstenite::Error::Capacity(_))) => {
                            let close = close_with(CloseCode::Size, "message too large");
                            let _ = tokio::time::timeout(CLOSING_WRITE_TIMEOUT, sink.send(close)).await;
                            break;
                        }
                        _ => break,
                    };
                    last_seen = Instant::now();
                    match msg {
                        Message::Text(text) if self.handle_text(&text, &mut sink).await.is_err() => break,
                        Message::Close(_) => {
                            // Completes the closing handshake (the reply frame is queued by
                            // the protocol and flushed here).
                            let _ = tokio::time::timeout(CLOSING_WRITE_TIMEOUT, sink.close()).await;
                            break;
                        }
                        _ => {}
                    }
                }
            }
        }
        for id in self.subscriptions.keys() {
            self.shared.registry.remove(&format!("{}/{id}", self.connection_id));
        }
        if slow.is_cancelled() {
            // The subscriptions are gone and the queue is dropped, so what is left is the
            // socket. A client that is behind but still reading gets the rest of what it was
            // sent, then the error and the close, if it catches up within the client timeout;
            // one that never reads is dropped after it.
            drop(rx);
            tracing::warn!(connection_id = %self.connection_id, "slow consumer; closing connection");
            let msg = error_msg("*", ErrorCode::SlowConsumer, "Too many pending messages");
            let close = close_with(CloseCode::Policy, "slow consumer");
            let last_frames = async {
                sink.send(Message::Text(msg.into())).await?;
                sink.send(close).await
            };
            if let Ok(Ok(())) = tokio::time::timeout(client_timeout, last_frames).await {
                close_reply(&mut stream).await;
            }
        }
    }

    /// Writes one message; a client that has not taken it within the client timeout, or a
    /// connection closed as a slow consumer meanwhile, ends the connection.
    async fn reply(&self, sink: &mut Sink, text: String) -> Result<(), Closed> {
        write(sink, Message::Text(text.into()), &self.conn.slow, self.write_timeout()).await
    }

    fn write_timeout(&self) -> Duration {
        Duration::from_secs(self.shared.cfg.websocket.client_timeout_seconds.max(1))
    }

    /// True when this message is over the connection's rate limit.
    fn over_rate_limit(&mut self) -> bool {
        if !self.rate_limited {
            return false;
        }
        let now = Instant::now();
        if now.duration_since(self.window.0) >= Duration::from_secs(1) {
            self.window = (now, 0);
        }
        self.window.1 += 1;
        self.window.1 > self.shared.cfg.rate_limit.max_messages_per_sec
    }

    async fn handle_text(&mut self, text: &str, sink: &mut Sink) -> Result<(), Closed> {
        if self.over_rate_limit() {
            let msg = error_msg("*", ErrorCode::RateLimitExceeded, "Too many messages; slow down");
            return self.reply(sink, msg).await;
        }
        let msg: ClientMessage = match serde_json::from_str(text) {
            Ok(m) => m,
            Err(e) => {
                let msg = error_msg(
                    "*",
                    ErrorCode::InvalidSubscription,
                    &format!("Failed to parse subscription request: {e}"),
                );
                return self.reply(sink, msg).await;
            }
        };
        let kind = msg.kind.as_deref().unwrap_or(if msg.subscriptions.is_some() { "subscribe" } else { "" });
        match kind {
            "subscribe" => {
                let Some(subs) = msg.subscriptions else {
                    let msg = error_msg(
                        "*",
                        ErrorCode::InvalidSubscription,
                        "Failed to parse subscription request: missing field `subscriptions`",
                    );
                    return self.reply(sink, msg).await;
                };
                for req in subs {
                    let id = req.id.clone();
                    if let Err((code, message)) = self.subscribe(req, sink).await? {
                        self.reply(sink, error_msg(&id, code, &message)).await?;
                    }
                }
                Ok(())
            }
            "unsubscribe" => {
                let ids = msg.subscription_ids.unwrap_or_default().into_iter().chain(msg.subscription_id);
                for id in ids {
                    let reply = if self.subscriptions.remove(&id).is_some() {
                        self.shared.registry.remove(&format!("{}/{id}", self.connection_id));
                        json!({"type": "unsubscribed", "subscription_id": id, "reason": "client_request"}).to_string()
                    } else {
                        error_msg(&id, ErrorCode::SubscriptionNotFound, &format!("Subscription '{id}' not found"))
                    };
                    self.reply(sink, reply).await?;
                }
                Ok(())
            }
            "ping" => {
                let now = kalam_types::time::format_timestamp_micros(chrono::Utc::now().timestamp_micros());
                self.reply(sink, json!({"type": "pong", "timestamp": now}).to_string()).await
            }
            other => {
                let msg = error_msg("*", ErrorCode::UnknownMessageType, &format!("Unknown message type '{other}'"));
                self.reply(sink, msg).await
            }
        }
    }

    /// Starts one subscription: ack, then its snapshot or catch-up, then live changes. The
    /// outer error means the socket is gone; the inner one refuses this subscription only.
    async fn subscribe(&mut self, req: SubscriptionRequest, sink: &mut Sink) -> Result<Result<(), Refusal>, Closed> {
        let id = req.id.clone();
        let options = req.options.clone().unwrap_or_default();
        let checked = self.check_request(&req, &options);
        let (start, engine, plan) = match checked {
            Ok(start) => match self.plan(&req.sql).await {
                Ok((engine, plan)) => (start, engine, plan),
                Err(r) => return Ok(Err(r)),
            },
            Err(r) => return Ok(Err(r)),
        };
        let filter = match self.shared.registry.filter(&plan.definition, plan.filter.as_deref()) {
            Ok(f) => f,
            Err(e) => return Ok(Err((e.code, e.message))),
        };
        let generation = self.next_generation;
        self.next_generation += 1;
        let now_us = chrono::Utc::now().timestamp_micros();
        let sub = Arc::new(Subscription {
            connection_id: self.connection_id.clone(),
            subscription_id: id.clone(),
            user_id: self.user.to_string(),
            namespace: plan.namespace.clone(),
            table: plan.table.clone(),
            table_type: plan.table_type,
            sql: req.sql.clone(),
            options: (!options.is_empty()).then(|| Json::Object(options.clone()).to_string()),
            columns: plan.columns.clone(),
            filter,
            generation,
            delivery: std::sync::Mutex::new(Delivery::Starting(Default::default())),
            max_parked: self.shared.cfg.websocket.max_pending_messages,
            seq: AtomicU64::new(0),
            changes: AtomicU64::new(0),
            created_at_us: now_us,
            last_update_us: AtomicI64::new(now_us),
            conn: self.conn.clone(),
        });
        let key = (plan.namespace.clone(), plan.table.clone(), self.user.to_string());
        let cursor = match self.register(key, sub.clone()).await {
            Ok(c) => c,
            Err(r) => return Ok(Err(r)),
        };
        self.subscriptions.insert(id.clone(), generation);
        let live_id = sub.live_id();
        match self.start(&engine, &plan, &sub, start, cursor, &options, sink).await {
            Ok(Ok(after)) => {
                sub.go_live(after, &self.shared.registry.delivered);
                Ok(Ok(()))
            }
            Ok(Err(r)) => {
                self.subscriptions.remove(&id);
                self.shared.registry.remove(&live_id);
                Ok(Err(r))
            }
            Err(Closed) => {
                self.subscriptions.remove(&id);
                self.shared.registry.remove(&live_id);
                Err(Closed)
            }
        }
    }

    fn check_request(
        &self,
        req: &SubscriptionRequest,
        options: &serde_json::Map<String, Json>,
    ) -> Result<SubscribeOptions, Refusal> {
        let id = &req.id;
        if id.is_empty() || id.chars().count() > MAX_SUBSCRIPTION_ID_LEN {
            return Err(refusal(ErrorCode::InvalidSubscription, "Subscription id must be 1-128 characters"));
        }
        if self.subscriptions.contains_key(id) {
            return Err(refusal(
                ErrorCode::DuplicateSubscriptionId,
                format!("Subscription id '{id}' is already in use"),
            ));
        }
        if self.subscriptions.len() >= self.shared.cfg.websocket.max_subscriptions_per_connection {
            return Err(refusal(
                ErrorCode::SubscriptionLimitExceeded,
                format!(
                    "Too many subscriptions on this connection (at most {})",
                    self.shared.cfg.websocket.max_subscriptions_per_connection
                ),
            ));
        }
        SubscribeOptions::parse(options).map_err(|e| (e.code, e.message))
    }

    async fn plan(&self, sql: &str) -> Result<(EngineClient, SubscriptionPlan), Refusal> {
        let engine = self.shared.engine().await.ok_or_else(unavailable)?;
        match engine.plan_subscription(tarpc::context::current(), self.user.to_string(), sql.to_owned()).await {
            Ok(Ok(plan)) => Ok((engine, plan)),
            Ok(Err(e)) => Err((e.code, e.message)),
            Err(_) => {
                self.shared.forget_engine().await;
                Err(unavailable())
            }
        }
    }

    async fn register(&self, key: crate::registry::PartitionKey, sub: Arc<Subscription>) -> Result<u64, Refusal> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.shared.registry.register(key.clone(), sub.clone()) {
                Ok(cursor) => return Ok(cursor),
                Err(RegisterError::UserLimit(n)) => {
                    return Err(refusal(
                        ErrorCode::SubscriptionLimitExceeded,
                        format!("Too many subscriptions for user '{}' (at most {n})", self.user),
                    ));
                }
                // The dispatcher has not reached kalamd yet (it just started).
                Err(RegisterError::NotReady) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(RegisterError::NotReady) => return Err(unavailable()),
            }
        }
    }

    /// Sends the ack and the snapshot or the missed changes; returns the sequence after which
    /// the parked live changes continue.
    #[allow(clippy::too_many_arguments)]
    async fn start(
        &self,
        engine: &EngineClient,
        plan: &SubscriptionPlan,
        sub: &Arc<Subscription>,
        start: SubscribeOptions,
        cursor: u64,
        options: &serde_json::Map<String, Json>,
        sink: &mut Sink,
    ) -> Result<Result<u64, Refusal>, Closed> {
        let id = &sub.subscription_id;
        let ack =
            json!({"type": "subscription_ack", "subscription_id": id, "live_id": sub.live_id(), "options": options});
        if let Some(from) = start.from_seq {
            // Validated before the ack: a resume the log cannot serve is refused outright.
            let first = match self.poll(engine, from).await {
                Ok(b) => b,
                Err(r) => return Ok(Err(r)),
            };
            if !first.reaches_back_to(from, plan.table_type) {
                return Ok(Err(refusal(
                    ErrorCode::ResumeExpired,
                    format!(
                        "Cannot resume from commit_seq {from}: the change log holds {}..{}; subscribe again with a snapshot",
                        first.floor_seq.max(if plan.table_type == kalam_types::schema::TableType::Stream {
                            first.stream_floor_seq
                        } else {
                            0
                        }),
                        first.head_seq
                    ),
                )));
            }
            self.reply(sink, ack.to_string()).await?;
            return match self.catch_up(engine, sub, from, cursor, Some(first), sink).await? {
                Ok(()) => Ok(Ok(from.max(cursor))),
                Err(r) => Ok(Err(r)),
            };
        }
        let Some(snapshot_options) = start.snapshot else {
            // Without a snapshot the changes after `cursor` follow: the client's resume point
            // until its first change arrives.
            let mut ack = ack;
            ack["commit_seq"] = json!(cursor);
            self.reply(sink, ack.to_string()).await?;
            return Ok(Ok(cursor));
        };
        let snapshot = match engine
            .subscription_snapshot(tarpc::context::current(), self.user.to_string(), sub.sql.clone(), snapshot_options)
            .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Ok(Err((e.code, e.message))),
            Err(_) => {
                self.shared.forget_engine().await;
                return Ok(Err(unavailable()));
            }
        };
        self.reply(sink, ack.to_string()).await?;
        let mut text = format!(
            r#"{{"type":"initial_data","subscription_id":{},"count":{},"has_more":{},"commit_seq":{},"rows":["#,
            serde_json::to_string(id).unwrap_or_default(),
            snapshot.rows.len(),
            snapshot.has_more,
            snapshot.commit_seq
        );
        text.push_str(&snapshot.rows.join(","));
        text.push_str("]}");
        self.reply(sink, text).await?;
        // The snapshot was read after registering, so it is at or after the cursor; should
        // it not be, the gap is read from the log.
        match self.catch_up(engine, sub, snapshot.commit_seq, cursor, None, sink).await? {
            Ok(()) => Ok(Ok(snapshot.commit_seq.max(cursor))),
            Err(r) => Ok(Err(r)),
        }
    }

    async fn poll(&self, engine: &EngineClient, after: u64) -> Result<kalam_rpc::ChangeBatch, Refusal> {
        match engine.poll_changes(tarpc::context::current(), after, crate::pump::POLL_BATCH, 0).await {
            Ok(Ok(b)) => Ok(b),
            Ok(Err(e)) => Err((e.code, e.message)),
            Err(_) => {
                self.shared.forget_engine().await;
                Err(unavailable())
            }
        }
    }

    /// Sends the subscription's changes in `(after, until]` straight from the change log.
    async fn catch_up(
        &self,
        engine: &EngineClient,
        sub: &Arc<Subscription>,
        mut after: u64,
        until: u64,
        mut first: Option<kalam_rpc::ChangeBatch>,
        sink: &mut Sink,
    ) -> Result<Result<(), Refusal>, Closed> {
        let delivered = &self.shared.registry.delivered;
        while after < until {
            let batch = match first.take() {
                Some(b) => b,
                None => match self.poll(engine, after).await {
                    Ok(b) => b,
                    Err(r) => return Ok(Err(r)),
                },
            };
            let Some(last) = batch.records.last().map(|r| r.commit_seq) else { break };
            let mine: Vec<Parsed<'_>> = batch
                .records
                .iter()
                .filter(|r| {
                    r.commit_seq <= until
                        && r.namespace == sub.namespace
                        && r.table == sub.table
                        && r.user_id.as_deref() == Some(sub.user_id.as_str())
                })
                .map(parse)
                .collect();
            for (_, events) in match_group(&mine, std::slice::from_ref(sub)) {
                for event in events {
                    let seq = sub.seq.fetch_add(1, Ordering::SeqCst) + 1;
                    self.reply(sink, change_message(&sub.subscription_id, seq, &event)).await?;
                    sub.changes.fetch_add(1, Ordering::Relaxed);
                    sub.last_update_us.store(chrono::Utc::now().timestamp_micros(), Ordering::Relaxed);
                    delivered.fetch_add(1, Ordering::Relaxed);
                }
            }
            after = last;
        }
        Ok(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_requests_carry_their_credentials_to_kalamd() {
        let cfg = KalamConfig::default();
        let lo: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let remote: SocketAddr = "10.1.1.1:5000".parse().unwrap();
        let req = |uri: &str, headers: &[(&str, &str)]| {
            let mut b = Request::builder().uri(uri);
            for (k, v) in headers {
                b = b.header(*k, *v);
            }
            b.body(()).unwrap()
        };
        let read = |peer, r: Request| presented(&cfg, peer, &r).unwrap();
        assert!(read(lo, req("/v1/ws", &[])).bypass);
        assert_eq!(read(lo, req("/v1/ws?user_id=al%69ce", &[])).acting.as_deref(), Some("alice"));
        assert_eq!(read(lo, req("/v1/ws", &[("x-user-id", "bob")])).acting.as_deref(), Some("bob"));
        assert!(!read(remote, req("/v1/ws", &[])).bypass);
        assert!(!read(lo, req("/v1/ws", &[("origin", "http://x")])).bypass);
        assert!(!read(lo, req("/v1/ws", &[("x-forwarded-for", "10.0.0.1")])).bypass);
        assert_eq!(read(lo, req("/v1/ws?api_key=k%2B1", &[])).api_key.as_deref(), Some("k+1"));
        assert_eq!(read(lo, req("/v1/ws", &[("authorization", "Bearer x")])).bearer.as_deref(), Some("x"));
        assert_eq!(read(lo, req("/v1/ws?token=t", &[])).bearer.as_deref(), Some("t"));
        assert_eq!(presented(&cfg, lo, &req("/other", &[])).unwrap_err().0, 404);
    }
}
