//! What every listener and the admin API share.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::dns::cache::FqdnCache;
use crate::flow::FlowLog;
use crate::http::upstream::UpstreamRegistry;
use crate::metrics::Metrics;
use crate::model::PolicyModel;
use crate::wasm::FilterRuntime;

pub struct ProxyState {
    /// The model in force; swapped whole on reload.
    pub model: ArcSwap<PolicyModel>,
    pub flows: FlowLog,
    pub metrics: Arc<Metrics>,
    pub runtime: Arc<FilterRuntime>,
    pub upstreams: UpstreamRegistry,
    /// What endpoints learned through the DNS proxy (outlives models).
    pub fqdn: Arc<FqdnCache>,
    /// Sockets to DNS resolvers, shared by all queries to each.
    pub dns_upstreams: crate::dns::upstream::UdpUpstreams,
    /// Whether the eBPF datapath enforces L3/L4 (then learned addresses
    /// must reach its maps before a DNS answer is let go).
    pub datapath_active: std::sync::atomic::AtomicBool,
    /// The FQDN cache generation the datapath's maps reflect.
    pub fqdn_applied: tokio::sync::watch::Sender<u64>,
    pub reload: Mutex<ReloadStatus>,
    /// Downstream connections open now (for draining on shutdown).
    pub active_connections: std::sync::atomic::AtomicUsize,
}

/// The outcome of the last reload, for /config and /healthz.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReloadStatus {
    pub generation: u64,
    pub last_applied: Option<String>,
    /// Errors of the last rejected update, if it came after the last applied one.
    pub rejected: Vec<String>,
    pub last_rejected: Option<String>,
}
