//! End-to-end: the live-query protocol beyond the acceptance list (api.md §4): unsupported
//! shapes, protocol errors, `from_seq` resume, snapshot/stream consistency, and user isolation
//! under a few hundred generated predicates.

mod live_support;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use kalam_e2e::{rows, wait_for};
use serde_json::{Value as Json, json};
use tokio::sync::watch;

use live_support::*;

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
