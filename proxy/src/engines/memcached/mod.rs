//! The memcached engine: frames text, meta and binary requests, judges each
//! through the memcached-filter chain, answers refusals itself in the
//! request's protocol and keeps replies in request order.

pub mod codec;
mod server;

pub use server::serve;
