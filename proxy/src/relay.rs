//! What every one-upstream-connection-per-client engine (Kafka, memcached,
//! stream filters) shares: the connection's view of the policy model, its
//! flow records and the upstream dial.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

use crate::config::ListenerProtocol;
use crate::context::{ConnectionContext, Target, next_connection_id};
use crate::flow::{FlowPeer, FlowRecord, FlowTime, Verdict};
use crate::http::upstream::UpstreamBind;
use crate::model::{ConnectionVerdict, ListenerModel, PolicyModel, Resolved};
use crate::policy::L4Protocol;
use crate::state::{OpenConnection, ProxyState};

/// The model-dependent part of a connection, rebuilt when the model changes.
pub struct Snapshot {
    pub model: Arc<PolicyModel>,
    pub listener: Arc<ListenerModel>,
    pub context: Arc<ConnectionContext>,
    pub verdict: Arc<ConnectionVerdict>,
}

/// One client connection of a relaying engine.
pub struct Connection {
    pub state: Arc<ProxyState>,
    pub target: Target,
    pub peer: SocketAddr,
    pub id: u64,
    pub listener: Arc<str>,
    pub protocol: ListenerProtocol,
    /// The `protocol` of its flow records.
    pub flow_protocol: &'static str,
}

impl Connection {
    pub fn new(
        state: Arc<ProxyState>,
        target: Target,
        peer: SocketAddr,
        protocol: ListenerProtocol,
        flow_protocol: &'static str,
    ) -> Self {
        let listener = target.name();
        Connection { state, target, peer, id: next_connection_id(), listener, protocol, flow_protocol }
    }

    /// The current snapshot: `current` when the model has not changed, a
    /// fresh one (and the upstream binding) when it has. `None`: the
    /// listener is gone.
    pub fn snapshot(&self, current: Option<Snapshot>) -> Option<(Snapshot, Option<UpstreamBind>)> {
        let model = self.state.model.load_full();
        // cheap when nothing changed: one generation compare
        if let Some(s) = current.filter(|s| s.model.generation == model.generation) {
            return Some((s, None));
        }
        let resolved = model.resolve(&self.target, self.peer, self.protocol)?;
        let verdict =
            model.connection_verdict_from(&resolved.listener, resolved.source.clone(), self.peer, L4Protocol::Tcp);
        let context = resolved.context(self.id, self.peer, &self.listener);
        let Resolved { listener, bind, .. } = resolved;
        Some((Snapshot { model, listener, context, verdict }, bind))
    }

    /// A flow record of this connection, without protocol details.
    pub fn flow(&self, snap: &Snapshot, verdict: Verdict, reason: Option<String>) -> FlowRecord {
        let context = &snap.context;
        FlowRecord {
            time: FlowTime::default(),
            id: 0,
            protocol: self.flow_protocol.into(),
            verdict,
            reason,
            policies: match &*snap.verdict {
                ConnectionVerdict::Forward(chain) => chain.allowed_by.clone(),
                ConnectionVerdict::Drop { .. } => Vec::new(),
            },
            matched: None,
            source: FlowPeer::new(&context.source, self.peer),
            destination: FlowPeer::new(&context.destination, context.destination_addr),
            listener: self.listener.to_string(),
            port: context.port,
            connection: context.id,
            http: None,
            dns: None,
            kafka: None,
            memcached: None,
            l7: None,
            latency_us: None,
            filter_us: 0,
        }
    }

    /// The first snapshot and the upstream connection; `None` when the
    /// connection was dropped by policy or the upstream could not be reached
    /// (a flow record says which).
    pub async fn open(&self, open: &OpenConnection, client: &TcpStream) -> Option<(Snapshot, TcpStream)> {
        let (snap, bind) = self.snapshot(None)?;
        if let ConnectionVerdict::Drop { reason } = &*snap.verdict {
            self.state.flows.record(self.flow(&snap, Verdict::Dropped, Some(reason.clone())));
            open.drop_at_accept(client);
            return None;
        }
        let (address, timeout) = (snap.listener.config.upstream, snap.listener.config.connect_timeout);
        let connect = async {
            match bind {
                None => TcpStream::connect(address).await,
                Some(bind) => bind.connect(address)?.connect(address).await,
            }
        };
        let reason = match tokio::time::timeout(timeout, connect).await {
            Ok(Ok(upstream)) => {
                let _ = upstream.set_nodelay(true);
                return Some((snap, upstream));
            }
            Ok(Err(e)) => format!("upstream {address}: {e}"),
            Err(_) => format!("upstream {address}: connect timed out"),
        };
        self.state.flows.record(self.flow(&snap, Verdict::Error, Some(reason)));
        None
    }
}
