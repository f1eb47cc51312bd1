//! A fake kalamd `Engine` service: the change-log and subscription calls for kalam-lived and
//! the flush calls for kalam-flushd, each backed by a driver's state. Calls a driver does not
//! serve answer INVALID_OPERATION.

use std::sync::Arc;

use kalam_rpc::{
    ChangeBatch, DeadLetter, FlushCandidate, FlushPlan, FlushSummary, FlushedFile, Health, RpcError, Snapshot,
    SnapshotOptions, SubscriptionPlan, TableStats,
};
use kalam_types::auth::{Identity, Presented};
use tarpc::context::Context;

use super::flushd::FlushSide;
use super::lived::LiveSide;
use super::unsupported;

#[derive(Clone, Default)]
pub struct FakeEngine {
    pub live: Option<Arc<LiveSide>>,
    pub flush: Option<Arc<FlushSide>>,
}

impl FakeEngine {
    fn live(&self) -> Result<&LiveSide, RpcError> {
        self.live.as_deref().ok_or_else(|| unsupported("the change log"))
    }

    fn flush(&self) -> Result<&FlushSide, RpcError> {
        self.flush.as_deref().ok_or_else(|| unsupported("flushing"))
    }
}

impl kalam_rpc::Engine for FakeEngine {
    async fn health(self, _: Context) -> Health {
        Health::of("kalamd")
    }

    async fn authenticate(self, _: Context, presented: Presented) -> Result<Identity, RpcError> {
        let acting = presented.acting.unwrap_or_else(|| "anonymous".into());
        Ok(Identity::system(kalam_types::ids::UserId::parse(&acting)?))
    }

    async fn begin_flush(self, _: Context, job_id: String) -> Result<FlushPlan, RpcError> {
        self.flush()?.begin(&job_id)
    }

    async fn commit_flush(
        self,
        _: Context,
        job_id: String,
        attempt: u32,
        files: Vec<FlushedFile>,
    ) -> Result<FlushSummary, RpcError> {
        self.flush()?.commit(&job_id, attempt, &files)
    }

    async fn fail_flush(self, _: Context, job_id: String, attempt: u32, error: String) -> Result<(), RpcError> {
        self.flush()?.fail(&job_id, attempt, &error);
        Ok(())
    }

    async fn runnable_flush_jobs(self, _: Context) -> Result<Vec<String>, RpcError> {
        Ok(self.flush.as_deref().map(FlushSide::pending).unwrap_or_default())
    }

    async fn flush_candidates(self, _: Context) -> Result<Vec<FlushCandidate>, RpcError> {
        Ok(Vec::new())
    }

    async fn trigger_flush(self, _: Context, _: String, _: String) -> Result<String, RpcError> {
        Err(unsupported("trigger_flush"))
    }

    async fn poll_changes(
        self,
        _: Context,
        after_seq: u64,
        max_records: u32,
        wait_ms: u32,
    ) -> Result<ChangeBatch, RpcError> {
        Ok(self.live()?.poll(after_seq, max_records, wait_ms).await)
    }

    async fn plan_subscription(self, _: Context, user_id: String, sql: String) -> Result<SubscriptionPlan, RpcError> {
        self.live()?.plan(&user_id, &sql)
    }

    async fn subscription_snapshot(
        self,
        _: Context,
        _: String,
        _: String,
        _: SnapshotOptions,
    ) -> Result<Snapshot, RpcError> {
        Ok(Snapshot { rows: Vec::new(), has_more: false, commit_seq: self.live()?.head() })
    }

    async fn table_stats(self, _: Context, _: String, _: String) -> Result<TableStats, RpcError> {
        Err(unsupported("table_stats"))
    }

    async fn committed_files(self, _: Context, _: String, _: Option<String>) -> Result<Vec<String>, RpcError> {
        Ok(Vec::new())
    }

    async fn dead_letters(self, _: Context) -> Result<Vec<DeadLetter>, RpcError> {
        Ok(Vec::new())
    }

    async fn admin_sql(self, _: Context, _: String) -> String {
        r#"{"status":"error","error":{"code":"INVALID_OPERATION","message":"not served by this fake"}}"#.into()
    }
}
