//! Weir: a per-node, sidecar-less L7 proxy. See `docs/architecture.md`.

pub mod admin;
pub mod app;
pub mod cassandra;
pub mod config;
pub mod connection;
pub mod context;
pub mod control;
pub mod datapath;
pub mod demo;
pub mod dns;
pub mod flow;
#[cfg(test)]
mod fuzz_regressions;
pub mod http;
pub mod identity;
pub mod kafka;
pub mod limits;
pub mod listeners;
pub mod memcached;
pub mod metrics;
pub mod model;
pub mod net;
pub mod observe;
pub mod policy;
pub mod protocol;
pub mod relay;
pub mod reservations;
pub mod state;
pub mod stream;
pub mod units;
pub mod wasm;

/// Every binary built on weir (the proxy, its tests, the fuzz targets) gets
/// this allocator: a reservation a peer declared cannot abort the process
/// (`reservations`).
#[global_allocator]
static ALLOCATOR: reservations::LargeAsAddressSpace = reservations::LargeAsAddressSpace;

/// What the fuzz targets (`fuzz/`, docs/fuzzing.md) reach that is not
/// otherwise public. Not an API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::http::framing::{Detect, FramingGuard, Rejected};

    /// The HTTP engine's check that header values are text filters can read.
    pub fn check_headers(headers: &http::HeaderMap) -> Result<(), String> {
        crate::http::service::check_headers(headers)
    }

    /// The HTTP engine's encoding of headers into a filter's request head.
    pub fn write_headers(out: &mut Vec<u8>, headers: &http::HeaderMap) {
        crate::http::service::write_headers(out, headers)
    }
}
