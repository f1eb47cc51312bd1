//! End-to-end: live queries over `GET /v1/ws` (api.md §4; acceptance.md E and the live items of
//! H). Every test starts its own cluster, subscribes through real WebSocket connections and
//! writes through `POST /v1/api/sql` as the acting users (loopback bypass + `X-USER-ID`). Every
//! wait has a deadline and a message saying what did not happen; measured figures are printed.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kalam_e2e::{Cluster, rows, wait_for};
use kalam_link::live::LiveConnection;
use kalam_link::{ErrorInfo, KalamLinkClient, QueryResponse};
use serde_json::{Value as Json, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const SETUP: &str = "CREATE NAMESPACE app; CREATE USER TABLE app.m (id BIGINT PRIMARY KEY, body TEXT, n INT)";
/// Longest wait for any single expected message.
const MSG_TIMEOUT: Duration = Duration::from_secs(20);
/// How long "nothing else arrives" is observed.
const QUIET: Duration = Duration::from_millis(500);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

async fn start(setup: &str) -> Cluster {
    start_cfg("", setup).await
}

async fn start_cfg(config: &str, setup: &str) -> Cluster {
    let cluster = Cluster::start_with_config(config).await;
    exec(&cluster.client("system"), setup).await;
    cluster
}

async fn exec(client: &KalamLinkClient, sql: &str) -> QueryResponse {
    client.query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Runs `sql`, which must fail; returns the error object.
async fn sql_error(client: &KalamLinkClient, sql: &str) -> ErrorInfo {
    let (status, resp) = client.query_raw(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    resp.error.unwrap_or_else(|| panic!("{sql} succeeded (HTTP {status}) but must fail"))
}

async fn insert(client: &KalamLinkClient, id: i64, body: &str, n: i64) {
    exec(client, &format!("INSERT INTO app.m (id, body, n) VALUES ({id}, '{body}', {n})")).await;
}

/// Rows of `system.live_queries` matching `filter`, read as the system user.
async fn live_rows(cluster: &Cluster, filter: &str) -> Vec<Json> {
    rows_sql(&cluster.client("system"), &format!("SELECT * FROM system.live_queries WHERE {filter}")).await
}

/// The rows of the last statement's result, as JSON objects (missing keys index as null).
async fn rows_sql(client: &KalamLinkClient, sql: &str) -> Vec<Json> {
    rows(client, sql).await.into_iter().map(Json::Object).collect()
}

async fn connect(cluster: &Cluster, user: &str) -> LiveConnection {
    match tokio::time::timeout(MSG_TIMEOUT, cluster.client(user).connect_live()).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => panic!("WebSocket connect as {user}: {e}"),
        Err(_) => panic!("WebSocket connect as {user} took more than {MSG_TIMEOUT:?}"),
    }
}

async fn send(ws: &mut LiveConnection, msg: Json) {
    ws.send_json(&msg).await.unwrap_or_else(|e| panic!("send {msg}: {e}"));
}

/// The next server message; panics (naming `what`) on timeout, read error or close.
async fn recv(ws: &mut LiveConnection, what: &str) -> Json {
    match tokio::time::timeout(MSG_TIMEOUT, ws.next_message()).await {
        Err(_) => panic!("no message within {MSG_TIMEOUT:?} while waiting for {what}"),
        Ok(Err(e)) => panic!("WebSocket read failed while waiting for {what}: {e}"),
        Ok(Ok(None)) => panic!("connection closed while waiting for {what}"),
        Ok(Ok(Some(m))) => m,
    }
}

/// The next server message if one arrives within `wait`.
async fn recv_within(ws: &mut LiveConnection, wait: Duration) -> Option<Json> {
    match tokio::time::timeout(wait, ws.next_message()).await {
        Err(_) => None,
        Ok(Ok(Some(m))) => Some(m),
        Ok(Ok(None)) => panic!("connection closed unexpectedly"),
        Ok(Err(e)) => panic!("WebSocket read failed: {e}"),
    }
}

async fn assert_quiet(ws: &mut LiveConnection, what: &str) {
    if let Some(m) = recv_within(ws, QUIET).await {
        panic!("{what}: unexpected message {m}");
    }
}

/// A subscribe message with one subscription (`options` omitted when null).
fn sub(id: &str, sql: &str, options: Json) -> Json {
    let mut s = json!({"id": id, "sql": sql});
    if !options.is_null() {
        s["options"] = options;
    }
    json!({"type": "subscribe", "subscriptions": [s]})
}

fn assert_ack(ack: &Json, id: &str) {
    assert_eq!(ack["type"], "subscription_ack", "expected the ack of {id}: {ack}");
    assert_eq!(ack["subscription_id"], id, "{ack}");
    let live_id = ack["live_id"].as_str().unwrap_or_else(|| panic!("ack without live_id: {ack}"));
    assert!(live_id.ends_with(&format!("/{id}")), "live_id is <connection_id>/<subscription_id>: {ack}");
}

/// Subscribes and waits for the ack, which is returned.
async fn subscribe(ws: &mut LiveConnection, id: &str, sql: &str, options: Json) -> Json {
    send(ws, sub(id, sql, options)).await;
    let ack = recv(ws, &format!("subscription_ack of {id} ({sql})")).await;
    assert_ack(&ack, id);
    ack
}

/// Reads one message that must be an `error` with `code` for `id`.
async fn expect_error(ws: &mut LiveConnection, id: &str, code: &str) -> Json {
    let msg = recv(ws, &format!("error {code} for {id}")).await;
    assert_eq!(msg["type"], "error", "expected error {code} for {id}, got {msg}");
    assert_eq!(msg["subscription_id"], id, "{msg}");
    assert_eq!(msg["code"], code, "{msg}");
    assert!(msg["message"].as_str().is_some_and(|m| !m.is_empty()), "error without message: {msg}");
    msg
}

async fn expect_pong(ws: &mut LiveConnection) {
    send(ws, json!({"type": "ping"})).await;
    let pong = recv(ws, "pong").await;
    assert_eq!(pong["type"], "pong", "{pong}");
    assert!(pong["timestamp"].is_string(), "pong carries a timestamp: {pong}");
}

/// Reads `n` messages that must all be `change`s of subscription `id`.
async fn changes(ws: &mut LiveConnection, id: &str, n: usize, what: &str) -> Vec<Json> {
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
fn spawn_changes(mut ws: LiveConnection, id: &str, n: usize, what: &str) -> JoinHandle<(LiveConnection, Vec<Json>)> {
    let (id, what) = (id.to_owned(), what.to_owned());
    tokio::spawn(async move {
        let msgs = changes(&mut ws, &id, n, &what).await;
        (ws, msgs)
    })
}

/// Awaits a task, re-raising its panic with the original message.
async fn join<T>(task: JoinHandle<T>) -> T {
    match task.await {
        Ok(v) => v,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("task failed: {e}"),
    }
}

/// Reads messages until `expected` says how many are due, that many arrived, and nothing more
/// came for a second (at most `limit` in all). Keeps the socket read (heartbeats answered).
async fn collect_until(
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

fn kind(msg: &Json) -> &str {
    msg["change_type"].as_str().unwrap_or_else(|| panic!("change without change_type: {msg}"))
}

fn rows_of<'a>(msg: &'a Json, field: &str) -> &'a [Json] {
    match &msg[field] {
        Json::Array(a) => a,
        _ => &[],
    }
}

/// The row a change is about: the new row (insert, update) or the removed one (delete).
fn row(msg: &Json) -> &Json {
    let field = if kind(msg) == "delete" { "old_values" } else { "rows" };
    rows_of(msg, field).first().unwrap_or_else(|| panic!("{field} missing: {msg}"))
}

fn id_of(msg: &Json) -> i64 {
    row(msg)["id"].as_i64().unwrap_or_else(|| panic!("row without integer id: {msg}"))
}

/// `rows` / `old_values` hold exactly one row where the change type has them (api.md §4.3).
fn assert_shape(msg: &Json) {
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
fn assert_sequenced(msgs: &[Json], what: &str) {
    let mut last = 0u64;
    for (i, m) in msgs.iter().enumerate() {
        assert_eq!(m["seq"], i as u64 + 1, "{what}: seq of message {}: {m}", i + 1);
        let c = m["commit_seq"].as_u64().unwrap_or_else(|| panic!("{what}: commit_seq missing: {m}"));
        assert!(c > last, "{what}: commit_seq {c} follows {last} (message {}): not strictly increasing", i + 1);
        last = c;
        assert_shape(m);
    }
}

fn ts(row: &Json) -> &str {
    row["_updated"].as_str().unwrap_or_else(|| panic!("row without _updated: {row}"))
}

// ---------------------------------------------------------------------------------------------
// E. Live queries
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_query_detects_inserts() {
    let cluster = start(SETUP).await;
    let mut ws = connect(&cluster, "alice").await;
    subscribe(&mut ws, "ins", "SELECT * FROM app.m", Json::Null).await;
    let reader = spawn_changes(ws, "ins", 100, "100 inserts");
    let alice = cluster.client("alice");
    let started = Instant::now();
    for id in 1..=100 {
        insert(&alice, id, &format!("row {id}"), id * 2).await;
    }
    let (mut ws, msgs) = join(reader).await;
    eprintln!("100 inserts delivered {:?} after the first write", started.elapsed());
    assert_sequenced(&msgs, "inserts");
    for (i, m) in msgs.iter().enumerate() {
        let id = i as i64 + 1;
        assert_eq!(kind(m), "insert", "{m}");
        let r = row(m);
        assert_eq!(r["id"], id, "inserts arrive in commit order: {m}");
        assert_eq!(r["body"], format!("row {id}"), "{m}");
        assert_eq!(r["n"], id * 2, "{m}");
        assert_eq!(r["_deleted"], false, "{m}");
        assert!(r["_updated"].is_string(), "{m}");
    }
    assert_quiet(&mut ws, "exactly 100 inserts").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_query_detects_updates() {
    let cluster = start(SETUP).await;
    let mut ws = connect(&cluster, "alice").await;
    subscribe(&mut ws, "upd", "SELECT * FROM app.m", Json::Null).await;
    let reader = spawn_changes(ws, "upd", 100, "50 inserts + 50 updates");
    let alice = cluster.client("alice");
    for id in 1..=50 {
        insert(&alice, id, &format!("row {id}"), id).await;
    }
    for id in 1..=50 {
        let resp = exec(&alice, &format!("UPDATE app.m SET body = 'edited {id}', n = n + 100 WHERE id = {id}")).await;
        assert_eq!(resp.results[0].row_count, 1);
    }
    let (mut ws, msgs) = join(reader).await;
    assert_sequenced(&msgs, "updates");
    for (i, m) in msgs.iter().enumerate() {
        let id = (i % 50) as i64 + 1;
        assert_eq!(id_of(m), id, "{m}");
        if i < 50 {
            assert_eq!(kind(m), "insert", "{m}");
            continue;
        }
        assert_eq!(kind(m), "update", "{m}");
        let (new, old) = (&m["rows"][0], &m["old_values"][0]);
        assert_eq!((new["body"].as_str(), new["n"].as_i64()), (Some(&*format!("edited {id}")), Some(id + 100)), "{m}");
        assert_eq!((old["body"].as_str(), old["n"].as_i64()), (Some(&*format!("row {id}")), Some(id)), "{m}");
        assert_eq!((old["id"].as_i64(), old["_deleted"].as_bool()), (Some(id), Some(false)), "{m}");
        assert!(ts(old) < ts(new), "_updated grows with the update: {m}");
    }
    assert_quiet(&mut ws, "exactly 100 changes").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_query_detects_deletes() {
    let cluster = start(SETUP).await;
    let mut ws = connect(&cluster, "alice").await;
    subscribe(&mut ws, "del", "SELECT * FROM app.m", Json::Null).await;
    let reader = spawn_changes(ws, "del", 45, "30 inserts + 15 deletes");
    let alice = cluster.client("alice");
    for id in 1..=30 {
        insert(&alice, id, &format!("row {id}"), id).await;
    }
    let resp = exec(&alice, "DELETE FROM app.m WHERE id % 2 = 0").await;
    assert_eq!(resp.results[0].row_count, 15);
    let (mut ws, msgs) = join(reader).await;
    assert_sequenced(&msgs, "deletes");
    assert!(msgs[..30].iter().all(|m| kind(m) == "insert"));
    let mut deleted = BTreeSet::new();
    for m in &msgs[30..] {
        assert_eq!(kind(m), "delete", "{m}");
        let old = row(m);
        let id = id_of(m);
        assert_eq!(old["_deleted"], true, "the deleted version is sent: {m}");
        assert_eq!(old["body"], format!("row {id}"), "{m}");
        assert!(deleted.insert(id), "delete of {id} twice");
    }
    assert_eq!(deleted, (2..=30).step_by(2).collect::<BTreeSet<i64>>());
    assert_quiet(&mut ws, "exactly 15 deletes").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_no_message_loss() {
    let cluster = start(SETUP).await;
    let mut ws = connect(&cluster, "alice").await;
    subscribe(&mut ws, "cw", "SELECT * FROM app.m", Json::Null).await;
    let reader = spawn_changes(ws, "cw", 100, "5 writers x 20 rows");
    let started = Instant::now();
    let writers: Vec<_> = (0..5i64)
        .map(|w| {
            let client = cluster.client("alice");
            tokio::spawn(async move {
                for i in 0..20 {
                    insert(&client, w * 1000 + i, &format!("writer {w}"), i).await;
                }
            })
        })
        .collect();
    for w in writers {
        join(w).await;
    }
    let (mut ws, msgs) = join(reader).await;
    eprintln!("5 x 20 concurrent inserts delivered in {:?}", started.elapsed());
    assert_sequenced(&msgs, "concurrent writers");
    let ids: Vec<i64> = msgs.iter().map(id_of).collect();
    let distinct: BTreeSet<i64> = ids.iter().copied().collect();
    let expected: BTreeSet<i64> = (0..5).flat_map(|w| (0..20).map(move |i| w * 1000 + i)).collect();
    assert_eq!(distinct.len(), 100, "duplicates among {ids:?}");
    assert_eq!(distinct, expected);
    for w in 0..5 {
        let mine: Vec<i64> = ids.iter().copied().filter(|id| id / 1000 == w).collect();
        assert!(mine.windows(2).all(|p| p[0] < p[1]), "writer {w}'s rows out of commit order: {mine:?}");
    }
    assert_quiet(&mut ws, "exactly 100 notifications").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ai_message_scenario() {
    let cluster = start(
        "CREATE NAMESPACE app; CREATE USER TABLE app.messages (id BIGINT PRIMARY KEY DEFAULT SNOWFLAKE_ID(), \
         conversation_id TEXT NOT NULL, role TEXT, content TEXT, created_at TIMESTAMP DEFAULT NOW())",
    )
    .await;
    let sql = "SELECT * FROM app.messages WHERE conversation_id = 'c1'";
    let mut ws1 = connect(&cluster, "user1").await;
    subscribe(&mut ws1, "chat", sql, Json::Null).await;
    let mut ws2 = connect(&cluster, "user2").await;
    subscribe(&mut ws2, "chat", sql, Json::Null).await;
    let reader = tokio::spawn(async move {
        let mut arrivals = Vec::new();
        let mut msgs = Vec::new();
        for k in 0..20 {
            msgs.extend(changes(&mut ws1, "chat", 1, &format!("user1's c1 message {k}")).await);
            arrivals.push(Instant::now());
        }
        (ws1, msgs, arrivals)
    });
    // The writer (an AI backend) writes into user1's partition by acting as user1.
    let writer = cluster.client("user1");
    let writes = tokio::spawn(async move {
        let mut acked = Vec::new();
        for k in 0..40 {
            let conv = if k % 2 == 0 { "c1" } else { "c2" };
            let role = if k % 4 < 2 { "user" } else { "assistant" };
            exec(
                &writer,
                &format!(
                    "INSERT INTO app.messages (conversation_id, role, content) VALUES ('{conv}', '{role}', 'msg {k}')"
                ),
            )
            .await;
            if conv == "c1" {
                acked.push(Instant::now());
            }
        }
        acked
    });
    let acked = join(writes).await;
    let (mut ws1, msgs, arrivals) = join(reader).await;
    let worst = acked.iter().zip(&arrivals).map(|(a, r)| r.saturating_duration_since(*a)).max().unwrap_or_default();
    eprintln!("20 c1 messages: worst delivery lag after the HTTP answer {worst:?}");
    assert_sequenced(&msgs, "user1 c1");
    let mut last_id = 0;
    for (i, m) in msgs.iter().enumerate() {
        assert_eq!(kind(m), "insert", "{m}");
        let r = row(m);
        assert_eq!(r["conversation_id"], "c1", "c2 messages must not reach the c1 subscription: {m}");
        assert_eq!(r["content"], format!("msg {}", i * 2), "{m}");
        assert!(r["created_at"].is_string(), "DEFAULT NOW() filled in: {m}");
        let id = id_of(m);
        assert!(id > last_id, "SNOWFLAKE_ID keys increase in commit order: {m}");
        last_id = id;
    }
    assert_quiet(&mut ws1, "user1 gets only c1 messages").await;
    assert_quiet(&mut ws2, "user2 receives none of user1's messages").await;
    // user2's subscription works: it sees user2's own c1 message, and user1 does not.
    exec(&cluster.client("user2"), "INSERT INTO app.messages (conversation_id, content) VALUES ('c1', 'user2 own')")
        .await;
    let own = changes(&mut ws2, "chat", 1, "user2's own message").await;
    assert_eq!(row(&own[0])["content"], "user2 own");
    assert_eq!(own[0]["seq"], 1);
    assert_quiet(&mut ws1, "user2's write must not reach user1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_operations_ordering() {
    let cluster = start(SETUP).await;
    let mut ws = connect(&cluster, "alice").await;
    subscribe(&mut ws, "mix", "SELECT * FROM app.m", Json::Null).await;
    let reader = spawn_changes(ws, "mix", 4, "mixed operations");
    let alice = cluster.client("alice");
    insert(&alice, 1, "m1", 1).await;
    exec(&alice, "UPDATE app.m SET body = 'm1 edited' WHERE id = 1").await;
    insert(&alice, 2, "m2", 2).await;
    exec(&alice, "DELETE FROM app.m WHERE id = 1").await;
    let (mut ws, msgs) = join(reader).await;
    assert_sequenced(&msgs, "mixed");
    let got: Vec<(&str, i64)> = msgs.iter().map(|m| (kind(m), id_of(m))).collect();
    assert_eq!(got, vec![("insert", 1), ("update", 1), ("insert", 2), ("delete", 1)]);
    assert_eq!(msgs[1]["rows"][0]["body"], "m1 edited");
    assert_eq!(msgs[1]["old_values"][0]["body"], "m1");
    assert_eq!(msgs[3]["old_values"][0]["body"], "m1 edited");
    assert_eq!(msgs[3]["old_values"][0]["_deleted"], true);
    assert_quiet(&mut ws, "four changes only").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_counter_accuracy() {
    let cluster = start(SETUP).await;
    let mut ws = connect(&cluster, "alice").await;
    subscribe(&mut ws, "cnt", "SELECT * FROM app.m", Json::Null).await;
    let reader = spawn_changes(ws, "cnt", 50, "50 changes");
    let alice = cluster.client("alice");
    for id in 1..=25 {
        insert(&alice, id, "x", id).await;
    }
    for id in 1..=15 {
        exec(&alice, &format!("UPDATE app.m SET n = 0 WHERE id = {id}")).await;
    }
    assert_eq!(exec(&alice, "DELETE FROM app.m WHERE id > 15").await.results[0].row_count, 10);
    let (_ws, msgs) = join(reader).await;
    assert_sequenced(&msgs, "counter");
    let started = Instant::now();
    let lq = wait_for(Duration::from_secs(10), "system.live_queries.changes = 50", || async {
        let r = live_rows(&cluster, "subscription_id = 'cnt'").await.into_iter().next()?;
        let changes = r["changes"].as_i64().unwrap_or_else(|| panic!("changes is an integer: {r}"));
        assert!(changes <= 50, "changes counts {changes} > 50 delivered notifications");
        (changes == 50).then_some(r)
    })
    .await;
    eprintln!("changes = 50 visible {:?} after the last delivery", started.elapsed());
    let (created, last) = (lq["created_at"].as_str().unwrap(), lq["last_update"].as_str().unwrap());
    assert!(last > created, "last_update ({last}) moves past created_at ({created}) with deliveries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiple_listeners_same_table() {
    let cluster = start(SETUP).await;
    let mut readers = Vec::new();
    for k in 0..3 {
        let mut ws = connect(&cluster, "alice").await;
        let id = format!("listener{k}");
        subscribe(&mut ws, &id, "SELECT * FROM app.m", Json::Null).await;
        readers.push(spawn_changes(ws, &id, 20, &id));
    }
    let subs = live_rows(&cluster, "user_id = 'alice'").await;
    let conns: BTreeSet<_> = subs.iter().map(|r| r["connection_id"].to_string()).collect();
    assert_eq!((subs.len(), conns.len()), (3, 3), "three subscriptions on three connections: {subs:?}");
    let alice = cluster.client("alice");
    for id in 1..=20 {
        insert(&alice, id, "x", id).await;
    }
    for (k, reader) in readers.into_iter().enumerate() {
        let (mut ws, msgs) = join(reader).await;
        assert_sequenced(&msgs, &format!("listener{k}"));
        assert_eq!(msgs.iter().map(id_of).collect::<Vec<_>>(), (1..=20).collect::<Vec<_>>());
        assert_quiet(&mut ws, "20 inserts per listener").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_reconnect_no_data_loss() {
    let cluster = start(SETUP).await;
    let alice = cluster.client("alice");
    let sql = "SELECT * FROM app.m";
    let mut ws = connect(&cluster, "alice").await;
    subscribe(&mut ws, "re", sql, Json::Null).await;
    for id in 1..=10 {
        insert(&alice, id, &format!("row {id}"), id).await;
    }
    let first = changes(&mut ws, "re", 10, "before the disconnect").await;
    let since = first.iter().map(|m| ts(row(m)).to_owned()).max().expect("ten rows");
    ws.close().await.expect("close");
    // While disconnected: 10 inserts, an update of a seen row and a delete of another.
    for id in 11..=20 {
        insert(&alice, id, &format!("row {id}"), id).await;
    }
    exec(&alice, "UPDATE app.m SET body = 'edited' WHERE id = 3").await;
    exec(&alice, "DELETE FROM app.m WHERE id = 4").await;

    let mut ws = connect(&cluster, "alice").await;
    let ack = subscribe(&mut ws, "re", sql, json!({"since": since})).await;
    assert_eq!(ack["options"]["since"], since.as_str(), "options echoed: {ack}");
    let init = recv(&mut ws, "initial_data after the since resubscribe").await;
    assert_eq!((init["type"].as_str(), init["subscription_id"].as_str()), (Some("initial_data"), Some("re")), "{init}");
    let snapshot = init["rows"].as_array().unwrap_or_else(|| panic!("initial_data rows: {init}"));
    let ids: Vec<i64> = snapshot.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    let mut expected: Vec<i64> = (11..=20).collect();
    expected.extend([3, 4]);
    assert_eq!(ids, expected, "rows changed after `since`, oldest first");
    assert_eq!(init["count"], 12, "{init}");
    assert!(snapshot.iter().all(|r| ts(r) > since.as_str()), "only rows updated after {since}");
    assert_eq!(snapshot[10]["body"], "edited");
    assert_eq!((snapshot[11]["_deleted"].as_bool(), snapshot[10]["_deleted"].as_bool()), (Some(true), Some(false)));
    let seen: BTreeSet<i64> = first.iter().map(id_of).chain(ids).collect();
    assert_eq!(seen, (1..=20).collect::<BTreeSet<_>>(), "all 20 rows received overall");
    insert(&alice, 21, "live again", 21).await;
    let live = changes(&mut ws, "re", 1, "a change after the resync").await;
    assert_eq!((id_of(&live[0]), live[0]["seq"].as_u64()), (21, Some(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn high_frequency_changes() {
    const N: i64 = 1000;
    let cluster = start(SETUP).await;
    let mut ws = connect(&cluster, "alice").await;
    subscribe(&mut ws, "hf", "SELECT * FROM app.m", Json::Null).await;
    let reader = spawn_changes(ws, "hf", N as usize, "1000 rapid inserts");
    let alice = cluster.client("alice");
    let started = Instant::now();
    for id in 1..=N {
        insert(&alice, id, "x", id).await;
    }
    let written = started.elapsed();
    let (mut ws, msgs) = join(reader).await;
    let delivered = started.elapsed();
    eprintln!(
        "{N} inserts written in {written:?} ({:.0}/s), all delivered after {delivered:?}",
        N as f64 / written.as_secs_f64()
    );
    assert_sequenced(&msgs, "high frequency");
    assert_eq!(msgs.iter().map(id_of).collect::<Vec<_>>(), (1..=N).collect::<Vec<_>>(), "in commit order");
    assert_quiet(&mut ws, "exactly 1000 notifications").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_isolation_subscriptions() {
    let cluster = start(SETUP).await;
    let mut wa = connect(&cluster, "alice").await;
    subscribe(&mut wa, "iso", "SELECT * FROM app.m", Json::Null).await;
    let mut wb = connect(&cluster, "bob").await;
    subscribe(&mut wb, "iso", "SELECT * FROM app.m", Json::Null).await;
    let ra = spawn_changes(wa, "iso", 5, "alice's rows");
    let rb = spawn_changes(wb, "iso", 10, "bob's rows");
    let (alice, bob) = (cluster.client("alice"), cluster.client("bob"));
    for id in 1..=10 {
        insert(&bob, id, &format!("bob {id}"), id).await;
        if id <= 5 {
            insert(&alice, id, &format!("alice {id}"), id).await;
        }
    }
    exec(&bob, "UPDATE app.m SET n = 0").await;
    exec(&bob, "DELETE FROM app.m WHERE id > 5").await;
    let (mut wa, ma) = join(ra).await;
    assert_sequenced(&ma, "alice");
    for m in &ma {
        assert_eq!(row(m)["body"], format!("alice {}", id_of(m)), "bob's row reached alice: {m}");
    }
    assert_quiet(&mut wa, "bob's updates and deletes must not reach alice").await;
    let (_wb, mb) = join(rb).await;
    for m in &mb {
        assert_eq!(row(m)["body"], format!("bob {}", id_of(m)), "alice's row reached bob: {m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_transitions() {
    let cluster = start(SETUP).await;
    let mut ws = connect(&cluster, "alice").await;
    subscribe(&mut ws, "ft", "SELECT * FROM app.m WHERE n > 10", Json::Null).await;
    let reader = spawn_changes(ws, "ft", 6, "filter transitions");
    let alice = cluster.client("alice");
    insert(&alice, 1, "a", 5).await; // outside: nothing
    exec(&alice, "UPDATE app.m SET n = 20 WHERE id = 1").await; // enters: insert
    exec(&alice, "UPDATE app.m SET n = 30 WHERE id = 1").await; // stays: update
    exec(&alice, "UPDATE app.m SET n = 1 WHERE id = 1").await; // leaves: delete
    exec(&alice, "UPDATE app.m SET n = 2 WHERE id = 1").await; // stays outside: nothing
    insert(&alice, 2, "b", 50).await; // insert
    exec(&alice, "DELETE FROM app.m WHERE id = 2").await; // delete (soft)
    insert(&alice, 3, "c", 0).await; // outside: nothing
    exec(&alice, "DELETE FROM app.m WHERE id = 3").await; // was outside: nothing
    insert(&alice, 4, "d", 11).await; // insert
    let (mut ws, msgs) = join(reader).await;
    assert_sequenced(&msgs, "transitions");
    let got: Vec<(&str, i64, i64)> = msgs.iter().map(|m| (kind(m), id_of(m), row(m)["n"].as_i64().unwrap())).collect();
    assert_eq!(
        got,
        vec![
            ("insert", 1, 20),
            ("update", 1, 30),
            ("delete", 1, 30),
            ("insert", 2, 50),
            ("delete", 2, 50),
            ("insert", 4, 11)
        ]
    );
    assert_eq!(msgs[1]["old_values"][0]["n"], 20);
    assert_eq!(msgs[2]["old_values"][0]["_deleted"], false, "a row leaving the filter is not deleted: {}", msgs[2]);
    assert_eq!(msgs[4]["old_values"][0]["_deleted"], true, "{}", msgs[4]);
    assert_quiet(&mut ws, "no notification for rows outside the filter").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_ack_and_initial_data_order() {
    let cluster = start(SETUP).await;
    let alice = cluster.client("alice");
    for id in 1..=3 {
        insert(&alice, id, "before", id).await;
    }
    let mut ws = connect(&cluster, "alice").await;
    send(&mut ws, sub("order", "SELECT * FROM app.m", json!({"last_rows": 100}))).await;
    // Writes race with the subscription being set up.
    let writer = tokio::spawn(async move {
        for id in 4..=23 {
            insert(&alice, id, "during", id).await;
        }
    });
    let ack = recv(&mut ws, "subscription_ack").await;
    assert_ack(&ack, "order");
    assert_eq!(ack["options"], json!({"last_rows": 100}), "options echoed: {ack}");
    let init = recv(&mut ws, "initial_data").await;
    assert_eq!(init["type"], "initial_data", "initial_data comes right after the ack: {init}");
    assert_eq!(init["subscription_id"], "order");
    let snap: Vec<i64> = init["rows"].as_array().expect("rows").iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(init["count"], snap.len(), "{init}");
    assert_eq!(init["has_more"], false, "{init}");
    let snap_seq = init["commit_seq"].as_u64().unwrap_or_else(|| panic!("initial_data.commit_seq: {init}"));
    assert!(snap.len() >= 3 && snap[..3] == [1, 2, 3], "snapshot holds the rows written before: {snap:?}");
    join(writer).await;
    let msgs = changes(&mut ws, "order", 23 - snap.len(), "changes after initial_data").await;
    assert_sequenced(&msgs, "after the snapshot");
    let streamed: Vec<(i64, u64)> = msgs.iter().map(|m| (id_of(m), m["commit_seq"].as_u64().unwrap())).collect();
    assert!(
        streamed.iter().all(|(_, c)| *c > snap_seq),
        "changes must come after the snapshot position {snap_seq}: snapshot ids {snap:?}, (id, commit_seq) of \
         the changes {streamed:?}"
    );
    let all: Vec<i64> = snap.iter().copied().chain(msgs.iter().map(id_of)).collect();
    assert_eq!(all, (1..=23).collect::<Vec<_>>(), "snapshot then changes, no gap, no overlap");
    eprintln!("snapshot held {} rows at commit_seq {snap_seq}; {} changes followed", snap.len(), msgs.len());
    assert_quiet(&mut ws, "nothing after the last change").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_table_subscription() {
    let cluster = start(
        "CREATE NAMESPACE app; \
         CREATE STREAM TABLE app.ev (id BIGINT PRIMARY KEY, v TEXT) TTL 60s; \
         CREATE STREAM TABLE app.eph (id BIGINT PRIMARY KEY, v TEXT) TTL 60s EPHEMERAL",
    )
    .await;
    let (alice, bob) = (cluster.client("alice"), cluster.client("bob"));
    for id in 1..=3 {
        exec(&alice, &format!("INSERT INTO app.ev (id, v) VALUES ({id}, 'old {id}')")).await;
    }
    let mut ws = connect(&cluster, "alice").await;
    subscribe(&mut ws, "ev", "SELECT * FROM app.ev", json!({"last_rows": 2})).await;
    let init = recv(&mut ws, "stream initial_data").await;
    assert_eq!((init["type"].as_str(), init["count"].as_u64()), (Some("initial_data"), Some(2)), "{init}");
    let snapshot = init["rows"].as_array().expect("rows");
    assert_eq!(snapshot.iter().map(|r| r["id"].as_i64().unwrap()).collect::<Vec<_>>(), vec![2, 3], "by insertion time");
    assert!(snapshot.iter().all(|r| r.get("_updated").is_none() && r.get("_deleted").is_none()), "{init}");

    exec(&bob, "INSERT INTO app.ev (id, v) VALUES (100, 'bob')").await;
    for id in 4..=13 {
        exec(&alice, &format!("INSERT INTO app.ev (id, v) VALUES ({id}, 'ev {id}')")).await;
    }
    let msgs = changes(&mut ws, "ev", 10, "stream inserts").await;
    assert_sequenced(&msgs, "stream");
    for (m, id) in msgs.iter().zip(4..) {
        assert_eq!(kind(m), "insert", "{m}");
        let r = row(m);
        assert_eq!((r["id"].as_i64(), r["v"].as_str()), (Some(id), Some(&*format!("ev {id}"))), "{m}");
        assert!(r.get("_updated").is_none() && r.get("_deleted").is_none(), "no system columns on streams: {m}");
    }
    assert_quiet(&mut ws, "bob's stream row must not reach alice").await;

    // EPHEMERAL: a row inserted while nobody listens is dropped.
    exec(&alice, "INSERT INTO app.eph (id, v) VALUES (1, 'nobody listening')").await;
    assert!(rows_sql(&alice, "SELECT id FROM app.eph").await.is_empty(), "ephemeral row kept without subscriber");
    subscribe(&mut ws, "eph", "SELECT * FROM app.eph", Json::Null).await;
    exec(&alice, "INSERT INTO app.eph (id, v) VALUES (2, 'heard')").await;
    let heard = changes(&mut ws, "eph", 1, "ephemeral insert with a subscriber").await;
    assert_eq!((id_of(&heard[0]), heard[0]["seq"].as_u64()), (2, Some(1)));
    assert_eq!(rows_sql(&alice, "SELECT id FROM app.eph").await, vec![json!({"id": 2})]);
    // Bob has no subscription on his partition: his ephemeral row is dropped too.
    exec(&bob, "INSERT INTO app.eph (id, v) VALUES (3, 'bob')").await;
    assert!(rows_sql(&bob, "SELECT id FROM app.eph").await.is_empty());
    assert_quiet(&mut ws, "bob's ephemeral row must not reach alice").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_cleans_live_queries() {
    let cluster = start(SETUP).await;
    let mut c1 = connect(&cluster, "alice").await;
    subscribe(&mut c1, "a1", "SELECT * FROM app.m", Json::Null).await;
    subscribe(&mut c1, "a2", "SELECT * FROM app.m WHERE n > 1", Json::Null).await;
    let mut c2 = connect(&cluster, "alice").await;
    subscribe(&mut c2, "b1", "SELECT * FROM app.m", Json::Null).await;
    assert_eq!(live_rows(&cluster, "user_id = 'alice'").await.len(), 3);

    let started = Instant::now();
    c1.close().await.expect("close");
    let left = wait_for(Duration::from_secs(5), "rows of the closed connection removed", || async {
        let r = live_rows(&cluster, "user_id = 'alice'").await;
        (r.len() == 1).then_some(r)
    })
    .await;
    eprintln!("close frame: rows removed after {:?}", started.elapsed());
    assert_eq!(left[0]["subscription_id"], "b1");

    // An abrupt disconnect (TCP closed without a close frame).
    let started = Instant::now();
    drop(c2);
    wait_for(Duration::from_secs(5), "rows of the dropped connection removed", || async {
        live_rows(&cluster, "user_id = 'alice'").await.is_empty().then_some(())
    })
    .await;
    eprintln!("dropped socket: rows removed after {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------
// H. Live items of the enhanced API
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_initial_data_fetch() {
    let cluster = start(SETUP).await;
    let alice = cluster.client("alice");
    // Inserted in descending key order, so "most recent" (by _updated) differs from key order.
    for id in (1..=100).rev() {
        insert(&alice, id, &format!("row {id}"), id).await;
    }
    let mut ws = connect(&cluster, "alice").await;
    subscribe(&mut ws, "init", "SELECT * FROM app.m", json!({"last_rows": 50})).await;
    let init = recv(&mut ws, "initial_data").await;
    assert_eq!(
        (init["type"].as_str(), init["subscription_id"].as_str()),
        (Some("initial_data"), Some("init")),
        "{init}"
    );
    assert_eq!(init["count"], 50, "{init}");
    assert_eq!(init["has_more"], false, "{init}");
    assert!(init["commit_seq"].as_u64().is_some_and(|s| s > 0), "commit_seq present: {init}");
    let snapshot = init["rows"].as_array().expect("rows");
    let ids: Vec<i64> = snapshot.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, (1..=50).rev().collect::<Vec<_>>(), "the 50 most recently written rows, oldest first");
    assert!(snapshot.windows(2).all(|p| ts(&p[0]) < ts(&p[1])), "ordered by _updated ascending");
    for r in snapshot {
        assert_eq!(r["body"], format!("row {}", r["id"]), "{r}");
        assert_eq!(r["_deleted"], false, "{r}");
    }
    insert(&alice, 101, "new", 101).await;
    let next = changes(&mut ws, "init", 1, "change after initial_data").await;
    assert_eq!((id_of(&next[0]), next[0]["seq"].as_u64()), (101, Some(1)));
    assert!(next[0]["commit_seq"].as_u64().unwrap() > init["commit_seq"].as_u64().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_table_with_active_subscriptions() {
    let cluster = start(SETUP).await;
    let admin = cluster.client("system");
    let mut ws = connect(&cluster, "alice").await;
    subscribe(&mut ws, "d1", "SELECT * FROM app.m", Json::Null).await;
    subscribe(&mut ws, "d2", "SELECT * FROM app.m WHERE n = 1", Json::Null).await;
    let err = sql_error(&admin, "DROP TABLE app.m").await;
    assert!(
        err.message.contains("Cannot drop table app.m while 2 active live queries exist"),
        "message names the count: {err:?}"
    );
    assert_eq!(err.code, "DEPENDENCY_EXISTS", "{err:?}");
    insert(&cluster.client("alice"), 1, "still here", 1).await;
    let a = recv(&mut ws, "change after the refused DROP").await;
    let b = recv(&mut ws, "second change after the refused DROP").await;
    let ids: BTreeSet<_> = [&a, &b].iter().map(|m| m["subscription_id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids, BTreeSet::from(["d1".to_owned(), "d2".to_owned()]), "both subscriptions still live: {a} {b}");

    send(&mut ws, json!({"type": "unsubscribe", "subscription_ids": ["d1", "d2"]})).await;
    let mut gone = BTreeSet::new();
    for _ in 0..2 {
        let m = recv(&mut ws, "unsubscribed").await;
        assert_eq!((m["type"].as_str(), m["reason"].as_str()), (Some("unsubscribed"), Some("client_request")), "{m}");
        gone.insert(m["subscription_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(gone.len(), 2);
    let resp = wait_for(Duration::from_secs(5), "DROP TABLE after unsubscribing", || async {
        admin.query("DROP TABLE app.m").await.ok()
    })
    .await;
    eprintln!("DROP after unsubscribe: {:?}", resp.results[0].message);
    expect_pong(&mut ws).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_live_query_command() {
    let cluster = start(SETUP).await;
    let admin = cluster.client("system");
    let mut ws = connect(&cluster, "alice").await;
    let ack = subscribe(&mut ws, "victim", "SELECT * FROM app.m", Json::Null).await;
    subscribe(&mut ws, "bystander", "SELECT * FROM app.m", Json::Null).await;
    let lq = live_rows(&cluster, "subscription_id = 'victim'").await.into_iter().next().expect("victim's row");
    let live_id = lq["live_id"].as_str().unwrap_or_else(|| panic!("live_id: {lq}")).to_owned();
    assert_eq!(ack["live_id"], live_id.as_str(), "ack and system.live_queries agree");

    let resp = exec(&admin, &format!("KILL LIVE QUERY '{live_id}'")).await;
    assert_eq!(resp.results[0].message.as_deref(), Some(&*format!("Live query {live_id} terminated")));
    let m = recv(&mut ws, "unsubscribed after KILL").await;
    assert_eq!(m["type"], "unsubscribed", "{m}");
    assert_eq!((m["subscription_id"].as_str(), m["reason"].as_str()), (Some("victim"), Some("killed")), "{m}");
    wait_for(Duration::from_secs(5), "killed row gone from system.live_queries", || async {
        live_rows(&cluster, "subscription_id = 'victim'").await.is_empty().then_some(())
    })
    .await;

    insert(&cluster.client("alice"), 1, "after kill", 1).await;
    let c = recv(&mut ws, "the bystander's change").await;
    assert_eq!((c["type"].as_str(), c["subscription_id"].as_str()), (Some("change"), Some("bystander")), "{c}");
    assert_quiet(&mut ws, "the killed subscription gets nothing").await;

    let unknown = format!("{}/nope", live_id.split('/').next().unwrap());
    let err = sql_error(&admin, &format!("KILL LIVE QUERY '{unknown}'")).await;
    assert!(err.message.contains(&format!("Live query '{unknown}' not found")), "{err:?}");
    assert_eq!(err.code, "LIVE_QUERY_NOT_FOUND", "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_live_queries_enhanced_fields() {
    let cluster = start(SETUP).await;
    let sql = "SELECT * FROM app.m WHERE n >= 0";
    let mut ws = connect(&cluster, "alice").await;
    let ack = subscribe(&mut ws, "f", sql, json!({"last_rows": 5})).await;
    let init = recv(&mut ws, "initial_data (empty)").await;
    assert_eq!((init["type"].as_str(), init["count"].as_u64()), (Some("initial_data"), Some(0)), "{init}");
    let r = live_rows(&cluster, "subscription_id = 'f'").await.into_iter().next().expect("row");
    let live_id = ack["live_id"].as_str().unwrap();
    assert_eq!(r["live_id"], live_id);
    assert_eq!(format!("{}/f", r["connection_id"].as_str().expect("connection_id")), live_id);
    assert_eq!((r["user_id"].as_str(), r["namespace_id"].as_str()), (Some("alice"), Some("app")), "{r}");
    assert_eq!((r["table_name"].as_str(), r["query"].as_str()), (Some("m"), Some(sql)), "{r}");
    let options = match &r["options"] {
        Json::String(s) => serde_json::from_str(s).unwrap_or_else(|e| panic!("options is JSON text ({e}): {s}")),
        other => other.clone(),
    };
    assert_eq!(options, json!({"last_rows": 5}), "options as sent");
    assert_eq!(r["changes"], 0, "initial data is not counted: {r}");
    assert!(r["node"].as_str().is_some_and(|n| !n.is_empty()), "node: {r}");
    assert_eq!(r["created_at"], r["last_update"], "last_update = created_at before any delivery: {r}");

    let alice = cluster.client("alice");
    for id in 1..=3 {
        insert(&alice, id, "x", id).await;
    }
    insert(&alice, 4, "filtered out", -1).await;
    changes(&mut ws, "f", 3, "three matching inserts").await;
    let r = wait_for(Duration::from_secs(10), "changes = 3", || async {
        let r = live_rows(&cluster, "subscription_id = 'f'").await.into_iter().next()?;
        (r["changes"] == 3).then_some(r)
    })
    .await;
    assert!(r["last_update"].as_str() > r["created_at"].as_str(), "last_update moves with deliveries: {r}");
    eprintln!("system.live_queries row: {r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_table_subscription_prevention() {
    let cluster = start("CREATE NAMESPACE app; CREATE SHARED TABLE app.cfg (k TEXT PRIMARY KEY, v TEXT)").await;
    let mut ws = connect(&cluster, "alice").await;
    send(&mut ws, sub("shared_sub", "SELECT * FROM app.cfg", Json::Null)).await;
    let err = expect_error(&mut ws, "shared_sub", "INVALID_OPERATION").await;
    assert_eq!(err["message"], "Live query subscriptions not supported on shared tables");
    assert!(live_rows(&cluster, "user_id = 'alice'").await.is_empty(), "a failed subscription is not registered");
    expect_pong(&mut ws).await;
    let http = sql_error(&cluster.client("alice"), "SUBSCRIBE TO app.cfg").await;
    assert!(http.message.contains("Live query subscriptions not supported on shared tables"), "{http:?}");
}

// ---------------------------------------------------------------------------------------------
// Protocol details
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_user_in_where_and_projection() {
    let cluster =
        start("CREATE NAMESPACE app; CREATE USER TABLE app.o (id BIGINT PRIMARY KEY, owner TEXT, body TEXT)").await;
    let sql = "SELECT id, owner FROM app.o WHERE owner = CURRENT_USER()";
    let mut wa = connect(&cluster, "alice").await;
    subscribe(&mut wa, "mine", sql, Json::Null).await;
    let mut wb = connect(&cluster, "bob").await;
    subscribe(&mut wb, "mine", sql, Json::Null).await;
    let (alice, bob) = (cluster.client("alice"), cluster.client("bob"));
    for (id, owner) in [(1, "alice"), (2, "bob"), (3, "alice")] {
        exec(&alice, &format!("INSERT INTO app.o (id, owner, body) VALUES ({id}, '{owner}', 'x')")).await;
    }
    for (id, owner) in [(1, "bob"), (2, "alice")] {
        exec(&bob, &format!("INSERT INTO app.o (id, owner, body) VALUES ({id}, '{owner}', 'y')")).await;
    }
    let ma = changes(&mut wa, "mine", 2, "alice's own rows").await;
    assert_eq!(ma.iter().map(id_of).collect::<Vec<_>>(), vec![1, 3]);
    for m in &ma {
        let keys: BTreeSet<&str> = row(m).as_object().expect("row object").keys().map(String::as_str).collect();
        assert_eq!(keys, BTreeSet::from(["id", "owner", "_updated", "_deleted"]), "projected columns only: {m}");
        assert_eq!(row(m)["owner"], "alice");
    }
    let mb = changes(&mut wb, "mine", 1, "bob's own row").await;
    assert_eq!((id_of(&mb[0]), row(&mb[0])["owner"].as_str()), (1, Some("bob")));
    assert_quiet(&mut wa, "CURRENT_USER() is alice").await;
    assert_quiet(&mut wb, "CURRENT_USER() is bob").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_query_shapes_are_rejected() {
    let cluster = start(SETUP).await;
    let shapes = [
        ("join", "SELECT * FROM app.m a JOIN app.m b ON a.id = b.id"),
        ("group_by", "SELECT n, count(*) AS c FROM app.m GROUP BY n"),
        ("order_by", "SELECT * FROM app.m ORDER BY id"),
        ("limit", "SELECT * FROM app.m LIMIT 10"),
        ("subquery", "SELECT * FROM app.m WHERE id IN (SELECT id FROM app.m WHERE n > 1)"),
        ("aggregate_in_where", "SELECT * FROM app.m WHERE count(*) > 1"),
        ("aggregate", "SELECT count(*) FROM app.m"),
        ("distinct", "SELECT DISTINCT n FROM app.m"),
        ("window", "SELECT id, row_number() OVER (ORDER BY id) AS r FROM app.m"),
    ];
    let mut ws = connect(&cluster, "alice").await;
    for (id, sql) in shapes {
        send(&mut ws, sub(id, sql, Json::Null)).await;
        let err = expect_error(&mut ws, id, "UNSUPPORTED_QUERY").await;
        eprintln!("{id}: {}", err["message"]);
    }
    assert!(live_rows(&cluster, "user_id = 'alice'").await.is_empty(), "rejected subscriptions are not registered");
    expect_pong(&mut ws).await;
    subscribe(&mut ws, "ok", "SELECT * FROM app.m WHERE n > 1 AND body LIKE 'x%'", Json::Null).await;
    insert(&cluster.client("alice"), 1, "xy", 2).await;
    let m = changes(&mut ws, "ok", 1, "the valid subscription after the rejected ones").await;
    assert_eq!(id_of(&m[0]), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors_keep_the_connection_open() {
    let cluster = start(SETUP).await;
    let mut ws = connect(&cluster, "alice").await;
    send(&mut ws, sub("missing", "SELECT * FROM app.nope", Json::Null)).await;
    expect_error(&mut ws, "missing", "TABLE_NOT_FOUND").await;

    subscribe(&mut ws, "dup", "SELECT * FROM app.m", Json::Null).await;
    send(&mut ws, sub("dup", "SELECT * FROM app.m WHERE n > 0", Json::Null)).await;
    expect_error(&mut ws, "dup", "DUPLICATE_SUBSCRIPTION_ID").await;

    send(&mut ws, json!({"type": "unsubscribe", "subscription_ids": ["ghost"]})).await;
    expect_error(&mut ws, "ghost", "SUBSCRIPTION_NOT_FOUND").await;

    expect_pong(&mut ws).await;

    // Valid JSON of the wrong shape, a subscription without sql, an unknown type.
    send(&mut ws, json!("not an object")).await;
    expect_error(&mut ws, "*", "INVALID_SUBSCRIPTION").await;
    send(&mut ws, json!({"type": "subscribe", "subscriptions": [{"id": "nosql"}]})).await;
    let m = recv(&mut ws, "error for a subscription without sql").await;
    assert_eq!((m["type"].as_str(), m["code"].as_str()), (Some("error"), Some("INVALID_SUBSCRIPTION")), "{m}");
    send(&mut ws, json!({"type": "bogus"})).await;
    expect_error(&mut ws, "*", "UNKNOWN_MESSAGE_TYPE").await;

    // The duplicate did not register twice: one change, seq 1.
    let alice = cluster.client("alice");
    insert(&alice, 1, "x", 1).await;
    let c = changes(&mut ws, "dup", 1, "the change of the original subscription").await;
    assert_eq!((id_of(&c[0]), c[0]["seq"].as_u64()), (1, Some(1)));
    assert_quiet(&mut ws, "one subscription, one change").await;
    assert_eq!(live_rows(&cluster, "user_id = 'alice'").await.len(), 1);

    send(&mut ws, json!({"type": "unsubscribe", "subscription_id": "dup"})).await;
    let m = recv(&mut ws, "unsubscribed").await;
    let got = (m["type"].as_str(), m["subscription_id"].as_str(), m["reason"].as_str());
    assert_eq!(got, (Some("unsubscribed"), Some("dup"), Some("client_request")), "{m}");
    insert(&alice, 2, "x", 2).await;
    assert_quiet(&mut ws, "nothing after unsubscribe").await;

    // Unparsable JSON needs a raw frame.
    let mut raw = RawWs::connect(cluster.port, "alice", None).await;
    raw.send_text("{not json").await.expect("send garbage");
    let m = raw.next_json(MSG_TIMEOUT).await.expect("an error for garbage JSON");
    assert_eq!((m["type"].as_str(), m["subscription_id"].as_str()), (Some("error"), Some("*")), "{m}");
    assert_eq!(m["code"], "INVALID_SUBSCRIPTION", "{m}");
    let text = m["message"].as_str().unwrap_or_default();
    assert!(text.starts_with("Failed to parse subscription request: "), "{m}");
    raw.send_text(&json!({"type": "ping"}).to_string()).await.expect("send ping");
    let pong = raw.next_json(MSG_TIMEOUT).await.expect("pong after garbage");
    assert_eq!(pong["type"], "pong", "the connection stays open: {pong}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_from_seq_replays_exactly_the_missed_changes() {
    let cluster = start(SETUP).await;
    let (alice, bob) = (cluster.client("alice"), cluster.client("bob"));
    let sql = "SELECT * FROM app.m";
    let mut ws = connect(&cluster, "alice").await;
    subscribe(&mut ws, "r", sql, Json::Null).await;
    for id in 1..=5 {
        insert(&alice, id, &format!("row {id}"), id).await;
    }
    let first = changes(&mut ws, "r", 5, "before the disconnect").await;
    assert_sequenced(&first, "first session");
    let last = first[4]["commit_seq"].as_u64().unwrap();
    ws.close().await.expect("close");

    for id in 6..=8 {
        insert(&alice, id, &format!("row {id}"), id).await;
    }
    exec(&alice, "UPDATE app.m SET body = 'edited' WHERE id = 2").await;
    exec(&alice, "DELETE FROM app.m WHERE id = 3").await;
    insert(&bob, 100, "bob", 1).await;
    insert(&alice, 9, "row 9", 9).await;

    let mut ws = connect(&cluster, "alice").await;
    let ack = subscribe(&mut ws, "r", sql, json!({"from_seq": last})).await;
    assert_eq!(ack["options"]["from_seq"], last, "{ack}");
    let missed = changes(&mut ws, "r", 6, "replay (a resumed subscription gets no initial_data)").await;
    assert_sequenced(&missed, "replay");
    assert!(missed[0]["commit_seq"].as_u64().unwrap() > last, "replay starts after from_seq {last}");
    let got: Vec<(&str, i64)> = missed.iter().map(|m| (kind(m), id_of(m))).collect();
    assert_eq!(got, vec![("insert", 6), ("insert", 7), ("insert", 8), ("update", 2), ("delete", 3), ("insert", 9)]);
    assert_eq!(
        (missed[3]["rows"][0]["body"].as_str(), missed[3]["old_values"][0]["body"].as_str()),
        (Some("edited"), Some("row 2"))
    );
    assert_eq!(missed[4]["old_values"][0]["_deleted"], true);
    assert_quiet(&mut ws, "exactly the missed changes").await;
    insert(&alice, 10, "live", 10).await;
    let live = changes(&mut ws, "r", 1, "live change after the replay").await;
    assert_eq!((id_of(&live[0]), live[0]["seq"].as_u64()), (10, Some(7)));
    assert!(live[0]["commit_seq"].as_u64().unwrap() > missed[5]["commit_seq"].as_u64().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_seq_option_errors() {
    let cluster = start(SETUP).await;
    let alice = cluster.client("alice");
    insert(&alice, 1, "x", 1).await;
    let sql = "SELECT * FROM app.m";
    let mut ws = connect(&cluster, "alice").await;
    let cases = [
        ("with_last_rows", json!({"from_seq": 1, "last_rows": 5}), "INVALID_OPTION"),
        ("with_since", json!({"from_seq": 1, "since": "2025-01-01T00:00:00Z"}), "INVALID_OPTION"),
        ("with_from_id", json!({"from_seq": 1, "from_id": 1}), "INVALID_OPTION"),
        ("beyond_newest", json!({"from_seq": 1_000_000_000_000_000u64}), "RESUME_EXPIRED"),
    ];
    for (id, options, code) in cases {
        send(&mut ws, sub(id, sql, options)).await;
        let err = expect_error(&mut ws, id, code).await;
        eprintln!("{id}: {}", err["message"]);
    }
    assert!(live_rows(&cluster, "user_id = 'alice'").await.is_empty(), "failed subscriptions are not registered");
    subscribe(&mut ws, "ok", sql, Json::Null).await;
    insert(&alice, 2, "y", 2).await;
    assert_eq!(id_of(&changes(&mut ws, "ok", 1, "the connection still works").await[0]), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_and_stream_have_no_gap_and_no_overlap() {
    const WRITERS: i64 = 3;
    let cluster = start(SETUP).await;
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicI64::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (client, stop, written) = (cluster.client("alice"), stop.clone(), written.clone());
            tokio::spawn(async move {
                let mut ids = Vec::new();
                let mut k = 0;
                while !stop.load(Ordering::Relaxed) {
                    let id = k * WRITERS + w + 1;
                    k += 1;
                    insert(&client, id, "w", w).await;
                    ids.push(id);
                    written.fetch_add(1, Ordering::Relaxed);
                }
                ids
            })
        })
        .collect();
    wait_for(Duration::from_secs(30), "200 rows written", || async {
        (written.load(Ordering::Relaxed) >= 200).then_some(())
    })
    .await;
    let mut ws = connect(&cluster, "alice").await;
    send(&mut ws, sub("snap", "SELECT * FROM app.m", json!({"last_rows": 10000}))).await;
    assert_ack(&recv(&mut ws, "ack").await, "snap");
    let init = recv(&mut ws, "initial_data").await;
    let at_snapshot = written.load(Ordering::Relaxed);
    assert_eq!(
        (init["type"].as_str(), init["subscription_id"].as_str()),
        (Some("initial_data"), Some("snap")),
        "{init}"
    );
    wait_for(Duration::from_secs(30), "300 rows written after the snapshot", || async {
        (written.load(Ordering::Relaxed) >= at_snapshot + 300).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut all = BTreeSet::new();
    for w in writers {
        all.extend(join(w).await);
    }
    let snap_seq = init["commit_seq"].as_u64().unwrap_or_else(|| panic!("commit_seq: {init}"));
    assert_eq!(init["has_more"], false);
    let snap_rows = init["rows"].as_array().expect("rows");
    let snap: BTreeSet<i64> = snap_rows.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(snap.len(), snap_rows.len(), "duplicate rows in the snapshot");
    assert_eq!(init["count"], snap.len());
    assert!(snap.is_subset(&all), "snapshot holds rows nobody wrote");
    let msgs = changes(&mut ws, "snap", all.len() - snap.len(), "changes after the snapshot").await;
    assert_sequenced(&msgs, "after the snapshot");
    let mut streamed = BTreeSet::new();
    for m in &msgs {
        assert_eq!(kind(m), "insert", "{m}");
        let id = id_of(m);
        assert!(!snap.contains(&id), "row {id} is both in the snapshot and a change: {m}");
        assert!(streamed.insert(id), "row {id} delivered twice");
        assert!(
            m["commit_seq"].as_u64().unwrap() > snap_seq,
            "change at or before the snapshot position {snap_seq}: {m}"
        );
    }
    let union: BTreeSet<i64> = snap.union(&streamed).copied().collect();
    assert_eq!(union, all, "every written row exactly once");
    eprintln!(
        "{} rows written by {WRITERS} writers: {} in the snapshot (commit_seq {snap_seq}), {} as changes",
        all.len(),
        snap.len(),
        streamed.len()
    );
    assert_quiet(&mut ws, "nothing beyond the written rows").await;
}

// ---------------------------------------------------------------------------------------------
// Isolation with generated predicates
// ---------------------------------------------------------------------------------------------

/// xorshift64: a deterministic generator for reproducible predicates.
struct XorShift(u64);

impl XorShift {
    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

const TAGS: [&str; 4] = ["red", "green", "blue", "rose"];

fn atom(rng: &mut XorShift) -> String {
    let num = |rng: &mut XorShift| rng.below(23) as i64 - 2;
    match rng.below(14) {
        0 | 1 => {
            let op = rng.pick(&["=", "<>", "<", "<=", ">", ">="]);
            format!("n {op} {}", num(rng))
        }
        2 => {
            let a = num(rng);
            format!("n BETWEEN {a} AND {}", a + rng.below(8) as i64)
        }
        3 => format!("n % {} = {}", rng.below(3) + 2, rng.below(2)),
        4 => format!("tag = '{}'", rng.pick(&TAGS)),
        5 => format!("tag <> '{}'", rng.pick(&TAGS)),
        6 => format!("tag LIKE '{}'", rng.pick(&["r%", "%e", "g_een", "%l%", "b%", "%"])),
        7 => format!("tag IN ('{}', '{}')", rng.pick(&TAGS), rng.pick(&TAGS)),
        8 => format!("tag NOT IN ('{}')", rng.pick(&TAGS)),
        9 => "tag IS NULL".into(),
        10 => "tag IS NOT NULL".into(),
        11 => "n IS NULL".into(),
        12 => "n IS NOT NULL".into(),
        _ => rng.pick(&["owner = 'B'", "owner <> 'A'", "owner = 'A'", "owner LIKE 'B%'", "owner IS NULL"]).into(),
    }
}

fn predicate(rng: &mut XorShift, depth: u32) -> String {
    if depth == 0 || rng.below(4) == 0 {
        return atom(rng);
    }
    match rng.below(5) {
        0 | 1 => format!("({} AND {})", predicate(rng, depth - 1), predicate(rng, depth - 1)),
        2 | 3 => format!("({} OR {})", predicate(rng, depth - 1), predicate(rng, depth - 1)),
        _ => format!("NOT ({})", predicate(rng, depth - 1)),
    }
}

fn sql_value(v: Option<impl std::fmt::Display>, quote: bool) -> String {
    match v {
        None => "NULL".into(),
        Some(v) if quote => format!("'{v}'"),
        Some(v) => v.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_with_generated_predicates() {
    const PREDICATES: usize = 300;
    const PER_CONNECTION: usize = 50;
    let seed = std::env::var("KALAM_LIVE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x9E37_79B9_7F4A_7C15u64);
    let cluster = start_cfg(
        "[rate_limit]\nmax_subscriptions_per_user = 1000\n",
        "CREATE NAMESPACE app; CREATE USER TABLE app.t (id BIGINT PRIMARY KEY, owner TEXT, n INT, tag TEXT)",
    )
    .await;
    let (user_a, user_b) = (cluster.client("user_a"), cluster.client("user_b"));
    let mut rng = XorShift(seed | 1);
    let mut seen = HashSet::new();
    let mut preds = Vec::new();
    while preds.len() < PREDICATES {
        let p = predicate(&mut rng, 3);
        if seen.insert(p.clone()) {
            preds.push(p);
        }
    }
    eprintln!("seed {seed:#x} (KALAM_LIVE_SEED); e.g. {} | {} | {}", preds[0], preds[1], preds[2]);

    // User A subscribes with every predicate, 50 per connection.
    let mut readers = Vec::new();
    let mut targets = Vec::new();
    for (c, chunk) in preds.chunks(PER_CONNECTION).enumerate() {
        let mut ws = connect(&cluster, "user_a").await;
        let subs: Vec<Json> = chunk
            .iter()
            .enumerate()
            .map(|(i, p)| json!({"id": format!("p{}", c * PER_CONNECTION + i), "sql": format!("SELECT * FROM app.t WHERE {p}")}))
            .collect();
        send(&mut ws, json!({"type": "subscribe", "subscriptions": subs})).await;
        let mut acked = BTreeSet::new();
        for _ in 0..chunk.len() {
            let m = recv(&mut ws, &format!("acks on connection {c}")).await;
            if m["type"] != "subscription_ack" {
                let idx: usize =
                    m["subscription_id"].as_str().and_then(|s| s.strip_prefix('p')?.parse().ok()).unwrap_or(usize::MAX);
                panic!("subscription refused: {m} (predicate {:?})", preds.get(idx));
            }
            acked.insert(m["subscription_id"].as_str().unwrap().to_owned());
        }
        assert_eq!(acked.len(), chunk.len());
        let (tx, rx) = watch::channel(None);
        targets.push(tx);
        readers.push(tokio::spawn(collect_until(ws, rx, Duration::from_secs(60), format!("connection {c}"))));
    }
    let registered = live_rows(&cluster, "user_id = 'user_a'").await.len();
    assert_eq!(registered, PREDICATES, "every predicate registered");

    // B writes every (n, tag) combination, so each satisfiable predicate matches B rows; then updates.
    let ns: Vec<Option<i64>> = std::iter::once(None).chain((-2..=20).map(Some)).collect();
    let tags: Vec<Option<&str>> = std::iter::once(None).chain(TAGS.iter().copied().map(Some)).collect();
    let mut values = Vec::new();
    for n in &ns {
        for tag in &tags {
            values.push(format!("({}, 'B', {}, {})", values.len() + 1, sql_value(*n, false), sql_value(*tag, true)));
        }
    }
    let b_rows = values.len();
    exec(&user_b, &format!("INSERT INTO app.t (id, owner, n, tag) VALUES {}", values.join(", "))).await;
    exec(&user_b, "UPDATE app.t SET n = n + 1 WHERE n < 5").await;
    exec(&user_b, "DELETE FROM app.t WHERE tag = 'rose'").await;
    // A writes a few rows (ids overlapping B's: partitions are separate).
    for id in 1..=12i64 {
        let n = if id == 1 { None } else { Some(rng.below(25) as i64 - 3) };
        let tag = if id == 2 { None } else { Some(rng.pick(&TAGS)) };
        exec(
            &user_a,
            &format!(
                "INSERT INTO app.t (id, owner, n, tag) VALUES ({id}, 'A', {}, {})",
                sql_value(n, false),
                sql_value(tag, true)
            ),
        )
        .await;
    }

    // What each predicate selects, as seen by A over HTTP; and how many B rows it would match.
    let mut expected: Vec<BTreeSet<i64>> = Vec::new();
    let mut matching_b = 0;
    for p in &preds {
        let ids = rows(&user_a, &format!("SELECT id FROM app.t WHERE {p}")).await;
        expected.push(ids.iter().map(|r| r["id"].as_i64().unwrap()).collect());
        let b = rows(&user_b, &format!("SELECT count(*) AS c FROM app.t WHERE {p}")).await;
        if b[0]["c"].as_i64().unwrap() > 0 {
            matching_b += 1;
        }
    }
    let nonempty = expected.iter().filter(|e| !e.is_empty()).count();
    eprintln!(
        "{PREDICATES} predicates: {matching_b} match B's rows ({b_rows} written), {nonempty} select some of A's 12 rows"
    );
    assert!(matching_b * 2 > PREDICATES, "the generated predicates must mostly match B's rows");
    for (c, tx) in targets.iter().enumerate() {
        let due: usize = expected[c * PER_CONNECTION..].iter().take(PER_CONNECTION).map(BTreeSet::len).sum();
        tx.send(Some(due)).expect("reader alive");
    }
    let mut got: BTreeMap<String, Vec<Json>> = BTreeMap::new();
    for reader in readers {
        for m in join(reader).await {
            assert_eq!(m["type"], "change", "{m}");
            got.entry(m["subscription_id"].as_str().expect("subscription_id").to_owned()).or_default().push(m);
        }
    }
    let mut delivered = 0;
    for (i, p) in preds.iter().enumerate() {
        let msgs = got.remove(&format!("p{i}")).unwrap_or_default();
        delivered += msgs.len();
        for m in &msgs {
            assert_eq!(row(m)["owner"], "A", "user B's row reached user A's subscription p{i} ({p}): {m}");
            assert_eq!(kind(m), "insert", "A only inserted: p{i} ({p}): {m}");
        }
        let ids: Vec<i64> = msgs.iter().map(id_of).collect();
        let set: BTreeSet<i64> = ids.iter().copied().collect();
        assert_eq!(set.len(), ids.len(), "p{i} ({p}) got duplicates: {ids:?}");
        assert_eq!(set, expected[i], "p{i} ({p}): delivered ids vs. SELECT as A");
        assert_sequenced(&msgs, &format!("p{i}"));
    }
    assert!(got.is_empty(), "messages for unknown subscriptions: {:?}", got.keys());
    eprintln!("{delivered} notifications delivered to {PREDICATES} subscriptions, none of them B's");
}

// ---------------------------------------------------------------------------------------------
// Slow consumers and resource clean-up
// ---------------------------------------------------------------------------------------------

/// A WebSocket client written directly on a TCP socket: a test can stop reading it (a slow
/// consumer), send arbitrary text and see close codes.
struct RawWs {
    tcp: tokio::net::TcpStream,
    buf: Vec<u8>,
}

/// What a raw read produced.
enum Frame {
    Text(String),
    Close(Option<u16>),
    Other,
}

impl RawWs {
    async fn connect(port: u16, user: &str, recv_buffer: Option<u32>) -> RawWs {
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

    async fn send_text(&mut self, text: &str) -> std::io::Result<()> {
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
    async fn more(&mut self) -> std::io::Result<bool> {
        let mut chunk = [0u8; 64 * 1024];
        let n = self.tcp.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    async fn fill(&mut self, n: usize) -> std::io::Result<bool> {
        while self.buf.len() < n {
            if !self.more().await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// One frame: FIN bit, opcode, payload; `None` at end of stream.
    async fn frame(&mut self) -> std::io::Result<Option<(bool, u8, Vec<u8>)>> {
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
    async fn read(&mut self) -> std::io::Result<Option<Frame>> {
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
    async fn next_json(&mut self, wait: Duration) -> Option<Json> {
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

/// Resident set size of `pid` in kB (`VmRSS` of /proc/<pid>/status); `None` once it is gone.
fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_disconnected_without_hurting_others() {
    const ROWS: i64 = 3000;
    const BATCH: i64 = 20;
    const BODY: usize = 20 * 1024;
    const RSS_BOUND_KB: u64 = 200 * 1024;
    let cluster = start_cfg(
        "[websocket]\nmax_pending_messages = 50\nclient_timeout_seconds = 300\n",
        "CREATE NAMESPACE app; CREATE USER TABLE app.big (id BIGINT PRIMARY KEY, body TEXT)",
    )
    .await;
    let lived = cluster.running_pid("kalam-lived").await;
    // The slow consumer: a small receive buffer, and it never reads until the end.
    let mut slow = RawWs::connect(cluster.port, "alice", Some(64 * 1024)).await;
    slow.send_text(&sub("slow", "SELECT * FROM app.big", Json::Null).to_string()).await.expect("subscribe");
    wait_for(Duration::from_secs(10), "slow subscription registered", || async {
        (!live_rows(&cluster, "subscription_id = 'slow'").await.is_empty()).then_some(())
    })
    .await;
    let mut fast = connect(&cluster, "alice").await;
    subscribe(&mut fast, "fast", "SELECT * FROM app.big", Json::Null).await;
    let reader = spawn_changes(fast, "fast", ROWS as usize, "the normal subscriber");

    let rss_before = rss_kb(lived).expect("kalam-lived VmRSS");
    let peak = Arc::new(AtomicU64::new(rss_before));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                let Some(rss) = rss_kb(lived) else { break };
                peak.fetch_max(rss, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let alice = cluster.client("alice");
    let pad = "x".repeat(BODY);
    let started = Instant::now();
    for batch in 0..ROWS / BATCH {
        let values: Vec<String> =
            (1..=BATCH).map(|i| batch * BATCH + i).map(|id| format!("({id}, '{id}:{pad}')")).collect();
        exec(&alice, &format!("INSERT INTO app.big (id, body) VALUES {}", values.join(", "))).await;
    }
    let written = started.elapsed();
    let (_fast, msgs) = join(reader).await;
    eprintln!(
        "{ROWS} rows of {BODY} bytes written in {written:?}; normal subscriber had all after {:?}",
        started.elapsed()
    );
    assert_sequenced(&msgs, "normal subscriber");
    for (m, id) in msgs.iter().zip(1..) {
        assert_eq!(id_of(m), id, "normal subscriber in commit order");
        assert!(row(m)["body"].as_str().is_some_and(|b| b.len() == BODY + format!("{id}:").len()), "full row data");
    }
    drop(msgs);
    // The slow consumer, still not reading, must have been dropped from system.live_queries.
    let waited = Instant::now();
    let removed = loop {
        if live_rows(&cluster, "subscription_id = 'slow'").await.is_empty() {
            break Some(waited.elapsed());
        }
        if waited.elapsed() > Duration::from_secs(30) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("slow consumer's row removed: {removed:?} after the normal subscriber finished");
    sampling.store(false, Ordering::Relaxed);
    join(sampler).await;
    let (peak, after) = (peak.load(Ordering::Relaxed), rss_kb(lived).unwrap_or_default());
    eprintln!("kalam-lived VmRSS: before {rss_before} kB, peak {peak} kB, after {after} kB");
    assert!(peak < rss_before + RSS_BOUND_KB, "kalam-lived grew by {} kB (bound {RSS_BOUND_KB} kB)", peak - rss_before);

    // Now read what the slow consumer was sent.
    let (mut delivered, mut error, mut close, mut end) = (0u64, None::<Json>, None::<Option<u16>>, "end of stream");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if Instant::now() >= deadline {
            end = "still open after 15 s of reading";
            break;
        }
        match tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), slow.read()).await {
            Err(_) => continue,
            Ok(Err(e)) => {
                eprintln!("slow consumer read: {e}");
                end = "reset";
                break;
            }
            Ok(Ok(None)) => break,
            Ok(Ok(Some(Frame::Close(code)))) => {
                close = Some(code);
                end = "close frame";
                break;
            }
            Ok(Ok(Some(Frame::Other))) => {}
            Ok(Ok(Some(Frame::Text(t)))) => {
                let m: Json = serde_json::from_str(&t).expect("JSON message");
                match m["type"].as_str() {
                    Some("change") => {
                        assert!(error.is_none(), "a change after the SLOW_CONSUMER error: seq {}", m["seq"]);
                        delivered += 1;
                        assert_eq!(m["seq"], delivered, "no gap in what the slow consumer did get");
                    }
                    Some("error") => error = Some(m),
                    Some("subscription_ack") if delivered == 0 => {}
                    _ => panic!("unexpected message for the slow consumer: {t:.200}"),
                }
            }
        }
    }
    let outcome = format!(
        "{delivered} changes read, then error {:?}, ended by {end} {close:?}",
        error.as_ref().map(|e| e["code"].clone())
    );
    eprintln!("slow consumer: {outcome}");
    assert!(
        removed.is_some(),
        "the slow consumer's live query was still in system.live_queries 30 s after the normal subscriber had \
         all {ROWS} changes (max_pending_messages = 50); reading its socket afterwards: {outcome}"
    );
    assert!(end != "still open after 15 s of reading", "the slow consumer's socket was never closed: {outcome}");
    assert!(delivered < ROWS as u64, "the slow consumer was never cut off: {outcome}");
    if let Some(e) = &error {
        assert_eq!(e["code"], "SLOW_CONSUMER", "{e}");
    }
    if let Some(code) = close {
        assert_eq!(code, Some(1008), "close code for a slow consumer");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_leave_no_resources_behind() {
    const TASKS: usize = 50;
    const CYCLES: usize = 200;
    let cluster = start_cfg("[rate_limit]\nmax_subscriptions_per_user = 100000\n", SETUP).await;
    let live = kalam_rpc::transport::connect_live(&cluster.run_dir()).await.expect("live RPC");
    // A long-lived subscriber that must not be disturbed by the churn around it.
    let mut keeper = connect(&cluster, "churn0").await;
    subscribe(&mut keeper, "keeper", "SELECT * FROM app.m", Json::Null).await;
    let (keeper_due, keeper_rx) = watch::channel(None);
    let keeper_reader = tokio::spawn(collect_until(keeper, keeper_rx, Duration::from_secs(400), "keeper".into()));
    let before = live.stats(tarpc::context::current()).await.expect("stats");
    eprintln!("before: {before:?}");

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let clients: Vec<KalamLinkClient> = (0..TASKS).map(|t| cluster.client(&format!("churn{t}"))).collect();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut keeper_ids = Vec::new();
            let mut id = 0i64;
            while !stop.load(Ordering::Relaxed) {
                id += 1;
                insert(&clients[id as usize % TASKS], id, "churn", id).await;
                if (id as usize).is_multiple_of(TASKS) {
                    keeper_ids.push(id);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            keeper_ids
        })
    };

    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        let client = cluster.client(&format!("churn{t}"));
        tasks.spawn(async move {
            let mut acks = 0;
            for c in 0..CYCLES {
                let mut ws = match tokio::time::timeout(MSG_TIMEOUT, client.connect_live()).await {
                    Ok(Ok(ws)) => ws,
                    Ok(Err(e)) => panic!("task {t} cycle {c}: connect: {e}"),
                    Err(_) => panic!("task {t} cycle {c}: connect took more than {MSG_TIMEOUT:?}"),
                };
                let sql = format!("SELECT * FROM app.m WHERE n > {}", c % 7);
                send(&mut ws, sub(&format!("c{c}"), &sql, Json::Null)).await;
                match c % 3 {
                    // Abrupt: the socket is dropped without a close frame.
                    0 => drop(ws),
                    1 => {
                        let ack = recv(&mut ws, &format!("task {t} cycle {c}: ack")).await;
                        assert_ack(&ack, &format!("c{c}"));
                        acks += 1;
                        let _ = ws.close().await;
                    }
                    _ => {
                        let _ = ws.close().await;
                    }
                }
            }
            acks
        });
    }
    let mut acks = 0;
    let churn = tokio::time::timeout(Duration::from_secs(240), async {
        while let Some(r) = tasks.join_next().await {
            acks += match r {
                Ok(n) => n,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => panic!("churn task: {e}"),
            };
        }
    })
    .await;
    assert!(churn.is_ok(), "{} connect/subscribe/close cycles did not finish within 240 s", TASKS * CYCLES);
    let elapsed = started.elapsed();
    eprintln!(
        "{} cycles in {elapsed:?} ({:.0}/s), {acks} acks read",
        TASKS * CYCLES,
        (TASKS * CYCLES) as f64 / elapsed.as_secs_f64()
    );
    stop.store(true, Ordering::Relaxed);
    let keeper_ids = join(writer).await;

    let settle = Instant::now();
    let (back, last) = loop {
        let s = live.stats(tarpc::context::current()).await.expect("stats");
        let ok = s.connections == before.connections
            && s.subscriptions == before.subscriptions
            && s.partitions == before.partitions
            && s.channels == before.channels
            && s.tasks <= before.tasks + 2;
        if ok || settle.elapsed() > Duration::from_secs(10) {
            break (ok, s);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("after {:?}: {last:?}", settle.elapsed());
    assert!(back, "kalam-lived did not return to its starting counts within 10 s: before {before:?}, after {last:?}");
    let remaining = live_rows(&cluster, "user_id LIKE 'churn%'").await;
    assert_eq!(remaining.len(), 1, "only the keeper is left in system.live_queries: {remaining:?}");

    keeper_due.send(Some(keeper_ids.len())).expect("keeper reader alive");
    let got = join(keeper_reader).await;
    assert!(got.iter().all(|m| m["type"] == "change" && m["subscription_id"] == "keeper"), "keeper messages");
    assert_sequenced(&got, "keeper");
    assert_eq!(got.iter().map(id_of).collect::<Vec<_>>(), keeper_ids, "the keeper got every write of its partition");
    eprintln!("keeper received all {} changes of its partition during the churn", keeper_ids.len());
}
