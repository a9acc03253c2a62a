//! The node plumbing the redirect needs, the same as TPROXY's:
//!
//! - `ip rule pref P   fwmark TO_PROXY/MASK iif lo lookup main`: packets the
//!   node itself sends keep normal routing. With `tcp_fwmark_accept` the
//!   proxy's accepted sockets (and their SYN-ACKs) carry the SYN's TO_PROXY
//!   mark; without this rule they would be delivered back to the node.
//! - `ip rule pref P+1 fwmark TO_PROXY/MASK lookup T` and
//!   `ip route add local 0.0.0.0/0 dev lo table T`: packets the programs
//!   marked are delivered locally, to the socket they were assigned to.
//! - the same two rules and `local ::/0` for IPv6, where the node has IPv6
//!   (without, it is logged and IPv6 L7 traffic fails closed).
//! - `net.ipv4.tcp_fwmark_accept=1`: an accepted socket takes the SYN's mark,
//!   so the proxy reads the sender's identity with `SO_MARK`.
//!
//! What was changed is written to a state file first, so `weir datapath
//! cleanup` can undo it after a crash, and a clean stop restores it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use weir_datapath_common::mark::Marks;

use crate::config::DatapathConfig;

const FWMARK_ACCEPT: &str = "/proc/sys/net/ipv4/tcp_fwmark_accept";

/// What weir changed on the node, and who owns it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NodeState {
    /// The weir process that owns the datapath (a newer one takes over).
    pub owner: u32,
    /// That process's [`instance`]: pids repeat across the pods of a
    /// DaemonSet (each weir is pid 1 of its own PID namespace).
    #[serde(default)]
    pub owner_instance: u64,
    pub rule_priority: u32,
    pub route_table: u32,
    /// `tcp_fwmark_accept` before weir set it.
    pub fwmark_accept_before: Option<String>,
    pub rules_installed: bool,
    /// The marks the rules match and the programs were loaded with (`None`:
    /// a state file from before marks could move, so the defaults).
    #[serde(default)]
    pub marks: Option<StateMarks>,
    /// While a start replaces an earlier weir's rules (other marks or
    /// table): what they were, so that a crash in between leaves no rule
    /// `uninstall` does not know.
    #[serde(default)]
    pub replacing: Option<EarlierRules>,
}

/// The marks and table of rules a start is replacing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EarlierRules {
    pub marks: StateMarks,
    pub route_table: u32,
}

/// [`Marks`] as the state file keeps them (unknown fields ignored: a newer
/// weir may add some, and its state must still read as a live node's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateMarks {
    pub mask: u32,
    pub to_proxy: u32,
    pub from_proxy: u32,
    pub identity: u32,
}

impl From<Marks> for StateMarks {
    fn from(Marks { mask, to_proxy, from_proxy, identity }: Marks) -> Self {
        StateMarks { mask, to_proxy, from_proxy, identity }
    }
}

impl From<StateMarks> for Marks {
    fn from(StateMarks { mask, to_proxy, from_proxy, identity }: StateMarks) -> Self {
        Marks { mask, to_proxy, from_proxy, identity }
    }
}

/// `ip`'s family flag and the whole address space of each family.
const FAMILIES: [(&str, &str); 2] = [("-4", "0.0.0.0/0"), ("-6", "::/0")];

/// Where the state file for a bpffs directory lives (bpffs holds only BPF
/// objects): `/run/weir/` plus the directory path made a file name.
pub fn state_file(bpffs: &Path) -> PathBuf {
    let name: String =
        bpffs.to_string_lossy().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    PathBuf::from("/run/weir").join(format!("{name}.json"))
}

/// This process, told apart from every other weir on the node.
pub fn instance() -> u64 {
    static INSTANCE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *INSTANCE.get_or_init(|| {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        (nanos as u64) ^ (u64::from(std::process::id()) << 40)
    })
}

impl NodeState {
    /// Whether this process owns the datapath.
    pub fn owned_here(&self) -> bool {
        self.owner == std::process::id() && (self.owner_instance == 0 || self.owner_instance == instance())
    }

    /// Make this process the owner.
    pub fn take_ownership(&mut self) {
        self.owner = std::process::id();
        self.owner_instance = instance();
    }

    /// The marks of the weir that wrote this state.
    pub fn marks(&self) -> Marks {
        self.marks.map_or(Marks::DEFAULT, Marks::from)
    }

    /// Every pair of rules weir may have at its priorities: the current
    /// ones, and those a start was replacing when it stopped.
    fn known_rules(&self) -> Vec<[String; 2]> {
        let mut known = vec![rule_texts(self.marks(), self.route_table)];
        known.extend(self.replacing.map(|r| rule_texts(Marks::from(r.marks), r.route_table)));
        known
    }

    /// Whether the owning weir still runs.
    pub fn owner_alive(&self) -> bool {
        Path::new(&format!("/proc/{}", self.owner)).exists()
    }
}

pub fn read_state(bpffs: &Path) -> Option<NodeState> {
    let text = std::fs::read_to_string(state_file(bpffs)).ok()?;
    serde_json::from_str(&text).ok()
}

pub fn write_state(bpffs: &Path, state: &NodeState) -> anyhow::Result<()> {
    let path = state_file(bpffs);
    std::fs::create_dir_all(path.parent().unwrap())?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(state)?)?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
}

pub fn remove_state(bpffs: &Path) {
    let _ = std::fs::remove_file(state_file(bpffs));
}

/// `ip rule`'s spelling of the TO_PROXY mark.
fn fwmark(marks: Marks) -> String {
    format!("{:#x}/{:#x}", marks.to_proxy, marks.mask)
}

fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip").args(args).output().context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The node's neighbour table and its links' MACs, from iproute2.
#[derive(Default)]
pub struct Neighbours {
    /// (address, device) → MAC, for neighbours in a usable state.
    pub entries: std::collections::HashMap<(std::net::IpAddr, String), [u8; 6]>,
    /// device → its own MAC.
    pub links: std::collections::HashMap<String, [u8; 6]>,
}

pub fn neighbours() -> anyhow::Result<Neighbours> {
    let mut found = Neighbours::default();
    for family in ["-4", "-6"] {
        let list: Vec<serde_json::Value> = serde_json::from_str(&ip(&[family, "-j", "neigh", "show"])?)?;
        for entry in list {
            let usable = entry["state"].as_array().is_some_and(|states| {
                states
                    .iter()
                    .any(|s| matches!(s.as_str(), Some("REACHABLE" | "STALE" | "DELAY" | "PROBE" | "PERMANENT")))
            });
            let address = entry["dst"].as_str().and_then(|a| a.parse().ok());
            let mac = entry["lladdr"].as_str().and_then(parse_mac);
            if let (true, Some(address), Some(device), Some(mac)) = (usable, address, entry["dev"].as_str(), mac) {
                found.entries.insert((address, device.to_string()), mac);
            }
        }
    }
    let links: Vec<serde_json::Value> = serde_json::from_str(&ip(&["-j", "link", "show"])?)?;
    for link in links {
        if let (Some(name), Some(mac)) = (link["ifname"].as_str(), link["address"].as_str().and_then(parse_mac)) {
            found.links.insert(name.to_string(), mac);
        }
    }
    Ok(found)
}

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Install rules, route and sysctl; idempotent (a restart finds them there).
/// An earlier weir's rules with other marks or another table are replaced:
/// the new ones first, then exactly the old ones, so the node is never
/// without a rule; a rule at weir's priorities that is not weir's makes the
/// start fail before anything changed.
pub fn install(config: &DatapathConfig, state: &mut NodeState) -> anyhow::Result<()> {
    if state.fwmark_accept_before.is_none() {
        state.fwmark_accept_before = Some(std::fs::read_to_string(FWMARK_ACCEPT)?.trim().to_string());
    }
    let wanted = rule_texts(config.marks.marks(), config.route_table);
    // what earlier weirs installed at these priorities (rules at another
    // priority are left where they are)
    let earlier =
        if state.rules_installed && state.rule_priority == config.rule_priority { state.known_rules() } else { vec![] };
    for (family, _) in FAMILIES {
        for (i, wanted) in wanted.iter().enumerate() {
            let pref = config.rule_priority + i as u32;
            // a node without IPv6 lists no IPv6 rules: nothing to refuse there
            let Ok(present) = rules_at(family, pref) else { continue };
            if let Some(other) = present.iter().find(|l| *l != wanted && !earlier.iter().any(|e| e[i] == **l)) {
                bail!("rule priority {pref} is taken by another rule ({other}): set datapath.rule_priority");
            }
        }
    }
    let current = EarlierRules { marks: StateMarks::from(state.marks()), route_table: state.route_table };
    state.replacing = earlier.iter().any(|e| *e != wanted).then_some(current);
    state.rule_priority = config.rule_priority;
    state.route_table = config.route_table;
    state.rules_installed = true;
    state.marks = Some(StateMarks::from(config.marks.marks()));
    write_state(&config.bpffs, state)?;

    // one sysctl for both families: TCP over IPv6 reads it too
    std::fs::write(FWMARK_ACCEPT, "1").context("setting net.ipv4.tcp_fwmark_accept=1")?;
    for (family, everything) in FAMILIES {
        match install_family(config, &wanted, &earlier, family, everything) {
            Ok(()) => {}
            // a node without IPv6 still redirects IPv4
            Err(e) if family == "-6" => {
                tracing::warn!("IPv6 redirect rules not installed (IPv6 L7 fails closed): {e:#}")
            }
            Err(e) => return Err(e),
        }
    }
    if state.replacing.take().is_some() {
        write_state(&config.bpffs, state)?;
    }
    Ok(())
}

/// weir's two rules as `ip rule` takes them after `pref P` and prints them
/// after `P: from all`: packets the node sends keep normal routing, the
/// programs' TO_PROXY packets are delivered locally.
fn rule_texts(marks: Marks, table: u32) -> [String; 2] {
    let fwmark = fwmark(marks);
    [format!("fwmark {fwmark} iif lo lookup main"), format!("fwmark {fwmark} lookup {table}")]
}

/// The rules of one family at `pref` (as printed, after `from all`).
fn rules_at(family: &str, pref: u32) -> anyhow::Result<Vec<String>> {
    let prefix = format!("{pref}:");
    Ok(ip(&[family, "rule", "show"])?
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(|l| l.trim().trim_start_matches("from all").trim().to_string())
        .collect())
}

fn rule(family: &str, verb: &str, pref: u32, text: &str) -> anyhow::Result<String> {
    let pref = pref.to_string();
    let mut args = vec![family, "rule", verb, "pref", &pref];
    args.extend(text.split_whitespace());
    ip(&args)
}

fn install_family(
    config: &DatapathConfig,
    wanted: &[String; 2],
    earlier: &[[String; 2]],
    family: &str,
    everything: &str,
) -> anyhow::Result<()> {
    for (i, wanted) in wanted.iter().enumerate() {
        let pref = config.rule_priority + i as u32;
        let present = rules_at(family, pref)?;
        if !present.contains(wanted) {
            rule(family, "add", pref, wanted)?;
        }
        // then an earlier weir's, as often as it is there
        for stale in present.iter().filter(|l| *l != wanted && earlier.iter().any(|e| e[i] == **l)) {
            rule(family, "del", pref, stale)?;
        }
    }
    let table = config.route_table.to_string();
    ip(&[family, "route", "replace", "local", everything, "dev", "lo", "table", &table])?;
    Ok(())
}

/// Undo what `install` did; every step is tried, errors are collected.
pub fn uninstall(state: &NodeState) -> Vec<String> {
    let mut errors = Vec::new();
    let known = state.known_rules();
    for (family, _) in FAMILIES.iter().filter(|_| state.rules_installed) {
        for i in 0..2 {
            let pref = state.rule_priority + i as u32;
            // weir's rules only, as often as they are there; another at the
            // same priority is not weir's to remove
            let present = rules_at(family, pref).unwrap_or_default();
            for ours in present.iter().filter(|l| known.iter().any(|k| k[i] == **l)) {
                if let Err(e) = rule(family, "del", pref, ours) {
                    errors.push(e.to_string());
                }
            }
        }
        let table = state.route_table.to_string();
        if ip(&[family, "route", "show", "table", &table]).is_ok_and(|r| !r.trim().is_empty())
            && let Err(e) = ip(&[family, "route", "flush", "table", &table])
        {
            errors.push(e.to_string());
        }
    }
    if let Some(before) = &state.fwmark_accept_before
        && let Err(e) = std::fs::write(FWMARK_ACCEPT, before)
    {
        errors.push(format!("restoring net.ipv4.tcp_fwmark_accept={before}: {e}"));
    }
    errors
}

/// The host-side interface of a pod on this node, found from its address:
/// the device of the main table's host route to exactly that address, as
/// point-to-point CNIs (Calico, Cilium's veth mode, the ptp plugin, AWS VPC
/// CNI) and the node harness of the tests route pods. `None`: no such route
/// (not yet, or a bridge CNI whose pods share a bridge's subnet route).
pub fn interface_routing_to(address: std::net::IpAddr) -> anyhow::Result<Option<String>> {
    let (family, host) = if address.is_ipv4() { ("-4", 32) } else { ("-6", 128) };
    let routes = ip(&[family, "-o", "route", "show", "table", "main", "exact", &format!("{address}/{host}")])?;
    Ok(routes.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        // `10.200.0.10 dev veth1 scope link`: a device, not a gateway
        if line.contains(" via ") {
            return None;
        }
        words.find(|w| *w == "dev").and_then(|_| words.next()).map(str::to_string)
    }))
}

/// The rules and routes present now, for `weir datapath status`.
pub fn describe(config: &DatapathConfig) -> Vec<String> {
    let mut out = Vec::new();
    let prefs = [config.rule_priority.to_string(), (config.rule_priority + 1).to_string()];
    for (family, _) in FAMILIES {
        // IPv6's lines say so; IPv4's read as they always did
        let which = if family == "-6" { "ipv6 " } else { "" };
        if let Ok(rules) = ip(&[family, "rule", "show"]) {
            out.extend(
                rules
                    .lines()
                    .filter(|l| prefs.iter().any(|p| l.starts_with(&format!("{p}:"))))
                    .map(|l| format!("{which}rule {l}")),
            );
        }
        if let Ok(routes) = ip(&[family, "route", "show", "table", &config.route_table.to_string()]) {
            out.extend(
                routes
                    .lines()
                    .filter(|l| !l.is_empty())
                    .map(|l| format!("{which}route table {} {l}", config.route_table)),
            );
        }
    }
    if let Ok(v) = std::fs::read_to_string(FWMARK_ACCEPT) {
        out.push(format!("sysctl net.ipv4.tcp_fwmark_accept={}", v.trim()));
    }
    out
}
