//! The compiled rules: what a policy document becomes, and the verdict types
//! evaluation returns.

use std::collections::BTreeMap;
use std::sync::Arc;

use ipnet::IpNet;
use serde::Serialize;
use weir_fqdn_match::NameMatcher;

use super::document::{FqdnSelector, HttpRule, KafkaRule};
use super::selector::Selector;
use crate::context::Direction;
use crate::identity::{Identity, reserved};
use crate::protocol::Protocol;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum L4Protocol {
    Tcp,
    Udp,
    Sctp,
    Any,
    /// A protocol without ports (ICMP where no `icmps` rule names a type,
    /// …): only port-less rules cover it. Never written in a policy; the
    /// datapath asks about it.
    Other,
    /// ICMP messages named by `icmps` rules. For these the "port" is the
    /// message type plus one, so that 0 keeps meaning every type — in
    /// `PortRange`s as in the kernel's policy map.
    Icmp,
    /// The same for ICMPv6.
    Icmp6,
}

impl L4Protocol {
    pub(super) fn parse(text: &str) -> Option<Self> {
        match text {
            "TCP" => Some(L4Protocol::Tcp),
            "UDP" => Some(L4Protocol::Udp),
            "SCTP" => Some(L4Protocol::Sctp),
            "ANY" => Some(L4Protocol::Any),
            _ => None,
        }
    }

    pub(super) fn covers(self, actual: L4Protocol) -> bool {
        self == L4Protocol::Any || self == actual
    }

    /// ICMP type `icmp_type` as a port range (and the policy map) holds it:
    /// its number plus one.
    pub fn icmp_port(icmp_type: u8) -> u16 {
        u16::from(icmp_type) + 1
    }

    /// What a verdict's reason calls `port` of this protocol.
    pub fn describe_port(self, port: u16) -> String {
        match self {
            L4Protocol::Icmp if port > 0 => format!("ICMP type {}", port - 1),
            L4Protocol::Icmp6 if port > 0 => format!("ICMPv6 type {}", port - 1),
            _ => format!("port {port}"),
        }
    }
}

/// Cilium's names of ICMP types (`icmps[].fields[].type`), per family.
pub fn icmp_type_named(name: &str, ipv6: bool) -> Option<u8> {
    const V4: &[(&str, u8)] = &[
        ("EchoReply", 0),
        ("DestinationUnreachable", 3),
        ("Redirect", 5),
        ("Echo", 8),
        ("EchoRequest", 8),
        ("RouterAdvertisement", 9),
        ("RouterSelection", 10),
        ("TimeExceeded", 11),
        ("ParameterProblem", 12),
        ("Timestamp", 13),
        ("TimestampReply", 14),
        ("Photuris", 40),
        ("ExtendedEchoRequest", 42),
        ("ExtendedEchoReply", 43),
    ];
    const V6: &[(&str, u8)] = &[
        ("DestinationUnreachable", 1),
        ("PacketTooBig", 2),
        ("TimeExceeded", 3),
        ("ParameterProblem", 4),
        ("EchoRequest", 128),
        ("EchoReply", 129),
        ("MulticastListenerQuery", 130),
        ("MulticastListenerReport", 131),
        ("MulticastListenerDone", 132),
        ("RouterSolicitation", 133),
        ("RouterAdvertisement", 134),
        ("NeighborSolicitation", 135),
        ("NeighborAdvertisement", 136),
        ("RedirectMessage", 137),
        ("RouterRenumbering", 138),
        ("ICMPNodeInformationQuery", 139),
        ("ICMPNodeInformationResponse", 140),
        ("InverseNeighborDiscoverySolicitation", 141),
        ("InverseNeighborDiscoveryAdvertisement", 142),
        ("HomeAgentAddressDiscoveryRequest", 144),
        ("HomeAgentAddressDiscoveryReply", 145),
        ("MobilePrefixSolicitation", 146),
        ("MobilePrefixAdvertisement", 147),
        ("DuplicateAddressRequestCodeSuffix", 157),
        ("DuplicateAddressConfirmationCodeSuffix", 158),
        ("ExtendedEchoRequest", 160),
        ("ExtendedEchoReply", 161),
    ];
    let table = if ipv6 { V6 } else { V4 };
    table.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// Cilium entities: sets of identities with well-known meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Entity {
    All,
    World,
    Cluster,
    Host,
    RemoteNode,
    KubeApiserver,
    Health,
    Init,
    Unmanaged,
    Ingress,
}

impl Entity {
    pub(super) fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "all" => Entity::All,
            "world" | "world-ipv4" | "world-ipv6" => Entity::World,
            "cluster" => Entity::Cluster,
            "host" => Entity::Host,
            "remote-node" => Entity::RemoteNode,
            "kube-apiserver" => Entity::KubeApiserver,
            "health" => Entity::Health,
            "init" => Entity::Init,
            "unmanaged" => Entity::Unmanaged,
            "ingress" => Entity::Ingress,
            _ => return None,
        })
    }

    pub(super) fn selects(self, identity: &Identity) -> bool {
        match self {
            Entity::All => true,
            Entity::World => identity.id == reserved::WORLD,
            Entity::Cluster => identity.id != reserved::WORLD,
            Entity::Host => identity.id == reserved::HOST,
            Entity::RemoteNode => identity.id == reserved::REMOTE_NODE,
            Entity::KubeApiserver => identity.id == reserved::KUBE_APISERVER,
            Entity::Health => identity.id == reserved::HEALTH,
            Entity::Init => identity.id == reserved::INIT,
            Entity::Unmanaged => identity.id == reserved::UNMANAGED,
            // Ingress (Cilium's embedded gateway) has no local-mode counterpart.
            Entity::Ingress => false,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Peer {
    Endpoints(Selector),
    /// Matches only peers outside the cluster (world), as in Cilium: a
    /// managed endpoint is known by its identity, not by its address.
    Cidr {
        cidr: IpNet,
        except: Vec<IpNet>,
    },
    Entity(Entity),
    /// `toFQDNs`: world addresses the subject learned, through the DNS
    /// proxy, for a name the selector matches (and only while the answer's
    /// TTL lasts).
    Fqdn(FqdnPeer),
}

#[derive(Clone, Debug, Serialize)]
pub struct FqdnPeer {
    #[serde(flatten)]
    pub selector: FqdnSelector,
    #[serde(skip)]
    pub matchers: Vec<NameMatcher>,
}

impl FqdnPeer {
    pub fn matches_name(&self, name: &str) -> bool {
        self.matchers.iter().any(|m| m.matches(name))
    }
}

impl Peer {
    pub(super) fn matches(&self, peer: &PeerInfo<'_>) -> bool {
        match self {
            Peer::Fqdn(fqdn) => {
                peer.identity.id == reserved::WORLD && peer.learned_names.iter().any(|n| fqdn.matches_name(n))
            }
            Peer::Endpoints(selector) => selector.selects(peer.identity),
            Peer::Cidr { cidr, except } => {
                // as the datapath's ipcache decides: a NAT64 address is the
                // IPv4 address it embeds, whatever IPv6 prefixes name
                let address = crate::identity::nat64_embedded(peer.address).unwrap_or(peer.address);
                peer.identity.id == reserved::WORLD
                    && cidr.contains(&address)
                    && !except.iter().any(|e| e.contains(&address))
            }
            Peer::Entity(entity) => entity.selects(peer.identity),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
    pub protocol: L4Protocol,
}

impl PortRange {
    pub(super) fn matches(&self, port: u16, protocol: L4Protocol) -> bool {
        // ANY means TCP, UDP and SCTP ports: of ICMP's types (ports here) it
        // covers all with port 0, as it covers protocols without ports, and
        // none by number
        if self.protocol == L4Protocol::Any && matches!(protocol, L4Protocol::Icmp | L4Protocol::Icmp6) {
            return self.start == 0;
        }
        self.protocol.covers(protocol) && (self.start == 0 || (self.start..=self.end).contains(&port))
    }
}

/// A custom filter named by a `wasm` rule.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct WasmRef {
    pub name: String,
    pub config: String,
    /// Where it was written, for errors found when the filter configures.
    pub path: String,
}

/// A port's L7 rules: the rules of exactly one protocol, and the custom
/// filters that run after them.
#[derive(Clone, Debug)]
pub struct L7Rules {
    pub rules: ProtocolRules,
    pub wasm: Vec<WasmRef>,
}

/// The rules of one protocol, as written.
#[derive(Clone, Debug)]
pub enum ProtocolRules {
    /// `rules.http`; `None` when the port has only `wasm` rules (every
    /// request allowed, still seen by the proxy).
    Http(Option<Vec<HttpRule>>),
    /// `rules.dns`: the names that may be looked up.
    Dns(Vec<FqdnSelector>),
    /// `rules.kafka`: the requests that may be sent.
    Kafka(Vec<KafkaRule>),
    /// `l7proto` (as written: for `Stream` the stream filter's name) with its
    /// generic `l7` rules, for memcached, Cassandra or a stream filter.
    Generic { protocol: Protocol, l7proto: String, l7: Option<Vec<BTreeMap<String, String>>> },
}

impl L7Rules {
    /// The protocol the rules are written for.
    pub fn kind(&self) -> Protocol {
        match &self.rules {
            ProtocolRules::Http(_) => Protocol::Http,
            ProtocolRules::Dns(_) => Protocol::Dns,
            ProtocolRules::Kafka(_) => Protocol::Kafka,
            ProtocolRules::Generic { protocol, .. } => *protocol,
        }
    }

    pub fn http(&self) -> Option<&[HttpRule]> {
        match &self.rules {
            ProtocolRules::Http(rules) => rules.as_deref(),
            _ => None,
        }
    }

    pub fn dns(&self) -> Option<&[FqdnSelector]> {
        match &self.rules {
            ProtocolRules::Dns(rules) => Some(rules),
            _ => None,
        }
    }

    pub fn kafka(&self) -> Option<&[KafkaRule]> {
        match &self.rules {
            ProtocolRules::Kafka(rules) => Some(rules),
            _ => None,
        }
    }

    /// `l7proto`, as written.
    pub fn l7proto(&self) -> Option<&str> {
        match &self.rules {
            ProtocolRules::Generic { l7proto, .. } => Some(l7proto),
            _ => None,
        }
    }

    /// The generic `l7` rules.
    pub fn generic(&self) -> Option<&[BTreeMap<String, String>]> {
        match &self.rules {
            ProtocolRules::Generic { l7, .. } => l7.as_deref(),
            _ => None,
        }
    }
}

/// `/config` shows L7 rules as the fields they were written in.
impl Serialize for L7Rules {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Written<'a> {
            kind: Protocol,
            #[serde(skip_serializing_if = "Option::is_none")]
            http: Option<&'a [HttpRule]>,
            #[serde(skip_serializing_if = "Option::is_none")]
            dns: Option<&'a [FqdnSelector]>,
            #[serde(skip_serializing_if = "Option::is_none")]
            kafka: Option<&'a [KafkaRule]>,
            #[serde(skip_serializing_if = "Option::is_none")]
            l7proto: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            l7: Option<&'a [BTreeMap<String, String>]>,
            #[serde(skip_serializing_if = "<[WasmRef]>::is_empty")]
            wasm: &'a [WasmRef],
        }
        Written {
            kind: self.kind(),
            http: self.http(),
            dns: self.dns(),
            kafka: self.kafka(),
            l7proto: self.l7proto(),
            l7: self.generic(),
            wasm: &self.wasm,
        }
        .serialize(serializer)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct PortRuleSet {
    pub path: String,
    /// Empty: every port.
    pub ports: Vec<PortRange>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l7: Option<L7Rules>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PeerRule {
    pub path: String,
    /// `None`: every peer.
    pub peers: Option<Vec<Peer>>,
    /// `None`: every port, no L7 rules.
    pub to_ports: Option<Vec<PortRuleSet>>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PolicyRule {
    pub policy: String,
    pub file: String,
    pub path: String,
    pub subject: Selector,
    pub ingress: Option<Vec<PeerRule>>,
    pub ingress_deny: Option<Vec<PeerRule>>,
    pub egress: Option<Vec<PeerRule>>,
    pub egress_deny: Option<Vec<PeerRule>>,
    pub default_deny_ingress: bool,
    pub default_deny_egress: bool,
    /// Evaluated and reported, never applied (`enforcementMode: audit`).
    pub audit: bool,
}

/// The port rule sets of allow sections, `[ingress, egress]` (deny sections
/// have no L7 rules).
pub(super) fn allowed_port_rule_sets(sections: [&Option<Vec<PeerRule>>; 2]) -> impl Iterator<Item = &PortRuleSet> {
    sections.into_iter().flatten().flatten().flat_map(|pr| pr.to_ports.iter().flatten())
}

impl PolicyRule {
    /// The port rule sets of its allow sections: where its L7 rules are.
    pub fn allowed_port_rule_sets(&self) -> impl Iterator<Item = &PortRuleSet> {
        allowed_port_rule_sets([&self.ingress, &self.egress])
    }

    /// Whether the rule speaks about `direction` (has a section for it).
    pub fn concerns(&self, direction: Direction) -> bool {
        let (allow, deny, _) = self.sections(direction);
        allow.is_some() || deny.is_some()
    }

    pub(super) fn sections(&self, direction: Direction) -> (Option<&Vec<PeerRule>>, Option<&Vec<PeerRule>>, bool) {
        match direction {
            Direction::Ingress => (self.ingress.as_ref(), self.ingress_deny.as_ref(), self.default_deny_ingress),
            Direction::Egress => (self.egress.as_ref(), self.egress_deny.as_ref(), self.default_deny_egress),
        }
    }
}

/// The peer of the side being evaluated: the source for ingress, the
/// destination for egress.
#[derive(Clone, Copy, Debug)]
pub struct PeerInfo<'a> {
    pub identity: &'a Identity,
    /// One address (a /32 or /128), or for the datapath a whole prefix of
    /// world addresses that share a verdict.
    pub address: IpNet,
    /// Names (normalized) the subject learned this address for through the
    /// DNS proxy and whose TTL has not run out; what `toFQDNs` matches.
    pub learned_names: &'a [Arc<str>],
}

impl<'a> PeerInfo<'a> {
    pub fn new(identity: &'a Identity, address: IpNet) -> Self {
        PeerInfo { identity, address, learned_names: &[] }
    }
}

/// One reason a connection is allowed, with the L7 rules that then apply.
#[derive(Clone, Debug)]
pub struct Allowance<'a> {
    /// `default/allow-get spec.ingress[0].toPorts[0]`
    pub origin: String,
    pub policy: &'a str,
    /// `None`: everything at L7.
    pub l7: Option<&'a L7Rules>,
}

#[derive(Clone, Debug)]
pub enum SideVerdict<'a> {
    /// No rule enforces this direction for the endpoint.
    Unenforced,
    Allowed(Vec<Allowance<'a>>),
    Denied {
        reason: String,
    },
}

#[derive(Clone, Debug, Default)]
pub struct PolicySet {
    pub rules: Vec<PolicyRule>,
}

impl PolicySet {
    /// The rules that are applied: all but the audited ones.
    pub fn enforced(&self) -> PolicySet {
        PolicySet { rules: self.rules.iter().filter(|r| !r.audit).cloned().collect() }
    }

    /// Whether some rule is audited.
    pub fn audits(&self) -> bool {
        self.rules.iter().any(|r| r.audit)
    }

    /// The audited policies selecting `source` (for egress) or
    /// `destination` (for ingress), each once, in the order loaded.
    pub fn audited_selecting(&self, source: &Identity, destination: &Identity) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for rule in self.rules.iter().filter(|r| r.audit) {
            let selects = (rule.subject.selects(source) && rule.concerns(Direction::Egress))
                || (rule.subject.selects(destination) && rule.concerns(Direction::Ingress));
            if selects && !names.contains(&rule.policy) {
                names.push(rule.policy.clone());
            }
        }
        names
    }
}
