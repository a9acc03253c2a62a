//! `weir operator`: the one writer per cluster. Nodes only read policies and
//! create identities; the operator, elected through a Lease so that two
//! replicas never both write, does what must be done once:
//!
//! - **judges every policy object** exactly as a node does (the same
//!   parsing, compilation and filter configuration, `control/build.rs`) and
//!   writes the verdict on the object: `status.conditions[type=Valid]`
//!   (True, or False with the field-level message `weir policy check`
//!   prints), and a Warning Event when an object becomes invalid.
//!   NetworkPolicy has no status: it gets the Event only;
//! - **judges every WasmFilter** as a node loads it (`filters.rs`: the
//!   ConfigMap or the fetched URL, the digest, the component) and writes
//!   its verdict the same way; policies naming a filter are judged with it;
//! - **collects identities** no pod has used for a grace period.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};

use super::Changes;
use super::client::ApiClient;
use super::endpoints::{IdentityIndex, Pod, identity_labels};
use super::filters::{self, WASM_FILTERS, WasmFilterObject};
use super::reflect::{self, Shared};
use super::resources::{self, EVENTS, IDENTITIES, LEASES, POLICIES, Resource};
use crate::config::{CONFIG_FILE, WeirConfig};
use crate::control::build::{self, LastGood};
use crate::control::source::Read;
use crate::identity::Labels;
use crate::model::ModelInputs;
use crate::model::fqdn::FqdnCache;
use crate::observe::flow::rfc3339;
use crate::observe::metrics::{KubernetesMetrics, Metrics};
use crate::policy::document;
use crate::wasm::{FilterRuntime, RuntimeOptions};

pub struct OperatorOptions {
    /// The `weir.yaml` the nodes run (custom filters a `wasm` rule may
    /// name); `None`: built-in filters only.
    pub config: Option<PathBuf>,
    /// Where the Lease lives (the operator's own namespace).
    pub namespace: String,
    /// Who this replica is (the Lease's holder).
    pub identity: String,
    /// How long an identity no pod uses is kept.
    pub identity_grace: Duration,
}

/// What the operator keeps of a policy object: what a node reads, and what
/// it needs to write about it.
#[derive(Clone, Debug, PartialEq)]
struct PolicyObject {
    document: serde_json::Value,
    uid: String,
    generation: i64,
    /// The `Valid` condition as it stands on the object.
    valid: Option<serde_json::Value>,
    /// Every other condition, kept when the operator writes its own.
    other_conditions: Vec<serde_json::Value>,
}

fn policy_object(resource: &Resource, object: &serde_json::Value) -> Option<PolicyObject> {
    status_object(object, resources::policy(resource, object)?)
}

/// A WasmFilter as the operator keeps it: as a node reads it, and its status.
#[derive(Clone, Debug, PartialEq)]
struct FilterObject {
    filter: WasmFilterObject,
    status: PolicyObject,
}

fn filter_object(resource: &Resource, object: &serde_json::Value) -> Option<FilterObject> {
    Some(FilterObject {
        filter: filters::wasm_filter(resource, object)?,
        status: status_object(object, object.get("spec").cloned().unwrap_or_default())?,
    })
}

/// An object with its `Valid` condition apart from the others.
fn status_object(object: &serde_json::Value, document: serde_json::Value) -> Option<PolicyObject> {
    let conditions = object.pointer("/status/conditions").and_then(|c| c.as_array()).cloned().unwrap_or_default();
    let (valid, other): (Vec<_>, Vec<_>) =
        conditions.into_iter().partition(|c| c.get("type").and_then(|t| t.as_str()) == Some(VALID));
    Some(PolicyObject {
        document,
        uid: object.pointer("/metadata/uid")?.as_str()?.to_string(),
        generation: object.pointer("/metadata/generation").and_then(|g| g.as_i64()).unwrap_or(0),
        valid: valid.into_iter().next(),
        other_conditions: other,
    })
}

/// An identity object as the collector sees it.
#[derive(Clone, Debug, PartialEq)]
struct IdentityObject {
    labels: Labels,
    uid: String,
}

fn identity_object(resource: &Resource, object: &serde_json::Value) -> Option<IdentityObject> {
    Some(IdentityObject {
        labels: resources::identity(resource, object)?,
        uid: object.pointer("/metadata/uid")?.as_str()?.to_string(),
    })
}

const VALID: &str = "Valid";
const LEASE_NAME: &str = "weir-operator";
const LEASE_SECONDS: u64 = 15;
const RENEW_EVERY: Duration = Duration::from_secs(5);

struct Tables {
    policies: Vec<Shared<PolicyObject>>,
    namespaces: Shared<BTreeMap<String, String>>,
    pods: Shared<Pod>,
    identities: Shared<IdentityObject>,
    filters: Shared<FilterObject>,
    config_maps: Shared<filters::ConfigMapData>,
}

/// Run the operator until the process ends.
pub async fn run(client: ApiClient, options: OperatorOptions) -> anyhow::Result<()> {
    let metrics = KubernetesMetrics::default();
    let client = client.with_agent(&format!("operator {}", options.identity)).counted(metrics.requests.clone());
    let changes = Changes::new(Arc::new(tokio::sync::Notify::new()), metrics);
    let tables = Arc::new(Tables {
        policies: POLICIES.iter().map(|_| reflect::table()).collect(),
        namespaces: reflect::table(),
        pods: reflect::table(),
        identities: reflect::table(),
        filters: reflect::table(),
        config_maps: reflect::table(),
    });
    tokio::spawn(reflect::run(client.clone(), &WASM_FILTERS, filter_object, tables.filters.clone(), changes.clone()));
    tokio::spawn(reflect::run(
        client.clone(),
        filters::config_maps(&options.namespace),
        filters::config_map,
        tables.config_maps.clone(),
        changes.clone(),
    ));
    let mut resolver = filters::Resolver::new(&options.namespace)?;
    let mut resolved_at = (u64::MAX, Instant::now());
    for (resource, table) in POLICIES.iter().zip(&tables.policies) {
        tokio::spawn(reflect::run(client.clone(), resource, policy_object, table.clone(), changes.clone()));
    }
    tokio::spawn(reflect::run(
        client.clone(),
        &resources::NAMESPACES,
        resources::namespace,
        tables.namespaces.clone(),
        changes.clone(),
    ));
    tokio::spawn(reflect::run(client.clone(), &resources::PODS, resources::pod, tables.pods.clone(), changes.clone()));
    tokio::spawn(reflect::run(
        client.clone(),
        &IDENTITIES,
        identity_object,
        tables.identities.clone(),
        changes.clone(),
    ));

    let leading = Arc::new(AtomicBool::new(false));
    tokio::spawn(lead(client.clone(), options.namespace.clone(), options.identity.clone(), leading.clone()));

    let judge = Judge::new(options.config.as_deref())?;
    let mut written: HashMap<(String, String, i64), String> = HashMap::new();
    let mut unused_since: HashMap<String, Instant> = HashMap::new();
    let mut changed = changes.subscribe();
    let mut judged_at = u64::MAX;
    tracing::info!(identity = %options.identity, "weir operator started; waiting for the lease");
    loop {
        let _ = tokio::time::timeout(Duration::from_secs(1), changed.changed()).await;
        if !leading.load(Ordering::Relaxed) || !tables.synced() {
            continue;
        }
        let now = changes.count();
        // filters first (a fetch that failed is tried again every 10 s):
        // the policies naming them are judged with them
        if now != resolved_at.0 || resolved_at.1.elapsed() > Duration::from_secs(10) {
            resolved_at = (now, Instant::now());
            let objects: BTreeMap<_, _> = tables
                .filters
                .lock()
                .unwrap()
                .objects
                .iter()
                .map(|(key, object)| (key.clone(), object.filter.clone()))
                .collect();
            let maps = tables.config_maps.lock().unwrap().objects.clone();
            if resolver.resolve(&objects, &maps).await.changed {
                judged_at = u64::MAX;
            }
        }
        if now != judged_at {
            judged_at = now;
            let verdicts = judge.verdicts(&tables, &resolver)?;
            for verdict in verdicts {
                if let Err(e) = write_verdict(&client, &verdict, &options.identity, &mut written).await {
                    tracing::warn!(object = %verdict.key, "writing the policy's status: {e:#}");
                    judged_at = u64::MAX;
                }
            }
        }
        collect_identities(&client, &tables, options.identity_grace, &mut unused_since).await;
    }
}

impl Tables {
    fn synced(&self) -> bool {
        self.policies.iter().all(|t| t.lock().unwrap().standing.synced())
            && self.namespaces.lock().unwrap().standing.synced()
            && self.pods.lock().unwrap().standing.synced()
            && self.identities.lock().unwrap().standing.synced()
            && self.filters.lock().unwrap().standing.synced()
            && self.config_maps.lock().unwrap().standing.synced()
    }
}

/// Judges policy objects as a node would.
struct Judge {
    config: WeirConfig,
    config_dir: PathBuf,
    config_file: String,
    runtime: Arc<FilterRuntime>,
    fqdn: Arc<FqdnCache>,
}

/// What the operator says about one object.
struct Verdict {
    /// `kubernetes ciliumnetworkpolicies: policy default/web`
    key: String,
    resource: &'static Resource,
    namespace: String,
    name: String,
    object: PolicyObject,
    /// `None`: valid.
    problem: Option<String>,
}

impl Judge {
    fn new(config_dir: Option<&std::path::Path>) -> anyhow::Result<Self> {
        let (mut config, config_dir, config_file) = match config_dir {
            Some(dir) => {
                let path = dir.join(CONFIG_FILE);
                let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
                let config = WeirConfig::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                (config, dir.to_path_buf(), path.display().to_string())
            }
            None => (WeirConfig::parse("{}").expect("defaults parse"), PathBuf::from("."), "(no weir.yaml)".into()),
        };
        // only policies are judged: nothing is bound or served
        config.listeners.clear();
        let options = RuntimeOptions { cache_dir: config.filter_cache_dir(), max_instances: None };
        let runtime = Arc::new(FilterRuntime::new(Arc::new(Metrics::default()), options)?);
        let fqdn = Arc::new(FqdnCache::new(Default::default(), None));
        Ok(Judge { config, config_dir, config_file, runtime, fqdn })
    }

    fn verdicts(&self, tables: &Tables, resolver: &filters::Resolver) -> anyhow::Result<Vec<Verdict>> {
        let mut config = self.config.clone();
        crate::control::source::add_filters(&mut config, resolver.supplied());
        let mut read = Read {
            inputs: ModelInputs {
                config,
                config_dir: self.config_dir.clone(),
                config_file: self.config_file.clone(),
                documents: Vec::new(),
            },
            errors: Vec::new(),
            set_aside: Vec::new(),
        };
        let mut verdicts = Vec::new();
        for (resource, table) in POLICIES.iter().zip(&tables.policies) {
            let origin = format!("kubernetes {}", resource.plural);
            for ((namespace, name), object) in table.lock().unwrap().objects.iter() {
                let qualified = if namespace.is_empty() { name.clone() } else { format!("{namespace}/{name}") };
                let key = document::object_key(&origin, &qualified);
                let value = serde_yaml::to_value(&object.document)?;
                match document::parse_object(&origin, value) {
                    Ok(document) => read.inputs.documents.push(document),
                    Err(e) => read.set_aside.push((key.clone(), e)),
                }
                verdicts.push(Verdict {
                    key,
                    resource,
                    namespace: namespace.clone(),
                    name: name.clone(),
                    object: object.clone(),
                    problem: None,
                });
            }
        }
        let built = build::build(read, &self.runtime, &self.fqdn, 0, &LastGood::new())
            .map_err(|errors| anyhow::anyhow!("the operator's own configuration: {}", errors[0]))?;
        let problems: HashMap<String, String> = built
            .set_aside
            .into_iter()
            .map(|s| (s.key, s.errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")))
            .collect();
        for verdict in &mut verdicts {
            verdict.problem = problems.get(&verdict.key).cloned();
        }
        for ((_, name), object) in tables.filters.lock().unwrap().objects.iter() {
            let problem = match &object.filter.spec {
                Err(problem) => Some(problem.clone()),
                Ok(_) => resolver.problem(name),
            };
            verdicts.push(Verdict {
                key: format!("{}: filter {name}", filters::ORIGIN),
                resource: &WASM_FILTERS,
                namespace: String::new(),
                name: name.clone(),
                object: object.status.clone(),
                problem,
            });
        }
        Ok(verdicts)
    }
}

/// Write an object's verdict if the object does not say it yet: its `Valid`
/// condition (kinds with a status) and, when it became invalid, an Event.
async fn write_verdict(
    client: &ApiClient,
    verdict: &Verdict,
    me: &str,
    written: &mut HashMap<(String, String, i64), String>,
) -> anyhow::Result<()> {
    let valid =
        if verdict.resource.kind == WASM_FILTERS.kind { "weir loads this filter" } else { "weir enforces this policy" };
    let (status, reason, message) = match &verdict.problem {
        None => ("True", "Valid", valid.to_string()),
        Some(problem) => ("False", "Invalid", problem.clone()),
    };
    let object = &verdict.object;
    let says = |c: &serde_json::Value, field: &str| c.get(field).cloned().unwrap_or_default();
    let current = object.valid.as_ref();
    let up_to_date = current.is_some_and(|c| {
        says(c, "status") == status
            && says(c, "message") == message.as_str()
            && says(c, "observedGeneration") == object.generation
    });
    let has_status = verdict.resource.kind != "NetworkPolicy";
    if has_status && !up_to_date {
        let transition = match current {
            Some(c) if says(c, "status") == status => says(c, "lastTransitionTime"),
            _ => rfc3339_seconds(SystemTime::now()).into(),
        };
        let mut conditions = object.other_conditions.clone();
        conditions.push(serde_json::json!({
            "type": VALID,
            "status": status,
            "reason": reason,
            "message": message,
            "observedGeneration": object.generation,
            "lastTransitionTime": transition,
        }));
        let patch = serde_json::json!({"status": {"conditions": conditions}});
        let path = format!("{}/status", verdict.resource.object_path(&verdict.namespace, &verdict.name));
        let (code, answer) = client
            .call(http::Method::PATCH, &path, Some(("application/merge-patch+json", serde_json::to_vec(&patch)?)))
            .await?;
        if !code.is_success() && code != http::StatusCode::NOT_FOUND {
            bail!("PATCH {path}: {code}: {}", String::from_utf8_lossy(&answer));
        }
        tracing::info!(object = %verdict.key, valid = status, "policy status written");
    }
    // one Event per object generation and problem
    let event_key = (verdict.resource.plural.to_string(), object.uid.clone(), object.generation);
    match &verdict.problem {
        Some(problem) if written.get(&event_key) != Some(problem) => {
            let already_said =
                current.is_some_and(|c| says(c, "status") == "False" && says(c, "message") == problem.as_str());
            if !already_said || !has_status {
                event(client, verdict, problem, me).await?;
            }
            written.insert(event_key, problem.clone());
        }
        Some(_) => {}
        None => {
            written.remove(&event_key);
        }
    }
    Ok(())
}

/// A Warning Event about `verdict`'s object.
async fn event(client: &ApiClient, verdict: &Verdict, problem: &str, me: &str) -> anyhow::Result<()> {
    // clusterwide objects' events go to `default`, as kubectl looks for them
    let namespace = if verdict.namespace.is_empty() { "default" } else { verdict.namespace.as_str() };
    let now = rfc3339_seconds(SystemTime::now());
    let unique = SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let event = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": format!("{}.{unique:x}", verdict.name), "namespace": namespace},
        "involvedObject": {
            "apiVersion": verdict.resource.api_version,
            "kind": verdict.resource.kind,
            "name": verdict.name,
            "namespace": if verdict.namespace.is_empty() { None } else { Some(&verdict.namespace) },
            "uid": verdict.object.uid,
        },
        "reason": if verdict.resource.kind == WASM_FILTERS.kind { "InvalidFilter" } else { "InvalidPolicy" },
        "message": problem,
        "type": "Warning",
        "source": {"component": "weir-operator"},
        "reportingComponent": "weir-operator",
        "reportingInstance": me,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    });
    let path = format!("{}/namespaces/{namespace}/{}", EVENTS.prefix, EVENTS.plural);
    let (code, answer) =
        client.call(http::Method::POST, &path, Some(("application/json", serde_json::to_vec(&event)?))).await?;
    if !code.is_success() {
        bail!("POST {path}: {code}: {}", String::from_utf8_lossy(&answer));
    }
    tracing::warn!(object = %verdict.key, "invalid policy: {problem}");
    Ok(())
}

/// Delete identities no pod has used for `grace`: an identity is used when
/// it is the one a pod's label set resolves to (the lowest number of its
/// set), so a duplicate left by a race goes too.
async fn collect_identities(
    client: &ApiClient,
    tables: &Tables,
    grace: Duration,
    unused_since: &mut HashMap<String, Instant>,
) {
    let identities = tables.identities.lock().unwrap().objects.clone();
    let index = IdentityIndex::new(identities.iter().filter_map(|((_, n), o)| Some((n.parse().ok()?, &o.labels))));
    let namespaces = tables.namespaces.lock().unwrap().objects.clone();
    let mut used = HashSet::new();
    for ((namespace, _), pod) in tables.pods.lock().unwrap().objects.iter() {
        if pod.host_network {
            continue;
        }
        let Some(namespace_labels) = namespaces.get(&(String::new(), namespace.clone())) else { continue };
        let labels = Labels::of_endpoint(namespace, &identity_labels(pod, Some(namespace_labels)));
        if let Some(number) = index.get(&labels) {
            used.insert(number.to_string());
        }
    }
    let now = Instant::now();
    unused_since.retain(|name, _| identities.contains_key(&(String::new(), name.clone())) && !used.contains(name));
    for ((_, name), object) in &identities {
        if used.contains(name) {
            continue;
        }
        let since = *unused_since.entry(name.clone()).or_insert(now);
        if now.duration_since(since) < grace {
            continue;
        }
        // only the object we saw unused: not one created again since
        let options =
            serde_json::json!({"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": object.uid}});
        let path = IDENTITIES.object_path("", name);
        let body = serde_json::to_vec(&options).expect("serializes");
        match client.call(http::Method::DELETE, &path, Some(("application/json", body))).await {
            Ok((code, _)) if code.is_success() || code == http::StatusCode::NOT_FOUND => {
                tracing::info!(identity = %name, labels = %object.labels, "identity collected: no pod used it for {grace:?}");
                unused_since.remove(name);
            }
            Ok((http::StatusCode::CONFLICT, _)) => {
                unused_since.remove(name);
            }
            Ok((code, answer)) => {
                tracing::warn!(identity = %name, "collecting: {code}: {}", String::from_utf8_lossy(&answer));
            }
            Err(e) => tracing::warn!(identity = %name, "collecting: {e:#}"),
        }
    }
}

/// Hold the Lease while this replica lives, as client-go's leader election
/// does: a holder that has not renewed for the lease's duration (by our own
/// clock, from when we last saw its record change) is replaced; the
/// resourceVersion makes every take-over and renewal a compare-and-swap.
async fn lead(client: ApiClient, namespace: String, me: String, leading: Arc<AtomicBool>) {
    let path = LEASES.object_path(&namespace, LEASE_NAME);
    let mut observed: Option<(String, Instant)> = None;
    loop {
        let held = match try_lead(&client, &namespace, &path, &me, &mut observed).await {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!("lease {namespace}/{LEASE_NAME}: {e:#}");
                false
            }
        };
        if held != leading.swap(held, Ordering::Relaxed) {
            if held {
                tracing::info!("leading: this replica writes policy status and collects identities");
            } else {
                tracing::warn!("not leading (another replica holds the lease)");
            }
        }
        tokio::time::sleep(RENEW_EVERY).await;
    }
}

async fn try_lead(
    client: &ApiClient,
    namespace: &str,
    path: &str,
    me: &str,
    observed: &mut Option<(String, Instant)>,
) -> anyhow::Result<bool> {
    let now = micro_time(SystemTime::now());
    let (code, body) = client.get(path).await?;
    let spec = |transitions: i64, acquire: &str| {
        serde_json::json!({
            "holderIdentity": me,
            "leaseDurationSeconds": LEASE_SECONDS,
            "acquireTime": acquire,
            "renewTime": now,
            "leaseTransitions": transitions,
        })
    };
    if code == http::StatusCode::NOT_FOUND {
        let lease = serde_json::json!({
            "apiVersion": LEASES.api_version, "kind": LEASES.kind,
            "metadata": {"name": LEASE_NAME, "namespace": namespace},
            "spec": spec(0, &now),
        });
        let create = format!("{}/namespaces/{namespace}/{}", LEASES.prefix, LEASES.plural);
        let (code, _) =
            client.call(http::Method::POST, &create, Some(("application/json", serde_json::to_vec(&lease)?))).await?;
        return Ok(code.is_success());
    }
    if !code.is_success() {
        bail!("GET: {code}: {}", String::from_utf8_lossy(&body));
    }
    let mut lease: serde_json::Value = serde_json::from_slice(&body)?;
    let holder = lease.pointer("/spec/holderIdentity").and_then(|h| h.as_str()).unwrap_or("").to_string();
    let record = lease.pointer("/spec").map(|s| s.to_string()).unwrap_or_default();
    let mine = holder == me;
    if !mine && !holder.is_empty() {
        let seen_at = match observed {
            Some((seen, at)) if *seen == record => *at,
            _ => {
                *observed = Some((record, Instant::now()));
                return Ok(false);
            }
        };
        if seen_at.elapsed() < Duration::from_secs(LEASE_SECONDS) {
            return Ok(false);
        }
        tracing::info!(previous = %holder, "the lease expired: taking it over");
    }
    let transitions = lease.pointer("/spec/leaseTransitions").and_then(|t| t.as_i64()).unwrap_or(0);
    let (transitions, acquire) = if mine {
        let acquire = lease.pointer("/spec/acquireTime").and_then(|t| t.as_str()).unwrap_or(&now).to_string();
        (transitions, acquire)
    } else {
        (transitions + 1, now.clone())
    };
    lease["spec"] = spec(transitions, &acquire);
    let (code, _) =
        client.call(http::Method::PUT, path, Some(("application/json", serde_json::to_vec(&lease)?))).await?;
    // 409: someone else renewed or took it first
    Ok(code.is_success())
}

/// `metav1.Time`: RFC 3339 to the second.
fn rfc3339_seconds(time: SystemTime) -> String {
    let text = rfc3339(time);
    format!("{}Z", &text[..19])
}

/// `metav1.MicroTime`: RFC 3339 with six fraction digits.
fn micro_time(time: SystemTime) -> String {
    let micros = time.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_micros();
    format!("{}.{micros:06}Z", &rfc3339(time)[..19])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_times_have_the_precision_the_api_server_reads() {
        let t = std::time::UNIX_EPOCH + Duration::from_micros(1_764_936_000_123_456);
        assert_eq!(rfc3339_seconds(t), "2025-12-05T12:00:00Z");
        assert_eq!(micro_time(t), "2025-12-05T12:00:00.123456Z");
    }
}
