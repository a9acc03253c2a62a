//! weir's per-pod datapath: two TC programs on each pod's host-side veth.
//!
//! `weir_from_pod` (TC ingress of the host veth: packets the pod sends)
//!   - replies to connections opened toward the pod pass (conntrack);
//!   - everything else is judged by the pod's egress policy and, when the
//!     destination is a pod on this node, by that pod's ingress policy too;
//!   - a redirect verdict marks the packet TO_PROXY with the sender's
//!     identity and `bpf_sk_assign`s it to the proxy's transparent socket.
//!
//! `weir_to_pod` (TC egress of the host veth: packets the pod receives)
//!   - packets already judged on this node (identity mark) or sent by the
//!     proxy pass; replies to the pod's own connections pass;
//!   - the rest (from the host or off the node) is judged by the pod's
//!     ingress policy.
//!
//! IPv4 only: IPv6 from an enforced pod is dropped (see docs/datapath.md).
#![no_std]
#![no_main]

use core::mem::size_of;

use aya_ebpf::bindings::{
    BPF_F_CURRENT_NETNS, BPF_TCP_LISTEN, TC_ACT_OK, TC_ACT_SHOT, TC_ACT_UNSPEC, bpf_sock, bpf_sock_tuple,
};
use aya_ebpf::helpers::generated::{bpf_map_lookup_elem, bpf_sk_assign, bpf_sk_release, bpf_skc_lookup_tcp};
use aya_ebpf::macros::{classifier, map};
use aya_ebpf::maps::lpm_trie::Key;
use aya_ebpf::maps::{HashMap, LpmTrie, LruHashMap, RingBuf, SockHash};
use aya_ebpf::programs::TcContext;
use weir_datapath_common::{
    CT_FQDN, CT_PROXIED, CtKey, CtValue, DIR_EGRESS, DIR_INGRESS, ENDPOINT_ENFORCE_EGRESS, ENDPOINT_ENFORCE_INGRESS,
    EVENT_ALLOW, EVENT_DROP, EVENT_REDIRECT, EndpointInfo, Event, FIRST_FQDN_IDENTITY, IpcacheKey, IpcacheValue,
    PROTO_SCTP, PROTO_TCP, PROTO_UDP, PolicyKey, PolicyValue, REASON_NO_PROXY, REASON_POLICY, REASON_UNSUPPORTED,
    VERDICT_ALLOW, VERDICT_DENY, VERDICT_REDIRECT, identity, mark, proxy_socket_key,
};

#[map(name = "WEIR_ENDPOINTS")]
static ENDPOINTS: HashMap<u32, EndpointInfo> = HashMap::pinned(4096, 0);
#[map(name = "WEIR_IPCACHE")]
static IPCACHE: LpmTrie<IpcacheKey, IpcacheValue> = LpmTrie::pinned(65536, 0);
#[map(name = "WEIR_POLICY")]
static POLICY: HashMap<PolicyKey, PolicyValue> = HashMap::pinned(262144, BPF_F_NO_PREALLOC);
#[map(name = "WEIR_CT")]
static CT: LruHashMap<CtKey, CtValue> = LruHashMap::pinned(262144, 0);
#[map(name = "WEIR_PROXY_SOCKS")]
static PROXY_SOCKS: SockHash<u32> = SockHash::pinned(64, 0);
#[map(name = "WEIR_EVENTS")]
static EVENTS: RingBuf = RingBuf::pinned(1 << 20, 0);

const BPF_F_NO_PREALLOC: u32 = 1;
const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_ACK: u8 = 0x10;

/// The packet fields every decision needs. Addresses and ports as on the wire.
struct Packet {
    tuple: CtKey,
    /// A TCP SYN without ACK: the first packet of a connection.
    syn: bool,
}

enum Parsed {
    Ipv4(Packet),
    Ipv6,
    /// ARP and other non-IP frames: not policy's business.
    Other,
}

#[inline(always)]
fn parse(ctx: &TcContext) -> Result<Parsed, i64> {
    let ethertype = u16::from_be(ctx.load::<u16>(12)?);
    if ethertype == ETH_P_IPV6 {
        return Ok(Parsed::Ipv6);
    }
    if ethertype != ETH_P_IP {
        return Ok(Parsed::Other);
    }
    let version_ihl: u8 = ctx.load(ETH_HLEN)?;
    let ihl = ((version_ihl & 0x0F) as usize) * 4;
    let frag: u16 = u16::from_be(ctx.load::<u16>(ETH_HLEN + 6)?);
    let protocol: u8 = ctx.load(ETH_HLEN + 9)?;
    let saddr: u32 = ctx.load(ETH_HLEN + 12)?;
    let daddr: u32 = ctx.load(ETH_HLEN + 16)?;
    let l4 = ETH_HLEN + ihl;
    let has_ports = matches!(protocol, PROTO_TCP | PROTO_UDP | PROTO_SCTP) && frag & 0x1FFF == 0;
    let (sport, dport) = if has_ports { (ctx.load::<u16>(l4)?, ctx.load::<u16>(l4 + 2)?) } else { (0, 0) };
    let syn = protocol == PROTO_TCP && has_ports && {
        let flags: u8 = ctx.load(l4 + 13)?;
        flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN
    };
    Ok(Parsed::Ipv4(Packet { tuple: CtKey { saddr, daddr, sport, dport, protocol, _pad: [0; 3] }, syn }))
}

#[inline(always)]
fn ipcache(addr: u32) -> IpcacheValue {
    let key = Key::new(32, addr.to_ne_bytes());
    match IPCACHE.get(&key) {
        Some(v) => *v,
        None => IpcacheValue { identity: identity::WORLD, local_ifindex: 0 },
    }
}

/// The policy verdict for `subject` (an endpoint with `flags`) and `peer`.
#[inline(always)]
fn policy(subject: u32, flags: u32, peer: u32, t: &CtKey, direction: u8) -> PolicyValue {
    let enforced = if direction == DIR_INGRESS { ENDPOINT_ENFORCE_INGRESS } else { ENDPOINT_ENFORCE_EGRESS };
    if flags & enforced == 0 {
        return PolicyValue { verdict: VERDICT_ALLOW, _pad: 0, proxy_port: 0, rule: 0 };
    }
    let port = u16::from_be(t.dport);
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
    PolicyValue { verdict: VERDICT_DENY, _pad: 0, proxy_port: 0, rule: 0 }
}

#[inline(always)]
fn emit(kind: u8, reason: u8, direction: u8, t: &CtKey, src: u32, dst: u32, ifindex: u32, rule: u32) {
    let event = Event {
        kind,
        reason,
        direction,
        protocol: t.protocol,
        saddr: t.saddr,
        daddr: t.daddr,
        sport: u16::from_be(t.sport),
        dport: u16::from_be(t.dport),
        src_identity: src,
        dst_identity: dst,
        ifindex,
        rule,
    };
    // a full ring loses the event, never the decision
    let _ = EVENTS.output::<Event>(&event, 0);
}

/// Hand a TCP packet to the proxy: the socket that already owns the 4-tuple
/// (an accepted connection, or the proxy's own upstream connection for
/// replies), or for a new connection the proxy's listener.
#[inline(always)]
fn assign_to_proxy(ctx: &TcContext, t: &CtKey, proxy_port: u16) -> bool {
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    unsafe {
        let v4 = &mut tuple.__bindgen_anon_1.ipv4;
        v4.saddr = t.saddr;
        v4.daddr = t.daddr;
        v4.sport = t.sport;
        v4.dport = t.dport;
    }
    let skb = ctx.skb.skb as *mut _;
    let size = size_of::<u32>() as u32 * 3;
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
    assign_to_proxy_socket(ctx, proxy_socket_key(proxy_port, PROTO_TCP))
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

/// The pod behind this veth and its IPv4 packet, or what to do with a packet
/// that is not ours to judge: another program's interface (UNSPEC: let the
/// next program decide), ARP and other non-IP frames (pass), IPv6 (drop).
#[inline(always)]
fn pod_packet(ctx: &TcContext) -> Result<Result<(u32, EndpointInfo, Packet), i32>, i64> {
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let Some(endpoint) = (unsafe { ENDPOINTS.get(&ifindex) }).copied() else {
        return Ok(Err(TC_ACT_UNSPEC));
    };
    Ok(match parse(ctx)? {
        Parsed::Ipv4(p) => Ok((ifindex, endpoint, p)),
        Parsed::Other => Err(TC_ACT_OK as i32),
        Parsed::Ipv6 => Err(TC_ACT_SHOT as i32),
    })
}

#[classifier]
pub fn weir_from_pod(ctx: TcContext) -> i32 {
    from_pod(&ctx).unwrap_or(TC_ACT_SHOT as i32)
}

#[inline(always)]
fn from_pod(ctx: &TcContext) -> Result<i32, i64> {
    let (ifindex, endpoint, packet) = match pod_packet(ctx)? {
        Ok(found) => found,
        Err(action) => return Ok(action),
    };
    let t = &packet.tuple;
    let me = endpoint.identity;
    if t.saddr != endpoint.ipv4 {
        // a pod may only send from its own address
        emit(EVENT_DROP, REASON_UNSUPPORTED, DIR_EGRESS, t, me, 0, ifindex, 0);
        return Ok(TC_ACT_SHOT as i32);
    }

    // Replies to a connection opened toward this pod.
    if let Some(ct) = unsafe { CT.get(&t.reversed()) } {
        if ct.flags & CT_PROXIED != 0 {
            // the proxy opened it (upstream leg of a proxied request)
            ctx.set_mark(mark::make(mark::MAGIC_TO_PROXY, me));
            if t.protocol == PROTO_TCP {
                assign_to_proxy(ctx, t, 0);
            }
        } else {
            ctx.set_mark(mark::make(mark::MAGIC_IDENTITY, me));
        }
        return Ok(TC_ACT_OK as i32);
    }

    let existing = unsafe { CT.get(t) }.copied();
    let peer = ipcache(t.daddr);
    let mut verdict = policy(me, endpoint.flags, peer.identity, t, DIR_EGRESS);
    let mut direction = DIR_EGRESS;
    if verdict.verdict != VERDICT_DENY && peer.local_ifindex != 0 {
        // a pod on this node: its ingress policy is enforced here, where a
        // redirect is still possible
        let flags = unsafe { ENDPOINTS.get(&peer.local_ifindex) }.map_or(0, |e| e.flags);
        let ingress = policy(peer.identity, flags, me, t, DIR_INGRESS);
        if ingress.verdict == VERDICT_DENY || (ingress.verdict == VERDICT_REDIRECT && verdict.verdict == VERDICT_ALLOW)
        {
            verdict = ingress;
            direction = DIR_INGRESS;
        }
    }

    match verdict.verdict {
        VERDICT_REDIRECT => {
            let assigned = match t.protocol {
                PROTO_TCP => assign_to_proxy(ctx, t, verdict.proxy_port),
                // DNS: every datagram goes to the proxy's transparent socket
                PROTO_UDP => {
                    verdict.proxy_port != 0
                        && assign_to_proxy_socket(ctx, proxy_socket_key(verdict.proxy_port, PROTO_UDP))
                }
                _ => false,
            };
            if !assigned {
                emit(EVENT_DROP, REASON_NO_PROXY, direction, t, me, peer.identity, ifindex, verdict.rule);
                return Ok(TC_ACT_SHOT as i32);
            }
            ctx.set_mark(mark::make(mark::MAGIC_TO_PROXY, me));
            if existing.is_none() {
                let value = CtValue { flags: CT_PROXIED, src_identity: me, dst_identity: peer.identity, _pad: 0 };
                let _ = CT.insert(t, &value, 0);
                if packet.syn {
                    emit(EVENT_REDIRECT, 0, direction, t, me, peer.identity, ifindex, verdict.rule);
                }
            }
            Ok(TC_ACT_OK as i32)
        }
        VERDICT_ALLOW => {
            if existing.is_none() {
                let flags = if peer.identity >= FIRST_FQDN_IDENTITY { CT_FQDN } else { 0 };
                let value = CtValue { flags, src_identity: me, dst_identity: peer.identity, _pad: 0 };
                let _ = CT.insert(t, &value, 0);
                emit(EVENT_ALLOW, 0, direction, t, me, peer.identity, ifindex, verdict.rule);
            }
            ctx.set_mark(mark::make(mark::MAGIC_IDENTITY, me));
            Ok(TC_ACT_OK as i32)
        }
        // a connection opened to a DNS-learned address while it was valid
        // outlives the address (a new connection has a new tuple, no entry)
        _ if existing.is_some_and(|ct| ct.flags & CT_FQDN != 0) => {
            ctx.set_mark(mark::make(mark::MAGIC_IDENTITY, me));
            Ok(TC_ACT_OK as i32)
        }
        _ => {
            emit(EVENT_DROP, REASON_POLICY, direction, t, me, peer.identity, ifindex, verdict.rule);
            Ok(TC_ACT_SHOT as i32)
        }
    }
}

#[classifier]
pub fn weir_to_pod(ctx: TcContext) -> i32 {
    to_pod(&ctx).unwrap_or(TC_ACT_SHOT as i32)
}

#[inline(always)]
fn to_pod(ctx: &TcContext) -> Result<i32, i64> {
    let (ifindex, endpoint, packet) = match pod_packet(ctx)? {
        Ok(found) => found,
        Err(action) => return Ok(action),
    };
    let t = &packet.tuple;
    let skb_mark = unsafe { (*ctx.skb.skb).mark };
    match mark::magic(skb_mark) {
        mark::MAGIC_FROM_PROXY => {
            // the proxy's upstream leg: its replies must find the way back
            // to the proxy (weir_from_pod looks this entry up). Not for UDP:
            // there it is the DNS proxy answering, and the pod's next query
            // must be redirected like the first, not read as a reply.
            if t.protocol == PROTO_TCP && unsafe { CT.get(t) }.is_none() {
                let value = CtValue {
                    flags: CT_PROXIED,
                    src_identity: mark::identity_of(skb_mark),
                    dst_identity: endpoint.identity,
                    _pad: 0,
                };
                let _ = CT.insert(t, &value, 0);
            }
            return Ok(TC_ACT_OK as i32);
        }
        // judged at the sender's veth, or the proxy answering a pod
        mark::MAGIC_IDENTITY | mark::MAGIC_TO_PROXY => return Ok(TC_ACT_OK as i32),
        _ => {}
    }
    // replies to the pod's own connections
    if unsafe { CT.get(&t.reversed()) }.is_some() {
        return Ok(TC_ACT_OK as i32);
    }
    let peer = ipcache(t.saddr);
    let verdict = policy(endpoint.identity, endpoint.flags, peer.identity, t, DIR_INGRESS);
    match verdict.verdict {
        VERDICT_ALLOW => {
            if unsafe { CT.get(t) }.is_none() {
                let value = CtValue { flags: 0, src_identity: peer.identity, dst_identity: endpoint.identity, _pad: 0 };
                let _ = CT.insert(t, &value, 0);
                emit(EVENT_ALLOW, 0, DIR_INGRESS, t, peer.identity, endpoint.identity, ifindex, verdict.rule);
            }
            Ok(TC_ACT_OK as i32)
        }
        VERDICT_REDIRECT => {
            // only a pod's own veth can hand packets to the proxy (sk_assign
            // works on ingress); off-node traffic to an L7 port fails closed
            emit(EVENT_DROP, REASON_NO_PROXY, DIR_INGRESS, t, peer.identity, endpoint.identity, ifindex, verdict.rule);
            Ok(TC_ACT_SHOT as i32)
        }
        _ => {
            emit(EVENT_DROP, REASON_POLICY, DIR_INGRESS, t, peer.identity, endpoint.identity, ifindex, verdict.rule);
            Ok(TC_ACT_SHOT as i32)
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
