//! kalam-types: the vocabulary every KalamDB process shares.
//!
//! In: nothing of ours. Out: validated identifiers ([`ids`]), the ten column types and their
//! values ([`datatype`], [`value`]), the binary row codec of the hot buffer ([`codec`]), table
//! definitions ([`schema`]), change-log records ([`change`]), the SQL statement splitter
//! ([`split`]) and the stable, user-visible error codes ([`error`]). With the `arrow` feature it
//! also owns the Arrow mapping of the types ([`arrow`]), which kalamd (reads) and kalam-flushd
//! (Parquet writes) both use. This crate stays light (no RocksDB, no DataFusion) so that the
//! client library can build for wasm32.

#[cfg(feature = "arrow")]
pub mod arrow;
pub mod auth;
pub mod change;
pub mod codec;
pub mod datatype;
pub mod error;
pub mod ids;
mod numeric;
pub mod schema;
pub mod split;
pub mod time;
pub mod value;

pub use datatype::KalamType;
pub use error::ErrorCode;
pub use ids::{JobId, NamespaceId, TableName, UserId};
pub use value::Value;
