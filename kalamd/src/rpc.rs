//! The `Engine` service over kalamd's Unix socket.

use std::sync::Arc;
use std::time::Duration;

use kalam_rpc::{
    ChangeBatch, DeadLetter, FlushCandidate, FlushPlan, FlushSummary, FlushedFile, Health, RpcError, Snapshot,
    SnapshotOptions, SubscriptionPlan, TableStats,
};
use kalam_types::error::KalamError;
use kalam_types::ids::UserId;
use kalam_types::schema::TableType;
use tarpc::context::Context;

use crate::engine::Engine;
use crate::error::EngineError;
use crate::read::manifest_entries;
use crate::store::counter_key;

/// Longest long-poll wait granted to one `poll_changes` call.
const MAX_POLL_WAIT: Duration = Duration::from_secs(30);
/// Most change records returned by one poll.
const MAX_POLL_RECORDS: u32 = 10_000;

#[derive(Clone)]
pub struct EngineService(pub Arc<Engine>);

fn rpc_err(e: EngineError) -> RpcError {
    e.to_client()
}

/// Runs blocking engine work (commit lock, RocksDB, files) off the RPC executor.
async fn blocking<T, F>(engine: &Arc<Engine>, f: F) -> Result<T, RpcError>
where
    T: Send + 'static,
    F: FnOnce(&Arc<Engine>) -> Result<T, EngineError> + Send + 'static,
{
    let engine = engine.clone();
    tokio::task::spawn_blocking(move || f(&engine)).await.map_err(|_| KalamError::internal())?.map_err(rpc_err)
}

impl kalam_rpc::Engine for EngineService {
    async fn health(self, _: Context) -> Health {
        Health::of("kalamd")
    }

    async fn authenticate(
        self,
        _: Context,
        presented: kalam_types::auth::Presented,
    ) -> Result<kalam_types::auth::Identity, RpcError> {
        crate::auth::authenticate(&self.0, &presented).map_err(|e| e.to_client())
    }

    async fn begin_flush(self, _: Context, job_id: String) -> Result<FlushPlan, RpcError> {
        blocking(&self.0, move |engine| engine.begin_flush(&job_id)).await
    }

    async fn commit_flush(
        self,
        _: Context,
        job_id: String,
        attempt: u32,
        files: Vec<FlushedFile>,
    ) -> Result<FlushSummary, RpcError> {
        blocking(&self.0, move |engine| engine.commit_flush(&job_id, attempt, &files)).await
    }

    async fn fail_flush(self, _: Context, job_id: String, attempt: u32, error: String) -> Result<(), RpcError> {
        blocking(&self.0, move |engine| engine.fail_flush(&job_id, attempt, &error)).await
    }

    async fn runnable_flush_jobs(self, _: Context) -> Result<Vec<String>, RpcError> {
        self.0.runnable_flush_jobs().map_err(rpc_err)
    }

    async fn flush_candidates(self, _: Context) -> Result<Vec<FlushCandidate>, RpcError> {
        blocking(&self.0, move |engine| engine.flush_candidates()).await
    }

    async fn trigger_flush(self, _: Context, namespace: String, table: String) -> Result<String, RpcError> {
        let def = self.0.catalog.require_table(&namespace, &table)?;
        blocking(&self.0, move |engine| engine.create_flush_job(&def).map(|(job_id, _)| job_id)).await
    }

    async fn poll_changes(
        self,
        _: Context,
        after_seq: u64,
        max_records: u32,
        wait_ms: u32,
    ) -> Result<ChangeBatch, RpcError> {
        let wait = Duration::from_millis(wait_ms.into()).min(MAX_POLL_WAIT);
        let max = max_records.clamp(1, MAX_POLL_RECORDS) as usize;
        let (records, head_seq) = self.0.poll_changes(after_seq, max, wait).await.map_err(rpc_err)?;
        let (floor_seq, stream_floor_seq) = self.0.store.change_log_floors();
        Ok(ChangeBatch { records, head_seq, floor_seq, stream_floor_seq })
    }

    async fn plan_subscription(self, _: Context, user_id: String, sql: String) -> Result<SubscriptionPlan, RpcError> {
        let user = UserId::parse(&user_id)?;
        blocking(&self.0, move |engine| crate::live::plan(engine, &user, &sql)).await
    }

    async fn subscription_snapshot(
        self,
        _: Context,
        user_id: String,
        sql: String,
        options: SnapshotOptions,
    ) -> Result<Snapshot, RpcError> {
        let user = UserId::parse(&user_id)?;
        blocking(&self.0, move |engine| {
            let plan = crate::live::plan(engine, &user, &sql)?;
            crate::live::snapshot(engine, &user, &plan, &options)
        })
        .await
    }

    async fn table_stats(self, _: Context, namespace: String, table: String) -> Result<TableStats, RpcError> {
        let def = self.0.catalog.require_table(&namespace, &table)?;
        let buffered_rows =
            self.0.store.read_counter(&counter_key(&namespace, &table, None)).map_err(|e| rpc_err(e.into()))?;
        let prefix_all = def.table_type != TableType::Shared;
        let mut files = Vec::new();
        if prefix_all {
            // Every user's files: the manifest keys share `<ns>:<table>:`.
            let prefix = format!("{namespace}:{table}:").into_bytes();
            for (_, v) in
                self.0.store.scan_prefix(crate::store::cf::TABLE_FILES, &prefix).map_err(|e| rpc_err(e.into()))?
            {
                let entry: crate::flush::ManifestEntry =
                    serde_json::from_slice(&v).map_err(|e| rpc_err(EngineError::corrupt("table_files", e)))?;
                files.push(entry.path);
            }
        } else {
            files = manifest_entries(&self.0, &def, None).map_err(rpc_err)?.into_iter().map(|e| e.path).collect();
        }
        Ok(TableStats { buffered_rows, files })
    }

    async fn committed_files(
        self,
        _: Context,
        job_id: String,
        user_id: Option<String>,
    ) -> Result<Vec<String>, RpcError> {
        blocking(&self.0, move |engine| engine.committed_files(&job_id, user_id.as_deref())).await
    }

    async fn dead_letters(self, _: Context) -> Result<Vec<DeadLetter>, RpcError> {
        blocking(&self.0, move |engine| engine.dead_letters()).await
    }

    async fn admin_sql(self, _: Context, sql: String) -> String {
        let started = std::time::Instant::now();
        let identity = kalam_types::auth::Identity::system(UserId::system());
        let sql_bytes = sql.len();
        let engine = self.0.clone();
        let work = async move {
            let (results, failure) = crate::sql::execute_request(&engine, &sql, None, &identity).await;
            let (_, body) = crate::http::envelope(results, failure, started.elapsed().as_millis() as u64);
            serde_json::to_string(&body).unwrap_or_default()
        };
        tracing::info!(sql_bytes, "admin SQL over the engine socket");
        match self.0.sql_runtime.run(work).await {
            Ok(body) => body,
            Err(e) => {
                let (_, body) = crate::http::envelope(
                    vec![],
                    Some(crate::sql::BatchError { error: e, statement_index: None, statement: None }),
                    started.elapsed().as_millis() as u64,
                );
                serde_json::to_string(&body).unwrap_or_default()
            }
        }
    }
}
