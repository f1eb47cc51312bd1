//! Live-query checker (api.md §4.3, §4.6, §4.8): four writers insert, update and delete rows of
//! three users while six subscribers per user, each with its own filter and connection, drop
//! their sockets at random (close frame, plain TCP drop, or unsubscribe on the same socket) and
//! resume with `from_seq`; kalam-lived and kalamd are each killed twice during the run.
//!
//! The oracle is the unfiltered subscriber of each user. Its stream is checked to be a complete
//! history: replayed onto the genesis row, every update's and delete's previous version must be
//! the version the stream itself last produced for that row, and the result must equal the table
//! (soft-deleted rows included) as read over HTTP at the end. Each filtered subscriber must then
//! have received exactly what §4.6 derives from that stream: same change types, commit_seq,
//! timestamps and (projected) rows, in the same order, with no gap, duplicate or reorder.

#[path = "live_support/checker.rs"]
mod checker;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kalam_e2e::{Cluster, rows, wait_for};
use kalam_link::KalamLinkClient;
use kalam_link::live::LiveConnection;
use serde_json::{Value as Json, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use checker::*;

const USERS: [&str; 3] = ["alice", "bob", "carol"];
const WRITERS: u64 = 4;
const SUB_ID: &str = "items";
const SETUP: &str =
    "CREATE NAMESPACE app; CREATE USER TABLE app.items (id BIGINT PRIMARY KEY, grp INT, v INT, note TEXT)";
const FINAL_STATE_SQL: &str = "SELECT id, grp, v, note, _updated, _deleted FROM app.items \
     WHERE _deleted = true OR _deleted = false ORDER BY id";
const NOTES: [Option<&str>; 8] =
    [Some("apple"), Some("avocado"), Some("Apple"), Some("banana"), Some("a"), Some(""), Some("cherry"), None];

/// A subscriber must be back on its subscription this long after losing it.
const RESUME_DEADLINE: Duration = Duration::from_secs(60);
/// Longest wait for `subscription_ack` / `unsubscribed`.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A subscriber that heard nothing for this long sends a JSON ping.
const SILENCE: Duration = Duration::from_secs(10);
/// One HTTP request; a writer retries after it (kalamd may be restarting).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A statement that has not committed after this long fails the test.
const WRITE_DEADLINE: Duration = Duration::from_secs(90);
/// Statements the writers complete between two restarts.
const WRITES_BETWEEN_RESTARTS: u64 = 500;
/// After a kill -9 of kalam-lived, its sockets' closes are attributed to it for this long.
const LIVED_CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Closes this long after a kalamd restart still count against it.
const KALAMD_CLOSE_GRACE: Duration = Duration::from_secs(2);
/// How long the final stage waits for every subscriber to catch up.
const CATCH_UP: Duration = Duration::from_secs(60);

const RUN: u8 = 0;
/// Writers stop, subscribers stop dropping their sockets.
const CALM: u8 = 1;
const STOP: u8 = 2;

/// xorshift64*, seeded through splitmix64 so that nearby seeds give unrelated streams.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from))
    }
}

/// What one subscriber saw, shared with the test's controller.
#[derive(Default)]
struct SubState {
    changes: Vec<Change>,
    /// Currently holding an acknowledged subscription.
    subscribed: bool,
    /// Acknowledged subscriptions (the first one and every resume).
    subscriptions: u64,
    connections: u64,
    connect_failures: u64,
    /// Subscribes refused while kalamd restarts (`SERVICE_UNAVAILABLE`), retried.
    refusals: u64,
    own_closes: u64,
    own_drops: u64,
    unsubscribes: u64,
    /// Sockets the server closed (or that broke) under an active subscriber: when, and why.
    server_closes: Vec<(Instant, String)>,
    violations: Vec<String>,
}

struct Handle {
    user: &'static str,
    filter: Filter,
    state: Arc<Mutex<SubState>>,
    task: JoinHandle<()>,
}

impl Handle {
    fn name(&self) -> String {
        format!("{}/{:?}", self.user, self.filter)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SubState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

enum Subscribed {
    Yes,
    /// Refused for now (kalamd restarting); try again.
    Refused,
    Lost(String),
    Failed,
}

enum Outcome {
    Stop,
    /// Time for a random disconnect.
    Due,
    Lost(String),
}

/// One subscription kept alive across reconnects and resumes.
struct Subscriber {
    client: KalamLinkClient,
    filter: Filter,
    state: Arc<Mutex<SubState>>,
    phase: watch::Receiver<u8>,
    rng: Rng,
    /// Highest commit_seq received, starting from the genesis position.
    last: u64,
    /// The `seq` the next change of the current subscription must carry.
    expect_seq: u64,
}

impl Subscriber {
    fn with_state<T>(&self, f: impl FnOnce(&mut SubState) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn violation(&self, text: String) {
        self.with_state(|s| s.violations.push(text));
    }

    fn phase(&self) -> u8 {
        *self.phase.borrow()
    }

    fn next_disconnect(&mut self) -> tokio::time::Instant {
        let wait = if self.phase() == RUN { self.rng.millis(300, 3_000) } else { Duration::from_secs(3_600) };
        tokio::time::Instant::now() + wait
    }

    async fn run(mut self) {
        let mut conn: Option<LiveConnection> = None;
        let mut lost_at = Instant::now();
        while self.phase() != STOP {
            let mut ws = match conn.take() {
                Some(ws) => ws,
                None => match self.connect(lost_at).await {
                    Some(ws) => ws,
                    None => break,
                },
            };
            match self.subscribe(&mut ws).await {
                Subscribed::Yes => {}
                Subscribed::Refused => {
                    if lost_at.elapsed() > RESUME_DEADLINE {
                        self.violation(format!("subscribe still refused {RESUME_DEADLINE:?} after losing it"));
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    conn = Some(ws);
                    continue;
                }
                Subscribed::Lost(reason) => {
                    self.with_state(|s| s.server_closes.push((Instant::now(), format!("while subscribing: {reason}"))));
                    continue;
                }
                Subscribed::Failed => break,
            }
            self.with_state(|s| s.subscribed = true);
            let outcome = self.receive(&mut ws).await;
            self.with_state(|s| s.subscribed = false);
            lost_at = Instant::now();
            match outcome {
                Outcome::Stop => {
                    let _ = tokio::time::timeout(CONNECT_TIMEOUT, ws.close()).await;
                    break;
                }
                Outcome::Lost(reason) => self.with_state(|s| s.server_closes.push((lost_at, reason))),
                Outcome::Due => match self.rng.below(3) {
                    0 => {
                        self.with_state(|s| s.own_closes += 1);
                        let _ = tokio::time::timeout(CONNECT_TIMEOUT, ws.close()).await;
                    }
                    1 => {
                        self.with_state(|s| s.own_drops += 1);
                        drop(ws);
                    }
                    _ => {
                        self.with_state(|s| s.unsubscribes += 1);
                        match self.unsubscribe(&mut ws).await {
                            Ok(()) => conn = Some(ws),
                            Err(reason) => self.with_state(|s| {
                                s.server_closes.push((Instant::now(), format!("while unsubscribing: {reason}")))
                            }),
                        }
                    }
                },
            }
        }
    }

    /// Opens a socket, retrying with back-off until `RESUME_DEADLINE` after `lost_at`.
    async fn connect(&mut self, lost_at: Instant) -> Option<LiveConnection> {
        let mut backoff = Duration::from_millis(50);
        while self.phase() != STOP {
            if let Ok(Ok(ws)) = tokio::time::timeout(CONNECT_TIMEOUT, self.client.connect_live()).await {
                self.with_state(|s| s.connections += 1);
                return Some(ws);
            }
            self.with_state(|s| s.connect_failures += 1);
            if lost_at.elapsed() > RESUME_DEADLINE {
                self.violation(format!("no WebSocket connection within {RESUME_DEADLINE:?}"));
                return None;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
        None
    }

    /// Subscribes with `from_seq` = the last commit_seq received and waits for the ack.
    async fn subscribe(&mut self, ws: &mut LiveConnection) -> Subscribed {
        let request = json!({"type": "subscribe", "subscriptions": [
            {"id": SUB_ID, "sql": self.filter.sql(), "options": {"from_seq": self.last}}]});
        if let Err(e) = ws.send_json(&request).await {
            return Subscribed::Lost(e.to_string());
        }
        let deadline = tokio::time::Instant::now() + ANSWER_TIMEOUT;
        loop {
            let msg = match tokio::time::timeout_at(deadline, ws.next_message()).await {
                Err(_) => {
                    self.violation(format!(
                        "no answer to subscribe (from_seq {}) within {ANSWER_TIMEOUT:?}",
                        self.last
                    ));
                    return Subscribed::Lost("no subscription_ack".into());
                }
                Ok(Ok(Some(msg))) => msg,
                Ok(Ok(None)) => return Subscribed::Lost("closed".into()),
                Ok(Err(e)) => return Subscribed::Lost(e.to_string()),
            };
            match msg["type"].as_str() {
                Some("subscription_ack") if msg["subscription_id"] == SUB_ID => {
                    self.expect_seq = 1;
                    self.with_state(|s| s.subscriptions += 1);
                    return Subscribed::Yes;
                }
                Some("error") if matches!(msg["code"].as_str(), Some("SERVICE_UNAVAILABLE" | "SHUTTING_DOWN")) => {
                    self.with_state(|s| s.refusals += 1);
                    return Subscribed::Refused;
                }
                Some("error") => {
                    self.violation(format!("subscribe with from_seq {} refused: {msg}", self.last));
                    return Subscribed::Failed;
                }
                Some("change") => self.violation(format!("change before subscription_ack: {msg}")),
                _ => {}
            }
        }
    }

    /// Reads until the phase stops, a random disconnect is due, or the socket goes away.
    async fn receive(&mut self, ws: &mut LiveConnection) -> Outcome {
        let mut until = self.next_disconnect();
        let mut heard = tokio::time::Instant::now();
        let mut pinged = false;
        loop {
            let msg = tokio::select! {
                changed = self.phase.changed() => {
                    if changed.is_err() || self.phase() == STOP {
                        return Outcome::Stop;
                    }
                    until = self.next_disconnect();
                    continue;
                }
                _ = tokio::time::sleep_until(until) => return Outcome::Due,
                // A quiet subscription is probed with a JSON ping: a socket whose server side
                // died without closing it must not go unnoticed.
                _ = tokio::time::sleep_until(heard + SILENCE) => {
                    if pinged {
                        return Outcome::Lost(format!("silent for {:?}, ping unanswered", SILENCE * 2));
                    }
                    if let Err(e) = ws.send_json(&json!({"type": "ping"})).await {
                        return Outcome::Lost(e.to_string());
                    }
                    (heard, pinged) = (tokio::time::Instant::now(), true);
                    continue;
                }
                msg = ws.next_message() => msg,
            };
            (heard, pinged) = (tokio::time::Instant::now(), false);
            match msg {
                Ok(Some(msg)) => self.on_message(&msg),
                Ok(None) => return Outcome::Lost("closed by the server".into()),
                Err(e) => return Outcome::Lost(e.to_string()),
            }
        }
    }

    /// Unsubscribes on the same socket; changes that arrive before `unsubscribed` still count.
    async fn unsubscribe(&mut self, ws: &mut LiveConnection) -> Result<(), String> {
        let request = json!({"type": "unsubscribe", "subscription_ids": [SUB_ID]});
        ws.send_json(&request).await.map_err(|e| e.to_string())?;
        let deadline = tokio::time::Instant::now() + ANSWER_TIMEOUT;
        loop {
            let msg = match tokio::time::timeout_at(deadline, ws.next_message()).await {
                Err(_) => {
                    self.violation(format!("no `unsubscribed` within {ANSWER_TIMEOUT:?}"));
                    return Err("no unsubscribed".into());
                }
                Ok(Ok(Some(msg))) => msg,
                Ok(Ok(None)) => return Err("closed".into()),
                Ok(Err(e)) => return Err(e.to_string()),
            };
            if msg["type"] == "unsubscribed" && msg["subscription_id"] == SUB_ID {
                if msg["reason"] != "client_request" {
                    self.violation(format!("unexpected unsubscribe reason: {msg}"));
                }
                return Ok(());
            }
            self.on_message(&msg);
        }
    }

    fn on_message(&mut self, msg: &Json) {
        match msg["type"].as_str() {
            Some("change") => {
                if msg["subscription_id"] != SUB_ID {
                    self.violation(format!("change for another subscription id: {msg}"));
                }
                let (seq, change) = match Change::parse(msg) {
                    Ok(parsed) => parsed,
                    Err(e) => return self.violation(e),
                };
                if seq != self.expect_seq {
                    self.violation(format!(
                        "seq {seq} where {} was due (commit_seq {}, from_seq {})",
                        self.expect_seq, change.commit_seq, self.last
                    ));
                }
                self.expect_seq = seq + 1;
                if change.commit_seq <= self.last {
                    self.violation(format!(
                        "commit_seq {} after {} (duplicate or reorder): {msg}",
                        change.commit_seq, self.last
                    ));
                }
                self.last = self.last.max(change.commit_seq);
                self.with_state(|s| s.changes.push(change));
            }
            Some("error") => self.violation(format!("error message on an open subscription: {msg}")),
            Some("subscription_ack" | "unsubscribed" | "initial_data") => {
                self.violation(format!("unexpected {msg}"));
            }
            // pong, and message types this test does not know (api.md: clients ignore them)
            _ => {}
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct WriterStats {
    statements: u64,
    retries: u64,
    duplicates: u64,
}

enum Executed {
    Done,
    /// CONSTRAINT_VIOLATION: the key is live (an earlier attempt whose answer was lost committed).
    Duplicate,
}

/// Runs one statement, retrying through restarts until it commits or is refused for good.
async fn execute(client: &KalamLinkClient, sql: &str, stats: &mut WriterStats) -> Result<Executed, String> {
    let deadline = Instant::now() + WRITE_DEADLINE;
    loop {
        let failure = match tokio::time::timeout(REQUEST_TIMEOUT, client.query_raw(sql)).await {
            Ok(Ok((200, _))) => return Ok(Executed::Done),
            Ok(Ok((status, resp))) => {
                let (code, message) = resp.error.map(|e| (e.code, e.message)).unwrap_or_default();
                if code == "CONSTRAINT_VIOLATION" {
                    stats.duplicates += 1;
                    return Ok(Executed::Duplicate);
                }
                if status < 500 {
                    return Err(format!("{sql}: HTTP {status} {code}: {message}"));
                }
                format!("HTTP {status} {code}")
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".to_owned(),
        };
        stats.retries += 1;
        if Instant::now() > deadline {
            return Err(format!("{sql}: not committed within {WRITE_DEADLINE:?} ({failure})"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A writer owns the ids `(w + 1) * 1_000_000 ..` in every user's partition, so writers never
/// touch the same row. Its notes of which ids are live only steer it; the oracle never reads them.
struct Writer {
    clients: Vec<KalamLinkClient>,
    rng: Rng,
    next_id: i64,
    live: Vec<Vec<i64>>,
    deleted: Vec<Vec<i64>>,
    stats: WriterStats,
}

fn sql_int(v: Option<i64>) -> String {
    v.map_or_else(|| "NULL".to_owned(), |v| v.to_string())
}

fn sql_text(v: Option<&str>) -> String {
    v.map_or_else(|| "NULL".to_owned(), |v| format!("'{v}'"))
}

impl Writer {
    fn new(w: u64, seed: u64) -> Writer {
        Writer {
            clients: Vec::new(),
            rng: Rng::new(seed),
            next_id: (w as i64 + 1) * 1_000_000,
            live: vec![Vec::new(); USERS.len()],
            deleted: vec![Vec::new(); USERS.len()],
            stats: WriterStats::default(),
        }
    }

    fn grp(&mut self) -> i64 {
        self.rng.below(4) as i64
    }

    fn v(&mut self) -> Option<i64> {
        (self.rng.below(10) != 0).then(|| self.rng.below(100) as i64)
    }

    fn note(&mut self) -> Option<&'static str> {
        NOTES[self.rng.below(NOTES.len() as u64) as usize]
    }

    fn row(&mut self, id: i64) -> String {
        let (grp, v, note) = (self.grp(), self.v(), self.note());
        format!("({id}, {grp}, {}, {})", sql_int(v), sql_text(note))
    }

    fn pick(&mut self, u: usize) -> i64 {
        let i = self.rng.below(self.live[u].len() as u64) as usize;
        self.live[u][i]
    }

    /// The next statement for user `u`, with the writer's notes already updated for it.
    fn statement(&mut self, u: usize) -> (String, Vec<i64>) {
        let roll = self.rng.below(100);
        if self.live[u].len() < 5 || roll < 35 {
            let n = 1 + self.rng.below(3) as i64;
            let ids: Vec<i64> = (self.next_id..self.next_id + n).collect();
            self.next_id += n;
            let values: Vec<String> = ids.iter().map(|&id| self.row(id)).collect();
            return (format!("INSERT INTO app.items (id, grp, v, note) VALUES {}", values.join(", ")), ids);
        }
        let id = self.pick(u);
        let sql = match roll {
            35..=49 => {
                let (grp, v) = (self.grp(), self.v());
                format!("UPDATE app.items SET grp = {grp}, v = {} WHERE id = {id}", sql_int(v))
            }
            50..=59 => {
                let note = self.note();
                format!("UPDATE app.items SET note = {} WHERE id = {id}", sql_text(note))
            }
            60..=69 => format!(
                "UPDATE app.items SET v = (v + 37) % 100, grp = (grp + 1) % 4 WHERE id BETWEEN {id} AND {}",
                id + 5
            ),
            70..=81 => {
                self.live[u].retain(|&x| x != id);
                self.deleted[u].push(id);
                format!("DELETE FROM app.items WHERE id = {id}")
            }
            82..=86 => format!("DELETE FROM app.items WHERE id BETWEEN {id} AND {} AND grp = 3", id + 8),
            _ if !self.deleted[u].is_empty() => {
                let i = self.rng.below(self.deleted[u].len() as u64) as usize;
                let again = self.deleted[u].swap_remove(i);
                let row = self.row(again);
                return (format!("INSERT INTO app.items (id, grp, v, note) VALUES {row}"), vec![again]);
            }
            _ => format!("UPDATE app.items SET v = NULL WHERE id = {id}"),
        };
        (sql, Vec::new())
    }

    async fn run(mut self, acked: Arc<AtomicU64>, phase: watch::Receiver<u8>) -> Result<WriterStats, String> {
        while *phase.borrow() == RUN {
            let u = self.rng.below(USERS.len() as u64) as usize;
            let (sql, inserted) = self.statement(u);
            let client = self.clients[u].clone();
            // Done or Duplicate alike: the rows are live now.
            execute(&client, &sql, &mut self.stats).await?;
            self.live[u].extend(inserted);
            self.stats.statements += 1;
            acked.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(self.rng.millis(3, 15)).await;
        }
        Ok(self.stats)
    }
}

/// Subscribes unfiltered, writes the genesis row (id 0) and returns its change: the position
/// every subscriber of `user` starts from, and the first version of the replayed state.
async fn genesis(client: &KalamLinkClient) -> (u64, Row) {
    let mut ws = client.connect_live().await.expect("connect");
    ws.subscribe("probe", Filter::All.sql()).await.expect("subscribe");
    let ack = next_message(&mut ws).await;
    assert_eq!(ack["type"], "subscription_ack", "{ack}");
    client.query("INSERT INTO app.items VALUES (0, 0, 0, 'genesis')").await.expect("genesis row");
    let msg = next_message(&mut ws).await;
    let (_, change) = Change::parse(&msg).expect("genesis change");
    let _ = ws.close().await;
    (change.commit_seq, change.new_row().expect("row").clone())
}

async fn next_message(ws: &mut LiveConnection) -> Json {
    tokio::time::timeout(ANSWER_TIMEOUT, ws.next_message())
        .await
        .expect("a message in time")
        .expect("WebSocket read")
        .expect("connection open")
}

fn seed() -> u64 {
    std::env::var("KALAMDB_CHECKER_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    })
}

/// The restarts of the run: which daemon, from just before the kill until it ran again.
struct Window {
    daemon: &'static str,
    start: Instant,
    end: Instant,
}

impl Window {
    fn covers(&self, t: Instant, grace: Duration) -> bool {
        self.start <= t && t <= self.end + grace
    }
}

/// Waits until the writers completed `more` statements (or one of them stopped).
async fn writes_progress(acked: &AtomicU64, writers: &[JoinHandle<Result<WriterStats, String>>], more: u64) {
    let target = acked.load(Ordering::Relaxed) + more;
    wait_for(Duration::from_secs(120), "writers to make progress", || async {
        (acked.load(Ordering::Relaxed) >= target || writers.iter().any(JoinHandle::is_finished)).then_some(())
    })
    .await;
}

/// Waits until every subscriber holds its subscription (or has given up).
async fn all_subscribed(subs: &[Handle]) {
    wait_for(RESUME_DEADLINE + Duration::from_secs(10), "every subscriber subscribed", || async {
        subs.iter().all(|s| s.task.is_finished() || s.lock().subscribed).then_some(())
    })
    .await;
}

fn reference<'a>(subs: &'a [Handle], user: &str) -> &'a Handle {
    subs.iter().find(|s| s.user == user && s.filter == Filter::All).expect("reference subscriber")
}

/// Writes the genesis row of every user and starts all subscribers from it; returns them with
/// the genesis rows (in `USERS` order).
async fn start_subscribers(cluster: &Cluster, seed: u64, phase: &watch::Receiver<u8>) -> (Vec<Handle>, Vec<Row>) {
    let mut genesis_rows = Vec::new();
    let mut subs = Vec::new();
    for (u, user) in USERS.into_iter().enumerate() {
        let client = cluster.client(user);
        let (base, row) = genesis(&client).await;
        genesis_rows.push(row);
        for (f, filter) in FILTERS.into_iter().enumerate() {
            let state = Arc::new(Mutex::new(SubState::default()));
            let subscriber = Subscriber {
                client: client.clone(),
                filter,
                state: state.clone(),
                phase: phase.clone(),
                rng: Rng::new(seed ^ ((u as u64 + 1) << 40) ^ ((f as u64 + 1) << 20)),
                last: base,
                expect_seq: 1,
            };
            subs.push(Handle { user, filter, state, task: tokio::spawn(subscriber.run()) });
        }
    }
    all_subscribed(&subs).await;
    (subs, genesis_rows)
}

/// After the writers stopped: writes a fence row per user, waits until each unfiltered
/// subscriber has it, derives every subscriber's expected stream and waits (bounded) until each
/// has received at least that much and the streams stay quiet.
async fn settle(cluster: &Cluster, subs: &[Handle], failures: &mut Vec<String>) -> Vec<Vec<Change>> {
    let mut fence_stats = WriterStats::default();
    for user in USERS {
        let fence = "INSERT INTO app.items VALUES (-1, 0, 0, 'fence')";
        if let Err(e) = execute(&cluster.client(user), fence, &mut fence_stats).await {
            failures.push(format!("fence for {user}: {e}"));
        }
    }
    let deadline = Instant::now() + CATCH_UP;
    for user in USERS {
        let reached = || reference(subs, user).lock().changes.iter().any(|c| c.kind == "insert" && c.id() == Some(-1));
        while !reached() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !reached() {
            failures.push(format!("{user}: the unfiltered subscriber never received the fence row"));
        }
    }
    let expected: Vec<Vec<Change>> =
        subs.iter().map(|s| expected_for(s.filter, &reference(subs, s.user).lock().changes)).collect();
    let caught_up = |i: usize| {
        let state = subs[i].lock();
        state.changes.len() >= expected[i].len()
            && expected[i].last().is_none_or(|e| state.changes.last().is_some_and(|c| c.commit_seq >= e.commit_seq))
    };
    while !(0..subs.len()).all(caught_up) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Nothing more may arrive: the streams must stay quiet for a second.
    let total = || subs.iter().map(|s| s.lock().changes.len()).sum::<usize>();
    let (mut since, mut seen) = (Instant::now(), total());
    while since.elapsed() < Duration::from_secs(1) && Instant::now() < deadline + Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if total() != seen {
            (since, seen) = (Instant::now(), total());
        }
    }
    expected
}

/// Replays each user's unfiltered stream and compares the result with the table over HTTP.
async fn check_references(cluster: &Cluster, subs: &[Handle], genesis_rows: &[Row], failures: &mut Vec<String>) {
    for (u, user) in USERS.into_iter().enumerate() {
        let all = reference(subs, user).lock().changes.clone();
        let replayed = replay(user, &genesis_rows[u], &all, failures);
        let table: BTreeMap<i64, Row> = rows(&cluster.client(user), FINAL_STATE_SQL)
            .await
            .into_iter()
            .map(|r| (r.get("id").and_then(Json::as_i64).expect("id"), r))
            .collect();
        if replayed != table {
            let ids: BTreeSet<i64> = replayed.keys().chain(table.keys()).copied().collect();
            let show = |r: Option<&Row>| r.map_or("absent".to_owned(), |r| Json::Object(r.clone()).to_string());
            let diffs: Vec<String> = ids
                .into_iter()
                .filter(|id| replayed.get(id) != table.get(id))
                .take(5)
                .map(|id| format!("id {id}: stream {} table {}", show(replayed.get(&id)), show(table.get(&id))))
                .collect();
            failures.push(format!("{user}: replaying the unfiltered stream does not give the table: {diffs:?}"));
        }
    }
}

/// kalamd restarts close no socket; each kalam-lived restart closes some, and nothing else
/// closes any. Returns the closes per restart window.
fn check_closes(subs: &[Handle], windows: &[Window], t0: Instant, failures: &mut Vec<String>) -> Vec<usize> {
    let mut closes = vec![0usize; windows.len()];
    for sub in subs {
        for (at, reason) in &sub.lock().server_closes {
            let when = format!("+{:.1}s", (*at - t0).as_secs_f64());
            // The restart that began last before the close.
            let latest = windows.iter().rposition(|w| w.start <= *at);
            match latest.map(|w| (w, &windows[w])) {
                Some((w, win)) if win.daemon == "kalamd" && win.covers(*at, KALAMD_CLOSE_GRACE) => {
                    closes[w] += 1;
                    failures.push(format!("{}: socket closed during a kalamd restart at {when}: {reason}", sub.name()));
                }
                Some((w, win)) if win.daemon == "kalam-lived" && win.covers(*at, LIVED_CLOSE_GRACE) => closes[w] += 1,
                _ => failures.push(format!("{}: socket lost outside any restart at {when}: {reason}", sub.name())),
            }
        }
    }
    for (w, window) in windows.iter().enumerate() {
        if window.daemon == "kalam-lived" && closes[w] == 0 {
            failures.push(format!("restart {w} (kalam-lived) closed no subscriber's socket"));
        }
    }
    closes
}

fn print_figures(subs: &[Handle], expected: &[Vec<Change>], writers: &[WriterStats]) {
    let sum = writers.iter().fold(WriterStats::default(), |a, s| WriterStats {
        statements: a.statements + s.statements,
        retries: a.retries + s.retries,
        duplicates: a.duplicates + s.duplicates,
    });
    eprintln!(
        "writers: {} statements acknowledged, {} retries, {} duplicate-key answers",
        sum.statements, sum.retries, sum.duplicates
    );
    for (sub, expected) in subs.iter().zip(expected) {
        let s = sub.lock();
        eprintln!(
            "{:<16} changes={}/{} subscriptions={} connections={} own_closes={} own_drops={} unsubscribes={} \
             server_closes={} refusals={} connect_failures={}",
            sub.name(),
            s.changes.len(),
            expected.len(),
            s.subscriptions,
            s.connections,
            s.own_closes,
            s.own_drops,
            s.unsubscribes,
            s.server_closes.len(),
            s.refusals,
            s.connect_failures
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn filtered_subscribers_resume_without_gaps_through_restarts() {
    let seed = seed();
    eprintln!("live_checker seed {seed} (KALAMDB_CHECKER_SEED repeats the random choices)");
    let t0 = Instant::now();
    let cluster = Cluster::start().await;
    cluster.client("system").query(SETUP).await.expect("setup");
    let (phase_tx, phase_rx) = watch::channel(RUN);
    let (mut subs, genesis_rows) = start_subscribers(&cluster, seed, &phase_rx).await;

    let acked = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let mut writer = Writer::new(w, seed.wrapping_add(w + 1));
            writer.clients = USERS.iter().map(|u| cluster.client(u)).collect();
            tokio::spawn(writer.run(acked.clone(), phase_rx.clone()))
        })
        .collect();
    let mut windows = Vec::new();
    for daemon in ["kalam-lived", "kalamd", "kalam-lived", "kalamd"] {
        all_subscribed(&subs).await;
        writes_progress(&acked, &writers, WRITES_BETWEEN_RESTARTS).await;
        let start = Instant::now();
        cluster.kill_and_wait_restart(daemon).await;
        windows.push(Window { daemon, start, end: Instant::now() });
        eprintln!("restarted {daemon} at +{:.1}s in {:.1}s", (start - t0).as_secs_f64(), start.elapsed().as_secs_f64());
    }
    writes_progress(&acked, &writers, WRITES_BETWEEN_RESTARTS).await;
    phase_tx.send_replace(CALM);

    let mut failures = Vec::new();
    let mut writer_stats = Vec::new();
    for (w, writer) in writers.into_iter().enumerate() {
        match tokio::time::timeout(WRITE_DEADLINE + REQUEST_TIMEOUT, writer).await {
            Ok(Ok(Ok(stats))) => writer_stats.push(stats),
            Ok(Ok(Err(e))) => failures.push(format!("writer {w}: {e}")),
            Ok(Err(e)) => failures.push(format!("writer {w} panicked: {e}")),
            Err(_) => failures.push(format!("writer {w} did not stop")),
        }
    }
    let expected = settle(&cluster, &subs, &mut failures).await;
    phase_tx.send_replace(STOP);
    for sub in &mut subs {
        if tokio::time::timeout(Duration::from_secs(20), &mut sub.task).await.is_err() {
            failures.push(format!("{} did not stop", sub.name()));
        }
    }

    check_references(&cluster, &subs, &genesis_rows, &mut failures).await;
    for (sub, expected) in subs.iter().zip(&expected) {
        let state = sub.lock();
        for v in state.violations.iter().take(10) {
            failures.push(format!("{}: {v}", sub.name()));
        }
        if sub.filter != Filter::All {
            compare(&sub.name(), expected, &state.changes, &mut failures);
        }
    }
    let closes = check_closes(&subs, &windows, t0, &mut failures);

    print_figures(&subs, &expected, &writer_stats);
    let restarts: Vec<String> =
        windows.iter().zip(&closes).map(|(w, n)| format!("{} ({n} closes)", w.daemon)).collect();
    eprintln!("restarts: {}; run took {:.1}s", restarts.join(", "), t0.elapsed().as_secs_f64());
    assert!(failures.is_empty(), "{} problem(s) (seed {seed}):\n{}", failures.len(), failures.join("\n"));
}

/// The oracle itself: §4.6 transitions, projection, and that a missing or repeated change in the
/// unfiltered stream is caught by the replay.
#[test]
fn the_oracle_derives_transitions_and_catches_gaps() {
    let row = |grp: i64, v: i64, updated: &str, deleted: bool| {
        let json = json!({"id": 1, "grp": grp, "v": v, "note": "apple", "_updated": updated, "_deleted": deleted});
        json.as_object().cloned().expect("object")
    };
    let change = |kind: &str, seq: u64, new: Option<Row>, old: Option<Row>| Change {
        kind: kind.into(),
        commit_seq: seq,
        timestamp: Json::from(format!("t{seq}")),
        rows: new.map(|r| json!([r])),
        old_values: old.map(|r| json!([r])),
    };
    let (r1, r2, r3) = (row(1, 10, "u1", false), row(2, 60, "u2", false), row(3, 60, "u3", false));
    let gone = row(3, 60, "u4", true);
    let all = vec![
        change("insert", 11, Some(r1.clone()), None),
        change("update", 12, Some(r2.clone()), Some(r1.clone())),
        change("update", 13, Some(r3.clone()), Some(r2.clone())),
        change("delete", 14, None, Some(gone.clone())),
    ];
    let kinds = |f: Filter| expected_for(f, &all).iter().map(|c| (c.kind.clone(), c.commit_seq)).collect::<Vec<_>>();
    let k = |kind: &str, seq: u64| (kind.to_owned(), seq);
    assert_eq!(kinds(Filter::Grp1), vec![k("insert", 11), k("delete", 12)]);
    assert_eq!(expected_for(Filter::Grp1, &all)[1].old_values, Some(json!([r1])), "leaves with its old version");
    assert_eq!(kinds(Filter::VAbove50), vec![k("insert", 12), k("update", 13), k("delete", 14)]);
    assert_eq!(kinds(Filter::LowGrp12), vec![k("insert", 11), k("delete", 12)]);
    let note = expected_for(Filter::NoteA, &all);
    assert_eq!(note.len(), 4);
    assert_eq!(note[3].old_values, Some(json!([{"id": 1, "note": "apple", "_updated": "u4", "_deleted": true}])));

    let genesis = json!({"id": 0, "grp": 0, "v": 0, "note": "genesis", "_updated": "u0", "_deleted": false});
    let genesis = genesis.as_object().cloned().expect("object");
    let mut failures = Vec::new();
    let state = replay("u", &genesis, &all, &mut failures);
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(state.get(&1), Some(&gone));
    for broken in [[&all[0], &all[2], &all[3]].map(Clone::clone).to_vec(), [&all[..], &all[2..3]].concat()] {
        let mut failures = Vec::new();
        replay("u", &genesis, &broken, &mut failures);
        assert_eq!(failures.len(), 1, "a gap or a repeat breaks the history");
    }
    let mut failures = Vec::new();
    compare("s", &all, &all[1..], &mut failures);
    assert!(failures[0].contains("missing commit_seq [11]"), "{failures:?}");
}
