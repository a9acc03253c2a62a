//! The kinds weir reads from the API server, and what it keeps of each
//! object (its projection): only what policy and identity read, so a change
//! to anything else (status, other annotations, `managedFields`) changes nothing.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::endpoints::Pod;
use crate::identity::{FIRST_ENDPOINT_IDENTITY, LAST_ENDPOINT_IDENTITY, Label, Labels};

/// A kind of object on the API server.
pub struct Resource {
    /// `/api/v1` or `/apis/GROUP/VERSION`
    pub prefix: &'static str,
    pub plural: &'static str,
    pub api_version: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
}

impl Resource {
    /// Every object of the kind, in every namespace.
    pub fn path(&self) -> String {
        format!("{}/{}", self.prefix, self.plural)
    }

    /// One object.
    pub fn object_path(&self, namespace: &str, name: &str) -> String {
        if self.namespaced {
            format!("{}/namespaces/{namespace}/{}/{name}", self.prefix, self.plural)
        } else {
            format!("{}/{}/{name}", self.prefix, self.plural)
        }
    }
}

pub const WEIR_GROUP: &str = "policy.weir.dev";
pub const WEIR_API: &str = "policy.weir.dev/v1alpha1";

/// The policy kinds, in the order their documents are merged.
pub const POLICIES: [Resource; 5] = [
    Resource {
        prefix: "/apis/cilium.io/v2",
        plural: "ciliumnetworkpolicies",
        api_version: "cilium.io/v2",
        kind: "CiliumNetworkPolicy",
        namespaced: true,
    },
    Resource {
        prefix: "/apis/cilium.io/v2",
        plural: "ciliumclusterwidenetworkpolicies",
        api_version: "cilium.io/v2",
        kind: "CiliumClusterwideNetworkPolicy",
        namespaced: false,
    },
    Resource {
        prefix: "/apis/networking.k8s.io/v1",
        plural: "networkpolicies",
        api_version: "networking.k8s.io/v1",
        kind: "NetworkPolicy",
        namespaced: true,
    },
    Resource {
        prefix: "/apis/policy.weir.dev/v1alpha1",
        plural: "weirnetworkpolicies",
        api_version: WEIR_API,
        kind: "WeirNetworkPolicy",
        namespaced: true,
    },
    Resource {
        prefix: "/apis/policy.weir.dev/v1alpha1",
        plural: "weirclusterwidenetworkpolicies",
        api_version: WEIR_API,
        kind: "WeirClusterwideNetworkPolicy",
        namespaced: false,
    },
];

pub const NAMESPACES: Resource =
    Resource { prefix: "/api/v1", plural: "namespaces", api_version: "v1", kind: "Namespace", namespaced: false };

pub const PODS: Resource =
    Resource { prefix: "/api/v1", plural: "pods", api_version: "v1", kind: "Pod", namespaced: true };

/// Cluster-wide security identities: one object per number, named by it,
/// holding the label set it stands for.
pub const IDENTITIES: Resource = Resource {
    prefix: "/apis/policy.weir.dev/v1alpha1",
    plural: "weiridentities",
    api_version: WEIR_API,
    kind: "WeirIdentity",
    namespaced: false,
};

/// Events (`core/v1`), written by the operator about policies it refuses.
pub const EVENTS: Resource =
    Resource { prefix: "/api/v1", plural: "events", api_version: "v1", kind: "Event", namespaced: true };

/// Leases (`coordination.k8s.io/v1`): the operator's leader election.
pub const LEASES: Resource = Resource {
    prefix: "/apis/coordination.k8s.io/v1",
    plural: "leases",
    api_version: "coordination.k8s.io/v1",
    kind: "Lease",
    namespaced: true,
};

/// A policy object as a policy file would hold it: apiVersion, kind, name,
/// namespace, labels, the audit annotation, `spec` and `specs`. List items of built-in kinds
/// carry no apiVersion and kind: they are the resource's.
pub fn policy(resource: &Resource, object: &serde_json::Value) -> Option<serde_json::Value> {
    let metadata = object.get("metadata")?;
    let mut kept = serde_json::Map::new();
    kept.insert("apiVersion".into(), resource.api_version.into());
    kept.insert("kind".into(), resource.kind.into());
    let mut meta = serde_json::Map::new();
    meta.insert("name".into(), metadata.get("name")?.clone());
    if let Some(ns) = metadata.get("namespace") {
        meta.insert("namespace".into(), ns.clone());
    }
    if let Some(labels) = metadata.get("labels") {
        meta.insert("labels".into(), labels.clone());
    }
    // of the annotations, only the one that changes what a policy does
    let audit = crate::policy::document::AUDIT_ANNOTATION;
    if let Some(value) = metadata.get("annotations").and_then(|a| a.get(audit)) {
        meta.insert("annotations".into(), serde_json::json!({ audit: value }));
    }
    kept.insert("metadata".into(), meta.into());
    for field in ["spec", "specs"] {
        if let Some(value) = object.get(field) {
            kept.insert(field.into(), value.clone());
        }
    }
    Some(kept.into())
}

/// A namespace's labels.
pub fn namespace(_: &Resource, object: &serde_json::Value) -> Option<BTreeMap<String, String>> {
    Some(string_map(object.pointer("/metadata/labels")))
}

/// A pod, while it holds its addresses: a pod that finished (`Succeeded`,
/// `Failed`) has given them back, and they may already be another pod's.
pub fn pod(_: &Resource, object: &serde_json::Value) -> Option<Pod> {
    let phase = object.pointer("/status/phase").and_then(|p| p.as_str()).unwrap_or("");
    if matches!(phase, "Succeeded" | "Failed") {
        return None;
    }
    let text = |pointer: &str| object.pointer(pointer).and_then(|v| v.as_str()).unwrap_or_default().to_string();
    let mut ips: Vec<IpAddr> = object
        .pointer("/status/podIPs")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.get("ip")?.as_str()?.parse().ok())
        .collect();
    if ips.is_empty() {
        ips.extend(object.pointer("/status/podIP").and_then(|v| v.as_str()).and_then(|ip| ip.parse::<IpAddr>().ok()));
    }
    let service_account = match text("/spec/serviceAccountName") {
        name if name.is_empty() => "default".to_string(),
        name => name,
    };
    Some(Pod {
        uid: text("/metadata/uid"),
        labels: string_map(object.pointer("/metadata/labels")),
        node: text("/spec/nodeName"),
        service_account,
        host_network: object.pointer("/spec/hostNetwork").and_then(|v| v.as_bool()).unwrap_or(false),
        ips,
        created: text("/metadata/creationTimestamp"),
        visibility: object
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(crate::config::VISIBILITY_ANNOTATION))
            .and_then(|v| v.as_str())
            .map(str::to_string),
    })
}

/// An identity object: its number is its name, its labels `securityLabels`.
/// One whose name is no number in the endpoint range is not kept.
pub fn identity(_: &Resource, object: &serde_json::Value) -> Option<Labels> {
    let number: u32 = object.pointer("/metadata/name")?.as_str()?.parse().ok()?;
    if !(FIRST_ENDPOINT_IDENTITY..=LAST_ENDPOINT_IDENTITY).contains(&number) {
        return None;
    }
    let labels = string_map(object.get("securityLabels"));
    if labels.is_empty() {
        return None;
    }
    Some(Labels::new(labels.iter().map(|(k, v)| label_of(k, v)).collect()))
}

/// `securityLabels` entry (`k8s:app` → `web`) as a label.
pub fn label_of(source_key: &str, value: &str) -> Label {
    match source_key.split_once(':') {
        Some((source, key)) => Label::new(source, key, value),
        None => Label::k8s(source_key, value),
    }
}

fn string_map(value: Option<&serde_json::Value>) -> BTreeMap<String, String> {
    value
        .and_then(|v| v.as_object())
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect()
}
