//! Per-table statistics: `SHOW TABLE STATS` (visible rows, sql.md §13) and
//! `system.flush_status` (buffer and flush history, system-tables.md).

use kalam_types::codec::RowDecoder;
use kalam_types::ids::UserId;
use kalam_types::schema::{TableDefinition, TableType};

use crate::engine::Engine;
use crate::error::EngineError;
use crate::flush::{JobRecord, status};
use crate::read::{partitions, read_partition, table_files};
use crate::store::{cf, counter_key, table_cf_name};

/// What `SHOW TABLE STATS` reports.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct TableStats {
    /// Visible rows whose newest version is buffered.
    pub buffered_rows: u64,
    /// Visible rows whose newest version is in a Parquet file.
    pub flushed_rows: u64,
    pub parquet_files: u64,
    pub storage_bytes: u64,
    pub last_flush_at_us: Option<i64>,
}

/// Statistics over one user's partition (`Some`) or the whole table (`None`).
pub fn table_stats(engine: &Engine, def: &TableDefinition, scope: Option<&UserId>) -> Result<TableStats, EngineError> {
    let mut stats = TableStats::default();
    let users = match (scope, def.table_type) {
        (Some(u), TableType::User | TableType::Stream) => vec![Some(u.clone())],
        _ => partitions(engine, def)?,
    };
    for user in &users {
        for row in read_partition(engine, def, user.as_ref())?.iter().filter(|r| !r.deleted) {
            if row.buffered {
                stats.buffered_rows += 1;
            } else {
                stats.flushed_rows += 1;
            }
        }
    }
    if def.table_type != TableType::Stream {
        let files = match (scope, def.table_type) {
            (Some(u), TableType::User) => crate::read::manifest_entries(engine, def, Some(u))?,
            _ => table_files(engine, def)?,
        };
        stats.parquet_files = files.len() as u64;
        stats.storage_bytes = files.iter().map(|f| f.size_bytes).sum();
        stats.last_flush_at_us = engine.flush_index().last_flush_us(def.namespace.as_str(), def.name.as_str());
    }
    Ok(stats)
}

/// One row of `system.flush_status`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct FlushStatus {
    pub buffered_rows: u64,
    pub buffered_users: u64,
    pub oldest_buffered_at_us: Option<i64>,
    pub flushed_rows_total: u64,
    pub parquet_files: u64,
    pub storage_bytes: u64,
    pub last_flush_at_us: Option<i64>,
    pub last_flush_job_id: Option<String>,
    pub last_flush_status: Option<String>,
    pub last_error: Option<String>,
    pub consecutive_failures: u32,
    pub next_scheduled_flush_at_us: Option<i64>,
}

/// The flush state of a USER or SHARED table; `jobs` are all job rows (read once per query).
pub fn flush_status(engine: &Engine, def: &TableDefinition, jobs: &[JobRecord]) -> Result<FlushStatus, EngineError> {
    let (ns, table) = (def.namespace.as_str(), def.name.as_str());
    let mut st =
        FlushStatus { buffered_rows: engine.store.read_counter(&counter_key(ns, table, None))?, ..Default::default() };
    if def.table_type == TableType::User {
        let prefix = counter_key(ns, table, None);
        st.buffered_users = engine
            .store
            .scan_prefix(cf::COUNTERS, &prefix)?
            .into_iter()
            .filter(|(k, v)| k.len() > prefix.len() && crate::store::u64_from_le(v).unwrap_or(0) > 0)
            .count() as u64;
    }
    let newer = engine.catalog.newer_version(def);
    let decoder = match &newer {
        Some(n) => RowDecoder::with_versions(def, n),
        None => RowDecoder::new(def),
    };
    engine.store.for_each_prefix(&table_cf_name(def), b"", |_, bytes| {
        let row = decoder.decode(bytes).map_err(|e| EngineError::corrupt("table", e))?;
        st.oldest_buffered_at_us = Some(st.oldest_buffered_at_us.map_or(row.updated_us, |o| o.min(row.updated_us)));
        Ok::<(), EngineError>(())
    })?;
    for file in table_files(engine, def)? {
        st.parquet_files += 1;
        st.storage_bytes += file.size_bytes;
    }
    let mut flushes: Vec<&JobRecord> =
        jobs.iter().filter(|j| j.job_type == "flush" && j.namespace_id == ns && j.table_name == table).collect();
    flushes.sort_by_key(|j| j.created_at_us);
    for j in &flushes {
        if j.status == status::COMPLETED {
            let records = j
                .result
                .as_deref()
                .and_then(|r| serde_json::from_str::<serde_json::Value>(r).ok())
                .and_then(|r| r["records_flushed"].as_u64())
                .unwrap_or(0);
            st.flushed_rows_total += records;
            st.consecutive_failures = 0;
        } else if j.status == "failed" {
            st.consecutive_failures += 1;
        }
        if j.error_message.is_some() && j.status != "cancelled" {
            st.last_error = j.error_message.clone();
        }
    }
    if let Some(last) = flushes.last() {
        st.last_flush_job_id = Some(last.job_id.clone());
        st.last_flush_status = Some(last.status.clone());
    }
    st.last_flush_at_us = engine.flush_index().last_flush_us(ns, table);
    if let Some(interval) = def.flush_policy.interval_seconds
        && !engine.flush_paused(def)
    {
        let since = crate::flush::timer_origin(def, st.last_flush_at_us);
        st.next_scheduled_flush_at_us = Some(since.saturating_add(interval as i64 * 1_000_000));
    }
    Ok(st)
}
