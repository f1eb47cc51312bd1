//! What crosses into JavaScript (the `wasm` exports), as JSON text the SDK parses with `JSON.parse`.
//!
//! Rows keep the server's column order, and an integer JavaScript cannot hold exactly (beyond
//! ±(2^53 − 1), e.g. a SNOWFLAKE_ID) becomes a decimal string, so no precision is lost.

use serde::{Serialize, Serializer};
use serde_json::{Map, Value as Json, json};

use crate::resume::ChangeEvent;
use crate::row::Row;
use crate::wire::{HealthCheckResponse, QueryResponse};

/// Largest integer a JavaScript number holds exactly.
const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// A JSON value with unsafe integers as strings.
struct Safe<'a>(&'a Json);

impl Serialize for Safe<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Json::Number(n) => {
                let unsafe_int = n
                    .as_u64()
                    .map(|u| u > MAX_SAFE_INTEGER)
                    .or_else(|| n.as_i64().map(|i| i.unsigned_abs() > MAX_SAFE_INTEGER));
                if unsafe_int == Some(true) { s.serialize_str(&n.to_string()) } else { n.serialize(s) }
            }
            Json::Array(items) => s.collect_seq(items.iter().map(Safe)),
            Json::Object(map) => s.collect_map(map.iter().map(|(k, v)| (k, Safe(v)))),
            other => other.serialize(s),
        }
    }
}

/// A live row, in column order.
struct SafeRow<'a>(&'a Row);

impl Serialize for SafeRow<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, Safe(v))))
    }
}

struct SafeRows<'a>(&'a [Row]);

impl Serialize for SafeRows<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(SafeRow))
    }
}

/// A result row in the order of `columns` (the HTTP envelope's maps are unordered here).
struct ResultRow<'a> {
    columns: &'a [String],
    row: &'a Map<String, Json>,
}

impl Serialize for ResultRow<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let in_order = self.columns.iter().filter_map(|c| Some((c, self.row.get(c)?)));
        let others = self.row.iter().filter(|(k, _)| !self.columns.contains(k));
        s.collect_map(in_order.chain(others).map(|(k, v)| (k, Safe(v))))
    }
}

/// The server's envelope as it sent it (snake_case), rows in column order: what `query`,
/// `batch` and `queryRaw` resolve to (the SDK shapes its `QueryResult`s from it).
pub(crate) fn envelope(resp: &QueryResponse) -> String {
    #[derive(Serialize)]
    struct Result<'a> {
        columns: &'a [String],
        #[serde(skip_serializing_if = "Option::is_none")]
        rows: Option<Vec<ResultRow<'a>>>,
        row_count: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        message: Option<&'a str>,
    }
    #[derive(Serialize)]
    struct Envelope<'a> {
        status: &'a str,
        results: Vec<Result<'a>>,
        took_ms: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<Json>,
    }
    let results = resp
        .results
        .iter()
        .map(|r| Result {
            columns: &r.columns,
            rows: r.rows.as_ref().map(|rows| rows.iter().map(|row| ResultRow { columns: &r.columns, row }).collect()),
            row_count: r.row_count,
            message: r.message.as_deref(),
        })
        .collect();
    let error = resp.error.as_ref().map(
        |e| json!({"code": e.code, "message": e.message, "details": e.details, "statement_index": e.statement_index}),
    );
    serde_json::to_string(&Envelope { status: &resp.status, results, took_ms: resp.took_ms, error }).unwrap_or_default()
}

/// The health check as the server sent it.
pub(crate) fn health(h: &HealthCheckResponse) -> String {
    json!({"status": h.status, "version": h.version, "api_version": h.api_version,
           "uptime_seconds": h.uptime_seconds, "timestamp": h.timestamp, "error": h.error})
    .to_string()
}

/// A subscription event as the SDK's `SubscriptionEvent` (camelCase; `seq` is the change-log
/// position).
pub(crate) fn event(e: &ChangeEvent) -> String {
    #[derive(Serialize, Default)]
    #[serde(rename_all = "camelCase")]
    struct Event<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        subscription_id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        live_id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        rows: Option<SafeRows<'a>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        old_rows: Option<SafeRows<'a>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        has_more: Option<bool>,
        #[serde(skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        timestamp: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        code: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        message: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        attempt: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_in_ms: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        from_seq: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        raw: Option<Safe<'a>>,
    }
    let out = match e {
        ChangeEvent::Ack { subscription_id, live_id } => {
            Event { kind: "ack", subscription_id: Some(subscription_id), live_id: Some(live_id), ..Default::default() }
        }
        ChangeEvent::InitialData { subscription_id, rows, has_more, commit_seq } => Event {
            kind: "initial_data",
            subscription_id: Some(subscription_id),
            rows: Some(SafeRows(rows)),
            has_more: Some(*has_more),
            seq: *commit_seq,
            ..Default::default()
        },
        ChangeEvent::Insert { subscription_id, rows, commit_seq, timestamp } => Event {
            kind: "insert",
            subscription_id: Some(subscription_id),
            rows: Some(SafeRows(rows)),
            seq: Some(*commit_seq),
            timestamp: timestamp.as_deref(),
            ..Default::default()
        },
        ChangeEvent::Update { subscription_id, rows, old_rows, commit_seq, timestamp } => Event {
            kind: "update",
            subscription_id: Some(subscription_id),
            rows: Some(SafeRows(rows)),
            old_rows: Some(SafeRows(old_rows)),
            seq: Some(*commit_seq),
            timestamp: timestamp.as_deref(),
            ..Default::default()
        },
        ChangeEvent::Delete { subscription_id, old_rows, commit_seq, timestamp } => Event {
            kind: "delete",
            subscription_id: Some(subscription_id),
            old_rows: Some(SafeRows(old_rows)),
            seq: Some(*commit_seq),
            timestamp: timestamp.as_deref(),
            ..Default::default()
        },
        ChangeEvent::Error { subscription_id, code, message } => Event {
            kind: "error",
            subscription_id: Some(subscription_id),
            code: Some(code),
            message: Some(message),
            ..Default::default()
        },
        ChangeEvent::Reconnecting { subscription_id, attempt, retry_in, reason } => Event {
            kind: "reconnecting",
            subscription_id: Some(subscription_id),
            attempt: Some(*attempt),
            retry_in_ms: Some(u64::try_from(retry_in.as_millis()).unwrap_or(u64::MAX)),
            reason: Some(reason),
            ..Default::default()
        },
        ChangeEvent::Resumed { subscription_id, from_seq } => Event {
            kind: "resumed",
            subscription_id: Some(subscription_id),
            from_seq: Some(*from_seq),
            ..Default::default()
        },
        ChangeEvent::ResumeExpired { subscription_id, message } => Event {
            kind: "resume_expired",
            subscription_id: Some(subscription_id),
            message: Some(message),
            ..Default::default()
        },
        ChangeEvent::Unsubscribed { subscription_id, reason } => Event {
            kind: "unsubscribed",
            subscription_id: Some(subscription_id),
            reason: Some(reason),
            ..Default::default()
        },
        ChangeEvent::Unknown { raw } => Event { kind: "unknown", raw: Some(Safe(raw)), ..Default::default() },
    };
    serde_json::to_string(&out).unwrap_or_default()
}

/// An `error` event that is not the server's (the subscription ended on the client's side).
pub(crate) fn client_error(subscription_id: &str, code: &str, message: &str) -> String {
    json!({"type": "error", "subscriptionId": subscription_id, "code": code, "message": message}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_integers_become_strings_and_rows_keep_their_order() {
        let rows: Vec<Row> =
            serde_json::from_str(r#"[{"z": 9007199254740993, "a": -9007199254740993, "m": 42}]"#).unwrap();
        let e = ChangeEvent::Insert { subscription_id: "s".into(), rows, commit_seq: 3, timestamp: None };
        assert_eq!(
            event(&e),
            r#"{"type":"insert","subscriptionId":"s","rows":[{"z":"9007199254740993","a":"-9007199254740993","m":42}],"seq":3}"#
        );
    }

    #[test]
    fn result_rows_follow_the_columns() {
        let resp: QueryResponse = serde_json::from_str(
            r#"{"status":"success","took_ms":1,"results":[{"columns":["b","a"],"rows":[{"a":1,"b":2}],"row_count":1}]}"#,
        )
        .unwrap();
        assert_eq!(
            envelope(&resp),
            r#"{"status":"success","results":[{"columns":["b","a"],"rows":[{"b":2,"a":1}],"row_count":1}],"took_ms":1}"#
        );
    }

    #[test]
    fn the_raw_envelope_keeps_the_error_and_the_server_names() {
        let resp: QueryResponse = serde_json::from_str(
            r#"{"status":"error","took_ms":2,"results":[{"columns":["n"],"rows":[{"n":12345678901234567}],"row_count":1}],
                "error":{"code":"TABLE_NOT_FOUND","message":"no t","statement_index":2}}"#,
        )
        .unwrap();
        let out: Json = serde_json::from_str(&envelope(&resp)).unwrap();
        assert_eq!(out["error"]["statement_index"], 2);
        assert_eq!(out["results"][0]["row_count"], 1);
        assert_eq!(out["results"][0]["rows"][0]["n"], "12345678901234567");
        let h: HealthCheckResponse = serde_json::from_str(r#"{"status":"healthy","version":"0.1.0"}"#).unwrap();
        assert_eq!(serde_json::from_str::<Json>(&health(&h)).unwrap()["status"], "healthy");
        let e: Json = serde_json::from_str(&client_error("s", "RECONNECT_FAILED", "gave up")).unwrap();
        assert_eq!(e, json!({"type":"error","subscriptionId":"s","code":"RECONNECT_FAILED","message":"gave up"}));
    }
}
