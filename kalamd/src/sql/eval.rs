//! Row expressions outside a query plan: VALUES items of INSERT, SET and WHERE of UPDATE and
//! DELETE. Expressions are planned by DataFusion with KalamDB's functions, simplified with the
//! statement's start time (so `NOW()` is one value per statement), and evaluated over a batch.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::common::DFSchema;
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::optimizer::simplify_expressions::ExprSimplifier;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::Expr;
use kalam_types::ids::UserId;

use crate::engine::Engine;
use crate::error::EngineError;

pub struct ExprEvaluator {
    ctx: SessionContext,
    start: chrono::DateTime<chrono::Utc>,
}

impl ExprEvaluator {
    /// An evaluator acting as `user` for a statement that started at `statement_time_us`.
    pub fn new(engine: &Engine, user: &UserId, statement_time_us: i64) -> Self {
        let ctx = SessionContext::new();
        for f in crate::sql::udf::functions(&engine.ids, user.as_str()) {
            ctx.register_udf(f);
        }
        let start = chrono::DateTime::from_timestamp_micros(statement_time_us).unwrap_or_else(chrono::Utc::now);
        Self { ctx, start }
    }

    /// Evaluates `expr` over every row of `batch`, whose columns are described by `schema`.
    pub fn evaluate(&self, schema: &DFSchema, batch: &RecordBatch, expr: &Expr) -> Result<ArrayRef, EngineError> {
        use crate::sql::query::planning_error;
        let logical = self.ctx.parse_sql_expr(&expr.to_string(), schema).map_err(planning_error)?;
        let info = SimplifyContext::builder()
            .with_schema(Arc::new(schema.clone()))
            .with_query_execution_start_time(Some(self.start))
            .build();
        let logical = ExprSimplifier::new(info).simplify(logical).map_err(planning_error)?;
        let physical = self.ctx.create_physical_expr(logical, schema).map_err(planning_error)?;
        Ok(physical.evaluate(batch)?.into_array(batch.num_rows())?)
    }
}
