//! kalam-link against a real server: queries, parameters, batches, credentials, typed
//! subscription events, and reconnect-and-resume through restarts of kalam-lived and kalamd
//! with no change lost or delivered twice.

use std::collections::BTreeSet;
use std::time::Duration;

use kalam_e2e::{Cluster, TcpProxy, insert_through_faults, wait_for};
use kalam_link::{
    ChangeEvent, Credentials, KalamLinkClient, KalamLinkError, ReconnectPolicy, SubscriptionConfig, SubscriptionManager,
};
use serde_json::json;

const SETUP: &str = "CREATE NAMESPACE app; CREATE USER TABLE app.notes (id BIGINT PRIMARY KEY, body TEXT, n INT)";

/// Reconnects quickly, and long enough to outlast a daemon restart.
const FAST: ReconnectPolicy =
    ReconnectPolicy { initial_delay: Duration::from_millis(100), max_delay: Duration::from_secs(1), max_attempts: 120 };

async fn next(sub: &mut SubscriptionManager, what: &str) -> ChangeEvent {
    match tokio::time::timeout(Duration::from_secs(30), sub.next()).await {
        Ok(Some(Ok(e))) => e,
        Ok(Some(Err(e))) => panic!("{what}: subscription error {e}"),
        Ok(None) => panic!("{what}: subscription ended"),
        Err(_) => panic!("{what}: no event within 30 s"),
    }
}

async fn start() -> Cluster {
    let cluster = Cluster::start().await;
    cluster.client("system").execute_query(SETUP).await.expect("setup");
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_parameters_batches_and_errors() {
    let cluster = start().await;
    let alice = cluster.client("alice");

    let health = alice.health_check().await.expect("health");
    assert!(health.is_healthy(), "{health:?}");
    assert_eq!(health.api_version.as_deref(), Some("v1"));
    assert!(health.version.is_some() && health.uptime_seconds.is_some(), "{health:?}");

    let resp =
        alice.execute_query("INSERT INTO app.notes VALUES (1, 'one', 10), (2, 'two', 20)").await.expect("insert");
    assert_eq!(resp.results[0].row_count, 2);
    let resp = alice
        .execute_query_with_params("SELECT body, id FROM app.notes WHERE id = $1", vec![json!(2)])
        .await
        .expect("params");
    let r = &resp.results[0];
    assert_eq!(r.columns, vec!["body", "id"]);
    assert_eq!(r.ordered_row(0).unwrap(), vec![&json!("two"), &json!(2)]);

    // A batch runs in order; its first failure stops it and is reported with its index.
    let resp = alice
        .execute_batch(&["INSERT INTO app.notes VALUES (3, 'three', 30);", "SELECT count(*) AS c FROM app.notes"])
        .await
        .expect("batch");
    assert_eq!(resp.results.len(), 2);
    assert_eq!(resp.results[1].rows.as_ref().unwrap()[0]["c"], 3);
    let err = alice
        .execute_batch(&[
            "INSERT INTO app.notes VALUES (4, 'four', 40)",
            "SELECT * FROM app.nope",
            "DELETE FROM app.notes",
        ])
        .await
        .unwrap_err();
    assert!(matches!(&err, KalamLinkError::ServerError { code, .. } if code == "TABLE_NOT_FOUND"), "{err:?}");
    let (_, envelope) = alice.query_raw("SELECT count(*) AS c FROM app.notes").await.expect("count");
    assert_eq!(envelope.results[0].rows.as_ref().unwrap()[0]["c"], 4, "the statement before the failure committed");

    let err =
        alice.execute_query_with_params("SELECT * FROM app.notes WHERE id = $1", vec![json!("x")]).await.unwrap_err();
    assert_eq!(err.code(), Some("PARAM_TYPE_MISMATCH"), "{err}");

    // Credentials: a key the server issued works without the loopback bypass's help; a wrong
    // one is an authentication error, on HTTP and on the WebSocket.
    let created =
        cluster.client("system").execute_query("CREATE USER 'carol' WITH ROLE user").await.expect("create user");
    let key = created.results[0].rows.as_ref().unwrap()[0]["apikey"].as_str().expect("api key").to_owned();
    let carol = KalamLinkClient::builder().base_url(cluster.url()).api_key(&key).build().unwrap();
    carol.execute_query("INSERT INTO app.notes VALUES (1, 'carol''s', 1)").await.expect("carol writes her partition");
    let resp = carol.execute_query("SELECT body FROM app.notes").await.unwrap();
    assert_eq!(resp.results[0].rows.as_ref().unwrap()[0]["body"], "carol's");
    let wrong = carol.clone().with_credentials(Credentials::ApiKey("not-a-key-of-anyone".into())).unwrap();
    let err = wrong.execute_query("SELECT 1").await.unwrap_err();
    assert!(matches!(&err, KalamLinkError::AuthenticationError { status_code: 401, .. }), "{err:?}");
    let err = wrong.subscribe("SELECT * FROM app.notes").await.unwrap_err();
    assert!(matches!(&err, KalamLinkError::AuthenticationError { status_code: 401, .. }), "{err:?}");

    // An unreachable server is a network error after the configured retries.
    let port = kalam_e2e::free_port();
    let nobody =
        KalamLinkClient::builder().base_url(format!("http://127.0.0.1:{port}")).max_retries(1).build().unwrap();
    assert!(matches!(nobody.health_check().await, Err(KalamLinkError::NetworkError(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_deliver_typed_events_in_column_order() {
    let cluster = start().await;
    let alice = cluster.client("alice");
    alice.execute_query("INSERT INTO app.notes VALUES (1, 'old', 1)").await.unwrap();

    let config =
        SubscriptionConfig::new("SELECT n, id, body FROM app.notes WHERE n < 100").with_id("notes").with_last_rows(10);
    let mut sub = alice.subscribe_with_config(config).await.expect("subscribe");
    assert_eq!(sub.subscription_id(), "notes");
    assert!(
        matches!(next(&mut sub, "ack").await, ChangeEvent::Ack { subscription_id, .. } if subscription_id == "notes")
    );
    let ChangeEvent::InitialData { rows, has_more: false, commit_seq: Some(_), .. } = next(&mut sub, "snapshot").await
    else {
        panic!("expected initial data")
    };
    assert_eq!(rows.len(), 1);
    let keys: Vec<&str> = rows[0].iter().map(|(k, _)| k).collect();
    assert_eq!(keys, vec!["n", "id", "body", "_updated", "_deleted"], "the projection's order is kept");

    alice.execute_query("INSERT INTO app.notes VALUES (2, 'new', 2)").await.unwrap();
    let ChangeEvent::Insert { rows, commit_seq: c1, .. } = next(&mut sub, "insert").await else { panic!("insert") };
    assert_eq!((rows[0]["id"].clone(), rows[0]["body"].clone()), (json!(2), json!("new")));
    alice.execute_query("UPDATE app.notes SET body = 'newer' WHERE id = 2").await.unwrap();
    let ChangeEvent::Update { rows, old_rows, commit_seq: c2, .. } = next(&mut sub, "update").await else {
        panic!("update")
    };
    assert_eq!((old_rows[0]["body"].clone(), rows[0]["body"].clone()), (json!("new"), json!("newer")));
    // Leaving the filter is a delete carrying the row as it was.
    alice.execute_query("UPDATE app.notes SET n = 500 WHERE id = 1").await.unwrap();
    let ChangeEvent::Delete { old_rows, commit_seq: c3, .. } = next(&mut sub, "delete").await else { panic!("delete") };
    assert_eq!(old_rows[0]["id"], 1);
    assert!(c1 < c2 && c2 < c3);

    sub.close().await.expect("close");
    let system = cluster.client("system");
    wait_for(Duration::from_secs(10), "live query removed", || async {
        let r = system.execute_query("SELECT count(*) AS c FROM system.live_queries").await.ok()?;
        (r.results[0].rows.as_ref()?[0]["c"] == 0).then_some(())
    })
    .await;

    // A refused subscription ends after its error.
    let mut bad = alice.subscribe("SELECT * FROM app.missing").await.expect("socket opens");
    assert!(matches!(next(&mut bad, "error").await, ChangeEvent::Error { code, .. } if code == "TABLE_NOT_FOUND"));
    assert!(bad.next().await.is_none());
}

/// Every change of writers that run while kalam-lived restarts (the socket drops) and while
/// kalamd restarts (the socket stays, kalam-lived reconnects to it) arrives once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_and_resume_lose_and_duplicate_nothing_across_restarts() {
    let cluster = start().await;
    cluster
        .client("system")
        .execute_query("CREATE USER TABLE app.log (id BIGINT PRIMARY KEY, body TEXT)")
        .await
        .unwrap();
    let alice = cluster.client("alice");
    let mut sub =
        alice.subscribe_with_policy(SubscriptionConfig::new("SELECT * FROM app.log"), FAST).await.expect("subscribe");
    assert!(matches!(next(&mut sub, "ack").await, ChangeEvent::Ack { .. }));

    // Each restart happens while a writer is inserting; the subscription's events wait in its
    // buffer meanwhile.
    let mut acked = insert_through_faults(alice.clone(), "app.log", 0, 100).await;
    let writer = tokio::spawn(insert_through_faults(alice.clone(), "app.log", 100, 200));
    cluster.kill_and_wait_restart("kalam-lived").await;
    acked.extend(writer.await.expect("writer"));
    let writer = tokio::spawn(insert_through_faults(alice.clone(), "app.log", 200, 300));
    cluster.kill_and_wait_restart("kalamd").await;
    acked.extend(writer.await.expect("writer"));
    // A last row marks the end: nothing may come between the others and it.
    insert_through_faults(alice.clone(), "app.log", 300, 301).await;

    let mut received: Vec<i64> = Vec::new();
    let mut commit_seqs: Vec<u64> = Vec::new();
    let (mut reconnects, mut resumes) = (0, 0);
    while received.last() != Some(&300) {
        let what = format!("change {} of 301", received.len() + 1);
        match next(&mut sub, &what).await {
            ChangeEvent::Insert { rows, commit_seq, .. } => {
                received.push(rows[0]["id"].as_i64().expect("id"));
                commit_seqs.push(commit_seq);
            }
            ChangeEvent::Reconnecting { .. } => reconnects += 1,
            ChangeEvent::Resumed { .. } => resumes += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    let unique: BTreeSet<i64> = received.iter().copied().collect();
    assert_eq!(unique.len(), received.len(), "a change was delivered twice: {received:?}");
    assert_eq!(received, (0..=300).collect::<Vec<_>>(), "changes arrive once, in commit order");
    assert!(acked.iter().all(|id| unique.contains(id)), "every acknowledged insert arrived");
    assert!(commit_seqs.windows(2).all(|w| w[0] < w[1]));
    assert!(
        reconnects >= 1 && resumes >= 1,
        "the lived restart dropped the socket ({reconnects} reconnects, {resumes} resumes)"
    );
    sub.close().await.unwrap();
}

/// Subscribes over a raw socket with `from_seq`; true when the server refuses the resume.
async fn resume_refused(cluster: &Cluster, user: &str, sql: &str, from_seq: u64) -> bool {
    let mut ws = cluster.client(user).connect_live().await.expect("ws");
    let msg =
        json!({"type": "subscribe", "subscriptions": [{"id": "probe", "sql": sql, "options": {"from_seq": from_seq}}]});
    ws.send_json(&msg).await.expect("probe");
    let answer = tokio::time::timeout(Duration::from_secs(10), ws.next_message()).await.expect("answer").expect("read");
    let _ = ws.close().await;
    answer.is_some_and(|m| m["code"] == "RESUME_EXPIRED")
}

/// When the change log no longer reaches back to the last change seen, the application is
/// told to re-snapshot and the subscription starts over with its original options.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_resume_is_reported_and_the_snapshot_taken_again() {
    let cluster = Cluster::start_with_config("[storage]\nchange_log_retention_seconds = 1\n").await;
    cluster.client("system").execute_query(SETUP).await.expect("setup");
    let alice = cluster.client("alice");
    let proxy = TcpProxy::start(cluster.port).await;
    let config = SubscriptionConfig::new("SELECT * FROM app.notes").with_last_rows(100).with_ws_url(proxy.ws_url());
    let mut sub = alice.subscribe_with_policy(config, FAST).await.expect("subscribe");
    assert!(matches!(next(&mut sub, "ack").await, ChangeEvent::Ack { .. }));
    assert!(matches!(next(&mut sub, "snapshot").await, ChangeEvent::InitialData { .. }));
    alice.execute_query("INSERT INTO app.notes VALUES (1, 'seen', 1)").await.unwrap();
    let ChangeEvent::Insert { commit_seq: seen, .. } = next(&mut sub, "insert").await else { panic!("insert") };

    // Cut off, a change is missed, and the log forgets it before the client is back.
    proxy.cut();
    assert!(matches!(next(&mut sub, "reconnecting").await, ChangeEvent::Reconnecting { .. }));
    alice.execute_query("INSERT INTO app.notes VALUES (2, 'missed', 2)").await.unwrap();
    wait_for(Duration::from_secs(30), "the change log purged past the last change seen", || async {
        resume_refused(&cluster, "alice", "SELECT * FROM app.notes", seen).await.then_some(())
    })
    .await;
    proxy.allow();
    let expired = loop {
        match next(&mut sub, "resume refused").await {
            ChangeEvent::Reconnecting { .. } => {}
            other => break other,
        }
    };
    assert!(matches!(&expired, ChangeEvent::ResumeExpired { .. }), "{expired:?}");
    assert!(matches!(next(&mut sub, "fresh ack").await, ChangeEvent::Ack { .. }));
    let ChangeEvent::InitialData { rows, .. } = next(&mut sub, "fresh snapshot").await else { panic!("snapshot") };
    let ids: Vec<i64> = rows.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, vec![1, 2], "the new snapshot holds the missed row");
    sub.close().await.unwrap();
}

/// A subscription without a snapshot (no options, or `last_rows = 0`) that loses its socket
/// before its first change resumes from the position its ack gave: the change made while it
/// was away arrives, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drop_before_the_first_change_resumes_from_the_ack() {
    let cluster = start().await;
    let alice = cluster.client("alice");
    let proxy = TcpProxy::start(cluster.port).await;
    let plain = SubscriptionConfig::new("SELECT * FROM app.notes WHERE n < 100").with_ws_url(proxy.ws_url());
    let zero = plain.clone().with_last_rows(0);
    for (round, config) in [plain, zero].into_iter().enumerate() {
        let base = 10 * round as i64;
        let mut sub = alice.subscribe_with_policy(config, FAST).await.expect("subscribe");
        assert!(matches!(next(&mut sub, "ack").await, ChangeEvent::Ack { .. }));
        proxy.cut();
        assert!(matches!(next(&mut sub, "reconnecting").await, ChangeEvent::Reconnecting { .. }));
        alice.execute_query(&format!("INSERT INTO app.notes VALUES ({base}, 'while away', {base})")).await.unwrap();
        proxy.allow();
        let mut ids = Vec::new();
        let mut resumed = false;
        while ids.len() < 2 {
            match next(&mut sub, "changes after the drop").await {
                ChangeEvent::Reconnecting { .. } => {}
                ChangeEvent::Resumed { .. } => {
                    resumed = true;
                    alice
                        .execute_query(&format!("INSERT INTO app.notes VALUES ({}, 'after', 1)", base + 1))
                        .await
                        .unwrap();
                }
                ChangeEvent::Insert { rows, .. } => ids.push(rows[0]["id"].as_i64().unwrap()),
                other => panic!("round {round}: unexpected {other:?}"),
            }
        }
        assert!(resumed, "round {round}");
        assert_eq!(ids, vec![base, base + 1], "round {round}: the missed change once, then the next");
        sub.close().await.unwrap();
    }
}

/// A JWT credential works for queries and for the WebSocket (sent as `Authorization: Bearer`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_credentials_reach_http_and_the_websocket() {
    const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";
    let cluster = Cluster::start_with_config(&format!("[auth]\njwt_secret = \"{SECRET}\"\n")).await;
    let system = cluster.client("system");
    system.execute_query(SETUP).await.expect("setup");
    system.execute_query("CREATE USER 'erin' WITH ROLE user").await.expect("create user");
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "erin", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let erin = KalamLinkClient::builder().base_url(cluster.url()).jwt_token(&token).build().unwrap();
    let mut sub = erin.subscribe("SELECT * FROM app.notes").await.expect("subscribe with a JWT");
    assert!(matches!(next(&mut sub, "ack").await, ChangeEvent::Ack { .. }));
    erin.execute_query("INSERT INTO app.notes VALUES (7, 'by jwt', 7)").await.expect("insert with a JWT");
    let ChangeEvent::Insert { rows, .. } = next(&mut sub, "insert").await else { panic!("insert") };
    assert_eq!(rows[0]["body"], "by jwt");
    let forged = erin.clone().with_credentials(Credentials::Jwt(format!("{token}x"))).unwrap();
    let err = forged.execute_query("SELECT 1").await.unwrap_err();
    assert!(matches!(&err, KalamLinkError::AuthenticationError { status_code: 401, .. }), "{err:?}");
    sub.close().await.unwrap();
}
