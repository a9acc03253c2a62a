//! The protocol engines: each serves one protocol's connections (one folder
//! each), on what they all share — the proxy state, the connection step
//! every engine takes, the relay the byte-stream engines run on, and the
//! listeners that accept and hand connections to them.

pub mod cassandra;
pub mod chain;
pub mod connection;
pub mod dns;
pub mod http;
pub mod kafka;
pub mod listeners;
pub mod memcached;
pub mod relay;
pub mod state;
pub mod stream;
