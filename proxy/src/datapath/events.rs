//! Kernel events (drops, and verdicts for new connections) into flow records.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};

use aya::maps::{MapData, RingBuf};
use ipnet::Ipv4Net;
use tokio::io::unix::AsyncFd;
use weir_datapath_common::{
    DIR_INGRESS, EVENT_ALLOW, EVENT_DROP, Event, PROTO_SCTP, PROTO_TCP, PROTO_UDP, REASON_NO_PROXY, REASON_POLICY,
};

use crate::flow::{FlowPeer, FlowRecord, Verdict};
use crate::identity::Identity;
use crate::metrics::ListenerLabels;
use crate::model::PolicyModel;
use crate::state::ProxyState;

/// What `PolicyValue::rule` numbers mean, for the model in force.
#[derive(Debug, Default)]
pub struct RuleTexts {
    pub texts: Vec<String>,
    pub cidrs: BTreeMap<u32, Ipv4Net>,
}

/// Read events until the ring is closed.
pub async fn run(state: Arc<ProxyState>, ring: RingBuf<MapData>, rules: Arc<RwLock<RuleTexts>>) {
    // SAFETY: the ring owns its map fd and keeps it open, unchanged, for as
    // long as it lives, which is as long as the AsyncFd.
    let registered = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) };
    let mut ring = match registered {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!("datapath events cannot be read: {e}");
            return;
        }
    };
    loop {
        let mut guard = match ring.readable_mut().await {
            Ok(g) => g,
            Err(e) => {
                tracing::error!("datapath events: {e}");
                return;
            }
        };
        while let Some(item) = guard.get_inner_mut().next() {
            if item.len() < size_of::<Event>() {
                continue;
            }
            // SAFETY: the kernel wrote an `Event` (repr(C), plain data); read unaligned.
            let event: Event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            let model = state.model.load();
            let record = flow_of(&event, &model, &rules.read().unwrap());
            if event.kind == EVENT_DROP {
                let labels = ListenerLabels { listener: crate::model::TRANSPARENT_LISTENER.into() };
                state.metrics.connections_dropped.get_or_create(&labels).inc();
            }
            state.flows.record(record);
        }
        guard.clear_ready();
    }
}

fn flow_of(event: &Event, model: &PolicyModel, rules: &RuleTexts) -> FlowRecord {
    let identity = |id: u32| -> Arc<Identity> {
        if let Some(i) = model.identities.by_id(id) {
            return i.clone();
        }
        match rules.cidrs.get(&id) {
            Some(net) => Arc::new(Identity::new(
                id,
                crate::identity::Labels::new(vec![
                    crate::identity::Label::new("cidr", &net.to_string(), ""),
                    crate::identity::Label::reserved("world"),
                ]),
            )),
            None => model.identities.world().clone(),
        }
    };
    let address = |raw: u32, port: u16| SocketAddr::from((Ipv4Addr::from(raw.to_ne_bytes()), port));
    let protocol = match event.protocol {
        PROTO_TCP => "tcp",
        PROTO_UDP => "udp",
        PROTO_SCTP => "sctp",
        1 => "icmp",
        _ => "ip",
    };
    let rule = rules
        .texts
        .get(event.rule as usize)
        .filter(|t| !t.is_empty())
        .map(|t| t.replace(super::compile::PORT_PLACEHOLDER, &event.dport.to_string()));
    let side = if event.direction == DIR_INGRESS { "ingress" } else { "egress" };
    let (verdict, reason, policies) = match (event.kind, event.reason) {
        (EVENT_DROP, REASON_POLICY) => {
            (Verdict::Dropped, Some(rule.unwrap_or_else(|| format!("no {side} rule allows it"))), Vec::new())
        }
        (EVENT_DROP, REASON_NO_PROXY) => (
            Verdict::Dropped,
            Some(format!(
                "{side} L7 rule {} needs the proxy, which cannot take this packet (not TCP from a pod on this node, \
                 or no proxy listening)",
                rule.unwrap_or_default()
            )),
            Vec::new(),
        ),
        (EVENT_DROP, _) => (Verdict::Dropped, Some("spoofed source address".to_string()), Vec::new()),
        (EVENT_ALLOW, _) => (Verdict::Forwarded, None, rule.into_iter().collect()),
        _ => (Verdict::Forwarded, Some("redirected to the proxy".to_string()), rule.into_iter().collect()),
    };
    let source = FlowPeer::new(&identity(event.src_identity), address(event.saddr, event.sport));
    let destination = FlowPeer::new(&identity(event.dst_identity), address(event.daddr, event.dport));
    FlowRecord {
        reason,
        policies,
        listener: "datapath".into(),
        port: event.dport,
        ..FlowRecord::new(protocol, verdict, source, destination)
    }
}
