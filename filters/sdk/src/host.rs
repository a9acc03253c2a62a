//! Calls into the host: logging, counters, a monotonic clock, and state
//! shared by every instance of the filter (every worker's): `state_get`,
//! `state_set`, `state_compare_and_swap` (bytes, with expiry) and
//! `take_tokens` (a token bucket). Keep per-request data out of it; it is
//! bounded (10 000 keys, 1 MiB) and starts empty when the configuration
//! changes.

pub use crate::http::bindings::weir::filter::host::{
    LogLevel, counter_add, log, monotonic_now, state_compare_and_swap, state_get, state_set, take_tokens,
};

pub fn debug(message: &str) {
    log(LogLevel::Debug, message)
}

pub fn info(message: &str) {
    log(LogLevel::Info, message)
}

pub fn warn(message: &str) {
    log(LogLevel::Warn, message)
}
