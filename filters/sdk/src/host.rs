//! Calls into the host: logging, counters and a monotonic clock.

pub use crate::http::bindings::weir::filter::host::{LogLevel, counter_add, log, monotonic_now};

pub fn debug(message: &str) {
    log(LogLevel::Debug, message)
}

pub fn info(message: &str) {
    log(LogLevel::Info, message)
}

pub fn warn(message: &str) {
    log(LogLevel::Warn, message)
}
