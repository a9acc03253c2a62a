//! The model in force: configuration, identities, compiled policies and the
//! filters they use. A new model is built and validated whole, then swapped
//! in atomically; connections look it up per request.

mod filters;
pub mod fqdn;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::config::{ListenerConfig, WeirConfig};
use crate::context::{ConnectionContext, Direction, TRANSPARENT_LISTENER, Target};
use crate::identity::{Endpoint, Identity, IdentityAllocator, IdentityCache, Labels, reserved};
use crate::model::fqdn::FqdnCache;
use crate::net::UpstreamBind;
use crate::policy::{L4Protocol, PeerInfo, PolicyError, PolicySet, SideVerdict, SourcedDocument};
use crate::protocol::Protocol;
use crate::wasm::{ConfiguredFilter, FailurePolicy, FilterComponent, FilterLimits, FilterRuntime, builtin};

/// Everything a model is built from.
#[derive(Clone)]
pub struct ModelInputs {
    pub config: WeirConfig,
    /// Relative filter and certificate paths resolve against it.
    pub config_dir: PathBuf,
    pub config_file: String,
    pub documents: Vec<SourcedDocument>,
}

pub struct ListenerModel {
    pub config: ListenerConfig,
    /// The workload behind the listener, as policies see it.
    pub destination: Arc<Endpoint>,
    /// The port policies are written against.
    pub port: u16,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// TLS towards the upstream.
    pub upstream_tls: Option<Arc<crate::net::UpstreamTls>>,
}

/// A custom filter from `weir.yaml`, compiled.
struct CustomFilter {
    component: Arc<FilterComponent>,
    limits: FilterLimits,
    failure: FailurePolicy,
    /// Another source's (a WasmFilter): it changes under the policies that
    /// name it, so a rule it refuses fails that rule's traffic closed
    /// instead of taking the policy out of the model (which would let the
    /// traffic through unjudged).
    supplied: bool,
}

/// A connection as policy sees it.
#[derive(Clone, Copy)]
pub struct Connection<'a> {
    /// Its address and, for a world destination, the names the source
    /// learned it for (toFQDNs).
    pub source: PeerInfo<'a>,
    pub destination: PeerInfo<'a>,
    /// The port policies are written against.
    pub port: u16,
    pub protocol: L4Protocol,
    /// The protocol its requests speak: whose L7 rules apply.
    pub kind: Protocol,
}

/// What happens to a new connection (and to each request on it).
#[derive(Debug)]
pub enum ConnectionVerdict {
    /// L3/L4 policy denies it: in the datapath the SYN would be dropped.
    Drop {
        reason: String,
    },
    Forward(FilterChain),
}

/// The filters every request of a connection passes, egress side first.
#[derive(Debug, Default)]
pub struct FilterChain {
    pub links: Vec<ChainLink>,
    /// Rules that allowed the connection at L3/L4.
    pub allowed_by: Vec<String>,
    /// What the audited rules would change, when they would: asked after
    /// `links` allowed a request, never applied.
    pub audit: Option<Audit>,
}

impl FilterChain {
    /// Whether the protocol's own rules judge here (not only custom
    /// filters, nor nothing: a listener no policy selects, a port allowed
    /// at L3/L4 only). An HTTP CONNECT needs them.
    pub fn has_rules(&self) -> bool {
        self.links.iter().any(|l| l.rules)
    }
}

/// The verdict the audited rules would give, beside the enforced one.
#[derive(Debug)]
pub struct Audit {
    /// The audited policies that select either side (`weir_policy_audited_total`).
    pub policies: Vec<String>,
    pub would: WouldBe,
}

#[derive(Debug)]
pub enum WouldBe {
    /// Refused at L3/L4, for this reason.
    Drop(String),
    /// Judged also by these filters: the chain the audited rules and the
    /// enforced ones make together, less the enforced chain's own links.
    Judge(Vec<ChainLink>),
}

#[derive(Debug, Clone)]
pub struct ChainLink {
    pub direction: Direction,
    pub filter: Arc<ConfiguredFilter>,
    /// The rules it judges for (`default/api spec.ingress[0].toPorts[0]`):
    /// a refusal names them.
    pub judges: Arc<[String]>,
    /// The protocol's own rules (`http`, `dns`, `kafka`, ...), not a
    /// custom `wasm` filter: an HTTP CONNECT needs an `http` rule's allow.
    pub rules: bool,
}

impl ChainLink {
    /// A refusal's reason, naming the filter and the rules it judged for.
    pub fn denial(&self, reason: &str) -> String {
        match self.judges.len() {
            0 => format!("{}: {reason}", self.filter.name),
            _ => format!("{}: {reason} (rules of {})", self.filter.name, self.judges.join(", ")),
        }
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct VerdictKey {
    listener: String,
    source: u32,
    /// Only world peers are told apart by address (CIDR rules).
    world_address: Option<IpAddr>,
    protocol: ProtocolKey,
    /// What the FQDN cache looked like (toFQDNs verdicts change with it).
    fqdn_generation: u64,
    /// The endpoint (FQDN names are learned per endpoint, not per identity).
    source_address: Option<IpAddr>,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum ProtocolKey {
    Tcp,
    Udp,
}

pub struct PolicyModel {
    pub generation: u64,
    pub config: WeirConfig,
    pub config_dir: PathBuf,
    /// Every rule, audited ones too (what `/config` shows and what filters
    /// are configured for).
    pub policies: PolicySet,
    /// The rules that are applied, when some are audited (otherwise all of
    /// `policies` are, and no copy is kept): see [`PolicyModel::enforced`].
    enforced_only: Option<PolicySet>,
    pub endpoints: Vec<Arc<Endpoint>>,
    pub identities: IdentityCache,
    pub listeners: BTreeMap<String, Arc<ListenerModel>>,
    /// Policy names, in the order loaded, for /config.
    pub policy_names: Vec<String>,
    runtime: Arc<FilterRuntime>,
    /// Addresses endpoints learned through the DNS proxy (shared by every model).
    pub fqdn: Arc<FqdnCache>,
    /// The built-in filters (protocols' policy filters, `Spec::policy_filter`,
    /// and built-in `l7proto` parsers) by name: those the rules use, loaded
    /// when the model is built ([`PolicyModel::builtin`]). One no rule uses
    /// is not loaded: each is about 1 MiB of mapped code and data.
    builtins: Mutex<HashMap<&'static str, Result<Arc<FilterComponent>, String>>>,
    custom_filters: HashMap<String, CustomFilter>,
    /// Filters another source names but cannot supply yet, with why: a rule
    /// naming one is accepted and refuses its traffic until it loads.
    unavailable: HashMap<String, String>,
    verdicts: Mutex<HashMap<VerdictKey, Arc<ConnectionVerdict>>>,
    /// Every filter configuration this model made, by (component, config):
    /// each is configured once (`filters.rs`).
    configured: Mutex<HashMap<(usize, String), Arc<ConfiguredFilter>>>,
    /// Destinations of connections the datapath handed over, as listeners.
    transparent: Mutex<HashMap<(SocketAddr, Protocol), Arc<ListenerModel>>>,
}

/// A connection's listener, sender and upstream source binding.
pub struct Resolved {
    pub listener: Arc<ListenerModel>,
    pub source: Arc<Identity>,
    /// The workload the sender is, when it is one of the model's endpoints.
    pub source_endpoint: Option<Arc<Endpoint>>,
    /// `Some`: dial the upstream from the client's address (datapath).
    pub bind: Option<UpstreamBind>,
}

impl Resolved {
    /// The context filters and flows see for connection `id` from `peer`.
    pub fn context(&self, id: u64, peer: SocketAddr, listener_name: &Arc<str>) -> Arc<ConnectionContext> {
        Arc::new(ConnectionContext {
            id,
            source: self.source.clone(),
            destination: self.listener.destination.identity.clone(),
            source_endpoint: self.source_endpoint.clone(),
            destination_endpoint: (self.listener.destination.identity.id != reserved::WORLD)
                .then(|| self.listener.destination.clone()),
            source_addr: peer,
            destination_addr: self.listener.config.upstream,
            port: self.listener.port,
            listener: listener_name.clone(),
        })
    }
}

#[cfg(test)]
impl PolicyModel {
    /// The model of weir.yaml text `node` and one policy file's text, built
    /// as at start: a fresh filter runtime counting into `metrics`, no filter
    /// cache, nothing learned from DNS. The file must parse. For tests.
    pub(crate) fn from_texts(
        node: &str,
        policies: &str,
        metrics: Arc<crate::observe::metrics::Metrics>,
    ) -> Result<PolicyModel, Vec<PolicyError>> {
        let options = crate::wasm::RuntimeOptions { cache_dir: None, max_instances: None };
        let runtime = Arc::new(FilterRuntime::new(metrics, options).unwrap());
        let (documents, errors) = crate::policy::document::parse_file("policies.yaml", policies);
        assert!(errors.is_empty(), "{errors:?}");
        let inputs = ModelInputs {
            config: WeirConfig::parse(node).unwrap(),
            config_dir: ".".into(),
            config_file: "weir.yaml".into(),
            documents,
        };
        PolicyModel::build(inputs, &runtime, &Arc::new(FqdnCache::new(Default::default(), None)), 1)
    }
}

impl PolicyModel {
    pub fn build(
        inputs: ModelInputs,
        runtime: &Arc<FilterRuntime>,
        fqdn: &Arc<FqdnCache>,
        generation: u64,
    ) -> Result<Self, Vec<PolicyError>> {
        let ModelInputs { config, config_dir, config_file, documents } = inputs;
        let config_error = |field: String, message: String| PolicyError {
            file: config_file.clone(),
            object: None,
            field: Some(field),
            message,
        };
        let mut errors = Vec::new();

        // Identities for endpoints and listener destinations.
        let endpoint_labels = Labels::of_endpoint;
        let mut allocator = IdentityAllocator::default();
        for ep in &config.endpoints {
            allocator.request(endpoint_labels(&ep.namespace, &ep.labels), ep.identity);
        }
        for l in &config.listeners {
            if !l.destination.labels.is_empty() {
                allocator
                    .request(endpoint_labels(&l.destination.namespace, &l.destination.labels), l.destination.identity);
            }
        }
        let identities = match allocator.allocate() {
            Ok(ids) => ids,
            Err(e) => return Err(vec![config_error("endpoints".into(), e.to_string())]),
        };
        let endpoints: Vec<Arc<Endpoint>> = config
            .endpoints
            .iter()
            .map(|ep| {
                Arc::new(Endpoint {
                    name: ep.name.as_str().into(),
                    namespace: ep.namespace.as_str().into(),
                    addresses: ep.all_addresses(),
                    identity: identities[&endpoint_labels(&ep.namespace, &ep.labels)].clone(),
                })
            })
            .collect();
        let identity_cache = IdentityCache::new(&endpoints);

        let mut listeners = BTreeMap::new();
        for (i, l) in config.listeners.iter().enumerate() {
            let identity = if l.destination.labels.is_empty() {
                identity_cache.world().clone()
            } else {
                identities[&endpoint_labels(&l.destination.namespace, &l.destination.labels)].clone()
            };
            let destination = Arc::new(Endpoint {
                name: l.destination.name.as_deref().unwrap_or(&l.name).into(),
                namespace: l.destination.namespace.as_str().into(),
                addresses: vec![l.upstream.ip()],
                identity,
            });
            let tls = match &l.tls {
                None => None,
                Some(tls) => match load_tls(&config_dir, &tls.cert, &tls.key) {
                    Ok(server) => Some(server),
                    Err(e) => {
                        errors.push(config_error(format!("listeners[{i}].tls"), e));
                        None
                    }
                },
            };
            let upstream_tls = l.upstream_tls.as_ref().and_then(|t| {
                let server_name = t.server_name.clone().unwrap_or_else(|| l.upstream.ip().to_string());
                let ca = t.ca.as_deref().map(|ca| resolve(&config_dir, ca));
                let identity = t
                    .cert
                    .as_deref()
                    .zip(t.key.as_deref())
                    .map(|(c, k)| (resolve(&config_dir, c), resolve(&config_dir, k)));
                let identity = identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
                match crate::net::UpstreamTls::load(&server_name, ca.as_deref(), identity) {
                    Ok(tls) => Some(Arc::new(tls)),
                    Err(e) => {
                        errors.push(config_error(format!("listeners[{i}].upstream_tls"), e));
                        None
                    }
                }
            });
            let port = l.destination.port.unwrap_or(l.upstream.port());
            let model = ListenerModel { config: l.clone(), destination, port, tls, upstream_tls };
            listeners.insert(l.name.clone(), Arc::new(model));
        }

        // Filters: the custom ones here, the built-in ones the rules use
        // once the rules are compiled (below).
        let mut custom_filters = HashMap::new();
        let mut unavailable = HashMap::new();
        for (i, f) in config.filters.iter().enumerate() {
            let bytes: std::borrow::Cow<[u8]> = match (&f.supplied, &f.path, &f.builtin) {
                // another source's filter: one that is not usable fails its
                // rules' traffic closed, and takes no other update with it
                (Some(supplied), _, _) => match &supplied.component {
                    Ok(bytes) => std::borrow::Cow::Borrowed(bytes),
                    Err(why) => {
                        unavailable.insert(f.name.clone(), why.clone());
                        continue;
                    }
                },
                (None, Some(path), _) => {
                    let path = resolve(&config_dir, path);
                    match std::fs::read(&path) {
                        Ok(bytes) => bytes.into(),
                        Err(e) => {
                            errors.push(config_error(format!("filters[{i}].path"), format!("{}: {e}", path.display())));
                            continue;
                        }
                    }
                }
                (None, None, Some(name)) => match builtin::find(name) {
                    Some(bytes) => bytes.into(),
                    None => {
                        let known: Vec<&str> = builtin::BUILTIN_FILTERS.iter().map(|(n, ..)| *n).collect();
                        errors.push(config_error(
                            format!("filters[{i}].builtin"),
                            format!("no built-in filter {name:?}; built in: {}", known.join(", ")),
                        ));
                        continue;
                    }
                },
                (None, None, None) => unreachable!("validated in WeirConfig::parse"),
            };
            let supplied = f.supplied.is_some();
            match runtime.load(&f.name, &bytes) {
                Ok(component) => {
                    custom_filters.insert(
                        f.name.clone(),
                        CustomFilter { component, limits: f.limits(), failure: f.failure, supplied },
                    );
                }
                Err(e) if supplied => {
                    unavailable.insert(f.name.clone(), e.to_string());
                }
                Err(e) => errors.push(config_error(format!("filters[{i}]"), e.to_string())),
            }
        }

        // the API server's objects, whose rules may name a WasmFilter not
        // created yet (validate_l7)
        let api_objects: std::collections::HashSet<String> =
            documents.iter().filter(|d| d.independent).map(|d| d.file.clone()).collect();
        let policy_names = documents.iter().map(SourcedDocument::name).collect();
        let policies = match PolicySet::compile(&documents) {
            Ok(p) => p,
            Err(mut e) => {
                errors.append(&mut e);
                PolicySet::default()
            }
        };

        let model = PolicyModel {
            generation,
            config,
            config_dir,
            enforced_only: policies.audits().then(|| policies.enforced()),
            policies,
            endpoints,
            identities: identity_cache,
            listeners,
            policy_names,
            runtime: runtime.clone(),
            fqdn: fqdn.clone(),
            builtins: Mutex::new(HashMap::new()),
            custom_filters,
            unavailable,
            verdicts: Mutex::new(HashMap::new()),
            configured: Mutex::new(HashMap::new()),
            transparent: Mutex::new(HashMap::new()),
        };
        for name in model.builtins_used() {
            if let Err(e) = model.builtin(name) {
                errors.push(config_error("filters".into(), e));
            }
        }
        errors.extend(model.validate_l7(&api_objects));
        if errors.is_empty() { Ok(model) } else { Err(errors) }
    }

    /// A connection the datapath redirected: its original destination seen
    /// as a listener that forwards there (plain HTTP, policy port = the
    /// destination port, the destination's identity from the endpoints).
    pub fn transparent_listener(&self, original_destination: SocketAddr, protocol: Protocol) -> Arc<ListenerModel> {
        if let Some(l) = self.transparent.lock().unwrap().get(&(original_destination, protocol)) {
            return l.clone();
        }
        let destination = match self.identities.endpoint(original_destination.ip()) {
            Some(ep) => ep.clone(),
            None => Arc::new(Endpoint {
                name: original_destination.ip().to_string().into(),
                namespace: "".into(),
                addresses: vec![original_destination.ip()],
                identity: self.identities.world().clone(),
            }),
        };
        let config = ListenerConfig {
            name: match protocol {
                Protocol::Http => format!("{TRANSPARENT_LISTENER}:{original_destination}"),
                _ => format!("{TRANSPARENT_LISTENER}-{protocol}:{original_destination}"),
            },
            bind: original_destination,
            protocol,
            upstream: original_destination,
            upstream_protocol: Default::default(),
            destination: crate::config::DestinationConfig {
                name: Some(destination.name.to_string()),
                namespace: destination.namespace.to_string(),
                labels: Default::default(),
                identity: Some(destination.identity.id),
                port: None,
            },
            tls: None,
            limits: Default::default(),
            escaped_slashes: Default::default(),
            ambiguous_paths: Default::default(),
            upgrades: crate::config::default_upgrades(),
            upstream_tls: None,
            connect_timeout: crate::config::default_connect_timeout(),
            // pods reach every broker through the datapath: nothing to rewrite
            brokers: Vec::new(),
            unlisted_brokers: Default::default(),
            broker_addresses: None,
        };
        let listener = Arc::new(ListenerModel {
            config,
            destination,
            port: original_destination.port(),
            tls: None,
            upstream_tls: None,
        });
        let mut cache = self.transparent.lock().unwrap();
        if cache.len() > 100_000 {
            cache.clear();
        }
        cache.insert((original_destination, protocol), listener.clone());
        listener
    }

    /// Where a connection that came in at `target` from `peer` goes, and who
    /// sent it. `None`: its listener is gone.
    pub fn resolve(&self, target: &Target, peer: SocketAddr, protocol: Protocol) -> Option<Resolved> {
        match target {
            Target::Listener(name) => {
                let source = self.identities.identity_of(peer.ip());
                let source_endpoint = self.endpoint_of(peer, &source);
                Some(Resolved { listener: self.listeners.get(&**name)?.clone(), source, source_endpoint, bind: None })
            }
            Target::Transparent { original_destination, source_identity } => {
                // the mark names the sender; the address is the fallback
                let source = source_identity
                    .and_then(|id| self.identities.by_id(id).cloned())
                    .unwrap_or_else(|| self.identities.identity_of(peer.ip()));
                // To a pod on this node, leave from the client's address: the
                // programs on the pod's veth steer its replies back to us. Any
                // other destination answers by plain routing, which would
                // deliver replies to the client pod instead: leave from the
                // node's address.
                let bind = self
                    .is_local_pod(original_destination.ip())
                    .then(|| UpstreamBind { source: peer.ip(), mark: crate::net::from_proxy_mark(source.id) });
                let listener = self.transparent_listener(*original_destination, protocol);
                let source_endpoint = self.endpoint_of(peer, &source);
                Some(Resolved { listener, source, source_endpoint, bind })
            }
        }
    }

    /// The endpoint at `peer`'s address, if it is the one `identity` names.
    pub fn endpoint_of(&self, peer: SocketAddr, identity: &Identity) -> Option<Arc<Endpoint>> {
        self.identities.endpoint(peer.ip()).filter(|e| e.identity.id == identity.id).cloned()
    }

    /// The verdict for a connection (or a UDP exchange) from `source` to a
    /// listener, cached per model (identities and policies are fixed within
    /// one) and FQDN cache generation.
    pub fn connection_verdict(
        &self,
        listener: &ListenerModel,
        source: SocketAddr,
        protocol: L4Protocol,
    ) -> Arc<ConnectionVerdict> {
        let source_identity = self.identities.identity_of(source.ip());
        self.connection_verdict_from(listener, source_identity, source, protocol)
    }

    /// The same, when the source's identity is known otherwise (the mark).
    pub fn connection_verdict_from(
        &self,
        listener: &ListenerModel,
        source_identity: Arc<Identity>,
        source: SocketAddr,
        protocol: L4Protocol,
    ) -> Arc<ConnectionVerdict> {
        let to_world = listener.destination.identity.id == reserved::WORLD;
        let key = VerdictKey {
            listener: listener.config.name.clone(),
            source: source_identity.id,
            world_address: (source_identity.id == reserved::WORLD).then_some(source.ip()),
            protocol: if protocol == L4Protocol::Udp { ProtocolKey::Udp } else { ProtocolKey::Tcp },
            fqdn_generation: if to_world { self.fqdn.generation() } else { 0 },
            source_address: to_world.then_some(source.ip()),
        };
        if let Some(v) = self.verdicts.lock().unwrap().get(&key) {
            return v.clone();
        }
        let exhaustions = self.runtime.exhaustions();
        let verdict = Arc::new(self.compute_verdict(listener, &source_identity, source.ip(), protocol));
        // a verdict that met a filter-instance shortage is not kept: the
        // shortage passes, a cached drop would not
        if self.runtime.exhaustions() != exhaustions {
            return verdict;
        }
        let mut cache = self.verdicts.lock().unwrap();
        if cache.len() > 100_000 {
            cache.clear(); // bounded: world peers are keyed by address
        }
        cache.insert(key, verdict.clone());
        verdict
    }

    /// Whether `address` is a pod the datapath is attached for (an endpoint
    /// with an `interface`).
    pub fn is_local_pod(&self, address: IpAddr) -> bool {
        self.config.endpoints.iter().any(|e| e.interface.is_some() && e.all_addresses().contains(&address))
    }

    /// The names the endpoint at `source_ip` learned `address` for (toFQDNs).
    pub fn learned_names(&self, source_ip: IpAddr, address: IpAddr) -> Vec<Arc<str>> {
        match self.identities.endpoint(source_ip) {
            Some(endpoint) => self.fqdn.names_for(&endpoint.qualified_name(), address),
            None => Vec::new(),
        }
    }

    /// The rules that are applied: the kernel's maps and the proxy's
    /// verdicts come from these (all of them unless some are audited).
    pub fn enforced(&self) -> &PolicySet {
        self.enforced_only.as_ref().unwrap_or(&self.policies)
    }

    /// Whether some rule is audited.
    pub fn audits(&self) -> bool {
        self.enforced_only.is_some()
    }

    /// The enforced verdict, and beside it what the audited rules would do
    /// where that differs.
    fn compute_verdict(
        &self,
        listener: &ListenerModel,
        source: &Identity,
        source_ip: IpAddr,
        protocol: L4Protocol,
    ) -> ConnectionVerdict {
        let enforced = self.verdict_under(self.enforced(), listener, source, source_ip, protocol);
        // nothing audited anywhere: the common case costs one check
        if self.enforced_only.is_none() {
            return enforced;
        }
        let ConnectionVerdict::Forward(mut chain) = enforced else { return enforced };
        let policies = self.policies.audited_selecting(source, &listener.destination.identity);
        if policies.is_empty() {
            return ConnectionVerdict::Forward(chain);
        }
        let would = match self.verdict_under(&self.policies, listener, source, source_ip, protocol) {
            ConnectionVerdict::Drop { reason } => Some(WouldBe::Drop(reason)),
            // Every link must allow, and the enforced ones did: only the
            // others are asked. A filter is never asked twice for one
            // request (a rate limiter would count it twice).
            ConnectionVerdict::Forward(all) => {
                let more: Vec<ChainLink> = all
                    .links
                    .into_iter()
                    .filter(|a| !chain.links.iter().any(|b| a.direction == b.direction && a.filter.same_as(&b.filter)))
                    .collect();
                (!more.is_empty()).then_some(WouldBe::Judge(more))
            }
        };
        chain.audit = would.map(|would| Audit { policies, would });
        ConnectionVerdict::Forward(chain)
    }

    /// The verdict `policies` give.
    fn verdict_under(
        &self,
        policies: &PolicySet,
        listener: &ListenerModel,
        source: &Identity,
        source_ip: IpAddr,
        protocol: L4Protocol,
    ) -> ConnectionVerdict {
        let destination = &listener.destination.identity;
        let upstream = listener.config.upstream.ip();
        let learned =
            if destination.id == reserved::WORLD { self.learned_names(source_ip, upstream) } else { Vec::new() };
        let connection = Connection {
            source: PeerInfo::new(source, source_ip.into()),
            destination: PeerInfo { identity: destination, address: upstream.into(), learned_names: &learned },
            port: listener.port,
            protocol,
            kind: listener.config.protocol,
        };
        self.judge(policies, &connection)
    }

    /// The verdict `policies` give `connection`: both sides' L3/L4 rules,
    /// then the filters of the L7 rules that allowed it.
    pub fn judge(&self, policies: &PolicySet, connection: &Connection<'_>) -> ConnectionVerdict {
        let Connection { source, destination, port, protocol, kind } = *connection;
        let egress = policies.evaluate(Direction::Egress, source.identity, destination, port, protocol);
        let ingress = policies.evaluate(Direction::Ingress, destination.identity, source, port, protocol);
        let mut chain = FilterChain::default();
        for (direction, verdict) in [(Direction::Egress, egress), (Direction::Ingress, ingress)] {
            match verdict {
                SideVerdict::Denied { reason } => return ConnectionVerdict::Drop { reason },
                SideVerdict::Unenforced => {}
                SideVerdict::Allowed(allowances) => {
                    chain.allowed_by.extend(allowances.iter().map(|a| a.origin.clone()));
                    match self.links_for(direction, &allowances, kind) {
                        Ok(mut links) => chain.links.append(&mut links),
                        Err(reason) => return ConnectionVerdict::Drop { reason },
                    }
                }
            }
        }
        chain.allowed_by.dedup();
        ConnectionVerdict::Forward(chain)
    }

    /// The model as /config shows it.
    pub fn describe(&self) -> serde_json::Value {
        #[derive(Serialize)]
        struct ListenerView<'a> {
            name: &'a str,
            bind: SocketAddr,
            upstream: SocketAddr,
            tls: bool,
            destination: &'a Endpoint,
            port: u16,
        }
        let listeners: Vec<ListenerView<'_>> = self
            .listeners
            .values()
            .map(|l| ListenerView {
                name: &l.config.name,
                bind: l.config.bind,
                upstream: l.config.upstream,
                tls: l.tls.is_some(),
                destination: &l.destination,
                port: l.port,
            })
            .collect();
        let filters: Vec<_> = Protocol::ALL
            .into_iter()
            .filter_map(|p| p.spec().policy_filter)
            .chain(builtin::STREAM_FILTERS.iter().copied())
            .map(str::to_string)
            .chain(self.custom_filters.keys().cloned())
            .collect();
        let mut supplied: Vec<_> = self
            .config
            .filters
            .iter()
            .filter_map(|f| {
                let supplied = f.supplied.as_ref()?;
                let digest = self.custom_filters.get(&f.name).map(|c| hex(&c.component.digest));
                Some(serde_json::json!({
                    "name": f.name,
                    "origin": supplied.origin,
                    "sha256": digest,
                    "unavailable": self.unavailable.get(&f.name),
                }))
            })
            .collect();
        supplied.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        serde_json::json!({
            "generation": self.generation,
            "listeners": listeners,
            "endpoints": self.endpoints,
            "policies": self.policy_names,
            "rules": self.policies.rules,
            "filters": filters,
            "supplied_filters": supplied,
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn resolve(dir: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() { path.to_path_buf() } else { dir.join(path) }
}

fn load_tls(dir: &Path, cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let (cert_path, key_path) = (resolve(dir, cert), resolve(dir, key));
    let cert_pem = std::fs::read(&cert_path).map_err(|e| format!("cert {}: {e}", cert_path.display()))?;
    let key_pem = std::fs::read(&key_path).map_err(|e| format!("key {}: {e}", key_path.display()))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cert {}: {e}", cert_path.display()))?;
    if certs.is_empty() {
        return Err(format!("cert {}: no PEM certificate found", cert_path.display()));
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| format!("key {}: {e}", key_path.display()))?
        .ok_or_else(|| format!("key {}: no PEM private key found", key_path.display()))?;
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key do not fit together: {e}"))?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(server))
}
