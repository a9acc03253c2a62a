//! The one step every engine takes for a connection (and the DNS engine for
//! each exchange): under one policy model, resolve the listener, the sender
//! and the upstream binding, decide the L3/L4 verdict, build the context
//! filters and flows see, and (for a connection) hold the DNS-learned
//! destination address for as long as the decision lives. Decided once per model generation; an
//! engine keeps the [`Decision`] and asks again only when the model changed.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::context::{ConnectionContext, Target};
use crate::engines::state::ProxyState;
use crate::identity::reserved;
use crate::model::fqdn::FqdnLease;
use crate::model::{ConnectionVerdict, ListenerModel, PolicyModel, Resolved};
use crate::net::UpstreamBind;
use crate::policy::L4Protocol;
use crate::protocol::Protocol;

/// A connection's view of one policy model.
pub struct Decision {
    pub model: Arc<PolicyModel>,
    pub listener: Arc<ListenerModel>,
    pub context: Arc<ConnectionContext>,
    pub verdict: Arc<ConnectionVerdict>,
    /// `Some`: dial the upstream from the client's address (datapath).
    pub bind: Option<UpstreamBind>,
    /// Holds a DNS-learned destination address while the decision lives, so
    /// its TTL running out does not cut a connection `toFQDNs` allowed.
    _fqdn_lease: Option<FqdnLease>,
}

impl Decision {
    /// Decide connection `id` from `peer` to `target` under `model`. `None`:
    /// the listener is gone.
    ///
    /// An engine that already holds a decision for an older model must keep
    /// it until this returns: its lease is what keeps an expired address
    /// allowed while the new verdict is computed.
    pub fn make(
        state: &ProxyState,
        model: Arc<PolicyModel>,
        target: &Target,
        peer: SocketAddr,
        id: u64,
        protocol: Protocol,
        l4: L4Protocol,
    ) -> Option<Decision> {
        let resolved = model.resolve(target, peer, protocol)?;
        let verdict = model.connection_verdict_from(&resolved.listener, resolved.source.clone(), peer, l4);
        let context = resolved.context(id, peer, &target.name());
        let Resolved { listener, bind, .. } = resolved;
        // a DNS exchange ends with its answer: there is no connection to keep
        // open, and the lease would cost a lock on every query
        let _fqdn_lease =
            (protocol != Protocol::Dns).then(|| fqdn_lease(state, &model, &listener, &verdict, peer)).flatten();
        Some(Decision { model, listener, context, verdict, bind, _fqdn_lease })
    }
}

/// A lease on the upstream address when `toFQDNs` is what lets the peer
/// reach it: the connection is forwarded, its destination is the world, and
/// the peer learned a name for the address.
fn fqdn_lease(
    state: &ProxyState,
    model: &PolicyModel,
    listener: &ListenerModel,
    verdict: &ConnectionVerdict,
    peer: SocketAddr,
) -> Option<FqdnLease> {
    let upstream = listener.config.upstream.ip();
    if !matches!(verdict, ConnectionVerdict::Forward(_))
        || listener.destination.identity.id != reserved::WORLD
        || model.learned_names(peer.ip(), upstream).is_empty()
    {
        return None;
    }
    let endpoint = model.identities.endpoint(peer.ip())?;
    Some(state.fqdn.lease(&endpoint.qualified_name(), upstream))
}
