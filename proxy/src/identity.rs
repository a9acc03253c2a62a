//! Security identities: numbers that name label sets, and the endpoints that
//! carry them.
//!
//! In Kubernetes every node must agree on the number for a label set; in local
//! mode the numbers come from the endpoints in `weir.yaml` (explicit, or
//! derived from the labels so that they stay stable across restarts).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Serialize, Serializer};

/// Identities every cluster reserves (Cilium's numbering).
pub mod reserved {
    pub const HOST: u32 = 1;
    pub const WORLD: u32 = 2;
    pub const UNMANAGED: u32 = 3;
    pub const HEALTH: u32 = 4;
    pub const INIT: u32 = 5;
    pub const REMOTE_NODE: u32 = 6;
    pub const KUBE_APISERVER: u32 = 7;

    /// `(id, reserved label)`
    pub const ALL: &[(u32, &str)] = &[
        (HOST, "host"),
        (WORLD, "world"),
        (UNMANAGED, "unmanaged"),
        (HEALTH, "health"),
        (INIT, "init"),
        (REMOTE_NODE, "remote-node"),
        (KUBE_APISERVER, "kube-apiserver"),
    ];
}

/// First identity number for endpoints; below are reserved.
pub const FIRST_ENDPOINT_IDENTITY: u32 = 256;
/// Cluster-local identities fit in 16 bits (the mark carries 24).
pub const LAST_ENDPOINT_IDENTITY: u32 = 65535;

pub const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";

/// A label as Cilium writes it: `source:key=value`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Label {
    pub source: String,
    pub key: String,
    pub value: String,
}

impl Label {
    pub fn new(source: &str, key: &str, value: &str) -> Self {
        Label { source: source.into(), key: key.into(), value: value.into() }
    }

    pub fn k8s(key: &str, value: &str) -> Self {
        Label::new("k8s", key, value)
    }

    pub fn reserved(name: &str) -> Self {
        Label::new("reserved", name, "")
    }

    /// A `matchLabels`-style pair from config: `app: web` is `k8s:app=web`,
    /// `reserved:host: ""` keeps its source.
    pub fn parse_pair(key: &str, value: &str) -> Self {
        match key.split_once(':') {
            Some((source, k)) if !source.contains(['.', '/']) => Label::new(source, k, value),
            _ => Label::k8s(key, value),
        }
    }

    /// Parse `source:key=value`, `key=value` (source `k8s`) or `source:key`.
    pub fn parse(text: &str) -> Self {
        let (source, rest) = match text.split_once(':') {
            Some((s, r)) if !s.contains('=') => (s, r),
            _ => ("k8s", text),
        };
        let (key, value) = rest.split_once('=').unwrap_or((rest, ""));
        Label::new(source, key, value)
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.value.is_empty() {
            write!(f, "{}:{}", self.source, self.key)
        } else {
            write!(f, "{}:{}={}", self.source, self.key, self.value)
        }
    }
}

impl Serialize for Label {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A sorted, de-duplicated set of labels.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Labels(Vec<Label>);

impl Labels {
    pub fn new(mut labels: Vec<Label>) -> Self {
        labels.sort();
        labels.dedup();
        Labels(labels)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Label> {
        self.0.iter()
    }

    /// Value of `key` with the given source, or from any source when `source`
    /// is `None` or `"any"`.
    pub fn get(&self, source: Option<&str>, key: &str) -> Option<&str> {
        let any = matches!(source, None | Some("any"));
        self.0.iter().find(|l| l.key == key && (any || Some(l.source.as_str()) == source)).map(|l| l.value.as_str())
    }

    /// An endpoint's labels: `labels` as `weir.yaml` writes them (`app: web`
    /// is `k8s:app=web`, `reserved:host: ""` keeps its source) plus its
    /// namespace. The model and the Kubernetes source both use this, so an
    /// identity allocated for a pod names exactly the set the model builds.
    pub fn of_endpoint(namespace: &str, labels: &BTreeMap<String, String>) -> Self {
        let mut all: Vec<Label> = labels.iter().map(|(k, v)| Label::parse_pair(k, v)).collect();
        all.push(Label::k8s(NAMESPACE_LABEL, namespace));
        Labels::new(all)
    }

    pub fn namespace(&self) -> Option<&str> {
        self.get(Some("k8s"), NAMESPACE_LABEL)
    }

    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(Label::to_string).collect()
    }
}

impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, l) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{l}")?;
        }
        Ok(())
    }
}

/// A numeric security identity and the labels it names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Identity {
    pub id: u32,
    pub labels: Labels,
    /// The labels as `source:key=value` strings, made once: every flow
    /// record and filter call hands them out.
    #[serde(skip)]
    strings: Arc<[String]>,
}

impl Identity {
    pub fn new(id: u32, labels: Labels) -> Self {
        let strings = labels.to_strings().into();
        Identity { id, labels, strings }
    }

    pub fn reserved(id: u32) -> Self {
        let name = reserved::ALL.iter().find(|(i, _)| *i == id).map(|(_, n)| *n).unwrap_or("unknown");
        Identity::new(id, Labels::new(vec![Label::reserved(name)]))
    }

    pub fn label_strings(&self) -> &Arc<[String]> {
        &self.strings
    }

    pub fn is_reserved(&self, id: u32) -> bool {
        self.id == id
    }

    /// Short form for logs: `42(app=web,ns=default)`.
    pub fn brief(&self) -> String {
        let parts: Vec<String> = self
            .labels
            .iter()
            .map(|l| match (l.source.as_str(), l.key.as_str()) {
                ("k8s", NAMESPACE_LABEL) => format!("ns={}", l.value),
                ("reserved", k) => k.to_string(),
                _ if l.value.is_empty() => l.key.clone(),
                _ => format!("{}={}", l.key, l.value),
            })
            .collect();
        format!("{}({})", self.id, parts.join(","))
    }
}

/// A workload weir enforces policy for: a pod in Kubernetes, an address on
/// loopback in local mode, or the service behind a local listener.
#[derive(Clone, Debug, Serialize)]
pub struct Endpoint {
    /// Shared with every flow that names it.
    pub name: Arc<str>,
    pub namespace: Arc<str>,
    pub addresses: Vec<IpAddr>,
    pub identity: Arc<Identity>,
}

impl Endpoint {
    /// `namespace/name`: how the FQDN cache and `weir fqdn cache` name it.
    pub fn qualified_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Errors in the identity assignment of a configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("identity {id} is reserved (1-255 are Cilium's); use {FIRST_ENDPOINT_IDENTITY}-{LAST_ENDPOINT_IDENTITY}")]
    Reserved { id: u32 },
    #[error("identity {id} is out of range; use {FIRST_ENDPOINT_IDENTITY}-{LAST_ENDPOINT_IDENTITY}")]
    OutOfRange { id: u32 },
    #[error("identity {id} is given to two different label sets: [{first}] and [{second}]")]
    Conflict { id: u32, first: String, second: String },
    #[error("labels [{labels}] are given two identities: {first} and {second}")]
    TwoIdentities { labels: String, first: u32, second: u32 },
}

/// Assigns identity numbers to label sets: explicit ones first, then a
/// number derived from a hash of the labels (stable across restarts and
/// independent of file order), probing upward on collision.
#[derive(Default)]
pub struct IdentityAllocator {
    by_labels: BTreeMap<Labels, u32>,
    by_id: HashMap<u32, Labels>,
    requested: Vec<(Labels, Option<u32>)>,
}

impl IdentityAllocator {
    pub fn request(&mut self, labels: Labels, explicit: Option<u32>) {
        self.requested.push((labels, explicit));
    }

    pub fn allocate(mut self) -> Result<HashMap<Labels, Arc<Identity>>, IdentityError> {
        let requested = std::mem::take(&mut self.requested);
        for (labels, id) in requested.iter().filter_map(|(l, id)| id.map(|id| (l, id))) {
            if id < FIRST_ENDPOINT_IDENTITY {
                return Err(IdentityError::Reserved { id });
            }
            if id > LAST_ENDPOINT_IDENTITY {
                return Err(IdentityError::OutOfRange { id });
            }
            self.assign(labels, id)?;
        }
        let mut implicit: Vec<&Labels> = requested
            .iter()
            .filter(|(l, id)| id.is_none() && !self.by_labels.contains_key(l))
            .map(|(l, _)| l)
            .collect();
        implicit.sort();
        implicit.dedup();
        let span = LAST_ENDPOINT_IDENTITY - FIRST_ENDPOINT_IDENTITY + 1;
        for labels in implicit {
            let mut id = FIRST_ENDPOINT_IDENTITY + (fnv1a(labels.to_string().as_bytes()) % span as u64) as u32;
            while self.by_id.contains_key(&id) {
                id = if id == LAST_ENDPOINT_IDENTITY { FIRST_ENDPOINT_IDENTITY } else { id + 1 };
            }
            self.assign(labels, id)?;
        }
        Ok(self
            .by_labels
            .into_iter()
            .map(|(labels, id)| (labels.clone(), Arc::new(Identity::new(id, labels))))
            .collect())
    }

    fn assign(&mut self, labels: &Labels, id: u32) -> Result<(), IdentityError> {
        if let Some(existing) = self.by_labels.get(labels) {
            if *existing != id {
                return Err(IdentityError::TwoIdentities { labels: labels.to_string(), first: *existing, second: id });
            }
            return Ok(());
        }
        if let Some(other) = self.by_id.get(&id) {
            return Err(IdentityError::Conflict { id, first: other.to_string(), second: labels.to_string() });
        }
        self.by_labels.insert(labels.clone(), id);
        self.by_id.insert(id, labels.clone());
        Ok(())
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x100000001b3))
}

/// Address -> endpoint, with `reserved:world` for addresses nobody claims.
#[derive(Clone)]
pub struct IdentityCache {
    by_address: HashMap<IpAddr, Arc<Endpoint>>,
    by_id: HashMap<u32, Arc<Identity>>,
    world: Arc<Identity>,
}

impl IdentityCache {
    pub fn new(endpoints: &[Arc<Endpoint>]) -> Self {
        let mut by_address = HashMap::new();
        let mut by_id: HashMap<u32, Arc<Identity>> =
            reserved::ALL.iter().map(|(id, _)| (*id, Arc::new(Identity::reserved(*id)))).collect();
        for ep in endpoints {
            for addr in &ep.addresses {
                by_address.insert(*addr, ep.clone());
            }
            by_id.insert(ep.identity.id, ep.identity.clone());
        }
        let world = by_id[&reserved::WORLD].clone();
        IdentityCache { by_address, by_id, world }
    }

    /// The identity with this number (a datapath mark or event names it).
    pub fn by_id(&self, id: u32) -> Option<&Arc<Identity>> {
        self.by_id.get(&id)
    }

    pub fn endpoint(&self, addr: IpAddr) -> Option<&Arc<Endpoint>> {
        self.by_address.get(&canonical(addr))
    }

    /// The identity of a peer address: its endpoint's, or world.
    pub fn identity_of(&self, addr: IpAddr) -> Arc<Identity> {
        self.endpoint(addr).map(|ep| ep.identity.clone()).unwrap_or_else(|| self.world.clone())
    }

    pub fn world(&self) -> &Arc<Identity> {
        &self.world
    }
}

/// The node's NAT64 prefixes (`datapath.nat64_prefixes`, RFC 6052's
/// well-known `64:ff9b::/96` unless configured). Process-wide: they describe
/// the node's network, as its address does, and are set once, at start
/// ([`set_nat64_prefixes`]), so the proxy's CIDR matching and the
/// datapath's ipcache agree for the process's whole life.
static NAT64_PREFIXES: std::sync::OnceLock<Vec<ipnet::Ipv6Net>> = std::sync::OnceLock::new();

/// At start, from `datapath.nat64_prefixes` (checked in `config.rs`),
/// before any model is built. A second call changes nothing.
pub fn set_nat64_prefixes(prefixes: &[ipnet::Ipv6Net]) {
    if NAT64_PREFIXES.set(prefixes.to_vec()).is_err() && nat64_prefixes() != prefixes {
        tracing::warn!(kept = ?nat64_prefixes(), ignored = ?prefixes, "NAT64 prefixes are set once, at start");
    }
}

pub fn nat64_prefixes() -> &'static [ipnet::Ipv6Net] {
    NAT64_PREFIXES.get_or_init(|| vec![weir_datapath_common::NAT64_PREFIX.parse().expect("a prefix")])
}

/// The IPv4 addresses a network inside one of the node's NAT64 prefixes
/// embeds: where a NAT64 gateway takes connections to it (an address is a
/// /128, and embeds a /32).
pub fn nat64_embedded(net: ipnet::IpNet) -> Option<ipnet::IpNet> {
    embedded_in(nat64_prefixes(), net)
}

fn embedded_in(prefixes: &[ipnet::Ipv6Net], net: ipnet::IpNet) -> Option<ipnet::IpNet> {
    let ipnet::IpNet::V6(v6) = net else { return None };
    let prefix = prefixes.iter().find(|p| p.prefix_len() <= v6.prefix_len() && p.contains(&v6.network()))?;
    let prefix_len = u32::from(prefix.prefix_len());
    let embedded = |address: std::net::Ipv6Addr| {
        u32::from_be_bytes(weir_datapath_common::nat64_embedded_ipv4(&address.octets(), prefix_len))
    };
    // the IPv4 bits the network fixes: its netmask read the same way
    let fixed = embedded(v6.netmask()).leading_ones() as u8;
    Some(ipnet::IpNet::V4(ipnet::Ipv4Net::new(embedded(v6.network()).into(), fixed).ok()?.trunc()))
}

/// IPv4-mapped IPv6 addresses (dual-stack sockets) compare as IPv4.
pub fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(addr),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        Labels::new(pairs.iter().map(|(k, v)| Label::k8s(k, v)).collect())
    }

    #[test]
    fn nat64_networks_embed_the_ipv4_networks_they_reach() {
        let embedded = |net: &str| nat64_embedded(net.parse().unwrap()).map(|n| n.to_string());
        assert_eq!(embedded("64:ff9b::a63:1/128").as_deref(), Some("10.99.0.1/32"));
        assert_eq!(embedded("64:ff9b::a63:0/112").as_deref(), Some("10.99.0.0/16"));
        assert_eq!(embedded("64:ff9b::/96").as_deref(), Some("0.0.0.0/0"));
        // broader than the prefix, or outside it: no IPv4 address
        assert_eq!(embedded("64:ff9b::/64"), None);
        assert_eq!(embedded("2001:db8::a63:1/128"), None);
        assert_eq!(embedded("10.99.0.1/32"), None);
        // a network-specific prefix (RFC 8215's local-use range) when the
        // node names it, and then the well-known one is not judged so
        let specific: Vec<ipnet::Ipv6Net> = vec!["64:ff9b:1:a::/96".parse().unwrap()];
        let embedded_specific = |net: &str| embedded_in(&specific, net.parse().unwrap()).map(|n| n.to_string());
        assert_eq!(embedded_specific("64:ff9b:1:a::a63:1/128").as_deref(), Some("10.99.0.1/32"));
        assert_eq!(embedded_specific("64:ff9b:1:b::a63:1/128"), None);
        assert_eq!(embedded_specific("64:ff9b::a63:1/128"), None);

        // RFC 6052 §2.4's examples: 192.0.2.33 in each prefix length
        for (prefix, address) in [
            ("2001:db8::/32", "2001:db8:c000:221::"),
            ("2001:db8:100::/40", "2001:db8:1c0:2:21::"),
            ("2001:db8:122::/48", "2001:db8:122:c000:2:2100::"),
            ("2001:db8:122:300::/56", "2001:db8:122:3c0:0:221::"),
            ("2001:db8:122:344::/64", "2001:db8:122:344:c0:2:2100:0"),
            ("2001:db8:122:344::/96", "2001:db8:122:344::192.0.2.33"),
        ] {
            let prefixes: Vec<ipnet::Ipv6Net> = vec![prefix.parse().unwrap()];
            let embedded = embedded_in(&prefixes, format!("{address}/128").parse().unwrap());
            assert_eq!(embedded.map(|n| n.to_string()).as_deref(), Some("192.0.2.33/32"), "{prefix}");
            assert_eq!(embedded_in(&prefixes, prefix.parse().unwrap()).unwrap().to_string(), "0.0.0.0/0");
        }
        // a network in a /48 fixes the IPv4 bits it covers, past the u octet:
        // /64 covers 16 (192.0), /80 the next 8 (192.0.2)
        let p48: Vec<ipnet::Ipv6Net> = vec!["2001:db8:122::/48".parse().unwrap()];
        let embedded_48 = |net: &str| embedded_in(&p48, net.parse().unwrap()).map(|n| n.to_string());
        assert_eq!(embedded_48("2001:db8:122:c000::/64").as_deref(), Some("192.0.0.0/16"));
        assert_eq!(embedded_48("2001:db8:122:c000::/72").as_deref(), Some("192.0.0.0/16"));
        assert_eq!(embedded_48("2001:db8:122:c000:2::/80").as_deref(), Some("192.0.2.0/24"));
        assert_eq!(embedded_48("2001:db8:122:c000:2:2100::/88").as_deref(), Some("192.0.2.33/32"));
        assert_eq!(embedded_48("2001:db8::/40"), None, "broader than the prefix");
    }

    #[test]
    fn label_parsing_and_display_round_trip() {
        assert_eq!(Label::parse("k8s:app=web"), Label::k8s("app", "web"));
        assert_eq!(Label::parse("app=web"), Label::k8s("app", "web"));
        assert_eq!(Label::parse("reserved:world"), Label::reserved("world"));
        assert_eq!(Label::parse("k8s:a=b=c").value, "b=c");
        assert_eq!(Label::k8s("app", "web").to_string(), "k8s:app=web");
        assert_eq!(Label::reserved("host").to_string(), "reserved:host");
    }

    #[test]
    fn implicit_identities_are_stable_and_independent_of_order() {
        let (a, b) = (labels(&[("app", "a")]), labels(&[("app", "b")]));
        let mut first = IdentityAllocator::default();
        first.request(a.clone(), None);
        first.request(b.clone(), None);
        let mut second = IdentityAllocator::default();
        second.request(b.clone(), None);
        second.request(a.clone(), None);
        let (first, second) = (first.allocate().unwrap(), second.allocate().unwrap());
        assert_eq!(first[&a].id, second[&a].id);
        assert_eq!(first[&b].id, second[&b].id);
        assert_ne!(first[&a].id, first[&b].id);
        assert!((FIRST_ENDPOINT_IDENTITY..=LAST_ENDPOINT_IDENTITY).contains(&first[&a].id));
    }

    #[test]
    fn explicit_identities_win_and_conflicts_are_reported() {
        let (a, b) = (labels(&[("app", "a")]), labels(&[("app", "b")]));
        let mut alloc = IdentityAllocator::default();
        alloc.request(a.clone(), Some(1000));
        alloc.request(b.clone(), None);
        let ids = alloc.allocate().unwrap();
        assert_eq!(ids[&a].id, 1000);

        let mut clash = IdentityAllocator::default();
        clash.request(a.clone(), Some(1000));
        clash.request(b.clone(), Some(1000));
        assert!(matches!(clash.allocate(), Err(IdentityError::Conflict { id: 1000, .. })));

        let mut reserved = IdentityAllocator::default();
        reserved.request(a, Some(2));
        assert!(matches!(reserved.allocate(), Err(IdentityError::Reserved { id: 2 })));
    }

    #[test]
    fn unknown_addresses_are_world() {
        let ep = Arc::new(Endpoint {
            name: "client".into(),
            namespace: "default".into(),
            addresses: vec!["127.0.0.2".parse().unwrap()],
            identity: Arc::new(Identity::new(300, labels(&[("app", "client")]))),
        });
        let cache = IdentityCache::new(&[ep]);
        assert_eq!(cache.identity_of("127.0.0.2".parse().unwrap()).id, 300);
        assert_eq!(cache.identity_of("::ffff:127.0.0.2".parse().unwrap()).id, 300);
        assert_eq!(cache.identity_of("127.0.0.9".parse().unwrap()).id, reserved::WORLD);
    }
}
