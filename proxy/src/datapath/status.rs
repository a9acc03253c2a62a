//! `weir datapath status`: what is attached and installed, and what the
//! kernel's maps hold, read from the pins (any user with access to bpffs can
//! run it beside a running weir; nothing is written).

use std::collections::BTreeMap;
use std::path::Path;

use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData, PerCpuArray};
use weir_datapath_common::{
    CtKey, CtKey6, CtUsage, CtValue, DROP_REASONS, Delivery, EndpointInfo, EndpointIpv6, maps, reason_name,
};

use super::{links_dir, maps_dir, routing};
use crate::config::DatapathConfig;

/// Every line of the report.
pub fn report(config: &DatapathConfig) -> Vec<String> {
    let mut out = Vec::new();
    match routing::read_state(&config.bpffs) {
        Some(state) => {
            let alive = if state.owner_alive() { "running" } else { "not running" };
            out.push(format!("owner pid {} ({alive})", state.owner));
            out.push(format!("marks {}", state.marks()));
        }
        None => out.push(format!("no state file ({})", routing::state_file(&config.bpffs).display())),
    }
    let links = names_in(&links_dir(&config.bpffs));
    out.extend(links.iter().map(|n| format!("link {}", links_dir(&config.bpffs).join(n).display())));
    let maps_dir = maps_dir(&config.bpffs);
    for name in names_in(&maps_dir) {
        let path = maps_dir.join(&name);
        let fill = MapData::from_pin(&path).ok().and_then(|data| fill_level(&name, data));
        match fill {
            Some(fill) => out.push(format!("map {} {fill}", path.display())),
            None => out.push(format!("map {}", path.display())),
        }
    }
    if let Some(revision) = pinned(&maps_dir, maps::REVISION)
        .and_then(|m| Array::<_, u32>::try_from(m).ok())
        .and_then(|a| a.get(&0, 0).ok())
    {
        out.push(format!("policy revision {revision:#x}"));
    }
    out.extend(endpoint_lines(&maps_dir, &links));
    out.extend(device_lines(&links, &config.devices));
    if let Some(drops) = pinned(&maps_dir, maps::DROPS).and_then(|m| PerCpuArray::<_, u64>::try_from(m).ok()) {
        let counts: Vec<String> = (1..DROP_REASONS)
            .map(|reason| {
                let total: u64 = drops.get(&reason, 0).map(|per_cpu| per_cpu.iter().sum()).unwrap_or(0);
                format!("{}={total}", reason_name(reason as u8))
            })
            .collect();
        out.push(format!("drops {}", counts.join(" ")));
    }
    out.extend(routing::describe(config));
    out
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Every entry of a pinned hash map (none if it is missing or unreadable).
fn entries<K: aya::Pod + Ord, V: aya::Pod>(maps_dir: &Path, name: &str) -> BTreeMap<K, V> {
    pinned(maps_dir, name)
        .and_then(|m| BpfHashMap::<_, K, V>::try_from(m).ok())
        .map(|m| m.iter().filter_map(Result::ok).collect())
        .unwrap_or_default()
}

fn pinned(maps_dir: &Path, name: &str) -> Option<Map> {
    let data = MapData::from_pin(maps_dir.join(name)).ok()?;
    map_of(data)
}

/// The map of the right kind for its pinned data.
fn map_of(data: MapData) -> Option<Map> {
    use aya::maps::MapType;
    let kind = data.info().ok()?.map_type().ok()?;
    Some(match kind {
        MapType::Hash => Map::HashMap(data),
        MapType::LruHash => Map::LruHashMap(data),
        MapType::Array => Map::Array(data),
        MapType::PerCpuArray => Map::PerCpuArray(data),
        MapType::LpmTrie => Map::LpmTrie(data),
        MapType::SockHash => Map::SockHash(data),
        _ => return None,
    })
}

/// "N/MAX entries" for maps that hold entries (not arrays or rings);
/// the conntrack table also says how many entries are live.
fn fill_level(name: &str, data: MapData) -> Option<String> {
    let max = data.info().ok()?.max_entries();
    let map = map_of(data)?;
    let now = super::events::monotonic_ns();
    let live = |values: &mut dyn Iterator<Item = CtValue>| {
        let (mut all, mut live) = (0u64, 0u64);
        for value in values {
            all += 1;
            live += u64::from(value.expires > now);
        }
        format!("{all}/{max} entries ({live} live)")
    };
    if name == maps::CONNTRACK {
        let table = BpfHashMap::<_, CtKey, CtValue>::try_from(map).ok()?;
        return Some(live(&mut table.iter().filter_map(Result::ok).map(|(_, v)| v)));
    }
    if name == maps::CONNTRACK6 {
        let table = BpfHashMap::<_, CtKey6, CtValue>::try_from(map).ok()?;
        return Some(live(&mut table.iter().filter_map(Result::ok).map(|(_, v)| v)));
    }
    let count = match map {
        Map::HashMap(data) | Map::LruHashMap(data) | Map::LpmTrie(data) | Map::SockHash(data) => count_keys(&data),
        _ => return None,
    }?;
    Some(format!("{count}/{max} entries"))
}

/// Keys of a hash or trie map, whatever their type.
fn count_keys(data: &MapData) -> Option<u64> {
    let info = data.info().ok()?;
    let key_size = info.key_size() as usize;
    let fd = std::os::fd::AsFd::as_fd(data.fd());
    let mut count = 0u64;
    let mut key: Option<Vec<u8>> = None;
    loop {
        let mut next = vec![0u8; key_size];
        if !next_key(fd, key.as_deref(), &mut next) {
            return Some(count);
        }
        count += 1;
        key = Some(next);
    }
}

/// BPF_MAP_GET_NEXT_KEY through the raw syscall: aya's key iterators need
/// the key type, and this report counts maps of every key type alike.
fn next_key(fd: std::os::fd::BorrowedFd<'_>, key: Option<&[u8]>, next: &mut [u8]) -> bool {
    use crate::bpf_syscall::{MAP_GET_NEXT_KEY, map_elem};
    use std::os::fd::AsRawFd;
    let key = key.map_or(std::ptr::null(), |k| k.as_ptr());
    // SAFETY: buffers of the map's key size (or none: the first key) that
    // outlive the call
    unsafe { map_elem(MAP_GET_NEXT_KEY, fd.as_raw_fd(), key, next.as_mut_ptr(), 0) }.is_ok()
}

/// One line per endpoint in the kernel's endpoint map (whatever the mode,
/// files or Kubernetes): its interface, address and identity, whether its
/// programs are linked, and the conntrack entries it holds and was refused.
fn endpoint_lines(maps_dir: &Path, links: &[String]) -> Vec<String> {
    let known: BTreeMap<u32, EndpointInfo> = entries(maps_dir, maps::ENDPOINTS);
    let usage: BTreeMap<u32, CtUsage> = entries(maps_dir, maps::CT_USAGE);
    let ipv6: BTreeMap<u32, EndpointIpv6> = entries(maps_dir, maps::ENDPOINTS6);
    let freed: BTreeMap<u32, u64> = entries(maps_dir, maps::CT_FREED);
    let fragment_usage: BTreeMap<u32, CtUsage> = entries(maps_dir, maps::FRAG_USAGE);
    let fragments_freed: BTreeMap<u32, u64> = entries(maps_dir, maps::FRAG_FREED);
    let delivery: BTreeMap<u32, Delivery> = entries(maps_dir, maps::DELIVERY);
    let delivery6: BTreeMap<EndpointIpv6, Delivery> = entries(maps_dir, maps::DELIVERY6);
    let mut out = Vec::new();
    for (ifindex, info) in known {
        let interface = interface_name(ifindex).unwrap_or_else(|| format!("ifindex-{ifindex} (gone)"));
        let linked: Vec<&str> = [weir_datapath_common::programs::FROM_POD, weir_datapath_common::programs::TO_POD]
            .into_iter()
            .filter(|p| links.iter().any(|l| *l == super::link_name(&interface, p)))
            .collect();
        let programs = if linked.is_empty() { "none".to_string() } else { linked.join(",") };
        let held_refused = |usage: &BTreeMap<u32, CtUsage>, freed: &BTreeMap<u32, u64>| {
            usage.get(&ifindex).map_or((0, 0), |u| {
                let gone = u.reclaimed + freed.get(&ifindex).copied().unwrap_or(0);
                (u.created.saturating_sub(gone), u.refused)
            })
        };
        let (held, refused) = held_refused(&usage, &freed);
        let (fragments_held, fragments_refused) = held_refused(&fragment_usage, &fragments_freed);
        let mut address = std::net::Ipv4Addr::from(info.ipv4.to_ne_bytes()).to_string();
        if let Some(v6) = ipv6.get(&ifindex) {
            address = format!("{address},{}", super::ipv6_of(*v6));
        }
        // either family's entry: each is learned from its own neighbour messages
        let learned = |entry: Option<&Delivery>| entry.is_some_and(|d| d.ifindex == ifindex);
        let past = info.flags & weir_datapath_common::ENDPOINT_PEER_DELIVERY != 0
            && (learned(delivery.get(&info.ipv4)) || learned(ipv6.get(&ifindex).and_then(|a| delivery6.get(a))));
        let delivered = if past { "past the node's stack" } else { "by the node's routing" };
        out.push(format!(
            "endpoint {interface} {address} identity {}: programs {programs}; conntrack {held} held, {refused} refused; \
             fragmented datagrams {fragments_held} held, {fragments_refused} refused; delivered {delivered}",
            info.identity
        ));
    }
    out
}

fn interface_name(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer has IF_NAMESIZE bytes, as if_indextoname requires.
    let name = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if name.is_null() {
        return None;
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
    Some(unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned())
}

fn device_lines(links: &[String], devices: &[String]) -> Vec<String> {
    devices
        .iter()
        .map(|device| {
            let program = weir_datapath_common::programs::FROM_NETDEV;
            let linked = links.iter().any(|l| *l == super::link_name(device, program));
            format!("device {device}: {}", if linked { program } else { "not attached" })
        })
        .collect()
}
