//! Wire types of the internal services. bincode carries them, so no untagged enums, no
//! `serde_json::Value` and no `flatten`: rows travel as JSON text.

use serde::{Deserialize, Serialize};

pub use kalam_types::change::{ChangeKind, ChangeRecord};
use kalam_types::error::KalamError as RpcError;
use kalam_types::schema::{TableDefinition, TableType};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub process: String,
    pub pid: u32,
    pub version: String,
}

impl Health {
    pub fn of(process: &str) -> Self {
        Self { process: process.to_owned(), pid: std::process::id(), version: env!("CARGO_PKG_VERSION").to_owned() }
    }
}

/// What a flush attempt must write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlushPlan {
    pub job_id: String,
    /// Attempt number (1-based); the commit must name it.
    pub attempt: u32,
    pub table: TableDefinition,
    /// RocksDB checkpoint holding the rows to flush (open read-only).
    pub checkpoint_path: String,
    /// Column family of the table inside the checkpoint.
    pub column_family: String,
    /// Base directory of the table's storage (`s3://bucket/prefix/` for S3 storages).
    pub storage_base: String,
    /// `filesystem` or `s3`.
    pub storage_type: String,
    /// S3 credentials (JSON object text), decrypted for this job; sent over the 0600 socket.
    pub credentials: Option<String>,
    /// The storage's path templates (storage.md §7).
    pub shared_template: String,
    pub user_template: String,
    /// The job's creation time, microseconds since the epoch (used in file names).
    pub job_created_at_us: i64,
    /// Rows per file at most: a larger group is split into files numbered 1, 2, ….
    pub max_rows_per_file: u64,
    /// USER tables: users this job flushes at most (0 = all); kalamd queues a follow-up job
    /// for the users after the last one written.
    pub max_users_per_job: u64,
    /// USER tables: the job flushes only users after this one (a follow-up job).
    pub after_user: Option<String>,
    /// Parquet compression (`storage.compression`): `none`, `snappy` or `zstd`.
    pub compression: String,
}

/// A flush job that failed after its last attempt (`system.jobs.dead_letter`), waiting for
/// `RETRY JOB`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub job_id: String,
    pub namespace: String,
    pub table: String,
    pub attempts: u32,
    pub error_message: Option<String>,
    /// When it was given up, microseconds since the epoch.
    pub failed_at_us: Option<i64>,
}

/// One Parquet file a flush attempt wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlushedFile {
    /// Owner of the rows (USER tables).
    pub user_id: Option<String>,
    /// Path relative to the storage base.
    pub path: String,
    pub size_bytes: u64,
    pub row_count: u64,
    pub min_updated_us: i64,
    pub max_updated_us: i64,
    /// Smallest and largest primary-key bytes in the file (rows are in key order).
    pub min_pk: Vec<u8>,
    pub max_pk: Vec<u8>,
}

/// A table with a time trigger (storage.md §5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlushCandidate {
    pub namespace: String,
    pub table: String,
    pub buffered_rows: u64,
    pub interval_seconds: u64,
    /// Last completed flush, or when the table (or this kalamd) started if never flushed.
    pub last_flush_at_us: i64,
    /// A flush job is already new, queued, running or retrying.
    pub active: bool,
}

impl FlushCandidate {
    /// Due when the buffer holds rows, no job is active and the interval has passed.
    pub fn is_due(&self, now_us: i64) -> bool {
        self.waiting() && now_us >= self.due_at_us()
    }

    /// When the interval runs out (µs since the epoch).
    pub fn due_at_us(&self) -> i64 {
        self.last_flush_at_us.saturating_add((self.interval_seconds as i64).saturating_mul(1_000_000))
    }

    /// Holds rows and has no active job: it flushes once due.
    pub fn waiting(&self) -> bool {
        !self.active && self.buffered_rows > 0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlushSummary {
    pub records_flushed: u64,
    pub files: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeBatch {
    pub records: Vec<ChangeRecord>,
    /// Newest committed sequence at the time of the answer.
    pub head_seq: u64,
    /// Every persistent change after this sequence is still in the log (older ones were
    /// removed by retention): a reader at or after it misses nothing of USER tables.
    pub floor_seq: u64,
    /// The same for STREAM-table changes, which live in a bounded in-memory tail that a kalamd
    /// restart empties.
    pub stream_floor_seq: u64,
}

impl ChangeBatch {
    /// True when a reader that has seen everything up to `after` can continue without a gap
    /// for a table of `table_type`.
    pub fn reaches_back_to(&self, after: u64, table_type: TableType) -> bool {
        let floor = match table_type {
            TableType::Stream => self.floor_seq.max(self.stream_floor_seq),
            _ => self.floor_seq,
        };
        after >= floor && after <= self.head_seq
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscriptionPlan {
    pub namespace: String,
    pub table: String,
    pub table_type: TableType,
    /// The table as the plan saw it (the filter is compiled against its columns).
    pub definition: TableDefinition,
    /// Projected columns, in output order; `None` for `SELECT *` (every column of the row as
    /// it was written, so columns added later appear too).
    pub columns: Option<Vec<String>>,
    /// The WHERE predicate as SQL text, `CURRENT_USER()` replaced by the acting user's id.
    pub filter: Option<String>,
    /// Newest commit sequence when the plan was made.
    pub start_after: u64,
}

/// Snapshot options of a subscription (api.md §4.2), as the client sent them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotOptions {
    pub last_rows: Option<u64>,
    /// A timestamp in any TIMESTAMP form of sql.md §2.2.
    pub since: Option<String>,
    /// A primary-key value as JSON text (number or string).
    pub from_id: Option<String>,
}

impl SnapshotOptions {
    pub fn is_empty(&self) -> bool {
        self.last_rows.is_none() && self.since.is_none() && self.from_id.is_none()
    }
}

/// The start options of one subscription (api.md §4.2): a snapshot, or a resume with
/// `from_seq`, or neither.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscribeOptions {
    pub snapshot: Option<SnapshotOptions>,
    pub from_seq: Option<u64>,
}

impl SubscribeOptions {
    /// Reads the `options` object of a subscription (WebSocket) or of `SUBSCRIBE TO … OPTIONS`.
    /// Bad values are `INVALID_OPTION`; unknown keys are ignored (callers that must refuse
    /// them check first). `last_rows: 0` asks for no snapshot.
    pub fn parse(options: &serde_json::Map<String, serde_json::Value>) -> Result<SubscribeOptions, RpcError> {
        use kalam_types::ErrorCode;
        let bad = |m: &str| RpcError::new(ErrorCode::InvalidOption, format!("Invalid option value: {m}"));
        let mut snapshot = SnapshotOptions::default();
        let mut from_seq = None;
        for (key, value) in options {
            match key.as_str() {
                "last_rows" => {
                    let n = value.as_u64().ok_or_else(|| bad("last_rows must be a non-negative integer"))?;
                    snapshot.last_rows = (n > 0).then_some(n);
                }
                "since" => {
                    let text = value.as_str().ok_or_else(|| bad("since must be a timestamp string"))?;
                    if kalam_types::time::parse_timestamp_micros(text).is_none() {
                        return Err(bad(&format!("since must be a timestamp, got '{text}'")));
                    }
                    snapshot.since = Some(text.to_owned());
                }
                "from_id" => {
                    if !(value.is_number() || value.is_string()) {
                        return Err(bad("from_id must be a number or a string"));
                    }
                    snapshot.from_id = Some(value.to_string());
                }
                "from_seq" => {
                    from_seq = Some(value.as_u64().ok_or_else(|| bad("from_seq must be a non-negative integer"))?)
                }
                _ => {}
            }
        }
        if from_seq.is_some() && options.keys().any(|k| matches!(k.as_str(), "last_rows" | "since" | "from_id")) {
            return Err(RpcError::new(
                ErrorCode::InvalidOption,
                "from_seq cannot be combined with last_rows, since or from_id",
            ));
        }
        Ok(SubscribeOptions { snapshot: (!snapshot.is_empty()).then_some(snapshot), from_seq })
    }
}

/// The initial rows of a subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Rows as JSON object text (projected columns, then `_updated` and `_deleted`), oldest
    /// first.
    pub rows: Vec<String>,
    pub has_more: bool,
    /// The change-log position the rows are consistent with.
    pub commit_seq: u64,
}

/// What kalam-lived holds right now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveStats {
    pub connections: u64,
    pub subscriptions: u64,
    /// Partitions with at least one subscription.
    pub partitions: u64,
    /// Compiled filters shared by subscriptions.
    pub filters: u64,
    /// Outgoing queues (one per connection).
    pub channels: u64,
    /// Tasks alive in the daemon's runtime.
    pub tasks: u64,
    /// Newest change-log sequence the dispatcher has processed.
    pub cursor: u64,
    /// Change messages delivered since start.
    pub delivered: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableStats {
    pub buffered_rows: u64,
    /// Manifest paths, relative to the storage base.
    pub files: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveSubscription {
    pub live_id: String,
    pub connection_id: String,
    pub subscription_id: String,
    pub user_id: String,
    pub namespace: String,
    pub table: String,
    pub sql: String,
    /// Options as sent by the client (JSON object text).
    pub options: Option<String>,
    pub changes: u64,
    pub created_at_us: i64,
    /// Time of the last delivered notification (`created_at_us` initially).
    pub last_update_us: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub name: String,
    pub pid: Option<u32>,
    /// `starting`, `running`, `backoff`, `stopped` or `failed`.
    pub state: String,
    pub restarts: u32,
    /// When the current instance was started (µs since the epoch).
    pub started_at_us: Option<i64>,
    /// Resident memory of the current instance, as last sampled.
    pub memory_bytes: Option<u64>,
    /// CPU use of the current instance over the last sampling period (100 = one core).
    pub cpu_percent: Option<f32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(json: &str) -> serde_json::Map<String, serde_json::Value> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn subscribe_options_follow_the_protocol() {
        use kalam_types::ErrorCode;
        let ok = |j: &str| SubscribeOptions::parse(&options(j)).unwrap();
        let code = |j: &str| SubscribeOptions::parse(&options(j)).unwrap_err().code;
        assert_eq!(ok("{}"), SubscribeOptions::default());
        assert_eq!(ok(r#"{"last_rows": 0}"#), SubscribeOptions::default());
        assert_eq!(ok(r#"{"from_seq": 7}"#).from_seq, Some(7));
        let snap =
            ok(r#"{"last_rows": 5, "from_id": "k", "since": "2025-01-01T00:00:00Z", "later": 1}"#).snapshot.unwrap();
        assert_eq!(
            (snap.last_rows, snap.from_id.as_deref(), snap.since.as_deref()),
            (Some(5), Some("\"k\""), Some("2025-01-01T00:00:00Z"))
        );
        assert_eq!(code(r#"{"last_rows": -1}"#), ErrorCode::InvalidOption);
        assert_eq!(code(r#"{"last_rows": "5"}"#), ErrorCode::InvalidOption);
        assert_eq!(code(r#"{"since": "yesterday"}"#), ErrorCode::InvalidOption);
        assert_eq!(code(r#"{"from_id": [1]}"#), ErrorCode::InvalidOption);
        assert_eq!(code(r#"{"from_seq": 3, "last_rows": 1}"#), ErrorCode::InvalidOption);
        assert_eq!(code(r#"{"from_seq": -3}"#), ErrorCode::InvalidOption);
    }

    #[test]
    fn a_candidate_is_due_after_its_interval_with_rows_and_no_job() {
        let c = FlushCandidate {
            namespace: "a".into(),
            table: "t".into(),
            buffered_rows: 1,
            interval_seconds: 2,
            last_flush_at_us: 1_000_000,
            active: false,
        };
        assert!(!c.is_due(2_999_999));
        assert!(c.is_due(3_000_000));
        assert!(!FlushCandidate { buffered_rows: 0, ..c.clone() }.is_due(9_000_000));
        assert!(!FlushCandidate { active: true, ..c }.is_due(9_000_000));
    }
}
