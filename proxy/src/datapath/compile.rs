//! The model compiled into what the eBPF maps must hold: endpoints by
//! interface, the ipcache (prefix → identity) and the L3/L4 policy entries.
//!
//! The policy map is keyed by (subject, peer identity, port, protocol,
//! direction). For every endpoint on this node and every identity it can
//! meet, the compiler asks the same `PolicySet::evaluate` the proxy asks: once
//! for each port the endpoint's rules name, and once for "any other port" of
//! each protocol (port 0), so the kernel and the proxy cannot disagree.
//! World addresses that CIDR rules name get identities of their own (one per
//! prefix, as Cilium's local CIDR identities), so the map stays keyed by
//! identity and the LPM ipcache picks the most specific prefix.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use weir_datapath_common::{
    DIR_EGRESS, DIR_INGRESS, ENDPOINT_AUDIT_EGRESS, ENDPOINT_AUDIT_INGRESS, ENDPOINT_ENFORCE_EGRESS,
    ENDPOINT_ENFORCE_INGRESS, ENDPOINT_OBSERVE_EGRESS, ENDPOINT_OBSERVE_INGRESS, EndpointInfo, FIRST_FQDN_IDENTITY,
    IpcacheValue, PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP, PolicyKey, PolicyValue, VERDICT_ALLOW,
    VERDICT_AUDIT, VERDICT_DENY, VERDICT_REDIRECT, VERDICT_REDIRECT_OR_ALLOW, identity,
};

use crate::config::{DatapathConfig, Visibility};
use crate::context::Direction;
use crate::identity::{Identity, reserved};
use crate::model::PolicyModel;
use crate::policy::{L4Protocol, PeerInfo, SideVerdict, SubjectRules};
use crate::protocol::Protocol;

pub use weir_datapath_common::FIRST_CIDR_IDENTITY;
/// The protocols with ports, as policies name them and as IP numbers.
const PORT_PROTOCOLS: [(L4Protocol, u8); 3] =
    [(L4Protocol::Tcp, PROTO_TCP), (L4Protocol::Udp, PROTO_UDP), (L4Protocol::Sctp, PROTO_SCTP)];
/// The protocols `icmps` rules name types of (a type's "port" is type + 1).
const ICMP_PROTOCOLS: [(L4Protocol, u8); 2] = [(L4Protocol::Icmp, PROTO_ICMP), (L4Protocol::Icmp6, PROTO_ICMPV6)];

/// In rule texts of "every other port" entries, where the packet's port goes.
pub const PORT_PLACEHOLDER: &str = "{port}";
/// A port range is expanded into one entry per port up to this width.
pub const MAX_RANGE_WIDTH: u32 = 16384;

/// One endpoint the programs are attached for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachedEndpoint {
    pub name: String,
    pub interface: String,
    pub ifindex: u32,
    pub info: EndpointInfo,
    /// The pod's IPv6 address (WEIR_ENDPOINTS6), if it has one.
    pub ipv6: Option<Ipv6Addr>,
}

/// Everything the maps should hold for one model.
#[derive(Debug, Default)]
pub struct Desired {
    pub endpoints: Vec<AttachedEndpoint>,
    /// (prefix, value), one map per family as in the kernel.
    pub ipcache: BTreeMap<Ipv4Net, IpcacheValue>,
    pub ipcache6: BTreeMap<Ipv6Net, IpcacheValue>,
    pub policy: HashMap<PolicyKey, PolicyValue>,
    /// Texts that `PolicyValue::rule` indexes (0 is empty): why a packet was
    /// dropped or allowed, for flow records.
    pub rules: Vec<String>,
    /// Identities the datapath made up (CIDR prefixes, DNS-learned
    /// addresses), for flows.
    pub cidr_identities: BTreeMap<u32, IpNet>,
}

impl Desired {
    /// Add `value` for `net` to its family's ipcache; without `replace`, an
    /// entry already there stays.
    fn ipcache_insert(&mut self, net: IpNet, value: IpcacheValue, replace: bool) {
        match net {
            IpNet::V4(v4) if replace => drop(self.ipcache.insert(v4, value)),
            IpNet::V4(v4) => drop(self.ipcache.entry(v4).or_insert(value)),
            IpNet::V6(v6) if replace => drop(self.ipcache6.insert(v6, value)),
            IpNet::V6(v6) => drop(self.ipcache6.entry(v6).or_insert(value)),
        }
    }

    fn ipcache_get(&self, address: IpAddr) -> Option<&IpcacheValue> {
        match address {
            IpAddr::V4(v4) => self.ipcache.get(&Ipv4Net::from(v4)),
            IpAddr::V6(v6) => self.ipcache6.get(&Ipv6Net::from(v6)),
        }
    }
}

/// The world's IPv6 half has an identity number of its own in the maps (the
/// identity itself is `reserved:world`), so the entries the compiler writes
/// for it are evaluated with an IPv6 address: an IPv4 CIDR rule never
/// decides for IPv6, nor the reverse. The ipcache maps `::/0` to it.
pub const WORLD_IPV6_PREFIX: &str = "::/0";

/// Compile `model`. `ifindex` resolves interface names; `node_addresses`
/// become `reserved:host` in the ipcache.
pub fn compile(
    model: &PolicyModel,
    proxy_ports: &DatapathConfig,
    node_addresses: &[IpAddr],
    ifindex: impl Fn(&str) -> Option<u32>,
) -> Result<Desired, Vec<String>> {
    let mut errors = Vec::new();
    let mut desired = Desired { rules: vec![String::new()], ..Default::default() };
    let mut rule_index: HashMap<String, u32> = HashMap::new();

    // Endpoints on this node: the ones with an interface.
    let mut local: Vec<(Arc<Identity>, AttachedEndpoint)> = Vec::new();
    for (i, (config, endpoint)) in model.config.endpoints.iter().zip(&model.endpoints).enumerate() {
        let Some(interface) = &config.interface else { continue };
        // one address of each family is enforced; a pod with none of a
        // family sends none of it (the programs drop it)
        let ipv4 = endpoint.addresses.iter().find_map(|a| match a {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(_) => None,
        });
        let ipv6 = endpoint.addresses.iter().find_map(|a| match a {
            IpAddr::V6(v6) => Some(*v6),
            IpAddr::V4(_) => None,
        });
        let Some(index) = ifindex(interface) else {
            errors.push(format!("endpoints[{i}].interface: no interface {interface:?} on this node"));
            continue;
        };
        // 0.0.0.0: no IPv4 (the programs refuse IPv4 from and to the pod)
        let ipv4 = ipv4.map_or(0, |v4| u32::from_ne_bytes(v4.octets()));
        let info = EndpointInfo { identity: endpoint.identity.id, ipv4, flags: 0 };
        local.push((
            endpoint.identity.clone(),
            AttachedEndpoint { name: config.name.clone(), interface: interface.clone(), ifindex: index, info, ipv6 },
        ));
    }

    // The ipcache, and the identities a local endpoint can meet.
    let world = model.identities.world().clone();
    let host = Arc::new(Identity::reserved(reserved::HOST));
    let mut peers: Vec<(Arc<Identity>, u32, IpNet)> = Vec::new();
    // addresses local endpoints learned from DNS, each with an identity of
    // its own, and per subject identity the names it learned each one for
    let mut learned: BTreeMap<IpAddr, BTreeMap<u32, Vec<Arc<str>>>> = BTreeMap::new();
    let attached: HashMap<String, u32> = model
        .config
        .endpoints
        .iter()
        .zip(&model.endpoints)
        .filter(|(config, _)| config.interface.is_some())
        .map(|(_, endpoint)| (endpoint.qualified_name(), endpoint.identity.id))
        .collect();
    for entry in model.fqdn.entries() {
        let Some(&subject) = attached.get(&entry.endpoint) else { continue };
        // names still held (TTL left, or a proxied connection keeps them)
        for name in model.fqdn.names_for(&entry.endpoint, entry.address) {
            let names = learned.entry(entry.address).or_default().entry(subject).or_default();
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    let mut seen = BTreeSet::new();
    for endpoint in &model.endpoints {
        for address in &endpoint.addresses {
            // non-zero: a pod on this node, whose ingress policy the
            // sender's veth enforces
            let ifindex = local
                .iter()
                .find(|(_, e)| match address {
                    IpAddr::V4(v4) => e.info.ipv4 == u32::from_ne_bytes(v4.octets()),
                    IpAddr::V6(v6) => e.ipv6 == Some(*v6),
                })
                .map_or(0, |(_, e)| e.ifindex);
            desired.ipcache_insert(
                IpNet::from(*address),
                IpcacheValue { identity: endpoint.identity.id, local_ifindex: ifindex },
                true,
            );
        }
        if seen.insert(endpoint.identity.id) {
            let address = endpoint.addresses.first().map_or(IpNet::default(), |a| IpNet::from(*a));
            peers.push((endpoint.identity.clone(), endpoint.identity.id, address));
        }
    }
    for address in node_addresses {
        desired.ipcache_insert(
            IpNet::from(*address),
            IpcacheValue { identity: reserved::HOST, local_ifindex: 0 },
            false,
        );
    }
    peers.push((host, reserved::HOST, node_addresses.first().map_or(IpNet::default(), |a| IpNet::from(*a))));
    peers.push((world.clone(), reserved::WORLD, IpNet::V4(Ipv4Net::default())));
    // the rules' prefixes, then the IPv6 world (see WORLD_IPV6_PREFIX) unless
    // a rule named it already
    let mut cidrs = model.policies.cidrs();
    let world6: IpNet = WORLD_IPV6_PREFIX.parse().expect("a prefix");
    if !cidrs.contains(&world6) {
        cidrs.push(world6);
    }
    for (n, cidr) in cidrs.into_iter().enumerate() {
        let id = FIRST_CIDR_IDENTITY + n as u32;
        desired.cidr_identities.insert(id, cidr);
        // an IPv6 prefix inside a NAT64 prefix decides nothing there: its
        // addresses are judged as the IPv4 ones they embed (below)
        if crate::identity::nat64_embedded(cidr).is_none() {
            desired.ipcache_insert(cidr, IpcacheValue { identity: id, local_ifindex: 0 }, false);
        }
        peers.push((world.clone(), id, cidr));
    }
    // NAT64: the programs judge an address in a NAT64 prefix as the IPv4 address
    // it embeds, whatever IPv6 rules name (only a learned name is more
    // specific: toFQDNs through DNS64)
    for nat64 in crate::identity::nat64_prefixes() {
        // a /96 as ever; a shorter one with its length, which says where the
        // IPv4 address is, under a marker older programs do not read
        let value = match nat64.prefix_len() {
            96 => IpcacheValue { identity: identity::NAT64, local_ifindex: 0 },
            len => IpcacheValue { identity: identity::NAT64_SHORT, local_ifindex: u32::from(len) },
        };
        desired.ipcache_insert((*nat64).into(), value, true);
    }

    let no_names = BTreeMap::new();
    let mut fqdn_peers = Vec::new();
    for (n, (address, _)) in learned.iter().enumerate() {
        // a managed endpoint, and the node, are known by their identities,
        // never by a learned name (toFQDNs selects the world only): an
        // answer naming the node's address must not relabel it for everyone
        if desired.ipcache_get(*address).is_some() {
            continue;
        }
        // nor by the NAT64 spelling of its IPv4 address
        let embedded = crate::identity::nat64_embedded(IpNet::from(*address));
        if embedded.is_some_and(|v4| desired.ipcache_get(v4.addr()).is_some()) {
            continue;
        }
        let id = FIRST_FQDN_IDENTITY + n as u32;
        desired.cidr_identities.insert(id, IpNet::from(*address));
        desired.ipcache_insert(IpNet::from(*address), IpcacheValue { identity: id, local_ifindex: 0 }, true);
        fqdn_peers.push((world.clone(), id, IpNet::from(*address)));
    }
    let names_of = |peer_id: u32, address: &IpNet, subject: u32| -> Vec<Arc<str>> {
        if peer_id < FIRST_FQDN_IDENTITY {
            return Vec::new();
        }
        learned.get(&address.addr()).unwrap_or(&no_names).get(&subject).cloned().unwrap_or_default()
    };
    peers.extend(fqdn_peers);

    // Policy entries.
    let mut index_of = |text: String| -> u32 {
        let next = desired.rules.len() as u32;
        *rule_index.entry(text.clone()).or_insert_with(|| {
            desired.rules.push(text);
            next
        })
    };
    // Visibility (`<Ingress/80/TCP/HTTP>`): ports handed to the proxy to be
    // parsed into flows, policy or not. Policy entries are per identity, so
    // a pod's visibility is its identity's on this node (the union of its
    // pods' annotations).
    let mut visibility: HashMap<u32, Vec<Visibility>> = HashMap::new();
    for (config, endpoint) in model.config.endpoints.iter().zip(&model.endpoints) {
        if let (Some(_), Some(text)) = (&config.interface, &config.visibility) {
            // checked when weir.yaml was read, or when the pod was
            let parsed = Visibility::parse_all(text).unwrap_or_default();
            visibility.entry(endpoint.identity.id).or_default().extend(parsed);
        }
    }
    for (identity, endpoint) in &mut local {
        // the rules selecting this endpoint, selected once for every
        // question below (one per peer, port and protocol); with audited
        // rules, those too: where they would drop what the enforced ones
        // allow, the entry audits (the packet passes, an event says so)
        let rules = model.enforced().for_subject(identity);
        let all = model.audits().then(|| model.policies.for_subject(identity));
        for (direction, dir, flag, audit_only, observe_only) in [
            (
                Direction::Ingress,
                DIR_INGRESS,
                ENDPOINT_ENFORCE_INGRESS,
                ENDPOINT_AUDIT_INGRESS,
                ENDPOINT_OBSERVE_INGRESS,
            ),
            (Direction::Egress, DIR_EGRESS, ENDPOINT_ENFORCE_EGRESS, ENDPOINT_AUDIT_EGRESS, ENDPOINT_OBSERVE_EGRESS),
        ] {
            let enforced = rules.concerns(direction);
            let audited = all.as_ref().is_some_and(|all| all.concerns(direction));
            let observed: Vec<Visibility> = visibility
                .get(&identity.id)
                .into_iter()
                .flatten()
                .filter(|v| v.ingress == (direction == Direction::Ingress))
                .copied()
                .collect();
            if !enforced && !audited && observed.is_empty() {
                continue;
            }
            // Entries are looked up only for enforced directions; an
            // endpoint that is selected but not default-deny still needs
            // them (for redirects), so it is marked enforced and the
            // compiled "allow" entries keep it open. Selected by audited
            // rules alone, a missing entry audits instead of dropping;
            // observed alone, it allows.
            endpoint.info.flags |= flag;
            if !enforced {
                endpoint.info.flags |= if audited { audit_only } else { observe_only };
            }
            let mut ports = match named_ports(all.as_ref().unwrap_or(&rules), direction) {
                Ok(p) => p,
                Err(e) => {
                    errors.push(format!("endpoint {}: {e}", endpoint.name));
                    continue;
                }
            };
            for v in &observed {
                for (protocol, number) in PORT_PROTOCOLS {
                    if visible(v, protocol) {
                        ports.get_mut(&number).unwrap().insert(v.port);
                    }
                }
            }
            for (peer, peer_id, address) in &peers {
                let names = names_of(*peer_id, address, identity.id);
                let info = PeerInfo { identity: peer, address: *address, learned_names: &names };
                // the entry for `port`; a wildcard entry stands for every
                // other port: the flow fills in the one the packet had
                let mut entry = |port: u16, protocol: L4Protocol, wildcard: bool| {
                    let mut value_of = |rules: &SubjectRules<'_>| {
                        let v = match rules.evaluate(direction, info, port, protocol) {
                            SideVerdict::Denied { reason } if wildcard => SideVerdict::Denied {
                                reason: reason.replace(
                                    &format!("on {}", protocol.describe_port(port)),
                                    &match protocol {
                                        L4Protocol::Icmp | L4Protocol::Icmp6 => "on an ICMP type no rule names".into(),
                                        _ => format!("on port {PORT_PLACEHOLDER}"),
                                    },
                                ),
                            },
                            v => v,
                        };
                        value(v, protocol, proxy_ports, model, &mut index_of)
                    };
                    let enforced = value_of(&rules);
                    let entry = match &all {
                        Some(all) => with_audit(enforced, value_of(all)),
                        None => enforced,
                    };
                    // what policy lets through plainly on an observed port
                    // goes through the proxy, which parses it into flows
                    match observed.iter().find(|v| !wildcard && v.port == port && visible(v, protocol)) {
                        Some(v) if entry.verdict == VERDICT_ALLOW => {
                            let proxy_port = if protocol == L4Protocol::Udp {
                                proxy_ports.dns_proxy_port
                            } else {
                                proxy_ports.proxy_port_of(v.protocol)
                            };
                            // looking never costs the traffic: where the
                            // proxy cannot take it, it passes
                            PolicyValue { verdict: VERDICT_REDIRECT_OR_ALLOW, _pad: 0, proxy_port, rule: entry.rule }
                        }
                        _ => entry,
                    }
                };
                // Each port the rules name, and port 0 for every other one.
                // ICMP's "ports" are the types `icmps` rules name, plus one
                // (the kernel looks the message's up first, then port 0);
                // where no rule names one, neither is written and ICMP is
                // judged with the protocols without ports below.
                for (protocol, number) in PORT_PROTOCOLS.into_iter().chain(ICMP_PROTOCOLS) {
                    let named = &ports[&number];
                    let icmp = ICMP_PROTOCOLS.iter().any(|(p, _)| *p == protocol);
                    if icmp && named.is_empty() {
                        continue;
                    }
                    let key = |port| PolicyKey {
                        subject: identity.id,
                        peer: *peer_id,
                        port,
                        protocol: number,
                        direction: dir,
                    };
                    let last = if icmp { L4Protocol::icmp_port(u8::MAX) } else { u16::MAX };
                    let other_port = (1..=last).rev().find(|p| !named.contains(p));
                    let wildcard = other_port.map(|port| entry(port, protocol, true));
                    if let Some(w) = wildcard {
                        desired.policy.insert(key(0), w);
                    }
                    for port in named {
                        let v = entry(*port, protocol, false);
                        if Some(v) != wildcard {
                            desired.policy.insert(key(*port), v);
                        }
                    }
                }
                // protocols without ports (ICMP and the rest)
                let v = entry(0, L4Protocol::Other, false);
                desired.policy.insert(
                    PolicyKey { subject: identity.id, peer: *peer_id, port: 0, protocol: 0, direction: dir },
                    v,
                );
            }
        }
    }
    desired.endpoints = local.into_iter().map(|(_, e)| e).collect();
    if errors.is_empty() { Ok(desired) } else { Err(errors) }
}

/// The ports rules name for `subject` in `direction`, per IP protocol number.
fn named_ports(rules: &SubjectRules<'_>, direction: Direction) -> Result<HashMap<u8, BTreeSet<u16>>, String> {
    let mut out: HashMap<u8, BTreeSet<u16>> =
        PORT_PROTOCOLS.iter().chain(&ICMP_PROTOCOLS).map(|(_, n)| (*n, BTreeSet::new())).collect();
    for range in rules.port_ranges(direction) {
        if let Some((_, number)) = ICMP_PROTOCOLS.iter().find(|(p, _)| *p == range.protocol) {
            out.get_mut(number).unwrap().extend(range.start..=range.end);
            continue;
        }
        let width = u32::from(range.end) - u32::from(range.start) + 1;
        if width > MAX_RANGE_WIDTH {
            return Err(format!(
                "port range {}-{} is wider than the datapath expands ({MAX_RANGE_WIDTH} ports)",
                range.start, range.end
            ));
        }
        for (protocol, number) in PORT_PROTOCOLS {
            if range.protocol == L4Protocol::Any || range.protocol == protocol {
                out.get_mut(&number).unwrap().extend(range.start..=range.end);
            }
        }
    }
    Ok(out)
}

/// Whether visibility `v` covers `protocol` (DNS on UDP too; the rest TCP).
fn visible(v: &Visibility, protocol: L4Protocol) -> bool {
    match protocol {
        L4Protocol::Tcp => v.transport != "UDP",
        L4Protocol::Udp => v.transport != "TCP" && v.protocol == Protocol::Dns,
        _ => false,
    }
}

/// The entry when audited rules are in force: the enforced verdict, unless
/// it allows what the audited rules would drop (then the packet passes and
/// an audit event names their reason) or would hand to the proxy (which
/// then audits the requests, where it can take them).
fn with_audit(enforced: PolicyValue, all: PolicyValue) -> PolicyValue {
    match (enforced.verdict, all.verdict) {
        (VERDICT_ALLOW, VERDICT_DENY) => PolicyValue { verdict: VERDICT_AUDIT, ..all },
        // only if the proxy can take it: an audit never costs the traffic
        (VERDICT_ALLOW, VERDICT_REDIRECT) => PolicyValue { verdict: VERDICT_REDIRECT_OR_ALLOW, ..all },
        _ => enforced,
    }
}

/// One side's verdict as a map value. L7 rules are enforced by the proxy,
/// which TCP reaches, and UDP for DNS rules (the DNS proxy's transparent
/// socket): other protocols on such a port are allowed only by a rule
/// without L7 rules.
fn value(
    verdict: SideVerdict<'_>,
    protocol: L4Protocol,
    ports: &DatapathConfig,
    model: &PolicyModel,
    index_of: &mut impl FnMut(String) -> u32,
) -> PolicyValue {
    let entry = |verdict, proxy_port, rule| PolicyValue { verdict, _pad: 0, proxy_port, rule };
    match verdict {
        SideVerdict::Unenforced => entry(VERDICT_ALLOW, 0, 0),
        SideVerdict::Denied { reason } => entry(VERDICT_DENY, 0, index_of(reason)),
        SideVerdict::Allowed(allowances) => {
            let l7 = allowances.iter().find(|a| a.l7.is_some());
            let plain = allowances.iter().find(|a| a.l7.is_none());
            // the kernel picks the engine: each L7 protocol has its own
            // transparent socket (the proxy refuses a connection whose rules
            // are of another protocol than its engine's, as in local mode)
            let port_of = |a: &crate::policy::Allowance<'_>| {
                ports.proxy_port_of(a.l7.map_or(Protocol::Http, |l| model.kind_of(l)))
            };
            let dns = l7.is_some_and(|a| a.l7.is_some_and(|l| model.kind_of(l) == Protocol::Dns));
            match (protocol, l7, plain) {
                (L4Protocol::Tcp, Some(a), _) => entry(VERDICT_REDIRECT, port_of(a), index_of(a.origin.clone())),
                (L4Protocol::Udp, Some(a), _) if dns => {
                    entry(VERDICT_REDIRECT, ports.dns_proxy_port, index_of(a.origin.clone()))
                }
                (_, _, Some(a)) => entry(VERDICT_ALLOW, 0, index_of(a.origin.clone())),
                (_, Some(a), None) => {
                    entry(VERDICT_DENY, 0, index_of(format!("{} has L7 rules, which cover TCP only", a.origin)))
                }
                (_, None, None) => entry(VERDICT_DENY, 0, 0),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::metrics::Metrics;

    const CONFIG: &str = r#"
endpoints:
  - {name: web, address: 10.0.0.2, interface: veth-web, labels: {app: web}}
  - {name: monitor, address: 10.0.0.3, interface: veth-mon, labels: {app: monitor}}
  - {name: db, address: 10.0.0.4, interface: veth-db, labels: {app: db}}
"#;

    /// web may be pinged by the monitor (echo requests); db has a TCP rule.
    const POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: monitor}}]
      icmps: [{fields: [{type: EchoRequest}, {type: EchoRequest, family: IPv6}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: web}}]
      toPorts: [{ports: [{port: "5432", protocol: TCP}]}]
"#;

    fn compiled() -> (PolicyModel, Desired) {
        let model =
            PolicyModel::from_texts(CONFIG, POLICY, Arc::new(Metrics::default())).unwrap_or_else(|e| panic!("{e:?}"));
        let desired = compile(&model, &DatapathConfig::default(), &[], |_| Some(7)).unwrap();
        (model, desired)
    }

    fn id(model: &PolicyModel, name: &str) -> u32 {
        model.endpoints.iter().find(|e| &*e.name == name).unwrap().identity.id
    }

    #[test]
    fn icmp_types_are_entries_of_their_protocol_only_where_rules_name_one() {
        let (model, desired) = compiled();
        let (web, monitor, db) = (id(&model, "web"), id(&model, "monitor"), id(&model, "db"));
        let verdict = |subject, peer, port, protocol| {
            desired.policy.get(&PolicyKey { subject, peer, port, protocol, direction: DIR_INGRESS }).map(|v| v.verdict)
        };
        // type + 1: echo request is 9 (ICMP) and 129 (ICMPv6)
        assert_eq!(verdict(web, monitor, 9, PROTO_ICMP), Some(VERDICT_ALLOW));
        assert_eq!(verdict(web, monitor, 129, PROTO_ICMPV6), Some(VERDICT_ALLOW));
        // every other type, and the peer no rule names
        assert_eq!(verdict(web, monitor, 0, PROTO_ICMP), Some(VERDICT_DENY));
        assert_eq!(verdict(web, monitor, 0, PROTO_ICMPV6), Some(VERDICT_DENY));
        assert_eq!(verdict(web, db, 9, PROTO_ICMP).unwrap_or(VERDICT_DENY), VERDICT_DENY);
        let why = &desired.rules[desired.policy
            [&PolicyKey { subject: web, peer: monitor, port: 0, protocol: PROTO_ICMP, direction: DIR_INGRESS }]
            .rule as usize];
        assert!(why.contains("on an ICMP type no rule names"), "{why}");
        // db's rules name no type: ICMP stays with the port-less entry
        assert!(
            !desired.policy.keys().any(|k| k.subject == db && matches!(k.protocol, PROTO_ICMP | PROTO_ICMPV6)),
            "db has ICMP entries"
        );
        assert_eq!(verdict(db, web, 0, 0), Some(VERDICT_DENY));
    }
}
