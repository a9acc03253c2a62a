//! What the proxy knows about one downstream connection, shared by the
//! protocol engines, the filter host and flow records.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::identity::{Endpoint, Identity};

/// The listener name of connections the eBPF datapath hands to the proxy.
pub const TRANSPARENT_LISTENER: &str = "ebpf";

/// Which side's policy a filter enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

#[derive(Debug)]
pub struct ConnectionContext {
    pub id: u64,
    pub source: Arc<Identity>,
    pub destination: Arc<Identity>,
    /// The workloads (pods, `weir.yaml` endpoints, a listener's destination)
    /// behind the two identities, when they are known: flows name them.
    pub source_endpoint: Option<Arc<Endpoint>>,
    pub destination_endpoint: Option<Arc<Endpoint>>,
    pub source_addr: SocketAddr,
    pub destination_addr: SocketAddr,
    /// The port policy is written against (the service port).
    pub port: u16,
    /// The listener that accepted it, for flows and metrics.
    pub listener: Arc<str>,
}

static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

pub fn next_connection_id() -> u64 {
    NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed)
}

/// Where a downstream connection came in.
#[derive(Clone, Debug)]
pub enum Target {
    /// A configured listener, by name.
    Listener(Arc<str>),
    /// Handed over by the eBPF datapath: the accepted socket's local address
    /// is where the client was going, its mark says who the client is.
    Transparent { original_destination: SocketAddr, source_identity: Option<u32> },
}

impl Target {
    /// The listener name flows and metrics show.
    pub fn name(&self) -> Arc<str> {
        match self {
            Target::Listener(name) => name.clone(),
            Target::Transparent { .. } => Arc::from(TRANSPARENT_LISTENER),
        }
    }
}
