//! kalamd's error type and its mapping onto the stable error codes.

use kalam_types::error::{ErrorCode, KalamError};

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A client mistake or a documented refusal, already phrased for the client.
    #[error("{0}")]
    User(#[from] KalamError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("query engine: {0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error("parquet: {0}")]
    Parquet(String),
    #[error("internal: {0}")]
    Internal(String),
    /// The table's definition changed (ALTER TABLE) after the statement resolved it; the
    /// statement is run again (never reaches a client).
    #[error("table definition changed")]
    DefinitionChanged,
}

impl EngineError {
    pub fn corrupt(cf: &'static str, e: impl std::fmt::Display) -> Self {
        EngineError::Store(StoreError::Corrupt { cf, detail: e.to_string() })
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        EngineError::Internal(e.to_string())
    }

    pub fn user(code: ErrorCode, message: impl Into<String>) -> Self {
        EngineError::User(KalamError::new(code, message))
    }

    /// The error as a client sees it. Internal detail is logged here, once, and replaced by
    /// the generic text.
    pub fn to_client(&self) -> KalamError {
        match self {
            EngineError::User(e) => e.clone(),
            EngineError::Store(StoreError::RecordTooLarge { bytes, limit }) => KalamError::new(
                ErrorCode::TypeError,
                format!("Row too large: its change record is {bytes} bytes (limit {limit})"),
            ),
            EngineError::DataFusion(e) => datafusion_to_client(e),
            EngineError::Store(_) | EngineError::Parquet(_) => {
                tracing::error!(error = %self, "storage failure");
                KalamError::storage()
            }
            EngineError::Internal(_) | EngineError::DefinitionChanged => {
                tracing::error!(error = %self, "internal failure");
                KalamError::internal()
            }
        }
    }
}

/// DataFusion reports planning mistakes (unknown columns, type mismatches) as plan or schema
/// errors: those are the client's. Execution failures are ours.
fn datafusion_to_client(e: &datafusion::error::DataFusionError) -> KalamError {
    use datafusion::error::DataFusionError as D;
    match e.find_root() {
        D::SchemaError(inner, _) => match inner.as_ref() {
            datafusion::common::SchemaError::FieldNotFound { field, .. } => {
                KalamError::new(ErrorCode::ColumnNotFound, format!("column \"{}\" does not exist", field.name))
            }
            other => KalamError::new(ErrorCode::InvalidSql, other.to_string()),
        },
        D::Plan(msg) => KalamError::new(ErrorCode::InvalidSql, msg.clone()),
        D::SQL(err, _) => KalamError::new(ErrorCode::InvalidSql, err.to_string()),
        D::NotImplemented(msg) => KalamError::new(ErrorCode::UnsupportedStatement, msg.clone()),
        // Raised while evaluating the statement over its rows (a scalar subquery returning
        // several rows, a function refusing its arguments): the statement's own doing.
        D::Execution(msg) => KalamError::new(ErrorCode::InvalidOperation, msg.clone()),
        // Evaluation failures caused by the statement's own values.
        D::ArrowError(inner, _) => {
            use datafusion::arrow::error::ArrowError as A;
            match inner.as_ref() {
                A::DivideByZero
                | A::ArithmeticOverflow(_)
                | A::CastError(_)
                | A::ParseError(_)
                | A::InvalidArgumentError(_)
                | A::ComputeError(_) => KalamError::new(ErrorCode::TypeError, inner.to_string()),
                _ => {
                    tracing::error!(error = %e, "query execution failed");
                    KalamError::internal()
                }
            }
        }
        D::External(inner) => match inner.downcast_ref::<KalamError>() {
            Some(k) => k.clone(),
            None => {
                tracing::error!(error = %e, "query execution failed");
                KalamError::internal()
            }
        },
        _ => {
            tracing::error!(error = %e, "query execution failed");
            KalamError::internal()
        }
    }
}
