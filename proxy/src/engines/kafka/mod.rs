//! The Kafka engine: frames requests, judges each through the kafka-filter
//! chain, answers refusals itself and keeps responses in request order.

pub mod codec;
mod server;

pub use server::serve;
