//! Stable, user-visible error codes. Every crate error maps onto one of these; the mapping to
//! HTTP status lives here, once.

use serde::{Deserialize, Serialize};

/// A machine-readable error code, rendered in `SCREAMING_SNAKE_CASE` on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    // request
    InvalidRequest,
    EmptySql,
    BatchParseError,
    PayloadTooLarge,
    // SQL
    InvalidSql,
    UnsupportedStatement,
    NamespaceNotFound,
    TableNotFound,
    ColumnNotFound,
    JobNotFound,
    AlreadyExists,
    UnsupportedType,
    TypeError,
    ConstraintViolation,
    DependencyExists,
    InvalidOperation,
    ParamCountMismatch,
    ParamTypeMismatch,
    StatementTimeout,
    TransactionError,
    // auth
    Unauthorized,
    InvalidApiKey,
    InvalidToken,
    TokenExpired,
    UserDisabled,
    PermissionDenied,
    // users
    UserNotFound,
    UserExists,
    // live queries
    InvalidSubscription,
    UnknownMessageType,
    DuplicateSubscriptionId,
    SubscriptionNotFound,
    UnsupportedQuery,
    SubscriptionLimitExceeded,
    SlowConsumer,
    InvalidOption,
    ResumeExpired,
    RateLimitExceeded,
    LiveQueryNotFound,
    // server
    ShuttingDown,
    ServiceUnavailable,
    StorageError,
    InternalError,
}

impl ErrorCode {
    /// The HTTP status a response carrying this code gets.
    pub fn http_status(self) -> u16 {
        use ErrorCode::*;
        match self {
            InvalidRequest
            | EmptySql
            | BatchParseError
            | InvalidSql
            | UnsupportedStatement
            | NamespaceNotFound
            | TableNotFound
            | ColumnNotFound
            | JobNotFound
            | UnsupportedType
            | TypeError
            | ConstraintViolation
            | DependencyExists
            | InvalidOperation
            | ParamCountMismatch
            | ParamTypeMismatch
            | StatementTimeout
            | TransactionError
            | InvalidSubscription
            | UnknownMessageType
            | DuplicateSubscriptionId
            | SubscriptionNotFound
            | UnsupportedQuery
            | SubscriptionLimitExceeded
            | InvalidOption
            | ResumeExpired
            | LiveQueryNotFound
            | UserNotFound => 400,
            Unauthorized | InvalidApiKey | InvalidToken | TokenExpired | UserDisabled => 401,
            PermissionDenied => 403,
            AlreadyExists | UserExists => 409,
            PayloadTooLarge => 413,
            SlowConsumer | RateLimitExceeded => 429,
            StorageError | InternalError => 500,
            ShuttingDown | ServiceUnavailable => 503,
        }
    }

    /// True for server-side failures whose detail must never reach a client.
    pub fn is_internal(self) -> bool {
        self.http_status() >= 500 && !matches!(self, ErrorCode::ShuttingDown | ErrorCode::ServiceUnavailable)
    }

    /// The wire spelling, e.g. `TABLE_NOT_FOUND`.
    pub fn as_str(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| "INTERNAL_ERROR".to_owned())
    }
}

/// An error as it travels between processes and to clients: a code and a message that is safe
/// to show (internal errors carry only the generic text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct KalamError {
    pub code: ErrorCode,
    pub message: String,
}

impl KalamError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }

    /// A storage failure; `detail` is for the log only and is not kept.
    pub fn storage() -> Self {
        Self::new(ErrorCode::StorageError, "Storage error")
    }

    /// A broken invariant; the detail goes to the log, not to the client.
    pub fn internal() -> Self {
        Self::new(ErrorCode::InternalError, "Internal error")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_render_in_screaming_snake_case() {
        assert_eq!(ErrorCode::TableNotFound.as_str(), "TABLE_NOT_FOUND");
        assert_eq!(ErrorCode::EmptySql.as_str(), "EMPTY_SQL");
    }

    #[test]
    fn client_mistakes_are_never_5xx() {
        for code in [ErrorCode::InvalidSql, ErrorCode::TypeError, ErrorCode::TableNotFound] {
            assert!(code.http_status() < 500);
        }
        assert!(ErrorCode::StorageError.is_internal());
        assert!(!ErrorCode::ShuttingDown.is_internal());
    }
}
