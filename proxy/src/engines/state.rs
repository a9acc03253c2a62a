//! What every listener and the admin API share.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::engines::http::upstream::UpstreamRegistry;
use crate::model::PolicyModel;
use crate::model::fqdn::FqdnCache;
use crate::observe::flow::FlowLog;
use crate::observe::metrics::Metrics;
use crate::wasm::FilterRuntime;

pub struct ProxyState {
    /// The model in force; swapped whole on reload.
    pub model: ArcSwap<PolicyModel>,
    /// The generation of the model in force, sent after each swap: what was
    /// judged once and stays open (an upgraded connection) is judged again.
    pub model_changed: tokio::sync::watch::Sender<u64>,
    pub flows: FlowLog,
    pub metrics: Arc<Metrics>,
    pub runtime: Arc<FilterRuntime>,
    pub upstreams: UpstreamRegistry,
    /// What endpoints learned through the DNS proxy (outlives models).
    pub fqdn: Arc<FqdnCache>,
    /// Sockets to DNS resolvers, shared by all queries to each.
    pub dns_upstreams: crate::engines::dns::upstream::UdpUpstreams,
    /// Whether the eBPF datapath enforces L3/L4 (then learned addresses
    /// must reach its maps before a DNS answer is let go).
    pub datapath_active: std::sync::atomic::AtomicBool,
    /// The FQDN cache generation the datapath's maps reflect.
    pub fqdn_applied: tokio::sync::watch::Sender<u64>,
    pub reload: Mutex<ReloadStatus>,
    /// Downstream connections open now (for draining on shutdown).
    pub active_connections: std::sync::atomic::AtomicUsize,
    /// What Cassandra prepared-statement ids run (shared by connections).
    pub cql_prepared: crate::engines::cassandra::PreparedStatements,
    /// Connection budgets and buffered bytes (`limits.rs`).
    pub limits: Arc<crate::limits::Limits>,
    /// Draining, and what a successor must learn (`handover`).
    pub handover: Arc<crate::handover::Handover>,
}

/// The outcome of the last reload, for /config and /healthz.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReloadStatus {
    pub generation: u64,
    pub last_applied: Option<String>,
    /// Errors of the last rejected update, if it came after the last applied one.
    pub rejected: Vec<String>,
    pub last_rejected: Option<String>,
    /// Objects of the API server the model in force leaves out, or holds at
    /// their last good version, and why (`control/build.rs`).
    pub set_aside: Vec<String>,
    /// Settings of weir.yaml changed since start that only a restart applies
    /// (`WeirConfig::start_only_changes`).
    pub needs_restart: Vec<String>,
}

/// A downstream connection counted while it lives: the `connections` and
/// `active_connections` metrics of its listener, and the count shutdown
/// drains. Every protocol engine opens one per accepted connection.
pub struct OpenConnection {
    gauge: prometheus_client::metrics::gauge::Gauge,
    labels: crate::observe::metrics::ListenerLabels,
    state: Arc<ProxyState>,
}

impl OpenConnection {
    pub fn new(state: &Arc<ProxyState>, listener: &str) -> Self {
        let labels = crate::observe::metrics::ListenerLabels { listener: listener.to_string() };
        state.metrics.connections.get_or_create(&labels).inc();
        let gauge = state.metrics.active_connections.get_or_create(&labels).clone();
        gauge.inc();
        state.active_connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        OpenConnection { gauge, labels, state: state.clone() }
    }

    /// L3/L4 policy refused it at accept: counted, and reset (as close to a
    /// dropped SYN as a listening socket can get).
    pub fn drop_at_accept(&self, stream: &tokio::net::TcpStream) {
        self.state.metrics.connections_dropped.get_or_create(&self.labels).inc();
        let _ = socket2::SockRef::from(stream).set_linger(Some(std::time::Duration::ZERO));
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.gauge.dec();
        self.state.active_connections.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}
