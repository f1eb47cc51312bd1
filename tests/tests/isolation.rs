//! Partition isolation (sql.md §1, §8, §17): a `user`-role principal never sees another user's
//! rows. Two clusters get the same schema, the same shared rows and the same rows of alice; FULL
//! also holds rows of bob (a real `user` account) and of a partition written through `X-USER-ID`,
//! whose text carries the marker "BOBSECRET" and whose numbers lie at or above 9 000 000, with
//! primary keys that collide with alice's. A few thousand generated queries run as alice (API
//! key) on both clusters: the outcome (HTTP status, error code and message, result rows) must be
//! the same, and nothing of bob's may appear in FULL's answers. Writes run last, in the same order
//! on both clusters: they must touch the same rows in both and leave bob's partitions untouched.
//!
//! `KALAM_ISOLATION_QUERIES` (default 2000) and `KALAM_ISOLATION_SEED` change the run.

mod isolation_support;

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use futures::stream::{self, StreamExt};
use kalam_e2e::Cluster;
use serde_json::{Value as Json, json};

use isolation_support::*;

/// Queries in flight at once (each runs on both clusters).
const IN_FLIGHT: usize = 16;
const CONFIG: &str = "[rate_limit]\nmax_queries_per_sec = 1000000\n";
/// Output columns whose values depend on when things happened or on the server's port (compared
/// by neither side, still scanned for bob's data).
#[rustfmt::skip]
const TIME_DEPENDENT: [&str; 19] = [
    "ws_url", "subscription", "_updated", "created_at", "updated_at", "started_at", "completed_at", "last_flush_at",
    "last_update", "next_retry_at", "next_scheduled_flush_at", "oldest_buffered_at", "lag_seconds", "storage_bytes",
    "job_id", "last_flush_job_id", "result", "memory_used", "cpu_used",
];

// ---------------------------------------------------------------------------------------------
// Talking to the clusters

struct Node {
    url: String,
    alice: String,
    http: reqwest::Client,
}

/// What a request produced, in a form two clusters can be compared by.
#[derive(Debug, Clone, PartialEq)]
struct Outcome {
    http: u16,
    code: Option<String>,
    message: Option<String>,
    results: Vec<ResultSet>,
}

#[derive(Debug, Clone, PartialEq)]
struct ResultSet {
    columns: Vec<String>,
    row_count: u64,
    message: Option<String>,
    /// One JSON array per row, values in `columns` order, time-dependent columns blanked.
    rows: Vec<String>,
}

async fn post(http: &reqwest::Client, url: &str, headers: &[(&str, &str)], body: &Json) -> (u16, Json) {
    let mut req = http.post(format!("{url}/v1/api/sql")).json(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or_else(|e| json!({"unparsable": text, "error": e.to_string()}));
    (status, body)
}

fn outcome(status: u16, body: &Json) -> Outcome {
    let results = body["results"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .map(|r| {
                    let columns: Vec<String> = r["columns"]
                        .as_array()
                        .map(|c| c.iter().map(|c| c.as_str().unwrap_or("?").to_owned()).collect())
                        .unwrap_or_default();
                    let rows = r["rows"]
                        .as_array()
                        .map(|rows| {
                            rows.iter()
                                .map(|row| {
                                    let vals: Vec<Json> = columns
                                        .iter()
                                        .map(|c| {
                                            if TIME_DEPENDENT.contains(&c.as_str()) {
                                                Json::from("~")
                                            } else {
                                                row[c.as_str()].clone()
                                            }
                                        })
                                        .collect();
                                    Json::Array(vals).to_string()
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    ResultSet {
                        columns,
                        row_count: r["row_count"].as_u64().unwrap_or(u64::MAX),
                        message: r["message"].as_str().map(str::to_owned),
                        rows,
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    Outcome {
        http: status,
        code: body["error"]["code"].as_str().map(str::to_owned),
        message: body["error"]["message"].as_str().map(str::to_owned),
        results,
    }
}

/// Values of FULL's answer that can only have come from bob's partitions: text mentioning bob,
/// or a number of bob's range that ALONE did not produce as well.
fn leaks(full: &Json, alone: &Json, sql: &str) -> Vec<String> {
    fn walk(v: &Json, out: &mut Vec<Json>) {
        match v {
            Json::Array(a) => a.iter().for_each(|v| walk(v, out)),
            // SUBSCRIBE echoes the statement (whose literals may name bob's marker).
            Json::Object(o) => o.iter().filter(|(k, _)| *k != "subscription").for_each(|(_, v)| walk(v, out)),
            v => out.push(v.clone()),
        }
    }
    let values = |body: &Json| {
        let mut out = Vec::new();
        for r in body["results"].as_array().into_iter().flatten() {
            walk(&r["rows"], &mut out);
        }
        out
    };
    let alone_numbers: HashSet<String> =
        values(alone).iter().filter(|v| v.is_number()).map(|v| v.to_string()).collect();
    let mut found: Vec<String> = values(full)
        .into_iter()
        .filter(|v| match v {
            Json::String(s) => s.to_lowercase().contains("bob"),
            Json::Number(n) => {
                n.as_f64().is_some_and(|x| x.abs() >= BOB_MIN) && !alone_numbers.contains(&v.to_string())
            }
            _ => false,
        })
        .map(|v| v.to_string())
        .collect();
    if let Some(m) = full["error"]["message"].as_str()
        && m.to_lowercase().contains("bobsecret")
        && !sql.to_lowercase().contains("bobsecret")
    {
        found.push(format!("error message: {m}"));
    }
    found.truncate(5);
    found
}

// ---------------------------------------------------------------------------------------------
// The test

async fn load(cluster: &Cluster, full: bool, seed: u64) -> String {
    let system = cluster.client("system");
    system.query(SCHEMA).await.expect("schema");
    let key_of = |resp: kalam_link::QueryResponse| {
        resp.results[0].rows.as_ref().unwrap()[0]["apikey"].as_str().unwrap().to_owned()
    };
    let alice = key_of(system.query("CREATE USER 'alice' WITH ROLE user").await.expect("alice"));
    let bob = if full {
        let bob = key_of(system.query("CREATE USER 'bob' WITH ROLE user").await.expect("bob"));
        system.query("CREATE USER 'bob_gone' WITH ROLE user; DROP USER 'bob_gone'").await.expect("bob_gone");
        bob
    } else {
        String::new()
    };
    let http = reqwest::Client::new();
    for (who, sql) in data_steps(seed) {
        let headers: Vec<(&str, &str)> = match who {
            Who::System => vec![],
            Who::Alice => vec![("x-api-key", &alice)],
            Who::Bob if full => vec![("x-api-key", &bob)],
            Who::Ghost if full => vec![("x-user-id", GHOST)],
            _ => continue,
        };
        let (status, body) = post(&http, &cluster.url(), &headers, &json!({ "sql": sql })).await;
        assert_eq!(status, 200, "setup: {sql}: {body}");
        if sql.starts_with("FLUSH TABLE") {
            let job = body["results"][0]["rows"][0]["job_id"].as_str().expect("job id");
            kalam_e2e::wait_status(&system, job, "completed").await;
        }
    }
    alice
}

/// Runs `query` as alice on both clusters; a description of what differs, if anything.
async fn check(full: &Node, alone: &Node, query: &Query) -> (Outcome, Option<String>) {
    let body = match &query.params {
        Some(p) => json!({"sql": query.sql, "params": p}),
        None => json!({"sql": query.sql}),
    };
    let (full_key, alone_key) = ([("x-api-key", full.alice.as_str())], [("x-api-key", alone.alice.as_str())]);
    let ((fs, fb), (as_, ab)) =
        tokio::join!(post(&full.http, &full.url, &full_key, &body), post(&alone.http, &alone.url, &alone_key, &body));
    let (mut f, mut a) = (outcome(fs, &fb), outcome(as_, &ab));
    let mut problems = Vec::new();
    let leaked = leaks(&fb, &ab, &query.sql);
    if !leaked.is_empty() {
        problems.push(format!("FULL returned bob's data: {leaked:?}"));
    }
    // SHOW / DESCRIBE take no three-part names at all; any refusal will do there.
    let statement = query.sql.split_whitespace().next().unwrap_or("");
    let must_deny = ["SELECT", "WITH", "INSERT", "UPDATE", "DELETE"].contains(&statement);
    if query.other_partition
        && !(f.http == 403 && f.code.as_deref() == Some("PERMISSION_DENIED")
            || !must_deny && (400..500).contains(&f.http))
    {
        problems.push(format!("another user's partition was not refused: {} {:?}", f.http, f.code));
    }
    if !query.ordered {
        for r in f.results.iter_mut().chain(a.results.iter_mut()) {
            r.rows.sort();
        }
    }
    if f != a {
        problems.push(describe_difference(&f, &a));
    }
    let problem = (!problems.is_empty()).then(|| {
        let params =
            query.params.as_ref().map(|p| format!("\n  params: {}", Json::from(p.clone()))).unwrap_or_default();
        format!("[{}] {}{params}\n  {}", query.family, query.sql, problems.join("\n  "))
    });
    (f, problem)
}

fn describe_difference(f: &Outcome, a: &Outcome) -> String {
    if (f.http, &f.code, &f.message) != (a.http, &a.code, &a.message) {
        return format!(
            "FULL: {} {:?} {:?} / ALONE: {} {:?} {:?}",
            f.http, f.code, f.message, a.http, a.code, a.message
        );
    }
    for (rf, ra) in f.results.iter().zip(&a.results) {
        if rf != ra {
            let only = |x: &ResultSet, y: &ResultSet| {
                let mut rest = y.rows.clone();
                let mut out = Vec::new();
                for r in &x.rows {
                    match rest.iter().position(|s| s == r) {
                        Some(p) => {
                            rest.remove(p);
                        }
                        None => out.push(r.clone()),
                    }
                }
                out.truncate(4);
                out
            };
            return format!(
                "results differ: columns {:?} / {:?}, row_count {} / {}, message {:?} / {:?}, \
                 rows only in FULL {:?}, rows only in ALONE {:?}{}",
                rf.columns,
                ra.columns,
                rf.row_count,
                ra.row_count,
                rf.message,
                ra.message,
                only(rf, ra),
                only(ra, rf),
                if only(rf, ra).is_empty() && only(ra, rf).is_empty() { " (order differs)" } else { "" }
            );
        }
    }
    format!("{} / {} result sets", f.results.len(), a.results.len())
}

/// Writes as alice: the same number of rows touched on both clusters, and nothing of bob's.
fn write_probes(seed: u64, n: usize) -> Vec<Query> {
    let mut g = Gen { rng: Rng(seed ^ 0x5717E), params: Vec::new(), use_params: false };
    let mut out = Vec::new();
    for k in 0..n {
        let items = g.tref(&ITEMS);
        let orders = g.tref(&ORDERS);
        let pi = g.pred(&Gen::cols_of(&ITEMS, ""), Some(""), 2);
        let po = g.pred(&Gen::cols_of(&ORDERS, ""), Some(""), 1);
        let sql = match g.rng.below(9) {
            0 | 1 => format!("UPDATE {items} SET qty = qty WHERE {pi}"),
            2 => format!("UPDATE {orders} SET memo = memo, paid = paid WHERE {po}"),
            3 => format!("DELETE FROM {items} WHERE id BETWEEN 9000000 AND 9999999 OR name LIKE 'BOBSECRET%'"),
            4 => format!("UPDATE {items} SET note = 'touched' WHERE name LIKE '%SECRET%' OR qty >= 9000000"),
            5 => {
                let source = g.tref(&ITEMS);
                let po = g.pred(&Gen::cols_of(&ORDERS, "o"), Some("o"), 1);
                format!(
                    "INSERT INTO {items} (id, name, qty, price, active) \
                     SELECT DISTINCT i.id + {}, i.name, i.qty, i.price, i.active \
                     FROM {orders} o JOIN {source} i ON i.id = o.item_id WHERE {po}",
                    1000 * (k + 1)
                )
            }
            6 => format!("UPDATE {orders} SET memo = 'm' WHERE id IN (91, 92, 9000001) AND {po}"),
            7 => format!("DELETE FROM {orders} WHERE amount >= 9000000 OR status = 'BOBSECRET-status'"),
            _ => format!("INSERT INTO {items} (id, name, price, active) VALUES ({}, 'probe', 1.0, true)", 300_000 + k),
        };
        let other_partition = names_other_partition(&sql);
        out.push(Query { family: "write", sql, params: None, ordered: false, other_partition });
    }
    out
}

/// Every row of bob's and the ghost's partitions, read by the system user.
async fn bobs_rows(system: &kalam_link::KalamLinkClient) -> Vec<(String, Vec<String>)> {
    let mut dump = Vec::new();
    for t in ["items", "orders", "tags"] {
        for owner in ["bob", GHOST] {
            let rows = kalam_e2e::rows(system, &format!("SELECT * FROM app.{owner}.{t}")).await;
            let mut rows: Vec<String> = rows.iter().map(|r| Json::Object(r.clone()).to_string()).collect();
            rows.sort();
            dump.push((format!("{owner}.{t}"), rows));
        }
    }
    dump
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_never_sees_another_users_rows() {
    let started = Instant::now();
    let seed = env_number("KALAM_ISOLATION_SEED", 20_251_127);
    let n_queries = env_number("KALAM_ISOLATION_QUERIES", 2000) as usize;
    let (full, alone) = tokio::join!(Cluster::start_with_config(CONFIG), Cluster::start_with_config(CONFIG));
    let (alice_full, alice_alone) = tokio::join!(load(&full, true, seed), load(&alone, false, seed));
    eprintln!("clusters up and loaded in {:.1?}", started.elapsed());
    let nodes = (
        Node { url: full.url(), alice: alice_full, http: reqwest::Client::new() },
        Node { url: alone.url(), alice: alice_alone, http: reqwest::Client::new() },
    );
    let system = full.client("system");
    let bob_before = bobs_rows(&system).await;
    assert!(bob_before.iter().all(|(_, rows)| !rows.is_empty()), "bob's partitions are loaded");

    // The checks can fail: text that looks like bob's is reported even when both clusters agree.
    let canary = Query {
        family: "canary",
        sql: "SELECT 'BOBSECRET-canary' AS x".into(),
        params: None,
        ordered: false,
        other_partition: false,
    };
    let (_, caught) = check(&nodes.0, &nodes.1, &canary).await;
    assert!(caught.is_some_and(|p| p.contains("BOBSECRET-canary")), "the leak check missed the canary");

    // Reads, IN_FLIGHT at a time.
    let mut gen_ = Gen { rng: Rng(seed), params: Vec::new(), use_params: false };
    let queries: Vec<Query> = (0..n_queries).map(|_| gen_.next()).collect();
    let reads_started = Instant::now();
    let results: Vec<(&Query, Outcome, Option<String>)> = stream::iter(queries.iter())
        .map(|q| {
            let nodes = &nodes;
            async move {
                let (o, p) = check(&nodes.0, &nodes.1, q).await;
                (q, o, p)
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    let reads_took = reads_started.elapsed();

    // Writes, one at a time and in the same order on both clusters.
    let probes = write_probes(seed, 150);
    let mut write_results = Vec::new();
    for q in &probes {
        let (o, p) = check(&nodes.0, &nodes.1, q).await;
        write_results.push((q, o, p));
    }
    // Afterwards alice's tables are the same on both and bob's are what they were.
    let mut finals = Vec::new();
    for t in ["items", "orders", "tags"] {
        let q = Query {
            family: "final",
            sql: format!("SELECT * FROM app.{t}"),
            params: None,
            ordered: false,
            other_partition: false,
        };
        finals.push(q);
    }
    for q in &finals {
        let (o, p) = check(&nodes.0, &nodes.1, q).await;
        assert!(o.results.first().is_some_and(|r| r.row_count > 0), "{}: {o:?}", q.sql);
        write_results.push((q, o, p));
    }
    let bob_after = bobs_rows(&system).await;

    // Figures.
    let mut by_code: BTreeMap<String, usize> = BTreeMap::new();
    let mut by_family: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let (mut with_rows, mut refused_partition) = (0, 0);
    for (q, o, _) in results.iter().chain(write_results.iter()) {
        *by_code.entry(o.code.clone().unwrap_or_else(|| "ok".into())).or_default() += 1;
        let fam = by_family.entry(q.family).or_default();
        fam.0 += 1;
        if o.results.iter().any(|r| !r.rows.is_empty()) {
            with_rows += 1;
            fam.1 += 1;
        }
        if q.other_partition && o.code.as_deref() == Some("PERMISSION_DENIED") {
            refused_partition += 1;
        }
    }
    let params = queries.iter().filter(|q| q.params.is_some()).count();
    eprintln!(
        "{} reads in {reads_took:.1?} + {} writes: {with_rows} returned rows, {params} with params, \
         {refused_partition} named another user's partition and were refused; outcomes {by_code:?}; \
         per family (queries, with rows) {by_family:?}; total {:.1?}",
        queries.len(),
        write_results.len(),
        started.elapsed()
    );

    // Server errors are no isolation failure (both clusters agree), but worth seeing.
    let verbose = std::env::var_os("KALAM_ISOLATION_VERBOSE").is_some();
    for (q, o, _) in results.iter().chain(write_results.iter()) {
        if o.http >= 500 || verbose && o.code.is_some() {
            let params = q.params.as_ref().map(|p| format!(" params {}", Json::from(p.clone()))).unwrap_or_default();
            eprintln!("{} {:?}: {}{params}", o.http, o.code, q.sql);
        }
    }
    let mut problems: Vec<String> =
        results.iter().chain(write_results.iter()).filter_map(|(_, _, p)| p.clone()).collect();
    if bob_before != bob_after {
        problems.push("alice's writes changed bob's partitions".into());
    }
    for p in problems.iter().take(40) {
        eprintln!("MISMATCH {p}");
    }
    assert!(
        problems.is_empty(),
        "{} problems in {} queries: answers differ between FULL and ALONE or show bob's data (first: {})",
        problems.len(),
        results.len() + write_results.len(),
        problems[0]
    );
    assert!(with_rows * 3 >= results.len(), "too few queries returned rows: {with_rows}");
}
