//! The WebSocket protocol (api.md §4.2–§4.3) as plain data: client messages are built as JSON
//! text, server messages are parsed into [`ServerMessage`]. No I/O, so the native and WASM
//! builds share it.

use serde::Deserialize;
use serde_json::{Value as Json, json};

pub use crate::row::Row;
use crate::wire::SubscriptionOptions;

/// One server message, typed. Unknown message types (the protocol may grow) stay as `Unknown`.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMessage {
    Ack { subscription_id: String, live_id: String, commit_seq: Option<u64> },
    InitialData { subscription_id: String, rows: Vec<Row>, has_more: bool, commit_seq: Option<u64> },
    Change { subscription_id: String, change: Change },
    Error { subscription_id: String, code: String, message: String },
    Unsubscribed { subscription_id: String, reason: String },
    Pong,
    Unknown(Json),
}

/// One changed row as the server sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub kind: ChangeKind,
    pub rows: Vec<Row>,
    pub old_rows: Vec<Row>,
    /// Per-subscription message counter (restarts at 1 on every subscribe).
    pub seq: u64,
    /// The change-log position: strictly increasing per subscription, the resume point.
    pub commit_seq: u64,
    pub timestamp: Option<String>,
}

/// Kinds of change, as the change log and the protocol name them.
pub use kalam_types::change::ChangeKind;

/// Every field any server message has; absent ones are left at their defaults. Rows are read
/// as [`Row`]s straight from the text, so they keep the server's column order.
#[derive(Deserialize, Default)]
#[serde(default)]
struct RawMessage {
    #[serde(rename = "type")]
    kind: Option<String>,
    subscription_id: String,
    live_id: String,
    commit_seq: Option<u64>,
    rows: Vec<Row>,
    old_values: Vec<Row>,
    has_more: bool,
    change_type: Option<String>,
    seq: u64,
    timestamp: Option<String>,
    code: String,
    message: String,
    reason: String,
}

impl ServerMessage {
    /// The subscription the message is about (`*` for the connection); `None` for pongs and
    /// unknown messages.
    pub fn subscription_id(&self) -> Option<&str> {
        match self {
            ServerMessage::Ack { subscription_id, .. }
            | ServerMessage::InitialData { subscription_id, .. }
            | ServerMessage::Change { subscription_id, .. }
            | ServerMessage::Error { subscription_id, .. }
            | ServerMessage::Unsubscribed { subscription_id, .. } => Some(subscription_id),
            ServerMessage::Pong | ServerMessage::Unknown(_) => None,
        }
    }

    /// Parses one text frame; `Err` when it is not JSON. A message of a known type with a
    /// malformed body, or of a type this library does not know, is `Unknown`.
    pub fn parse(frame: &str) -> Result<ServerMessage, String> {
        let value: Json = serde_json::from_str(frame).map_err(|e| format!("not JSON ({e})"))?;
        let Ok(m) = serde_json::from_str::<RawMessage>(frame) else {
            return Ok(ServerMessage::Unknown(value));
        };
        let id = m.subscription_id;
        Ok(match m.kind.as_deref() {
            Some("subscription_ack") => {
                ServerMessage::Ack { subscription_id: id, live_id: m.live_id, commit_seq: m.commit_seq }
            }
            Some("initial_data") => ServerMessage::InitialData {
                subscription_id: id,
                rows: m.rows,
                has_more: m.has_more,
                commit_seq: m.commit_seq,
            },
            Some("change") => {
                let kind = match m.change_type.as_deref() {
                    Some("insert") => ChangeKind::Insert,
                    Some("update") => ChangeKind::Update,
                    Some("delete") => ChangeKind::Delete,
                    _ => return Ok(ServerMessage::Unknown(value)),
                };
                let Some(commit_seq) = m.commit_seq else {
                    return Ok(ServerMessage::Unknown(value));
                };
                let change = Change {
                    kind,
                    rows: m.rows,
                    old_rows: m.old_values,
                    seq: m.seq,
                    commit_seq,
                    timestamp: m.timestamp,
                };
                ServerMessage::Change { subscription_id: id, change }
            }
            Some("error") => ServerMessage::Error { subscription_id: id, code: m.code, message: m.message },
            Some("unsubscribed") => ServerMessage::Unsubscribed { subscription_id: id, reason: m.reason },
            Some("pong") => ServerMessage::Pong,
            _ => ServerMessage::Unknown(value),
        })
    }
}

/// `{"type":"subscribe",…}` for one subscription; `from_seq` replaces the snapshot options
/// (the server refuses the two together).
pub fn subscribe_message(id: &str, sql: &str, options: Option<&SubscriptionOptions>, from_seq: Option<u64>) -> String {
    subscribe_message_for(vec![subscribe_entry(id, sql, options, from_seq)])
}

/// One entry of a `subscribe` message's `subscriptions` (see [`subscribe_message`]).
pub fn subscribe_entry(id: &str, sql: &str, options: Option<&SubscriptionOptions>, from_seq: Option<u64>) -> Json {
    let mut sub = json!({"id": id, "sql": sql});
    let options = match from_seq {
        Some(seq) => Some(json!({"from_seq": seq})),
        None => options.map(|o| serde_json::to_value(o).unwrap_or_default()),
    };
    if let Some(o) = options.filter(|o| o.as_object().is_some_and(|m| !m.is_empty())) {
        sub["options"] = o;
    }
    sub
}

/// One `subscribe` message carrying several subscriptions.
pub fn subscribe_message_for(entries: Vec<Json>) -> String {
    json!({"type": "subscribe", "subscriptions": entries}).to_string()
}

pub fn unsubscribe_message(id: &str) -> String {
    json!({"type": "unsubscribe", "subscription_ids": [id]}).to_string()
}

pub fn ping_message() -> String {
    json!({"type": "ping"}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_parse_with_their_positions() {
        let m = ServerMessage::parse(
            r#"{"type":"change","subscription_id":"s","change_type":"update","seq":2,"commit_seq":43,
                "timestamp":"t","rows":[{"id":1}],"old_values":[{"id":0}]}"#,
        )
        .unwrap();
        let ServerMessage::Change { subscription_id, change } = m else { panic!("{m:?}") };
        assert_eq!(subscription_id, "s");
        assert_eq!((change.kind, change.seq, change.commit_seq), (ChangeKind::Update, 2, 43));
        assert_eq!(change.old_rows[0]["id"], 0);
    }

    #[test]
    fn malformed_or_new_messages_stay_raw() {
        assert!(matches!(
            ServerMessage::parse(r#"{"type":"change","change_type":"insert"}"#),
            Ok(ServerMessage::Unknown(_))
        ));
        assert!(matches!(ServerMessage::parse(r#"{"type":"hello"}"#), Ok(ServerMessage::Unknown(_))));
        assert!(ServerMessage::parse("nope").is_err());
    }

    #[test]
    fn a_resume_replaces_the_snapshot_options() {
        let o = SubscriptionOptions { last_rows: Some(5), ..Default::default() };
        let fresh: Json = serde_json::from_str(&subscribe_message("a", "SELECT 1", Some(&o), None)).unwrap();
        assert_eq!(fresh["subscriptions"][0]["options"], json!({"last_rows": 5}));
        let resumed: Json = serde_json::from_str(&subscribe_message("a", "SELECT 1", Some(&o), Some(9))).unwrap();
        assert_eq!(resumed["subscriptions"][0]["options"], json!({"from_seq": 9}));
        let bare: Json = serde_json::from_str(&subscribe_message("a", "SELECT 1", None, None)).unwrap();
        assert!(bare["subscriptions"][0].get("options").is_none());
    }
}
