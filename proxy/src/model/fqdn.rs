//! What each endpoint learned through the DNS proxy: name -> addresses, each
//! until its TTL runs out. `toFQDNs` rules match against it.
//!
//! - Expiry times are wall-clock, so the file weir writes on changes can be
//!   read back after a restart with the time that is left.
//! - A TTL below `min_ttl` is raised to it; a name keeps at most
//!   `max_ips_per_name` addresses (the ones that expire last).
//! - An address a connection is using (a [`FqdnLease`]) is not forgotten when
//!   its TTL runs out, only when the last such connection closes (Cilium's
//!   "zombie" entries), so expiry never cuts a connection that was allowed.
//! - Every change that can turn a verdict (an address learned, an address
//!   forgotten) bumps [`FqdnCache::generation`]; cached connection verdicts
//!   are keyed by it.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug)]
pub struct FqdnLimits {
    pub min_ttl: Duration,
    pub max_ips_per_name: usize,
}

impl Default for FqdnLimits {
    fn default() -> Self {
        FqdnLimits { min_ttl: Duration::ZERO, max_ips_per_name: 1000 }
    }
}

#[derive(Default)]
struct EndpointNames {
    /// name -> address -> expiry
    names: HashMap<Arc<str>, BTreeMap<IpAddr, SystemTime>>,
    /// address -> names, the index `toFQDNs` lookups use
    by_address: HashMap<IpAddr, Vec<Arc<str>>>,
    /// connections open to an address (see [`FqdnLease`])
    leases: HashMap<IpAddr, usize>,
}

impl EndpointNames {
    fn index(&mut self, name: &Arc<str>, address: IpAddr) {
        let names = self.by_address.entry(address).or_default();
        if !names.contains(name) {
            names.push(name.clone());
        }
    }

    fn unindex(&mut self, name: &str, address: IpAddr) {
        if let Some(names) = self.by_address.get_mut(&address) {
            names.retain(|n| &**n != name);
            if names.is_empty() {
                self.by_address.remove(&address);
            }
        }
    }
}

pub struct FqdnCache {
    endpoints: Mutex<HashMap<Arc<str>, EndpointNames>>,
    limits: Mutex<FqdnLimits>,
    generation: AtomicU64,
    dirty: AtomicBool,
    file: Option<PathBuf>,
    /// One save at a time: a save that finds nothing changed must not return
    /// while another is still writing what changed (the hand-over reads the
    /// file right after its save), and both would write one temporary file.
    saving: Mutex<()>,
    notify: tokio::sync::watch::Sender<u64>,
}

/// One learned address as `weir fqdn cache` and the state file show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LearnedAddress {
    pub endpoint: String,
    pub name: String,
    pub address: IpAddr,
    /// Seconds since the epoch.
    pub expires: u64,
    /// Connections holding the address open (kept past expiry while > 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub connections: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

#[derive(Serialize, Deserialize)]
struct StateFile {
    version: u32,
    entries: Vec<LearnedAddress>,
}

impl FqdnCache {
    /// A cache that saves itself to `file` (when given) on [`FqdnCache::save`].
    pub fn new(limits: FqdnLimits, file: Option<PathBuf>) -> Self {
        FqdnCache {
            endpoints: Mutex::new(HashMap::new()),
            limits: Mutex::new(limits),
            generation: AtomicU64::new(1),
            dirty: AtomicBool::new(false),
            saving: Mutex::new(()),
            file,
            notify: tokio::sync::watch::Sender::new(1),
        }
    }

    pub fn set_limits(&self, limits: FqdnLimits) {
        *self.limits.lock().unwrap() = limits;
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn changed(&self) {
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        self.notify.send_replace(generation);
    }

    /// Record an allowed answer: `name` resolved to these addresses with
    /// these TTLs. True when an address is new (a verdict may change).
    pub fn learn(&self, endpoint: &str, name: &str, answers: &[(IpAddr, u32)]) -> bool {
        self.learn_at(endpoint, name, answers, SystemTime::now())
    }

    /// Follow changes that can turn a verdict: the generation after each.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.notify.subscribe()
    }

    fn learn_at(&self, endpoint: &str, name: &str, answers: &[(IpAddr, u32)], now: SystemTime) -> bool {
        if answers.is_empty() {
            return false;
        }
        let limits = *self.limits.lock().unwrap();
        let mut endpoints = self.endpoints.lock().unwrap();
        let entry = endpoints.entry(Arc::from(endpoint)).or_default();
        let name: Arc<str> = match entry.names.get_key_value(name) {
            Some((existing, _)) => existing.clone(),
            None => Arc::from(name),
        };
        let addresses = entry.names.entry(name.clone()).or_default();
        let mut new = Vec::new();
        for &(address, ttl) in answers {
            let expires = now + Duration::from_secs(u64::from(ttl)).max(limits.min_ttl);
            match addresses.get_mut(&address) {
                Some(e) => *e = (*e).max(expires),
                None => {
                    addresses.insert(address, expires);
                    new.push(address);
                }
            }
        }
        // over the cap: forget the addresses that expire first
        let mut evicted = Vec::new();
        while addresses.len() > limits.max_ips_per_name.max(1) {
            let (&oldest, _) = addresses.iter().min_by_key(|(_, e)| **e).expect("not empty");
            addresses.remove(&oldest);
            evicted.push(oldest);
        }
        new.retain(|address| addresses.contains_key(address));
        for address in &new {
            entry.index(&name, *address);
        }
        for address in &evicted {
            entry.unindex(&name, *address);
        }
        self.dirty.store(true, Ordering::Release);
        let changed = !new.is_empty() || !evicted.is_empty();
        if changed {
            drop(endpoints);
            self.changed();
        }
        changed
    }

    /// The names `endpoint` learned `address` for that still hold (TTL left,
    /// or a connection keeps it).
    pub fn names_for(&self, endpoint: &str, address: IpAddr) -> Vec<Arc<str>> {
        let now = SystemTime::now();
        let endpoints = self.endpoints.lock().unwrap();
        let Some(entry) = endpoints.get(endpoint) else { return Vec::new() };
        let Some(names) = entry.by_address.get(&address) else { return Vec::new() };
        let leased = entry.leases.get(&address).is_some_and(|n| *n > 0);
        names
            .iter()
            .filter(|name| leased || entry.names.get(&***name).and_then(|a| a.get(&address)).is_some_and(|e| *e > now))
            .cloned()
            .collect()
    }

    /// Keep `address` for `endpoint` while the returned lease lives.
    pub fn lease(self: &Arc<Self>, endpoint: &str, address: IpAddr) -> FqdnLease {
        let endpoint: Arc<str> = Arc::from(endpoint);
        *self.endpoints.lock().unwrap().entry(endpoint.clone()).or_default().leases.entry(address).or_default() += 1;
        FqdnLease { cache: self.clone(), endpoint, address }
    }

    /// Forget what has expired and is not leased. Returns how many addresses went.
    pub fn expire(&self) -> usize {
        self.expire_at(SystemTime::now())
    }

    fn expire_at(&self, now: SystemTime) -> usize {
        let mut removed = 0;
        let mut endpoints = self.endpoints.lock().unwrap();
        for entry in endpoints.values_mut() {
            let mut gone = Vec::new();
            let leases = &entry.leases;
            for (name, addresses) in entry.names.iter_mut() {
                addresses.retain(|address, expires| {
                    let keep = *expires > now || leases.get(address).is_some_and(|n| *n > 0);
                    if !keep {
                        gone.push((name.clone(), *address));
                    }
                    keep
                });
            }
            entry.names.retain(|_, addresses| !addresses.is_empty());
            removed += gone.len();
            for (name, address) in gone {
                entry.unindex(&name, address);
            }
        }
        endpoints.retain(|_, e| !e.names.is_empty() || !e.leases.is_empty());
        drop(endpoints);
        if removed > 0 {
            self.dirty.store(true, Ordering::Release);
            self.changed();
        }
        removed
    }

    /// How many (endpoint, name, address) entries are held.
    pub fn len(&self) -> usize {
        self.endpoints.lock().unwrap().values().flat_map(|e| e.names.values()).map(|a| a.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Everything learned, sorted by endpoint, name and address.
    pub fn entries(&self) -> Vec<LearnedAddress> {
        let endpoints = self.endpoints.lock().unwrap();
        let mut out = Vec::new();
        for (endpoint, entry) in endpoints.iter() {
            for (name, addresses) in &entry.names {
                for (address, expires) in addresses {
                    out.push(LearnedAddress {
                        endpoint: endpoint.to_string(),
                        name: name.to_string(),
                        address: *address,
                        expires: expires.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs(),
                        connections: entry.leases.get(address).copied().unwrap_or(0),
                    });
                }
            }
        }
        out.sort_by(|a, b| (&a.endpoint, &a.name, a.address).cmp(&(&b.endpoint, &b.name, b.address)));
        out
    }

    /// Write the state file if anything changed since the last save. Written
    /// to a temporary file and renamed, so a crash never leaves half a file.
    pub fn save(&self) -> std::io::Result<()> {
        let Some(file) = &self.file else { return Ok(()) };
        let _one_at_a_time = self.saving.lock().unwrap();
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let mut entries = self.entries();
        for e in &mut entries {
            e.connections = 0; // connections do not survive a restart
        }
        let text = serde_json::to_vec(&StateFile { version: 1, entries }).expect("plain data");
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, file).inspect_err(|_| self.dirty.store(true, Ordering::Release))
    }

    /// Read the state file of an earlier run; what has expired since is left out.
    /// A missing file is an empty cache; a broken one is reported and ignored.
    pub fn restore(&self) -> Result<usize, String> {
        let Some(file) = &self.file else { return Ok(0) };
        let text = match std::fs::read(file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(format!("{}: {e}", file.display())),
        };
        let state: StateFile = serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", file.display()))?;
        let now = SystemTime::now();
        let now_secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let mut restored = 0;
        for e in state.entries.into_iter().filter(|e| e.expires > now_secs) {
            let ttl = u32::try_from(e.expires - now_secs).unwrap_or(u32::MAX);
            self.learn_at(&e.endpoint, &e.name, &[(e.address, ttl)], now);
            restored += 1;
        }
        Ok(restored)
    }

    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }
}

/// Held by a connection to a learned address; see [`FqdnCache::lease`].
pub struct FqdnLease {
    cache: Arc<FqdnCache>,
    endpoint: Arc<str>,
    address: IpAddr,
}

impl Drop for FqdnLease {
    fn drop(&mut self) {
        let mut endpoints = self.cache.endpoints.lock().unwrap();
        if let Some(entry) = endpoints.get_mut(&self.endpoint)
            && let Some(n) = entry.leases.get_mut(&self.address)
        {
            *n -= 1;
            if *n == 0 {
                entry.leases.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn names(cache: &FqdnCache, endpoint: &str, address: &str) -> Vec<String> {
        cache.names_for(endpoint, ip(address)).iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn learned_addresses_hold_for_their_ttl_only() {
        let cache = FqdnCache::new(FqdnLimits::default(), None);
        let g0 = cache.generation();
        cache.learn("default/app", "api.example.com", &[(ip("10.0.0.1"), 2)]);
        assert!(cache.generation() > g0, "a new address can change a verdict");
        assert_eq!(names(&cache, "default/app", "10.0.0.1"), ["api.example.com"]);
        assert!(names(&cache, "default/other", "10.0.0.1").is_empty(), "learned per endpoint");
        assert!(names(&cache, "default/app", "10.0.0.2").is_empty());
        let g1 = cache.generation();
        cache.learn("default/app", "api.example.com", &[(ip("10.0.0.1"), 2)]);
        assert_eq!(cache.generation(), g1, "a refreshed TTL changes no verdict");

        assert_eq!(cache.expire_at(SystemTime::now() + Duration::from_secs(1)), 0);
        assert_eq!(cache.expire_at(SystemTime::now() + Duration::from_secs(3)), 1);
        assert!(cache.generation() > g1);
        assert!(names(&cache, "default/app", "10.0.0.1").is_empty());
        assert!(cache.entries().is_empty());
    }

    #[test]
    fn min_ttl_raises_short_answers_and_the_cap_keeps_the_latest() {
        let limits = FqdnLimits { min_ttl: Duration::from_secs(60), max_ips_per_name: 2 };
        let cache = FqdnCache::new(limits, None);
        cache.learn("e", "n", &[(ip("10.0.0.1"), 0), (ip("10.0.0.2"), 100), (ip("10.0.0.3"), 200)]);
        let kept: Vec<IpAddr> = cache.entries().iter().map(|e| e.address).collect();
        assert_eq!(kept, [ip("10.0.0.2"), ip("10.0.0.3")], "the one expiring first goes");
        assert!(names(&cache, "e", "10.0.0.1").is_empty());
        cache.learn("e", "m", &[(ip("10.0.0.9"), 0)]);
        assert_eq!(cache.expire_at(SystemTime::now() + Duration::from_secs(30)), 0, "TTL 0 is held for min_ttl");
    }

    #[test]
    fn a_leased_address_outlives_its_ttl_until_the_connection_closes() {
        let cache = Arc::new(FqdnCache::new(FqdnLimits::default(), None));
        cache.learn("e", "n", &[(ip("10.0.0.1"), 1)]);
        let lease = cache.lease("e", ip("10.0.0.1"));
        assert_eq!(cache.expire_at(SystemTime::now() + Duration::from_secs(5)), 0);
        assert_eq!(names(&cache, "e", "10.0.0.1"), ["n"]);
        assert_eq!(cache.entries()[0].connections, 1);
        drop(lease);
        assert_eq!(cache.expire_at(SystemTime::now() + Duration::from_secs(5)), 1);
    }

    #[test]
    fn the_state_file_survives_a_restart_without_what_expired() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("fqdn.json");
        let cache = FqdnCache::new(FqdnLimits::default(), Some(file.clone()));
        cache.learn("e", "long.example", &[(ip("10.0.0.1"), 3600)]);
        cache.learn("e", "gone.example", &[(ip("10.0.0.2"), 1)]);
        cache.save().unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        let again = FqdnCache::new(FqdnLimits::default(), Some(file.clone()));
        assert_eq!(again.restore().unwrap(), 1);
        assert_eq!(names(&again, "e", "10.0.0.1"), ["long.example"]);
        let left = again.entries()[0].expires - SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert!((3590..=3600).contains(&left), "the TTL left carries over: {left}");

        std::fs::write(&file, "not json").unwrap();
        let broken = FqdnCache::new(FqdnLimits::default(), Some(file));
        assert!(broken.restore().unwrap_err().contains("fqdn.json"));
    }
}
