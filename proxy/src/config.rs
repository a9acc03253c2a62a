//! `weir.yaml`: listeners, endpoints, filters and the admin address.
//!
//! Plain serde types with `deny_unknown_fields`, so a typo is an error that
//! names the field, never a setting silently ignored.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir_datapath_common::mark::Marks;

use crate::protocol::Protocol;
use crate::units::{bytes, duration};
use crate::wasm::{FailurePolicy, FilterLimits};

pub const CONFIG_FILE: &str = "weir.yaml";
pub const POLICY_DIR: &str = "policies";

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct WeirConfig {
    /// Admin API: /metrics, /healthz, /config, /flows. `null` turns it off.
    #[serde(default = "default_admin")]
    pub admin: Option<SocketAddr>,
    /// /metrics and /healthz only, for Prometheus and the kubelet's probes
    /// on a node's address (the admin API shows policies and traffic: keep
    /// it on loopback). Default: off.
    #[serde(default)]
    pub metrics: Option<SocketAddr>,
    /// Start weir's built-in demo backend on this address (read at start only).
    #[serde(default)]
    pub demo_backend: Option<SocketAddr>,
    /// Proxy worker threads; default: one per CPU.
    #[serde(default)]
    pub workers: Option<usize>,
    /// How often the config directory is checked for changes (SIGHUP forces one).
    #[serde(default = "default_reload_interval", with = "duration")]
    pub reload_interval: Duration,
    /// How long a stopping weir, or one that handed the node to a new one,
    /// lets open connections finish before closing them (docs/deploy.md).
    #[serde(default = "default_drain_timeout", with = "duration")]
    pub drain_timeout: Duration,
    /// Where compiled filters are cached between runs. Default:
    /// `$XDG_CACHE_HOME/weir` or `~/.cache/weir`; `""` turns the cache off.
    #[serde(default)]
    pub filter_cache: Option<PathBuf>,
    /// Print every flow record to the log (as `weir observe` would show it).
    #[serde(default = "yes")]
    pub log_flows: bool,
    /// Flow records kept for `/flows` and `weir observe --last`.
    #[serde(default = "default_flow_history")]
    pub flow_history: usize,
    #[serde(default)]
    pub endpoints: Vec<EndpointConfig>,
    #[serde(default)]
    pub listeners: Vec<ListenerConfig>,
    #[serde(default)]
    pub filters: Vec<FilterConfig>,
    /// The eBPF datapath (`weir run --datapath ebpf`).
    #[serde(default)]
    pub datapath: DatapathConfig,
    /// The DNS proxy and what it learns for `toFQDNs`.
    #[serde(default)]
    pub dns: DnsConfig,
    /// Connection, timeout and buffer limits (docs/limits.md).
    #[serde(default)]
    pub limits: crate::limits::LimitsConfig,
}

/// The answer to a query policy refuses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DnsRefusal {
    /// REFUSED (5), as Cilium answers.
    #[default]
    Refused,
    /// NXDOMAIN (3): musl's resolver stops walking its search list at
    /// REFUSED; NXDOMAIN lets it go on to the next suffix.
    Nxdomain,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    pub refusal: DnsRefusal,
    /// A resolver that has not answered by then: SERVFAIL to the client.
    #[serde(with = "duration")]
    pub upstream_timeout: Duration,
    /// Learned addresses are kept at least this long, whatever the TTL said.
    #[serde(with = "duration")]
    pub min_ttl: Duration,
    /// Most addresses kept per name and endpoint (the latest-expiring win).
    pub max_ips_per_name: usize,
    /// Where learned addresses are kept across restarts; `""` keeps them in
    /// memory only. Default: `$WEIR_STATE_DIR/fqdn-cache.json`, else
    /// `/var/lib/weir` for root and `~/.local/state/weir` for others.
    pub cache_file: Option<PathBuf>,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            refusal: DnsRefusal::Refused,
            upstream_timeout: Duration::from_secs(2),
            min_ttl: Duration::ZERO,
            max_ips_per_name: 1000,
            cache_file: None,
        }
    }
}

impl DnsConfig {
    pub fn cache_file(&self) -> Option<PathBuf> {
        match &self.cache_file {
            Some(p) if p.as_os_str().is_empty() => None,
            Some(p) => Some(p.clone()),
            None => default_state_dir().map(|d| d.join("fqdn-cache.json")),
        }
    }
}

pub fn default_state_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("WEIR_STATE_DIR") {
        return (!dir.is_empty()).then(|| PathBuf::from(dir));
    }
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } == 0 {
        return Some(PathBuf::from("/var/lib/weir"));
    }
    std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/state")))
        .map(|base| base.join("weir"))
}

/// How the eBPF datapath hooks into the node. Read at start only.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatapathConfig {
    /// The transparent listener the programs hand HTTP traffic to (ports
    /// whose rules are `http` rules). It is bound on loopback; packets reach
    /// it by `bpf_sk_assign`, not by address.
    pub proxy_port: u16,
    /// The DNS proxy's transparent TCP listener and UDP socket (for ports
    /// whose rules are `dns` rules), bound on loopback like `proxy_port`.
    pub dns_proxy_port: u16,
    /// The transparent listeners of the other L7 engines, one per protocol,
    /// for ports whose rules are `kafka`, `memcached`, `cassandra` or
    /// `l7proto` rules: the programs pick the engine by the port they assign
    /// a connection to, so no engine has to guess the protocol from bytes.
    pub kafka_proxy_port: u16,
    pub memcached_proxy_port: u16,
    pub cassandra_proxy_port: u16,
    pub stream_proxy_port: u16,
    /// The node's own network devices (its uplinks to other nodes): weir
    /// attaches a TC ingress program to each so that connections from other
    /// nodes to a local pod's L7 ports reach the proxy. Without them, an L7
    /// ingress rule fails closed for off-node senders. A device that does not
    /// exist (yet) is attached when a later policy update finds it.
    pub devices: Vec<String>,
    /// Where maps and program links are pinned (bpffs).
    pub bpffs: PathBuf,
    /// Routing table with `local 0.0.0.0/0 dev lo` for TO_PROXY packets.
    pub route_table: u32,
    /// Priority of the first of the two `ip rule`s weir installs.
    pub rule_priority: u32,
    /// Conntrack lifetimes and the per-endpoint entry limit.
    pub conntrack: ConntrackConfig,
    /// Splice what the HTTP proxy writes to a local pod straight into the
    /// pod's socket (sockmap; docs/datapath.md). Off by default: this
    /// kernel's sockmap has no back-pressure on that path, so a pod that
    /// does not read makes the node hold whatever the proxy writes to it.
    pub splice: bool,
    /// The cgroup (v2) whose sockets `weir_sockops` watches for splicing:
    /// the node's root, so every pod is in it (default: where cgroup2 is
    /// mounted).
    pub cgroup: Option<PathBuf>,
    /// How allowed packets between two pods of this node travel: `bpf`
    /// hands them from the sender's veth straight into the receiver
    /// (`bpf_redirect_peer`), past the node's routing and netfilter; `kernel`
    /// leaves them to the node's routing, so the node's own firewall rules
    /// (iptables `FORWARD`) see them. Either way weir's policy is the same.
    pub host_routing: HostRouting,
    /// The prefixes a NAT64 gateway serves, each of RFC 6052's lengths (/32,
    /// /40, /48, /56, /64 or /96; the 32 bits after the prefix, past bits 64
    /// to 71, are an IPv4 address): an address in one is judged as the IPv4
    /// address it embeds (IPv4 rules and their excepts apply, IPv6 rules do
    /// not), in the kernel and in the proxy. RFC 6052's well-known
    /// `64:ff9b::/96` by default; a gateway that translates to private IPv4
    /// addresses must use a network-specific prefix (RFC 6052 §3.1), e.g.
    /// from `64:ff9b:1::/48` (RFC 8215). Name every prefix the node's NAT64
    /// serves: an address in one not named is judged by IPv6 rules. `[]`: no
    /// NAT64.
    pub nat64_prefixes: Vec<ipnet::Ipv6Net>,
    /// Where weir's meaning sits in the packet mark: a mask inside `0x3f00`
    /// and three different values inside it. `0x0f00` with `0x0200` (to the
    /// proxy), `0x0a00` (from the proxy) and `0x0f00` (judged, with the
    /// sender's identity) by default, Cilium's nibble and values; move them
    /// where a node's other plugins do not mark (docs/datapath.md, "Moving
    /// the marks"). Changing them needs a stop, not a hand-over.
    pub marks: MarksConfig,
}

/// `datapath.marks`, in numbers (YAML `0x3000` or `"0x3000"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MarksConfig {
    #[serde(deserialize_with = "mark_bits")]
    pub mask: u32,
    #[serde(deserialize_with = "mark_bits")]
    pub to_proxy: u32,
    #[serde(deserialize_with = "mark_bits")]
    pub from_proxy: u32,
    #[serde(deserialize_with = "mark_bits")]
    pub identity: u32,
}

impl Default for MarksConfig {
    fn default() -> Self {
        let Marks { mask, to_proxy, from_proxy, identity } = Marks::DEFAULT;
        MarksConfig { mask, to_proxy, from_proxy, identity }
    }
}

impl MarksConfig {
    pub fn marks(&self) -> Marks {
        let MarksConfig { mask, to_proxy, from_proxy, identity } = *self;
        Marks { mask, to_proxy, from_proxy, identity }
    }
}

/// A mark's bits as a YAML number or a string (`"0x3000"`, `"12288"`):
/// Helm values and templates quote numbers as often as not.
fn mark_bits<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    struct Bits;
    impl serde::de::Visitor<'_> for Bits {
        type Value = u32;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a 32-bit mark as a number or a string (0x3000, \"0x3000\", 12288)")
        }

        fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<u32, E> {
            u32::try_from(n).map_err(|_| E::custom(format!("{n:#x} is wider than a 32-bit mark")))
        }

        fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<u32, E> {
            u64::try_from(n).map_err(|_| E::custom(format!("{n} is negative"))).and_then(|n| self.visit_u64(n))
        }

        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<u32, E> {
            let text = text.trim();
            let (digits, radix) = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
                Some(hex) => (hex, 16),
                None => (text, 10),
            };
            // from_str_radix takes a sign, which no mark has
            let parsed = (!digits.starts_with(['+', '-'])).then(|| u32::from_str_radix(digits, radix).ok()).flatten();
            parsed.ok_or_else(|| E::custom(format!("{text:?} is not a 32-bit mark (0x3000 or 12288)")))
        }
    }
    deserializer.deserialize_any(Bits)
}

/// `datapath.host_routing` (docs/datapath.md, "Local delivery").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HostRouting {
    #[default]
    Bpf,
    Kernel,
}

impl Default for DatapathConfig {
    fn default() -> Self {
        DatapathConfig {
            proxy_port: 15001,
            dns_proxy_port: 15053,
            kafka_proxy_port: 15002,
            memcached_proxy_port: 15003,
            cassandra_proxy_port: 15004,
            stream_proxy_port: 15005,
            devices: Vec::new(),
            bpffs: PathBuf::from("/sys/fs/bpf/weir"),
            route_table: 2004,
            rule_priority: 9000,
            conntrack: Default::default(),
            splice: false,
            cgroup: None,
            host_routing: HostRouting::Bpf,
            nat64_prefixes: vec![weir_datapath_common::NAT64_PREFIX.parse().expect("a prefix")],
            marks: MarksConfig::default(),
        }
    }
}

impl DatapathConfig {
    /// The loopback port of the transparent socket(s) for `protocol`'s engine.
    pub fn proxy_port_of(&self, protocol: Protocol) -> u16 {
        match protocol {
            Protocol::Http => self.proxy_port,
            Protocol::Dns => self.dns_proxy_port,
            Protocol::Kafka => self.kafka_proxy_port,
            Protocol::Memcached => self.memcached_proxy_port,
            Protocol::Cassandra => self.cassandra_proxy_port,
            Protocol::Stream => self.stream_proxy_port,
        }
    }

    /// Each protocol's port, in `Protocol::ALL` order.
    pub fn proxy_ports(&self) -> impl Iterator<Item = (Protocol, u16)> + '_ {
        Protocol::ALL.into_iter().map(|p| (p, self.proxy_port_of(p)))
    }
}

fn default_admin() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 9901)))
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_reload_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_flow_history() -> usize {
    1000
}
fn yes() -> bool {
    true
}

/// A workload whose traffic policy applies to: in local mode, a client
/// address on loopback (for example 127.0.0.2) with the pod labels it stands for.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default)]
    pub address: Option<IpAddr>,
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Fix the identity number (256-65535); derived from the labels otherwise.
    #[serde(default)]
    pub identity: Option<u32>,
    /// The pod's host-side veth: with the eBPF datapath, weir attaches its
    /// programs there and polices the pod's traffic.
    #[serde(default)]
    pub interface: Option<String>,
    /// Ports whose traffic the eBPF datapath hands to the proxy to be parsed
    /// into L7 flows without a policy: `<Ingress/80/TCP/HTTP>,<Egress/53/UDP/DNS>`,
    /// Cilium's `policy.cilium.io/proxy-visibility` annotation (which a pod
    /// carries in Kubernetes). It selects the pod for nothing: no default deny.
    #[serde(default)]
    pub visibility: Option<String>,
}

impl EndpointConfig {
    pub fn all_addresses(&self) -> Vec<IpAddr> {
        self.address.iter().chain(self.addresses.iter()).copied().collect()
    }
}

/// The pod annotation that asks for visibility (Cilium's name).
pub const VISIBILITY_ANNOTATION: &str = "policy.cilium.io/proxy-visibility";

/// One `<Direction/port/transport/protocol>` of a visibility annotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Visibility {
    pub ingress: bool,
    pub port: u16,
    /// `TCP`, `UDP` or `ANY`
    pub transport: &'static str,
    /// The engine that parses it.
    pub protocol: Protocol,
}

impl Visibility {
    /// Parse a whole annotation; every entry must be good.
    pub fn parse_all(text: &str) -> Result<Vec<Visibility>, String> {
        let mut out = Vec::new();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let inner = entry
                .strip_prefix('<')
                .and_then(|e| e.strip_suffix('>'))
                .ok_or_else(|| format!("{entry:?}: expected <Direction/port/transport/protocol>"))?;
            let parts: Vec<&str> = inner.split('/').collect();
            let [direction, port, transport, protocol] = parts[..] else {
                return Err(format!("{entry:?}: expected four parts, <Ingress/80/TCP/HTTP>"));
            };
            let ingress = match direction.to_ascii_lowercase().as_str() {
                "ingress" => true,
                "egress" => false,
                _ => return Err(format!("{entry:?}: direction {direction:?} is neither Ingress nor Egress")),
            };
            let port: u16 = port
                .parse()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{entry:?}: port {port:?} is not a port number"))?;
            let transport = match transport.to_ascii_uppercase().as_str() {
                "TCP" => "TCP",
                "UDP" => "UDP",
                "ANY" => "ANY",
                _ => return Err(format!("{entry:?}: transport {transport:?} is not TCP, UDP or ANY")),
            };
            let protocol = Protocol::ALL
                .into_iter()
                .filter(|p| *p != Protocol::Stream)
                .find(|p| p.name().eq_ignore_ascii_case(protocol))
                .ok_or_else(|| {
                    format!("{entry:?}: protocol {protocol:?} is not one weir parses (HTTP, DNS, Kafka, memcached, Cassandra)")
                })?;
            // only DNS is read from UDP (the DNS proxy's transparent socket)
            if transport != "TCP" && protocol != Protocol::Dns {
                return Err(format!("{entry:?}: {} is parsed on TCP only", protocol.name()));
            }
            out.push(Visibility { ingress, port, transport, protocol });
        }
        Ok(out)
    }
}

pub fn default_namespace() -> String {
    "default".into()
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// Whatever the client spoke: HTTP/2 (prior knowledge) for HTTP/2 and
    /// gRPC clients, HTTP/1.1 otherwise. What a transparent proxy must do.
    #[default]
    Auto,
    Http1,
    Http2,
}

/// What to do with `%2F` and `%5C` in a path: they hide a `/` or `\` from
/// path rules but some upstreams decode them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EscapedSlashes {
    /// 400 Bad Request (the default: no rule can be bypassed this way).
    #[default]
    Reject,
    /// Keep them encoded; rules see `%2F`.
    Keep,
    /// Decode them before matching and forwarding.
    Unescape,
}

/// What to do with path forms that common upstreams read differently from
/// RFC 3986: a dot segment with `;` parameters (`/public/..;/admin`, which
/// servlet containers serve as `/admin`), also as `%3B`, and double
/// percent-encoding (`%252e`), which an upstream that decodes twice reads as
/// `.`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AmbiguousPaths {
    /// 400 Bad Request (the default).
    #[default]
    Reject,
    /// Forward them as they are (rules see them as plain names).
    Allow,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub name: String,
    pub bind: SocketAddr,
    #[serde(default)]
    pub protocol: Protocol,
    pub upstream: SocketAddr,
    #[serde(default)]
    pub upstream_protocol: UpstreamProtocol,
    /// The workload behind the listener, as policies select it.
    pub destination: DestinationConfig,
    /// Serve TLS (ALPN h2 and http/1.1) with this certificate.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Speak TLS to the upstream (HTTP listeners): its certificate is
    /// checked against `ca` and `server_name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_tls: Option<UpstreamTlsConfig>,
    #[serde(default)]
    pub escaped_slashes: EscapedSlashes,
    /// Path forms common upstreams read differently (docs/http.md).
    #[serde(default)]
    pub ambiguous_paths: AmbiguousPaths,
    /// Protocols an HTTP/1.1 request may switch its connection to, once
    /// weir judged the request (the bytes after the 101 are relayed
    /// unjudged); `[]` turns upgrades off. Default `[websocket]`.
    #[serde(default = "default_upgrades", skip_serializing_if = "is_default_upgrades")]
    pub upgrades: Vec<String>,
    #[serde(default = "default_connect_timeout", with = "duration")]
    pub connect_timeout: Duration,
    /// This listener's limits, over the `limits:` defaults (docs/limits.md).
    #[serde(default)]
    pub limits: crate::limits::ListenerLimitsConfig,
    /// A Kafka listener's brokers: weir listens for each on an address of
    /// its own (a listener like this one, named `NAME-broker-ID`), and the
    /// answers that name brokers (Metadata, FindCoordinator,
    /// DescribeCluster) name weir's addresses instead, so clients given
    /// only weir's address stay on weir (docs/kafka.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub brokers: Vec<BrokerConfig>,
    /// What an answer naming a broker missing from `brokers` does: `warn`
    /// (it reaches the client, which may connect to that broker around
    /// weir; logged) or `refuse` (the connection closes, as for an answer
    /// weir cannot read).
    #[serde(default, skip_serializing_if = "UnlistedBrokers::is_warn")]
    pub unlisted_brokers: UnlistedBrokers,
    /// Where answers send clients for each broker: the `brokers` of this
    /// listener, or of the listener this one was made for.
    #[serde(skip)]
    pub broker_addresses: Option<Arc<Vec<BrokerConfig>>>,
}

pub fn default_upgrades() -> Vec<String> {
    vec!["websocket".to_string()]
}

fn is_default_upgrades(upgrades: &Vec<String>) -> bool {
    *upgrades == default_upgrades()
}

/// A listener's `upgrades` entry: a protocol name as `Upgrade` carries it.
fn check_upgrade(name: &str) -> Result<(), String> {
    if ["h2c", "h2", "http"].iter().any(|h| name.eq_ignore_ascii_case(h)) {
        // HTTP after the switch would be requests no rule judged
        return Err(format!("{name} cannot be allowed: the requests after the switch would pass unjudged"));
    }
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(token) {
        return Err(format!("{name:?} is not a protocol name (an HTTP token, without a /version)"));
    }
    Ok(())
}

/// See [`ListenerConfig::unlisted_brokers`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnlistedBrokers {
    #[default]
    Warn,
    Refuse,
}

impl UnlistedBrokers {
    fn is_warn(&self) -> bool {
        *self == UnlistedBrokers::Warn
    }
}

/// One broker behind a Kafka listener.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// The broker's node id, as answers name it.
    pub id: i32,
    /// Where weir listens for it.
    pub bind: SocketAddr,
    /// The broker.
    pub upstream: SocketAddr,
}

impl ListenerConfig {
    /// Weir's address for broker `id`, when this listener rewrites answers.
    pub fn broker_address(&self, id: i32) -> Option<SocketAddr> {
        self.broker_addresses.as_ref()?.iter().find(|b| b.id == id).map(|b| b.bind)
    }
}

pub fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Empty: the destination is outside the cluster (`reserved:world`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub identity: Option<u32>,
    /// The port policies are written against; default: the upstream's port.
    #[serde(default)]
    pub port: Option<u16>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// TLS towards a listener's upstream (docs/http.md).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// The name the upstream's certificate must carry, sent as SNI (a DNS
    /// name or an IP address; default: the upstream's IP address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// PEM roots to check the upstream's certificate against (relative to
    /// the config directory; default: the system's bundle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// Weir's certificate and key, for an upstream that asks for one
    /// (mutual TLS); both or neither.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
}

/// A custom filter that `wasm` policy rules can name.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    pub name: String,
    /// Path of the component (relative to the config directory).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Or a filter built into weir.
    #[serde(default)]
    pub builtin: Option<String>,
    #[serde(default = "default_filter_timeout", with = "duration")]
    pub timeout: Duration,
    #[serde(default = "default_filter_memory", with = "bytes")]
    pub memory: usize,
    #[serde(default)]
    pub failure: FailurePolicy,
    /// A filter another source supplies (a WasmFilter object of the API
    /// server) instead of a `path` or `builtin`: never in `weir.yaml`.
    #[serde(skip)]
    pub supplied: Option<SuppliedFilter>,
}

/// A filter's component as a source other than `weir.yaml` hands it over.
#[derive(Clone, Debug)]
pub struct SuppliedFilter {
    /// `kubernetes wasmfilters`: shown in `/config` and logs.
    pub origin: String,
    /// The component's bytes, or why there is none it can use yet (not
    /// fetched, a digest that does not match, a component that does not
    /// load): rules naming it then refuse their traffic, as a filter whose
    /// failure policy is closed would.
    pub component: Result<std::sync::Arc<[u8]>, String>,
}

fn default_filter_timeout() -> Duration {
    FilterLimits::default().timeout
}
fn default_filter_memory() -> usize {
    FilterLimits::default().memory
}

impl FilterConfig {
    pub fn limits(&self) -> FilterLimits {
        FilterLimits { timeout: self.timeout, memory: self.memory }
    }
}

impl WeirConfig {
    /// The settings read once, when weir starts, that differ from `started`:
    /// a reload applies everything else and reports these (`/config`'s
    /// `reload.needs_restart`, and a warning) instead of ignoring them.
    pub fn start_only_changes(&self, started: &WeirConfig) -> Vec<&'static str> {
        let json = |c: &WeirConfig| serde_json::to_value(&c.datapath).ok();
        [
            ("admin", self.admin != started.admin),
            ("metrics", self.metrics != started.metrics),
            ("demo_backend", self.demo_backend != started.demo_backend),
            ("workers", self.workers != started.workers),
            ("reload_interval", self.reload_interval != started.reload_interval),
            ("filter_cache", self.filter_cache != started.filter_cache),
            ("flow_history", self.flow_history != started.flow_history),
            ("limits.filter_instances", self.limits.filter_instances != started.limits.filter_instances),
            ("datapath", json(self) != json(started)),
        ]
        .into_iter()
        .filter_map(|(name, changed)| changed.then_some(name))
        .collect()
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let mut config: WeirConfig = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        config.expand_brokers()?;
        config.validate()?;
        Ok(config)
    }

    /// A listener for each broker of a Kafka listener's `brokers`, like the
    /// listener itself but for that broker; all of them rewrite answers to
    /// weir's addresses.
    fn expand_brokers(&mut self) -> Result<(), String> {
        let mut made = Vec::new();
        for (i, l) in self.listeners.iter_mut().enumerate() {
            if l.brokers.is_empty() {
                if l.unlisted_brokers != UnlistedBrokers::Warn {
                    return Err(format!("listeners[{i}].unlisted_brokers: only a listener with `brokers` has any"));
                }
                continue;
            }
            if l.protocol != Protocol::Kafka {
                return Err(format!("listeners[{i}].brokers: only Kafka listeners have brokers"));
            }
            let mut ids = std::collections::HashSet::new();
            for (j, b) in l.brokers.iter().enumerate() {
                if !ids.insert(b.id) || b.id < 0 {
                    return Err(format!("listeners[{i}].brokers[{j}].id: {} is negative or used twice", b.id));
                }
                // clients are sent to this address: it must be one they can reach
                if b.bind.ip().is_unspecified() {
                    return Err(format!(
                        "listeners[{i}].brokers[{j}].bind: {} is no address a client can be sent to; give the \
                         node's address",
                        b.bind
                    ));
                }
            }
            let brokers = Arc::new(l.brokers.clone());
            l.broker_addresses = Some(brokers.clone());
            for b in brokers.iter() {
                let mut broker = l.clone();
                broker.name = format!("{}-broker-{}", l.name, b.id);
                broker.bind = b.bind;
                broker.upstream = b.upstream;
                broker.brokers = Vec::new();
                made.push(broker);
            }
        }
        self.listeners.extend(made);
        Ok(())
    }

    fn validate(&self) -> Result<(), String> {
        let mut names = std::collections::HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            if !names.insert(&l.name) {
                return Err(format!("listeners[{i}].name: {:?} is used twice", l.name));
            }
        }
        let mut binds = std::collections::HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            if !binds.insert(l.bind) {
                return Err(format!("listeners[{i}].bind: {} is used by two listeners", l.bind));
            }
        }
        let mut seen = std::collections::HashMap::new();
        for (i, ep) in self.endpoints.iter().enumerate() {
            if ep.all_addresses().is_empty() {
                return Err(format!("endpoints[{i}] ({}): needs an `address` or `addresses`", ep.name));
            }
            for addr in ep.all_addresses() {
                if let Some(other) = seen.insert(addr, &ep.name) {
                    return Err(format!("endpoints[{i}].address: {addr} is claimed by {other:?} and {:?}", ep.name));
                }
            }
        }
        for (i, ep) in self.endpoints.iter().enumerate() {
            if let Some(text) = &ep.visibility {
                Visibility::parse_all(text).map_err(|e| format!("endpoints[{i}].visibility ({}): {e}", ep.name))?;
            }
        }
        let mut interfaces = std::collections::HashMap::new();
        for (i, ep) in self.endpoints.iter().enumerate() {
            if let Some(name) = &ep.interface
                && let Some(other) = interfaces.insert(name, &ep.name)
            {
                return Err(format!("endpoints[{i}].interface: {name} is claimed by {other:?} and {:?}", ep.name));
            }
        }
        let mut proxy_ports = std::collections::HashMap::new();
        for (protocol, port) in self.datapath.proxy_ports() {
            if let Some(other) = proxy_ports.insert(port, protocol) {
                return Err(format!(
                    "datapath: port {port} is the proxy port of both {} and {}; give each its own",
                    other.name(),
                    protocol.name()
                ));
            }
        }
        let marks = self.datapath.marks.marks();
        marks.check().map_err(|e| format!("datapath.marks ({marks}): {e}"))?;
        for (i, prefix) in self.datapath.nat64_prefixes.iter().enumerate() {
            let at = format!("datapath.nat64_prefixes[{i}]: {prefix}");
            // where the IPv4 address is depends on the length: RFC 6052's only
            let lengths = weir_datapath_common::NAT64_PREFIX_LENGTHS;
            if !lengths.contains(&prefix.prefix_len()) || prefix.network() != prefix.addr() {
                return Err(format!(
                    "{at} is not a network of one of RFC 6052's lengths (/32, /40, /48, /56, /64 or /96), \
                     whose addresses embed an IPv4 address"
                ));
            }
            // bits 64..72 must be zero (RFC 6052 §2.2); ::/96 holds :: and
            // ::1, ::ffff:0:0/96 is how sockets spell IPv4 itself
            if prefix.network().octets()[8] != 0 {
                return Err(format!("{at}: bits 64 to 71 of a NAT64 prefix must be zero (RFC 6052 §2.2)"));
            }
            if prefix.network().segments()[..5] == [0; 5] {
                return Err(format!("{at} holds the unspecified, loopback or IPv4-mapped addresses"));
            }
            let special: [ipnet::Ipv6Net; 2] =
                ["fe80::/10".parse().expect("a prefix"), "ff00::/8".parse().expect("a prefix")];
            if special.iter().any(|s| s.contains(prefix) || prefix.contains(s)) {
                return Err(format!("{at} holds link-local or multicast addresses"));
            }
            // the well-known prefix is a /96 (RFC 6052 §2.1): read with
            // another length, its addresses would embed other IPv4 addresses
            // than the gateway's
            let well_known: ipnet::Ipv6Net = weir_datapath_common::NAT64_PREFIX.parse().expect("a prefix");
            if *prefix != well_known && prefix.contains(&well_known) {
                return Err(format!("{at} holds {well_known}, which is a /96 (RFC 6052 §2.1): name it as such"));
            }
            if self.datapath.nat64_prefixes[..i].contains(prefix) {
                return Err(format!("{at} is named twice"));
            }
            // one inside another would leave its addresses two IPv4 readings
            if let Some(other) =
                self.datapath.nat64_prefixes[..i].iter().find(|o| o.contains(prefix) || prefix.contains(*o))
            {
                return Err(format!("{at} overlaps {other}: an address in both embeds two IPv4 addresses"));
            }
            // a workload's address there would be judged as IPv4 by the
            // proxy wherever the kernel knows it as the workload
            for ep in &self.endpoints {
                if let Some(address) = ep.all_addresses().into_iter().find(|a| match a {
                    IpAddr::V6(v6) => prefix.contains(v6),
                    IpAddr::V4(_) => false,
                }) {
                    return Err(format!("{at} holds {address}, the address of endpoint {:?}", ep.name));
                }
            }
        }
        let mut filter_names = std::collections::HashSet::new();
        for (i, f) in self.filters.iter().enumerate() {
            if !filter_names.insert(&f.name) {
                return Err(format!("filters[{i}].name: {:?} is used twice", f.name));
            }
            if f.path.is_some() == f.builtin.is_some() {
                return Err(format!("filters[{i}] ({}): give exactly one of `path` and `builtin`", f.name));
            }
            if f.memory > crate::wasm::MAX_FILTER_MEMORY {
                return Err(format!("filters[{i}].memory: at most 1GiB"));
            }
            if f.timeout.is_zero() {
                return Err(format!("filters[{i}].timeout: must be more than zero"));
            }
        }
        for (i, l) in self.listeners.iter().enumerate() {
            if l.protocol == Protocol::Dns && l.tls.is_some() {
                return Err(format!("listeners[{i}].tls: DNS listeners serve plain DNS (DoT/DoH are not built)"));
            }
            if l.protocol != Protocol::Http && l.tls.is_some() {
                return Err(format!("listeners[{i}].tls: only HTTP listeners terminate TLS"));
            }
            if let Some(upstream_tls) = &l.upstream_tls {
                if l.protocol != Protocol::Http {
                    return Err(format!("listeners[{i}].upstream_tls: only HTTP listeners speak TLS to the upstream"));
                }
                if upstream_tls.cert.is_some() != upstream_tls.key.is_some() {
                    return Err(format!("listeners[{i}].upstream_tls: give both `cert` and `key`, or neither"));
                }
            }
            for name in &l.upgrades {
                check_upgrade(name).map_err(|e| format!("listeners[{i}].upgrades: {e}"))?;
            }
        }
        self.limits.validate()?;
        for (i, l) in self.listeners.iter().enumerate() {
            l.limits.validate().map_err(|e| format!("listeners[{i}].{e}"))?;
        }
        if self.dns.upstream_timeout.is_zero() {
            return Err("dns.upstream_timeout: must be more than zero".into());
        }
        if self.dns.max_ips_per_name == 0 {
            return Err("dns.max_ips_per_name: must be at least 1".into());
        }
        Ok(())
    }

    /// The filter cache directory after defaults.
    pub fn filter_cache_dir(&self) -> Option<PathBuf> {
        match &self.filter_cache {
            Some(p) if p.as_os_str().is_empty() => None,
            Some(p) => Some(p.clone()),
            None => default_cache_dir(),
        }
    }
}

pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("WEIR_CACHE_DIR") {
        return (!dir.is_empty()).then(|| PathBuf::from(dir));
    }
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .map(|base| base.join("weir"))
}

/// `datapath.conntrack` in `weir.yaml`: how long entries live without
/// traffic, and how many one endpoint may hold (docs/datapath.md).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ConntrackConfig {
    /// A TCP connection whose handshake has not completed.
    #[serde(with = "duration")]
    pub tcp_syn: Duration,
    #[serde(with = "duration")]
    pub tcp_established: Duration,
    /// After an RST, or a FIN from both sides.
    #[serde(with = "duration")]
    pub tcp_closing: Duration,
    #[serde(with = "duration")]
    pub udp: Duration,
    /// An echo request, for its reply.
    #[serde(with = "duration")]
    pub icmp: Duration,
    /// SCTP, GRE and other protocols.
    #[serde(with = "duration")]
    pub other: Duration,
    /// Most entries one endpoint's connections may hold; new connections
    /// past it are dropped (`conntrack_endpoint_limit`).
    pub per_endpoint: u32,
    /// Most fragmented datagrams whose first fragment passed an endpoint's
    /// veth and whose last has not, per endpoint; first fragments past it
    /// are dropped (`fragment_endpoint_limit`). The fragment records' table
    /// holds 32768 (docs/datapath.md, "IP fragments").
    pub fragments_per_endpoint: u32,
    /// Size of the table, for all endpoints; when full, new connections are
    /// dropped (`conntrack_full`), nothing is evicted. Takes effect when the
    /// map is created: a pinned table keeps its size until `weir datapath
    /// cleanup`.
    pub capacity: u32,
    /// The same for IPv6 connections, which have a table of their own.
    pub capacity_ipv6: u32,
    /// How often weir deletes expired entries.
    #[serde(with = "duration")]
    pub gc_interval: Duration,
}

impl Default for ConntrackConfig {
    fn default() -> Self {
        use weir_datapath_common::conntrack;
        let secs = |s: u32| Duration::from_secs(u64::from(s));
        ConntrackConfig {
            tcp_syn: secs(conntrack::TCP_SYN_SECS),
            tcp_established: secs(conntrack::TCP_ESTABLISHED_SECS),
            tcp_closing: secs(conntrack::TCP_CLOSING_SECS),
            udp: secs(conntrack::UDP_SECS),
            icmp: secs(conntrack::ICMP_SECS),
            other: secs(conntrack::OTHER_SECS),
            per_endpoint: conntrack::PER_ENDPOINT,
            fragments_per_endpoint: conntrack::FRAGMENT_PER_ENDPOINT,
            capacity: conntrack::CAPACITY,
            capacity_ipv6: conntrack::CAPACITY6,
            gc_interval: Duration::from_secs(10),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kafka_listeners_brokers_become_listeners_that_rewrite() {
        let config = WeirConfig::parse(
            "listeners:\n  - name: kafka\n    protocol: kafka\n    bind: 127.0.0.1:19092\n    upstream: 127.0.0.1:9092\n    \
             destination: {labels: {app: kafka}}\n    brokers:\n      \
             - {id: 1, bind: 127.0.0.1:19101, upstream: 127.0.0.1:9092}\n      \
             - {id: 2, bind: 127.0.0.1:19102, upstream: 127.0.0.1:9094}\n",
        )
        .unwrap();
        let names: Vec<(&str, String, String)> =
            config.listeners.iter().map(|l| (l.name.as_str(), l.bind.to_string(), l.upstream.to_string())).collect();
        assert_eq!(
            names,
            [
                ("kafka", "127.0.0.1:19092".into(), "127.0.0.1:9092".into()),
                ("kafka-broker-1", "127.0.0.1:19101".into(), "127.0.0.1:9092".into()),
                ("kafka-broker-2", "127.0.0.1:19102".into(), "127.0.0.1:9094".into()),
            ]
        );
        for l in &config.listeners {
            assert_eq!(l.broker_address(2), Some("127.0.0.1:19102".parse().unwrap()), "{}", l.name);
            assert_eq!(l.broker_address(3), None);
            assert_eq!(l.destination.labels.get("app").map(String::as_str), Some("kafka"), "the same workload");
        }
        let http = WeirConfig::parse(
            "listeners:\n  - {name: web, bind: 127.0.0.1:8080, upstream: 127.0.0.1:80, destination: {}, \
             brokers: [{id: 1, bind: 127.0.0.1:19101, upstream: 127.0.0.1:9092}]}\n",
        );
        assert!(http.unwrap_err().contains("only Kafka listeners have brokers"));
        let twice = WeirConfig::parse(
            "listeners:\n  - {name: k, protocol: kafka, bind: 127.0.0.1:19092, upstream: 127.0.0.1:9092, \
             destination: {}, brokers: [{id: 1, bind: 127.0.0.1:19101, upstream: 127.0.0.1:9092}, \
             {id: 1, bind: 127.0.0.1:19102, upstream: 127.0.0.1:9094}]}\n",
        );
        assert!(twice.unwrap_err().contains("used twice"));
        let clash = WeirConfig::parse(
            "listeners:\n  - {name: k, protocol: kafka, bind: 127.0.0.1:19092, upstream: 127.0.0.1:9092, \
             destination: {}, brokers: [{id: 1, bind: 127.0.0.1:19092, upstream: 127.0.0.1:9092}]}\n",
        );
        assert!(clash.unwrap_err().contains("used by two listeners"), "a broker's bind is checked like any");
        let anywhere = WeirConfig::parse(
            "listeners:\n  - {name: k, protocol: kafka, bind: 127.0.0.1:19092, upstream: 127.0.0.1:9092, \
             destination: {}, brokers: [{id: 1, bind: 0.0.0.0:19101, upstream: 127.0.0.1:9092}]}\n",
        );
        assert!(anywhere.unwrap_err().contains("no address a client can be sent to"));
    }

    #[test]
    fn unlisted_brokers_needs_brokers() {
        let listener = "listeners:\n  - name: kafka\n    protocol: kafka\n    bind: 127.0.0.1:19092\n    \
                        upstream: 127.0.0.1:9092\n    destination: {labels: {app: kafka}}\n    unlisted_brokers: refuse\n";
        let refused = WeirConfig::parse(listener).unwrap_err();
        assert!(refused.contains("listeners[0].unlisted_brokers: only a listener with `brokers`"), "{refused}");
        let with = format!("{listener}    brokers: [{{id: 1, bind: 127.0.0.1:19101, upstream: 127.0.0.1:9092}}]\n");
        let config = WeirConfig::parse(&with).unwrap();
        assert!(config.listeners.iter().all(|l| l.unlisted_brokers == UnlistedBrokers::Refuse));
    }

    #[test]
    fn upgrades_default_to_websocket_and_h2c_is_refused() {
        let listener = |extra: &str| {
            format!(
                "listeners:\n  - name: web\n    bind: 127.0.0.1:18080\n    upstream: 127.0.0.1:8080\n    \
                 destination: {{labels: {{app: web}}}}\n{extra}"
            )
        };
        assert_eq!(WeirConfig::parse(&listener("")).unwrap().listeners[0].upgrades, ["websocket"]);
        assert!(WeirConfig::parse(&listener("    upgrades: []\n")).unwrap().listeners[0].upgrades.is_empty());
        let h2c = WeirConfig::parse(&listener("    upgrades: [websocket, H2C]\n")).unwrap_err();
        assert!(h2c.contains("listeners[0].upgrades: H2C cannot be allowed"), "{h2c}");
        let versioned = WeirConfig::parse(&listener("    upgrades: [websocket/13]\n")).unwrap_err();
        assert!(versioned.contains("not a protocol name"), "{versioned}");
    }

    #[test]
    fn visibility_reads_ciliums_annotation_and_names_what_is_wrong() {
        let parsed =
            Visibility::parse_all("<Ingress/80/TCP/HTTP>, <egress/53/any/dns>,<Ingress/9092/TCP/Kafka>").unwrap();
        assert_eq!(
            parsed,
            [
                Visibility { ingress: true, port: 80, transport: "TCP", protocol: Protocol::Http },
                Visibility { ingress: false, port: 53, transport: "ANY", protocol: Protocol::Dns },
                Visibility { ingress: true, port: 9092, transport: "TCP", protocol: Protocol::Kafka },
            ]
        );
        for (bad, says) in [
            ("Ingress/80/TCP/HTTP", "expected <Direction/port/transport/protocol>"),
            ("<Ingress/80/HTTP>", "four parts"),
            ("<Sideways/80/TCP/HTTP>", "neither Ingress nor Egress"),
            ("<Ingress/0/TCP/HTTP>", "not a port number"),
            ("<Ingress/80/SCTP/HTTP>", "not TCP, UDP or ANY"),
            ("<Ingress/80/TCP/r2d2>", "not one weir parses"),
            ("<Ingress/80/UDP/HTTP>", "parsed on TCP only"),
        ] {
            let e = Visibility::parse_all(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let e = WeirConfig::parse("endpoints: [{name: web, address: 10.0.0.1, visibility: '<Ingress/x/TCP/HTTP>'}]")
            .unwrap_err();
        assert!(e.starts_with("endpoints[0].visibility (web): "), "{e}");
    }

    #[test]
    fn nat64_prefixes_are_rfc_6052_networks_named_once() {
        let defaults = WeirConfig::parse("{}").unwrap().datapath.nat64_prefixes;
        assert_eq!(defaults, ["64:ff9b::/96".parse::<ipnet::Ipv6Net>().unwrap()]);
        let two = WeirConfig::parse("datapath: {nat64_prefixes: ['64:ff9b::/96', '64:ff9b:1:a::/96']}").unwrap();
        assert_eq!(two.datapath.nat64_prefixes.len(), 2);
        let lengths = "datapath: {nat64_prefixes: ['2001:db8::/32', '2001:db9:100::/40', '64:ff9b:1::/48', \
                       '2001:dba:122:300::/56', '2001:dbb:122:344::/64', '64:ff9b::/96']}";
        assert_eq!(WeirConfig::parse(lengths).unwrap().datapath.nat64_prefixes.len(), 6);
        assert!(WeirConfig::parse("datapath: {nat64_prefixes: []}").unwrap().datapath.nat64_prefixes.is_empty());
        for (bad, says) in [
            ("['64:ff9b:1::/50']", "64:ff9b:1::/50 is not a network of one of RFC 6052's lengths"),
            ("['64:ff9b::1/96']", "64:ff9b::1/96 is not a network of one of RFC 6052's lengths"),
            ("['64:ff9b:1::/48', '64:ff9b:1:a::/96']", "64:ff9b:1:a::/96 overlaps 64:ff9b:1::/48"),
            ("['64:ff9b:1:a::/96', '64:ff9b:1::/48']", "64:ff9b:1::/48 overlaps 64:ff9b:1:a::/96"),
            ("['64:ff9b::/32']", "holds 64:ff9b::/96, which is a /96 (RFC 6052 §2.1)"),
            ("['fe80::/32']", "holds link-local or multicast addresses"),
            ("['ff02::/32']", "holds link-local or multicast addresses"),
            ("['64:ff9b::/96', '64:ff9b::/96']", "nat64_prefixes[1]: 64:ff9b::/96 is named twice"),
            ("['64:ff9b:0:0:100::/96']", "bits 64 to 71 of a NAT64 prefix must be zero"),
            ("['::/96']", "holds the unspecified, loopback or IPv4-mapped addresses"),
            ("['::ffff:0:0/96']", "holds the unspecified, loopback or IPv4-mapped addresses"),
        ] {
            let e = WeirConfig::parse(&format!("datapath: {{nat64_prefixes: {bad}}}")).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let pod_inside = "datapath: {nat64_prefixes: ['fd00:64::/96']}\n\
                          endpoints: [{name: web, addresses: [10.0.0.1, 'fd00:64::a00:1']}]";
        let e = WeirConfig::parse(pod_inside).unwrap_err();
        assert!(e.contains("holds fd00:64::a00:1, the address of endpoint \"web\""), "{e}");
    }

    #[test]
    fn marks_move_as_numbers_or_strings_and_are_checked() {
        let defaults = WeirConfig::parse("{}").unwrap().datapath.marks.marks();
        assert_eq!(defaults, Marks::DEFAULT);
        let moved = "datapath: {marks: {mask: 0x3000, to_proxy: '0x1000', from_proxy: 8192, identity: \"12288\"}}";
        let marks = WeirConfig::parse(moved).unwrap().datapath.marks.marks();
        assert_eq!(marks, Marks { mask: 0x3000, to_proxy: 0x1000, from_proxy: 0x2000, identity: 0x3000 });
        for (bad, says) in [
            ("{mask: 0xf000, to_proxy: 0x1000, from_proxy: 0x2000, identity: 0x3000}", "inside 0x3f00"),
            ("{mask: 0x3000}", "inside the mask"),
            ("{mask: 0x3000, to_proxy: 0x1000, from_proxy: 0x1000, identity: 0x3000}", "must differ"),
            ("{mask: '0xzz'}", "\"0xzz\" is not a 32-bit mark"),
            ("{mask: '+12288'}", "\"+12288\" is not a 32-bit mark"),
            ("{mask: -1}", "-1 is negative"),
            ("{mask: 0x100000000}", "0x100000000 is wider than a 32-bit mark"),
            ("{mask: 1.5}", "a 32-bit mark as a number or a string"),
            ("{magic: 0x3000}", "unknown field `magic`"),
        ] {
            let e = WeirConfig::parse(&format!("datapath: {{marks: {bad}}}")).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn settings_read_at_start_are_named_when_a_reload_changes_them() {
        let started = WeirConfig::parse("workers: 2\nlog_flows: true\n").unwrap();
        let same = WeirConfig::parse("workers: 2\nlog_flows: false\n").unwrap();
        assert!(same.start_only_changes(&started).is_empty(), "log_flows applies on reload");
        let changed = WeirConfig::parse("workers: 4\ndatapath: {devices: [eth0]}\n").unwrap();
        assert_eq!(changed.start_only_changes(&started), vec!["workers", "datapath"]);
    }

    #[test]
    fn each_engine_has_its_own_transparent_port() {
        let defaults = WeirConfig::parse("{}").unwrap().datapath;
        let mut ports: Vec<u16> = defaults.proxy_ports().map(|(_, port)| port).collect();
        ports.sort();
        ports.dedup();
        assert_eq!(ports.len(), Protocol::ALL.len());
        assert_eq!(defaults.proxy_port_of(Protocol::Kafka), 15002);

        let shared = WeirConfig::parse("datapath: {kafka_proxy_port: 15001}").unwrap_err();
        assert!(shared.contains("port 15001 is the proxy port of both http and kafka"), "{shared}");
    }
}
