//! The DataFusion table provider of USER, SHARED and STREAM tables. A provider reads one
//! partition: the one its three-part name names, or the acting user's, taken from the session
//! ([`ActingUser`]) when the scan starts, so one plan serves every user (the plan cache). The
//! user is part of every key a scan reads and every file path it opens.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::catalog::Session;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{TableProvider, TableType as DfTableType};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use kalam_types::arrow::{build_array, table_schema};
use kalam_types::ids::UserId;
use kalam_types::schema::TableDefinition;
use kalam_types::schema::TableType;

use crate::engine::Engine;
use crate::error::EngineError;
use crate::prune::ScanBounds;
use crate::read::read_partition;
use crate::scan::{PartitionScan, scan_partition};

pub struct KalamTableProvider {
    scan: Arc<ScanRequest>,
}

/// The user a session runs as: the partition of every table reference without a user part.
#[derive(Debug, Clone)]
pub struct ActingUser(pub UserId);

impl fmt::Debug for KalamTableProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.scan.user {
            Some(user) => write!(f, "KalamTableProvider({}, user={user})", self.scan.def.qualified_name()),
            None => write!(f, "KalamTableProvider({}, acting user)", self.scan.def.qualified_name()),
        }
    }
}

impl KalamTableProvider {
    /// `user` is the partition a three-part name names (`None`: the session's acting user).
    /// `with_system_columns` exposes `_updated`/`_deleted` (only when the statement names
    /// them, so `SELECT *` stays user columns); `include_deleted` keeps soft-deleted rows.
    pub fn new(
        engine: Arc<Engine>,
        def: Arc<TableDefinition>,
        user: Option<UserId>,
        with_system_columns: bool,
        include_deleted: bool,
    ) -> Self {
        // STREAM tables have no system columns.
        let with_system_columns = with_system_columns && def.table_type != TableType::Stream;
        // Without the per-field column ids the storage layer keeps (DataFusion compares field
        // metadata across the inputs of a UNION and would refuse two different columns), and
        // nullable: a scalar subquery over no rows yields NULL from a NOT NULL column.
        let full = table_schema(&def, with_system_columns);
        let fields: Vec<_> = full
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_metadata(Default::default()).with_nullable(true))
            .collect();
        let schema = Arc::new(datafusion::arrow::datatypes::Schema::new(fields));
        Self { scan: Arc::new(ScanRequest { engine, def, user, schema, include_deleted }) }
    }
}

/// What a scan reads; shared, so the read can run on the blocking pool.
struct ScanRequest {
    engine: Arc<Engine>,
    def: Arc<TableDefinition>,
    user: Option<UserId>,
    schema: SchemaRef,
    include_deleted: bool,
}

impl ScanRequest {
    /// The rows of the scan: `projection` of the provider's schema (all of it when `None`).
    fn batch(
        &self,
        user: &UserId,
        bounds: &ScanBounds,
        projection: Option<&[usize]>,
    ) -> Result<RecordBatch, EngineError> {
        let all: Vec<usize> = (0..self.schema.fields().len()).collect();
        let columns = projection.unwrap_or(&all);
        let schema = Arc::new(self.schema.project(columns).map_err(EngineError::internal)?);
        if self.def.table_type != TableType::Stream {
            // The provider's schema is the table schema, with the system columns last when
            // exposed, so its indexes are the scan's.
            let req = PartitionScan {
                def: &self.def,
                user: Some(user),
                bounds,
                include_deleted: self.include_deleted,
                columns,
            };
            return scan_partition(&self.engine, &req, schema);
        }
        let rows: Vec<_> = read_partition(&self.engine, &self.def, Some(user))?;
        let arrays = columns
            .iter()
            .map(|&i| build_array(self.def.columns[i].data_type, rows.iter().map(|r| &r.values[i])))
            .collect();
        let options = RecordBatchOptions::new().with_row_count(Some(rows.len()));
        RecordBatch::try_new_with_options(schema, arrays, &options).map_err(EngineError::internal)
    }
}

#[async_trait]
impl TableProvider for KalamTableProvider {
    fn schema(&self) -> SchemaRef {
        self.scan.schema.clone()
    }

    fn table_type(&self) -> DfTableType {
        DfTableType::Base
    }

    /// Every filter reaches [`TableProvider::scan`], which prunes flushed files with them;
    /// DataFusion still applies them all.
    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let user = match &self.scan.user {
            Some(user) => user.clone(),
            None => state
                .config()
                .get_extension::<ActingUser>()
                .map(|a| a.0.clone())
                .ok_or_else(|| DataFusionError::Internal("a session without an acting user".into()))?,
        };
        let request = self.scan.clone();
        let bounds = ScanBounds::from_filters(&self.scan.def, filters);
        let columns = projection.cloned();
        let batch = tokio::task::spawn_blocking(move || request.batch(&user, &bounds, columns.as_deref()))
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?
            .map_err(|e| DataFusionError::External(Box::new(e.to_client())))?;
        let schema = batch.schema();
        let exec = MemorySourceConfig::try_new_exec(&[vec![batch]], schema, None)?;
        Ok(exec)
    }
}
