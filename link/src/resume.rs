//! The reconnect-and-resume state machine of one subscription, free of I/O so the native and
//! WASM drivers share it.
//!
//! The driver tells it what happened (the socket opened, a text frame arrived, the socket
//! closed) and does what it answers ([`Output`]): send a frame, hand an event to the
//! application, drop the connection, wait and reconnect, or finish. The machine remembers the
//! last change-log position (`commit_seq`) the application has seen; every (re)subscribe after
//! the first resumes from it with `from_seq`, and a change at or before it is never handed out
//! again. So across disconnects and server restarts the application sees each change once.

use std::time::Duration;

use serde_json::Value as Json;

use crate::protocol::{ChangeKind, Row, ServerMessage, subscribe_entry, subscribe_message_for, unsubscribe_message};
use crate::wire::SubscriptionOptions;

/// Error codes that refuse a subscribe only for a moment (the server is restarting a part):
/// the machine reconnects with back-off instead of giving up. (A subscribe dropped by the
/// connection's message rate limit is answered for `*`, not for the subscription; the
/// driver's ack deadline covers it.)
const TRANSIENT_CODES: &[&str] = &["SERVICE_UNAVAILABLE", "SHUTTING_DOWN", "INTERNAL_ERROR"];

/// One event of a subscription, as the application sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum ChangeEvent {
    /// The server accepted the subscription (first subscribe, or a fresh one after
    /// [`ChangeEvent::ResumeExpired`]).
    Ack {
        subscription_id: String,
        live_id: String,
    },
    /// The snapshot the options asked for; every change after it follows.
    InitialData {
        subscription_id: String,
        rows: Vec<Row>,
        has_more: bool,
        commit_seq: Option<u64>,
    },
    Insert {
        subscription_id: String,
        rows: Vec<Row>,
        commit_seq: u64,
        timestamp: Option<String>,
    },
    Update {
        subscription_id: String,
        rows: Vec<Row>,
        old_rows: Vec<Row>,
        commit_seq: u64,
        timestamp: Option<String>,
    },
    Delete {
        subscription_id: String,
        old_rows: Vec<Row>,
        commit_seq: u64,
        timestamp: Option<String>,
    },
    /// An error the server reported for this subscription (`subscription_id` is `*` for one
    /// about the connection).
    Error {
        subscription_id: String,
        code: String,
        message: String,
    },
    /// The connection was lost; the library reconnects after `retry_in` and resumes.
    Reconnecting {
        subscription_id: String,
        attempt: u32,
        retry_in: Duration,
        reason: String,
    },
    /// The subscription is live again on a new connection, continuing after `from_seq`:
    /// nothing was missed.
    Resumed {
        subscription_id: String,
        from_seq: u64,
    },
    /// The server no longer holds the changes since the last one seen: some were missed, and
    /// the application must take a new snapshot. The library subscribes again with the
    /// original options, so an [`ChangeEvent::InitialData`] follows when they ask for one.
    ResumeExpired {
        subscription_id: String,
        message: String,
    },
    /// The subscription ended (`client_request`, `killed`, `user_deleted`, …).
    Unsubscribed {
        subscription_id: String,
        reason: String,
    },
    /// A message this library does not know (newer server).
    Unknown {
        raw: Json,
    },
}

/// How a lost connection is retried (api.md §4.8: 1 s, 2 s, 4 s … at most 30 s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconnectPolicy {
    pub initial_delay: Duration,
    pub max_delay: Duration,
    /// Consecutive failed attempts after which the subscription ends with an error.
    pub max_attempts: u32,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        Self { initial_delay: Duration::from_secs(1), max_delay: Duration::from_secs(30), max_attempts: 10 }
    }
}

impl ReconnectPolicy {
    /// The wait before attempt `n` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.saturating_sub(1)).unwrap_or(u32::MAX);
        self.initial_delay.saturating_mul(factor).min(self.max_delay)
    }
}

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send this text frame on the current connection.
    Send(String),
    /// Hand this event to the application.
    Event(ChangeEvent),
    /// Close the current connection (then report it with [`Resumer::on_closed`]).
    Disconnect(String),
    /// Open a new connection after this wait (then report [`Resumer::on_open`] or
    /// [`Resumer::on_closed`]).
    ReconnectAfter(Duration),
    /// The subscription cannot go on: report this to the application, then finish.
    Fail(String),
    /// The subscription is over: close the connection and stop.
    Finish,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting,
    Subscribing,
    Live,
    Finished,
}

/// The state of one subscription across connections.
#[derive(Debug, Clone)]
pub struct Resumer {
    id: String,
    sql: String,
    options: Option<SubscriptionOptions>,
    policy: ReconnectPolicy,
    /// The last change-log position the application has been given (or that the server said
    /// the subscription starts after).
    position: Option<u64>,
    phase: Phase,
    /// The subscribe in flight asked to resume from `position`.
    resuming: bool,
    /// Consecutive failed connection attempts.
    failures: u32,
}

impl Resumer {
    pub fn new(id: String, sql: String, options: Option<SubscriptionOptions>, policy: ReconnectPolicy) -> Self {
        Self { id, sql, options, policy, position: None, phase: Phase::Connecting, resuming: false, failures: 0 }
    }

    pub fn subscription_id(&self) -> &str {
        &self.id
    }

    /// The last change-log position handed to the application.
    pub fn position(&self) -> Option<u64> {
        self.position
    }

    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Finished
    }

    /// True between sending a subscribe and its ack: the driver gives up on the connection
    /// (and reconnects) when no ack comes in time.
    pub fn awaiting_ack(&self) -> bool {
        self.phase == Phase::Subscribing
    }

    fn subscribe_entry(&mut self) -> Json {
        self.resuming = self.position.is_some();
        let from_seq = if self.resuming { self.position } else { None };
        subscribe_entry(&self.id, &self.sql, self.options.as_ref(), from_seq)
    }

    fn subscribe_frame(&mut self) -> String {
        subscribe_message_for(vec![self.subscribe_entry()])
    }

    /// A connection is open: the frame to send first.
    pub fn on_open(&mut self) -> Vec<Output> {
        match self.open_entry() {
            Some(entry) => vec![Output::Send(subscribe_message_for(vec![entry]))],
            None => vec![Output::Finish],
        }
    }

    /// Like [`Resumer::on_open`] for a driver that subscribes several machines in one message:
    /// this machine's entry of `subscriptions` (`None` once it is finished).
    pub fn open_entry(&mut self) -> Option<Json> {
        if self.phase == Phase::Finished {
            return None;
        }
        self.phase = Phase::Subscribing;
        Some(self.subscribe_entry())
    }

    /// The connection closed (or could not be opened) for `reason`.
    pub fn on_closed(&mut self, reason: &str) -> Vec<Output> {
        if self.phase == Phase::Finished {
            return vec![Output::Finish];
        }
        self.phase = Phase::Connecting;
        self.failures += 1;
        if self.failures > self.policy.max_attempts {
            self.phase = Phase::Finished;
            let attempts = self.policy.max_attempts;
            return vec![
                Output::Fail(format!("gave up after {attempts} reconnect attempts: {reason}")),
                Output::Finish,
            ];
        }
        let retry_in = self.policy.delay(self.failures);
        let event = ChangeEvent::Reconnecting {
            subscription_id: self.id.clone(),
            attempt: self.failures,
            retry_in,
            reason: reason.to_owned(),
        };
        vec![Output::Event(event), Output::ReconnectAfter(retry_in)]
    }

    /// The application asks to end the subscription: the frames to send before closing.
    pub fn close(&mut self) -> Vec<Output> {
        let live = matches!(self.phase, Phase::Subscribing | Phase::Live);
        self.phase = Phase::Finished;
        let mut out = Vec::new();
        if live {
            out.push(Output::Send(unsubscribe_message(&self.id)));
        }
        out.push(Output::Finish);
        out
    }

    /// One text frame from the server.
    pub fn on_text(&mut self, frame: &str) -> Vec<Output> {
        match ServerMessage::parse(frame) {
            Ok(m) => self.on_message(m),
            Err(e) => vec![Output::Event(ChangeEvent::Unknown { raw: Json::String(format!("{e}: {frame}")) })],
        }
    }

    pub fn on_message(&mut self, message: ServerMessage) -> Vec<Output> {
        if self.phase == Phase::Finished {
            return Vec::new();
        }
        let id = self.id.clone();
        match message {
            ServerMessage::Ack { subscription_id, live_id, commit_seq } if subscription_id == id => {
                self.phase = Phase::Live;
                self.failures = 0;
                if self.resuming {
                    let from_seq = self.position.unwrap_or_default();
                    return vec![Output::Event(ChangeEvent::Resumed { subscription_id, from_seq })];
                }
                // Without a snapshot the server says where the subscription starts, so even a
                // drop before the first change resumes without a gap. (With a snapshot the
                // position comes from `initial_data`.)
                if commit_seq.is_some() {
                    self.position = commit_seq;
                }
                vec![Output::Event(ChangeEvent::Ack { subscription_id, live_id })]
            }
            ServerMessage::InitialData { subscription_id, rows, has_more, commit_seq } if subscription_id == id => {
                if commit_seq.is_some() {
                    self.position = commit_seq;
                }
                vec![Output::Event(ChangeEvent::InitialData { subscription_id, rows, has_more, commit_seq })]
            }
            ServerMessage::Change { subscription_id, change } if subscription_id == id => {
                if self.position.is_some_and(|p| change.commit_seq <= p) {
                    return Vec::new();
                }
                self.position = Some(change.commit_seq);
                let (commit_seq, timestamp) = (change.commit_seq, change.timestamp);
                let event = match change.kind {
                    ChangeKind::Insert => {
                        ChangeEvent::Insert { subscription_id, rows: change.rows, commit_seq, timestamp }
                    }
                    ChangeKind::Update => ChangeEvent::Update {
                        subscription_id,
                        rows: change.rows,
                        old_rows: change.old_rows,
                        commit_seq,
                        timestamp,
                    },
                    ChangeKind::Delete => {
                        ChangeEvent::Delete { subscription_id, old_rows: change.old_rows, commit_seq, timestamp }
                    }
                };
                vec![Output::Event(event)]
            }
            ServerMessage::Error { subscription_id, code, message } if subscription_id == id => {
                self.on_error(subscription_id, code, message)
            }
            ServerMessage::Error { subscription_id, code, message } if subscription_id == "*" => {
                vec![Output::Event(ChangeEvent::Error { subscription_id, code, message })]
            }
            ServerMessage::Unsubscribed { subscription_id, reason } if subscription_id == id => {
                self.phase = Phase::Finished;
                vec![Output::Event(ChangeEvent::Unsubscribed { subscription_id, reason }), Output::Finish]
            }
            ServerMessage::Unknown(raw) => vec![Output::Event(ChangeEvent::Unknown { raw })],
            // Pongs and messages about other subscriptions.
            _ => Vec::new(),
        }
    }

    fn on_error(&mut self, subscription_id: String, code: String, message: String) -> Vec<Output> {
        if self.phase != Phase::Subscribing {
            // About a live subscription (e.g. SLOW_CONSUMER before the server closes).
            return vec![Output::Event(ChangeEvent::Error { subscription_id, code, message })];
        }
        if code == "RESUME_EXPIRED" && self.resuming {
            self.position = None;
            let event = ChangeEvent::ResumeExpired { subscription_id, message };
            return vec![Output::Event(event), Output::Send(self.subscribe_frame())];
        }
        if TRANSIENT_CODES.contains(&code.as_str()) {
            return vec![Output::Disconnect(format!("{code}: {message}"))];
        }
        // Refused for good (bad SQL, permissions, limits): there is no subscription.
        self.phase = Phase::Finished;
        vec![Output::Event(ChangeEvent::Error { subscription_id, code, message }), Output::Finish]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn machine(options: Option<SubscriptionOptions>) -> Resumer {
        Resumer::new("s".into(), "SELECT * FROM app.t".into(), options, ReconnectPolicy::default())
    }

    fn change(commit_seq: u64) -> String {
        json!({"type":"change","subscription_id":"s","change_type":"insert","seq":1,"commit_seq":commit_seq,
               "rows":[{"id":commit_seq}]})
        .to_string()
    }

    fn sent(out: &[Output]) -> Vec<Json> {
        out.iter()
            .filter_map(|o| match o {
                Output::Send(f) => Some(serde_json::from_str(f).unwrap()),
                _ => None,
            })
            .collect()
    }

    fn commit_seqs(out: &[Output]) -> Vec<u64> {
        out.iter()
            .filter_map(|o| match o {
                Output::Event(ChangeEvent::Insert { commit_seq, .. }) => Some(*commit_seq),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_reconnect_resumes_after_the_last_change_and_drops_replays() {
        let mut m = machine(Some(SubscriptionOptions { last_rows: Some(10), ..Default::default() }));
        assert_eq!(sent(&m.on_open())[0]["subscriptions"][0]["options"], json!({"last_rows": 10}));
        m.on_text(r#"{"type":"subscription_ack","subscription_id":"s","live_id":"c/s"}"#);
        m.on_text(r#"{"type":"initial_data","subscription_id":"s","rows":[],"has_more":false,"commit_seq":7}"#);
        assert_eq!(commit_seqs(&m.on_text(&change(8))), vec![8]);
        let out = m.on_closed("reset");
        assert!(matches!(out[0], Output::Event(ChangeEvent::Reconnecting { attempt: 1, .. })));
        assert_eq!(out[1], Output::ReconnectAfter(Duration::from_secs(1)));
        assert_eq!(sent(&m.on_open())[0]["subscriptions"][0]["options"], json!({"from_seq": 8}));
        let out = m.on_text(r#"{"type":"subscription_ack","subscription_id":"s","live_id":"d/s"}"#);
        assert_eq!(out, vec![Output::Event(ChangeEvent::Resumed { subscription_id: "s".into(), from_seq: 8 })]);
        // A change the application already has is never handed out twice.
        assert!(commit_seqs(&m.on_text(&change(8))).is_empty());
        assert_eq!(commit_seqs(&m.on_text(&change(9))), vec![9]);
        assert_eq!(m.position(), Some(9));
    }

    #[test]
    fn without_a_snapshot_the_ack_gives_the_starting_point() {
        let mut m = machine(None);
        m.on_open();
        m.on_text(r#"{"type":"subscription_ack","subscription_id":"s","live_id":"c/s","commit_seq":41}"#);
        m.on_closed("gone");
        assert_eq!(sent(&m.on_open())[0]["subscriptions"][0]["options"], json!({"from_seq": 41}));
    }

    #[test]
    fn last_rows_zero_is_no_snapshot_and_resumes_from_the_ack() {
        let mut m = machine(Some(SubscriptionOptions { last_rows: Some(0), ..Default::default() }));
        m.on_open();
        m.on_text(r#"{"type":"subscription_ack","subscription_id":"s","live_id":"c/s","commit_seq":12}"#);
        m.on_closed("gone");
        assert_eq!(sent(&m.on_open())[0]["subscriptions"][0]["options"], json!({"from_seq": 12}));
    }

    #[test]
    fn a_drop_before_the_snapshot_subscribes_afresh() {
        let mut m = machine(Some(SubscriptionOptions { last_rows: Some(1), ..Default::default() }));
        m.on_open();
        m.on_text(r#"{"type":"subscription_ack","subscription_id":"s","live_id":"c/s"}"#);
        m.on_closed("gone");
        assert_eq!(sent(&m.on_open())[0]["subscriptions"][0]["options"], json!({"last_rows": 1}));
    }

    #[test]
    fn an_expired_resume_is_reported_and_resubscribes_with_the_original_options() {
        let mut m = machine(Some(SubscriptionOptions { last_rows: Some(5), ..Default::default() }));
        m.on_open();
        m.on_text(r#"{"type":"subscription_ack","subscription_id":"s","live_id":"c/s"}"#);
        m.on_text(&change(4));
        m.on_closed("gone");
        m.on_open();
        let out = m.on_text(r#"{"type":"error","subscription_id":"s","code":"RESUME_EXPIRED","message":"too old"}"#);
        assert!(matches!(&out[0], Output::Event(ChangeEvent::ResumeExpired { message, .. }) if message == "too old"));
        assert_eq!(sent(&out)[0]["subscriptions"][0]["options"], json!({"last_rows": 5}));
        assert_eq!(m.position(), None);
        let out = m.on_text(r#"{"type":"subscription_ack","subscription_id":"s","live_id":"c/s"}"#);
        assert!(matches!(out[0], Output::Event(ChangeEvent::Ack { .. })));
    }

    #[test]
    fn refusals_end_the_subscription_unless_transient() {
        let mut m = machine(None);
        m.on_open();
        let out =
            m.on_text(r#"{"type":"error","subscription_id":"s","code":"SERVICE_UNAVAILABLE","message":"restarting"}"#);
        assert!(matches!(&out[0], Output::Disconnect(_)));
        m.on_closed("restarting");
        m.on_open();
        let out = m.on_text(r#"{"type":"error","subscription_id":"s","code":"INVALID_SQL","message":"bad"}"#);
        assert!(matches!(&out[0], Output::Event(ChangeEvent::Error { code, .. }) if code == "INVALID_SQL"));
        assert_eq!(out[1], Output::Finish);
        assert!(m.is_finished());
    }

    #[test]
    fn back_off_doubles_to_its_ceiling_then_gives_up() {
        let policy = ReconnectPolicy::default();
        let delays: Vec<u64> = (1..=7).map(|n| policy.delay(n).as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(policy.delay(200), Duration::from_secs(30));
        let mut m = Resumer::new("s".into(), "q".into(), None, ReconnectPolicy { max_attempts: 2, ..policy });
        m.on_closed("a");
        m.on_closed("b");
        let out = m.on_closed("c");
        assert!(matches!(&out[0], Output::Fail(reason) if reason.contains("2 reconnect attempts: c")));
        assert!(m.is_finished());
    }

    #[test]
    fn close_unsubscribes_a_live_subscription_and_unsubscribed_finishes() {
        let mut m = machine(None);
        m.on_open();
        let out = m.close();
        assert_eq!(sent(&out)[0]["subscription_ids"], json!(["s"]));
        let mut m = machine(None);
        m.on_open();
        let out = m.on_text(r#"{"type":"unsubscribed","subscription_id":"s","reason":"killed"}"#);
        assert_eq!(out.last(), Some(&Output::Finish));
        // Messages for other subscriptions are not ours.
        let mut m = machine(None);
        m.on_open();
        assert!(m.on_text(&change(3).replace("\"s\"", "\"other\"")).is_empty());
    }
}
