//! `networking.k8s.io/v1` NetworkPolicy, read as the CiliumNetworkPolicy it
//! means (L3/L4 only), the way Cilium itself enforces NetworkPolicy:
//!
//! - `podSelector` → `endpointSelector`;
//! - `policyTypes` (default: Ingress, plus Egress when `egress` is given):
//!   a listed type with no rules denies everything in that direction;
//! - a rule without `from`/`to` matches every peer; without `ports`, every port;
//! - `podSelector` peers stay in the policy's namespace; a `namespaceSelector`
//!   widens them to the namespaces it selects, by the namespace labels every
//!   pod's identity carries as `io.cilium.k8s.namespace.labels.KEY` (the
//!   Kubernetes source adds them; `{}` is every namespace);
//!   `ipBlock` → `fromCIDRSet`/`toCIDRSet`;
//! - a port's protocol defaults to TCP.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_yaml::{Mapping, Value};

use super::wire::{CILIUM_API, SelectorRequirement};

pub const API: &str = "networking.k8s.io/v1";
pub const KIND: &str = "NetworkPolicy";

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NetworkPolicy {
    #[allow(dead_code)]
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    metadata: Value,
    spec: Spec,
    #[serde(default)]
    #[allow(dead_code)]
    status: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Spec {
    pod_selector: LabelSelector,
    #[serde(default)]
    policy_types: Option<Vec<String>>,
    #[serde(default)]
    ingress: Option<Vec<IngressRule>>,
    #[serde(default)]
    egress: Option<Vec<EgressRule>>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct LabelSelector {
    #[serde(default)]
    match_labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    match_expressions: Option<Vec<SelectorRequirement>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IngressRule {
    #[serde(default)]
    from: Option<Vec<Peer>>,
    #[serde(default)]
    ports: Option<Vec<Port>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EgressRule {
    #[serde(default)]
    to: Option<Vec<Peer>>,
    #[serde(default)]
    ports: Option<Vec<Port>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Peer {
    #[serde(default)]
    pod_selector: Option<LabelSelector>,
    #[serde(default)]
    namespace_selector: Option<LabelSelector>,
    #[serde(default)]
    ip_block: Option<IpBlock>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IpBlock {
    cidr: String,
    #[serde(default)]
    except: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Port {
    #[serde(default)]
    port: Option<Value>,
    #[serde(default)]
    end_port: Option<i64>,
    #[serde(default)]
    protocol: Option<String>,
}

/// The CiliumNetworkPolicy document equivalent to a NetworkPolicy document,
/// or `(field, message)`.
pub fn to_cilium(value: Value) -> Result<Value, (String, String)> {
    let policy: NetworkPolicy =
        serde_path_to_error::deserialize(value).map_err(|e| (e.path().to_string(), e.into_inner().to_string()))?;
    let spec = policy.spec;
    let types = spec.policy_types.clone().unwrap_or_else(|| {
        let mut t = vec!["Ingress".to_string()];
        if spec.egress.is_some() {
            t.push("Egress".into());
        }
        t
    });
    for (i, t) in types.iter().enumerate() {
        if t != "Ingress" && t != "Egress" {
            return Err((format!("spec.policyTypes[{i}]"), format!("{t:?}: use Ingress or Egress")));
        }
    }
    let mut rule = Mapping::new();
    rule.insert("endpointSelector".into(), selector(&spec.pod_selector, None));
    if types.iter().any(|t| t == "Ingress") {
        let mut rules = Vec::new();
        for (i, r) in spec.ingress.iter().flatten().enumerate() {
            let at = format!("spec.ingress[{i}]");
            rules.push(section(r.from.as_deref(), r.ports.as_deref(), &at, "from")?);
        }
        rule.insert("ingress".into(), Value::Sequence(rules));
    }
    if types.iter().any(|t| t == "Egress") {
        let mut rules = Vec::new();
        for (i, r) in spec.egress.iter().flatten().enumerate() {
            let at = format!("spec.egress[{i}]");
            rules.push(section(r.to.as_deref(), r.ports.as_deref(), &at, "to")?);
        }
        rule.insert("egress".into(), Value::Sequence(rules));
    }
    let mut doc = Mapping::new();
    doc.insert("apiVersion".into(), CILIUM_API.into());
    doc.insert("kind".into(), "CiliumNetworkPolicy".into());
    doc.insert("metadata".into(), policy.metadata);
    doc.insert("spec".into(), Value::Mapping(rule));
    Ok(Value::Mapping(doc))
}

/// How a pod's identity carries its namespace's labels (Cilium's name).
const NAMESPACE_LABELS: &str = "k8s:io.cilium.k8s.namespace.labels.";

/// Pods `s` selects; with `namespaces`, in the namespaces it selects
/// rather than only the policy's own.
fn selector(s: &LabelSelector, namespaces: Option<&LabelSelector>) -> Value {
    let mut m = Mapping::new();
    let mut labels = s.match_labels.clone().unwrap_or_default();
    let mut expressions: Vec<Value> =
        s.match_expressions.iter().flatten().map(|e| serde_yaml::to_value(e).unwrap()).collect();
    if let Some(namespaces) = namespaces {
        for (k, v) in namespaces.match_labels.iter().flatten() {
            labels.insert(format!("{NAMESPACE_LABELS}{k}"), v.clone());
        }
        for e in namespaces.match_expressions.iter().flatten() {
            let mut e = e.clone();
            e.key = format!("{NAMESPACE_LABELS}{}", e.key);
            expressions.push(serde_yaml::to_value(e).unwrap());
        }
        // naming the namespace key lifts the confinement to the policy's
        // own namespace
        let mut e = Mapping::new();
        e.insert("key".into(), "k8s:io.kubernetes.pod.namespace".into());
        e.insert("operator".into(), "Exists".into());
        expressions.push(Value::Mapping(e));
    }
    if !labels.is_empty() {
        m.insert("matchLabels".into(), serde_yaml::to_value(labels).unwrap());
    }
    if !expressions.is_empty() {
        m.insert("matchExpressions".into(), Value::Sequence(expressions));
    }
    Value::Mapping(m)
}

fn section(peers: Option<&[Peer]>, ports: Option<&[Port]>, at: &str, side: &str) -> Result<Value, (String, String)> {
    let (endpoints_key, cidr_key) =
        if side == "from" { ("fromEndpoints", "fromCIDRSet") } else { ("toEndpoints", "toCIDRSet") };
    let mut out = Mapping::new();
    let mut endpoints = Vec::new();
    let mut cidrs = Vec::new();
    for (i, peer) in peers.into_iter().flatten().enumerate() {
        let here = format!("{at}.{side}[{i}]");
        match (&peer.pod_selector, &peer.namespace_selector, &peer.ip_block) {
            (None, None, Some(block)) => {
                let mut c = Mapping::new();
                c.insert("cidr".into(), block.cidr.clone().into());
                if let Some(except) = &block.except {
                    c.insert("except".into(), serde_yaml::to_value(except).unwrap());
                }
                cidrs.push(Value::Mapping(c));
            }
            (pods, ns, None) if pods.is_some() || ns.is_some() => {
                endpoints.push(selector(&pods.clone().unwrap_or_default(), ns.as_ref()));
            }
            _ => return Err((here, "give podSelector and/or namespaceSelector, or ipBlock alone".into())),
        }
    }
    if peers.is_some_and(|p| !p.is_empty()) {
        if !endpoints.is_empty() {
            out.insert(endpoints_key.into(), Value::Sequence(endpoints));
        }
        if !cidrs.is_empty() {
            out.insert(cidr_key.into(), Value::Sequence(cidrs));
        }
    }
    if let Some(ports) = ports.filter(|p| !p.is_empty()) {
        let mut list = Vec::new();
        for p in ports {
            let mut m = Mapping::new();
            if let Some(port) = &p.port {
                m.insert("port".into(), port.clone());
            }
            if let Some(end) = p.end_port {
                m.insert("endPort".into(), end.into());
            }
            m.insert("protocol".into(), p.protocol.clone().unwrap_or_else(|| "TCP".into()).into());
            list.push(Value::Mapping(m));
        }
        let mut set = Mapping::new();
        set.insert("ports".into(), Value::Sequence(list));
        out.insert("toPorts".into(), Value::Sequence(vec![Value::Mapping(set)]));
    }
    Ok(Value::Mapping(out))
}
