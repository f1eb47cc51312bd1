//! Scans skip flushed files by their manifest ranges (storage.md §9): a file that cannot hold a
//! row matching the primary-key bounds or the `_updated` lower bound of a query is never
//! opened. Shown by damaging such a file: queries that prune it still answer, the others fail.

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
