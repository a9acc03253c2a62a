//! Weir: a per-node, sidecar-less L7 proxy. See `docs/architecture.md`.

pub mod admin;
pub mod app;
pub mod cassandra;
pub mod config;
pub mod context;
pub mod control;
pub mod datapath;
pub mod demo;
pub mod dns;
pub mod flow;
pub mod http;
pub mod identity;
pub mod kafka;
pub mod limits;
pub mod listeners;
pub mod memcached;
pub mod metrics;
pub mod model;
pub mod observe;
pub mod policy;
pub mod relay;
pub mod state;
pub mod stream;
pub mod wasm;
