//! The ceilings every figure is compared with, measured in the same run on the same machine:
//! an axum hello-world server (HTTP), raw RocksDB writes shaped like kalamd's commits
//! (storage), and DataFusion over the same Parquet files (queries; in `sql.rs`).

use std::sync::Arc;
use std::time::Instant;

use rocksdb::{ColumnFamilyDescriptor, DB, Options, WriteBatch};

use crate::load::closed_loop;
use crate::report::{Measurement, Results};

/// `GET /` answered with a fixed text by axum on a loopback port, driven by the same HTTP
/// client and task counts as the SQL benchmarks.
pub async fn axum_hello(results: &mut Results, requests: u64, concurrency: &[usize]) -> anyhow::Result<()> {
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "Hello, World!" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let client = reqwest::Client::new();
    for &c in concurrency {
        let (client, url) = (client.clone(), url.clone());
        let (elapsed, mut lat) = closed_loop(c, requests, move |_, _| {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let body = client.get(&url).send().await?.error_for_status()?.text().await?;
                anyhow::ensure!(body == "Hello, World!", "unexpected body {body}");
                Ok(())
            }
        })
        .await?;
        results.push(Measurement::new(
            &format!("baseline.axum_hello.c{c}"),
            &format!("axum hello-world GET, concurrency {c} (HTTP ceiling)"),
            "requests",
            requests,
            elapsed,
            &mut lat,
        ));
    }
    server.abort();
    Ok(())
}

/// Column families like kalamd's: table rows, the change log and the meta counter.
const FAMILIES: [&str; 3] = ["rows", "change_log", "meta"];

/// Raw RocksDB with kalamd's options (default column-family options, WAL on, no fsync per
/// write): one write batch per commit holding the row, its change-log record and the new
/// commit sequence, for single rows and for 1,000-row commits. Row and record bytes are the
/// size of the benchmark's rows.
pub fn rocksdb_puts(results: &mut Results, single: u64, batches: u64) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    let descriptors = FAMILIES.iter().map(|n| ColumnFamilyDescriptor::new(*n, Options::default()));
    let db = Arc::new(DB::open_cf_descriptors(&opts, dir.path(), descriptors)?);
    let (rows, log, meta) = (
        db.cf_handle("rows").expect("rows"),
        db.cf_handle("change_log").expect("change_log"),
        db.cf_handle("meta").expect("meta"),
    );
    let row = br#"{"id":1234567,"payload":"user 3 row 1234567 payload","_updated":1733580000000000,"_deleted":false}"#;
    let mut seq = 0u64;
    let mut commit = |n: u64, lat: &mut Vec<std::time::Duration>| -> anyhow::Result<()> {
        let started = Instant::now();
        let mut batch = WriteBatch::default();
        for _ in 0..n {
            seq += 1;
            batch.put_cf(&rows, format!("bench:t:u{}:{seq:020}", seq % 64), row);
            batch.put_cf(&log, seq.to_be_bytes(), row);
        }
        batch.put_cf(&meta, b"commit_seq", seq.to_be_bytes());
        db.write(batch)?;
        lat.push(started.elapsed());
        Ok(())
    };
    for (name, title, rows_per_commit, commits) in [
        ("baseline.rocksdb.single", "raw RocksDB commit of one row + change record (storage ceiling)", 1, single),
        (
            "baseline.rocksdb.batch1000",
            "raw RocksDB commit of 1,000 rows + change records (storage ceiling)",
            1000,
            batches,
        ),
    ] {
        let mut lat = Vec::with_capacity(commits as usize);
        let started = Instant::now();
        for _ in 0..commits {
            commit(rows_per_commit, &mut lat)?;
        }
        let elapsed = started.elapsed();
        results.push(Measurement::new(name, title, "rows", commits * rows_per_commit, elapsed, &mut lat));
    }
    Ok(())
}
