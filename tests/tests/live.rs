//! End-to-end: live queries over `GET /v1/ws` (api.md §4; acceptance.md E and the live items of
//! H). Every test starts its own cluster, subscribes through real WebSocket connections and
//! writes through `POST /v1/api/sql` as the acting users (loopback bypass + `X-USER-ID`). Every
//! wait has a deadline and a message saying what did not happen; measured figures are printed.

mod live_support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use kalam_e2e::wait_for;
use serde_json::{Value as Json, json};

use live_support::*;

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
