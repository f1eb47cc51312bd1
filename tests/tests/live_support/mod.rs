//! Helpers shared by the live-query end-to-end tests: clusters, WebSocket messages and the
//! checks every test makes on them. Each test file uses a subset.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use kalam_e2e::{Cluster, rows};
use kalam_link::live::LiveConnection;
use kalam_link::{ErrorInfo, KalamLinkClient, QueryResponse};
use serde_json::{Value as Json, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub const SETUP: &str = "CREATE NAMESPACE app; CREATE USER TABLE app.m (id BIGINT PRIMARY KEY, body TEXT, n INT)";
/// Longest wait for any single expected message.
pub const MSG_TIMEOUT: Duration = Duration::from_secs(20);
/// How long "nothing else arrives" is observed.
pub const QUIET: Duration = Duration::from_millis(500);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

pub async fn start(setup: &str) -> Cluster {
    start_cfg("", setup).await
}

pub async fn start_cfg(config: &str, setup: &str) -> Cluster {
    let cluster = Cluster::start_with_config(config).await;
    exec(&cluster.client("system"), setup).await;
    cluster
}

pub async fn exec(client: &KalamLinkClient, sql: &str) -> QueryResponse {
    client.query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Runs `sql`, which must fail; returns the error object.
pub async fn sql_error(client: &KalamLinkClient, sql: &str) -> ErrorInfo {
    let (status, resp) = client.query_raw(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    resp.error.unwrap_or_else(|| panic!("{sql} succeeded (HTTP {status}) but must fail"))
}

pub async fn insert(client: &KalamLinkClient, id: i64, body: &str, n: i64) {
    exec(client, &format!("INSERT INTO app.m (id, body, n) VALUES ({id}, '{body}', {n})")).await;
}

/// Rows of `system.live_queries` matching `filter`, read as the system user.
pub async fn live_rows(cluster: &Cluster, filter: &str) -> Vec<Json> {
    rows_sql(&cluster.client("system"), &format!("SELECT * FROM system.live_queries WHERE {filter}")).await
}

/// The rows of the last statement's result, as JSON objects (missing keys index as null).
pub async fn rows_sql(client: &KalamLinkClient, sql: &str) -> Vec<Json> {
    rows(client, sql).await.into_iter().map(Json::Object).collect()
}

pub async fn connect(cluster: &Cluster, user: &str) -> LiveConnection {
    match tokio::time::timeout(MSG_TIMEOUT, cluster.client(user).connect_live()).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => panic!("WebSocket connect as {user}: {e}"),
        Err(_) => panic!("WebSocket connect as {user} took more than {MSG_TIMEOUT:?}"),
    }
}

pub async fn send(ws: &mut LiveConnection, msg: Json) {
    ws.send_json(&msg).await.unwrap_or_else(|e| panic!("send {msg}: {e}"));
}

/// The next server message; panics (naming `what`) on timeout, read error or close.
pub async fn recv(ws: &mut LiveConnection, what: &str) -> Json {
    match tokio::time::timeout(MSG_TIMEOUT, ws.next_message()).await {
        Err(_) => panic!("no message within {MSG_TIMEOUT:?} while waiting for {what}"),
        Ok(Err(e)) => panic!("WebSocket read failed while waiting for {what}: {e}"),
        Ok(Ok(None)) => panic!("connection closed while waiting for {what}"),
        Ok(Ok(Some(m))) => m,
    }
}

/// The next server message if one arrives within `wait`.
pub async fn recv_within(ws: &mut LiveConnection, wait: Duration) -> Option<Json> {
    match tokio::time::timeout(wait, ws.next_message()).await {
        Err(_) => None,
        Ok(Ok(Some(m))) => Some(m),
        Ok(Ok(None)) => panic!("connection closed unexpectedly"),
        Ok(Err(e)) => panic!("WebSocket read failed: {e}"),
    }
}

pub async fn assert_quiet(ws: &mut LiveConnection, what: &str) {
    if let Some(m) = recv_within(ws, QUIET).await {
        panic!("{what}: unexpected message {m}");
    }
}

/// A subscribe message with one subscription (`options` omitted when null).
pub fn sub(id: &str, sql: &str, options: Json) -> Json {
    let mut s = json!({"id": id, "sql": sql});
    if !options.is_null() {
        s["options"] = options;
    }
    json!({"type": "subscribe", "subscriptions": [s]})
}

pub fn assert_ack(ack: &Json, id: &str) {
    assert_eq!(ack["type"], "subscription_ack", "expected the ack of {id}: {ack}");
    assert_eq!(ack["subscription_id"], id, "{ack}");
    let live_id = ack["live_id"].as_str().unwrap_or_else(|| panic!("ack without live_id: {ack}"));
    assert!(live_id.ends_with(&format!("/{id}")), "live_id is <connection_id>/<subscription_id>: {ack}");
}

/// Subscribes and waits for the ack, which is returned.
pub async fn subscribe(ws: &mut LiveConnection, id: &str, sql: &str, options: Json) -> Json {
    send(ws, sub(id, sql, options)).await;
    let ack = recv(ws, &format!("subscription_ack of {id} ({sql})")).await;
    assert_ack(&ack, id);
    ack
}

/// Reads one message that must be an `error` with `code` for `id`.
pub async fn expect_error(ws: &mut LiveConnection, id: &str, code: &str) -> Json {
    let msg = recv(ws, &format!("error {code} for {id}")).await;
    assert_eq!(msg["type"], "error", "expected error {code} for {id}, got {msg}");
    assert_eq!(msg["subscription_id"], id, "{msg}");
    assert_eq!(msg["code"], code, "{msg}");
    assert!(msg["message"].as_str().is_some_and(|m| !m.is_empty()), "error without message: {msg}");
    msg
}

pub async fn expect_pong(ws: &mut LiveConnection) {
    send(ws, json!({"type": "ping"})).await;
    let pong = recv(ws, "pong").await;
    assert_eq!(pong["type"], "pong", "{pong}");
    assert!(pong["timestamp"].is_string(), "pong carries a timestamp: {pong}");
}

/// Reads `n` messages that must all be `change`s of subscription `id`.
pub async fn changes(ws: &mut LiveConnection, id: &str, n: usize, what: &str) -> Vec<Json> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let msg = recv(ws, &format!("{what}: change {} of {n}", out.len() + 1)).await;
        assert_eq!(msg["type"], "change", "{what}: {msg}");
        assert_eq!(msg["subscription_id"], id, "{what}: {msg}");
        out.push(msg);
    }
    out
}

/// [`changes`] on a separate task (the subscriber runs while the test writes).
pub fn spawn_changes(
    mut ws: LiveConnection,
    id: &str,
    n: usize,
    what: &str,
) -> JoinHandle<(LiveConnection, Vec<Json>)> {
    let (id, what) = (id.to_owned(), what.to_owned());
    tokio::spawn(async move {
        let msgs = changes(&mut ws, &id, n, &what).await;
        (ws, msgs)
    })
}

/// Awaits a task, re-raising its panic with the original message.
pub async fn join<T>(task: JoinHandle<T>) -> T {
    match task.await {
        Ok(v) => v,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("task failed: {e}"),
    }
}

/// Reads messages until `expected` says how many are due, that many arrived, and nothing more
/// came for a second (at most `limit` in all). Keeps the socket read (heartbeats answered).
pub async fn collect_until(
    mut ws: LiveConnection,
    mut expected: watch::Receiver<Option<usize>>,
    limit: Duration,
    what: String,
) -> Vec<Json> {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    loop {
        let target = *expected.borrow_and_update();
        if let Some(t) = target
            && got.len() >= t
        {
            while let Some(m) = recv_within(&mut ws, Duration::from_secs(1)).await {
                got.push(m);
            }
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: only {} messages after {limit:?}, expected {target:?}: last {:?}",
            got.len(),
            got.last()
        );
        if let Some(m) = recv_within(&mut ws, Duration::from_millis(200)).await {
            got.push(m);
        }
    }
}

pub fn kind(msg: &Json) -> &str {
    msg["change_type"].as_str().unwrap_or_else(|| panic!("change without change_type: {msg}"))
}

pub fn rows_of<'a>(msg: &'a Json, field: &str) -> &'a [Json] {
    match &msg[field] {
        Json::Array(a) => a,
        _ => &[],
    }
}

/// The row a change is about: the new row (insert, update) or the removed one (delete).
pub fn row(msg: &Json) -> &Json {
    let field = if kind(msg) == "delete" { "old_values" } else { "rows" };
    rows_of(msg, field).first().unwrap_or_else(|| panic!("{field} missing: {msg}"))
}

pub fn id_of(msg: &Json) -> i64 {
    row(msg)["id"].as_i64().unwrap_or_else(|| panic!("row without integer id: {msg}"))
}

/// `rows` / `old_values` hold exactly one row where the change type has them (api.md §4.3).
pub fn assert_shape(msg: &Json) {
    let (rows, old) = (rows_of(msg, "rows").len(), rows_of(msg, "old_values").len());
    let expected = match kind(msg) {
        "insert" => (1, 0),
        "update" => (1, 1),
        "delete" => (0, 1),
        other => panic!("unknown change_type {other}: {msg}"),
    };
    assert_eq!((rows, old), expected, "(rows, old_values) of a {} change: {msg}", kind(msg));
    assert!(msg["timestamp"].is_string(), "change without timestamp: {msg}");
}

/// `seq` runs 1..=n without gaps and `commit_seq` strictly increases.
pub fn assert_sequenced(msgs: &[Json], what: &str) {
    let mut last = 0u64;
    for (i, m) in msgs.iter().enumerate() {
        assert_eq!(m["seq"], i as u64 + 1, "{what}: seq of message {}: {m}", i + 1);
        let c = m["commit_seq"].as_u64().unwrap_or_else(|| panic!("{what}: commit_seq missing: {m}"));
        assert!(c > last, "{what}: commit_seq {c} follows {last} (message {}): not strictly increasing", i + 1);
        last = c;
        assert_shape(m);
    }
}

pub fn ts(row: &Json) -> &str {
    row["_updated"].as_str().unwrap_or_else(|| panic!("row without _updated: {row}"))
}

/// A WebSocket client written directly on a TCP socket: a test can stop reading it (a slow
/// consumer), send arbitrary text and see close codes.
pub struct RawWs {
    tcp: tokio::net::TcpStream,
    buf: Vec<u8>,
}

/// What a raw read produced.
pub enum Frame {
    Text(String),
    Close(Option<u16>),
    Other,
}

impl RawWs {
    pub async fn connect(port: u16, user: &str, recv_buffer: Option<u32>) -> RawWs {
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        if let Some(size) = recv_buffer {
            sock.set_recv_buffer_size(size).expect("SO_RCVBUF");
        }
        let mut tcp = sock.connect(([127, 0, 0, 1], port).into()).await.expect("connect");
        let req = format!(
            "GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nX-USER-ID: {user}\r\n\r\n"
        );
        tcp.write_all(req.as_bytes()).await.expect("send upgrade");
        let mut ws = RawWs { tcp, buf: Vec::new() };
        let end = loop {
            if let Some(p) = ws.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            let read = tokio::time::timeout(MSG_TIMEOUT, ws.more()).await.expect("upgrade answer in time");
            assert!(read.expect("read upgrade answer"), "closed during the upgrade");
        };
        let head = String::from_utf8_lossy(&ws.buf[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
        ws.buf.drain(..end);
        ws
    }

    pub async fn send_text(&mut self, text: &str) -> std::io::Result<()> {
        let payload = text.as_bytes();
        let mask = [0x37u8, 0xfa, 0x21, 0x3d];
        let mut frame = vec![0x81u8];
        match payload.len() {
            len @ 0..=125 => frame.push(0x80 | len as u8),
            len @ 126..=0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.tcp.write_all(&frame).await
    }

    /// Reads more bytes; `false` at end of stream.
    pub async fn more(&mut self) -> std::io::Result<bool> {
        let mut chunk = [0u8; 64 * 1024];
        let n = self.tcp.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    pub async fn fill(&mut self, n: usize) -> std::io::Result<bool> {
        while self.buf.len() < n {
            if !self.more().await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// One frame: FIN bit, opcode, payload; `None` at end of stream.
    pub async fn frame(&mut self) -> std::io::Result<Option<(bool, u8, Vec<u8>)>> {
        if !self.fill(2).await? {
            return Ok(None);
        }
        let (b0, b1) = (self.buf[0], self.buf[1]);
        let (mut len, mut off) = ((b1 & 0x7f) as usize, 2);
        if len == 126 {
            if !self.fill(4).await? {
                return Ok(None);
            }
            len = u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize;
            off = 4;
        } else if len == 127 {
            if !self.fill(10).await? {
                return Ok(None);
            }
            len = u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize;
            off = 10;
        }
        let mask_len = if b1 & 0x80 != 0 { 4 } else { 0 };
        if !self.fill(off + mask_len + len).await? {
            return Ok(None);
        }
        let mask: Vec<u8> = self.buf[off..off + mask_len].to_vec();
        let mut payload = self.buf[off + mask_len..off + mask_len + len].to_vec();
        if mask_len == 4 {
            payload.iter_mut().enumerate().for_each(|(i, b)| *b ^= mask[i % 4]);
        }
        self.buf.drain(..off + mask_len + len);
        Ok(Some((b0 & 0x80 != 0, b0 & 0x0f, payload)))
    }

    /// One message (fragments joined); `None` at end of stream.
    pub async fn read(&mut self) -> std::io::Result<Option<Frame>> {
        let Some((mut fin, op, mut payload)) = self.frame().await? else { return Ok(None) };
        while !fin {
            let Some((f, _, more)) = self.frame().await? else { return Ok(None) };
            fin = f;
            payload.extend(more);
        }
        Ok(Some(match op {
            1 => Frame::Text(String::from_utf8(payload).expect("UTF-8 text frame")),
            8 => Frame::Close((payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]))),
            _ => Frame::Other,
        }))
    }

    /// The next JSON text message within `wait` (pings and other frames skipped).
    pub async fn next_json(&mut self, wait: Duration) -> Option<Json> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.read()).await.ok()?.ok()?? {
                Frame::Text(t) => return Some(serde_json::from_str(&t).expect("JSON message")),
                Frame::Close(code) => panic!("closed ({code:?}) while waiting for a message"),
                Frame::Other => {}
            }
        }
    }
}
