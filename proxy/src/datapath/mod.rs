//! The eBPF datapath (`weir run --datapath ebpf`): loads the programs built
//! from `datapath-ebpf/`, attaches them to each pod's host-side veth, keeps
//! the maps in step with the model, installs the redirect plumbing, turns
//! kernel events into flow records, and takes everything down again.
//!
//! Lifecycle. Maps and program links are pinned under `datapath.bpffs`. A
//! weir that starts while pins exist (a crash, or a rolling restart where the
//! new process starts before the old one stops) reuses the maps — conntrack
//! included, so established connections keep flowing — and swaps its
//! programs into the pinned links atomically (no window without a program).
//! The state file names the owning process; a stopping weir cleans up only
//! what it still owns.

pub mod compile;
pub mod events;
pub mod routing;
pub mod splice;
mod status;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf, SockHash};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::TcAttachOptions;
use aya::programs::{CgroupAttachMode, LinkOrder, SchedClassifier, SkMsg, SockOps, TcAttachType};
use aya::{Ebpf, EbpfLoader};
use std::time::Duration;
use weir_datapath_common::{
    Delivery, ENDPOINT_PEER_DELIVERY, EndpointInfo, EndpointIpv6, IpcacheKey, IpcacheKey6, IpcacheValue, PolicyKey,
    PolicyValue, Settings, maps, programs,
};

use crate::config::{ConntrackConfig, DatapathConfig, HostRouting};
use crate::model::PolicyModel;
use crate::protocol::Protocol;
use compile::{AttachedEndpoint, Desired};
use routing::NodeState;

/// The programs, built by build.rs from `datapath-ebpf/programs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("WEIR_DATAPATH_OBJECT"));

impl ConntrackConfig {
    /// What the programs read; lifetimes in whole seconds, at least one.
    /// (`datapath.conntrack` itself is in `config.rs`.)
    fn settings(&self) -> Settings {
        let secs = |d: Duration| d.as_secs().clamp(1, u64::from(u32::MAX)) as u32;
        Settings {
            ct_per_endpoint: self.per_endpoint.max(1),
            tcp_syn_secs: secs(self.tcp_syn),
            tcp_established_secs: secs(self.tcp_established),
            tcp_closing_secs: secs(self.tcp_closing),
            udp_secs: secs(self.udp),
            icmp_secs: secs(self.icmp),
            other_secs: secs(self.other),
            fragments_per_endpoint: self.fragments_per_endpoint.max(1),
        }
    }
}

/// One program attached to one interface, through a pinned TCX link.
struct Attachment {
    ifindex: u32,
    pin: PathBuf,
    _link: FdLink,
}

pub struct Datapath {
    config: DatapathConfig,
    ebpf: Ebpf,
    state: NodeState,
    /// interface name → [from-pod, to-pod]
    attached: BTreeMap<String, [Attachment; 2]>,
    /// node device name → from-netdev
    devices: BTreeMap<String, Attachment>,
    /// Whether this process has bumped the policy revision yet.
    revised_once: bool,
    /// This process's half of every revision it writes, and its count.
    revision_epoch: u32,
    revisions: u32,
    proxy_sockets: SockHash<MapData, u32>,
    /// Where the proxy adds its sockets to splice (`datapath.splice`).
    splicer: Option<std::sync::Arc<crate::net::Splicer>>,
    /// Whether each endpoint's interface has a peer local delivery can
    /// reach (by ifindex; asked once per interface).
    peer_devices: HashMap<u32, bool>,
    /// Why entries decided what they did, by `PolicyValue::rule`.
    pub rules: std::sync::Arc<std::sync::RwLock<events::RuleTexts>>,
}

fn maps_dir(bpffs: &Path) -> PathBuf {
    bpffs.join("maps")
}

fn links_dir(bpffs: &Path) -> PathBuf {
    bpffs.join("links")
}

/// bpffs refuses names with dots (they are kept for its own `.debug` files).
fn link_pin(bpffs: &Path, interface: &str, program: &str) -> PathBuf {
    links_dir(bpffs).join(link_name(interface, program))
}

fn link_name(interface: &str, program: &str) -> String {
    format!("{}-{program}", interface.replace('.', "_"))
}

impl Datapath {
    /// Load the programs (reusing pinned maps), install the node plumbing and
    /// take ownership. Nothing is attached until [`Datapath::apply`].
    /// `taking_over`: a running weir is handing the node to this one.
    pub fn start(config: &DatapathConfig, taking_over: bool) -> anyhow::Result<Datapath> {
        ensure_bpffs(&config.bpffs)?;
        std::fs::create_dir_all(maps_dir(&config.bpffs))
            .with_context(|| format!("creating {}", config.bpffs.display()))?;
        std::fs::create_dir_all(links_dir(&config.bpffs))?;
        let previous = routing::read_state(&config.bpffs);
        // a running weir being taken over keeps what is installed, whatever
        // becomes of this start. The hand-over says so; the owner's pid is
        // a second guess for one that did not (not in Kubernetes, where
        // every weir is pid 1 of its own pod)
        let handing_over =
            taking_over || previous.as_ref().is_some_and(|s| s.owner != std::process::id() && s.owner_alive());
        // the running weir's proxied connections carry its marks, which the
        // programs and rules would no longer know. Only a hand-over says for
        // sure that one runs (the pid guess above only keeps it safe)
        let wanted = config.marks.marks();
        if taking_over
            && let Some(running) = previous.as_ref().map(routing::NodeState::marks)
            && running != wanted
        {
            bail!(
                "datapath.marks differ from those of the running weir (running: {running}; configured: \
                 {wanted}): its proxied connections would lose their way. Marks move with a restart, not a \
                 hand-over: stop the running weir first (in Kubernetes, delete its pod)"
            );
        }
        let mut state = previous.unwrap_or_default();
        state.take_ownership();
        routing::install(config, &mut state).context("installing the redirect rules and route")?;
        match Self::load(config, state.clone()) {
            Ok(datapath) => Ok(datapath),
            Err(e) => {
                if !handing_over {
                    for error in cleanup_pins_and_node(config, Some(state)) {
                        tracing::warn!("after a failed start: {error}");
                    }
                }
                Err(e)
            }
        }
    }

    /// The programs and maps, once the node's plumbing is installed.
    fn load(config: &DatapathConfig, state: NodeState) -> anyhow::Result<Datapath> {
        let pins = maps_dir(&config.bpffs);
        for obsolete in maps::OBSOLETE {
            let _ = std::fs::remove_file(pins.join(obsolete));
        }
        // a reused pin keeps the size it was made with: the bindings' map is
        // made anew when splicing was turned on or off (its entries live for
        // a handshake; connections bound in the old one are not spliced)
        let bindings = pins.join(maps::SPLICE_BINDINGS);
        if let Ok(pinned) = aya::maps::MapData::from_pin(&bindings)
            && pinned.info().is_ok_and(|i| i.max_entries() != splice_bindings_size(config))
        {
            let _ = std::fs::remove_file(&bindings);
        }
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&pins)
            .map_max_entries(maps::CONNTRACK, config.conntrack.capacity.max(1))
            .map_max_entries(maps::CONNTRACK6, config.conntrack.capacity_ipv6.max(1))
            .override_global(programs::HOST_ROUTING, &u8::from(config.host_routing == HostRouting::Bpf), true)
            .override_global(programs::MARKS, &config.marks.marks(), true)
            .map_max_entries(maps::SPLICE_BINDINGS, splice_bindings_size(config))
            .override_global(programs::SPLICE_PORT, &(if config.splice { config.proxy_port } else { 0 }), true)
            .load(OBJECT)
            .context("loading the eBPF programs")?;
        for name in [programs::FROM_POD, programs::TO_POD, programs::FROM_NETDEV] {
            let program: &mut SchedClassifier =
                ebpf.program_mut(name).ok_or_else(|| anyhow!("program {name} missing from the object"))?.try_into()?;
            program.load().with_context(|| format!("verifying {name}"))?;
        }
        {
            let mut settings: Array<_, Settings> =
                Array::try_from(ebpf.map_mut(maps::SETTINGS).expect("in the object"))?;
            settings.set(0, config.conntrack.settings(), 0).context("writing the datapath settings")?;
        }
        let proxy_sockets = SockHash::try_from(ebpf.take_map(maps::PROXY_SOCKETS).expect("in the object"))?;
        let splicer = if config.splice {
            match start_splicing(&mut ebpf, config) {
                Ok(splicer) => Some(std::sync::Arc::new(splicer)),
                // the proxy works without it, a little slower
                Err(e) => {
                    tracing::warn!("splicing the proxy's writes to local pods is off: {e:#}");
                    None
                }
            }
        } else {
            None
        };
        Ok(Datapath {
            config: config.clone(),
            ebpf,
            state,
            attached: BTreeMap::new(),
            devices: BTreeMap::new(),
            revised_once: false,
            revision_epoch: revision_epoch(),
            revisions: 0,
            proxy_sockets,
            splicer,
            peer_devices: HashMap::new(),
            rules: Default::default(),
        })
    }

    /// Where the HTTP proxy adds the sockets it splices (`None`: off).
    pub fn splicer(&self) -> Option<std::sync::Arc<crate::net::Splicer>> {
        self.splicer.clone()
    }

    /// The kernel's event ring and counters, for [`events::run`] (which
    /// also collects expired conntrack entries and fragment records). Call once.
    pub fn take_events(&mut self) -> anyhow::Result<events::Kernel> {
        let mut take = |name: &str| self.ebpf.take_map(name).ok_or_else(|| anyhow!("{name} already taken"));
        let conntrack = take(maps::CONNTRACK)?;
        let conntrack6 = take(maps::CONNTRACK6)?;
        // a reused pin has the size it was created with
        let capacity = match &conntrack {
            aya::maps::Map::HashMap(data) => data.info().map(|i| i.max_entries()).ok(),
            _ => None,
        };
        Ok(events::Kernel {
            ring: RingBuf::try_from(take(maps::EVENTS)?)?,
            conntrack: BpfHashMap::try_from(conntrack)?,
            conntrack6: BpfHashMap::try_from(conntrack6)?,
            capacity: capacity.unwrap_or(self.config.conntrack.capacity),
            usage: events::Ledger {
                usage: BpfHashMap::try_from(take(maps::CT_USAGE)?)?,
                freed: BpfHashMap::try_from(take(maps::CT_FREED)?)?,
            },
            fragments: BpfHashMap::try_from(take(maps::FRAGMENTS)?)?,
            fragments6: BpfHashMap::try_from(take(maps::FRAGMENTS6)?)?,
            fragment_usage: events::Ledger {
                usage: BpfHashMap::try_from(take(maps::FRAG_USAGE)?)?,
                freed: BpfHashMap::try_from(take(maps::FRAG_FREED)?)?,
            },
            drops: PerCpuArray::try_from(take(maps::DROPS)?)?,
            gc_interval: self.config.conntrack.gc_interval,
        })
    }

    /// Register a proxy socket the programs assign packets to: a TCP listener
    /// or a UDP socket (`protocol`: IP number) bound to `bind` (its port, and
    /// its family: IPv6 packets go to IPv6 sockets).
    pub fn register_proxy_socket(
        &mut self,
        bind: SocketAddr,
        protocol: u8,
        socket: &impl AsRawFd,
    ) -> anyhow::Result<()> {
        let key = if bind.is_ipv6() {
            weir_datapath_common::proxy_socket_key6(bind.port(), protocol)
        } else {
            weir_datapath_common::proxy_socket_key(bind.port(), protocol)
        };
        self.proxy_sockets.insert(key, socket.as_raw_fd(), 0).context("adding the proxy socket")?;
        Ok(())
    }

    /// Compile the model and bring maps and attachments in step with it.
    /// Maps are updated in place (new and changed entries first, then the
    /// ones that went away), so no packet sees an empty policy.
    pub fn apply(&mut self, model: &PolicyModel) -> Result<(), Vec<String>> {
        let node = node_addresses();
        let desired = compile::compile(model, &self.config, &node, ifindex_of)?;
        self.sync_maps(&desired).map_err(|e| vec![format!("updating the datapath maps: {e:#}")])?;
        self.sync_attachments(&desired.endpoints).map_err(|e| vec![format!("attaching the datapath: {e:#}")])?;
        self.sync_devices();
        let mut rules = self.rules.write().unwrap();
        rules.texts = desired.rules;
        rules.cidrs = desired.cidr_identities;
        rules.endpoints = desired.endpoints.iter().map(|e| (e.ifindex, e.name.clone())).collect();
        Ok(())
    }

    fn sync_maps(&mut self, desired: &Desired) -> anyhow::Result<()> {
        // the first apply of a process always revises: its programs may judge
        // differently from the ones that stamped the entries (an upgrade)
        let mut changed = !self.revised_once;
        // endpoints this process has not seen before (their device asked
        // about once, their delivery seeded once)
        let mut new_endpoints = std::collections::HashSet::new();
        {
            let mut map: BpfHashMap<_, u32, EndpointInfo> =
                BpfHashMap::try_from(self.ebpf.map_mut(maps::ENDPOINTS).expect("in the object"))?;
            let host_routing = self.config.host_routing == HostRouting::Bpf;
            let peers = &mut self.peer_devices;
            let wanted: HashMap<u32, EndpointInfo> = desired
                .endpoints
                .iter()
                .map(|e| {
                    let mut info = e.info;
                    let peer = *peers.entry(e.ifindex).or_insert_with(|| {
                        new_endpoints.insert(e.ifindex);
                        has_peer(&e.interface)
                    });
                    if host_routing && peer {
                        info.flags |= ENDPOINT_PEER_DELIVERY;
                    }
                    (e.ifindex, info)
                })
                .collect();
            peers.retain(|ifindex, _| wanted.contains_key(ifindex));
            changed |= sync_hash(&mut map, &wanted)?;
        }
        {
            let mut map: BpfHashMap<_, u32, EndpointIpv6> =
                BpfHashMap::try_from(self.ebpf.map_mut(maps::ENDPOINTS6).expect("in the object"))?;
            let wanted: HashMap<u32, EndpointIpv6> =
                desired.endpoints.iter().filter_map(|e| Some((e.ifindex, ipv6_raw(e.ipv6?)))).collect();
            changed |= sync_hash(&mut map, &wanted)?;
        }
        {
            let mut map: LpmTrie<_, IpcacheKey6, IpcacheValue> =
                LpmTrie::try_from(self.ebpf.map_mut(maps::IPCACHE6).expect("in the object"))?;
            let wanted: HashMap<(u32, IpcacheKey6), IpcacheValue> = desired
                .ipcache6
                .iter()
                .map(|(net, value)| ((u32::from(net.prefix_len()), net.network().octets()), *value))
                .collect();
            changed |= sync_lpm(&mut map, &wanted)?;
        }
        {
            let mut map: LpmTrie<_, IpcacheKey, IpcacheValue> =
                LpmTrie::try_from(self.ebpf.map_mut(maps::IPCACHE).expect("in the object"))?;
            let wanted: HashMap<(u32, IpcacheKey), IpcacheValue> = desired
                .ipcache
                .iter()
                .map(|(net, value)| ((u32::from(net.prefix_len()), net.network().octets()), *value))
                .collect();
            changed |= sync_lpm(&mut map, &wanted)?;
        }
        {
            let mut map: BpfHashMap<_, PolicyKey, PolicyValue> =
                BpfHashMap::try_from(self.ebpf.map_mut(maps::POLICY).expect("in the object"))?;
            changed |= sync_hash(&mut map, &desired.policy)?;
        }
        // learned by the programs (no revision: where a pod is, not policy);
        // with the node's routing, nothing stays
        let delivering: &[AttachedEndpoint] =
            if self.config.host_routing == HostRouting::Bpf { &desired.endpoints } else { &[] };
        {
            let wanted: HashMap<u32, u32> =
                delivering.iter().filter(|e| e.info.ipv4 != 0).map(|e| (e.info.ipv4, e.ifindex)).collect();
            let mut map = BpfHashMap::try_from(self.ebpf.map_mut(maps::DELIVERY).expect("in the object"))?;
            forget_deliveries(&mut map, &wanted)?;
        }
        {
            let wanted: HashMap<EndpointIpv6, u32> =
                delivering.iter().filter_map(|e| Some((ipv6_raw(e.ipv6?), e.ifindex))).collect();
            let mut map = BpfHashMap::try_from(self.ebpf.map_mut(maps::DELIVERY6).expect("in the object"))?;
            forget_deliveries(&mut map, &wanted)?;
        }
        // once per endpoint: an address the table lacks now is learned by the
        // programs when the node next routes to that pod
        let new: Vec<AttachedEndpoint> =
            delivering.iter().filter(|e| new_endpoints.contains(&e.ifindex)).cloned().collect();
        if let Err(e) = self.seed_deliveries(&new) {
            // the programs learn them anyway, from the next neighbour message
            tracing::warn!("reading the node's neighbour table: {e:#}");
        }
        // after the maps: a connection judged again from here on is judged
        // under the new entries (one judged between the writes and this
        // bump is judged once more, which costs nothing but a lookup)
        if changed {
            self.bump_revision()?;
            self.revised_once = true;
        }
        Ok(())
    }

    /// Endpoints new to this process that the programs have not learned
    /// yet, from the node's neighbour table: a pod that was talking before
    /// weir started sends no neighbour message until an entry needs
    /// confirming (tens of seconds, or never while traffic confirms it), but
    /// the node's table already knows it.
    fn seed_deliveries(&mut self, endpoints: &[AttachedEndpoint]) -> anyhow::Result<()> {
        let peers: Vec<&AttachedEndpoint> =
            endpoints.iter().filter(|e| self.peer_devices.get(&e.ifindex) == Some(&true)).collect();
        let missing4: Vec<&AttachedEndpoint> = {
            let map: BpfHashMap<_, u32, Delivery> =
                BpfHashMap::try_from(self.ebpf.map(maps::DELIVERY).expect("in the object"))?;
            peers.iter().copied().filter(|e| e.info.ipv4 != 0 && map.get(&e.info.ipv4, 0).is_err()).collect()
        };
        let missing6: Vec<&AttachedEndpoint> = {
            let map: BpfHashMap<_, EndpointIpv6, Delivery> =
                BpfHashMap::try_from(self.ebpf.map(maps::DELIVERY6).expect("in the object"))?;
            peers.iter().copied().filter(|e| e.ipv6.is_some_and(|a| map.get(&ipv6_raw(a), 0).is_err())).collect()
        };
        if missing4.is_empty() && missing6.is_empty() {
            return Ok(());
        }
        let table = routing::neighbours()?;
        let learned = |e: &AttachedEndpoint, address: IpAddr| {
            let pod = table.entries.get(&(address, e.interface.clone()))?;
            let node = table.links.get(&e.interface)?;
            let mut macs = [0u8; 12];
            macs[..6].copy_from_slice(pod);
            macs[6..].copy_from_slice(node);
            Some(Delivery { ifindex: e.ifindex, macs })
        };
        let mut v4: BpfHashMap<_, u32, Delivery> =
            BpfHashMap::try_from(self.ebpf.map_mut(maps::DELIVERY).expect("in the object"))?;
        for e in missing4 {
            let address = IpAddr::V4(Ipv4Addr::from(e.info.ipv4.to_ne_bytes()));
            if let Some(delivery) = learned(e, address) {
                // what the programs learned in the meantime stays
                let _ = v4.insert(e.info.ipv4, delivery, BPF_NOEXIST);
            }
        }
        let mut v6: BpfHashMap<_, EndpointIpv6, Delivery> =
            BpfHashMap::try_from(self.ebpf.map_mut(maps::DELIVERY6).expect("in the object"))?;
        for e in missing6 {
            let address = e.ipv6.expect("filtered");
            if let Some(delivery) = learned(e, IpAddr::V6(address)) {
                let _ = v6.insert(ipv6_raw(address), delivery, BPF_NOEXIST);
            }
        }
        Ok(())
    }

    /// Make every tracked connection's next packet be judged again: a
    /// revision no entry carries. Two weirs write it during a hand-over, so a
    /// revision is this process's own (its high half, drawn at start) and
    /// its count of changes (the low half): one process's revision never
    /// equals the other's, whatever order their writes land in.
    fn bump_revision(&mut self) -> anyhow::Result<()> {
        let mut map: Array<_, u32> = Array::try_from(self.ebpf.map_mut(maps::REVISION).expect("in the object"))?;
        let current = map.get(&0, 0)?;
        loop {
            self.revisions = self.revisions.wrapping_add(1);
            let next = self.revision_epoch << 16 | (self.revisions & 0xFFFF);
            if next != current {
                map.set(0, next, 0)?;
                return Ok(());
            }
        }
    }

    fn sync_attachments(&mut self, endpoints: &[AttachedEndpoint]) -> anyhow::Result<()> {
        for endpoint in endpoints {
            let current = self.attached.get(&endpoint.interface).map(|a| a[0].ifindex);
            if current == Some(endpoint.ifindex) {
                continue;
            }
            // a pod whose veth was re-created gets fresh links
            if let Some(old) = self.attached.remove(&endpoint.interface) {
                detach(old);
            }
            let from = self.attach(&endpoint.interface, endpoint.ifindex, programs::FROM_POD, TcAttachType::Ingress)?;
            let to = self.attach(&endpoint.interface, endpoint.ifindex, programs::TO_POD, TcAttachType::Egress)?;
            tracing::info!(endpoint = %endpoint.name, interface = %endpoint.interface, "datapath attached");
            self.attached.insert(endpoint.interface.clone(), [from, to]);
        }
        let gone: Vec<String> =
            self.attached.keys().filter(|name| !endpoints.iter().any(|e| &e.interface == *name)).cloned().collect();
        for name in gone {
            tracing::info!(interface = %name, "datapath detached");
            detach(self.attached.remove(&name).unwrap());
        }
        Ok(())
    }

    /// Attach the off-node program to each configured device that exists
    /// and is not attached yet (or was re-created). A missing device is not
    /// an error of the policy: it is logged, and the next apply tries again.
    fn sync_devices(&mut self) {
        for device in self.config.devices.clone() {
            let Some(ifindex) = ifindex_of(&device) else {
                if self.devices.remove(&device).is_some() {
                    tracing::warn!(%device, "device gone; off-node L7 ingress through it fails closed");
                } else {
                    tracing::warn!(%device, "datapath.devices names a device this node does not have (yet)");
                }
                continue;
            };
            if self.devices.get(&device).is_some_and(|a| a.ifindex == ifindex) {
                continue;
            }
            match self.attach(&device, ifindex, programs::FROM_NETDEV, TcAttachType::Ingress) {
                Ok(attachment) => {
                    tracing::info!(%device, "datapath attached to the node device");
                    self.devices.insert(device, attachment);
                }
                Err(e) => tracing::warn!(%device, "attaching to the node device failed: {e:#}"),
            }
        }
    }

    /// Attach through the pinned link if one exists (an atomic program swap
    /// in the running link), else create and pin a new link.
    fn attach(
        &mut self,
        interface: &str,
        ifindex: u32,
        program_name: &str,
        attach_type: TcAttachType,
    ) -> anyhow::Result<Attachment> {
        let pin = link_pin(&self.config.bpffs, interface, program_name);
        let program: &mut SchedClassifier = self.ebpf.program_mut(program_name).expect("loaded").try_into()?;
        if let Ok(old) = PinnedLink::from_pin(&pin) {
            let swapped = FdLink::from(old).try_into().map_err(anyhow::Error::from).and_then(|link| {
                let id = program.attach_to_link(link)?;
                Ok(program.take_link(id)?)
            });
            match swapped {
                Ok(link) => return Ok(Attachment { ifindex, pin, _link: link.try_into()? }),
                Err(e) => {
                    // the link belonged to an interface that is gone
                    tracing::debug!(%interface, "pinned link not reusable ({e:#}); attaching anew");
                    let _ = std::fs::remove_file(&pin);
                }
            }
        }
        let id = program
            .attach_with_options(interface, attach_type, TcAttachOptions::TcxOrder(LinkOrder::default()))
            .with_context(|| format!("attaching {program_name} to {interface}"))?;
        let link: FdLink = program.take_link(id)?.try_into()?;
        let pinned = link.pin(&pin).with_context(|| format!("pinning {}", pin.display()))?;
        Ok(Attachment { ifindex, pin, _link: pinned.into() })
    }

    /// A new weir that was taking the node over went away before it was
    /// ready: this process owns the datapath again; the next apply writes
    /// every map from this process's model.
    pub fn reclaim(&mut self) -> anyhow::Result<()> {
        self.state.take_ownership();
        routing::write_state(&self.config.bpffs, &self.state)?;
        // the new weir may have swapped its programs (perhaps another
        // version's) into the pinned links: this process's go back in
        let interfaces: Vec<(String, u32)> =
            self.attached.iter().map(|(name, a)| (name.clone(), a[0].ifindex)).collect();
        for (interface, ifindex) in interfaces {
            let from = self.attach(&interface, ifindex, programs::FROM_POD, TcAttachType::Ingress)?;
            let to = self.attach(&interface, ifindex, programs::TO_POD, TcAttachType::Egress)?;
            self.attached.insert(interface, [from, to]);
        }
        let devices: Vec<(String, u32)> = self.devices.iter().map(|(name, a)| (name.clone(), a.ifindex)).collect();
        for (device, ifindex) in devices {
            let from = self.attach(&device, ifindex, programs::FROM_NETDEV, TcAttachType::Ingress)?;
            self.devices.insert(device, from);
        }
        Ok(())
    }

    /// A clean stop: detach, unpin, remove rules and routes — unless another
    /// weir took the datapath over in the meantime.
    pub fn shutdown(mut self) -> Vec<String> {
        let state = routing::read_state(&self.config.bpffs);
        if let Some(state) = state.filter(|s| !s.owned_here()) {
            tracing::info!(owner = state.owner, "another weir owns the datapath now; leaving it attached");
            return Vec::new();
        }
        use weir_datapath_common::{PROTO_TCP, PROTO_UDP, proxy_socket_key};
        let tcp = self.config.proxy_ports().map(|(_, port)| proxy_socket_key(port, PROTO_TCP));
        let keys: Vec<u32> = tcp.chain([proxy_socket_key(self.config.dns_proxy_port, PROTO_UDP)]).collect();
        let keys6 = keys.iter().map(|key| key | weir_datapath_common::PROXY_SOCKET_IPV6);
        for key in keys.iter().copied().chain(keys6).collect::<Vec<_>>() {
            let _ = self.proxy_sockets.remove(&key);
        }
        for (_, pair) in std::mem::take(&mut self.attached) {
            detach(pair);
        }
        for (_, device) in std::mem::take(&mut self.devices) {
            detach([device]);
        }
        let (config, state) = (self.config.clone(), self.state.clone());
        drop(self);
        cleanup_pins_and_node(&config, Some(state))
    }
}

fn splice_bindings_size(config: &DatapathConfig) -> u32 {
    if config.splice { maps::SPLICE_BINDINGS_CAPACITY } else { maps::SPLICE_BINDINGS_OFF }
}

/// Load the splice programs: `weir_splice` on WEIR_SPLICE_PROXY, and
/// `weir_sockops` on the node's cgroup (its link lives as long as this
/// process: a successor attaches its own beside it).
fn start_splicing(ebpf: &mut Ebpf, config: &DatapathConfig) -> anyhow::Result<crate::net::Splicer> {
    let cgroup_path = config.cgroup.clone().or_else(splice::cgroup_root).ok_or_else(|| anyhow!("no cgroup2 mount"))?;
    let proxy_map = ebpf.take_map(maps::SPLICE_PROXY).ok_or_else(|| anyhow!("{} missing", maps::SPLICE_PROXY))?;
    let proxy_map: SockHash<MapData, weir_datapath_common::SpliceKey> = SockHash::try_from(proxy_map)?;
    let program: &mut SkMsg =
        ebpf.program_mut(programs::SPLICE).ok_or_else(|| anyhow!("no splice program"))?.try_into()?;
    program.load().context("verifying weir_splice")?;
    program.attach(proxy_map.fd()).context("attaching weir_splice")?;
    let program: &mut SockOps =
        ebpf.program_mut(programs::SOCKOPS).ok_or_else(|| anyhow!("no sock_ops program"))?.try_into()?;
    program.load().context("verifying weir_sockops")?;
    let cgroup =
        std::fs::File::open(&cgroup_path).with_context(|| format!("opening the cgroup {}", cgroup_path.display()))?;
    program.attach(cgroup, CgroupAttachMode::Single).context("attaching weir_sockops")?;
    tracing::info!(cgroup = %cgroup_path.display(), "splicing the proxy's writes to local pods");
    // the weir's own descriptor of the map, for the proxy to add its sockets
    let fd = std::os::fd::AsFd::as_fd(proxy_map.fd()).try_clone_to_owned()?;
    Ok(crate::net::Splicer::new(fd))
}

fn detach<const N: usize>(links: [Attachment; N]) {
    for a in links {
        let _ = std::fs::remove_file(&a.pin);
        // dropping the last reference (fd, no pin) detaches the program
    }
}

/// Remove pins, rules, routes and the state file; used by a clean stop and by
/// `weir datapath cleanup` after a crash. Returns what could not be undone.
pub fn cleanup_pins_and_node(config: &DatapathConfig, state: Option<NodeState>) -> Vec<String> {
    let mut errors = Vec::new();
    for dir in [links_dir(&config.bpffs), maps_dir(&config.bpffs)] {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                if let Err(e) = std::fs::remove_file(entry.path()) {
                    errors.push(format!("{}: {e}", entry.path().display()));
                }
            }
        }
        let _ = std::fs::remove_dir(&dir);
    }
    let _ = std::fs::remove_dir(&config.bpffs);
    let state = state.or_else(|| routing::read_state(&config.bpffs));
    if let Some(state) = state {
        errors.extend(routing::uninstall(&state));
    }
    routing::remove_state(&config.bpffs);
    errors
}

/// What is attached and installed now, and what the maps hold, for
/// `weir datapath status`.
pub fn status(config: &DatapathConfig) -> Vec<String> {
    status::report(config)
}

/// 16 bits that differ between two weirs on one node: from the clock and
/// the pid (both run at once only during a hand-over, a new pid).
fn revision_epoch() -> u32 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    (std::process::id() ^ nanos ^ (nanos >> 16)) & 0xFFFF
}

/// Delete what the programs learned about pods that are no longer this
/// node's endpoints, or not behind the veth they were learned on (a pod
/// re-created with the address of one that went): its packets go by the
/// node's routing until the new pod answers the node's neighbour lookup.
fn forget_deliveries<K>(map: &mut BpfHashMap<&mut MapData, K, Delivery>, wanted: &HashMap<K, u32>) -> anyhow::Result<()>
where
    K: aya::Pod + Eq + std::hash::Hash,
{
    let stale: Vec<K> = map
        .iter()
        .filter_map(Result::ok)
        .filter(|(address, learned)| wanted.get(address) != Some(&learned.ifindex))
        .map(|(address, _)| address)
        .collect();
    for address in stale {
        map.remove(&address)?;
    }
    Ok(())
}

/// Bring an LPM trie to `wanted` ((prefix length, address) → value);
/// whether anything changed.
fn sync_lpm<K, V>(map: &mut LpmTrie<&mut MapData, K, V>, wanted: &HashMap<(u32, K), V>) -> anyhow::Result<bool>
where
    K: aya::Pod + Eq + std::hash::Hash,
    V: aya::Pod + PartialEq,
{
    let mut changed = false;
    for ((prefix, data), value) in wanted {
        let key = LpmKey::new(*prefix, *data);
        if map.get(&key, 0).ok().as_ref() != Some(value) {
            map.insert(&key, value, 0)?;
            changed = true;
        }
    }
    let stale: Vec<LpmKey<K>> =
        map.keys().filter_map(Result::ok).filter(|k| !wanted.contains_key(&(k.prefix_len(), k.data()))).collect();
    changed |= !stale.is_empty();
    for key in stale {
        map.remove(&key)?;
    }
    Ok(changed)
}

/// An IPv6 address as the programs read it off the wire.
fn ipv6_raw(address: Ipv6Addr) -> EndpointIpv6 {
    let o = address.octets();
    std::array::from_fn(|i| u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]))
}

/// The reverse of [`ipv6_raw`].
pub(crate) fn ipv6_of(raw: EndpointIpv6) -> Ipv6Addr {
    let mut octets = [0u8; 16];
    for (i, word) in raw.iter().enumerate() {
        octets[4 * i..4 * i + 4].copy_from_slice(&word.to_ne_bytes());
    }
    Ipv6Addr::from(octets)
}

/// Bring `map` to `wanted`; whether anything changed.
fn sync_hash<K, V>(map: &mut BpfHashMap<&mut MapData, K, V>, wanted: &HashMap<K, V>) -> anyhow::Result<bool>
where
    K: aya::Pod + Eq + std::hash::Hash,
    V: aya::Pod + PartialEq,
{
    let mut changed = false;
    for (key, value) in wanted {
        if map.get(key, 0).ok().as_ref() != Some(value) {
            map.insert(key, value, 0)?;
            changed = true;
        }
    }
    let stale: Vec<K> = map.keys().filter_map(Result::ok).filter(|k| !wanted.contains_key(k)).collect();
    changed |= !stale.is_empty();
    for key in stale {
        map.remove(&key)?;
    }
    Ok(changed)
}

fn ensure_bpffs(dir: &Path) -> anyhow::Result<()> {
    let root = Path::new("/sys/fs/bpf");
    if dir.starts_with(root) && !is_bpffs(root) {
        let status = std::process::Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]).status()?;
        if !status.success() {
            anyhow::bail!("bpffs is not mounted at /sys/fs/bpf and mounting it failed");
        }
    }
    Ok(())
}

fn is_bpffs(path: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .map(|m| m.lines().any(|l| l.split(' ').nth(1) == path.to_str() && l.split(' ').nth(2) == Some("bpf")))
        .unwrap_or(false)
}

fn ifindex_of(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// `bpf_map_update_elem`'s flag: only if the key is absent.
const BPF_NOEXIST: u64 = 1;

/// Whether `interface` is a veth or netkit device: the kinds whose peer, in
/// the pod, `bpf_redirect_peer` hands packets to (for any other kind the
/// kernel would drop them). Asked through ethtool's driver information.
fn has_peer(interface: &str) -> bool {
    let driver = driver_of(interface);
    let peer = matches!(driver.as_deref(), Some("veth" | "netkit"));
    if !peer {
        tracing::info!(%interface, ?driver, "not a veth: packets to this endpoint take the node's routing");
    }
    peer
}

fn driver_of(interface: &str) -> Option<String> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    /// `struct ethtool_drvinfo` (linux/ethtool.h).
    #[repr(C)]
    struct DriverInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 32 * 4 + 12 + 4 * 5],
    }
    /// `struct ifreq` with its data pointer.
    #[repr(C)]
    struct Request {
        name: [u8; libc::IFNAMSIZ],
        data: *mut DriverInfo,
        _pad: [u8; 16],
    }
    const ETHTOOL_GDRVINFO: u32 = 3;
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    let bytes = interface.as_bytes();
    if bytes.len() >= libc::IFNAMSIZ {
        return None;
    }
    let mut info = DriverInfo { cmd: ETHTOOL_GDRVINFO, driver: [0; 32], rest: [0; 32 * 4 + 12 + 4 * 5] };
    let mut request = Request { name: [0; libc::IFNAMSIZ], data: &mut info, _pad: [0; 16] };
    request.name[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: a plain socket call; the descriptor is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: fd is a new descriptor nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: the request names a NUL-terminated interface and points at a
    // drvinfo buffer of the kernel's size; both outlive the call.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), SIOCETHTOOL, &mut request as *mut Request) };
    if rc != 0 {
        return None;
    }
    let end = info.driver.iter().position(|b| *b == 0).unwrap_or(info.driver.len());
    Some(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

/// The node's own addresses (`reserved:host` in the ipcache).
fn node_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut addrs: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we walk read-only and free once.
    unsafe {
        if libc::getifaddrs(&mut addrs) != 0 {
            return out;
        }
        let mut cursor = addrs;
        while !cursor.is_null() {
            let addr = (*cursor).ifa_addr;
            if !addr.is_null() && i32::from((*addr).sa_family) == libc::AF_INET {
                let sin = &*(addr as *const libc::sockaddr_in);
                out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))));
            } else if !addr.is_null() && i32::from((*addr).sa_family) == libc::AF_INET6 {
                let sin6 = &*(addr as *const libc::sockaddr_in6);
                out.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
            }
            cursor = (*cursor).ifa_next;
        }
        libc::freeifaddrs(addrs);
    }
    out.sort();
    out.dedup();
    out
}

/// Where `protocol`'s transparent socket(s) bind: loopback, so nothing
/// reaches them by address from outside the node; the programs assign
/// packets to them.
pub fn proxy_bind(config: &DatapathConfig, protocol: Protocol) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], config.proxy_port_of(protocol)))
}

/// The same for IPv6 (`::1`): IPv6 packets are assigned to IPv6 sockets.
pub fn proxy_bind6(config: &DatapathConfig, protocol: Protocol) -> SocketAddr {
    SocketAddr::from((Ipv6Addr::LOCALHOST, config.proxy_port_of(protocol)))
}

#[cfg(test)]
mod tests {
    use crate::config::ConntrackConfig;

    #[test]
    fn conntrack_settings_parse_and_reach_the_programs_in_whole_seconds() {
        let config: ConntrackConfig = serde_yaml::from_str(
            "{udp: 3s, tcp_established: 1h, icmp: 250ms, per_endpoint: 0, fragments_per_endpoint: 0}",
        )
        .unwrap();
        let settings = config.settings();
        assert_eq!(settings.udp_secs, 3);
        assert_eq!(settings.tcp_established_secs, 3600);
        // below a second, and a zero limit, would read as "default" in the
        // programs: they are raised to the smallest real value instead
        assert_eq!(settings.icmp_secs, 1);
        assert_eq!(settings.ct_per_endpoint, 1);
        assert_eq!(settings.fragments_per_endpoint, 1);
        let defaults: ConntrackConfig = serde_yaml::from_str("{}").unwrap();
        assert_eq!(defaults.settings().fragments_per_endpoint, 128);
        assert_eq!(settings.tcp_syn_secs, 60, "unset fields keep their defaults");
        assert!(serde_yaml::from_str::<ConntrackConfig>("{udp_timeout: 3s}").is_err(), "unknown fields are refused");
    }
}
