//! Write Weir filters in Rust.
//!
//! A filter is a WebAssembly component that implements one world of the
//! `weir:filter` WIT package. This crate hides the generated bindings behind a
//! small trait per protocol and an export macro:
//!
//! ```no_run
//! use weir_filter_sdk::http::*;
//!
//! struct DenyAdmin;
//!
//! impl HttpFilter for DenyAdmin {
//!     fn configure(_config: &str) -> Result<Self, String> { Ok(DenyAdmin) }
//!     fn on_request(&self, _conn: &Connection, req: &Request) -> RequestDecision {
//!         if req.path().starts_with("/admin") { deny("admin is off limits") } else { allow() }
//!     }
//! }
//!
//! weir_filter_sdk::http_filter!(DenyAdmin);
//! ```
//!
//! Build it for `wasm32-unknown-unknown` and wrap it as a component (see
//! `docs/filters.md`); the host calls `configure` once per instance and then
//! the request/response hooks, synchronously, under a CPU and memory budget.

pub mod cassandra;
mod config_error;
pub mod dns;
pub mod headers;
pub mod host;
pub mod http;
pub mod kafka;
#[cfg(feature = "l7-rules")]
pub mod l7_rules;
pub mod memcached;
mod slot;
pub mod stream;

pub use config_error::ConfigError;
/// Where the export macros keep the configured filter; not for filters' own
/// state (keep that in the filter struct).
#[doc(hidden)]
pub use slot::Slot;

/// Connection context shared by every protocol world.
pub use http::bindings::weir::filter::types::{Connection, Direction, Identity, IpAddress, SocketAddress};

impl Identity {
    /// The value of label `key` from any source (`k8s:app=x` answers `app`).
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.iter().find_map(|label| {
            let without_source = label.split_once(':').map_or(label.as_str(), |(_, rest)| rest);
            let (k, v) = without_source.split_once('=').unwrap_or((without_source, ""));
            (k == key).then_some(v)
        })
    }
}
