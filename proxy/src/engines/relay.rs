//! What every one-upstream-connection-per-client engine (Kafka, memcached,
//! stream filters) shares: the connection's view of the policy model, its
//! flow records, the upstream dial and the filter chain a request runs through.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

use crate::context::{Target, next_connection_id};
use crate::engines::chain::{self, ChainRun, Stopped};
use crate::engines::connection::Decision;
use crate::engines::state::{OpenConnection, ProxyState};
use crate::limits::{Held, Idle, IdleTimeout, ListenerLimits};
use crate::model::{ChainLink, ConnectionVerdict};
use crate::observe::flow::{FlowDetail, FlowRecord, Verdict};
use crate::observe::metrics::{CassandraLabels, KafkaLabels, ListenerLabels, MemcachedLabels, RequestLabels};
use crate::policy::L4Protocol;
use crate::protocol::Protocol;
use crate::wasm::{ConfiguredFilter, ConnectionView, FilterFailure};

/// The model-dependent part of a connection (the connection step's
/// decision), made again when the model changes.
pub type Snapshot = Decision;

/// One client connection of a relaying engine.
pub struct Connection {
    pub state: Arc<ProxyState>,
    pub target: Target,
    pub peer: SocketAddr,
    pub id: u64,
    pub listener: Arc<str>,
    pub protocol: Protocol,
    /// When bytes last moved, for the listener's `idle_timeout` (set by `open`).
    pub idle: Idle,
}

impl Connection {
    pub fn new(state: Arc<ProxyState>, target: Target, peer: SocketAddr, protocol: Protocol) -> Self {
        let listener = target.name();
        Connection { state, target, peer, id: next_connection_id(), listener, protocol, idle: Idle::default() }
    }

    /// The listener's limits as the snapshot's model has them.
    pub fn limits(&self, snap: &Snapshot) -> ListenerLimits {
        ListenerLimits::of(&snap.model.config.limits, &snap.listener.config.limits)
    }

    /// How many stream-filter instances one client address may hold.
    pub fn filter_instances_per_client(&self, snap: &Snapshot) -> usize {
        snap.model
            .config
            .limits
            .filter_instances_per_client
            .unwrap_or(crate::limits::DEFAULT_FILTER_INSTANCES_PER_CLIENT)
    }

    /// This connection's share of the request-buffer budget.
    pub fn held(&self, snap: &Snapshot) -> Held {
        Held::new(&self.state.limits, self.limits(snap).max_request)
    }

    /// A read from the client, unless the connection idles past its
    /// `idle_timeout` first (then counted in `weir_connections_closed_idle`).
    pub async fn idle_guard<F: std::future::Future>(&self, read: F) -> Result<F::Output, IdleTimeout> {
        self.idle.guard(read).await.inspect_err(|_| {
            let labels = ListenerLabels { listener: self.listener.to_string() };
            self.state.metrics.connections_closed_idle.get_or_create(&labels).inc();
        })
    }

    /// The current snapshot: `current` when the model has not changed, a
    /// fresh decision when it has. `None`: the listener is gone.
    pub fn snapshot(&self, current: Option<Snapshot>) -> Option<Snapshot> {
        let model = self.state.model.load_full();
        // cheap when nothing changed: one generation compare
        if current.as_ref().is_some_and(|s| s.model.generation == model.generation) {
            return current;
        }
        // `current` lives until the new decision is made: its FQDN lease
        // keeps the address while the new verdict is computed
        Decision::make(&self.state, model, &self.target, self.peer, self.id, self.protocol, L4Protocol::Tcp)
    }

    /// A flow record of this connection, without protocol details.
    pub fn flow(&self, snap: &Snapshot, verdict: Verdict, reason: Option<String>) -> FlowRecord {
        FlowRecord {
            reason,
            policies: match &*snap.verdict {
                ConnectionVerdict::Forward(chain) => chain.allowed_by.clone(),
                ConnectionVerdict::Drop { .. } => Vec::new(),
            },
            ..FlowRecord::of(&snap.context, self.protocol, verdict)
        }
    }

    /// Keep a flow and count it: a flow that describes a request counts in
    /// `weir_requests_total` and its protocol's own counter.
    pub fn record(&self, flow: FlowRecord) {
        let metrics = &self.state.metrics;
        let verdict = flow.verdict.as_str();
        let request = match &flow.detail {
            Some(FlowDetail::Kafka(k)) => {
                metrics.kafka_requests.get_or_create(&KafkaLabels { api: k.api_key.clone(), verdict }).inc();
                true
            }
            Some(FlowDetail::Memcached(m)) => {
                metrics
                    .memcached_requests
                    .get_or_create(&MemcachedLabels { command: m.command.clone(), verdict })
                    .inc();
                true
            }
            Some(FlowDetail::Cassandra(c)) => {
                metrics.cassandra_requests.get_or_create(&CassandraLabels { opcode: c.opcode.clone(), verdict }).inc();
                true
            }
            // a stream filter's request flow (it has no counter of its own)
            Some(FlowDetail::L7(_)) => true,
            // HTTP and DNS are not relayed; a flow without a request is a
            // connection's (refused, a bad frame, the peer gone)
            Some(FlowDetail::Http(_) | FlowDetail::Dns(_)) | None => false,
        };
        if request {
            metrics.requests.get_or_create(&RequestLabels { protocol: self.protocol.name(), verdict }).inc();
        }
        self.state.flows.record(flow);
    }

    /// A connection-level error record (bad frame, peer gone), unless the
    /// listener is gone.
    pub fn record_error(&self, snap: &mut Option<Snapshot>, why: String) {
        if let Some(s) = self.snapshot(snap.take()) {
            self.record(self.flow(&s, Verdict::Error, Some(why)));
            *snap = Some(s);
        }
    }

    /// The first snapshot and the upstream connection; `None` when the
    /// connection was dropped by policy or the upstream could not be reached
    /// (a flow record says which). The upstream comes with its descriptor
    /// slot: keep it while the upstream socket lives.
    pub async fn open(
        &self,
        open: &OpenConnection,
        client: &TcpStream,
    ) -> Option<(Snapshot, TcpStream, crate::limits::UpstreamSlot)> {
        let snap = self.snapshot(None)?;
        self.idle.set_timeout(self.limits(&snap).idle_timeout);
        if let ConnectionVerdict::Drop { reason } = &*snap.verdict {
            self.state.flows.record(self.flow(&snap, Verdict::Dropped, Some(reason.clone())));
            open.drop_at_accept(client);
            return None;
        }
        let (address, timeout) = (snap.listener.config.upstream, snap.listener.config.connect_timeout);
        let slot = match self.state.limits.upstream_slot_or_make_room().await {
            Ok(slot) => slot,
            Err(e) => {
                self.state.flows.record(self.flow(&snap, Verdict::Error, Some(format!("upstream {address}: {e}"))));
                return None;
            }
        };
        let connect = async {
            match snap.bind {
                None => TcpStream::connect(address).await,
                Some(bind) => bind.connect(address)?.connect(address).await,
            }
        };
        let reason = match tokio::time::timeout(timeout, connect).await {
            Ok(Ok(upstream)) => {
                let _ = upstream.set_nodelay(true);
                return Some((snap, upstream, slot));
            }
            Ok(Err(e)) => format!("upstream {address}: {e}"),
            Err(_) => format!("upstream {address}: connect timed out"),
        };
        self.state.flows.record(self.flow(&snap, Verdict::Error, Some(reason)));
        None
    }
}

/// A request the chain refuses.
pub struct Refusal<D> {
    /// Denied by policy, or Error when a filter failed closed.
    pub verdict: Verdict,
    /// The denying filter's detail, or the engine's default when the
    /// connection's policy changed to drop or a filter failed.
    pub detail: D,
}

/// Run a request through the connection's filter chain. The WIT request is
/// built only when some filter will read it. `Some` refuses the request; the
/// flow gets the reason, what matched and the time spent in filters.
pub fn run_chain<W, D>(
    snap: &Snapshot,
    flow: &mut FlowRecord,
    request: impl FnOnce() -> W,
    default_detail: impl Fn() -> D,
    // a denial carries its reason and the engine's detail (Kafka's error code)
    mut ask: impl FnMut(&ConfiguredFilter, ConnectionView, &W) -> Result<chain::Answer<(String, D)>, FilterFailure>,
) -> Option<Refusal<D>> {
    let chain = match &*snap.verdict {
        ConnectionVerdict::Drop { reason } => {
            flow.reason = Some(format!("{reason} (policy changed under an open connection)"));
            return Some(Refusal { verdict: Verdict::Denied, detail: default_detail() });
        }
        ConnectionVerdict::Forward(chain) => chain,
    };
    if chain.links.is_empty() && chain.audit.is_none() {
        return None;
    }
    let request = request();
    let mut run = ChainRun::default();
    let mut ask = |link: &ChainLink, view| {
        Ok(match ask(&link.filter, view, &request)? {
            chain::Answer::Deny((reason, detail)) => chain::Answer::Deny((link.denial(&reason), detail)),
            allow => allow,
        })
    };
    let stopped = chain::run(&chain.links, &snap.context, &mut run, &mut ask);
    if stopped.is_none()
        && let Some(audit) = &chain.audit
        && let Some(reason) = chain::audit(audit, &snap.context, &mut run, |link, view| {
            Ok(match ask(link, view)? {
                chain::Answer::Allow(matched) => chain::Answer::Allow(matched),
                chain::Answer::Deny((reason, _)) => chain::Answer::Deny(reason),
            })
        })
    {
        flow.verdict = Verdict::Audited;
        flow.reason = Some(reason);
        flow.audited_by = audit.policies.clone();
    }
    flow.filter_us = run.filter_time.as_micros() as u64;
    if !run.matched.is_empty() {
        flow.matched = Some(run.matched.join(", "));
    }
    match stopped? {
        Stopped::Denied((reason, detail)) => {
            flow.reason = Some(reason);
            Some(Refusal { verdict: Verdict::Denied, detail })
        }
        Stopped::Failed(failure) => {
            flow.reason = Some(failure.to_string());
            Some(Refusal { verdict: Verdict::Error, detail: default_detail() })
        }
    }
}
