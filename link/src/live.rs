//! Live queries over `GET /v1/ws` (native build): [`SubscriptionManager`], which reconnects and
//! resumes through [`crate::resume::Resumer`], and [`LiveConnection`], the raw socket for callers
//! that speak the protocol themselves.

use futures::{SinkExt, StreamExt};
use serde_json::Value as Json;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::resume::{ChangeEvent, Output, ReconnectPolicy, Resumer};
use crate::wire::SubscriptionConfig;
use crate::{KalamLinkClient, KalamLinkError};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Events buffered between the socket task and the application; when the application falls
/// this far behind, the task stops reading (and the server's own limit applies).
pub const MAX_BUFFERED_EVENTS: usize = 10_000;

/// A server frame as [`LiveConnection::next_frame`] reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Text(Json),
    /// The close frame's code, if it carried one.
    Close(Option<u16>),
}

fn ws_err(e: impl std::fmt::Display) -> KalamLinkError {
    KalamLinkError::WebSocketError(e.to_string())
}

/// A failed WebSocket handshake: refusals of the credential are `AuthenticationError`, an
/// unreachable server `NetworkError`.
fn handshake_err(e: tungstenite::Error) -> KalamLinkError {
    match e {
        tungstenite::Error::Http(resp) => {
            let status = resp.status().as_u16();
            let body = resp.body().as_deref().and_then(|b| serde_json::from_slice::<Json>(b).ok());
            let field = |k: &str| {
                body.as_ref()
                    .and_then(|b| b["error"][k].as_str())
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("HTTP {status}"))
            };
            if matches!(status, 401 | 403) {
                KalamLinkError::AuthenticationError {
                    status_code: status,
                    code: field("code"),
                    message: field("message"),
                }
            } else {
                KalamLinkError::ServerError { status_code: status, code: field("code"), message: field("message") }
            }
        }
        tungstenite::Error::Io(e) => KalamLinkError::NetworkError(e.to_string()),
        other => ws_err(other),
    }
}

impl KalamLinkClient {
    async fn open_socket(&self, url: &str) -> Result<Socket, KalamLinkError> {
        let mut req = url.into_client_request().map_err(|e| KalamLinkError::ConfigurationError(e.to_string()))?;
        req.headers_mut().extend(self.auth_headers().clone());
        let connect = tokio_tungstenite::connect_async(req);
        match tokio::time::timeout(self.timeout(), connect).await {
            Ok(Ok((ws, _))) => Ok(ws),
            Ok(Err(e)) => Err(handshake_err(e)),
            Err(_) => {
                Err(KalamLinkError::TimeoutError(format!("WebSocket {url} did not open within {:?}", self.timeout())))
            }
        }
    }

    /// Opens a WebSocket as this client's user and credential.
    pub async fn connect_live(&self) -> Result<LiveConnection, KalamLinkError> {
        Ok(LiveConnection { ws: self.open_socket(&self.ws_url()).await? })
    }

    /// Subscribes to `sql` (no snapshot) with the default reconnect policy.
    pub async fn subscribe(&self, sql: &str) -> Result<SubscriptionManager, KalamLinkError> {
        self.subscribe_with_config(SubscriptionConfig::new(sql)).await
    }

    pub async fn subscribe_with_config(
        &self,
        config: SubscriptionConfig,
    ) -> Result<SubscriptionManager, KalamLinkError> {
        self.subscribe_with_policy(config, ReconnectPolicy::default()).await
    }

    /// Opens the WebSocket (an error here is returned: nothing is retried before the first
    /// connection), sends the subscription and hands the socket to a task that reconnects and
    /// resumes after any later drop.
    pub async fn subscribe_with_policy(
        &self,
        config: SubscriptionConfig,
        policy: ReconnectPolicy,
    ) -> Result<SubscriptionManager, KalamLinkError> {
        let id = config.id.clone().unwrap_or_else(|| format!("sub-{}", uuid::Uuid::new_v4()));
        let url = config.ws_url.clone().unwrap_or_else(|| self.ws_url());
        let socket = self.open_socket(&url).await?;
        let (events_tx, events) = mpsc::channel(MAX_BUFFERED_EVENTS);
        let (close_tx, close_rx) = oneshot::channel();
        let resumer = Resumer::new(id.clone(), config.sql, config.options, policy);
        let driver = Driver { client: self.clone(), url, resumer, events: events_tx, close: close_rx };
        let task = tokio::spawn(driver.run(socket));
        Ok(SubscriptionManager { id, events, close: Some(close_tx), task: Some(task) })
    }
}

/// One subscription on its own WebSocket, resumed across disconnects (cli.md §2.2).
#[derive(Debug)]
pub struct SubscriptionManager {
    id: String,
    events: mpsc::Receiver<Result<ChangeEvent, KalamLinkError>>,
    close: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl SubscriptionManager {
    pub fn subscription_id(&self) -> &str {
        &self.id
    }

    /// The next event; `None` once the subscription is over (closed, unsubscribed or killed,
    /// refused, or the reconnect attempts ran out — the last reported as an `Err` first).
    pub async fn next(&mut self) -> Option<Result<ChangeEvent, KalamLinkError>> {
        self.events.recv().await
    }

    /// Unsubscribes, closes the socket and waits for the task to end.
    pub async fn close(mut self) -> Result<(), KalamLinkError> {
        if let Some(tx) = self.close.take() {
            let _ = tx.send(());
        }
        self.events.close();
        if let Some(task) = self.task.take() {
            task.await.map_err(|e| ws_err(format!("subscription task failed: {e}")))?;
        }
        Ok(())
    }
}

impl Drop for SubscriptionManager {
    fn drop(&mut self) {
        // Dropping the close sender tells the task to unsubscribe and stop.
        self.close.take();
    }
}

/// The socket side of one [`SubscriptionManager`].
struct Driver {
    client: KalamLinkClient,
    url: String,
    resumer: Resumer,
    events: mpsc::Sender<Result<ChangeEvent, KalamLinkError>>,
    close: oneshot::Receiver<()>,
}

/// How one connection ended.
enum Ended {
    /// Lost or dropped: reconnect.
    Lost(String),
    /// The subscription is over.
    Finished,
}

impl Driver {
    async fn run(mut self, first: Socket) {
        let mut socket = Some(first);
        loop {
            let reason = match socket.take() {
                Some(ws) => match self.serve(ws).await {
                    Ended::Finished => return,
                    Ended::Lost(reason) => reason,
                },
                None => "connection failed".to_owned(),
            };
            let outputs = self.resumer.on_closed(&reason);
            match self.reconnect(outputs).await {
                Some(ws) => socket = Some(ws),
                None => return,
            }
        }
    }

    /// Follows the machine's answer to a lost connection until a new socket is open, or `None`
    /// when the subscription is over.
    async fn reconnect(&mut self, mut outputs: Vec<Output>) -> Option<Socket> {
        loop {
            let mut wait = None;
            for out in outputs {
                match out {
                    Output::Event(e) => self.emit(Ok(e)).await.ok()?,
                    Output::ReconnectAfter(d) => wait = Some(d),
                    Output::Fail(reason) => {
                        let _ = self.emit(Err(KalamLinkError::NetworkError(reason))).await;
                        return None;
                    }
                    Output::Finish => return None,
                    Output::Send(_) | Output::Disconnect(_) => {}
                }
            }
            let wait = wait?;
            tokio::select! {
                _ = &mut self.close => return None,
                _ = tokio::time::sleep(wait) => {}
            }
            // Closing must not wait for a connection attempt to time out.
            let opened = tokio::select! {
                _ = &mut self.close => return None,
                opened = self.client.open_socket(&self.url) => opened,
            };
            match opened {
                Ok(ws) => return Some(ws),
                // A refused credential will not get better by retrying.
                Err(e @ KalamLinkError::AuthenticationError { .. }) => {
                    let _ = self.emit(Err(e)).await;
                    return None;
                }
                Err(e) => outputs = self.resumer.on_closed(&e.to_string()),
            }
        }
    }

    /// Hands an event to the application, unless it has gone (then the subscription ends).
    async fn emit(&mut self, event: Result<ChangeEvent, KalamLinkError>) -> Result<(), ()> {
        tokio::select! {
            sent = self.events.send(event) => sent.map_err(|_| ()),
            _ = &mut self.close => Err(()),
        }
    }

    /// Runs one connection until it is lost or the subscription is over.
    async fn serve(&mut self, mut ws: Socket) -> Ended {
        let mut outputs = self.resumer.on_open();
        // A subscribe the server never answers (dropped by its message rate limit, say) must
        // not leave the subscription waiting forever: past this, the connection is dropped
        // and opened again.
        let ack_wait = self.client.timeout();
        let mut ack_deadline = tokio::time::Instant::now() + ack_wait;
        loop {
            for out in std::mem::take(&mut outputs) {
                match out {
                    Output::Send(frame) => {
                        if let Err(e) = ws.send(Message::Text(frame.into())).await {
                            return Ended::Lost(e.to_string());
                        }
                        ack_deadline = tokio::time::Instant::now() + ack_wait;
                    }
                    Output::Event(e) => {
                        if self.emit(Ok(e)).await.is_err() {
                            return self.finish(ws).await;
                        }
                    }
                    Output::Disconnect(reason) => {
                        let _ = ws.close(None).await;
                        return Ended::Lost(reason);
                    }
                    Output::Fail(reason) => {
                        let _ = self.emit(Err(KalamLinkError::WebSocketError(reason))).await;
                        let _ = ws.close(None).await;
                        return Ended::Finished;
                    }
                    Output::Finish => {
                        let _ = ws.close(None).await;
                        return Ended::Finished;
                    }
                    Output::ReconnectAfter(_) => {}
                }
            }
            let frame = tokio::select! {
                _ = &mut self.close => return self.finish(ws).await,
                _ = tokio::time::sleep_until(ack_deadline), if self.resumer.awaiting_ack() => {
                    let _ = ws.close(None).await;
                    return Ended::Lost(format!("no subscription_ack within {ack_wait:?}"));
                }
                frame = ws.next() => frame,
            };
            match frame {
                Some(Ok(Message::Text(text))) => outputs = self.resumer.on_text(&text),
                Some(Ok(Message::Close(c))) => {
                    let reason = c.map(|c| format!("closed by the server ({} {})", u16::from(c.code), c.reason));
                    return Ended::Lost(reason.unwrap_or_else(|| "closed by the server".into()));
                }
                // Pings are answered by tungstenite as it reads.
                Some(Ok(_)) => {}
                Some(Err(e)) => return Ended::Lost(e.to_string()),
                None => return Ended::Lost("connection closed".into()),
            }
        }
    }

    /// The application closed the subscription: unsubscribe and close the socket.
    async fn finish(&mut self, mut ws: Socket) -> Ended {
        for out in self.resumer.close() {
            if let Output::Send(frame) = out {
                let _ = ws.send(Message::Text(frame.into())).await;
            }
        }
        let _ = ws.close(None).await;
        Ended::Finished
    }
}

/// An open WebSocket connection carrying subscriptions, without reconnects: the caller speaks
/// the protocol (api.md §4) itself.
pub struct LiveConnection {
    ws: Socket,
}

impl LiveConnection {
    /// Sends a `subscribe` message for one subscription.
    pub async fn subscribe(&mut self, id: &str, sql: &str) -> Result<(), KalamLinkError> {
        self.send_text(crate::protocol::subscribe_message(id, sql, None, None)).await
    }

    pub async fn send_json(&mut self, msg: &Json) -> Result<(), KalamLinkError> {
        self.send_text(msg.to_string()).await
    }

    async fn send_text(&mut self, text: String) -> Result<(), KalamLinkError> {
        self.ws.send(Message::Text(text.into())).await.map_err(ws_err)
    }

    /// The next server message (pings are answered and skipped). `Ok(None)` when closed.
    pub async fn next_message(&mut self) -> Result<Option<Json>, KalamLinkError> {
        match self.next_frame().await? {
            Some(Frame::Text(json)) => Ok(Some(json)),
            Some(Frame::Close(_)) | None => Ok(None),
        }
    }

    /// The next text message or the close frame (its code), skipping pings. `Ok(None)` when
    /// the stream ended without a close frame.
    pub async fn next_frame(&mut self) -> Result<Option<Frame>, KalamLinkError> {
        while let Some(frame) = self.ws.next().await {
            match frame.map_err(ws_err)? {
                Message::Text(t) => {
                    let json =
                        serde_json::from_str(&t).map_err(|e| KalamLinkError::SerializationError(e.to_string()))?;
                    return Ok(Some(Frame::Text(json)));
                }
                Message::Close(c) => return Ok(Some(Frame::Close(c.map(|c| u16::from(c.code))))),
                _ => {}
            }
        }
        Ok(None)
    }

    pub async fn close(mut self) -> Result<(), KalamLinkError> {
        self.ws.close(None).await.map_err(ws_err)
    }
}
