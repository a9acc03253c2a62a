//! The DNS proxy: queries on UDP and TCP are judged by the `dns-filter`
//! chain of the (endpoint, resolver, port) they belong to; refused ones get
//! REFUSED (or NXDOMAIN) from the proxy, allowed ones go to the resolver and
//! its answer comes back unchanged. Addresses in allowed answers are
//! learned per endpoint for `toFQDNs` (see [`crate::model::fqdn`]).

pub mod message;
mod server;
pub mod upstream;

pub use server::{
    DnsSockets, bind, bind_transparent_udp, serve_tcp, serve_transparent_tcp, serve_transparent_udp, serve_udp,
};
