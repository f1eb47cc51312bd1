//! Reads of flushed data (storage.md §9). Scans skip flushed files by their manifest ranges: a
//! file that cannot hold a row matching the primary-key bounds or the `_updated` lower bound of
//! a query is never opened (shown by damaging such a file: queries that prune it still answer,
//! the others fail). And the merge of files and buffer matches a model of the table through
//! random inserts, updates, deletes and flushes.

use kalam_e2e::{Cluster, files, flush, rows, wait_status};
use kalam_link::KalamLinkClient;

async fn scalar(client: &KalamLinkClient, sql: &str) -> i64 {
    rows(client, sql).await[0]["n"].as_i64().unwrap_or_else(|| panic!("{sql}: no number"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_outside_the_key_or_updated_bounds_of_a_query_are_not_opened() {
    let cluster = Cluster::start().await;
    let c = cluster.client("system");
    c.query("CREATE NAMESPACE app; CREATE SHARED TABLE app.t (id BIGINT PRIMARY KEY, v TEXT)").await.expect("setup");
    let insert = |from: i64, to: i64| {
        let values: Vec<String> = (from..=to).map(|i| format!("({i}, 'v{i}')")).collect();
        format!("INSERT INTO app.t VALUES {}", values.join(", "))
    };
    c.query(&insert(1, 50)).await.unwrap();
    let first = flush(&c, "app.t").await;
    wait_status(&c, &first, "completed").await;
    let cut = scalar(&c, "SELECT CAST(max(_updated) AS BIGINT) AS n FROM app.t").await;
    c.query(&insert(51, 100)).await.unwrap();
    let second = flush(&c, "app.t").await;
    wait_status(&c, &second, "completed").await;

    // Damage the first flush's file: only the manifest says what it holds now.
    let dir = cluster.data_dir().join("storage/app/shared/t");
    let old: Vec<String> = files(&dir, &|n| n.contains(first.as_str()) && n.ends_with(".parquet"));
    assert_eq!(old.len(), 1, "{old:?}");
    std::fs::write(&old[0], b"damaged").unwrap();

    let pruned = [
        "SELECT count(*) AS n FROM app.t WHERE id > 50",
        "SELECT count(*) AS n FROM app.t WHERE id BETWEEN 60 AND 100",
        "SELECT count(*) AS n FROM app.t WHERE id IN (51, 75, 100, 1000)",
        "SELECT count(*) AS n FROM app.t WHERE 50 < id AND v <> 'x'",
    ];
    let expected = [50, 41, 3, 50];
    for (sql, n) in pruned.iter().zip(expected) {
        assert_eq!(scalar(&c, sql).await, n, "{sql}");
    }
    let after = format!("SELECT count(*) AS n FROM app.t WHERE _updated > TO_TIMESTAMP_MICROS({cut})");
    assert_eq!(scalar(&c, &after).await, 50, "{after}");

    // Queries that may need the file open it (and report the damage); an upper bound on
    // `_updated` never prunes.
    for sql in [
        "SELECT count(*) AS n FROM app.t".to_owned(),
        "SELECT count(*) AS n FROM app.t WHERE id <= 50".to_owned(),
        format!("SELECT count(*) AS n FROM app.t WHERE _updated <= TO_TIMESTAMP_MICROS({cut})"),
    ] {
        assert!(c.query(&sql).await.is_err(), "{sql} did not read the damaged file");
    }
}

async fn id_list(client: &KalamLinkClient, sql: &str) -> Vec<i64> {
    rows(client, sql).await.iter().map(|r| r["id"].as_i64().expect("id")).collect()
}

/// A deterministic pseudo-random sequence (no dependency needed for a test workload).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_reads_match_a_model_through_random_writes_and_flushes() {
    use std::collections::BTreeMap;
    let cluster = Cluster::start().await;
    let alice = cluster.client("alice");
    alice.query("CREATE NAMESPACE app; CREATE USER TABLE app.r (id BIGINT PRIMARY KEY, v TEXT)").await.expect("setup");
    let mut rng = Lcg(42);
    // Key → (value, deleted); a key never written is absent.
    let mut model: BTreeMap<i64, (String, bool)> = BTreeMap::new();
    for round in 0..8 {
        for op in 0..60 {
            let id = rng.below(120) as i64;
            let v = format!("r{round}o{op}");
            let live = model.get(&id).is_some_and(|(_, deleted)| !deleted);
            let sql = match (live, rng.below(3)) {
                (false, _) => format!("INSERT INTO app.r VALUES ({id}, '{v}')"),
                (true, 0) => format!("DELETE FROM app.r WHERE id = {id}"),
                (true, _) => format!("UPDATE app.r SET v = '{v}' WHERE id = {id}"),
            };
            alice.query(&sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
            let entry = model.entry(id).or_insert((String::new(), false));
            match sql.split(' ').next() {
                Some("DELETE") => entry.1 = true,
                _ => *entry = (v, false),
            }
        }
        // Most rounds end with a flush, so files overlap each other and the buffer.
        if round % 3 != 2 {
            let job = flush(&alice, "app.r").await;
            wait_status(&alice, &job, "completed").await;
        }
        let live: Vec<(i64, String)> =
            model.iter().filter(|(_, (_, d))| !d).map(|(k, (v, _))| (*k, v.clone())).collect();
        let got: Vec<(i64, String)> = rows(&alice, "SELECT id, v FROM app.r ORDER BY id")
            .await
            .iter()
            .map(|r| (r["id"].as_i64().unwrap(), r["v"].as_str().unwrap().to_owned()))
            .collect();
        assert_eq!(got, live, "round {round}");
        let above: Vec<i64> = live.iter().map(|(k, _)| *k).filter(|k| *k > 60).collect();
        let got_above = id_list(&alice, "SELECT id FROM app.r WHERE id > 60 ORDER BY id").await;
        assert_eq!(got_above, above, "round {round}: filtered");
        let deleted: Vec<i64> = model.iter().filter(|(_, (_, d))| *d).map(|(k, _)| *k).collect();
        let got_deleted = id_list(&alice, "SELECT id FROM app.r WHERE _deleted = true ORDER BY id").await;
        assert_eq!(got_deleted, deleted, "round {round}: tombstones");
        assert_eq!(scalar(&alice, "SELECT count(*) AS n FROM app.r").await, live.len() as i64);
    }
}
