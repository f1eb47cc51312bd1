//! Round trip of all ten types through every tier (acceptance.md A "Round trip",
//! `test_roundtrip_insert_flush_query`; storage.md §8–9): a fixed list of SELECTs returns
//! byte-identical JSON while the rows are buffered, after they are flushed to Parquet, and after
//! kalamd is killed and restarted by the supervisor. Updates and deletes of flushed rows then
//! shadow the flushed versions, and flushing those new versions changes nothing visible.

use std::time::Duration;

use kalam_e2e::{Cluster, wait_for};
use kalam_link::{KalamLinkClient, QueryResponse};
use serde_json::{Map, Value as Json};

const COLUMNS: &str = "id BIGINT PRIMARY KEY, b BOOLEAN, i INT, g BIGINT, d DOUBLE, s TEXT, ts TIMESTAMP, \
                       dt DATE, tm TIME, j JSON, y BYTES";

/// Literal values per column (in `COLUMNS` order after `id`): boundaries, specials and NULL.
const VALUES: [&[&str]; 10] = [
    &["TRUE", "FALSE", "NULL"],
    &["0", "1", "-1", "2147483647", "-2147483648", "42", "NULL"],
    &["0", "9223372036854775807", "-9223372036854775808", "9007199254740993", "-1", "NULL"],
    &[
        "0.0",
        "-0.0",
        "3.14159",
        "-2.71828",
        "1.23e-10",
        "'NaN'",
        "'Infinity'",
        "'-Infinity'",
        "1.7976931348623157e308",
        "5e-324",
        "0.1",
        "NULL",
    ],
    &[
        "'hello'",
        "''",
        "'   '",
        "'it''s'",
        "'世界'",
        "'🚀'",
        "'👨\u{200d}👩\u{200d}👧\u{200d}👦'",
        "'e\u{301}'",
        "'\u{e9}'",
        "'مرحبا'",
        "NULL",
    ],
    &[
        "'1970-01-01T00:00:00Z'",
        "'2025-10-24T14:30:00.123456Z'",
        "'2025-10-24T14:30:00+05:30'",
        "'0001-01-01T00:00:00Z'",
        "'9999-12-31T23:59:59.999999Z'",
        "'2100-01-01T00:00:00Z'",
        "NULL",
    ],
    &["'1970-01-01'", "'2025-10-24'", "'0001-01-01'", "'9999-12-31'", "'2099-12-31'", "NULL"],
    &["'00:00:00'", "'14:30:00.123456'", "'23:59:59.999999'", "'00:00:00.000001'", "NULL"],
    &["'{\"key\":\"value\"}'", "'[1,2,3]'", "'{\"a\": {\"b\": [1, {\"c\": null}]}}'", "'[]'", "'{}'", "NULL"],
    &["X'DEADBEEF'", "X'CAFEBABE'", "X''", "X'00FF'", "NULL"],
];

const ROWS: i64 = 50;

/// 50 rows whose values cycle through `VALUES` starting at `seed`; row 50 is NULL in every column.
fn insert(table: &str, seed: usize) -> String {
    let rows: Vec<String> = (1..=ROWS)
        .map(|id| {
            let values: Vec<&str> = VALUES
                .iter()
                .map(|vals| if id == ROWS { "NULL" } else { vals[(id as usize + seed) % vals.len()] })
                .collect();
            format!("({id}, {})", values.join(", "))
        })
        .collect();
    format!("INSERT INTO {table} (id, b, i, g, d, s, ts, dt, tm, j, y) VALUES {}", rows.join(", "))
}

/// The fixed list of queries whose results must never change.
fn queries(t: &str) -> Vec<String> {
    [
        "SELECT * FROM {t} ORDER BY id",
        "SELECT id, b FROM {t} WHERE b ORDER BY id",
        "SELECT id, i FROM {t} WHERE i > 0 ORDER BY id",
        "SELECT id, g FROM {t} WHERE g < 0 OR g > 9007199254740992 ORDER BY id",
        "SELECT id, d FROM {t} WHERE d > 1.0 ORDER BY id",
        "SELECT id, d FROM {t} WHERE isnan(d) ORDER BY id",
        "SELECT id, s FROM {t} WHERE s = '世界' OR s LIKE 'h%' OR s = '' ORDER BY id",
        "SELECT id, ts FROM {t} WHERE ts >= '2025-01-01T00:00:00Z' ORDER BY id",
        "SELECT id, dt FROM {t} WHERE dt BETWEEN '1970-01-01' AND '2100-01-01' ORDER BY id",
        "SELECT id, tm FROM {t} WHERE tm < '12:00:00' ORDER BY id",
        "SELECT id, j FROM {t} WHERE j LIKE '%\"a\"%' OR j = '[]' ORDER BY id",
        "SELECT id, y FROM {t} WHERE y = X'DEADBEEF' OR y = X'' ORDER BY id",
        "SELECT id FROM {t} WHERE b IS NULL AND (i IS NULL OR y IS NULL) ORDER BY id",
        "SELECT count(*) AS n, count(b) AS nb, sum(i) AS si, min(g) AS ming, max(g) AS maxg, min(d) AS mind, \
         max(d) AS maxd, count(DISTINCT s) AS ds, min(ts) AS mints, max(ts) AS maxts, min(dt) AS mindt, \
         max(dt) AS maxdt, min(tm) AS mintm, max(tm) AS maxtm, count(j) AS nj, count(y) AS ny FROM {t}",
        "SELECT b, count(*) AS n, sum(i) AS si FROM {t} GROUP BY b ORDER BY b NULLS FIRST",
        "SELECT dt, count(*) AS n, max(ts) AS latest FROM {t} GROUP BY dt ORDER BY dt NULLS FIRST",
    ]
    .iter()
    .map(|q| q.replace("{t}", t))
    .collect()
}

fn rows(resp: &QueryResponse) -> &Vec<Map<String, Json>> {
    resp.results[0].rows.as_ref().expect("a row-returning statement")
}

/// One query's result as text: columns and rows, serialized so that even `-0.0` vs `0.0` differs.
#[derive(Debug, Clone, PartialEq)]
struct Answer {
    sql: String,
    columns: Vec<String>,
    rows: Vec<String>,
}

fn answer(sql: &str, resp: &QueryResponse) -> Answer {
    let rows = rows(resp).iter().map(|r| serde_json::to_string(r).expect("row json")).collect();
    Answer { sql: sql.to_owned(), columns: resp.results[0].columns.clone(), rows }
}

/// Runs every query of `queries(table)` as `client`.
async fn snapshot(client: &KalamLinkClient, table: &str) -> Vec<Answer> {
    let mut answers = Vec::new();
    for sql in queries(table) {
        let resp = client.query(&sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        answers.push(answer(&sql, &resp));
    }
    answers
}

/// Row-by-row comparison, so a failure names the first differing row instead of printing all.
fn assert_rows(expected: &[String], actual: &[String], what: &str) {
    for (n, (e, a)) in expected.iter().zip(actual).enumerate() {
        assert_eq!(e, a, "{what}: row {n} differs");
    }
    assert_eq!(expected.len(), actual.len(), "{what}: row count differs");
}

fn assert_same(expected: &[Answer], actual: &[Answer], stage: &str, who: &str) {
    for (e, a) in expected.iter().zip(actual) {
        assert_eq!(e.columns, a.columns, "{stage}, {who}: columns of `{}` changed", e.sql);
        assert_rows(&e.rows, &a.rows, &format!("{stage}, {who}: `{}`", e.sql));
    }
}

/// `FLUSH TABLE` as `client`; waits for the job and returns its parsed `result` JSON.
async fn flush(client: &KalamLinkClient, table: &str) -> Json {
    let resp = client.query(&format!("FLUSH TABLE {table}")).await.expect("FLUSH TABLE");
    let job_id = rows(&resp)[0]["job_id"].as_str().expect("job_id").to_owned();
    let sql = format!("SELECT status, error_message, result FROM system.jobs WHERE job_id = '{job_id}'");
    let row = wait_for(Duration::from_secs(60), &format!("flush job {job_id}"), || async {
        let resp = client.query(&sql).await.ok()?;
        let row = rows(&resp).first()?.clone();
        let status = row["status"].as_str()?;
        assert!(!matches!(status, "failed" | "cancelled"), "flush of {table} ended {status}: {}", row["error_message"]);
        (status == "completed").then_some(row)
    })
    .await;
    serde_json::from_str(row["result"].as_str().expect("result text")).expect("result JSON")
}

async fn buffered_rows(cluster: &Cluster, table: &str) -> u64 {
    let engine = kalam_rpc::transport::connect_engine(&cluster.run_dir()).await.expect("engine rpc");
    let stats =
        engine.table_stats(tarpc::context::current(), "rt".into(), table.into()).await.expect("rpc").expect("stats");
    stats.buffered_rows
}

/// §2.3 encodings, checked on the raw JSON of `SELECT *` (the golden files only see text).
fn assert_json_encoding(select_all: &QueryResponse) {
    let rows = rows(select_all);
    let find = |col: &str, want: &dyn Fn(&Json) -> bool| rows.iter().any(|r| want(&r[col]));
    assert!(find("g", &|v| v.as_i64() == Some(i64::MAX)
        && serde_json::to_string(v).is_ok_and(|s| s == "9223372036854775807")));
    assert!(find("g", &|v| v.as_i64() == Some(9_007_199_254_740_993)), "BIGINT beyond 2^53 stays exact");
    for special in ["NaN", "Infinity", "-Infinity"] {
        assert!(find("d", &|v| v == special), "DOUBLE {special} is the string \"{special}\"");
    }
    assert!(find("d", &|v| v.is_f64() && serde_json::to_string(v).is_ok_and(|s| s == "-0.0")), "-0.0 keeps its sign");
    assert!(find("b", &|v| v.is_boolean()));
    assert!(find("i", &|v| v.as_i64() == Some(i64::from(i32::MIN))));
    assert!(find("ts", &|v| v == "2025-10-24T09:00:00.000000Z"), "offsets are converted to UTC");
    assert!(find("ts", &|v| v == "0001-01-01T00:00:00.000000Z"));
    assert!(find("dt", &|v| v == "9999-12-31"));
    assert!(find("tm", &|v| v == "00:00:00.000001"));
    assert!(find("j", &|v| v == "{\"a\": {\"b\": [1, {\"c\": null}]}}"), "JSON is a string holding the stored text");
    assert!(find("y", &|v| v == "0xdeadbeef") && find("y", &|v| v == "0x"));
    assert!(find("s", &|v| v == "e\u{301}") && find("s", &|v| v == "\u{e9}"), "no Unicode normalization");
    let last = rows.last().expect("rows");
    assert_eq!(last["id"], ROWS);
    assert!(
        last.iter().filter(|(k, _)| *k != "id").all(|(_, v)| v.is_null()),
        "row {ROWS} is NULL everywhere: {last:?}"
    );
}

/// `SELECT *` rows after `UPDATE … SET s = 'updated', d = 0.5 WHERE id % 5 = 0` and
/// `DELETE … WHERE id % 7 = 0`, computed from the rows before.
fn rewritten(select_all: &Answer) -> Vec<String> {
    select_all
        .rows
        .iter()
        .filter_map(|text| {
            let mut row: Map<String, Json> = serde_json::from_str(text).expect("row");
            let id = row["id"].as_i64().expect("id");
            if id % 5 == 0 {
                row.insert("s".into(), Json::from("updated"));
                row.insert("d".into(), Json::from(0.5));
            }
            (id % 7 != 0).then(|| serde_json::to_string(&row).expect("row json"))
        })
        .collect()
}

async fn rewrite(client: &KalamLinkClient, table: &str) {
    let resp =
        client.query(&format!("UPDATE {table} SET s = 'updated', d = 0.5 WHERE id % 5 = 0")).await.expect("update");
    assert_eq!(resp.results[0].row_count, 10, "UPDATE of flushed rows in {table} reports the matched rows");
    let resp = client.query(&format!("DELETE FROM {table} WHERE id % 7 = 0")).await.expect("delete");
    assert_eq!(resp.results[0].row_count, 7, "DELETE of flushed rows in {table} reports the deleted rows");
}

async fn deleted_ids(client: &KalamLinkClient, table: &str) -> Vec<i64> {
    let resp =
        client.query(&format!("SELECT id FROM {table} WHERE _deleted = true ORDER BY id")).await.expect("select");
    rows(&resp).iter().map(|r| r["id"].as_i64().expect("id")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_ten_types_read_the_same_from_every_tier() {
    let cluster = Cluster::start().await;
    let system = cluster.client("system");
    system
        .query(&format!(
            "CREATE NAMESPACE rt; CREATE USER TABLE rt.u ({COLUMNS}); CREATE SHARED TABLE rt.s ({COLUMNS})"
        ))
        .await
        .expect("setup");
    let alice = cluster.client("alice");
    let bob = cluster.client("bob");
    alice.query(&insert("rt.u", 0)).await.expect("alice's rows");
    bob.query(&insert("rt.u", 3)).await.expect("bob's rows");
    alice.query(&insert("rt.s", 5)).await.expect("shared rows");

    // Who reads which table, and whether the rewrite below touches those rows. The shared table is
    // written by alice and read (and rewritten) by bob; alice rewrites only her own USER rows.
    let views = [(&alice, "alice", "rt.u", true), (&bob, "bob", "rt.u", false), (&bob, "bob", "rt.s", true)];
    let mut buffered = Vec::new();
    for (client, _, table, _) in views {
        buffered.push(snapshot(client, table).await);
    }
    for answers in &buffered {
        assert_eq!(answers[0].rows.len(), ROWS as usize);
    }
    assert_ne!(buffered[0][0], buffered[1][0], "alice and bob hold different rows");
    let select_all = alice.query("SELECT * FROM rt.u ORDER BY id").await.expect("select");
    assert_json_encoding(&select_all);
    assert_json_encoding(&bob.query("SELECT * FROM rt.s ORDER BY id").await.expect("select"));

    // Flushed to Parquet: nothing stays buffered, every answer is identical.
    assert_eq!(flush(&system, "rt.u").await["records_flushed"], 2 * ROWS);
    assert_eq!(flush(&system, "rt.s").await["records_flushed"], ROWS);
    assert_eq!(buffered_rows(&cluster, "u").await, 0);
    assert_eq!(buffered_rows(&cluster, "s").await, 0);
    for ((client, who, table, _), expected) in views.iter().zip(&buffered) {
        assert_same(expected, &snapshot(client, table).await, "after FLUSH", who);
    }

    // kalamd killed with SIGKILL and restarted by the supervisor: still identical.
    cluster.kill_and_wait_restart("kalamd").await;
    wait_for(Duration::from_secs(60), "kalamd answering SQL", || async { system.query("SELECT 1").await.ok() }).await;
    for ((client, who, table, _), expected) in views.iter().zip(&buffered) {
        assert_same(expected, &snapshot(client, table).await, "after a kalamd restart", who);
    }

    // Updates and deletes of flushed rows shadow the flushed versions.
    rewrite(&alice, "rt.u").await;
    rewrite(&bob, "rt.s").await;
    let deleted = |touched: bool| -> Vec<i64> { (1..=ROWS).filter(|id| touched && id % 7 == 0).collect() };
    let mut rewritten_answers = Vec::new();
    for ((client, who, table, touched), before) in views.iter().zip(&buffered) {
        let answers = snapshot(client, table).await;
        let expected = if *touched { rewritten(&before[0]) } else { before[0].rows.clone() };
        assert_rows(&expected, &answers[0].rows, &format!("SELECT * of {table} for {who} after UPDATE/DELETE"));
        assert_eq!(deleted_ids(client, table).await, deleted(*touched), "deleted rows of {table} for {who}");
        rewritten_answers.push(answers);
    }
    assert_same(&buffered[1], &rewritten_answers[1], "after alice's UPDATE/DELETE", "bob");

    // Flushing the new versions (updates and tombstones) changes nothing visible.
    let changed = (1..=ROWS).filter(|id| id % 5 == 0 || id % 7 == 0).count() as i64;
    assert_eq!(flush(&system, "rt.u").await["records_flushed"], changed);
    assert_eq!(flush(&system, "rt.s").await["records_flushed"], changed);
    for ((client, who, table, touched), expected) in views.iter().zip(&rewritten_answers) {
        assert_same(expected, &snapshot(client, table).await, "after the second FLUSH", who);
        let what = format!("deleted rows of {table} for {who} after the second FLUSH");
        assert_eq!(deleted_ids(client, table).await, deleted(*touched), "{what}");
    }
}
