//! The permission matrix of sql.md §17 as a table: every statement kind × every role, allowed
//! or PERMISSION_DENIED (403). An allowed statement may still fail for its own reasons (a job
//! that does not exist); it must never fail with PERMISSION_DENIED, and a denied one must
//! never run.

use kalam_e2e::Cluster;
use serde_json::{Value as Json, json};

const ROLES: [&str; 4] = ["user", "service", "dba", "system"];

/// The weakest role allowed to run a statement.
#[derive(Clone, Copy, PartialEq, PartialOrd)]
enum Min {
    User,
    Service,
    Dba,
}

fn allowed(min: Min, role: &str) -> bool {
    let rank = ROLES.iter().position(|r| *r == role).unwrap();
    rank >= min as usize
}

/// Runs `sql` as a principal with `key` (None = the loopback bypass, role system); returns the
/// HTTP status and the error code ("ok" on success).
async fn run(cluster: &Cluster, key: Option<&str>, sql: &str) -> (u16, String) {
    let mut req = reqwest::Client::new().post(format!("{}/v1/api/sql", cluster.url())).json(&json!({ "sql": sql }));
    if let Some(k) = key {
        req = req.header("x-api-key", k);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let body: Json = resp.json().await.expect("json");
    let code = body["error"]["code"].as_str().unwrap_or("ok").to_owned();
    (status, code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_statement_kind_for_every_role_is_allowed_or_denied_as_specified() {
    let cluster = Cluster::start().await;
    let system = cluster.client("system");
    let setup = "CREATE NAMESPACE app; \
        CREATE USER TABLE app.u (id BIGINT PRIMARY KEY, v TEXT); \
        CREATE STREAM TABLE app.s (id BIGINT PRIMARY KEY, v TEXT) TTL 60; \
        CREATE SHARED TABLE app.pub (id BIGINT PRIMARY KEY, v TEXT) ACCESS public; \
        CREATE SHARED TABLE app.priv (id BIGINT PRIMARY KEY, v TEXT) ACCESS private; \
        CREATE SHARED TABLE app.res (id BIGINT PRIMARY KEY, v TEXT) ACCESS restricted";
    system.query(setup).await.expect("setup");
    let mut keys = std::collections::HashMap::new();
    for role in ["user", "service", "dba"] {
        let resp = system.query(&format!("CREATE USER 'p_{role}' WITH ROLE {role}")).await.expect("user");
        keys.insert(role, resp.results[0].rows.as_ref().unwrap()[0]["apikey"].as_str().unwrap().to_owned());
    }

    // `{r}` is replaced by the role and `{i}` by its number, so statements that succeed do not
    // collide.
    let matrix: Vec<(&str, Min)> = vec![
        ("CREATE NAMESPACE ns_{r}", Min::Dba),
        ("ALTER NAMESPACE app SET OPTIONS (owner = '{r}')", Min::Dba),
        ("DROP NAMESPACE IF EXISTS nope_{r}", Min::Dba),
        ("CREATE USER TABLE app.t_{r} (id BIGINT PRIMARY KEY)", Min::Dba),
        ("ALTER TABLE app.pub ADD COLUMN c_{r} TEXT", Min::Dba),
        ("DROP TABLE IF EXISTS app.nope_{r}", Min::Dba),
        ("DROP STORAGE IF EXISTS nope_{r}", Min::Dba),
        ("CREATE USER 'new_{r}'", Min::Dba),
        ("ALTER USER 'p_user' SET METADATA '{\"by\":\"{r}\"}'", Min::Dba),
        ("DROP USER IF EXISTS 'nobody_{r}'", Min::Dba),
        ("INSERT INTO system.users (user_id, username) VALUES ('ins_{r}', 'x')", Min::Dba),
        ("UPDATE system.users SET email = '{r}@x.io' WHERE user_id = 'p_user'", Min::Dba),
        ("DELETE FROM system.users WHERE user_id = 'ins_{r}'", Min::Dba),
        ("CLEAR CACHE", Min::Dba),
        ("BEGIN; INSERT INTO app.u VALUES (5{i}, '{r}'); COMMIT", Min::User),
        ("BEGIN; UPDATE app.res SET v = '{r}' WHERE id = -1; COMMIT", Min::Dba),
        ("PAUSE FLUSH app.u", Min::Dba),
        ("RESUME FLUSH app.u", Min::Dba),
        ("FLUSH ALL TABLES IN app", Min::Dba),
        ("FLUSH TABLE app.u", Min::Service),
        ("KILL JOB 'nope-{r}'", Min::Service),
        ("RETRY JOB 'nope-{r}'", Min::Service),
        ("SHOW STORAGES", Min::Service),
        ("SELECT * FROM system.storages", Min::Service),
        ("SELECT * FROM system.processes", Min::Service),
        ("SELECT * FROM system.users", Min::User),
        ("SELECT * FROM system.namespaces", Min::User),
        ("SELECT * FROM system.tables", Min::User),
        ("SELECT * FROM system.jobs", Min::User),
        ("SELECT * FROM system.live_queries", Min::User),
        ("SELECT * FROM information_schema.tables", Min::User),
        ("SHOW NAMESPACES", Min::User),
        ("SHOW TABLES IN app", Min::User),
        ("SELECT * FROM app.u", Min::User),
        ("INSERT INTO app.u VALUES (1, '{r}')", Min::User),
        ("UPDATE app.u SET v = 'x' WHERE id = 1", Min::User),
        ("DELETE FROM app.u WHERE id = 1", Min::User),
        ("INSERT INTO app.s VALUES (1, '{r}')", Min::User),
        ("SELECT * FROM app.other.u", Min::Service),
        ("INSERT INTO app.other.u VALUES (2, '{r}')", Min::Service),
        ("SELECT * FROM app.pub", Min::User),
        ("DESCRIBE TABLE app.pub", Min::User),
        ("INSERT INTO app.pub VALUES (10, '{r}')", Min::Service),
        ("UPDATE app.pub SET v = 'x' WHERE id = 10", Min::Service),
        ("DELETE FROM app.pub WHERE id = 10", Min::Service),
        ("SELECT * FROM app.priv", Min::Service),
        ("INSERT INTO app.priv VALUES (20, '{r}')", Min::Service),
        ("DESCRIBE TABLE app.priv", Min::Service),
        ("SELECT * FROM app.res", Min::Dba),
        ("INSERT INTO app.res VALUES (3{i}, '{r}')", Min::Dba),
        ("SHOW TABLE STATS app.res", Min::Dba),
        ("SELECT * FROM app.u WHERE id IN (SELECT id FROM app.res)", Min::Dba),
        ("SELECT p.v FROM app.pub p JOIN app.priv q ON p.id = q.id", Min::Service),
        ("WITH x AS (SELECT * FROM app.res) SELECT * FROM x", Min::Dba),
        ("INSERT INTO app.u SELECT id + 100, v FROM app.priv", Min::Service),
        ("SUBSCRIBE TO app.u", Min::User),
        ("KILL LIVE QUERY 'nope-{r}'", Min::User),
    ];
    let mut unexpected = Vec::new();
    for (template, min) in &matrix {
        for (i, role) in ROLES.iter().copied().enumerate() {
            let sql = template.replace("{r}", role).replace("{i}", &i.to_string());
            let key = keys.get(role).map(String::as_str);
            let (status, code) = run(&cluster, key, &sql).await;
            let denied = code == "PERMISSION_DENIED";
            let expected_allowed = allowed(*min, role);
            if expected_allowed == denied || (denied && status != 403) {
                unexpected.push(format!("{role:>7}: {sql} -> {status} {code}"));
            }
        }
    }
    eprintln!("{} statements × {} roles checked", matrix.len(), ROLES.len());
    assert!(unexpected.is_empty(), "unexpected outcomes:\n{}", unexpected.join("\n"));

    // What was denied did not happen.
    let names: Vec<String> =
        kalam_e2e::rows(&system, "SELECT namespace_id FROM system.namespaces ORDER BY namespace_id")
            .await
            .iter()
            .map(|r| r["namespace_id"].as_str().unwrap().to_owned())
            .collect();
    assert!(!names.contains(&"ns_user".to_owned()) && !names.contains(&"ns_service".to_owned()), "{names:?}");
    assert!(names.contains(&"ns_dba".to_owned()), "{names:?}");
    let res = kalam_e2e::rows(&system, "SELECT v FROM app.res ORDER BY v").await;
    let writers: Vec<&str> = res.iter().map(|r| r["v"].as_str().unwrap()).collect();
    assert_eq!(writers, ["dba", "system"]);
    // A user sees only its own row of system.users, and nothing of the shared tables it may not
    // read in the tables that describe tables.
    for (sql, column) in [
        ("SELECT table_name FROM system.tables WHERE namespace_id = 'app' ORDER BY table_name", "table_name"),
        (
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'app' ORDER BY table_name",
            "table_name",
        ),
        ("SHOW TABLES IN app", "table_name"),
    ] {
        let resp = reqwest::Client::new()
            .post(format!("{}/v1/api/sql", cluster.url()))
            .header("x-api-key", &keys["user"])
            .json(&json!({ "sql": sql }))
            .send()
            .await
            .unwrap();
        let body: Json = resp.json().await.unwrap();
        let mut names: Vec<String> = body["results"][0]["rows"]
            .as_array()
            .unwrap_or_else(|| panic!("{sql}: {body}"))
            .iter()
            .map(|r| r[column].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["pub", "s", "t_dba", "t_system", "u"], "{sql}");
    }
    // A user sees only its own row of system.users.
    let (_, body) = {
        let resp = reqwest::Client::new()
            .post(format!("{}/v1/api/sql", cluster.url()))
            .header("x-api-key", &keys["user"])
            .json(&json!({"sql": "SELECT user_id FROM system.users"}))
            .send()
            .await
            .unwrap();
        (resp.status(), resp.json::<Json>().await.unwrap())
    };
    assert_eq!(body["results"][0]["rows"], json!([{"user_id": "p_user"}]), "{body}");
}
