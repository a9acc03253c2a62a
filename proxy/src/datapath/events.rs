//! Kernel events (drops, and verdicts for new connections) into flow
//! records; the kernel's drop counters and conntrack fill into metrics; and
//! the collector, which deletes expired conntrack entries and fragment
//! records.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use aya::maps::{HashMap as BpfHashMap, IterableMap, MapData, PerCpuArray, RingBuf};
use ipnet::IpNet;
use tokio::io::unix::AsyncFd;
use weir_datapath_common::{
    CtKey, CtKey6, CtUsage, CtValue, DIR_INGRESS, DROP_REASONS, EVENT_ALLOW, EVENT_AUDIT, EVENT_DROP, Event, EventV4,
    FAMILY_IPV4, FAMILY_IPV6, FragKey, FragKey6, FragValue, PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP,
    REASON_CT_FULL, REASON_CT_LIMIT, REASON_ETHERTYPE, REASON_FRAG_FULL, REASON_FRAG_LIMIT, REASON_FRAGMENT,
    REASON_MALFORMED, REASON_NO_PROXY, REASON_POLICY, REASON_SPOOFED, REASON_VLAN, reason_name,
};

use crate::engines::state::ProxyState;
use crate::identity::Identity;
use crate::model::PolicyModel;
use crate::observe::flow::{FlowPeer, FlowRecord, Verdict};
use crate::observe::metrics::{DatapathMetrics, DropLabels, EndpointLabels, ListenerLabels};

/// What `PolicyValue::rule` numbers mean, for the model in force.
#[derive(Debug, Default)]
pub struct RuleTexts {
    pub texts: Vec<String>,
    pub cidrs: BTreeMap<u32, IpNet>,
    /// Endpoint names by host veth ifindex (conntrack metrics).
    pub endpoints: BTreeMap<u32, String>,
}

/// What [`run`] reads from the kernel.
pub struct Kernel {
    pub ring: RingBuf<MapData>,
    pub conntrack: BpfHashMap<MapData, CtKey, CtValue>,
    pub conntrack6: BpfHashMap<MapData, CtKey6, CtValue>,
    /// Size of the (IPv4) conntrack table.
    pub capacity: u32,
    pub usage: Ledger,
    pub fragments: BpfHashMap<MapData, FragKey, FragValue>,
    pub fragments6: BpfHashMap<MapData, FragKey6, FragValue>,
    pub fragment_usage: Ledger,
    pub drops: PerCpuArray<MapData, u64>,
    pub gc_interval: Duration,
}

/// Per-endpoint counts of one table's entries (conntrack's, or the fragment
/// records'): the programs add to `created`, `reclaimed` and `refused` in
/// the usage map, the collector writes what it deleted into the freed map;
/// one writer per field, so no update is lost.
pub struct Ledger {
    pub usage: BpfHashMap<MapData, u32, CtUsage>,
    pub freed: BpfHashMap<MapData, u32, u64>,
}

impl Ledger {
    /// Add what a sweep deleted, per owner.
    fn add_freed(&mut self, freed_now: HashMap<u32, u64>) {
        // added to what the map holds, not written from this process's own
        // total: during a hand-over two weirs have collected into it
        for (owner, count) in freed_now {
            let total = self.freed.get(&owner, 0).unwrap_or(0) + count;
            if let Err(e) = self.freed.insert(owner, total, 0) {
                tracing::warn!(owner, "datapath usage not updated: {e}");
            }
        }
    }

    /// Forget the usage of interfaces that are no endpoint anymore and hold
    /// no entry (veths come and go, each with a new ifindex); returns them.
    fn forget_gone(&mut self, endpoints: &BTreeMap<u32, String>) -> Vec<u32> {
        if endpoints.is_empty() {
            return Vec::new();
        }
        let gone: Vec<u32> = self
            .usages()
            .into_iter()
            .filter(|(owner, usage)| !endpoints.contains_key(owner) && self.in_use(*owner, usage) == 0)
            .map(|(owner, _)| owner)
            .collect();
        for owner in &gone {
            let _ = self.usage.remove(owner);
            let _ = self.freed.remove(owner);
        }
        gone
    }

    /// Entries `owner` holds (as the programs count them).
    fn in_use(&self, owner: u32, usage: &CtUsage) -> u64 {
        let gone = usage.reclaimed + self.freed.get(&owner, 0).unwrap_or(0);
        usage.created.saturating_sub(gone)
    }

    fn usages(&self) -> Vec<(u32, CtUsage)> {
        self.usage.iter().filter_map(Result::ok).collect()
    }
}

/// Read events until the ring is closed; meanwhile a thread keeps the
/// kernel counters in the metrics and collects expired conntrack entries.
///
/// A weir taking over starts collecting once it serves; one that handed
/// over stops (`handover`): the conntrack table is the successor's.
pub async fn run(state: Arc<ProxyState>, kernel: Kernel, rules: Arc<RwLock<RuleTexts>>) {
    let Kernel {
        ring,
        conntrack,
        conntrack6,
        capacity,
        usage,
        fragments,
        fragments6,
        fragment_usage,
        drops,
        gc_interval,
    } = kernel;
    state.metrics.datapath.conntrack_capacity.set(i64::from(capacity));
    crate::handover::sockets::until_serving().await;
    let mut collector = Collector {
        conntrack,
        conntrack6,
        usage,
        fragments,
        fragments6,
        fragment_usage,
        drops,
        last_drops: [0; DROP_REASONS as usize],
        last_refused: HashMap::new(),
        published_entries: HashMap::new(),
        published_records: HashMap::new(),
    };
    let (counter_state, counter_rules) = (state.clone(), rules.clone());
    let spawned = std::thread::Builder::new().name("weir-conntrack".into()).spawn(move || {
        let mut last_sweep = Instant::now();
        loop {
            std::thread::sleep(Duration::from_secs(1));
            if counter_state.handover.handed_over() {
                return;
            }
            if last_sweep.elapsed() >= gc_interval {
                last_sweep = Instant::now();
                // a copy: a sweep of a full table must not hold up a reload
                let endpoints = counter_rules.read().unwrap().endpoints.clone();
                let expired = collector.sweep(&endpoints);
                counter_state.metrics.datapath.conntrack_expired.inc_by(expired);
            }
            collector.publish(&counter_state.metrics.datapath, &counter_rules.read().unwrap());
        }
    });
    if let Err(e) = spawned {
        tracing::error!("the conntrack collector cannot start: {e}");
    }
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
            let Some(event) = decode(&item) else { continue };
            let model = state.model.load();
            let record = flow_of(&event, &model, &rules.read().unwrap());
            if event.kind == EVENT_DROP {
                let labels = ListenerLabels { listener: crate::context::TRANSPARENT_LISTENER.into() };
                state.metrics.connections_dropped.get_or_create(&labels).inc();
            }
            state.flows.record(record);
        }
        guard.clear_ready();
    }
}

/// A ring record: an [`Event`], or the [`EventV4`] the programs before IPv6
/// wrote (still attached for a moment when this weir takes over from one).
fn decode(item: &[u8]) -> Option<Event> {
    if item.len() >= size_of::<Event>() {
        // SAFETY: the kernel wrote an `Event` (repr(C), plain data); read unaligned.
        return Some(unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) });
    }
    if item.len() == size_of::<EventV4>() {
        // SAFETY: as above, the older record.
        let old: EventV4 = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
        return Some(Event {
            kind: old.kind,
            reason: old.reason,
            direction: old.direction,
            protocol: old.protocol,
            sport: old.sport,
            dport: old.dport,
            src_identity: old.src_identity,
            dst_identity: old.dst_identity,
            ifindex: old.ifindex,
            rule: old.rule,
            family: FAMILY_IPV4,
            l4_byte: 0,
            _pad: [0; 2],
            saddr: [old.saddr, 0, 0, 0],
            daddr: [old.daddr, 0, 0, 0],
        });
    }
    None
}

/// Nanoseconds of CLOCK_MONOTONIC: the clock of `bpf_ktime_get_ns`.
pub(super) fn monotonic_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// Deletes expired conntrack entries and fragment records, and reads the
/// kernel's counters.
struct Collector {
    conntrack: BpfHashMap<MapData, CtKey, CtValue>,
    conntrack6: BpfHashMap<MapData, CtKey6, CtValue>,
    usage: Ledger,
    fragments: BpfHashMap<MapData, FragKey, FragValue>,
    fragments6: BpfHashMap<MapData, FragKey6, FragValue>,
    fragment_usage: Ledger,
    drops: PerCpuArray<MapData, u64>,
    last_drops: [u64; DROP_REASONS as usize],
    last_refused: HashMap<u32, u64>,
    /// The series each gauge was last set under, per owner: a series whose
    /// endpoint went (or was renamed) is removed, not left at its last value.
    published_entries: HashMap<u32, EndpointLabels>,
    published_records: HashMap<u32, EndpointLabels>,
}

impl Collector {
    /// Delete the conntrack entries and fragment records whose deadline has
    /// passed; returns how many conntrack entries went. Also forgets the
    /// usage of endpoints that are gone.
    fn sweep(&mut self, endpoints: &BTreeMap<u32, String>) -> u64 {
        let now = monotonic_ns();
        let mut freed_now: HashMap<u32, u64> = HashMap::new();
        let deleted = sweep_table(&mut self.conntrack, now, &mut freed_now)
            + sweep_table(&mut self.conntrack6, now, &mut freed_now);
        self.usage.add_freed(freed_now);
        let mut fragments_freed: HashMap<u32, u64> = HashMap::new();
        sweep_table(&mut self.fragments, now, &mut fragments_freed);
        sweep_table(&mut self.fragments6, now, &mut fragments_freed);
        self.fragment_usage.add_freed(fragments_freed);
        for owner in self.usage.forget_gone(endpoints) {
            self.last_refused.remove(&owner);
        }
        self.fragment_usage.forget_gone(endpoints);
        deleted
    }

    fn publish(&mut self, metrics: &DatapathMetrics, rules: &RuleTexts) {
        for reason in 1..DROP_REASONS {
            let Ok(per_cpu) = self.drops.get(&reason, 0) else { continue };
            let total: u64 = per_cpu.iter().sum();
            let last = &mut self.last_drops[reason as usize];
            if total > *last {
                metrics.drops.get_or_create(&DropLabels { reason: reason_name(reason as u8) }).inc_by(total - *last);
            }
            *last = total;
        }
        let labels = |owner: u32| EndpointLabels {
            endpoint: rules.endpoints.get(&owner).cloned().unwrap_or_else(|| format!("ifindex-{owner}")),
        };
        let mut entries = HashMap::new();
        for (owner, usage) in self.usage.usages() {
            let name = labels(owner);
            metrics.conntrack_entries.get_or_create(&name).set(self.usage.in_use(owner, &usage) as i64);
            let last = self.last_refused.entry(owner).or_default();
            if usage.refused > *last {
                metrics.conntrack_refused.get_or_create(&name).inc_by(usage.refused - *last);
            }
            *last = usage.refused;
            entries.insert(owner, name);
        }
        for gone in retired(&mut self.published_entries, entries) {
            metrics.conntrack_entries.remove(&gone);
        }
        let mut records = HashMap::new();
        for (owner, usage) in self.fragment_usage.usages() {
            let name = labels(owner);
            metrics.fragment_records.get_or_create(&name).set(self.fragment_usage.in_use(owner, &usage) as i64);
            records.insert(owner, name);
        }
        for gone in retired(&mut self.published_records, records) {
            metrics.fragment_records.remove(&gone);
        }
    }
}

/// The series published last time and not this time — the owner's usage was
/// forgotten, or its endpoint is named differently now; `published` becomes
/// `now`.
fn retired(published: &mut HashMap<u32, EndpointLabels>, now: HashMap<u32, EndpointLabels>) -> Vec<EndpointLabels> {
    let before = std::mem::replace(published, now);
    before
        .into_iter()
        .filter(|(owner, labels)| published.get(owner) != Some(labels))
        .map(|(_, labels)| labels)
        .collect()
}

/// What the collector needs of a table's values.
trait Expiring: aya::Pod + PartialEq {
    fn expires(&self) -> u64;
    fn owner(&self) -> u32;
}

impl Expiring for CtValue {
    fn expires(&self) -> u64 {
        self.expires
    }
    fn owner(&self) -> u32 {
        self.owner
    }
}

impl Expiring for FragValue {
    fn expires(&self) -> u64 {
        self.expires
    }
    fn owner(&self) -> u32 {
        self.owner
    }
}

/// Delete `table`'s entries whose deadline has passed, counting them per
/// owner into `freed`; returns how many.
fn sweep_table<K: aya::Pod, V: Expiring>(
    table: &mut BpfHashMap<MapData, K, V>,
    now: u64,
    freed: &mut HashMap<u32, u64>,
) -> u64 {
    let expired: Vec<(K, V)> = table.iter().filter_map(Result::ok).filter(|(_, v)| v.expires() <= now).collect();
    let mut deleted = 0;
    for (key, value) in expired {
        // the programs may have restarted the entry since (a new
        // connection on the same tuple, a first fragment resent): leave
        // that one alone
        if table.get(&key, 0).ok() != Some(value) {
            continue;
        }
        // delete it and learn what was deleted in one step: the programs
        // may have replaced it since the look above (restarted it in place
        // for another endpoint, or deleted it and made it again), and the
        // charge to release is the owner of what is deleted
        let taken = match take::<K, V>(table.map(), &key) {
            Ok(Some(taken)) => taken,
            Ok(None) => continue,
            Err(e) => {
                // not a race: the kernel refuses the command (and would for
                // every entry); the table fills and says so in its drops
                tracing::warn!(error = %e, "datapath collector: BPF_MAP_LOOKUP_AND_DELETE_ELEM failed; expired entries stay");
                break;
            }
        };
        if taken.expires() > now {
            // a live entry after all: it goes back, charged as it was,
            // unless the programs made another meanwhile (that one is
            // charged to its own owner; this one is gone)
            if table.insert(key, taken, crate::bpf_syscall::NOEXIST).is_ok() {
                continue;
            }
        }
        *freed.entry(taken.owner()).or_default() += 1;
        deleted += 1;
    }
    deleted
}

/// Delete `key` from a BPF hash map and return the value deleted, in one
/// step: aya's map offers a lookup and a delete, between which the programs
/// may change the entry. `None`: no such key.
fn take<K: aya::Pod, V: aya::Pod>(map: &MapData, key: &K) -> std::io::Result<Option<V>> {
    use crate::bpf_syscall::{MAP_LOOKUP_AND_DELETE_ELEM, map_elem};
    let mut value = std::mem::MaybeUninit::<V>::zeroed();
    let fd = map.fd().as_fd().as_raw_fd();
    // SAFETY: a key and a value buffer of the map's types (aya checked their
    // sizes when it typed the map) that outlive the call; the kernel writes
    // the value only when it succeeds
    let taken = unsafe {
        map_elem(MAP_LOOKUP_AND_DELETE_ELEM, fd, std::ptr::from_ref(key).cast(), value.as_mut_ptr().cast(), 0)
    };
    match taken {
        // SAFETY: the kernel wrote a whole value
        Ok(()) => Ok(Some(unsafe { value.assume_init() })),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Why a packet was dropped, for reasons that are not a rule's.
fn drop_reason(event: &Event) -> String {
    match event.reason {
        REASON_SPOOFED => "spoofed source address".into(),
        REASON_VLAN => {
            format!(
                "VLAN-tagged frame (ethertype {:#06x}): a pod may send untagged IPv4, IPv6 and ARP only",
                event.dport
            )
        }
        REASON_ETHERTYPE => format!("ethertype {:#06x}: a pod may send IPv4, IPv6 and ARP only", event.dport),
        REASON_MALFORMED => "an IP header the datapath refuses (version, length; an IPv6 routing header with \
                             segments left, or more than 4 extension headers)"
            .into(),
        REASON_FRAGMENT => "an IP fragment whose first fragment did not pass".into(),
        REASON_FRAG_LIMIT => "first fragment refused: the endpoint holds its limit of unfinished fragmented \
                              datagrams"
            .into(),
        REASON_FRAG_FULL => "first fragment refused: the fragment records are full".into(),
        REASON_CT_LIMIT => "new connection refused: the endpoint holds its limit of conntrack entries".into(),
        REASON_CT_FULL => "new connection refused: the conntrack table is full".into(),
        other => format!("dropped ({})", reason_name(other)),
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
    let address = |raw: [u32; 4], port: u16| {
        let ip = if event.family == FAMILY_IPV6 {
            IpAddr::V6(super::ipv6_of(raw))
        } else {
            IpAddr::V4(Ipv4Addr::from(raw[0].to_ne_bytes()))
        };
        SocketAddr::new(ip, port)
    };
    let protocol = match event.protocol {
        PROTO_TCP => "tcp",
        PROTO_UDP => "udp",
        PROTO_SCTP => "sctp",
        PROTO_ICMP => "icmp",
        PROTO_ICMPV6 => "icmpv6",
        _ => "ip",
    };
    // ICMP's id and frame drops' ethertype (protocol 0) ride in the port field
    let port = if matches!(event.protocol, PROTO_TCP | PROTO_UDP | PROTO_SCTP) { event.dport } else { 0 };
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
                "{side} L7 rule {} needs the proxy, which cannot take this packet (not TCP; or it came in where \
                 weir is not attached: neither a local pod's veth nor a `datapath.devices` device; or no proxy \
                 listening)",
                rule.unwrap_or_default()
            )),
            Vec::new(),
        ),
        (EVENT_DROP, _) => (Verdict::Dropped, Some(drop_reason(event)), Vec::new()),
        (EVENT_ALLOW, REASON_NO_PROXY) => (
            Verdict::Forwarded,
            Some(format!(
                "passed unjudged: audited L7 rules or visibility ({}) wanted the proxy to look, and it cannot take this \
                 packet (a pod on another node, not TCP or DNS, no proxy listening, or it came in where weir is not attached)",
                rule.as_deref().unwrap_or("no rule")
            )),
            Vec::new(),
        ),
        (EVENT_ALLOW, _) => (Verdict::Forwarded, None, rule.into_iter().collect()),
        (EVENT_AUDIT, _) => (
            Verdict::Audited,
            Some(format!("would be dropped: {}", rule.unwrap_or_else(|| format!("no {side} rule allows it")))),
            Vec::new(),
        ),
        _ => (Verdict::Forwarded, Some("redirected to the proxy".to_string()), rule.into_iter().collect()),
    };
    let sport = if port == 0 { 0 } else { event.sport };
    let peer = |id: u32, addr: SocketAddr| {
        let identity = identity(id);
        let endpoint = model.endpoint_of(addr, &identity);
        FlowPeer::of(&identity, addr, endpoint.as_deref())
    };
    let source = peer(event.src_identity, address(event.saddr, sport));
    let destination = peer(event.dst_identity, address(event.daddr, port));
    // the audited policies selecting either side, as the proxy names them
    let audited_by = if verdict == Verdict::Audited {
        model.policies.audited_selecting(&identity(source.identity), &identity(destination.identity))
    } else {
        Vec::new()
    };
    FlowRecord {
        reason,
        policies,
        audited_by,
        drop_reason: (event.kind == EVENT_DROP).then(|| reason_name(event.reason).to_string()),
        listener: "datapath".into(),
        port,
        icmp_type: match event.protocol {
            PROTO_ICMP | PROTO_ICMPV6 => event.l4_byte.checked_sub(1),
            _ => None,
        },
        ..FlowRecord::new(protocol, verdict, source, destination)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(endpoint: &str) -> EndpointLabels {
        EndpointLabels { endpoint: endpoint.into() }
    }

    #[test]
    fn series_of_endpoints_that_went_or_were_renamed_are_retired() {
        let mut published = HashMap::new();
        let first = HashMap::from([(7, named("web")), (8, named("api")), (9, named("db"))]);
        assert!(retired(&mut published, first).is_empty(), "nothing was published before");
        // 8's usage was forgotten (its veth went); 9 is only known by its
        // ifindex now (its endpoint left the model before its entries expired)
        let second = HashMap::from([(7, named("web")), (9, named("ifindex-9"))]);
        let mut gone = retired(&mut published, second);
        gone.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
        assert_eq!(gone, [named("api"), named("db")]);
        assert_eq!(published.len(), 2);
        assert!(retired(&mut published, HashMap::from([(7, named("web")), (9, named("ifindex-9"))])).is_empty());
    }

    /// A kernel hash map of `FragValue`s by `u32` (needs root, as the
    /// datapath does; the tests run as root).
    fn kernel_table(entries: u32) -> BpfHashMap<MapData, u32, FragValue> {
        use std::os::fd::{FromRawFd, OwnedFd};
        #[repr(C)]
        struct CreateAttr {
            map_type: u32,
            key_size: u32,
            value_size: u32,
            max_entries: u32,
            map_flags: u32,
        }
        const BPF_MAP_CREATE: libc::c_long = 0;
        const BPF_MAP_TYPE_HASH: u32 = 1;
        let attr = CreateAttr {
            map_type: BPF_MAP_TYPE_HASH,
            key_size: 4,
            value_size: size_of::<FragValue>() as u32,
            max_entries: entries,
            map_flags: 0,
        };
        // SAFETY: the attribute is ours for the call
        let fd =
            unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_CREATE, &attr, size_of::<CreateAttr>() as libc::c_uint) };
        assert!(fd >= 0, "BPF_MAP_CREATE: {}", std::io::Error::last_os_error());
        // SAFETY: a descriptor the kernel just gave us, owned by nobody else
        let data = MapData::from_fd(unsafe { OwnedFd::from_raw_fd(fd as i32) }).unwrap();
        BpfHashMap::try_from(aya::maps::Map::HashMap(data)).unwrap()
    }

    fn record(owner: u32, expires: u64) -> FragValue {
        FragValue { sport: 1, dport: 2, reply_candidate: 0, owner, _pad: 0, expires }
    }

    #[test]
    fn a_sweep_deletes_expired_entries_and_releases_them_to_their_owners() {
        let mut table = kernel_table(8);
        for (key, value) in [(1, record(7, 100)), (2, record(7, 200)), (3, record(8, 150)), (4, record(8, 900))] {
            table.insert(key, value, 0).unwrap();
        }
        let mut freed = HashMap::new();
        assert_eq!(sweep_table(&mut table, 500, &mut freed), 3);
        assert_eq!(freed, HashMap::from([(7, 2), (8, 1)]));
        let left: Vec<u32> = table.keys().map(Result::unwrap).collect();
        assert_eq!(left, [4], "the live entry stays");

        // take: what was deleted, once
        assert_eq!(take::<u32, FragValue>(table.map(), &4).unwrap(), Some(record(8, 900)));
        assert_eq!(take::<u32, FragValue>(table.map(), &4).unwrap(), None);
        assert!(table.keys().next().is_none());
    }
}
