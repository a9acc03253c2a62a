//! The Kubernetes source: what the API server says this node should
//! enforce. One reflector per kind (`reflect.rs`) mirrors the objects weir
//! reads into a table — the five policy kinds, namespaces, pods and
//! identities — and the controller reads the tables like any other
//! source's store: policy documents, and every pod with an address as an
//! endpoint with its cluster-wide identity (`endpoints.rs`). This node's
//! own pods get their identities allocated here (`allocate.rs`) and, with
//! the eBPF datapath, the host-side interface their address routes to.
//!
//! The reflectors run on a thread of their own, so the API server's pace
//! never takes a proxy worker.

pub mod allocate;
pub mod client;
pub mod crds;
pub mod endpoints;
pub mod filters;
pub mod operator;
pub mod reflect;
pub mod resources;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use tokio::sync::Notify;

pub use client::ApiClient;
pub use resources::Resource;

use super::source::{Contribution, Source};
use crate::config::{EndpointConfig, FilterConfig, VISIBILITY_ANNOTATION, Visibility};
use crate::identity::Labels;
use crate::observe::metrics::{KubernetesMetrics, ResourceLabels};
use crate::policy::{PolicyError, document};
use endpoints::{IdentityIndex, Pod};
use reflect::{Shared, Standing};

/// Counts every change any reflector makes and wakes whoever waits on one.
pub struct Changes {
    count: AtomicU64,
    /// The controller: rebuild now, not on the next tick.
    notify: Arc<Notify>,
    /// The source's own tasks (identity allocation).
    tasks: tokio::sync::watch::Sender<u64>,
    metrics: KubernetesMetrics,
}

impl Changes {
    pub fn new(notify: Arc<Notify>, metrics: KubernetesMetrics) -> Arc<Self> {
        Arc::new(Changes { count: AtomicU64::new(0), notify, tasks: tokio::sync::watch::Sender::new(0), metrics })
    }

    pub fn bump(&self) {
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        self.notify.notify_one();
        self.tasks.send_replace(n);
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.tasks.subscribe()
    }

    pub fn disconnected(&self, resource: &'static str) {
        self.metrics.watch_failures.get_or_create(&ResourceLabels { resource }).inc();
    }

    pub fn relisted(&self, resource: &'static str) {
        self.metrics.relists.get_or_create(&ResourceLabels { resource }).inc();
    }
}

/// What `weir run --kubernetes` is told about where it runs.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// This node's name (`spec.nodeName` of the pods it polices).
    pub node: String,
    /// weir's own namespace: the ConfigMaps WasmFilters name are there.
    pub namespace: String,
    /// With the eBPF datapath: find each local pod's host-side interface.
    pub datapath: bool,
}

/// The tables the reflectors keep.
struct Tables {
    /// One per kind of [`resources::POLICIES`].
    policies: Vec<Shared<serde_json::Value>>,
    namespaces: Shared<BTreeMap<String, String>>,
    pods: Shared<Pod>,
    identities: Shared<Labels>,
    wasm_filters: Shared<filters::WasmFilterObject>,
    config_maps: Shared<filters::ConfigMapData>,
}

/// Policies, pods and identities from a Kubernetes API server.
pub struct KubernetesSource {
    server: String,
    options: NodeOptions,
    tables: Arc<Tables>,
    changes: Arc<Changes>,
    routes: Arc<Routes>,
    /// The WasmFilters' components as the resolver last left them; `None`
    /// until it has seen every filter once.
    filters: Arc<Mutex<Option<Vec<FilterConfig>>>>,
}

/// Local pods' host-side interfaces, found from their addresses.
#[derive(Default)]
struct Routes {
    /// By (pod uid, address): a route does not move while its pod lives.
    found: Mutex<HashMap<(String, IpAddr), String>>,
    /// Local pods with an address and no route to it yet: looked for again
    /// every second, and the model rebuilt only when one appears.
    missing: Mutex<HashSet<(String, IpAddr)>>,
}

impl Routes {
    fn lookup(&self, key: &(String, IpAddr)) -> Option<String> {
        if let Some(found) = self.found.lock().unwrap().get(key) {
            return Some(found.clone());
        }
        match crate::datapath::routing::interface_routing_to(key.1) {
            Ok(Some(interface)) => {
                self.found.lock().unwrap().insert(key.clone(), interface.clone());
                Some(interface)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(address = %key.1, "looking up the route to a local pod: {e:#}");
                None
            }
        }
    }

    /// Look for the missing routes until the source goes; a change when one appears.
    async fn watch(routes: Arc<Routes>, changes: Arc<Changes>) {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let missing: Vec<_> = routes.missing.lock().unwrap().iter().cloned().collect();
            let found = missing.iter().filter(|key| routes.lookup(key).is_some()).count();
            if found > 0 {
                changes.bump();
            }
        }
    }
}

impl KubernetesSource {
    /// Start following the API server; `notify` is poked on every change.
    pub fn start(
        client: ApiClient,
        options: NodeOptions,
        notify: Arc<Notify>,
        metrics: KubernetesMetrics,
    ) -> anyhow::Result<Arc<Self>> {
        let tables = Arc::new(Tables {
            policies: resources::POLICIES.iter().map(|_| reflect::table()).collect(),
            namespaces: reflect::table(),
            pods: reflect::table(),
            identities: reflect::table(),
            wasm_filters: reflect::table(),
            config_maps: reflect::table(),
        });
        let changes = Changes::new(notify, metrics);
        let resolver = filters::Resolver::new(&options.namespace)?;
        let source = Arc::new(KubernetesSource {
            server: client.server.clone(),
            options: options.clone(),
            tables: tables.clone(),
            changes: changes.clone(),
            routes: Arc::new(Routes::default()),
            filters: Arc::new(Mutex::new(None)),
        });
        let routes = source.routes.clone();
        let supplied = source.filters.clone();
        let config_maps = filters::config_maps(&options.namespace);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        std::thread::Builder::new().name("weir-kubernetes".into()).spawn(move || {
            runtime.block_on(async move {
                let mut tasks = Vec::new();
                for (resource, table) in resources::POLICIES.iter().zip(&tables.policies) {
                    let run = reflect::run(client.clone(), resource, resources::policy, table.clone(), changes.clone());
                    tasks.push(tokio::spawn(run));
                }
                let c = &client;
                tasks.push(tokio::spawn(reflect::run(
                    c.clone(),
                    &resources::NAMESPACES,
                    resources::namespace,
                    tables.namespaces.clone(),
                    changes.clone(),
                )));
                tasks.push(tokio::spawn(reflect::run(
                    c.clone(),
                    &resources::PODS,
                    resources::pod,
                    tables.pods.clone(),
                    changes.clone(),
                )));
                tasks.push(tokio::spawn(reflect::run(
                    c.clone(),
                    &resources::IDENTITIES,
                    resources::identity,
                    tables.identities.clone(),
                    changes.clone(),
                )));
                tasks.push(tokio::spawn(reflect::run(
                    c.clone(),
                    &filters::WASM_FILTERS,
                    filters::wasm_filter,
                    tables.wasm_filters.clone(),
                    changes.clone(),
                )));
                tasks.push(tokio::spawn(reflect::run(
                    c.clone(),
                    config_maps,
                    filters::config_map,
                    tables.config_maps.clone(),
                    changes.clone(),
                )));
                tasks.push(tokio::spawn(resolve_filters(resolver, tables.clone(), changes.clone(), supplied)));
                if options.datapath {
                    tasks.push(tokio::spawn(Routes::watch(routes, changes.clone())));
                }
                tasks.push(tokio::spawn(allocate::run(client, options.node, tables, changes)));
                for task in tasks {
                    let _ = task.await;
                }
            })
        })?;
        Ok(source)
    }

    /// Block until every kind has been listed once (or found absent) and
    /// this node's pods have their identities, so the first model is never
    /// built from half the cluster. `Err` after `timeout` names what is
    /// still missing and why.
    pub fn wait_synced(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut waiting = self.tables.unsynced();
            if waiting.is_empty() && self.filters.lock().unwrap().is_none() {
                waiting.push("wasmfilters (components not loaded yet)".into());
            }
            if waiting.is_empty() {
                let unidentified = allocate::wanted(&self.options.node, &self.tables);
                if unidentified.is_empty() {
                    return Ok(());
                }
                waiting.extend(unidentified.iter().map(|labels| format!("an identity for [{labels}]")));
            }
            if Instant::now() >= deadline {
                bail!("the API server {} did not answer for: {}", self.server, waiting.join("; "));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// This node's and every other node's pods, as endpoints.
    fn endpoints(&self) -> Result<Vec<EndpointConfig>, String> {
        let identities = self.tables.identities.lock().unwrap();
        if identities.standing == Standing::Absent {
            return Err(format!(
                "the {} CRD is not installed: pods get their identities through it (deploy/crds/)",
                resources::IDENTITIES.kind
            ));
        }
        let index =
            IdentityIndex::new(identities.objects.iter().filter_map(|((_, name), l)| Some((name.parse().ok()?, l))));
        drop(identities);
        let namespaces = self.tables.namespaces.lock().unwrap().objects.clone();
        let mut pods: Vec<((String, String), Pod)> =
            self.tables.pods.lock().unwrap().objects.clone().into_iter().collect();
        // of two pods claiming one address (one finished, its address
        // reused), the newer holds it
        pods.sort_by(|a, b| b.1.created.cmp(&a.1.created));
        let mut claimed = HashSet::new();
        let mut endpoints = Vec::new();
        let mut missing = HashSet::new();
        let mut routed = HashSet::new();
        for ((namespace, name), pod) in pods {
            if pod.host_network || pod.ips.is_empty() {
                continue;
            }
            let Some(namespace_labels) = namespaces.get(&("".into(), namespace.clone())) else { continue };
            let labels = endpoints::identity_labels(&pod, Some(namespace_labels));
            // not identified yet (its node has not allocated): unknown,
            // so `reserved:world` until it is
            let Some(identity) = index.get(&Labels::of_endpoint(&namespace, &labels)) else { continue };
            let addresses: Vec<IpAddr> = pod.ips.iter().copied().filter(|ip| claimed.insert(*ip)).collect();
            if addresses.is_empty() {
                continue;
            }
            let local = pod.node == self.options.node;
            // the interface is found by the pod's IPv4 address, or its IPv6
            // one when it has only that
            let routed_by = addresses.iter().find(|a| a.is_ipv4()).or(addresses.first()).copied();
            let interface = match routed_by {
                Some(address) if local && self.options.datapath => {
                    let key = (pod.uid.clone(), address);
                    let found = self.routes.lookup(&key);
                    routed.insert(key.clone());
                    if found.is_none() {
                        if !self.routes.missing.lock().unwrap().contains(&key) {
                            tracing::warn!(pod = %format!("{namespace}/{name}"), %address,
                                "no host route to a local pod's address yet: not policed until there is one");
                        }
                        missing.insert(key);
                    }
                    found
                }
                _ => None,
            };
            // a bad annotation asks for nothing (as in Cilium): the pod is
            // policed as it would be without it
            let visibility = pod.visibility.clone().filter(|text| match Visibility::parse_all(text) {
                Ok(_) => true,
                Err(e) => {
                    tracing::warn!(pod = %format!("{namespace}/{name}"), "{VISIBILITY_ANNOTATION} ignored: {e}");
                    false
                }
            });
            endpoints.push(EndpointConfig {
                name,
                namespace,
                address: None,
                addresses,
                labels,
                identity: Some(identity),
                interface,
                visibility,
            });
        }
        *self.routes.missing.lock().unwrap() = missing;
        // a pod that went takes its route with it
        self.routes.found.lock().unwrap().retain(|key, _| routed.contains(key));
        Ok(endpoints)
    }
}

/// Keep the supplied filters up to the WasmFilter objects and the
/// ConfigMaps they name: on every change, and every 10 s while a fetch
/// keeps failing. A node only logs what fails; the operator writes it on
/// the object, once for the cluster.
async fn resolve_filters(
    mut resolver: filters::Resolver,
    tables: Arc<Tables>,
    changes: Arc<Changes>,
    supplied: Arc<Mutex<Option<Vec<FilterConfig>>>>,
) {
    let mut changed = changes.subscribe();
    loop {
        let synced = tables.wasm_filters.lock().unwrap().standing.synced()
            && tables.config_maps.lock().unwrap().standing.synced();
        if synced {
            let objects = tables.wasm_filters.lock().unwrap().objects.clone();
            let maps = tables.config_maps.lock().unwrap().objects.clone();
            let resolved = resolver.resolve(&objects, &maps).await;
            for report in &resolved.reports {
                match &report.problem {
                    None => tracing::info!(filter = %report.name, "WasmFilter loaded"),
                    Some(problem) if report.previous_kept => tracing::warn!(filter = %report.name,
                        "WasmFilter not loaded: {problem}; its last good version stays in force"),
                    Some(problem) => tracing::warn!(filter = %report.name,
                        "WasmFilter not loaded: {problem}; rules naming it refuse their traffic"),
                }
            }
            let first = supplied.lock().unwrap().is_none();
            if resolved.changed || first {
                *supplied.lock().unwrap() = Some(resolver.supplied());
                changes.bump();
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), changed.changed()).await;
    }
}

impl Tables {
    fn unsynced(&self) -> Vec<String> {
        let mut waiting = Vec::new();
        let mut check = |standing: &Standing, plural: &str| match standing {
            Standing::Pending => waiting.push(format!("{plural} (not listed yet)")),
            Standing::Failing(why) => waiting.push(format!("{plural}: {why}")),
            Standing::Listed | Standing::Absent => {}
        };
        for (table, resource) in self.policies.iter().zip(&resources::POLICIES) {
            check(&table.lock().unwrap().standing, resource.plural);
        }
        check(&self.namespaces.lock().unwrap().standing, resources::NAMESPACES.plural);
        check(&self.pods.lock().unwrap().standing, resources::PODS.plural);
        check(&self.identities.lock().unwrap().standing, resources::IDENTITIES.plural);
        check(&self.wasm_filters.lock().unwrap().standing, filters::WASM_FILTERS.plural);
        check(&self.config_maps.lock().unwrap().standing, "configmaps");
        waiting
    }

    /// Every policy object, read as a policy file's document.
    fn documents(&self, contribution: &mut Contribution) {
        for (table, resource) in self.policies.iter().zip(&resources::POLICIES) {
            let objects = table.lock().unwrap().objects.clone();
            for ((namespace, name), object) in objects {
                let origin = format!("kubernetes {}", resource.plural);
                let qualified = if namespace.is_empty() { name } else { format!("{namespace}/{name}") };
                let key = document::object_key(&origin, &qualified);
                let value = match serde_yaml::to_value(&object) {
                    Ok(value) => value,
                    Err(e) => {
                        let error = PolicyError { file: origin, object: None, field: None, message: e.to_string() };
                        contribution.set_aside.push((key, error));
                        continue;
                    }
                };
                // an object weir cannot read is set aside alone: the
                // others, and every pod, still go into the model
                match document::parse_object(&origin, value) {
                    Ok(document) => contribution.documents.push(document),
                    Err(e) => contribution.set_aside.push((key, e)),
                }
            }
        }
    }
}

impl Source for KubernetesSource {
    fn name(&self) -> String {
        format!("the Kubernetes API server {}", self.server)
    }

    fn fingerprint(&self) -> u64 {
        self.changes.count()
    }

    fn read(&self) -> Result<Contribution, Vec<PolicyError>> {
        let problem = |message| PolicyError { file: self.name(), object: None, field: None, message };
        let unsynced = self.tables.unsynced();
        if !unsynced.is_empty() {
            return Err(unsynced.into_iter().map(problem).collect());
        }
        let mut contribution = Contribution::default();
        self.tables.documents(&mut contribution);
        contribution.endpoints = self.endpoints().map_err(|e| vec![problem(e)])?;
        contribution.filters = self.filters.lock().unwrap().clone().unwrap_or_default();
        Ok(contribution)
    }
}
