//! Weir: a per-node, sidecar-less L7 proxy. See `docs/architecture.md`.

// the binary's commands and the admin API, on top
pub mod admin;
pub mod app;
pub mod authoring;
pub mod demo;
// configuration sources and the controller that reloads them
pub mod control;
// the eBPF datapath: programs, maps and their events
pub mod datapath;
// the protocol engines, what they share and the connection step
pub mod engines;
// hitless restarts: a new weir takes the node over from the running one
pub mod handover;
// the policy model every engine reads, and the stores it is built from
pub mod config;
pub mod model;
pub mod policy;
// the WebAssembly filter host
pub mod wasm;
// flows, metrics and the `weir observe` client
pub mod observe;
// base types every layer uses
pub mod bpf_syscall;
pub mod context;
pub mod identity;
pub mod limits;
pub mod net;
pub mod protocol;
pub mod replay;
pub mod reservations;
pub mod units;

#[cfg(test)]
mod fuzz_regressions;

/// Every binary built on weir (the proxy, its tests, the fuzz targets) gets
/// this allocator: a reservation a peer declared cannot abort the process
/// (`reservations`).
#[global_allocator]
static ALLOCATOR: reservations::LargeAsAddressSpace = reservations::LargeAsAddressSpace;

/// What the fuzz targets (`fuzz/`, docs/fuzzing.md) reach that is not
/// otherwise public. Not an API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::engines::http::framing::{Detect, FramingGuard, Rejected};

    /// The HTTP engine's check that header values are text filters can read.
    pub fn check_headers(headers: &http::HeaderMap) -> Result<(), String> {
        crate::engines::http::service::check_headers(headers)
    }

    /// The HTTP engine's encoding of headers into a filter's request head.
    pub fn write_headers(out: &mut Vec<u8>, headers: &http::HeaderMap) {
        crate::engines::http::service::write_headers(out, headers)
    }
}
