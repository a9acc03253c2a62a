//! The HTTP engine: HTTP/1.1, HTTP/2 (h2c and TLS) and gRPC, on hyper.

mod body;
pub(crate) mod framing;
#[cfg(test)]
mod framing_differential;
pub(crate) mod heads;
mod normalize;
mod reply;
mod rest;
pub mod server;
pub(crate) mod service;
pub use service::HTTP2_STREAMS_TO_HTTP1_UPSTREAM;
mod tunnel;
pub mod upstream;

pub use crate::context::Target;
pub use normalize::{NormalizeError, normalize_path};
pub use reply::ACCESS_DENIED;
