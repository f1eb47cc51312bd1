//! The DataFusion table provider of USER and SHARED tables, bound to one acting user. A USER
//! table provider can only ever read that user's partition: the user is part of every key it
//! scans and every file path it opens.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::Session;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{TableProvider, TableType as DfTableType};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use kalam_types::arrow::{build_array, table_schema};
use kalam_types::ids::UserId;
use kalam_types::schema::TableDefinition;
use kalam_types::{KalamType, Value};

use crate::engine::Engine;
use crate::prune::ScanBounds;
use crate::read::read_partition_within;

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
        let with_system_columns = with_system_columns && def.table_type != kalam_types::schema::TableType::Stream;
        let schema = Arc::new(table_schema(&def, with_system_columns));
        Self { scan: Arc::new(ScanRequest { engine, def, user, schema, with_system_columns, include_deleted }) }
    }
}

/// What a scan reads; shared, so the read can run on the blocking pool.
struct ScanRequest {
    engine: Arc<Engine>,
    def: Arc<TableDefinition>,
    user: UserId,
    schema: SchemaRef,
    with_system_columns: bool,
    include_deleted: bool,
}

impl ScanRequest {
    fn batch(&self, bounds: &ScanBounds) -> Result<RecordBatch, crate::error::EngineError> {
        let rows: Vec<_> = read_partition_within(&self.engine, &self.def, Some(&self.user), bounds)?
            .into_iter()
            .filter(|r| self.include_deleted || !r.deleted)
            .collect();
        let mut arrays = Vec::with_capacity(self.schema.fields().len());
        for (i, col) in self.def.columns.iter().enumerate() {
            arrays.push(build_array(col.data_type, rows.iter().map(|r| &r.values[i])));
        }
        if self.with_system_columns {
            let updated: Vec<Value> = rows.iter().map(|r| Value::Timestamp(r.updated_us)).collect();
            let deleted: Vec<Value> = rows.iter().map(|r| Value::Boolean(r.deleted)).collect();
            arrays.push(build_array(KalamType::Timestamp, updated.iter()));
            arrays.push(build_array(KalamType::Boolean, deleted.iter()));
        }
        RecordBatch::try_new(self.schema.clone(), arrays).map_err(crate::error::EngineError::internal)
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
        let batch = tokio::task::spawn_blocking(move || request.batch(&bounds))
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?
            .map_err(|e| DataFusionError::External(Box::new(e.to_client())))?;
        let exec = MemorySourceConfig::try_new_exec(&[vec![batch]], self.scan.schema.clone(), projection.cloned())?;
        Ok(exec)
    }
}
