//! Pods and identities from a real kube-apiserver, with two weirs for two
//! nodes (local mode: listeners in front of the policed workload, pods'
//! addresses on loopback). Identities are allocated through the API server
//! and are the same number on both nodes, also when both allocate one label
//! set at once; a pod of node A is known by its identity on node B;
//! relabelling a pod or its namespace changes what policy it meets; the
//! operator collects identities no pod uses; and an API server that goes
//! away and comes back changes nothing until it has something new to say.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use weir_integration::kube::{Kube, Operator};
use weir_integration::*;

const CLIENT_A: &str = "127.0.0.2";
const CRAWLER_A: &str = "127.0.0.3";
const CLIENT_B: &str = "127.0.0.4";

fn config(upstream: SocketAddr, port: u16) -> String {
    format!(
        "admin: ADMIN\n\
         listeners:\n  - name: web\n    bind: 127.0.0.1:{port}\n    upstream: {upstream}\n    \
         destination: {{labels: {{app: web}}, namespace: shop, port: 80}}\n"
    )
}

fn weir_on(kube: &Kube, node: &str, upstream: SocketAddr, port: u16) -> Weir {
    let kubeconfig = kube.kubeconfig_as("weir-node", None);
    let args = ["--kubernetes", "--kubeconfig", kubeconfig.to_str().unwrap(), "--node-name", node];
    Weir::start_with(&config(upstream, port), &[], &args)
}

/// The identity number a weir gives the pod named `name` (`None`: not an
/// endpoint yet).
fn identity_of(weir: &Weir, name: &str) -> Option<u64> {
    let config = weir.config();
    let endpoints = config["model"]["endpoints"].as_array()?;
    endpoints.iter().find(|e| e["name"] == name)?["identity"]["id"].as_u64()
}

/// `securityLabels` of every identity object, by number.
fn identity_objects(kube: &Kube) -> Vec<(u64, serde_json::Value)> {
    let list = kube.get_json(&["weiridentities"]);
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["metadata"]["name"].as_str().unwrap().parse().unwrap(), o["securityLabels"].clone()))
        .collect()
}

fn status(from: &str, port: u16, path: &str) -> u16 {
    curl_from(from, &[&format!("http://127.0.0.1:{port}{path}")]).status
}

const POLICIES: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: client}}]
      toPorts:
        - ports: [{port: "80", protocol: TCP}]
          rules:
            http: [{method: GET, path: "/echo/public/.*"}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: by-team, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromEndpoints: [{matchLabels: {io.cilium.k8s.namespace.labels.team: red}}]
      toPorts:
        - ports: [{port: "80", protocol: TCP}]
          rules:
            http: [{method: GET, path: "/echo/team/.*"}]
"#;

#[test]
fn identities_are_one_number_on_every_node_and_follow_labels() {
    let kube = Kube::start();
    kube.install_weir();
    kube.namespace("shop", &[("team", "blue")]);
    let operator = Operator::start(&kube, "operator-1", "3s");
    let nginx = Nginx::start();
    let (port_a, port_b) = (free_port(), free_port());
    let weir_a = weir_on(&kube, "node-a", nginx.addr, port_a);
    let weir_b = weir_on(&kube, "node-b", nginx.addr, port_b);

    // the same labels on both nodes at once: both allocate, one number wins
    kube.apply(&format!(
        "{}---\n{}---\n{}",
        pod_yaml("client-a", "node-a", "client"),
        pod_yaml("client-b", "node-b", "client"),
        pod_yaml("crawler", "node-a", "crawler")
    ));
    kube.pod_ip("shop", "client-a", CLIENT_A);
    kube.pod_ip("shop", "client-b", CLIENT_B);
    kube.pod_ip("shop", "crawler", CRAWLER_A);
    wait_for("every pod identified on both nodes", Duration::from_secs(30), || {
        ["client-a", "client-b", "crawler"]
            .iter()
            .all(|p| identity_of(&weir_a, p).is_some() && identity_of(&weir_b, p).is_some())
    });
    let client = identity_of(&weir_a, "client-a").unwrap();
    for (weir, pod) in [(&weir_a, "client-b"), (&weir_b, "client-a"), (&weir_b, "client-b")] {
        assert_eq!(identity_of(weir, pod), Some(client), "{pod} on {}", weir.config_dir().display());
    }
    let crawler = identity_of(&weir_a, "crawler").unwrap();
    assert_ne!(client, crawler);
    assert_eq!(identity_of(&weir_b, "crawler"), Some(crawler));
    let objects = identity_objects(&kube);
    let labels: BTreeSet<String> = objects.iter().map(|(_, l)| l.to_string()).collect();
    assert_eq!(objects.len(), 2, "one object per label set, the race settled: {objects:?}");
    assert_eq!(labels.len(), 2);
    let client_labels = &objects.iter().find(|(n, _)| *n == client).unwrap().1;
    assert_eq!(client_labels["k8s:app"], "client");
    assert_eq!(client_labels["k8s:io.kubernetes.pod.namespace"], "shop");
    assert_eq!(client_labels["k8s:io.cilium.k8s.namespace.labels.team"], "blue");
    assert_eq!(client_labels["k8s:io.cilium.k8s.policy.serviceaccount"], "default");

    // node B knows node A's pods by their identities
    kube.apply(POLICIES);
    wait_for("the policies on node B", Duration::from_secs(30), || status(CRAWLER_A, port_b, "/echo/public/a") == 0);
    assert_eq!(status(CLIENT_A, port_b, "/echo/public/a"), 200, "a pod of node A, allowed by its labels on node B");
    assert_eq!(status(CLIENT_B, port_b, "/echo/public/a"), 200);
    assert_eq!(status(CLIENT_A, port_b, "/echo/team/a"), 403);
    assert_eq!(status(CLIENT_A, port_a, "/echo/public/a"), 200);

    // a relabelled pod is who its labels say
    kube.must(&["label", "pod", "crawler", "-n", "shop", "app=client", "--overwrite"], "");
    wait_for("the relabelled pod allowed", Duration::from_secs(30), || {
        status(CRAWLER_A, port_b, "/echo/public/a") == 200
    });
    assert_eq!(identity_of(&weir_b, "crawler"), Some(client));

    // a relabelled namespace re-selects its pods: every pod of `shop` gets
    // the identity of its new label set, on both nodes
    kube.must(&["label", "namespace", "shop", "team=red", "--overwrite"], "");
    wait_for("the namespace's label selects", Duration::from_secs(30), || {
        status(CLIENT_A, port_b, "/echo/team/a") == 200
    });
    // node B's pod, once node B has allocated its new set: until then node
    // A knows no identity for its address
    wait_for("node B's pod re-selected on node A", Duration::from_secs(30), || {
        status(CLIENT_B, port_a, "/echo/team/a") == 200
    });
    let red = identity_of(&weir_b, "client-a").unwrap();
    assert_ne!(red, client);
    wait_for("both nodes on the new identity", Duration::from_secs(30), || {
        identity_of(&weir_a, "client-b") == Some(red) && identity_of(&weir_a, "crawler") == Some(red)
    });

    // identities no pod uses are collected after the grace period (3 s)
    wait_for("unused identities collected", Duration::from_secs(60), || {
        identity_objects(&kube).iter().map(|(n, _)| *n).collect::<Vec<_>>() == vec![red]
    });
    assert!(operator.log().contains("identity collected"), "{}", operator.log());

    // the API server goes away: enforcement goes on as it was
    kube.stop_apiserver();
    assert_eq!(status(CLIENT_A, port_b, "/echo/team/a"), 200);
    assert_eq!(status(CLIENT_A, port_b, "/echo/private"), 403);
    wait_for("the failure counted", Duration::from_secs(30), || {
        weir_b.metrics().lines().any(|l| l.starts_with("weir_kubernetes_watch_failures_total{") && !l.ends_with(" 0"))
    });
    let generation = weir_b.generation();
    kube.start_apiserver();
    // back: a change made now is enforced, and nothing was rebuilt meanwhile
    assert_eq!(weir_b.generation(), generation, "the outage changed nothing");
    kube.must(&["delete", "cnp", "by-team", "-n", "shop"], "");
    wait_for("a change after the restart enforced", Duration::from_secs(30), || {
        status(CLIENT_A, port_b, "/echo/team/a") == 403
    });
    assert_eq!(status(CLIENT_A, port_b, "/echo/public/a"), 200);
    let log = weir_b.log();
    assert!(log.contains("watch failed") || log.contains("list failed"), "{log}");
}

fn pod_yaml(name: &str, node: &str, app: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop, labels: {{app: {app}}}}}\n\
         spec: {{nodeName: {node}, automountServiceAccountToken: false, \
         containers: [{{name: main, image: registry.k8s.io/pause:3.10}}]}}\n"
    )
}
