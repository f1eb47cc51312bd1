//! SQL golden files: every `tests/slt/*.slt` file runs against a real server over HTTP.
//!
//! Harness directives (not SQL), written as the SQL of a record:
//! - `\user <id>` makes the following statements run as that acting user (`X-USER-ID`).
//! - `\flush <ns>.<table>` runs `FLUSH TABLE <ns>.<table>` as the system user and waits (polling
//!   `system.jobs` every 100 ms, at most 30 s) until the job is `completed`; a `failed` or
//!   `cancelled` job, or the deadline, fails the record. Use it as `statement ok`.
//! - `\message <sql>` runs `<sql>` and returns the last statement's `message` as a one-row,
//!   one-column result (`query T`), so success messages can be pinned.
//! - `\columns <sql>` runs `<sql>` and returns the last statement's `columns` as one row.
//!
//! Errors surface as `<CODE>: <message>`, so `statement error` lines can match either. Every
//! record of a file runs even after a failure; the test then fails listing every mismatch. In
//! expected results `<slt:ignore>` stands for any text within one row.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use kalam_e2e::Cluster;
use kalam_link::{KalamLinkClient, QueryResult};
use serde_json::Value as Json;
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType, Normalizer};

#[derive(Debug)]
struct SqlError(String);

impl std::fmt::Display for SqlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SqlError {}

struct HttpDb {
    url: String,
    user: String,
}

fn cell(v: &Json) -> String {
    match v {
        Json::Null => "NULL".into(),
        Json::String(s) if s.is_empty() => "(empty)".into(),
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl HttpDb {
    /// Runs `sql` as the acting user; returns the last statement's result.
    async fn query(&self, sql: &str) -> Result<QueryResult, SqlError> {
        let client = KalamLinkClient::new(self.url.clone()).with_user(self.user.clone()).expect("acting user");
        let (_, resp) = client.query_raw(sql).await.map_err(|e| SqlError(e.to_string()))?;
        if let Some(e) = resp.error {
            return Err(SqlError(format!("{}: {}", e.code, e.message)));
        }
        resp.results.into_iter().last().ok_or_else(|| SqlError("no result".into()))
    }
}

/// `\flush <ns>.<table>`: starts a flush as the system user and waits for its job to complete.
async fn flush_and_wait(url: &str, table: &str) -> Result<(), SqlError> {
    let fail = |what: String| SqlError(format!("\\flush {table}: {what}"));
    let system = KalamLinkClient::new(url).with_user("system").expect("acting user");
    let resp = system.query(&format!("FLUSH TABLE {table}")).await.map_err(|e| fail(e.to_string()))?;
    let job_id = resp
        .results
        .last()
        .and_then(|r| r.rows.as_ref()?.first()?.get("job_id")?.as_str().map(str::to_owned))
        .ok_or_else(|| fail(format!("no job_id in the FLUSH TABLE result: {resp:?}")))?;
    let sql = format!("SELECT status, error_message FROM system.jobs WHERE job_id = '{job_id}'");
    let timeout = Duration::from_secs(30);
    let deadline = Instant::now() + timeout;
    let mut status = String::from("(no job row)");
    loop {
        let resp = system.query(&sql).await.map_err(|e| fail(e.to_string()))?;
        if let Some(row) = resp.results.last().and_then(|r| r.rows.as_ref()?.first().cloned()) {
            status = row.get("status").and_then(Json::as_str).unwrap_or("(no status)").to_owned();
            match status.as_str() {
                "completed" => return Ok(()),
                "failed" | "cancelled" => {
                    let error = row.get("error_message").map(cell).unwrap_or_else(|| "NULL".into());
                    return Err(fail(format!("job {job_id} ended {status}: {error}")));
                }
                _ => {}
            }
        }
        if Instant::now() >= deadline {
            return Err(fail(format!("job {job_id} not completed after {timeout:?} (status {status})")));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[async_trait]
impl AsyncDB for HttpDb {
    type Error = SqlError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, SqlError> {
        let sql = sql.trim();
        if let Some(user) = sql.strip_prefix("\\user ") {
            self.user = user.trim().to_owned();
            return Ok(DBOutput::StatementComplete(0));
        }
        if let Some(table) = sql.strip_prefix("\\flush ") {
            flush_and_wait(&self.url, table.trim()).await?;
            return Ok(DBOutput::StatementComplete(0));
        }
        if let Some(sql) = sql.strip_prefix("\\message ") {
            let last = self.query(sql).await?;
            let message = last.message.as_ref().map_or(Json::Null, |m| Json::from(m.as_str()));
            return Ok(DBOutput::Rows { types: vec![DefaultColumnType::Any], rows: vec![vec![cell(&message)]] });
        }
        if let Some(sql) = sql.strip_prefix("\\columns ") {
            let last = self.query(sql).await?;
            let types = vec![DefaultColumnType::Any; last.columns.len()];
            return Ok(DBOutput::Rows { types, rows: vec![last.columns] });
        }
        let last = self.query(sql).await?;
        Ok(match &last.rows {
            Some(rows) => DBOutput::Rows {
                types: vec![DefaultColumnType::Any; last.columns.len()],
                rows: rows.iter().map(|r| last.columns.iter().map(|c| cell(&r[c])).collect()).collect(),
            },
            None => DBOutput::StatementComplete(last.row_count),
        })
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "kalamdb"
    }

    async fn sleep(dur: std::time::Duration) {
        tokio::time::sleep(dur).await;
    }
}

/// Compares results row by row. `<slt:ignore>` matches any text within its own row only: the
/// default validator lets it swallow whole rows, so extra or missing rows would go unnoticed.
fn row_validator(normalizer: Normalizer, actual: &[Vec<String>], expected: &[String]) -> bool {
    actual.len() == expected.len()
        && actual.iter().zip(expected).all(|(row, line)| {
            let actual = row.iter().map(normalizer).collect::<Vec<_>>().join(" ");
            let line = normalizer(line);
            let mut parts = line.split("<slt:ignore>");
            let Some(mut rest) = actual.strip_prefix(parts.next().unwrap_or_default()) else {
                return false;
            };
            let parts: Vec<&str> = parts.collect();
            let Some((last, middle)) = parts.split_last() else {
                return rest.is_empty();
            };
            for part in middle {
                let Some(at) = rest.find(part) else {
                    return false;
                };
                rest = &rest[at + part.len()..];
            }
            rest.ends_with(last)
        })
}

async fn run_slt(name: &str) {
    let cluster = Cluster::start().await;
    let url = cluster.url();
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("slt").join(name);
    let mut runner = sqllogictest::Runner::new(move || {
        let url = url.clone();
        async move { Ok(HttpDb { url, user: "system".into() }) }
    });
    runner.with_validator(row_validator);
    // Every record runs even after a failure, so one run lists every mismatch of the file.
    let records = sqllogictest::parse_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut failures = Vec::new();
    for record in records {
        if let sqllogictest::Record::Halt { .. } = record {
            break;
        }
        if let Err(e) = runner.run_async(record).await {
            failures.push(e.display(true).to_string());
        }
    }
    if !failures.is_empty() {
        panic!("{}: {} failing record(s)\n\n{}", path.display(), failures.len(), failures.join("\n\n"));
    }
}

macro_rules! slt {
    ($($test:ident => $file:literal),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                run_slt($file).await;
            }
        )*
    };
}

slt! {
    ddl => "ddl.slt",
    dml_and_queries => "dml_and_queries.slt",
    errors => "errors.slt",
    update_delete => "update_delete.slt",
    defaults => "defaults.slt",
    introspection => "introspection.slt",
    drop => "drop.slt",
    storages => "storages.slt",
    types => "types.slt",
    soft_delete => "soft_delete.slt",
    isolation => "isolation.slt",
    namespaces => "namespaces.slt",
    alter_table => "alter_table.slt",
    stream_tables => "stream_tables.slt",
    system_tables => "system_tables.slt",
    table_options => "table_options.slt",
    partitions_and_insert_select => "partitions_and_insert_select.slt",
}
