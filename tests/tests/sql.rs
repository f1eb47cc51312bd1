//! SQL golden files: every `tests/slt/*.slt` file runs against a real server over HTTP.
//!
//! Harness directive (not SQL): a statement `\user <id>` makes the following statements run as
//! that acting user (`X-USER-ID`). Errors surface as `<CODE>: <message>`, so `statement error`
//! lines can match either.

use std::path::PathBuf;

use async_trait::async_trait;
use kalam_e2e::Cluster;
use kalam_link::KalamLinkClient;
use serde_json::Value as Json;
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType};

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

#[async_trait]
impl AsyncDB for HttpDb {
    type Error = SqlError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, SqlError> {
        if let Some(user) = sql.trim().strip_prefix("\\user ") {
            self.user = user.trim().to_owned();
            return Ok(DBOutput::StatementComplete(0));
        }
        let client = KalamLinkClient::new(self.url.clone()).with_user(self.user.clone());
        let (_, resp) = client.query_raw(sql).await.map_err(|e| SqlError(e.to_string()))?;
        if let Some(e) = resp.error {
            return Err(SqlError(format!("{}: {}", e.code, e.message)));
        }
        let last = resp.results.last().ok_or_else(|| SqlError("no result".into()))?;
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

async fn run_slt(name: &str) {
    let cluster = Cluster::start().await;
    let url = cluster.url();
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("slt").join(name);
    let mut runner = sqllogictest::Runner::new(move || {
        let url = url.clone();
        async move { Ok(HttpDb { url, user: "system".into() }) }
    });
    if let Err(e) = runner.run_file_async(&path).await {
        panic!("{}: {}", path.display(), e.display(true));
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
}
