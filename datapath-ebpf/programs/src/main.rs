//! weir's per-pod datapath: two TC programs on each pod's host-side veth.
//!
//! `weir_from_pod` (TC ingress of the host veth: packets the pod sends)
//!   - only IPv4, IPv6 and ARP frames pass; tagged frames and every other
//!     ethertype are dropped and counted (a frame is judged or dropped);
//!   - replies to connections opened toward the pod pass (conntrack; a SYN
//!     is never a reply);
//!   - everything else is judged by the pod's egress policy and, when the
//!     destination is a pod on this node, by that pod's ingress policy too;
//!   - a redirect verdict marks the packet TO_PROXY with the sender's
//!     identity and `bpf_sk_assign`s it to the proxy's transparent socket.
//!
//! `weir_to_pod` (TC egress of the host veth: packets the pod receives)
//!   - packets the sender's veth judged *for this pod and this tuple*
//!     (identity mark + a conntrack entry saying so) or sent by the proxy
//!     pass; replies to the pod's own connections pass;
//!   - the rest (from the host, off the node, or rewritten on the way as by
//!     a service DNAT) is judged by the pod's ingress policy.
//!
//! Allowed packets to a pod on this node go straight into its veth's peer
//! (`bpf_redirect_peer`, `datapath.host_routing: bpf`), past the node's
//! routing and the receiving veth's program; both programs learn where
//! each pod is from the neighbour messages between it and the node.
//!
//! Conntrack entries carry TCP state and a deadline (docs/datapath.md lists
//! the lifetimes); expired entries count as absent. Each endpoint may hold a
//! bounded number of entries, so one pod cannot crowd the others out.
//!
//! IPv4 and IPv6 are judged alike, each with maps keyed by its own addresses
//! (the [`Addr`] trait); neighbour discovery and MLD pass as ARP does.
#![no_std]
#![no_main]
// atomic adds on map values: `AtomicU64::fetch_add` is not offered for
// the BPF target, the intrinsic is (the build runs with RUSTC_BOOTSTRAP)
#![allow(internal_features)]
#![feature(core_intrinsics)]

use core::intrinsics::{AtomicOrdering, atomic_xadd};
use core::mem::size_of;

use aya_ebpf::bindings::{
    BPF_EXIST, BPF_F_CURRENT_NETNS, BPF_F_INGRESS, BPF_NOEXIST, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_TCP_LISTEN,
    TC_ACT_OK, TC_ACT_SHOT, TC_ACT_UNSPEC, bpf_sock, bpf_sock_tuple, sk_action::SK_PASS,
};
use aya_ebpf::helpers::generated::{
    bpf_get_socket_cookie, bpf_ktime_get_coarse_ns, bpf_map_lookup_elem, bpf_redirect_peer, bpf_sk_assign,
    bpf_sk_release, bpf_skc_lookup_tcp,
};
use aya_ebpf::macros::{classifier, map, sk_msg, sock_ops};
use aya_ebpf::maps::lpm_trie::Key;
use aya_ebpf::maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, SockHash};
use aya_ebpf::programs::{SkMsgContext, SockOpsContext, TcContext};
use weir_datapath_common::{
    CT_DEST_JUDGED, CT_FQDN, CT_PROXIED, CtKey, CtKey6, CtUsage, CtValue, DIR_EGRESS, DIR_INGRESS, DROP_REASONS,
    Delivery, ENDPOINT_AUDIT_EGRESS, ENDPOINT_AUDIT_INGRESS, ENDPOINT_ENFORCE_EGRESS, ENDPOINT_ENFORCE_INGRESS,
    ENDPOINT_OBSERVE_EGRESS, ENDPOINT_OBSERVE_INGRESS, ENDPOINT_PEER_DELIVERY, EVENT_ALLOW, EVENT_AUDIT, EVENT_DROP,
    EVENT_REDIRECT, EndpointInfo, EndpointIpv6, Event, FAMILY_IPV4, FAMILY_IPV6, FIRST_CIDR_IDENTITY,
    FIRST_FQDN_IDENTITY, FragKey, FragKey6, FragValue, IpcacheKey, IpcacheKey6, IpcacheValue, PROTO_ICMP, PROTO_ICMPV6,
    PROTO_SCTP, PROTO_TCP, PROTO_UDP, PolicyKey, PolicyValue, REASON_CT_FULL, REASON_CT_LIMIT, REASON_ETHERTYPE,
    REASON_FRAG_FULL, REASON_FRAG_LIMIT, REASON_FRAGMENT, REASON_IPV6, REASON_MALFORMED, REASON_NO_PROXY,
    REASON_POLICY, REASON_SPOOFED, REASON_VLAN, Settings, SpliceKey, TCP_CLOSING, TCP_ESTABLISHED, TCP_FIN_FORWARD,
    TCP_FIN_REPLY, TCP_REPLY_SEEN, Tuple, VERDICT_ALLOW, VERDICT_AUDIT, VERDICT_DENY, VERDICT_REDIRECT,
    VERDICT_REDIRECT_OR_ALLOW, conntrack, identity, maps, mark, mark::Marks, nat64_embedded_ipv4, proxy_socket_key,
    proxy_socket_key6,
};

#[map(name = "WEIR_ENDPOINTS")]
static ENDPOINTS: HashMap<u32, EndpointInfo> = HashMap::pinned(4096, 0);
#[map(name = "WEIR_IPCACHE")]
static IPCACHE: LpmTrie<IpcacheKey, IpcacheValue> = LpmTrie::pinned(65536, 0);
#[map(name = "WEIR_POLICY")]
static POLICY: HashMap<PolicyKey, PolicyValue> = HashMap::pinned(262144, BPF_F_NO_PREALLOC);
/// Not an LRU: a full table refuses new connections instead of evicting
/// someone's established one; expired entries are reclaimed (here on reuse
/// of the tuple, by weir's collector otherwise).
#[map(name = "WEIR_CONNTRACK")]
static CT: HashMap<CtKey, CtValue> = HashMap::pinned(conntrack::CAPACITY, 0);
#[map(name = "WEIR_CT_USAGE")]
static CT_USAGE: HashMap<u32, CtUsage> = HashMap::pinned(16384, 0);
/// Written by weir's collector only: entries of each endpoint it deleted.
#[map(name = "WEIR_CT_FREED")]
static CT_FREED: HashMap<u32, u64> = HashMap::pinned(16384, 0);
/// Not an LRU either: one pod's unfinished datagrams must not push out
/// another's records. Each record is charged to the endpoint whose veth
/// made it (FRAG_USAGE) and freed at its datagram's last fragment, or by
/// weir's collector when it expires (FRAG_FREED).
#[map(name = "WEIR_FRAGS")]
static FRAGMENTS: HashMap<FragKey, FragValue> = HashMap::pinned(conntrack::FRAGMENT_CAPACITY, BPF_F_NO_PREALLOC);
#[map(name = "WEIR_FRAG_USAGE")]
static FRAG_USAGE: HashMap<u32, CtUsage> = HashMap::pinned(16384, 0);
/// Written by weir's collector only: expired records of each endpoint it deleted.
#[map(name = "WEIR_FRAG_FREED")]
static FRAG_FREED: HashMap<u32, u64> = HashMap::pinned(16384, 0);
#[map(name = "WEIR_DROPS")]
static DROPS: PerCpuArray<u64> = PerCpuArray::pinned(DROP_REASONS, 0);
#[map(name = "WEIR_SETTINGS")]
static SETTINGS: Array<Settings> = Array::pinned(1, 0);
/// The policy revision, written by weir after every change of the endpoint,
/// ipcache or policy maps (a map of its own: nothing else writes it).
#[map(name = "WEIR_REVISION")]
static REVISION: Array<u32> = Array::pinned(1, 0);
#[map(name = "WEIR_PROXY_SOCKS")]
static PROXY_SOCKS: SockHash<u32> = SockHash::pinned(64, 0);
#[map(name = "WEIR_ENDPOINTS6")]
static ENDPOINTS6: HashMap<u32, EndpointIpv6> = HashMap::pinned(4096, 0);
#[map(name = "WEIR_IPCACHE6")]
static IPCACHE6: LpmTrie<IpcacheKey6, IpcacheValue> = LpmTrie::pinned(65536, 0);
#[map(name = "WEIR_CONNTRACK6")]
static CT6: HashMap<CtKey6, CtValue> = HashMap::pinned(conntrack::CAPACITY6, 0);
#[map(name = "WEIR_FRAGS6")]
static FRAGMENTS6: HashMap<FragKey6, FragValue> = HashMap::pinned(conntrack::FRAGMENT_CAPACITY, BPF_F_NO_PREALLOC);
#[map(name = "WEIR_SPLICE_BOUND")]
static SPLICE_BOUND: SockHash<SpliceKey> = SockHash::pinned(65536, 0);
#[map(name = "WEIR_SPLICE_PROXY")]
static SPLICE_PROXY: SockHash<SpliceKey> = SockHash::pinned(65536, 0);
/// An LRU: a binding is taken once, at the socket's join; one never taken
/// (the handshake failed) ages out, and one evicted only costs a splice.
#[map(name = "WEIR_SPLICE_BINDINGS")]
static SPLICE_BINDINGS: LruHashMap<SpliceKey, u64> = LruHashMap::pinned(maps::SPLICE_BINDINGS_CAPACITY, 0);
#[map(name = "WEIR_DELIVERY")]
static DELIVERY: HashMap<u32, Delivery> = HashMap::pinned(4096, 0);
#[map(name = "WEIR_DELIVERY6")]
static DELIVERY6: HashMap<[u32; 4], Delivery> = HashMap::pinned(4096, 0);
/// The IPv6 packet being judged by `weir_from_pod`: in a per-CPU map, not
/// on the stack, which the judging needs (BPF allows 512 bytes per chain
/// of calls). Not pinned: nothing outlives the packet.
#[map]
static PACKET6: PerCpuArray<Packet<[u32; 4]>> = PerCpuArray::with_max_entries(1, 0);
#[map(name = "WEIR_EVENTS")]
static EVENTS: RingBuf = RingBuf::pinned(1 << 20, 0);

/// `datapath.host_routing`: 1 (`bpf`) delivers allowed packets to local pods
/// past the node's stack, 0 (`kernel`) leaves them to its routing. Set by
/// weir when it loads the object; read-only data, so the verifier prunes
/// the branch the setting turns off.
#[unsafe(no_mangle)]
static HOST_ROUTING: u8 = 0;

/// `datapath.splice`: the HTTP proxy's port, whose connections' client
/// sockets may be bound and spliced (set by weir at load, read-only data as
/// `HOST_ROUTING`); 0: splicing off, nothing recorded.
#[unsafe(no_mangle)]
static SPLICE_PORT: u16 = 0;

/// For a pod's SYN redirected to the HTTP proxy while splicing is on: the
/// cookie of the socket it carries (`skb->sk` survives the veth crossing,
/// and TC runs before the stack orphans it; 0 when none does, as on a veth
/// running XDP or GRO). Read before `bpf_sk_assign`, which puts the proxy's
/// socket there instead. `None`: not a connection the proxy splices to.
#[inline(always)]
fn handshake_cookie<A: Addr>(ctx: &TcContext, t: &Tuple<A>, proxy_port: u16) -> Option<u64> {
    let port = unsafe { core::ptr::read_volatile(&SPLICE_PORT) };
    if port == 0 || proxy_port != port || A::FAMILY != FAMILY_IPV4 || t.protocol != PROTO_TCP {
        return None;
    }
    Some(unsafe { bpf_get_socket_cookie(ctx.skb.skb as *mut _) })
}

/// The socket of `cookie` ([`handshake_cookie`]), and no socket of another
/// network namespace with the same tuple, may join SPLICE_BOUND; no socket
/// on the SYN: none may (an earlier binding of the tuple goes). Client
/// sockets only: the proxy's upstream leg is not spliced (a server's
/// SYN-ACK would carry its request socket, whose cookie the child inherits).
#[inline(always)]
fn bind_splice<A: Addr>(t: &Tuple<A>, cookie: Option<u64>) {
    let Some(cookie) = cookie else { return };
    let key = SpliceKey {
        local_ip: t.saddr.event_address()[0],
        remote_ip: t.daddr.event_address()[0],
        local_port: t.sport,
        remote_port: t.dport,
    };
    let _ = match cookie {
        0 => SPLICE_BINDINGS.remove(&key),
        _ => SPLICE_BINDINGS.insert(&key, &cookie, 0),
    };
}

/// `datapath.marks`: the nibble and values of weir's marks, set by weir when
/// it loads the object (read-only data, as `HOST_ROUTING`).
#[unsafe(no_mangle)]
static MARKS: Marks = Marks::DEFAULT;

/// The mark saying "to the proxy", with the sender's identity.
#[inline(always)]
fn to_proxy_mark(id: u32) -> u32 {
    mark::make(unsafe { core::ptr::read_volatile(&MARKS.to_proxy) }, id)
}

/// The mark saying "judged at the sender's veth", with its identity.
#[inline(always)]
fn identity_mark(id: u32) -> u32 {
    mark::make(unsafe { core::ptr::read_volatile(&MARKS.identity) }, id)
}

/// What `skb_mark` says, as one of weir's marks.
#[derive(PartialEq, Eq)]
enum Magic {
    ToProxy,
    FromProxy,
    Identity,
    /// Not one of weir's (another plugin's, or none).
    Other,
}

#[inline(always)]
fn magic_of(skb_mark: u32) -> Magic {
    let marks = unsafe { core::ptr::read_volatile(&MARKS) };
    match marks.magic(skb_mark) {
        m if m == marks.to_proxy => Magic::ToProxy,
        m if m == marks.from_proxy => Magic::FromProxy,
        m if m == marks.identity => Magic::Identity,
        _ => Magic::Other,
    }
}

const BPF_F_NO_PREALLOC: u32 = 1;
const TC_ACT_REDIRECT: i32 = 7;
const PACKET_HOST: u32 = 0;
const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const ETH_P_QINQ1: u16 = 0x9100;
const IP_MF: u16 = 0x2000;
const IP_OFFSET: u16 = 0x1FFF;
const TCP_FLAG_FIN: u8 = 0x01;
const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_RST: u8 = 0x04;
const TCP_FLAG_ACK: u8 = 0x10;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_UNREACHABLE: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETER_PROBLEM: u8 = 12;
const ICMPV6_UNREACHABLE: u8 = 1;
const ICMPV6_PACKET_TOO_BIG: u8 = 2;
const ICMPV6_TIME_EXCEEDED: u8 = 3;
const ICMPV6_PARAMETER_PROBLEM: u8 = 4;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;
/// MLD: query (130; routers send it), report and done (131, 132), MLDv2
/// report (143). Neighbour discovery: router solicitation (133), router
/// advertisement (134; routers send it), neighbour solicitation and
/// advertisement (135, 136), redirect (137; routers send it).
const ICMPV6_MLD_QUERY: u8 = 130;
const ICMPV6_MLD_REPORT: u8 = 131;
const ICMPV6_MLD_DONE: u8 = 132;
const ICMPV6_MLD2_REPORT: u8 = 143;
const ICMPV6_ROUTER_SOLICITATION: u8 = 133;
const ICMPV6_NEIGHBOR_SOLICITATION: u8 = 135;
const ICMPV6_NEIGHBOR_ADVERTISEMENT: u8 = 136;
const ICMPV6_REDIRECT: u8 = 137;
const IPV6_HLEN: usize = 40;
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;
/// Extension headers walked before the upper-layer header; more is refused.
const MAX_EXTENSION_HEADERS: usize = 4;
const EEXIST: i32 = 17;
const NANOS: u64 = 1_000_000_000;
/// [`Packet::fragment`]: the first of a fragmented datagram, and its last.
const FRAGMENT_FIRST: u8 = 1;
const FRAGMENT_LAST: u8 = 2;

/// The packet fields every decision needs. Addresses and ports as on the wire.
///
/// ICMP has no ports; an echo request is keyed `sport = id, dport = 0` and
/// an echo reply `sport = 0, dport = id`, so the reply's reversed tuple is
/// the request's. Other ICMP types have both zero and never open or match
/// an entry.
struct Packet<A> {
    tuple: Tuple<A>,
    /// TCP: its flags. ICMP and ICMPv6: the message's type plus one, the
    /// port `icmps` rules are keyed by in the policy map (one byte, as no
    /// room is left on `weir_to_pod`'s stack: the reserved type 255 wraps to
    /// 0, "every type", which weir.yaml's rules cannot name). 0 for other
    /// protocols and for non-first fragments (no L4 header).
    l4_byte: u8,
    /// A TCP SYN without ACK: the first packet of a connection, always
    /// judged as new, never a reply. Also every ICMP message but an echo:
    /// with no id its tuple is (0, 0), which an echo with id 0 opens, and
    /// `icmps` rules judge each type on its own.
    syn: bool,
    /// May be a reply of a tracked connection.
    reply_candidate: bool,
    /// May record a conntrack entry when allowed.
    opens: bool,
    /// [`FRAGMENT_FIRST`] of a fragmented datagram: the later fragments are
    /// judged with its ports, until [`FRAGMENT_LAST`] passes; 0 otherwise.
    fragment: u8,
    /// IP identification (IPv4's 16 bits, or the IPv6 Fragment header's 32).
    ip_id: u32,
    /// An ICMP error (unreachable, time exceeded, parameter problem, and
    /// IPv6's packet too big): the tuple of the packet it quotes, which its
    /// destination sent. It passes when that tuple belongs to a live
    /// connection (in either direction).
    quoted: Option<Tuple<A>>,
    /// ICMPv6 neighbour discovery or MLD: its type and the packet's hop
    /// limit. Such a message passes as the link's housekeeping where
    /// [`neighbor_from_pod`] / [`neighbor_to_pod`] say it stays on the link;
    /// otherwise it is judged as any ICMPv6.
    neighbor: Option<(u8, u8)>,
}

enum Parsed {
    Ipv4(Packet<u32>),
    Ipv6(Packet<[u32; 4]>),
    /// ARP: the link's housekeeping, which passes (IPv6's neighbour
    /// discovery is an `Ipv6` packet with `neighbor` set).
    Neighbor,
    Drop(u8),
}

/// What differs between IPv4 and IPv6 once a packet is parsed: the maps
/// keyed by address, and how an address is spelled to the kernel's helpers
/// and in events. Implemented for `u32` (IPv4) and `[u32; 4]` (IPv6), as on
/// the wire.
trait Addr: Copy + PartialEq + Default + 'static {
    type Fragment: 'static;
    const FAMILY: u8;
    fn conntrack() -> &'static HashMap<Tuple<Self>, CtValue>;
    fn fragments() -> &'static HashMap<Self::Fragment, FragValue>;
    /// `direction`: the sender's veth (egress) and the receiver's (ingress)
    /// keep records of their own, each charged to its endpoint.
    fn fragment_key(t: &Tuple<Self>, id: u32, direction: u8) -> Self::Fragment;
    /// The identity and local interface the ipcache holds for the address.
    fn ipcache(self) -> IpcacheValue;
    /// The tuple `bpf_skc_lookup_tcp` reads, and its size.
    fn sock_tuple(t: &Tuple<Self>) -> (bpf_sock_tuple, u32);
    /// The PROXY_SOCKS key of the proxy's socket of this family.
    fn proxy_key(port: u16, protocol: u8) -> u32;
    fn event_address(self) -> [u32; 4];
    /// Where a pod on this node with this address is delivered past the
    /// node's stack (DELIVERY / DELIVERY6).
    fn deliveries() -> &'static HashMap<Self, Delivery>;
    /// The address of this family configured for the pod behind `ifindex`.
    fn configured(ifindex: u32, endpoint: &EndpointInfo) -> Option<Self>;
    /// The offset of the TTL (hop limit) in the frame.
    const HOP_LIMIT: usize;
}

impl Addr for u32 {
    type Fragment = FragKey;
    const FAMILY: u8 = FAMILY_IPV4;
    #[inline(always)]
    fn conntrack() -> &'static HashMap<CtKey, CtValue> {
        &CT
    }
    #[inline(always)]
    fn fragments() -> &'static HashMap<FragKey, FragValue> {
        &FRAGMENTS
    }
    #[inline(always)]
    fn fragment_key(t: &CtKey, id: u32, direction: u8) -> FragKey {
        FragKey { saddr: t.saddr, daddr: t.daddr, id: id as u16, protocol: t.protocol, direction }
    }
    #[inline(always)]
    fn ipcache(self) -> IpcacheValue {
        let key = Key::new(32, self.to_ne_bytes());
        match IPCACHE.get(&key) {
            Some(v) => *v,
            None => IpcacheValue { identity: identity::WORLD, local_ifindex: 0 },
        }
    }
    #[inline(always)]
    fn sock_tuple(t: &CtKey) -> (bpf_sock_tuple, u32) {
        let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
        unsafe {
            let v4 = &mut tuple.__bindgen_anon_1.ipv4;
            v4.saddr = t.saddr;
            v4.daddr = t.daddr;
            v4.sport = t.sport;
            v4.dport = t.dport;
        }
        (tuple, size_of::<u32>() as u32 * 3)
    }
    #[inline(always)]
    fn proxy_key(port: u16, protocol: u8) -> u32 {
        proxy_socket_key(port, protocol)
    }
    #[inline(always)]
    fn event_address(self) -> [u32; 4] {
        [self, 0, 0, 0]
    }
    #[inline(always)]
    fn deliveries() -> &'static HashMap<u32, Delivery> {
        &DELIVERY
    }
    #[inline(always)]
    fn configured(_ifindex: u32, endpoint: &EndpointInfo) -> Option<u32> {
        (endpoint.ipv4 != 0).then_some(endpoint.ipv4)
    }
    const HOP_LIMIT: usize = ETH_HLEN + 8;
}

impl Addr for [u32; 4] {
    type Fragment = FragKey6;
    const FAMILY: u8 = FAMILY_IPV6;
    #[inline(always)]
    fn conntrack() -> &'static HashMap<CtKey6, CtValue> {
        &CT6
    }
    #[inline(always)]
    fn fragments() -> &'static HashMap<FragKey6, FragValue> {
        &FRAGMENTS6
    }
    #[inline(always)]
    fn fragment_key(t: &CtKey6, id: u32, direction: u8) -> FragKey6 {
        FragKey6 { saddr: t.saddr, daddr: t.daddr, id, protocol: t.protocol, direction, _pad: [0; 2] }
    }
    #[inline(always)]
    fn ipcache(self) -> IpcacheValue {
        let bytes: [u8; 16] = unsafe { core::mem::transmute(self) };
        let key = Key::new(128, bytes);
        match IPCACHE6.get(&key) {
            // NAT64: judged as the IPv4 address it embeds, by its CIDR
            // identity or the world's, never a pod's or the node's (see
            // identity::NAT64), and never as a pod of this node (the gateway,
            // not this packet, reaches it). Only a learned name is more
            // specific (toFQDNs through DNS64).
            Some(v) if v.identity == identity::NAT64 || v.identity == identity::NAT64_SHORT => {
                let prefix_len = if v.identity == identity::NAT64 { 96 } else { v.local_ifindex };
                let ipv4 = u32::from_ne_bytes(nat64_embedded_ipv4(&bytes, prefix_len));
                let embedded = ipv4.ipcache().identity;
                let cluster = embedded < FIRST_CIDR_IDENTITY && embedded != identity::WORLD;
                IpcacheValue { identity: if cluster { identity::WORLD } else { embedded }, local_ifindex: 0 }
            }
            Some(v) => *v,
            None => IpcacheValue { identity: identity::WORLD, local_ifindex: 0 },
        }
    }
    #[inline(always)]
    fn sock_tuple(t: &CtKey6) -> (bpf_sock_tuple, u32) {
        let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
        unsafe {
            let v6 = &mut tuple.__bindgen_anon_1.ipv6;
            v6.saddr = t.saddr;
            v6.daddr = t.daddr;
            v6.sport = t.sport;
            v6.dport = t.dport;
        }
        (tuple, size_of::<u32>() as u32 * 9)
    }
    #[inline(always)]
    fn proxy_key(port: u16, protocol: u8) -> u32 {
        proxy_socket_key6(port, protocol)
    }
    #[inline(always)]
    fn event_address(self) -> [u32; 4] {
        self
    }
    #[inline(always)]
    fn deliveries() -> &'static HashMap<[u32; 4], Delivery> {
        &DELIVERY6
    }
    #[inline(always)]
    fn configured(ifindex: u32, _endpoint: &EndpointInfo) -> Option<[u32; 4]> {
        pod_ipv6(ifindex)
    }
    const HOP_LIMIT: usize = ETH_HLEN + 7;
}

#[inline(always)]
fn has_ports(protocol: u8) -> bool {
    matches!(protocol, PROTO_TCP | PROTO_UDP | PROTO_SCTP)
}

#[inline(always)]
fn now() -> u64 {
    // CLOCK_MONOTONIC_COARSE: the tick's time, no clock-source read (the
    // precise clock's read_tsc was 1.4% of the busy CPU under load in
    // bench/datapath.sh's profile); deadlines are seconds, a tick 1-10 ms (HZ)
    unsafe { bpf_ktime_get_coarse_ns() }
}

#[inline(always)]
fn count_drop(reason: u8) {
    if let Some(count) = DROPS.get_ptr_mut(reason as u32) {
        // per CPU: no other writer
        unsafe { *count += 1 };
    }
}

/// Count a drop (with an event for `emit`ted reasons) and say so.
#[inline(always)]
fn shot(reason: u8) -> i32 {
    count_drop(reason);
    TC_ACT_SHOT as i32
}

#[inline(always)]
fn parse(ctx: &TcContext, direction: u8) -> Result<Parsed, i64> {
    match frame(ctx)? {
        Frame::Ipv4 => parse_ipv4(ctx, direction),
        Frame::Ipv6 => parse_ipv6(ctx, direction),
        Frame::Other(parsed) => Ok(parsed),
    }
}

/// A frame's kind, before its IP header is read.
enum Frame {
    Ipv4,
    Ipv6,
    /// ARP, or a frame to drop.
    Other(Parsed),
}

#[inline(always)]
fn frame(ctx: &TcContext) -> Result<Frame, i64> {
    // a tag the kernel already moved into the skb (skb_vlan_untag) is as
    // tagged as one still in the data
    if unsafe { (*ctx.skb.skb).vlan_present } != 0 {
        return Ok(Frame::Other(Parsed::Drop(REASON_VLAN)));
    }
    let ethertype = u16::from_be(ctx.load::<u16>(12)?);
    Ok(match ethertype {
        ETH_P_IP => Frame::Ipv4,
        ETH_P_IPV6 => Frame::Ipv6,
        ETH_P_ARP => Frame::Other(Parsed::Neighbor),
        ETH_P_8021Q | ETH_P_8021AD | ETH_P_QINQ1 => Frame::Other(Parsed::Drop(REASON_VLAN)),
        _ => Frame::Other(Parsed::Drop(REASON_ETHERTYPE)),
    })
}

/// A packet with these addresses and this upper-layer protocol, before its
/// ports are read.
#[inline(always)]
fn new_packet<A: Addr>(saddr: A, daddr: A, protocol: u8, ip_id: u32) -> Packet<A> {
    Packet {
        tuple: Tuple { saddr, daddr, sport: 0, dport: 0, protocol, _pad: [0; 3] },
        l4_byte: 0,
        syn: false,
        reply_candidate: true,
        opens: true,
        fragment: 0,
        ip_id,
        quoted: None,
        neighbor: None,
    }
}

/// A later fragment: no L4 header; it is what its first fragment was, as
/// recorded on this veth (`direction`).
#[inline(always)]
fn later_fragment<A: Addr>(mut packet: Packet<A>, direction: u8, last: bool) -> Parsed
where
    Parsed: From<Packet<A>>,
{
    let key = A::fragment_key(&packet.tuple, packet.ip_id, direction);
    let Some(first) = (unsafe { A::fragments().get(&key) }).copied() else {
        return Parsed::Drop(REASON_FRAGMENT);
    };
    if first.expires <= now() {
        return Parsed::Drop(REASON_FRAGMENT);
    }
    packet.tuple.sport = first.sport;
    packet.tuple.dport = first.dport;
    packet.reply_candidate = first.reply_candidate != 0;
    packet.opens = false;
    if last {
        packet.fragment = FRAGMENT_LAST;
    }
    Parsed::from(packet)
}

impl From<Packet<u32>> for Parsed {
    #[inline(always)]
    fn from(p: Packet<u32>) -> Parsed {
        Parsed::Ipv4(p)
    }
}

impl From<Packet<[u32; 4]>> for Parsed {
    #[inline(always)]
    fn from(p: Packet<[u32; 4]>) -> Parsed {
        Parsed::Ipv6(p)
    }
}

/// TCP, UDP and SCTP ports (and TCP flags) at `l4`.
#[inline(always)]
fn read_ports<A: Addr>(ctx: &TcContext, packet: &mut Packet<A>, l4: usize) -> Result<(), i64> {
    packet.tuple.sport = ctx.load::<u16>(l4)?;
    packet.tuple.dport = ctx.load::<u16>(l4 + 2)?;
    if packet.tuple.protocol == PROTO_TCP {
        let flags: u8 = ctx.load(l4 + 13)?;
        packet.l4_byte = flags;
        packet.syn = flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN;
        packet.reply_candidate = !packet.syn;
    }
    Ok(())
}

#[inline(always)]
fn parse_ipv4(ctx: &TcContext, direction: u8) -> Result<Parsed, i64> {
    let version_ihl: u8 = ctx.load(ETH_HLEN)?;
    if version_ihl >> 4 != 4 || version_ihl & 0x0F < 5 {
        return Ok(Parsed::Drop(REASON_MALFORMED));
    }
    let ihl = ((version_ihl & 0x0F) as usize) * 4;
    let ip_id: u16 = ctx.load(ETH_HLEN + 4)?;
    let frag: u16 = u16::from_be(ctx.load::<u16>(ETH_HLEN + 6)?);
    let protocol: u8 = ctx.load(ETH_HLEN + 9)?;
    let saddr: u32 = ctx.load(ETH_HLEN + 12)?;
    let daddr: u32 = ctx.load(ETH_HLEN + 16)?;
    let l4 = ETH_HLEN + ihl;
    let mut packet = new_packet(saddr, daddr, protocol, ip_id as u32);
    if frag & IP_OFFSET != 0 {
        return Ok(later_fragment(packet, direction, frag & IP_MF == 0));
    }
    if frag & IP_MF != 0 {
        packet.fragment = FRAGMENT_FIRST;
    }
    if has_ports(protocol) {
        read_ports(ctx, &mut packet, l4)?;
    } else if protocol == PROTO_ICMP {
        let icmp_type: u8 = ctx.load(l4)?;
        let id: u16 = ctx.load(l4 + 4)?;
        packet.l4_byte = icmp_type.wrapping_add(1);
        match icmp_type {
            ICMP_ECHO_REQUEST => {
                packet.tuple.sport = id;
                packet.reply_candidate = false;
            }
            ICMP_ECHO_REPLY => {
                packet.tuple.dport = id;
                packet.opens = false;
            }
            // errors may be related to a connection; they and the rest are
            // judged by policy otherwise, every time
            _ => {
                packet.syn = true;
                packet.reply_candidate = false;
                packet.opens = false;
                if matches!(icmp_type, ICMP_UNREACHABLE | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM) {
                    packet.quoted = quoted_tuple(ctx, l4 + 8, daddr);
                }
            }
        }
    }
    Ok(Parsed::Ipv4(packet))
}

/// An IPv6 packet: the fixed header, then up to [`MAX_EXTENSION_HEADERS`]
/// extension headers (hop-by-hop, destination options, routing without
/// segments left, AH, and last a fragment header) before the upper-layer
/// header. A routing header with segments left would send the packet on to
/// an address the policy never saw: refused, as are longer chains. The walk
/// ends at a fragment header: what follows it in a later fragment is
/// payload, not headers, so an extension header after it is refused too.
#[inline(always)]
fn parse_ipv6(ctx: &TcContext, direction: u8) -> Result<Parsed, i64> {
    let version: u8 = ctx.load(ETH_HLEN)?;
    if version >> 4 != 6 {
        return Ok(Parsed::Drop(REASON_MALFORMED));
    }
    let mut next: u8 = ctx.load(ETH_HLEN + 6)?;
    let hop_limit: u8 = ctx.load(ETH_HLEN + 7)?;
    let saddr: [u32; 4] = ctx.load(ETH_HLEN + 8)?;
    let daddr: [u32; 4] = ctx.load(ETH_HLEN + 24)?;
    let mut offset = ETH_HLEN + IPV6_HLEN;
    let mut fragment: Option<(u16, u32)> = None;
    for _ in 0..MAX_EXTENSION_HEADERS {
        let (length, last) = match next {
            NEXTHDR_HOP | NEXTHDR_DEST => ((ctx.load::<u8>(offset + 1)? as usize + 1) * 8, false),
            NEXTHDR_ROUTING => {
                if ctx.load::<u8>(offset + 3)? != 0 {
                    return Ok(Parsed::Drop(REASON_MALFORMED));
                }
                ((ctx.load::<u8>(offset + 1)? as usize + 1) * 8, false)
            }
            NEXTHDR_FRAGMENT => {
                let offset_flags = u16::from_be(ctx.load::<u16>(offset + 2)?);
                fragment = Some((offset_flags, ctx.load::<u32>(offset + 4)?));
                (8, true)
            }
            NEXTHDR_AUTH => ((ctx.load::<u8>(offset + 1)? as usize + 2) * 4, false),
            _ => break,
        };
        next = ctx.load(offset)?;
        offset += length;
        if last {
            break;
        }
    }
    if matches!(next, NEXTHDR_HOP | NEXTHDR_DEST | NEXTHDR_ROUTING | NEXTHDR_FRAGMENT | NEXTHDR_AUTH) {
        return Ok(Parsed::Drop(REASON_MALFORMED));
    }
    let (offset_flags, ip_id) = fragment.unwrap_or((0, 0));
    let mut packet = new_packet(saddr, daddr, next, ip_id);
    // the fragment offset is in the upper 13 bits; M is bit 0
    if offset_flags & 0xFFF8 != 0 {
        return Ok(later_fragment(packet, direction, offset_flags & 1 == 0));
    }
    if offset_flags & 1 != 0 {
        packet.fragment = FRAGMENT_FIRST;
    }
    let l4 = offset;
    if has_ports(next) {
        read_ports(ctx, &mut packet, l4)?;
    } else if next == PROTO_ICMPV6 {
        let icmp_type: u8 = ctx.load(l4)?;
        packet.l4_byte = icmp_type.wrapping_add(1);
        match icmp_type {
            ICMPV6_MLD_QUERY..=ICMPV6_REDIRECT | ICMPV6_MLD2_REPORT => {
                packet.syn = true;
                packet.reply_candidate = false;
                packet.opens = false;
                packet.neighbor = Some((icmp_type, hop_limit));
            }
            ICMPV6_ECHO_REQUEST => {
                packet.tuple.sport = ctx.load(l4 + 4)?;
                packet.reply_candidate = false;
            }
            ICMPV6_ECHO_REPLY => {
                packet.tuple.dport = ctx.load(l4 + 4)?;
                packet.opens = false;
            }
            _ => {
                packet.syn = true;
                packet.reply_candidate = false;
                packet.opens = false;
                if matches!(
                    icmp_type,
                    ICMPV6_UNREACHABLE | ICMPV6_PACKET_TOO_BIG | ICMPV6_TIME_EXCEEDED | ICMPV6_PARAMETER_PROBLEM
                ) {
                    packet.quoted = quoted_tuple6(ctx, l4 + 8, daddr);
                }
            }
        }
    }
    Ok(Parsed::Ipv6(packet))
}

#[inline(always)]
fn is_link_local(a: &[u32; 4]) -> bool {
    let bytes = a[0].to_ne_bytes();
    bytes[0] == 0xfe && bytes[1] & 0xc0 == 0x80
}

/// A multicast group of link-local scope (or narrower): never routed.
#[inline(always)]
fn is_link_multicast(a: &[u32; 4]) -> bool {
    let bytes = a[0].to_ne_bytes();
    bytes[0] == 0xff && bytes[1] & 0x0f <= 2
}

/// Whether a pod's neighbour discovery or MLD message (`neighbor`: type and
/// hop limit) stays on the link and passes as ARP does: a solicitation or
/// advertisement with hop limit 255, or an MLD report with 1 (what receivers
/// accept, RFC 4861, 2710), from the pod's own address, its link-local one or
/// `::`, to a link-local address, a link-scope group or the node (a gateway
/// with a global address). Router advertisements, redirects and MLD queries
/// are not a pod's to send; they, and anything that could be routed on, are
/// judged as any ICMPv6.
#[inline(always)]
fn neighbor_from_pod<A: Addr>(neighbor: (u8, u8), t: &Tuple<A>, own: A) -> bool {
    let (icmp_type, hop_limit) = neighbor;
    let wanted = match icmp_type {
        ICMPV6_ROUTER_SOLICITATION | ICMPV6_NEIGHBOR_SOLICITATION | ICMPV6_NEIGHBOR_ADVERTISEMENT => 255,
        ICMPV6_MLD_REPORT | ICMPV6_MLD_DONE | ICMPV6_MLD2_REPORT => 1,
        _ => return false,
    };
    let (src, dst) = (t.saddr.event_address(), t.daddr.event_address());
    let source_ok = t.saddr == own || is_link_local(&src) || src == [0; 4];
    let destination_ok = is_link_local(&dst)
        || is_link_multicast(&dst)
        || (wanted == 255 && t.daddr.ipcache().identity == identity::HOST);
    hop_limit == wanted && source_ok && destination_ok
}

/// The same for what a pod receives: neighbour discovery with hop limit 255
/// (forwarded, it would have less), MLD with 1 to a link-scope group.
#[inline(always)]
fn neighbor_to_pod<A: Addr>(neighbor: (u8, u8), t: &Tuple<A>) -> bool {
    match neighbor {
        (ICMPV6_ROUTER_SOLICITATION..=ICMPV6_REDIRECT, 255) => true,
        (ICMPV6_MLD_QUERY..=ICMPV6_MLD_DONE | ICMPV6_MLD2_REPORT, 1) => is_link_multicast(&t.daddr.event_address()),
        _ => false,
    }
}

/// The tuple of the IPv6 packet an ICMPv6 error quotes at `offset`, when it
/// was sent by `to` and its ports can be read: past the extension headers
/// the packet parser walks too (a packet too big about a fragmented
/// datagram quotes its Fragment header), and only in a first fragment.
#[inline(always)]
fn quoted_tuple6(ctx: &TcContext, offset: usize, to: [u32; 4]) -> Option<CtKey6> {
    let version: u8 = ctx.load(offset).ok()?;
    let mut protocol: u8 = ctx.load(offset + 6).ok()?;
    let saddr: [u32; 4] = ctx.load(offset + 8).ok()?;
    let daddr: [u32; 4] = ctx.load(offset + 24).ok()?;
    if version >> 4 != 6 || saddr != to {
        return None;
    }
    let mut l4 = offset + IPV6_HLEN;
    for _ in 0..MAX_EXTENSION_HEADERS {
        let length = match protocol {
            NEXTHDR_HOP | NEXTHDR_DEST | NEXTHDR_ROUTING => (ctx.load::<u8>(l4 + 1).ok()? as usize + 1) * 8,
            // a later fragment quotes payload where the ports would be
            NEXTHDR_FRAGMENT if u16::from_be(ctx.load::<u16>(l4 + 2).ok()?) & 0xFFF8 != 0 => return None,
            NEXTHDR_FRAGMENT => 8,
            NEXTHDR_AUTH => (ctx.load::<u8>(l4 + 1).ok()? as usize + 2) * 4,
            _ => break,
        };
        protocol = ctx.load(l4).ok()?;
        l4 += length;
    }
    if !has_ports(protocol) {
        return None;
    }
    let sport: u16 = ctx.load(l4).ok()?;
    let dport: u16 = ctx.load(l4 + 2).ok()?;
    Some(Tuple { saddr, daddr, sport, dport, protocol, _pad: [0; 3] })
}

/// The tuple of the IPv4 packet an ICMP error quotes at `offset`, if it is
/// whole enough to say (header and ports of TCP, UDP, SCTP) and was sent by
/// the error's destination `to`.
#[inline(always)]
fn quoted_tuple(ctx: &TcContext, offset: usize, to: u32) -> Option<CtKey> {
    let version_ihl: u8 = ctx.load(offset).ok()?;
    if version_ihl >> 4 != 4 || version_ihl & 0x0F < 5 {
        return None;
    }
    let protocol: u8 = ctx.load(offset + 9).ok()?;
    let saddr: u32 = ctx.load(offset + 12).ok()?;
    let daddr: u32 = ctx.load(offset + 16).ok()?;
    // a later fragment quotes payload where the ports would be
    let fragment_offset = u16::from_be(ctx.load::<u16>(offset + 6).ok()?) & IP_OFFSET;
    if !has_ports(protocol) || saddr != to || fragment_offset != 0 {
        return None;
    }
    let l4 = offset + ((version_ihl & 0x0F) as usize) * 4;
    let sport: u16 = ctx.load(l4).ok()?;
    let dport: u16 = ctx.load(l4 + 2).ok()?;
    Some(CtKey { saddr, daddr, sport, dport, protocol, _pad: [0; 3] })
}

/// An ICMP error about a live connection's packet.
#[inline(always)]
fn related_error<A: Addr>(packet: &Packet<A>) -> bool {
    match &packet.quoted {
        Some(quoted) => ct_live(quoted).is_some() || ct_live(&quoted.reversed()).is_some(),
        None => false,
    }
}

/// Remember a first fragment's ports on this veth (`direction`) for the rest
/// of its datagram, charged to `owner`. Called before the fragment is
/// judged, so one refused for want of room opens no connection and writes
/// no allow flow; the caller forgets the record if the fragment does not
/// pass. `Err(reason)`: no room; the caller drops the first fragment, as its
/// datagram could not be delivered whole.
#[inline(always)]
fn fragment_record<A: Addr>(packet: &Packet<A>, direction: u8, owner: u32) -> Result<(), u8> {
    let t = &packet.tuple;
    let key = A::fragment_key(t, packet.ip_id, direction);
    let expires = now() + conntrack::FRAGMENT_SECS as u64 * NANOS;
    let mut value = FragValue {
        sport: t.sport,
        dport: t.dport,
        reply_candidate: packet.reply_candidate as u32,
        owner,
        _pad: 0,
        expires,
    };
    if let Some(record) = unsafe { A::fragments().get(&key) } {
        // the first fragment again (resent, or the id reused): its holder
        // keeps it, in one update (as ct_open restarts an entry)
        value.owner = record.owner;
        if A::fragments().insert(&key, &value, BPF_EXIST as u64).is_ok() {
            return Ok(());
        }
        // weir's collector took it meanwhile: a new record, charged to `owner`
        value.owner = owner;
    }
    let limit = setting_or(settings().fragments_per_endpoint, conntrack::FRAGMENT_PER_ENDPOINT);
    let usage = charge(&FRAG_USAGE, &FRAG_FREED, owner, limit, REASON_FRAG_LIMIT)?;
    insert_charged(A::fragments(), &key, &value, usage, REASON_FRAG_FULL)
}

/// Insert a new entry already charged to its owner (`usage`); where another
/// CPU inserted it first, or there is no room (`full_reason`), the charge is
/// taken back.
#[inline(always)]
fn insert_charged<K, V>(
    map: &HashMap<K, V>,
    key: &K,
    value: &V,
    usage: *mut CtUsage,
    full_reason: u8,
) -> Result<(), u8> {
    match map.insert(key, value, BPF_NOEXIST as u64) {
        Ok(()) => Ok(()),
        Err(e) => {
            add(unsafe { &mut (*usage).reclaimed }, 1);
            if e == -EEXIST {
                Ok(())
            } else {
                add(unsafe { &mut (*usage).refused }, 1);
                Err(full_reason)
            }
        }
    }
}

/// Forget a datagram's record on this veth and release its charge: at its
/// last fragment, or when its first did not pass after all.
#[inline(always)]
fn fragment_forget<A: Addr>(packet: &Packet<A>, direction: u8) {
    let key = A::fragment_key(&packet.tuple, packet.ip_id, direction);
    if let Some(record) = unsafe { A::fragments().get(&key) } {
        let holder = record.owner;
        // of two CPUs deleting it, one releases it
        if A::fragments().remove(&key).is_ok() {
            release(&FRAG_USAGE, holder);
        }
    }
}

/// After a fragment was judged: its record goes at the last fragment that
/// passes, or with a first fragment that does not.
#[inline(always)]
fn fragment_judged<A: Addr>(packet: &Packet<A>, direction: u8, passed: bool) {
    let finished = match packet.fragment {
        FRAGMENT_LAST => passed,
        FRAGMENT_FIRST => !passed,
        _ => false,
    };
    if finished {
        fragment_forget(packet, direction);
    }
}

/// Read once per packet, before its policy lookups: an entry opened or
/// re-judged is stamped with the revision its lookups belonged to.
#[inline(always)]
fn revision() -> u32 {
    REVISION.get(0).copied().unwrap_or(0)
}

#[inline(always)]
fn settings() -> Settings {
    SETTINGS.get(0).copied().unwrap_or_default()
}

/// A SETTINGS field, where 0 means `default` (a weir that does not set it).
#[inline(always)]
fn setting_or(value: u32, default: u32) -> u32 {
    if value == 0 { default } else { value }
}

/// A lifetime in seconds from SETTINGS, in nanoseconds.
#[inline(always)]
fn or_default(value: u32, default: u32) -> u64 {
    setting_or(value, default) as u64 * NANOS
}

/// How long an entry in this state lives without traffic.
#[inline(always)]
fn lifetime(protocol: u8, tcp: u32) -> u64 {
    let s = settings();
    match protocol {
        PROTO_TCP if tcp & TCP_CLOSING != 0 => or_default(s.tcp_closing_secs, conntrack::TCP_CLOSING_SECS),
        PROTO_TCP if tcp & TCP_ESTABLISHED != 0 => or_default(s.tcp_established_secs, conntrack::TCP_ESTABLISHED_SECS),
        PROTO_TCP => or_default(s.tcp_syn_secs, conntrack::TCP_SYN_SECS),
        PROTO_UDP => or_default(s.udp_secs, conntrack::UDP_SECS),
        PROTO_ICMP | PROTO_ICMPV6 => or_default(s.icmp_secs, conntrack::ICMP_SECS),
        _ => or_default(s.other_secs, conntrack::OTHER_SECS),
    }
}

/// The live entry for `key`; an expired one is absent.
#[inline(always)]
fn ct_live<A: Addr>(key: &Tuple<A>) -> Option<*mut CtValue> {
    let entry = A::conntrack().get_ptr_mut(key)?;
    if unsafe { (*entry).expires } <= now() { None } else { Some(entry) }
}

/// A packet of a tracked connection passed: advance its TCP state and its
/// deadline. `reply`: the packet goes the way the connection's replies go.
#[inline(always)]
fn ct_touch<A: Addr>(entry: *mut CtValue, packet: &Packet<A>, reply: bool) {
    let protocol = packet.tuple.protocol;
    let mut tcp = unsafe { (*entry).tcp };
    if protocol == PROTO_TCP {
        let flags = packet.l4_byte;
        if reply {
            tcp |= TCP_REPLY_SEEN;
        }
        if flags & TCP_FLAG_RST != 0 {
            tcp |= TCP_CLOSING;
        }
        if flags & TCP_FLAG_FIN != 0 {
            tcp |= if reply { TCP_FIN_REPLY } else { TCP_FIN_FORWARD };
        }
        if tcp & (TCP_FIN_FORWARD | TCP_FIN_REPLY) == TCP_FIN_FORWARD | TCP_FIN_REPLY {
            tcp |= TCP_CLOSING;
        }
        // both sides have sent something past the handshake's SYNs
        if flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_ACK && tcp & TCP_REPLY_SEEN != 0 {
            tcp |= TCP_ESTABLISHED;
        }
    }
    let expires = now() + lifetime(protocol, tcp);
    // write only what changes the entry by a second or more: every packet of
    // a busy connection would otherwise store into one shared cache line
    // from both veths' CPUs (a deadline may end up to 1 s early)
    let (old_tcp, old_expires) = unsafe { ((*entry).tcp, (*entry).expires) };
    if tcp == old_tcp && expires < old_expires + NANOS {
        return;
    }
    unsafe {
        (*entry).tcp = tcp;
        (*entry).expires = expires;
    }
}

/// Whether the entry's connection was judged under the policy in force.
#[inline(always)]
fn ct_current(entry: *mut CtValue, revision: u32) -> bool {
    unsafe { (*entry).revision == revision }
}

/// A packet of a tracked connection was judged again and passed: later ones
/// may pass on the entry alone until the policy changes.
#[inline(always)]
fn ct_judged(entry: *mut CtValue, revision: u32) {
    if unsafe { (*entry).revision } != revision {
        unsafe { (*entry).revision = revision };
    }
}

#[inline(always)]
fn add(counter: &mut u64, n: u64) {
    // programs on other CPUs update the same endpoint's usage
    // the result stays unused: LLVM emits BPF's plain atomic add (XADD)
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, n) };
}

/// Count one more entry for `owner` in `usage` (conntrack's or the
/// fragment records'), unless it holds `limit` (`limit_reason`).
#[inline(always)]
fn charge(
    usage: &HashMap<u32, CtUsage>,
    freed: &HashMap<u32, u64>,
    owner: u32,
    limit: u32,
    limit_reason: u8,
) -> Result<*mut CtUsage, u8> {
    let counts = match usage.get_ptr_mut(&owner) {
        Some(counts) => counts,
        None => {
            let _ = usage.insert(&owner, &CtUsage::default(), BPF_NOEXIST as u64);
            usage.get_ptr_mut(&owner).ok_or(limit_reason)?
        }
    };
    let freed = unsafe { freed.get(&owner) }.copied().unwrap_or(0);
    let limit = limit as u64;
    let u = unsafe { &mut *counts };
    // racing CPUs may each pass the check: the limit holds to within one
    // entry per CPU. A count that went below zero (a race with the
    // collector) reads as empty, never as full.
    let gone = u.reclaimed + freed;
    let used = if u.created > gone { u.created - gone } else { 0 };
    if used >= limit {
        add(&mut u.refused, 1);
        return Err(limit_reason);
    }
    add(&mut u.created, 1);
    Ok(counts)
}

#[inline(always)]
fn release(usage: &HashMap<u32, CtUsage>, owner: u32) {
    if let Some(usage) = usage.get_ptr_mut(&owner) {
        add(unsafe { &mut (*usage).reclaimed }, 1);
    }
}

#[inline(always)]
fn charge_conntrack(owner: u32) -> Result<*mut CtUsage, u8> {
    let limit = setting_or(settings().ct_per_endpoint, conntrack::PER_ENDPOINT);
    charge(&CT_USAGE, &CT_FREED, owner, limit, REASON_CT_LIMIT)
}

/// Record a new connection charged to `owner` (the endpoint whose veth
/// judged it), or restart the entry of a reused tuple. `Err(reason)`: no
/// room; the caller drops the packet, since its replies could not pass.
#[inline(always)]
fn ct_open<A: Addr>(t: &Tuple<A>, flags: u32, src: u32, dst: u32, owner: u32, revision: u32) -> Result<(), u8> {
    let mut value = CtValue { flags, src_identity: src, dst_identity: dst, owner, expires: 0, tcp: 0, revision };
    value.expires = now() + lifetime(t.protocol, 0);
    if let Some(entry) = A::conntrack().get_ptr_mut(t) {
        // the tuple's old entry (expired, closing, or a restarted handshake),
        // replaced in one update: weir's collector may delete it between
        // this look and a write through the pointer, which would land in a
        // deleted element while the collector releases `previous`
        let previous = unsafe { (*entry).owner };
        let charged = if previous != owner { Some(charge_conntrack(owner)?) } else { None };
        if A::conntrack().insert(t, &value, BPF_EXIST as u64).is_ok() {
            if charged.is_some() {
                release(&CT_USAGE, previous);
            }
            return Ok(());
        }
        // the collector took it meanwhile (and released its owner): a new
        // entry, on the charge made above or one made now
        let usage = match charged {
            Some(usage) => usage,
            None => charge_conntrack(owner)?,
        };
        return insert_charged(A::conntrack(), t, &value, usage, REASON_CT_FULL);
    }
    let usage = charge_conntrack(owner)?;
    insert_charged(A::conntrack(), t, &value, usage, REASON_CT_FULL)
}

#[inline(always)]
fn ipcache<A: Addr>(addr: A) -> IpcacheValue {
    addr.ipcache()
}

/// How strict a verdict is: of a connection's two sides, the stricter
/// decides (a drop, then the proxy, then the proxy if it can, then an audit).
#[inline(always)]
fn strictness(verdict: u8) -> u8 {
    match verdict {
        VERDICT_DENY => 5,
        VERDICT_REDIRECT => 4,
        VERDICT_REDIRECT_OR_ALLOW => 3,
        VERDICT_AUDIT => 2,
        _ => 1,
    }
}

/// The event of a connection a verdict lets through.
#[inline(always)]
fn allow_event(verdict: u8) -> u8 {
    if verdict == VERDICT_AUDIT { EVENT_AUDIT } else { EVENT_ALLOW }
}

/// The policy verdict for `subject` (an endpoint with `flags`) and `peer`
/// for the packet of tuple `t` (and, for ICMP, its `l4_byte`: type + 1).
#[inline(always)]
fn policy<A: Addr>(subject: u32, flags: u32, peer: u32, t: &Tuple<A>, l4_byte: u8, direction: u8) -> PolicyValue {
    let enforced = if direction == DIR_INGRESS { ENDPOINT_ENFORCE_INGRESS } else { ENDPOINT_ENFORCE_EGRESS };
    if flags & enforced == 0 {
        return PolicyValue { verdict: VERDICT_ALLOW, _pad: 0, proxy_port: 0, rule: 0 };
    }
    // ICMP's id rides in the tuple's ports; policy keys it by type
    // (`icmps` rules; entries exist only where a rule names a type)
    let port = if has_ports(t.protocol) {
        u16::from_be(t.dport)
    } else if matches!(t.protocol, PROTO_ICMP | PROTO_ICMPV6) {
        u16::from(l4_byte)
    } else {
        0
    };
    let mut key = PolicyKey { subject, peer, port, protocol: t.protocol, direction };
    // exact port, then every port of the protocol, then every protocol
    if let Some(v) = unsafe { POLICY.get(&key) } {
        return *v;
    }
    key.port = 0;
    if let Some(v) = unsafe { POLICY.get(&key) } {
        return *v;
    }
    key.protocol = 0;
    if let Some(v) = unsafe { POLICY.get(&key) } {
        return *v;
    }
    // default deny; an audit where only audited rules make it; nothing
    // where only visibility looks
    let (audit_only, observe_only) = if direction == DIR_INGRESS {
        (ENDPOINT_AUDIT_INGRESS, ENDPOINT_OBSERVE_INGRESS)
    } else {
        (ENDPOINT_AUDIT_EGRESS, ENDPOINT_OBSERVE_EGRESS)
    };
    let verdict = if flags & audit_only != 0 {
        VERDICT_AUDIT
    } else if flags & observe_only != 0 {
        VERDICT_ALLOW
    } else {
        VERDICT_DENY
    };
    PolicyValue { verdict, _pad: 0, proxy_port: 0, rule: 0 }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn emit<A: Addr>(
    kind: u8,
    reason: u8,
    direction: u8,
    t: &Tuple<A>,
    src: u32,
    dst: u32,
    ifindex: u32,
    rule: u32,
    l4_byte: u8,
) {
    // written in place in the ring, not built on the stack and copied: the
    // programs are near BPF's 512-byte stack. A full ring loses the event,
    // never the decision.
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else { return };
    entry.write(Event {
        kind,
        reason,
        direction,
        protocol: t.protocol,
        sport: u16::from_be(t.sport),
        dport: u16::from_be(t.dport),
        src_identity: src,
        dst_identity: dst,
        ifindex,
        rule,
        family: A::FAMILY,
        l4_byte: if matches!(t.protocol, PROTO_ICMP | PROTO_ICMPV6) { l4_byte } else { 0 },
        _pad: [0; 2],
        saddr: t.saddr.event_address(),
        daddr: t.daddr.event_address(),
    });
    entry.submit(0);
}

/// Hand a TCP packet to the proxy: the socket that already owns the 4-tuple
/// (an accepted connection, or the proxy's own upstream connection for
/// replies), or for a new connection the proxy's listener.
#[inline(always)]
fn assign_to_proxy<A: Addr>(ctx: &TcContext, t: &Tuple<A>, proxy_port: u16) -> bool {
    let (mut tuple, size) = A::sock_tuple(t);
    let skb = ctx.skb.skb as *mut _;
    let sk = unsafe { bpf_skc_lookup_tcp(skb, &mut tuple, size, BPF_F_CURRENT_NETNS as u64, 0) };
    if !sk.is_null() {
        let state = unsafe { (*sk).state };
        if state != BPF_TCP_LISTEN {
            let assigned = unsafe { bpf_sk_assign(skb, sk as *mut _, 0) } == 0;
            unsafe { bpf_sk_release(sk as *mut _) };
            return assigned;
        }
        unsafe { bpf_sk_release(sk as *mut _) };
    }
    if proxy_port == 0 {
        return false;
    }
    assign_to_proxy_socket(ctx, A::proxy_key(proxy_port, PROTO_TCP))
}

/// Hand a packet to the proxy socket registered under `key` (a TCP listener,
/// or the transparent UDP socket of the DNS proxy).
#[inline(always)]
fn assign_to_proxy_socket(ctx: &TcContext, key: u32) -> bool {
    let socket = unsafe {
        bpf_map_lookup_elem(&PROXY_SOCKS as *const _ as *mut _, &key as *const u32 as *const _) as *mut bpf_sock
    };
    if socket.is_null() {
        return false;
    }
    let assigned = unsafe { bpf_sk_assign(ctx.skb.skb as *mut _, socket as *mut _, 0) } == 0;
    unsafe { bpf_sk_release(socket as *mut _) };
    assigned
}

#[inline(always)]
fn host_routing() -> bool {
    unsafe { core::ptr::read_volatile(&HOST_ROUTING) != 0 }
}

/// A unicast neighbour message (ARP, IPv6 neighbour discovery) between the
/// pod and the node on this veth — the pod's answer to the node's lookup,
/// or the node's answer to the pod's — names both MACs: learn where to
/// deliver to the pod's configured `address`. `to_pod`: the node sent it.
/// A pod that lies here misdirects only what is sent to itself.
#[inline(always)]
fn learn_delivery<A: Addr>(ctx: &TcContext, ifindex: u32, address: &A, to_pod: bool) {
    if !host_routing() {
        return;
    }
    let Ok(eth) = ctx.load::<[u8; 12]>(0) else { return };
    // a broadcast or multicast destination names no one's MAC
    if eth[0] & 1 != 0 {
        return;
    }
    // what the pod receives goes to its MAC, from the node's
    let (pod, node) = if to_pod { (&eth[..6], &eth[6..]) } else { (&eth[6..], &eth[..6]) };
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(pod);
    macs[6..].copy_from_slice(node);
    let learned = Delivery { ifindex, macs };
    if unsafe { A::deliveries().get(address) } != Some(&learned) {
        let _ = A::deliveries().insert(address, &learned, 0);
    }
}

/// Pass an allowed packet addressed to a pod on this node. With host
/// routing on, hand it straight into the pod (`bpf_redirect_peer` into its
/// veth's peer): past the node's routing, netfilter and the pod's
/// `weir_to_pod`, whose judgement this veth already made (CT_DEST_JUDGED).
/// As a router would: link addresses rewritten, TTL (hop limit) one less.
/// Only when both ends are learned (so both directions of a connection
/// switch at once: the node's conntrack never sees half of one), the
/// receiver is the pod configured with that address (on the veth the
/// policy named, `expected`, and with the `identity` it judged, where
/// given), and the frame was addressed to the node. Otherwise — or for a
/// TTL about to run out, whose ICMP error is the node's to send — the node
/// routes it as before.
#[inline(always)]
fn to_local_pod<A: Addr>(ctx: &TcContext, ifindex: u32, t: &Tuple<A>, expected: u32, identity: u32) -> i32 {
    if !host_routing() {
        return TC_ACT_OK as i32;
    }
    // a frame not addressed to the node's MAC: its routing drops it
    if unsafe { (*ctx.skb.skb).pkt_type } != PACKET_HOST {
        return TC_ACT_OK as i32;
    }
    let Some(to) = (unsafe { A::deliveries().get(&t.daddr) }).copied() else {
        return TC_ACT_OK as i32;
    };
    if expected != 0 && to.ifindex != expected {
        return TC_ACT_OK as i32;
    }
    if unsafe { A::deliveries().get(&t.saddr) }.is_none_or(|from| from.ifindex != ifindex) {
        return TC_ACT_OK as i32;
    }
    let Some(receiver) = (unsafe { ENDPOINTS.get(&to.ifindex) }).copied() else {
        return TC_ACT_OK as i32;
    };
    if receiver.flags & ENDPOINT_PEER_DELIVERY == 0
        || (identity != 0 && receiver.identity != identity)
        || A::configured(to.ifindex, &receiver) != Some(t.daddr)
    {
        return TC_ACT_OK as i32;
    }
    let Ok(hops) = ctx.load::<u8>(A::HOP_LIMIT) else { return TC_ACT_OK as i32 };
    if hops <= 1 {
        return TC_ACT_OK as i32;
    }
    if A::FAMILY == FAMILY_IPV4 {
        // TTL and protocol are one 16-bit word of the header checksum (both
        // as on the wire: the TTL is the word's first byte)
        let Ok(word) = ctx.load::<[u8; 2]>(A::HOP_LIMIT) else { return TC_ACT_OK as i32 };
        let old = u16::from_ne_bytes(word) as u64;
        let new = u16::from_ne_bytes([hops - 1, word[1]]) as u64;
        if ctx.l3_csum_replace(ETH_HLEN + 10, old, new, 2).is_err() {
            return TC_ACT_OK as i32;
        }
    }
    if ctx.store(A::HOP_LIMIT, &(hops - 1), 0).is_err() || ctx.store(0, &to.macs, 0).is_err() {
        // the checksum may be rewritten already: not a packet to route on
        return shot(REASON_MALFORMED);
    }
    // what the node's path clears when a packet crosses into the pod's
    // namespace, and the peer redirect does not: the mark (it means nothing
    // past the node), the sender's timestamp and priority
    ctx.set_mark(0);
    unsafe {
        (*ctx.skb.skb).tstamp = 0;
        (*ctx.skb.skb).priority = 0;
    }
    unsafe { bpf_redirect_peer(to.ifindex, 0) as i32 }
}

/// The pod behind this veth, or `Err`: not ours to judge (another
/// program's interface: UNSPEC lets the next program decide).
#[inline(always)]
fn pod_endpoint(ctx: &TcContext) -> Result<(u32, EndpointInfo), i32> {
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    match unsafe { ENDPOINTS.get(&ifindex) } {
        Some(endpoint) => Ok((ifindex, *endpoint)),
        None => Err(TC_ACT_UNSPEC),
    }
}

/// A frame that is not an IP packet to judge: ARP and neighbour discovery
/// pass, anything else is dropped and counted.
#[inline(always)]
fn not_judged(ctx: &TcContext, parsed: Parsed, direction: u8, ifindex: u32, endpoint: &EndpointInfo) -> i32 {
    match parsed {
        Parsed::Drop(reason) => {
            if reason != REASON_IPV6 {
                // the ethertype rides in the port field, for the flow record
                let ethertype = u16::from_be(ctx.load::<u16>(12).unwrap_or(0));
                let t = CtKey { dport: ethertype.to_be(), ..CtKey::default() };
                let (src, dst) = if direction == DIR_EGRESS { (endpoint.identity, 0) } else { (0, endpoint.identity) };
                emit(EVENT_DROP, reason, direction, &t, src, dst, ifindex, 0, 0);
            }
            shot(reason)
        }
        _ => TC_ACT_OK as i32,
    }
}

/// The pod's IPv6 address; none: the pod has no IPv6 to send or receive
/// but neighbour discovery (which passed before this).
#[inline(always)]
fn pod_ipv6(ifindex: u32) -> Option<[u32; 4]> {
    unsafe { ENDPOINTS6.get(&ifindex) }.copied()
}

#[classifier]
pub fn weir_from_pod(ctx: TcContext) -> i32 {
    from_pod(&ctx).unwrap_or_else(|_| shot(REASON_MALFORMED))
}

#[inline(always)]
fn from_pod(ctx: &TcContext) -> Result<i32, i64> {
    let (ifindex, endpoint) = match pod_endpoint(ctx) {
        Ok(found) => found,
        Err(action) => return Ok(action),
    };
    Ok(match frame(ctx)? {
        Frame::Ipv4 => from_pod_ipv4(ctx, ifindex, &endpoint),
        Frame::Ipv6 => from_pod_ipv6(ctx, ifindex, &endpoint),
        // ARP passes (and tells where the pod is), the rest is dropped
        Frame::Other(Parsed::Neighbor) => {
            if endpoint.ipv4 != 0 {
                learn_delivery(ctx, ifindex, &endpoint.ipv4, false);
            }
            TC_ACT_OK as i32
        }
        Frame::Other(other) => not_judged(ctx, other, DIR_EGRESS, ifindex, &endpoint),
    })
}

/// Everything is inlined into one frame: BPF-to-BPF calls here made LLVM
/// read argument registers after a `memset` call had clobbered them (the
/// verifier refused it: "R3 !read_ok"). The IPv6 packet lives in a per-CPU
/// map ([`PACKET6`]) to keep the frame under BPF's 512 bytes.
#[inline(always)]
fn from_pod_ipv4(ctx: &TcContext, ifindex: u32, endpoint: &EndpointInfo) -> i32 {
    match parse_ipv4(ctx, DIR_EGRESS) {
        Err(_) => shot(REASON_MALFORMED),
        // a pod without an IPv4 address sends none
        Ok(Parsed::Ipv4(_)) if endpoint.ipv4 == 0 => shot(REASON_SPOOFED),
        Ok(Parsed::Ipv4(packet)) => from_pod_packet(ctx, ifindex, endpoint, &endpoint.ipv4, &packet),
        Ok(other) => not_judged(ctx, other, DIR_EGRESS, ifindex, endpoint),
    }
}

#[inline(always)]
fn from_pod_ipv6(ctx: &TcContext, ifindex: u32, endpoint: &EndpointInfo) -> i32 {
    match parse_ipv6(ctx, DIR_EGRESS) {
        Err(_) => shot(REASON_MALFORMED),
        Ok(Parsed::Ipv6(parsed)) => {
            let Some(packet) = PACKET6.get_ptr_mut(0) else { return shot(REASON_MALFORMED) };
            // SAFETY: this CPU's slot, used by this program only, one packet at a time
            let packet = unsafe {
                *packet = parsed;
                &*packet
            };
            match pod_ipv6(ifindex) {
                Some(address) => from_pod_packet(ctx, ifindex, endpoint, &address, packet),
                None => shot(REASON_IPV6),
            }
        }
        Ok(other) => not_judged(ctx, other, DIR_EGRESS, ifindex, endpoint),
    }
}

#[inline(always)]
fn from_pod_packet<A: Addr>(
    ctx: &TcContext,
    ifindex: u32,
    endpoint: &EndpointInfo,
    address: &A,
    packet: &Packet<A>,
) -> i32 {
    let address = *address;
    if packet.neighbor.is_some_and(|n| neighbor_from_pod(n, &packet.tuple, address)) {
        learn_delivery(ctx, ifindex, &address, false);
        return TC_ACT_OK as i32;
    }
    if packet.fragment == FRAGMENT_FIRST {
        if let Err(reason) = fragment_record(packet, DIR_EGRESS, ifindex) {
            emit(EVENT_DROP, reason, DIR_EGRESS, &packet.tuple, endpoint.identity, 0, ifindex, 0, packet.l4_byte);
            return shot(reason);
        }
    }
    let action = judge_from_pod(ctx, ifindex, endpoint, address, packet);
    fragment_judged(packet, DIR_EGRESS, action == TC_ACT_OK as i32 || action == TC_ACT_REDIRECT);
    action
}

#[inline(always)]
fn judge_from_pod<A: Addr>(
    ctx: &TcContext,
    ifindex: u32,
    endpoint: &EndpointInfo,
    address: A,
    packet: &Packet<A>,
) -> i32 {
    let t = &packet.tuple;
    let me = endpoint.identity;
    if t.saddr != address {
        // a pod may only send from its own address
        emit(EVENT_DROP, REASON_SPOOFED, DIR_EGRESS, t, me, 0, ifindex, 0, packet.l4_byte);
        return shot(REASON_SPOOFED);
    }

    // Replies to a connection opened toward this pod.
    if packet.reply_candidate
        && let Some(ct) = ct_live(&t.reversed())
    {
        ct_touch(ct, packet, true);
        if unsafe { (*ct).flags } & CT_PROXIED != 0 {
            // the proxy opened it (upstream leg of a proxied request)
            ctx.set_mark(to_proxy_mark(me));
            if t.protocol == PROTO_TCP {
                assign_to_proxy(ctx, t, 0);
            }
            return TC_ACT_OK as i32;
        }
        ctx.set_mark(identity_mark(me));
        // opened by another pod's veth (by this one's weir_to_pod, the
        // owner is this pod): that pod is on this node
        let opener = unsafe { (*ct).owner };
        if opener != ifindex {
            return to_local_pod(ctx, ifindex, t, opener, unsafe { (*ct).src_identity });
        }
        return TC_ACT_OK as i32;
    }
    // a pod reports errors only about packets sent to it (it routes none):
    // an error quoting someone else's packet is judged by policy
    if packet.quoted.is_some_and(|q| q.daddr == t.saddr) && related_error(packet) {
        ctx.set_mark(identity_mark(me));
        // the way its connection's packets go, when that is past the node
        return to_local_pod(ctx, ifindex, t, 0, 0);
    }

    let existing = ct_live(t);
    // a SYN starts over, even on a tuple with an entry
    let opening = packet.syn || existing.is_none();
    let revision = revision();
    // the fast path: a connection judged under the policy in force passes on
    // its entry (the ipcache and policy lookups are what it saves)
    if let Some(ct) = existing
        && !opening
        && ct_current(ct, revision)
    {
        let proxied = unsafe { (*ct).flags } & CT_PROXIED != 0;
        if !proxied {
            ct_touch(ct, packet, false);
            ctx.set_mark(identity_mark(me));
            if unsafe { (*ct).flags } & CT_DEST_JUDGED != 0 {
                return to_local_pod(ctx, ifindex, t, 0, unsafe { (*ct).dst_identity });
            }
            return TC_ACT_OK as i32;
        }
        // the proxy's accepted socket for this tuple; none (the proxy went
        // away): judged below like any packet
        if t.protocol == PROTO_TCP && assign_to_proxy(ctx, t, 0) {
            ct_touch(ct, packet, false);
            ctx.set_mark(to_proxy_mark(me));
            return TC_ACT_OK as i32;
        }
    }
    let peer = ipcache(t.daddr);
    let mut verdict = policy(me, endpoint.flags, peer.identity, t, packet.l4_byte, DIR_EGRESS);
    let mut direction = DIR_EGRESS;
    let mut ct_flags = 0;
    if verdict.verdict != VERDICT_DENY && peer.local_ifindex != 0 {
        // a pod on this node: its ingress policy is enforced here, where a
        // redirect is still possible. The entry says so, for this tuple
        // only: rewritten on the way (DNAT), it is judged again there.
        let flags = unsafe { ENDPOINTS.get(&peer.local_ifindex) }.map_or(0, |e| e.flags);
        let ingress = policy(peer.identity, flags, me, t, packet.l4_byte, DIR_INGRESS);
        // the stricter side decides
        if strictness(ingress.verdict) > strictness(verdict.verdict) {
            verdict = ingress;
            direction = DIR_INGRESS;
        }
        ct_flags = CT_DEST_JUDGED;
    }
    // rules that only look at L7 go to the proxy when it can take the
    // packet, and otherwise let it pass (an allow event with REASON_NO_PROXY
    // says it went unjudged)
    let redirects = verdict.verdict == VERDICT_REDIRECT || verdict.verdict == VERDICT_REDIRECT_OR_ALLOW;
    let cookie = if packet.syn && redirects { handshake_cookie(ctx, t, verdict.proxy_port) } else { None };
    let mut assigned = false;
    let mut unjudged = false;
    if verdict.verdict == VERDICT_REDIRECT_OR_ALLOW {
        let reachable =
            peer.local_ifindex != 0 || peer.identity == identity::WORLD || peer.identity >= mark::MAX_IDENTITY;
        assigned = reachable
            && match t.protocol {
                PROTO_TCP => assign_to_proxy(ctx, t, verdict.proxy_port),
                PROTO_UDP => {
                    verdict.proxy_port != 0 && assign_to_proxy_socket(ctx, A::proxy_key(verdict.proxy_port, PROTO_UDP))
                }
                _ => false,
            };
        if assigned {
            verdict.verdict = VERDICT_REDIRECT;
        } else {
            verdict.verdict = VERDICT_ALLOW;
            unjudged = true;
        }
    }

    match verdict.verdict {
        VERDICT_REDIRECT => {
            let assigned = assigned
                || match t.protocol {
                    PROTO_TCP => assign_to_proxy(ctx, t, verdict.proxy_port),
                    // DNS: every datagram goes to the proxy's transparent socket
                    PROTO_UDP => {
                        verdict.proxy_port != 0
                            && assign_to_proxy_socket(ctx, A::proxy_key(verdict.proxy_port, PROTO_UDP))
                    }
                    _ => false,
                };
            if !assigned {
                emit(
                    EVENT_DROP,
                    REASON_NO_PROXY,
                    direction,
                    t,
                    me,
                    peer.identity,
                    ifindex,
                    verdict.rule,
                    packet.l4_byte,
                );
                return shot(REASON_NO_PROXY);
            }
            ctx.set_mark(to_proxy_mark(me));
            match existing {
                Some(ct) if !opening => {
                    ct_touch(ct, packet, false);
                    // a connection that was not proxied until now is not
                    // stamped: its packets keep being judged (and go to
                    // the proxy, which has no socket for them)
                    if unsafe { (*ct).flags } & CT_PROXIED != 0 {
                        ct_judged(ct, revision);
                    }
                }
                _ if packet.opens => {
                    if let Err(reason) = ct_open(t, CT_PROXIED, me, peer.identity, ifindex, revision) {
                        emit(
                            EVENT_DROP,
                            reason,
                            direction,
                            t,
                            me,
                            peer.identity,
                            ifindex,
                            verdict.rule,
                            packet.l4_byte,
                        );
                        return shot(reason);
                    }
                    if packet.syn {
                        bind_splice(t, cookie);
                        emit(EVENT_REDIRECT, 0, direction, t, me, peer.identity, ifindex, verdict.rule, packet.l4_byte);
                    }
                }
                _ => {}
            }
            TC_ACT_OK as i32
        }
        VERDICT_ALLOW | VERDICT_AUDIT => {
            match existing {
                Some(ct) if !opening => {
                    ct_touch(ct, packet, false);
                    // likewise a proxied one whose L7 rules went away
                    if unsafe { (*ct).flags } & CT_PROXIED == 0 {
                        ct_judged(ct, revision);
                    }
                }
                _ if packet.opens => {
                    if peer.identity >= FIRST_FQDN_IDENTITY {
                        ct_flags |= CT_FQDN;
                    }
                    if let Err(reason) = ct_open(t, ct_flags, me, peer.identity, ifindex, revision) {
                        emit(
                            EVENT_DROP,
                            reason,
                            direction,
                            t,
                            me,
                            peer.identity,
                            ifindex,
                            verdict.rule,
                            packet.l4_byte,
                        );
                        return shot(reason);
                    }
                    let why = if unjudged { REASON_NO_PROXY } else { 0 };
                    emit(
                        allow_event(verdict.verdict),
                        why,
                        direction,
                        t,
                        me,
                        peer.identity,
                        ifindex,
                        verdict.rule,
                        packet.l4_byte,
                    );
                }
                _ => {}
            }
            ctx.set_mark(identity_mark(me));
            if peer.local_ifindex != 0 {
                return to_local_pod(ctx, ifindex, t, peer.local_ifindex, peer.identity);
            }
            TC_ACT_OK as i32
        }
        // a connection opened to a DNS-learned address while it was valid
        // outlives the address (a new connection has a new tuple, no entry;
        // a SYN on the old tuple is a new connection too)
        _ if !opening && existing.is_some_and(|ct| unsafe { (*ct).flags } & CT_FQDN != 0) => {
            if let Some(ct) = existing {
                ct_touch(ct, packet, false);
                ct_judged(ct, revision);
            }
            ctx.set_mark(identity_mark(me));
            TC_ACT_OK as i32
        }
        _ => {
            emit(EVENT_DROP, REASON_POLICY, direction, t, me, peer.identity, ifindex, verdict.rule, packet.l4_byte);
            shot(REASON_POLICY)
        }
    }
}

#[classifier]
pub fn weir_to_pod(ctx: TcContext) -> i32 {
    to_pod(&ctx).unwrap_or_else(|_| shot(REASON_MALFORMED))
}

#[inline(always)]
fn to_pod(ctx: &TcContext) -> Result<i32, i64> {
    let (ifindex, endpoint) = match pod_endpoint(ctx) {
        Ok(found) => found,
        Err(action) => return Ok(action),
    };
    Ok(match parse(ctx, DIR_INGRESS)? {
        Parsed::Ipv4(packet) => to_pod_packet(ctx, ifindex, &endpoint, &packet),
        Parsed::Ipv6(packet) => match pod_ipv6(ifindex) {
            Some(address) => {
                if packet.neighbor.is_some() {
                    learn_delivery(ctx, ifindex, &address, true);
                }
                to_pod_packet(ctx, ifindex, &endpoint, &packet)
            }
            None => shot(REASON_IPV6),
        },
        Parsed::Neighbor => {
            if endpoint.ipv4 != 0 {
                learn_delivery(ctx, ifindex, &endpoint.ipv4, true);
            }
            TC_ACT_OK as i32
        }
        other => not_judged(ctx, other, DIR_INGRESS, ifindex, &endpoint),
    })
}

#[inline(always)]
fn to_pod_packet<A: Addr>(ctx: &TcContext, ifindex: u32, endpoint: &EndpointInfo, packet: &Packet<A>) -> i32 {
    if packet.neighbor.is_some_and(|n| neighbor_to_pod(n, &packet.tuple)) {
        return TC_ACT_OK as i32;
    }
    if packet.fragment == FRAGMENT_FIRST {
        // a sender on this node pays for its datagrams here too (it could
        // release its own record and not this one: a last fragment its veth
        // passes and the node's stack drops); one from elsewhere, the pod
        let sender = packet.tuple.saddr.ipcache().local_ifindex;
        let owner = if sender != 0 { sender } else { ifindex };
        if let Err(reason) = fragment_record(packet, DIR_INGRESS, owner) {
            emit(EVENT_DROP, reason, DIR_INGRESS, &packet.tuple, 0, endpoint.identity, ifindex, 0, packet.l4_byte);
            return shot(reason);
        }
    }
    let action = judge_to_pod(ctx, ifindex, endpoint, packet);
    fragment_judged(packet, DIR_INGRESS, action == TC_ACT_OK as i32);
    action
}

#[inline(always)]
fn judge_to_pod<A: Addr>(ctx: &TcContext, ifindex: u32, endpoint: &EndpointInfo, packet: &Packet<A>) -> i32 {
    let t = &packet.tuple;
    let skb_mark = unsafe { (*ctx.skb.skb).mark };
    match magic_of(skb_mark) {
        Magic::FromProxy => {
            // the proxy's upstream leg: its replies must find the way back
            // to the proxy (weir_from_pod looks this entry up). Not for UDP:
            // there it is the DNS proxy answering, and the pod's next query
            // must be redirected like the first, not read as a reply.
            if t.protocol == PROTO_TCP {
                match ct_live(t) {
                    Some(ct) if !packet.syn => ct_touch(ct, packet, false),
                    _ => {
                        let src = mark::identity_of(skb_mark);
                        if let Err(reason) = ct_open(t, CT_PROXIED, src, endpoint.identity, ifindex, revision()) {
                            emit(
                                EVENT_DROP,
                                reason,
                                DIR_INGRESS,
                                t,
                                src,
                                endpoint.identity,
                                ifindex,
                                0,
                                packet.l4_byte,
                            );
                            return shot(reason);
                        }
                    }
                }
            }
            return TC_ACT_OK as i32;
        }
        // the proxy answering a pod
        Magic::ToProxy => return TC_ACT_OK as i32,
        // judged at the sender's veth, if that judgement named this pod for
        // this very tuple (not so after a DNAT on the way: judged below)
        Magic::Identity => {
            if let Some(ct) = ct_live(t) {
                let judged = unsafe { (*ct).flags & CT_DEST_JUDGED != 0 && (*ct).dst_identity == endpoint.identity };
                if judged {
                    return TC_ACT_OK as i32;
                }
            }
        }
        Magic::Other => {}
    }
    // replies to the pod's own connections
    if packet.reply_candidate
        && let Some(ct) = ct_live(&t.reversed())
    {
        ct_touch(ct, packet, true);
        return TC_ACT_OK as i32;
    }
    if related_error(packet) {
        return TC_ACT_OK as i32;
    }
    let revision = revision();
    let existing = ct_live(t);
    // the fast path, as in weir_from_pod: a connection this pod's ingress
    // policy let in under the policy in force
    if let Some(ct) = existing
        && !packet.syn
        && ct_current(ct, revision)
        && unsafe { (*ct).dst_identity == endpoint.identity && (*ct).flags & CT_PROXIED == 0 }
    {
        ct_touch(ct, packet, false);
        return TC_ACT_OK as i32;
    }
    let peer = ipcache(t.saddr);
    // a local pod's packets leave through its own veth, where weir_from_pod
    // marks them with its identity: one with a local pod's address and
    // without that mark came from elsewhere (another node, the uplink) and
    // is not given the pod's identity
    if peer.local_ifindex != 0
        && (magic_of(skb_mark) != Magic::Identity || mark::identity_of(skb_mark) != peer.identity)
    {
        emit(EVENT_DROP, REASON_SPOOFED, DIR_INGRESS, t, peer.identity, endpoint.identity, ifindex, 0, packet.l4_byte);
        return shot(REASON_SPOOFED);
    }
    let verdict = policy(endpoint.identity, endpoint.flags, peer.identity, t, packet.l4_byte, DIR_INGRESS);
    match verdict.verdict {
        // only an ingress hook can hand packets to the proxy: rules that only
        // look at L7 let what reaches here pass, unjudged
        VERDICT_ALLOW | VERDICT_AUDIT | VERDICT_REDIRECT_OR_ALLOW => {
            match existing {
                Some(ct) if !packet.syn => {
                    ct_touch(ct, packet, false);
                    if unsafe { (*ct).flags } & CT_PROXIED == 0 {
                        ct_judged(ct, revision);
                    }
                }
                _ if packet.opens => {
                    if let Err(reason) = ct_open(t, 0, peer.identity, endpoint.identity, ifindex, revision) {
                        emit(
                            EVENT_DROP,
                            reason,
                            DIR_INGRESS,
                            t,
                            peer.identity,
                            endpoint.identity,
                            ifindex,
                            0,
                            packet.l4_byte,
                        );
                        return shot(reason);
                    }
                    let (event, why) = match verdict.verdict {
                        VERDICT_REDIRECT_OR_ALLOW => (EVENT_ALLOW, REASON_NO_PROXY),
                        v => (allow_event(v), 0),
                    };
                    emit(
                        event,
                        why,
                        DIR_INGRESS,
                        t,
                        peer.identity,
                        endpoint.identity,
                        ifindex,
                        verdict.rule,
                        packet.l4_byte,
                    );
                }
                _ => {}
            }
            TC_ACT_OK as i32
        }
        VERDICT_REDIRECT => {
            // only an ingress hook can hand packets to the proxy (sk_assign):
            // the sender's veth, or the node's device (weir_from_netdev) for
            // off-node traffic. What reaches here did not pass either — a
            // device weir is not attached to, a service DNAT on the way — and
            // fails closed
            emit(
                EVENT_DROP,
                REASON_NO_PROXY,
                DIR_INGRESS,
                t,
                peer.identity,
                endpoint.identity,
                ifindex,
                verdict.rule,
                packet.l4_byte,
            );
            shot(REASON_NO_PROXY)
        }
        _ => {
            emit(
                EVENT_DROP,
                REASON_POLICY,
                DIR_INGRESS,
                t,
                peer.identity,
                endpoint.identity,
                ifindex,
                verdict.rule,
                packet.l4_byte,
            );
            shot(REASON_POLICY)
        }
    }
}

#[classifier]
pub fn weir_from_netdev(ctx: TcContext) -> i32 {
    // a frame this program cannot read is not one it redirects: the pod's
    // own program (weir_to_pod) judges whatever is forwarded to a pod
    from_netdev(&ctx).unwrap_or(TC_ACT_UNSPEC)
}

/// Off-node traffic arriving at the node. Only what only this hook can do is
/// done here: a TCP connection to a local pod whose ingress rules for the
/// sender redirect it (L7) is handed to the proxy, with the sender's identity
/// from the ipcache in the mark — `bpf_sk_assign` works on TC ingress, and the
/// pod's veth sees the packet on egress, too late. Everything else goes on
/// untouched (`TC_ACT_UNSPEC`: the device's other TCX programs and tc filters
/// still run — this is the node's uplink, not weir's own interface) to
/// routing and to `weir_to_pod`, which judges it as before (allows, drops and
/// their flows included).
#[inline(always)]
fn from_netdev(ctx: &TcContext) -> Result<i32, i64> {
    // the records `weir_to_pod` keeps, for a later fragment's ports
    Ok(match parse(ctx, DIR_INGRESS)? {
        Parsed::Ipv4(packet) => from_netdev_packet(ctx, &packet),
        Parsed::Ipv6(packet) => from_netdev_packet(ctx, &packet),
        _ => TC_ACT_UNSPEC,
    })
}

#[inline(always)]
fn from_netdev_packet<A: Addr>(ctx: &TcContext, packet: &Packet<A>) -> i32 {
    let t = &packet.tuple;
    if t.protocol != PROTO_TCP {
        return TC_ACT_UNSPEC;
    }
    let destination = ipcache(t.daddr);
    if destination.local_ifindex == 0 {
        return TC_ACT_UNSPEC;
    }
    let Some(endpoint) = (unsafe { ENDPOINTS.get(&destination.local_ifindex) }).copied() else {
        return TC_ACT_UNSPEC;
    };
    // replies to the pod's own connections
    if packet.reply_candidate && ct_live(&t.reversed()).is_some() {
        return TC_ACT_UNSPEC;
    }
    let peer = ipcache(t.saddr);
    // a local pod's or the node's own address cannot arrive from another
    // node: such a packet is spoofed, and is not given that identity here
    // (weir_to_pod fails an L7 port closed for it)
    if peer.local_ifindex != 0 || peer.identity == identity::HOST {
        return TC_ACT_UNSPEC;
    }
    let verdict = policy(endpoint.identity, endpoint.flags, peer.identity, t, packet.l4_byte, DIR_INGRESS);
    if verdict.verdict != VERDICT_REDIRECT && verdict.verdict != VERDICT_REDIRECT_OR_ALLOW {
        return TC_ACT_UNSPEC;
    }
    let ifindex = destination.local_ifindex;
    let assigned = assign_to_proxy(ctx, t, verdict.proxy_port);
    // rules that only look: weir_to_pod lets it pass, and says so
    if !assigned && verdict.verdict == VERDICT_REDIRECT_OR_ALLOW {
        return TC_ACT_UNSPEC;
    }
    if !assigned {
        emit(
            EVENT_DROP,
            REASON_NO_PROXY,
            DIR_INGRESS,
            t,
            peer.identity,
            endpoint.identity,
            ifindex,
            verdict.rule,
            packet.l4_byte,
        );
        return shot(REASON_NO_PROXY);
    }
    // the mark carries 24 bits of identity: CIDR and DNS-learned identities
    // (2^24 and up) do not fit and would read as another one. The proxy then
    // takes the sender's identity from its address, as it does without a mark.
    let marked = if peer.identity < mark::MAX_IDENTITY { peer.identity } else { 0 };
    ctx.set_mark(to_proxy_mark(marked));
    if packet.syn {
        emit(
            EVENT_REDIRECT,
            0,
            DIR_INGRESS,
            t,
            peer.identity,
            endpoint.identity,
            ifindex,
            verdict.rule,
            packet.l4_byte,
        );
    }
    TC_ACT_OK as i32
}

const AF_INET: u32 = 2;

/// A pod's client TCP socket became established: if its SYN bound it
/// (SPLICE_BINDINGS, recorded only for a SYN redirected to the HTTP proxy,
/// so its connection is proxied), it joins SPLICE_BOUND, where the proxy's
/// writes to it can be spliced. The key is a tuple, which a socket in
/// another network namespace can carry too: only the socket whose SYN
/// crossed the pod's veth joins, once, and never in place of another.
#[sock_ops]
pub fn weir_sockops(ctx: SockOpsContext) -> u32 {
    if ctx.op() != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB || ctx.family() != AF_INET {
        return 1;
    }
    let mut key = SpliceKey {
        local_ip: ctx.local_ip4(),
        remote_ip: ctx.remote_ip4(),
        // local_port in host order; remote_port in network order, above
        local_port: (ctx.local_port() as u16).to_be(),
        remote_port: (ctx.remote_port() >> 16) as u16,
    };
    let Some(bound) = (unsafe { SPLICE_BINDINGS.get(&key) }).copied() else { return 1 };
    if bound == unsafe { bpf_get_socket_cookie(ctx.ops as *mut _) } {
        let _ = SPLICE_BINDINGS.remove(&key);
        let _ = SPLICE_BOUND.update(&mut key, unsafe { &mut *ctx.ops }, BPF_NOEXIST as u64);
    }
    1
}

/// The proxy writes on one of its SPLICE_PROXY sockets: the bytes go
/// straight into the receive queue of the pod socket at the other end (the
/// one keyed by the reversed tuple), past both TCP/IP stacks, the veth and
/// the TC programs. Not found (not a local pod's socket): the normal path.
#[sk_msg]
pub fn weir_splice(ctx: SkMsgContext) -> u32 {
    let md = ctx.msg;
    if unsafe { (*md).family } != AF_INET {
        return SK_PASS;
    }
    let mut peer = unsafe {
        SpliceKey {
            local_ip: (*md).remote_ip4,
            remote_ip: (*md).local_ip4,
            local_port: ((*md).remote_port >> 16) as u16,
            remote_port: ((*md).local_port as u16).to_be(),
        }
    };
    // a redirect is set only when the peer is found; SK_PASS then carries it out
    let _ = SPLICE_BOUND.redirect_msg(&ctx, &mut peer, BPF_F_INGRESS as u64);
    SK_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
