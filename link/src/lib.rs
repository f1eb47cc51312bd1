//! kalam-link: the Rust client of KalamDB (cli.md §2).
//!
//! In: a server URL, an optional credential (API key or JWT) and an acting user. Out: SQL
//! results from `POST /v1/api/sql` (the typed envelope of api.md §2) and live-query events from
//! `GET /v1/ws` (api.md §4) that survive disconnects: a [`SubscriptionManager`] reconnects with
//! back-off and resumes from the last `commit_seq` it delivered, so the application sees each
//! change once.
//!
//! The protocol ([`protocol`]) and the reconnect/resume state machine ([`resume`]) do no I/O;
//! the native driver (tokio + tokio-tungstenite) and the WASM build share them. HTTP goes
//! through reqwest on both. Nothing heavy is linked (no RocksDB, no DataFusion), and the crate
//! builds for `wasm32-unknown-unknown`.

mod client;
mod error;
#[cfg(any(test, all(target_arch = "wasm32", feature = "wasm")))]
mod js_json;
pub mod protocol;
pub mod resume;
mod row;
mod rt;
mod wire;

#[cfg(all(not(target_arch = "wasm32"), feature = "tokio-runtime"))]
pub mod live;
#[cfg(all(target_arch = "wasm32", feature = "wasm"))]
mod wasm;

pub use client::{Credentials, DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT, KalamLinkClient, KalamLinkClientBuilder};
pub use error::KalamLinkError;
#[cfg(all(not(target_arch = "wasm32"), feature = "tokio-runtime"))]
pub use live::{Frame, LiveConnection, SubscriptionManager};
pub use resume::{ChangeEvent, ReconnectPolicy};
pub use row::Row;
pub use wire::{
    ErrorDetail, ErrorInfo, HealthCheckResponse, QueryRequest, QueryResponse, QueryResult, SubscriptionConfig,
    SubscriptionOptions,
};
