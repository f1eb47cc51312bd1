//! The WebSocket protocol (api.md §4.2–§4.3) as plain data: client messages are built as JSON
//! text, server messages are parsed into [`ServerMessage`]. No I/O, so the native and WASM
//! builds share it.

use serde_json::{Map, Value as Json, json};

use crate::wire::SubscriptionOptions;

/// A row of a live result, keyed by column name.
pub type Row = Map<String, Json>;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Insert,
    Update,
    Delete,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Insert => "insert",
            Self::Update => "update",
            Self::Delete => "delete",
        }
    }
}

fn text(v: &Json, key: &str) -> String {
    v.get(key).and_then(Json::as_str).unwrap_or_default().to_owned()
}

fn rows(v: &Json, key: &str) -> Vec<Row> {
    v.get(key)
        .and_then(Json::as_array)
        .map(|a| a.iter().filter_map(|r| r.as_object().cloned()).collect())
        .unwrap_or_default()
}

impl ServerMessage {
    /// Parses one text frame; `Err` when it is not JSON or lacks what its type requires.
    pub fn parse(frame: &str) -> Result<ServerMessage, String> {
        let v: Json = serde_json::from_str(frame).map_err(|e| format!("not JSON ({e})"))?;
        Ok(Self::from_json(v))
    }

    /// A message of a known type with a malformed body is `Unknown` (the caller sees it raw).
    pub fn from_json(v: Json) -> ServerMessage {
        let id = text(&v, "subscription_id");
        match v.get("type").and_then(Json::as_str) {
            Some("subscription_ack") => ServerMessage::Ack {
                subscription_id: id,
                live_id: text(&v, "live_id"),
                commit_seq: v.get("commit_seq").and_then(Json::as_u64),
            },
            Some("initial_data") => ServerMessage::InitialData {
                subscription_id: id,
                rows: rows(&v, "rows"),
                has_more: v.get("has_more").and_then(Json::as_bool).unwrap_or(false),
                commit_seq: v.get("commit_seq").and_then(Json::as_u64),
            },
            Some("change") => {
                let kind = match v.get("change_type").and_then(Json::as_str) {
                    Some("insert") => ChangeKind::Insert,
                    Some("update") => ChangeKind::Update,
                    Some("delete") => ChangeKind::Delete,
                    _ => return ServerMessage::Unknown(v),
                };
                let Some(commit_seq) = v.get("commit_seq").and_then(Json::as_u64) else {
                    return ServerMessage::Unknown(v);
                };
                let change = Change {
                    kind,
                    rows: rows(&v, "rows"),
                    old_rows: rows(&v, "old_values"),
                    seq: v.get("seq").and_then(Json::as_u64).unwrap_or(0),
                    commit_seq,
                    timestamp: v.get("timestamp").and_then(Json::as_str).map(str::to_owned),
                };
                ServerMessage::Change { subscription_id: id, change }
            }
            Some("error") => {
                ServerMessage::Error { subscription_id: id, code: text(&v, "code"), message: text(&v, "message") }
            }
            Some("unsubscribed") => ServerMessage::Unsubscribed { subscription_id: id, reason: text(&v, "reason") },
            Some("pong") => ServerMessage::Pong,
            _ => ServerMessage::Unknown(v),
        }
    }
}

/// `{"type":"subscribe",…}` for one subscription; `from_seq` replaces the snapshot options
/// (the server refuses the two together).
pub fn subscribe_message(id: &str, sql: &str, options: Option<&SubscriptionOptions>, from_seq: Option<u64>) -> String {
    let mut sub = json!({"id": id, "sql": sql});
    let options = match from_seq {
        Some(seq) => Some(json!({"from_seq": seq})),
        None => options.map(|o| serde_json::to_value(o).unwrap_or_default()),
    };
    if let Some(o) = options.filter(|o| o.as_object().is_some_and(|m| !m.is_empty())) {
        sub["options"] = o;
    }
    json!({"type": "subscribe", "subscriptions": [sub]}).to_string()
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
