//! What weir's eBPF programs and user space must agree on: the skb mark
//! layout and the layout of every map key and value. `no_std`, `repr(C)`,
//! padding explicit, so both sides see the same bytes.
#![no_std]

/// The 32-bit skb mark (docs/design.md, "Marks"). The nibble under
/// [`mark::Marks::mask`] (`0x0F00` unless configured) says what the rest of
/// the mark means.
pub mod mark {
    /// `(id & 0xFFFF) << 16 | (id >> 16) & 0xFF`: 24 bits of identity that
    /// leave [`MAGIC_ROOM`] and kube-proxy's 0x4000/0x8000 alone.
    #[inline(always)]
    pub const fn identity_bits(id: u32) -> u32 {
        ((id & 0xFFFF) << 16) | ((id >> 16) & 0xFF)
    }

    /// Identities from here on (CIDR and DNS-learned ones) do not fit.
    pub const MAX_IDENTITY: u32 = 1 << 24;

    #[inline(always)]
    pub const fn identity_of(mark: u32) -> u32 {
        ((mark >> 16) & 0xFFFF) | ((mark & 0xFF) << 16)
    }

    #[inline(always)]
    pub const fn make(magic: u32, id: u32) -> u32 {
        magic | identity_bits(id)
    }

    /// The nibble and values weir puts in the mark: [`Marks::DEFAULT`]
    /// unless `datapath.marks` moves them (a node whose other plugins use
    /// the same bits). The programs read them from the object's `MARKS`
    /// global, which weir sets at load; the proxy from the same config.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    #[repr(C)]
    pub struct Marks {
        /// The bits that say what a mark means.
        pub mask: u32,
        /// Deliver locally to the proxy; identity bits carry the sender.
        pub to_proxy: u32,
        /// Sent by the proxy: already enforced, pass exactly once.
        pub from_proxy: u32,
        /// Carries the sender's identity; on this node it also says
        /// "enforced at the source's veth", so the destination's veth lets
        /// it in.
        pub identity: u32,
    }

    /// As weir's config, status and errors spell them.
    impl core::fmt::Display for Marks {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            write!(
                f,
                "mask {:#06x} to_proxy {:#06x} from_proxy {:#06x} identity {:#06x}",
                self.mask, self.to_proxy, self.from_proxy, self.identity
            )
        }
    }

    /// Where the magic may go: between the identity's bits (`0xFFFF_00FF`)
    /// and kube-proxy's `0x4000`/`0x8000`.
    pub const MAGIC_ROOM: u32 = 0x3F00;

    impl Marks {
        /// Cilium's nibble and values.
        pub const DEFAULT: Marks = Marks { mask: 0x0F00, to_proxy: 0x0200, from_proxy: 0x0A00, identity: 0x0F00 };

        /// The part of `mark` that says what it means.
        #[inline(always)]
        pub const fn magic(&self, mark: u32) -> u32 {
            mark & self.mask
        }

        /// Why these marks cannot work, if they cannot: each value a
        /// different, non-zero pattern of the mask's bits, the mask in
        /// [`MAGIC_ROOM`].
        pub fn check(&self) -> Result<(), &'static str> {
            if self.mask == 0 || self.mask & !MAGIC_ROOM != 0 {
                return Err(
                    "the mask must be non-zero and inside 0x3f00 (the identity has 0xffff00ff, kube-proxy 0xc000)",
                );
            }
            let values = [self.to_proxy, self.from_proxy, self.identity];
            if values.iter().any(|v| *v == 0 || v & !self.mask != 0) {
                return Err("to_proxy, from_proxy and identity must each be non-zero and inside the mask");
            }
            if values[0] == values[1] || values[0] == values[2] || values[1] == values[2] {
                return Err("to_proxy, from_proxy and identity must differ");
            }
            Ok(())
        }
    }
}

/// Reserved identities the programs need by number.
pub mod identity {
    pub const HOST: u32 = 1;
    pub const WORLD: u32 = 2;
    /// Not an identity: the ipcache's value for each NAT64 prefix
    /// (`datapath.nat64_prefixes`, by default [`super::NAT64_PREFIX`]). An
    /// address there is judged as the IPv4 address it embeds (which is where
    /// the NAT64 gateway takes it), by that address's CIDR identity or the
    /// world's: never a pod's or the node's (no packet with such an address
    /// is theirs, and a sender must not claim their identity by writing one).
    pub const NAT64: u32 = 0xFFFF_FF64;
    /// The same for a NAT64 prefix shorter than /96 (its length in the
    /// entry's `local_ifindex`, [`super::nat64_embedded_ipv4`]). A marker of
    /// its own: programs older than such prefixes — still running for a
    /// moment of a rolling upgrade, after the new weir wrote the ipcache —
    /// would read [`NAT64`]'s addresses as /96, an IPv4 address the sender
    /// picks in the suffix no gateway reads. This one they take for an
    /// identity no policy names: they drop, the new programs judge.
    pub const NAT64_SHORT: u32 = 0xFFFF_FF65;
}

/// RFC 6052's well-known NAT64 prefix, `64:ff9b::/96`: its last 32 bits are
/// an IPv4 address. The default of `datapath.nat64_prefixes`, which may name
/// network-specific prefixes instead (/32 to /96, [`nat64_embedded_ipv4`]).
pub const NAT64_PREFIX: &str = "64:ff9b::/96";

/// The lengths RFC 6052 §2.2 defines for a NAT64 prefix.
pub const NAT64_PREFIX_LENGTHS: [u8; 6] = [32, 40, 48, 56, 64, 96];

/// The IPv4 address (network order) that `address`, in a NAT64 prefix of
/// `prefix_len` bits, embeds (RFC 6052 §2.2): the 32 bits after the prefix,
/// past bits 64 to 71 (the "u" octet, which they straddle for /40 to /56).
/// The u octet and the suffix after the IPv4 address are not read, as a
/// translator does not read them (RFC 6052 has them zero). Another length
/// reads as 96. One definition for the kernel's programs and the proxy: both
/// judge an address as the same IPv4 address.
#[inline(always)]
pub fn nat64_embedded_ipv4(address: &[u8; 16], prefix_len: u32) -> [u8; 4] {
    let a = address;
    match prefix_len {
        32 => [a[4], a[5], a[6], a[7]],
        40 => [a[5], a[6], a[7], a[9]],
        48 => [a[6], a[7], a[9], a[10]],
        56 => [a[7], a[9], a[10], a[11]],
        64 => [a[9], a[10], a[11], a[12]],
        _ => [a[12], a[13], a[14], a[15]],
    }
}

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_ICMPV6: u8 = 58;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_SCTP: u8 = 132;

pub const DIR_INGRESS: u8 = 0;
pub const DIR_EGRESS: u8 = 1;

/// Map names, as user space finds them in the object and under bpffs.
pub mod maps {
    pub const ENDPOINTS: &str = "WEIR_ENDPOINTS";
    pub const IPCACHE: &str = "WEIR_IPCACHE";
    pub const POLICY: &str = "WEIR_POLICY";
    /// Renamed from `WEIR_CT` when entries got state and deadlines: a pin
    /// of the old layout is never read with the new one.
    pub const CONNTRACK: &str = "WEIR_CONNTRACK";
    pub const CT_USAGE: &str = "WEIR_CT_USAGE";
    pub const CT_FREED: &str = "WEIR_CT_FREED";
    /// Renamed from `WEIR_FRAGMENTS` (an LRU) when records became charged
    /// to endpoints: the old pin is never read.
    pub const FRAGMENTS: &str = "WEIR_FRAGS";
    pub const FRAG_USAGE: &str = "WEIR_FRAG_USAGE";
    pub const FRAG_FREED: &str = "WEIR_FRAG_FREED";
    pub const DROPS: &str = "WEIR_DROPS";
    pub const PROXY_SOCKETS: &str = "WEIR_PROXY_SOCKS";
    pub const EVENTS: &str = "WEIR_EVENTS";
    pub const SETTINGS: &str = "WEIR_SETTINGS";
    /// The policy revision (one u32): see [`super::CtValue::revision`].
    pub const REVISION: &str = "WEIR_REVISION";
    /// IPv6 beside IPv4: maps of their own, so the IPv4 keys (and pins made
    /// before IPv6 was enforced) stay as they were.
    pub const ENDPOINTS6: &str = "WEIR_ENDPOINTS6";
    pub const IPCACHE6: &str = "WEIR_IPCACHE6";
    pub const CONNTRACK6: &str = "WEIR_CONNTRACK6";
    pub const FRAGMENTS6: &str = "WEIR_FRAGS6";
    /// Client sockets of pods on this node whose connection goes through
    /// the proxy, each bound to its pod (added by `weir_sockops`): where the
    /// proxy's writes may be spliced to. Renamed from `WEIR_SPLICE_PODS`
    /// when joining needed a binding: what an older weir admitted by tuple
    /// alone is never read.
    pub const SPLICE_BOUND: &str = "WEIR_SPLICE_BOUND";
    /// The proxy's sockets that splice their writes (added by weir; the
    /// `weir_splice` sk_msg program is attached to this map).
    pub const SPLICE_PROXY: &str = "WEIR_SPLICE_PROXY";
    /// Which socket may join SPLICE_BOUND under each tuple: the cookie of
    /// the socket whose SYN crossed the pod's veth, recorded there by
    /// `weir_from_pod` and taken by `weir_sockops`.
    pub const SPLICE_BINDINGS: &str = "WEIR_SPLICE_BINDINGS";
    /// Its size with `datapath.splice` on, and off (an LRU map is
    /// allocated whole, 5.7 MB of locked memory at this size).
    pub const SPLICE_BINDINGS_CAPACITY: u32 = 65536;
    pub const SPLICE_BINDINGS_OFF: u32 = 1;
    /// Pins of maps no weir reads any more (renamed: layout or meaning
    /// changed); a starting weir removes them. A weir still running on one
    /// keeps its map through its own descriptor.
    pub const OBSOLETE: &[&str] = &["WEIR_CT", "WEIR_FRAGMENTS", "WEIR_FRAGMENTS6", "WEIR_SPLICE_PODS"];
    /// Local delivery past the node's stack (`datapath.host_routing: bpf`):
    /// a pod's address → its veth and the link addresses to write, learned
    /// by the programs from neighbour messages between the pod and the node.
    pub const DELIVERY: &str = "WEIR_DELIVERY";
    pub const DELIVERY6: &str = "WEIR_DELIVERY6";
    pub const ALL: &[&str] = &[
        ENDPOINTS,
        ENDPOINTS6,
        IPCACHE,
        IPCACHE6,
        POLICY,
        CONNTRACK,
        CONNTRACK6,
        CT_USAGE,
        CT_FREED,
        FRAGMENTS,
        FRAGMENTS6,
        FRAG_USAGE,
        FRAG_FREED,
        SPLICE_BOUND,
        SPLICE_PROXY,
        SPLICE_BINDINGS,
        DELIVERY,
        DELIVERY6,
        DROPS,
        PROXY_SOCKETS,
        EVENTS,
        SETTINGS,
        REVISION,
    ];
}

/// Program names (the functions in the object).
pub mod programs {
    /// TC ingress on the host-side veth: packets leaving the pod.
    pub const FROM_POD: &str = "weir_from_pod";
    /// TC egress on the host-side veth: packets entering the pod.
    pub const TO_POD: &str = "weir_to_pod";
    /// TC ingress on the node's own devices (`datapath.devices`): packets
    /// from other nodes, redirected to the proxy where a local pod's L7
    /// ingress rules cover them.
    pub const FROM_NETDEV: &str = "weir_from_netdev";
    /// sock_ops on the node's cgroup: adds pods' client sockets of proxied
    /// connections to SPLICE_BOUND when they are established.
    pub const SOCKOPS: &str = "weir_sockops";
    /// sk_msg on SPLICE_PROXY: what the proxy writes goes straight into the
    /// receive queue of the pod's socket it is connected to.
    pub const SPLICE: &str = "weir_splice";
    /// Not a program: the object's global that `datapath.host_routing`
    /// sets at load (1: deliver to local pods past the node's stack).
    pub const HOST_ROUTING: &str = "HOST_ROUTING";
    /// Not a program: the object's global that `datapath.marks` sets at
    /// load ([`super::mark::Marks`]).
    pub const MARKS: &str = "MARKS";
    /// Not a program: the object's global that `datapath.splice` sets at
    /// load (the HTTP proxy's port, whose clients are bound; 0: off).
    pub const SPLICE_PORT: &str = "SPLICE_PORT";
}

/// SPLICE_BOUND, SPLICE_BINDINGS and SPLICE_PROXY key: a socket's own IPv4 tuple, addresses
/// and ports as on the wire. The proxy's socket splices to the pod socket
/// keyed by its reversed tuple.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SpliceKey {
    pub local_ip: u32,
    pub remote_ip: u32,
    pub local_port: u16,
    pub remote_port: u16,
}

impl SpliceKey {
    #[inline(always)]
    pub const fn reversed(&self) -> SpliceKey {
        SpliceKey {
            local_ip: self.remote_ip,
            remote_ip: self.local_ip,
            local_port: self.remote_port,
            remote_port: self.local_port,
        }
    }
}

/// DELIVERY / DELIVERY6 value: how to hand a packet straight to a pod on
/// this node (`bpf_redirect_peer`). Written by the programs on the pod's own
/// veth, keyed by the pod's configured address (never one read from the
/// packet), from a unicast neighbour message between the pod and the node,
/// which names both MACs. weir deletes entries whose address no endpoint
/// has (behind that veth) any more.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delivery {
    /// The pod's host-side veth.
    pub ifindex: u32,
    /// Ethernet destination then source of what the pod receives: the
    /// pod's MAC, then the node's MAC on that veth.
    pub macs: [u8; 12],
}

/// ENDPOINTS: host-side veth ifindex → the pod behind it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointInfo {
    pub identity: u32,
    /// IPv4, network byte order.
    pub ipv4: u32,
    /// [`ENDPOINT_ENFORCE_INGRESS`] | [`ENDPOINT_ENFORCE_EGRESS`]: a missing
    /// policy entry means deny in that direction (default deny).
    pub flags: u32,
}

pub const ENDPOINT_ENFORCE_INGRESS: u32 = 1;
pub const ENDPOINT_ENFORCE_EGRESS: u32 = 2;
/// With the direction's ENFORCE flag: only audited rules select the endpoint
/// in that direction, so a missing entry is an audit, not a drop.
pub const ENDPOINT_AUDIT_INGRESS: u32 = 4;
pub const ENDPOINT_AUDIT_EGRESS: u32 = 8;
/// With the direction's ENFORCE flag: the endpoint is looked up only for
/// visibility (ports handed to the proxy to be parsed), so a missing entry
/// allows.
pub const ENDPOINT_OBSERVE_INGRESS: u32 = 16;
pub const ENDPOINT_OBSERVE_EGRESS: u32 = 32;
/// Local delivery may hand packets straight to this pod: host routing is
/// `bpf` and its interface is a veth (or netkit) device, whose peer
/// `bpf_redirect_peer` reaches. Set by weir.
pub const ENDPOINT_PEER_DELIVERY: u32 = 64;

/// ENDPOINTS6: host-side veth ifindex → the pod's IPv6 address (network
/// byte order). A pod without one sends no IPv6 but neighbour discovery.
pub type EndpointIpv6 = [u32; 4];

/// IPCACHE key (LPM trie data part): IPv4 in network byte order.
pub type IpcacheKey = [u8; 4];
/// IPCACHE6 key: IPv6 in network byte order.
pub type IpcacheKey6 = [u8; 16];

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IpcacheValue {
    pub identity: u32,
    /// Non-zero: a pod on this node (its host-side veth ifindex). In the
    /// entry of a NAT64 prefix shorter than /96 ([`identity::NAT64_SHORT`],
    /// never a pod): the prefix's length, which says where its addresses
    /// keep the IPv4 address ([`nat64_embedded_ipv4`]).
    pub local_ifindex: u32,
}

/// POLICY key: the verdict for `subject` talking to `peer` in `direction`.
/// `port == 0` is the entry for every port of `protocol` without its own.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyKey {
    pub subject: u32,
    pub peer: u32,
    /// Host byte order.
    pub port: u16,
    pub protocol: u8,
    pub direction: u8,
}

pub const VERDICT_ALLOW: u8 = 1;
pub const VERDICT_DENY: u8 = 2;
pub const VERDICT_REDIRECT: u8 = 3;
/// Allowed, but audited rules would drop it: the opening packet is an
/// [`EVENT_AUDIT`] and the connection passes.
pub const VERDICT_AUDIT: u8 = 4;
/// To the proxy if it can take the packet, else allowed: for rules that only
/// look (audited L7 rules, visibility), which must never cost the traffic.
/// The proxy takes it where its upstream leg changes nothing the peer
/// judges: a pod on this node, or the world.
pub const VERDICT_REDIRECT_OR_ALLOW: u8 = 5;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyValue {
    pub verdict: u8,
    pub _pad: u8,
    /// For [`VERDICT_REDIRECT`]: the proxy port (key of PROXY_SOCKETS).
    pub proxy_port: u16,
    /// Which rule decided, for drop events (index into user space's table).
    pub rule: u32,
}

/// A conntrack key over an address type: the tuple of the packet that
/// opened the connection. `u32` for IPv4 ([`CtKey`], WEIR_CONNTRACK),
/// `[u32; 4]` for IPv6 ([`CtKey6`], WEIR_CONNTRACK6); addresses and ports as
/// on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Tuple<A> {
    pub saddr: A,
    pub daddr: A,
    pub sport: u16,
    pub dport: u16,
    pub protocol: u8,
    pub _pad: [u8; 3],
}

pub type CtKey = Tuple<u32>;
pub type CtKey6 = Tuple<[u32; 4]>;

impl<A: Copy> Tuple<A> {
    #[inline(always)]
    pub const fn reversed(&self) -> Tuple<A> {
        Tuple {
            saddr: self.daddr,
            daddr: self.saddr,
            sport: self.dport,
            dport: self.sport,
            protocol: self.protocol,
            _pad: [0; 3],
        }
    }
}

/// The connection goes through the proxy: its packets are marked and
/// assigned to the proxy's socket.
pub const CT_PROXIED: u32 = 1;
/// The connection was allowed to an address learned from DNS (`toFQDNs`):
/// it stays allowed when the address expires, as the proxy's connections do.
pub const CT_FQDN: u32 = 2;
/// Recorded at the sender's veth after judging the destination pod's ingress
/// policy for exactly this tuple: the destination's veth may trust the
/// identity mark for it. Without it (the tuple was rewritten on the way, as
/// by a service DNAT), the destination judges its ingress itself.
pub const CT_DEST_JUDGED: u32 = 4;

/// First identity of addresses learned from DNS answers (one per address;
/// above the CIDR identities at 2^24).
pub const FIRST_FQDN_IDENTITY: u32 = (1 << 24) + (1 << 20);
/// First identity of the prefixes CIDR rules name (Cilium's local range);
/// below it, and not `identity::WORLD`, an identity is one of the cluster's
/// (pods, the node).
pub const FIRST_CIDR_IDENTITY: u32 = 1 << 24;

/// PROXY_SOCKETS key of the proxy's socket for `port` and IP `protocol`:
/// TCP listeners by port alone, UDP sockets with the protocol above it.
pub const fn proxy_socket_key(port: u16, protocol: u8) -> u32 {
    if protocol == PROTO_TCP { port as u32 } else { port as u32 | (protocol as u32) << 16 }
}

/// The same for the proxy's IPv6 socket: an IPv6 packet is assigned to an
/// IPv6 socket only.
pub const fn proxy_socket_key6(port: u16, protocol: u8) -> u32 {
    proxy_socket_key(port, protocol) | PROXY_SOCKET_IPV6
}

pub const PROXY_SOCKET_IPV6: u32 = 1 << 30;

/// CONNTRACK value. An entry whose `expires` (`bpf_ktime_get_ns`, i.e.
/// CLOCK_MONOTONIC) has passed is treated as absent; weir's collector
/// deletes it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtValue {
    pub flags: u32,
    pub src_identity: u32,
    pub dst_identity: u32,
    /// Host veth ifindex of the endpoint the entry is charged to (CT_USAGE).
    pub owner: u32,
    pub expires: u64,
    /// TCP: `TCP_*` bits below.
    pub tcp: u32,
    /// The policy revision (`WEIR_REVISION`) this connection was last
    /// judged under. While it is the current one, a packet of the
    /// connection passes on this entry alone; a policy change makes every
    /// connection's next packet be judged again.
    pub revision: u32,
}

/// The side that answered has sent a packet.
pub const TCP_REPLY_SEEN: u32 = 1;
/// Both sides have sent a packet without SYN: established.
pub const TCP_ESTABLISHED: u32 = 2;
pub const TCP_FIN_FORWARD: u32 = 4;
pub const TCP_FIN_REPLY: u32 = 8;
/// RST seen, or FIN from both sides.
pub const TCP_CLOSING: u32 = 16;

/// CT_USAGE value, per endpoint (key: host veth ifindex); written by the
/// programs only. Entries in use = `created - reclaimed - CT_FREED[owner]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtUsage {
    /// Entries inserted for this endpoint.
    pub created: u64,
    /// Expired entries of this endpoint the programs overwrote.
    pub reclaimed: u64,
    /// New connections refused because the endpoint was at its limit, or
    /// the table was full.
    pub refused: u64,
}

/// FRAGMENTS key: one IPv4 datagram being fragmented.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub saddr: u32,
    pub daddr: u32,
    /// IP identification, as on the wire.
    pub id: u16,
    pub protocol: u8,
    /// Whose record: the sender's veth ([`DIR_EGRESS`](super::DIR_EGRESS))
    /// or the receiver's ([`DIR_INGRESS`](super::DIR_INGRESS)).
    pub direction: u8,
}

/// FRAGMENTS6 key: one IPv6 datagram being fragmented (its Fragment header's
/// identification is 32 bits).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey6 {
    pub saddr: [u32; 4],
    pub daddr: [u32; 4],
    pub id: u32,
    pub protocol: u8,
    pub direction: u8,
    pub _pad: [u8; 2],
}

/// FRAGMENTS value: what the first fragment carried, for the later ones.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragValue {
    pub sport: u16,
    pub dport: u16,
    /// Non-zero: the first fragment may be a conntrack reply (not a SYN,
    /// not an ICMP echo request).
    pub reply_candidate: u32,
    /// The endpoint (host veth ifindex) the record is charged to.
    pub owner: u32,
    pub _pad: u32,
    pub expires: u64,
}

/// Default conntrack lifetimes (seconds) and limits; user space writes the
/// configured ones into SETTINGS.
pub mod conntrack {
    pub const TCP_SYN_SECS: u32 = 60;
    pub const TCP_ESTABLISHED_SECS: u32 = 6 * 3600;
    pub const TCP_CLOSING_SECS: u32 = 10;
    pub const UDP_SECS: u32 = 60;
    pub const ICMP_SECS: u32 = 10;
    /// SCTP, GRE and everything else.
    pub const OTHER_SECS: u32 = 60;
    pub const CAPACITY: u32 = 262144;
    pub const PER_ENDPOINT: u32 = 32768;
    /// How long a first fragment's ports are kept for the later fragments
    /// (Linux gives up reassembly after 30 s: ipfrag_time).
    pub const FRAGMENT_SECS: u32 = 30;
    /// Allocated as used (`BPF_F_NO_PREALLOC`).
    pub const FRAGMENT_CAPACITY: u32 = 32768;
    /// Records one endpoint may hold: datagrams whose first fragment passed
    /// a veth and whose last has not (a finished datagram frees its record
    /// at once, so a pod's own in-order fragments hold one at a time).
    /// 256 endpoints at their limit fill the table: more than a node runs
    /// pods (Kubernetes' default is 110).
    pub const FRAGMENT_PER_ENDPOINT: u32 = 128;
    /// IPv6 has a table of its own (see [`super::maps::CONNTRACK6`]).
    pub const CAPACITY6: u32 = 131072;
}

/// SETTINGS index 0: values user space tunes without reloading programs.
/// A zero field means the default in [`conntrack`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// Most conntrack entries one endpoint may hold.
    pub ct_per_endpoint: u32,
    pub tcp_syn_secs: u32,
    pub tcp_established_secs: u32,
    pub tcp_closing_secs: u32,
    pub udp_secs: u32,
    pub icmp_secs: u32,
    pub other_secs: u32,
    /// Most unfinished fragmented datagrams one endpoint may hold records
    /// of. (Was padding: a weir of an older version writes 0, the default.)
    pub fragments_per_endpoint: u32,
}

pub const EVENT_DROP: u8 = 1;
pub const EVENT_ALLOW: u8 = 2;
pub const EVENT_REDIRECT: u8 = 3;
/// A connection audited rules would have dropped, let through.
pub const EVENT_AUDIT: u8 = 4;

/// Drop reasons: in events, and the index of DROPS (a per-CPU array of
/// packet counts) — every drop is counted there, evented or not.
pub const REASON_POLICY: u8 = 1;
pub const REASON_NO_PROXY: u8 = 2;
/// The source address is not the pod's.
pub const REASON_SPOOFED: u8 = 3;
/// A VLAN-tagged frame (802.1Q or 802.1ad, in the data or in the skb).
pub const REASON_VLAN: u8 = 4;
/// An ethertype a pod may not send (only IPv4, IPv6 and ARP pass).
pub const REASON_ETHERTYPE: u8 = 5;
/// IPv6 from or to a pod weir knows no IPv6 address of (no event: pods
/// send it unasked). Neighbour discovery passes all the same.
pub const REASON_IPV6: u8 = 6;
/// An IP header the programs refuse (version, header length, truncated; an
/// IPv6 routing header with segments left, or too many extension headers).
pub const REASON_MALFORMED: u8 = 7;
/// A new connection past the endpoint's conntrack limit.
pub const REASON_CT_LIMIT: u8 = 8;
/// A new connection while the conntrack table is full.
pub const REASON_CT_FULL: u8 = 9;
/// A non-first fragment whose first fragment was not seen (or not passed).
pub const REASON_FRAGMENT: u8 = 10;
/// A first fragment past the endpoint's limit of unfinished datagrams.
pub const REASON_FRAG_LIMIT: u8 = 11;
/// A first fragment while the fragment records are full.
pub const REASON_FRAG_FULL: u8 = 12;
/// Size of DROPS.
pub const DROP_REASONS: u32 = 16;

/// Names for metrics, by reason number.
pub const fn reason_name(reason: u8) -> &'static str {
    match reason {
        REASON_POLICY => "policy",
        REASON_NO_PROXY => "no_proxy",
        REASON_SPOOFED => "spoofed_source",
        REASON_VLAN => "vlan_tagged",
        REASON_ETHERTYPE => "ethertype",
        REASON_IPV6 => "ipv6",
        REASON_MALFORMED => "malformed",
        REASON_CT_LIMIT => "conntrack_endpoint_limit",
        REASON_CT_FULL => "conntrack_full",
        REASON_FRAGMENT => "fragment_without_first",
        REASON_FRAG_LIMIT => "fragment_endpoint_limit",
        REASON_FRAG_FULL => "fragment_table_full",
        _ => "other",
    }
}

/// One record in the EVENTS ring buffer. Addresses are IPv6-sized; an IPv4
/// one is in `saddr[0]` / `daddr[0]` with `family` [`FAMILY_IPV4`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub kind: u8,
    pub reason: u8,
    pub direction: u8,
    pub protocol: u8,
    pub sport: u16,
    pub dport: u16,
    pub src_identity: u32,
    pub dst_identity: u32,
    pub ifindex: u32,
    pub rule: u32,
    pub family: u8,
    /// ICMP and ICMPv6: the message's type plus one; 0 for other protocols,
    /// a later fragment, and the reserved type 255. (Padding before: a
    /// weir of an older version reads it as such.)
    pub l4_byte: u8,
    pub _pad: [u8; 2],
    pub saddr: [u32; 4],
    pub daddr: [u32; 4],
}

pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;

/// The record programs before IPv6 wrote (IPv4 only): a weir taking over
/// from one reads both while the old programs are still attached.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventV4 {
    pub kind: u8,
    pub reason: u8,
    pub direction: u8,
    pub protocol: u8,
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub src_identity: u32,
    pub dst_identity: u32,
    pub ifindex: u32,
    pub rule: u32,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY (all): plain repr(C) data with explicit padding and no pointers.
    unsafe impl aya::Pod for super::EndpointInfo {}
    unsafe impl aya::Pod for super::Delivery {}
    unsafe impl aya::Pod for super::IpcacheValue {}
    unsafe impl aya::Pod for super::PolicyKey {}
    unsafe impl aya::Pod for super::PolicyValue {}
    unsafe impl aya::Pod for super::CtKey {}
    unsafe impl aya::Pod for super::CtKey6 {}
    unsafe impl aya::Pod for super::SpliceKey {}
    unsafe impl aya::Pod for super::FragKey6 {}
    unsafe impl aya::Pod for super::CtValue {}
    unsafe impl aya::Pod for super::Settings {}
    unsafe impl aya::Pod for super::CtUsage {}
    unsafe impl aya::Pod for super::FragKey {}
    unsafe impl aya::Pod for super::FragValue {}
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::mark::Marks {}
    unsafe impl aya::Pod for super::EventV4 {}
}

#[cfg(test)]
mod tests {
    use super::mark;

    #[test]
    fn identity_bits_round_trip_and_stay_out_of_the_magic_nibble() {
        for id in [1u32, 2, 256, 0xFFFF, 0x1_0000, 0xFF_FFFF, 0x12_3456] {
            let bits = mark::identity_bits(id);
            assert_eq!(bits & mark::MAGIC_ROOM, 0, "{id:#x}");
            assert_eq!(bits & 0xC000, 0, "{id:#x} touches kube-proxy's bits");
            assert_eq!(mark::identity_of(mark::make(mark::Marks::DEFAULT.to_proxy, id)), id);
        }
    }

    #[test]
    fn marks_are_checked_for_room_and_distinct_values() {
        let moved = mark::Marks { mask: 0x3000, to_proxy: 0x1000, from_proxy: 0x2000, identity: 0x3000 };
        assert_eq!(mark::Marks::DEFAULT.check(), Ok(()));
        assert_eq!(moved.check(), Ok(()));
        for (wrong, why) in [
            (mark::Marks { mask: 0xF000, ..moved }, "inside 0x3f00"),
            (mark::Marks { mask: 0x30FF, ..moved }, "inside 0x3f00"),
            (mark::Marks { mask: 0, ..moved }, "non-zero"),
            (mark::Marks { to_proxy: 0, ..moved }, "non-zero"),
            (mark::Marks { from_proxy: 0x0200, ..moved }, "inside the mask"),
            (mark::Marks { identity: 0x1000, ..moved }, "differ"),
        ] {
            let error = wrong.check().expect_err(why);
            assert!(error.contains(why), "{wrong:?}: {error}");
        }
    }
}
