//! What weir shows of the traffic it judged: flow records, Prometheus
//! metrics, and the `weir observe` client that follows them.

pub mod client;
pub mod detail;
pub mod flow;
pub mod metrics;
