//! Live queries over `GET /v1/ws` (native build).

use futures::{SinkExt, StreamExt};
use serde_json::{Value as Json, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::{KalamLinkClient, KalamLinkError};

/// A server frame as [`LiveConnection::next_frame`] reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Text(Json),
    /// The close frame's code, if it carried one.
    Close(Option<u16>),
}

/// An open WebSocket connection carrying subscriptions.
pub struct LiveConnection {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

fn ws_err(e: impl std::fmt::Display) -> KalamLinkError {
    KalamLinkError::WebSocket(e.to_string())
}

impl KalamLinkClient {
    /// Opens a WebSocket as this client's user.
    pub async fn connect_live(&self) -> Result<LiveConnection, KalamLinkError> {
        let mut req = self.ws_url().into_client_request().map_err(ws_err)?;
        if let Some(u) = &self.user_id {
            req.headers_mut().insert("X-USER-ID", u.parse().map_err(ws_err)?);
        }
        let (ws, _) = tokio_tungstenite::connect_async(req).await.map_err(ws_err)?;
        Ok(LiveConnection { ws })
    }
}

impl LiveConnection {
    /// Sends a `subscribe` message for one subscription.
    pub async fn subscribe(&mut self, id: &str, sql: &str) -> Result<(), KalamLinkError> {
        let msg = json!({"type": "subscribe", "subscriptions": [{"id": id, "sql": sql}]});
        self.send_json(&msg).await
    }

    pub async fn send_json(&mut self, msg: &Json) -> Result<(), KalamLinkError> {
        self.ws.send(Message::Text(msg.to_string().into())).await.map_err(ws_err)
    }

    /// The next server message (pings are answered and skipped). `Ok(None)` when closed.
    pub async fn next_message(&mut self) -> Result<Option<Json>, KalamLinkError> {
        while let Some(frame) = self.ws.next().await {
            match frame.map_err(ws_err)? {
                Message::Text(t) => {
                    return serde_json::from_str(&t).map(Some).map_err(|e| KalamLinkError::Protocol(e.to_string()));
                }
                Message::Close(_) => return Ok(None),
                _ => {}
            }
        }
        Ok(None)
    }

    /// The next text message or the close frame (its code), skipping pings. `Ok(None)` when
    /// the stream ended without a close frame.
    pub async fn next_frame(&mut self) -> Result<Option<Frame>, KalamLinkError> {
        while let Some(frame) = self.ws.next().await {
            match frame.map_err(ws_err)? {
                Message::Text(t) => {
                    let json = serde_json::from_str(&t).map_err(|e| KalamLinkError::Protocol(e.to_string()))?;
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
