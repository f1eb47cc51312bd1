//! The DataFusion table provider of USER and SHARED tables, bound to one acting user. A USER
//! table provider can only ever read that user's partition: the user is part of every key it
//! scans and every file path it opens.

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

impl fmt::Debug for KalamTableProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KalamTableProvider({}, user={})", self.scan.def.qualified_name(), self.scan.user)
    }
}

impl KalamTableProvider {
    /// `with_system_columns` exposes `_updated`/`_deleted` (only when the statement names
    /// them, so `SELECT *` stays user columns); `include_deleted` keeps soft-deleted rows.
    pub fn new(
        engine: Arc<Engine>,
        def: Arc<TableDefinition>,
        user: UserId,
        with_system_columns: bool,
        include_deleted: bool,
    ) -> Self {
        // STREAM tables have no system columns.
        let with_system_columns = with_system_columns && def.table_type != TableType::Stream;
        let schema = Arc::new(table_schema(&def, with_system_columns));
        Self { scan: Arc::new(ScanRequest { engine, def, user, schema, include_deleted }) }
    }
}

/// What a scan reads; shared, so the read can run on the blocking pool.
struct ScanRequest {
    engine: Arc<Engine>,
    def: Arc<TableDefinition>,
    user: UserId,
    schema: SchemaRef,
    include_deleted: bool,
}

impl ScanRequest {
    /// The rows of the scan: `projection` of the provider's schema (all of it when `None`).
    fn batch(&self, bounds: &ScanBounds, projection: Option<&[usize]>) -> Result<RecordBatch, EngineError> {
        let all: Vec<usize> = (0..self.schema.fields().len()).collect();
        let columns = projection.unwrap_or(&all);
        let schema = Arc::new(self.schema.project(columns).map_err(EngineError::internal)?);
        if self.def.table_type != TableType::Stream {
            // The provider's schema is the table schema, with the system columns last when
            // exposed, so its indexes are the scan's.
            let req = PartitionScan {
                def: &self.def,
                user: Some(&self.user),
                bounds,
                include_deleted: self.include_deleted,
                columns,
            };
            return scan_partition(&self.engine, &req, schema);
        }
        let rows: Vec<_> = read_partition(&self.engine, &self.def, Some(&self.user))?;
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
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let request = self.scan.clone();
        let bounds = ScanBounds::from_filters(&self.scan.def, filters);
        let columns = projection.cloned();
        let batch = tokio::task::spawn_blocking(move || request.batch(&bounds, columns.as_deref()))
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?
            .map_err(|e| DataFusionError::External(Box::new(e.to_client())))?;
        let schema = batch.schema();
        let exec = MemorySourceConfig::try_new_exec(&[vec![batch]], schema, None)?;
        Ok(exec)
    }
}
