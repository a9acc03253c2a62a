//! Pods as endpoints, and the labels their security identity names.
//!
//! A pod's identity labels are Cilium's, so policies written for Cilium
//! select the same pods: the pod's own labels (less the ones that change
//! with every rollout or name one pod, see [`relevant`]), and
//! `io.kubernetes.pod.namespace`, `io.cilium.k8s.policy.serviceaccount`,
//! `io.cilium.k8s.policy.cluster` and every label of the pod's namespace as
//! `io.cilium.k8s.namespace.labels.KEY`. A pod cannot forge those: its own
//! labels under `io.kubernetes.` and `io.cilium.k8s.` are dropped.
//!
//! The identity number of a label set is the lowest-numbered identity
//! object on the API server holding exactly that set ([`IdentityIndex`]), so
//! every node that sees the same objects picks the same number.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use crate::identity::{FIRST_ENDPOINT_IDENTITY, LAST_ENDPOINT_IDENTITY, Labels};

/// What weir reads of a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    /// `spec.nodeName`; empty until scheduled.
    pub node: String,
    pub service_account: String,
    /// On the node's own network: the node's identity, not an endpoint.
    pub host_network: bool,
    /// `status.podIPs` (or `status.podIP`); empty until the CNI gave one.
    pub ips: Vec<IpAddr>,
    /// `metadata.creationTimestamp`: of two pods claiming one address, the
    /// newer holds it.
    pub created: String,
    /// Its `policy.cilium.io/proxy-visibility` annotation, if any.
    pub visibility: Option<String>,
}

pub const SERVICE_ACCOUNT_LABEL: &str = "io.cilium.k8s.policy.serviceaccount";
pub const CLUSTER_LABEL: &str = "io.cilium.k8s.policy.cluster";
pub const NAMESPACE_LABELS_PREFIX: &str = "io.cilium.k8s.namespace.labels.";
/// Cilium's default cluster name.
pub const CLUSTER_NAME: &str = "default";

/// Pod label keys that say nothing about what a workload is: they differ
/// between the pods of one Deployment (so every pod would get an identity
/// of its own) or change with every rollout. Cilium leaves out the same
/// ones by default ("identity-relevant labels"); `app.kubernetes.io/*`
/// stays.
pub fn relevant(key: &str) -> bool {
    const IGNORED_PREFIXES: [&str; 4] = ["io.kubernetes", "kubernetes.io", "k8s.io", "io.cilium.k8s."];
    const IGNORED: [&str; 8] = [
        "statefulset.kubernetes.io/pod-name",
        "apps.kubernetes.io/pod-index",
        "batch.kubernetes.io/job-completion-index",
        "batch.kubernetes.io/controller-uid",
        "pod-template-generation",
        "pod-template-hash",
        "controller-revision-hash",
        "etcd_node",
    ];
    if key.starts_with("app.kubernetes.io/") {
        return true;
    }
    !(IGNORED_PREFIXES.iter().any(|p| key.starts_with(p))
        || IGNORED.contains(&key)
        || key.starts_with("annotation")
        // beta.kubernetes.io and any other *.beta.kubernetes.io
        || key.split('/').next().is_some_and(|domain| domain.ends_with("beta.kubernetes.io")))
}

/// The labels of a pod's identity, as `weir.yaml` endpoint labels (keys
/// without a source are `k8s:`); the namespace label itself is added from
/// the endpoint's namespace, as for every endpoint.
pub fn identity_labels(pod: &Pod, namespace_labels: Option<&BTreeMap<String, String>>) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> =
        pod.labels.iter().filter(|(k, _)| relevant(k)).map(|(k, v)| (k.clone(), v.clone())).collect();
    labels.insert(SERVICE_ACCOUNT_LABEL.into(), pod.service_account.clone());
    labels.insert(CLUSTER_LABEL.into(), CLUSTER_NAME.into());
    for (k, v) in namespace_labels.into_iter().flatten() {
        labels.insert(format!("{NAMESPACE_LABELS_PREFIX}{k}"), v.clone());
    }
    labels
}

/// Identity objects by label set: the lowest number holding a set is its
/// identity.
#[derive(Default)]
pub struct IdentityIndex {
    by_labels: HashMap<Labels, u32>,
}

impl IdentityIndex {
    pub fn new<'a>(objects: impl IntoIterator<Item = (u32, &'a Labels)>) -> Self {
        let mut by_labels: HashMap<Labels, u32> = HashMap::new();
        for (id, labels) in objects {
            by_labels.entry(labels.clone()).and_modify(|n| *n = (*n).min(id)).or_insert(id);
        }
        IdentityIndex { by_labels }
    }

    pub fn get(&self, labels: &Labels) -> Option<u32> {
        self.by_labels.get(labels).copied()
    }
}

/// The numbers a label set tries, in order: a start taken from a hash of
/// the labels, then upward. Every node walks the same sequence, so two
/// nodes that allocate the same set at once ask for the same number and
/// the API server's create conflict leaves one object.
pub fn candidates(labels: &Labels) -> impl Iterator<Item = u32> {
    let span = LAST_ENDPOINT_IDENTITY - FIRST_ENDPOINT_IDENTITY + 1;
    let start = (fnv1a(labels.to_string().as_bytes()) % u64::from(span)) as u32;
    (0..span).map(move |i| FIRST_ENDPOINT_IDENTITY + (start + i) % span)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x100000001b3))
}

/// The identity object's `securityLabels`: `source:key` → value.
pub fn security_labels(labels: &Labels) -> BTreeMap<String, String> {
    labels.iter().map(|l| (format!("{}:{}", l.source, l.key), l.value.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Label, NAMESPACE_LABEL};

    fn pod(labels: &[(&str, &str)]) -> Pod {
        Pod {
            visibility: None,
            uid: "u".into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            node: "n".into(),
            service_account: "api".into(),
            host_network: false,
            ips: vec![],
            created: String::new(),
        }
    }

    #[test]
    fn a_pods_identity_has_ciliums_labels_and_nothing_it_could_forge() {
        let namespace = BTreeMap::from([("team".to_string(), "shop".to_string())]);
        let labels = identity_labels(
            &pod(&[
                ("app", "web"),
                ("app.kubernetes.io/name", "web"),
                ("pod-template-hash", "5d8f"),
                ("io.kubernetes.pod.namespace", "kube-system"),
                ("io.cilium.k8s.namespace.labels.team", "admin"),
                ("statefulset.kubernetes.io/pod-name", "web-0"),
                ("topology.beta.kubernetes.io/zone", "a"),
            ]),
            Some(&namespace),
        );
        let expected: BTreeMap<String, String> = [
            ("app", "web"),
            ("app.kubernetes.io/name", "web"),
            ("io.cilium.k8s.namespace.labels.team", "shop"),
            ("io.cilium.k8s.policy.cluster", "default"),
            ("io.cilium.k8s.policy.serviceaccount", "api"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(labels, expected);
    }

    #[test]
    fn the_lowest_object_for_a_label_set_is_its_identity() {
        let web = Labels::new(vec![Label::k8s("app", "web"), Label::k8s(NAMESPACE_LABEL, "default")]);
        let db = Labels::new(vec![Label::k8s("app", "db"), Label::k8s(NAMESPACE_LABEL, "default")]);
        let index = IdentityIndex::new([(9000, &web), (700, &web), (800, &db)]);
        assert_eq!(index.get(&web), Some(700));
        assert_eq!(index.get(&db), Some(800));
        assert_eq!(index.get(&Labels::default()), None);
    }

    #[test]
    fn candidates_are_the_same_everywhere_and_cover_the_range() {
        let web = Labels::new(vec![Label::k8s("app", "web")]);
        let first: Vec<u32> = candidates(&web).take(3).collect();
        assert_eq!(first, candidates(&web).take(3).collect::<Vec<_>>());
        assert!(first.iter().all(|n| (FIRST_ENDPOINT_IDENTITY..=LAST_ENDPOINT_IDENTITY).contains(n)));
        assert_eq!(candidates(&web).count() as u32, LAST_ENDPOINT_IDENTITY - FIRST_ENDPOINT_IDENTITY + 1);
        let mut all: Vec<u32> = candidates(&web).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len() as u32, LAST_ENDPOINT_IDENTITY - FIRST_ENDPOINT_IDENTITY + 1);
    }

    #[test]
    fn security_labels_round_trip_through_the_object() {
        let web = Labels::new(vec![Label::k8s("app", "web"), Label::reserved("init")]);
        let map = security_labels(&web);
        assert_eq!(map["k8s:app"], "web");
        let back = Labels::new(
            map.iter().map(|(k, v)| Label::parse(&if v.is_empty() { k.clone() } else { format!("{k}={v}") })).collect(),
        );
        assert_eq!(back, web);
    }
}
