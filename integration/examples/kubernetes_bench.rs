//! `bench/kubernetes.sh`: one node's weir against a synthetic cluster in a
//! real kube-apiserver — PODS pods over NAMESPACES namespaces on NODES nodes,
//! POLICIES CiliumNetworkPolicies. This node's pods (LOCAL of them) are real
//! pods of the node harness (network namespaces, veths), so weir runs with
//! the eBPF datapath and a model counts as enforced only once its maps are
//! written. The other nodes' weirs are stood in for by creating the
//! identities of their pods' label sets, as they would, with weir's own
//! label derivation and number order.
//!
//! Reports: time from start to the first full model (all kinds listed, the
//! node's pods identified, maps written), weir's RSS, the API requests it
//! made, and p50/p99 from an object change to the model that enforces it:
//! a policy edit, a local pod relabelled (a new label set: weir allocates
//! its identity), a remote pod relabelled.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir::control::kubernetes::ApiClient;
use weir::control::kubernetes::endpoints::{Pod, candidates, identity_labels, security_labels};
use weir::control::kubernetes::resources::{IDENTITIES, WEIR_API};
use weir::identity::Labels;
use weir_integration::kube::Kube;
use weir_integration::node::Node;
use weir_integration::{http_get, wait_for};

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

const APPS: usize = 5;
const NODE: &str = "bench-node";

struct Cluster {
    namespaces: usize,
    pods: usize,
    nodes: usize,
    local: usize,
    policies: usize,
}

impl Cluster {
    fn namespace(&self, n: usize) -> String {
        format!("ns-{n:03}")
    }

    fn namespace_labels(&self, n: usize) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("team".to_string(), format!("team-{}", n % 10)),
            ("kubernetes.io/metadata.name".to_string(), self.namespace(n)),
        ])
    }

    /// Pod `k`: its namespace index, name, app, node and address. Every
    /// `pods / local`-th pod is this node's.
    fn pod(&self, k: usize) -> (usize, String, String, String, String) {
        let ns = k % self.namespaces;
        let app = format!("app-{}", (k / self.namespaces) % APPS);
        let stride = (self.pods / self.local).max(1);
        let (node, ip) = if k.is_multiple_of(stride) && k / stride < self.local {
            (NODE.to_string(), format!("10.200.0.{}", 10 + k / stride))
        } else {
            (format!("node-{}", 1 + k % (self.nodes - 1)), format!("10.64.{}.{}", k / 250, 1 + k % 250))
        };
        (ns, format!("pod-{k:05}"), app, node, ip)
    }
}

fn main() {
    let cluster = Cluster {
        namespaces: setting("NAMESPACES", 200),
        pods: setting("PODS", 5000),
        nodes: setting("NODES", 50),
        local: setting("LOCAL", 100).min(200),
        policies: setting("POLICIES", 500),
    };
    let samples = setting("SAMPLES", 20);
    let mut kube = Kube::start();
    kube.install_weir();
    let admin = ApiClient::from_kubeconfig(&kube.kubeconfig()).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();

    let started = Instant::now();
    runtime.block_on(populate(&admin, &cluster));
    eprintln!("cluster written in {:.1?}", started.elapsed());

    // this node: LOCAL real pods with veths
    let names: Vec<String> = (0..cluster.local).map(|i| format!("p{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut node = Node::new(&names);
    let port = kube.bridge_into(&node.netns);
    let kubeconfig = kube.kubeconfig_as("weir-node", Some(port));
    node.enter();
    let config = format!("admin: ADMIN\nworkers: 1\nlog_flows: false\ndatapath:\n  bpffs: {}\n", node.bpffs);
    let args = ["--kubernetes", "--kubeconfig", kubeconfig.to_str().unwrap(), "--node-name", NODE];
    let spawned = Instant::now();
    node.start_weir_with(&config, &args);
    let first_sync = spawned.elapsed();
    let weir = node.weir();
    let rss_synced = rss_mib(weir.pid());
    let requests_synced = requests(&weir.metrics());
    let endpoints = weir.config()["model"]["endpoints"].as_array().map_or(0, Vec::len);
    let attached = node.datapath_status().lines().filter(|l| l.contains("weir_from_pod")).count();
    eprintln!("first model after {first_sync:.1?}: {endpoints} endpoints, {attached} local pods attached");

    // a policy edit, to the model that enforces it
    let generation = |w: &weir_integration::Weir| -> u64 {
        let (_, body) = http_get(w.admin, "/healthz").unwrap();
        body.trim().rsplit('=').next().unwrap().parse().unwrap()
    };
    let mut policy_times = Vec::new();
    for i in 0..samples {
        let before = generation(weir);
        let patch = format!(
            r#"{{"spec":{{"ingress":[{{"fromEndpoints":[{{"matchLabels":{{"app":"app-1"}}}}],"toPorts":[{{"ports":[{{"port":"80","protocol":"TCP"}}],"rules":{{"http":[{{"method":"GET","path":"/edit/{i}/.*"}}]}}}}]}}]}}}}"#
        );
        let t = Instant::now();
        let path = format!("/apis/cilium.io/v2/namespaces/{}/ciliumnetworkpolicies/policy-000", cluster.namespace(0));
        outside(&runtime, &admin, http::Method::PATCH, path, "application/merge-patch+json", patch);
        wait_for("the policy edit enforced", Duration::from_secs(30), || generation(weir) > before);
        policy_times.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(200));
    }

    let rss_policies = rss_mib(weir.pid());
    // a local pod relabelled to a new label set: weir allocates, then enforces
    let mut local_times = Vec::new();
    for i in 0..samples {
        let (ns, name, _, _, _) = cluster.pod(0);
        let app = format!("relabelled-{i}");
        let t = Instant::now();
        relabel(&runtime, &admin, &cluster.namespace(ns), &name, &app);
        wait_for("the relabelled local pod enforced", Duration::from_secs(30), || has_label(weir, &name, &app));
        local_times.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(200));
    }

    let rss_local = rss_mib(weir.pid());
    // a remote pod relabelled between existing label sets
    let mut remote_times = Vec::new();
    for i in 0..samples {
        let (ns, name, _, _, _) = cluster.pod(1);
        let app = format!("app-{}", i % APPS);
        let app = if has_label(weir, &name, &app) { format!("app-{}", (i + 1) % APPS) } else { app };
        let t = Instant::now();
        relabel(&runtime, &admin, &cluster.namespace(ns), &name, &app);
        wait_for("the relabelled remote pod enforced", Duration::from_secs(30), || has_label(weir, &name, &app));
        remote_times.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(200));
    }
    // where a change's time goes (weir logs each model build and map write)
    let log = weir.log();
    for line in log.lines().filter(|l| l.contains("model built") || l.contains("datapath maps written")).rev().take(6) {
        eprintln!("{line}");
    }
    let rss_end = rss_mib(weir.pid());
    if std::env::var_os("SMAPS").is_some() {
        let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", weir.pid())).unwrap_or_default();
        let (mut header, mut regions) = (String::new(), Vec::new());
        for line in smaps.lines() {
            if line.split_whitespace().next().is_some_and(|f| f.contains('-') && !f.ends_with(':')) {
                header = line.to_string();
            } else if let Some(kb) = line.strip_prefix("Rss:") {
                regions.push((kb.trim().trim_end_matches(" kB").trim().parse::<u64>().unwrap_or(0), header.clone()));
            }
        }
        regions.sort();
        eprintln!("{} mappings; the largest by RSS:", regions.len());
        for (kb, header) in regions.iter().rev().take(12) {
            eprintln!("{kb:>8} kB  {header}");
        }
    }
    let requests_end = requests(&weir.metrics());

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let pct = |v: &mut Vec<Duration>, p: f64| {
        v.sort();
        ms(v[((v.len() as f64 - 1.0) * p).round() as usize])
    };
    println!(
        "Synthetic cluster: {} pods over {} namespaces on {} nodes ({} on this node, real veths), {} CNPs, \
         one weir with the eBPF datapath",
        cluster.pods, cluster.namespaces, cluster.nodes, cluster.local, cluster.policies
    );
    println!();
    println!("| measure | value | target |");
    println!("|---|---:|---|");
    println!(
        "| first full model (all kinds listed, local pods identified, maps written) | {:.2} s | < 10 s |",
        first_sync.as_secs_f64()
    );
    println!("| endpoints in the model / local pods attached | {endpoints} / {attached} | |");
    println!("| RSS after the first model | {rss_synced:.0} MiB | < 150 MiB |");
    println!(
        "| RSS after {samples} policy edits / {samples} local relabels / {samples} remote relabels | {rss_policies:.0} / {rss_local:.0} / {rss_end:.0} MiB | < 150 MiB |"
    );
    println!("| API requests to the first model | {requests_synced} | |");
    println!("| API requests after {} changes | {requests_end} | |", 3 * samples);
    for (what, times) in [
        ("policy edit → enforced", &mut policy_times),
        ("local pod relabelled (new identity allocated) → enforced", &mut local_times),
        ("remote pod relabelled → enforced", &mut remote_times),
    ] {
        let (p50, p99) = (pct(times, 0.5), pct(times, 0.99));
        println!("| {what}, p50 / p99 ({samples} samples) | {p50:.0} / {p99:.0} ms | p99 < 1000 ms |");
    }
}

/// Everything the cluster holds, written with up to 32 requests at once.
async fn populate(admin: &ApiClient, cluster: &Cluster) {
    let gate = Arc::new(tokio::sync::Semaphore::new(32));
    let run = |method: http::Method, path: String, body: String, content: &'static str| {
        let (admin, gate) = (admin.clone(), gate.clone());
        tokio::spawn(async move {
            let _permit = gate.acquire().await.unwrap();
            call(&admin, method, &path, content, body).await
        })
    };
    let mut tasks = Vec::new();
    for n in 0..cluster.namespaces {
        let ns = cluster.namespace(n);
        let labels = serde_json::to_string(&cluster.namespace_labels(n)).unwrap();
        tasks.push(run(
            http::Method::POST,
            "/api/v1/namespaces".into(),
            format!(r#"{{"apiVersion":"v1","kind":"Namespace","metadata":{{"name":"{ns}","labels":{labels}}}}}"#),
            "application/json",
        ));
    }
    join(tasks).await;
    let mut tasks = Vec::new();
    for n in 0..cluster.namespaces {
        let ns = cluster.namespace(n);
        tasks.push(run(
            http::Method::POST,
            format!("/api/v1/namespaces/{ns}/serviceaccounts"),
            r#"{"apiVersion":"v1","kind":"ServiceAccount","metadata":{"name":"default"}}"#.into(),
            "application/json",
        ));
    }
    join(tasks).await;
    // the other nodes' identities, as their weirs would have made them
    let mut label_sets = BTreeMap::new();
    for k in 0..cluster.pods {
        let (ns, _, app, node, _) = cluster.pod(k);
        if node == NODE {
            continue;
        }
        let pod = Pod {
            uid: String::new(),
            labels: BTreeMap::from([("app".into(), app), ("pod-template-hash".into(), "5d8f7c9b".into())]),
            node,
            service_account: "default".into(),
            host_network: false,
            ips: vec![],
            created: String::new(),
            visibility: None,
        };
        let labels =
            Labels::of_endpoint(&cluster.namespace(ns), &identity_labels(&pod, Some(&cluster.namespace_labels(ns))));
        label_sets.insert(labels.to_string(), labels);
    }
    let mut taken = std::collections::HashSet::new();
    let mut tasks = Vec::new();
    for labels in label_sets.values() {
        let number = candidates(labels).find(|n| taken.insert(*n)).unwrap();
        let body = serde_json::json!({"apiVersion": WEIR_API, "kind": IDENTITIES.kind, "metadata": {"name": number.to_string()}, "securityLabels": security_labels(labels)});
        tasks.push(run(http::Method::POST, IDENTITIES.path(), body.to_string(), "application/json"));
    }
    join(tasks).await;
    eprintln!("{} identities of other nodes' pods created", label_sets.len());
    let mut tasks = Vec::new();
    for k in 0..cluster.pods {
        let (ns, name, app, node, _) = cluster.pod(k);
        let ns = cluster.namespace(ns);
        let body = format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}","labels":{{"app":"{app}","pod-template-hash":"5d8f7c9b"}}}},"spec":{{"nodeName":"{node}","automountServiceAccountToken":false,"containers":[{{"name":"main","image":"registry.k8s.io/pause:3.10"}}]}}}}"#
        );
        tasks.push(run(http::Method::POST, format!("/api/v1/namespaces/{ns}/pods"), body, "application/json"));
    }
    join(tasks).await;
    let mut tasks = Vec::new();
    for k in 0..cluster.pods {
        let (ns, name, _, _, ip) = cluster.pod(k);
        let ns = cluster.namespace(ns);
        let body = format!(r#"{{"status":{{"phase":"Running","podIP":"{ip}","podIPs":[{{"ip":"{ip}"}}]}}}}"#);
        tasks.push(run(
            http::Method::PATCH,
            format!("/api/v1/namespaces/{ns}/pods/{name}/status"),
            body,
            "application/merge-patch+json",
        ));
    }
    join(tasks).await;
    let mut tasks = Vec::new();
    for p in 0..cluster.policies {
        let ns = cluster.namespace(p % cluster.namespaces);
        let (to, from) = (p % APPS, (p + 1) % APPS);
        let body = format!(
            r#"{{"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy","metadata":{{"name":"policy-{p:03}"}},"spec":{{"endpointSelector":{{"matchLabels":{{"app":"app-{to}"}}}},"ingress":[{{"fromEndpoints":[{{"matchLabels":{{"app":"app-{from}"}}}},{{"matchLabels":{{"io.cilium.k8s.namespace.labels.team":"team-{}"}}}}],"toPorts":[{{"ports":[{{"port":"80","protocol":"TCP"}}],"rules":{{"http":[{{"method":"GET","path":"/api/{p}/.*"}},{{"method":"POST","path":"/api/{p}/orders","headers":["Content-Type: application/json"]}}]}}}}]}}],"egress":[{{"toEndpoints":[{{"matchLabels":{{"app":"app-{from}"}}}}],"toPorts":[{{"ports":[{{"port":"5432","protocol":"TCP"}}]}}]}}]}}}}"#,
            p % 10
        );
        tasks.push(run(
            http::Method::POST,
            format!("/apis/cilium.io/v2/namespaces/{ns}/ciliumnetworkpolicies"),
            body,
            "application/json",
        ));
    }
    join(tasks).await;
}

async fn join(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for t in tasks {
        t.await.unwrap();
    }
}

async fn call(admin: &ApiClient, method: http::Method, path: &str, content: &'static str, body: String) {
    for attempt in 0.. {
        match admin.call(method.clone(), path, Some((content, body.clone().into_bytes()))).await {
            Ok((code, _)) if code.is_success() || code == http::StatusCode::CONFLICT => return,
            Ok((code, answer)) if attempt > 5 => {
                panic!("{method} {path}: {code}: {}", String::from_utf8_lossy(&answer))
            }
            Err(e) if attempt > 5 => panic!("{method} {path}: {e:#}"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

fn relabel(runtime: &tokio::runtime::Runtime, admin: &ApiClient, ns: &str, name: &str, app: &str) {
    let patch = format!(r#"{{"metadata":{{"labels":{{"app":"{app}"}}}}}}"#);
    outside(
        runtime,
        admin,
        http::Method::PATCH,
        format!("/api/v1/namespaces/{ns}/pods/{name}"),
        "application/merge-patch+json",
        patch,
    );
}

/// A call made from the runtime's workers, which live in the namespace the
/// API server listens in (the main thread has entered the node's).
fn outside(
    runtime: &tokio::runtime::Runtime,
    admin: &ApiClient,
    method: http::Method,
    path: String,
    content: &'static str,
    body: String,
) {
    let admin = admin.clone();
    runtime.block_on(runtime.spawn(async move { call(&admin, method, &path, content, body).await })).unwrap();
}

/// Whether the model in force gives pod `name` an identity labelled `app`.
fn has_label(weir: &weir_integration::Weir, name: &str, app: &str) -> bool {
    let config = weir.config();
    let wanted = format!("k8s:app={app}");
    config["model"]["endpoints"].as_array().into_iter().flatten().any(|e| {
        e["name"] == name && e["identity"]["labels"].as_array().is_some_and(|l| l.iter().any(|l| l == wanted.as_str()))
    })
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// Requests weir made to the API server, from its metrics.
fn requests(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("weir_kubernetes_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}
