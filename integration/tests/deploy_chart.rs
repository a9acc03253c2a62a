//! The Helm chart (deploy/helm/weir) and the manifest rendered from it
//! (deploy/manifests/weir.yaml), against Helm built from its Go module and a
//! real kube-apiserver (scripts/helm.sh, scripts/kube.sh): it lints, renders
//! with default and other values, the API server accepts every object
//! (server-side dry run, then a real apply), the weir.yaml it writes is one
//! weir reads, and the checked-in manifest is what the chart renders now.

use std::path::{Path, PathBuf};
use std::process::Command;

use weir_integration::kube::Kube;
use weir_integration::weir_bin;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn helm(args: &[&str]) -> String {
    let path = Command::new("bash").arg(repo("scripts/helm.sh")).arg("path").output().expect("scripts/helm.sh");
    let helm = String::from_utf8(path.stdout).unwrap().trim().to_string();
    let out = Command::new(&helm).args(args).current_dir(repo("")).output().unwrap_or_else(|e| panic!("{helm}: {e}"));
    assert!(
        out.status.success(),
        "helm {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The documents of a rendering whose `kind:` is `kind`.
fn documents<'a>(rendered: &'a str, kind: &str) -> Vec<&'a str> {
    let line = format!("\nkind: {kind}\n");
    rendered.split("\n---\n").filter(|doc| doc.contains(&line)).collect()
}

/// weir.yaml as the chart writes it into its ConfigMap, checked by weir.
fn check_weir_yaml(rendered: &str) -> String {
    let configmap = documents(rendered, "ConfigMap");
    let configmap: serde_yaml::Value = serde_yaml::from_str(configmap[0]).unwrap();
    let text = configmap["data"]["weir.yaml"].as_str().expect("weir.yaml in the ConfigMap").to_string();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("weir.yaml"), &text).unwrap();
    // `weir policy check` reads weir.yaml to judge a policy with it
    let policy = dir.path().join("policy.yaml");
    let cnp = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\n\
               spec: {endpointSelector: {matchLabels: {app: web}}, ingress: [{fromEndpoints: [{}]}]}\n";
    std::fs::write(&policy, cnp).unwrap();
    let out =
        Command::new(weir_bin()).args(["policy", "check", "--config"]).arg(dir.path()).arg(&policy).output().unwrap();
    assert!(
        out.status.success(),
        "weir refuses the chart's weir.yaml:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

const OTHER_VALUES: &[&str] = &[
    "--set",
    "node.datapath=none,node.workers=4,node.dns.refusal=nxdomain,node.dns.minTtl=30s,node.flows.log=true",
    "--set",
    "operator.replicas=1,logFormat=json,logLevel=debug,image.tag=test,metrics.serviceMonitor.enabled=true",
    "--set-json",
    r#"node.extraConfig={"limits":{"max_connections_per_identity":500}}"#,
    "--set-json",
    r#"node.marks={"mask":"0x3000","to_proxy":"0x1000","from_proxy":8192,"identity":"0x3000"}"#,
];

#[test]
fn the_chart_renders_what_the_api_server_accepts_and_weir_reads() {
    helm(&["lint", "deploy/helm/weir"]);
    let mut lint_other = vec!["lint", "deploy/helm/weir"];
    lint_other.extend_from_slice(OTHER_VALUES);
    helm(&lint_other);

    // the defaults, as deploy/manifests/weir.yaml holds them
    let default = helm(&[
        "template",
        "weir",
        "deploy/helm/weir",
        "--namespace",
        "weir-system",
        "--include-crds",
        "--set",
        "createNamespace=true",
    ]);
    let manifest = std::fs::read_to_string(repo("deploy/manifests/weir.yaml")).unwrap();
    let checked_in: String = manifest.lines().skip_while(|l| l.starts_with('#')).map(|l| format!("{l}\n")).collect();
    assert!(
        checked_in == default,
        "deploy/manifests/weir.yaml is not the chart rendered now: run scripts/helm.sh render"
    );
    let daemonset = documents(&default, "DaemonSet")[0];
    for wanted in [
        "hostNetwork: true",
        "--datapath=ebpf",
        "add: [NET_ADMIN, BPF, PERFMON]",
        "drop: [ALL]",
        "--linger-after-handover",
        "command: [/usr/local/bin/weir, probe, --status-file=/tmp/weir-status]",
        "maxSurge: 1",
    ] {
        assert!(daemonset.contains(wanted), "{wanted} missing from the DaemonSet:\n{daemonset}");
    }
    // a hostNetwork container's port is a host port: the surge pod could not be scheduled
    assert!(!daemonset.contains("containerPort"), "no host ports on the node agent:\n{daemonset}");
    assert_eq!(documents(&default, "CustomResourceDefinition").len(), 6);
    let config = check_weir_yaml(&default);
    assert!(config.contains("metrics: 0.0.0.0:9902") && config.contains("admin: 127.0.0.1:9901"), "{config}");
    assert!(config.contains("drain_timeout: 10s"), "{config}");

    // other values: no datapath (no capabilities, no bpffs), a ServiceMonitor,
    // extra weir.yaml merged in
    let mut other = vec!["template", "weir", "deploy/helm/weir", "--namespace", "weir-system"];
    other.extend_from_slice(OTHER_VALUES);
    let other = helm(&other);
    let daemonset = documents(&other, "DaemonSet")[0];
    assert!(daemonset.contains("--datapath=none") && !daemonset.contains("name: bpffs") && !daemonset.contains("add:"));
    assert!(daemonset.contains("image: ghcr.io/weir-proxy/weir:test"));
    assert_eq!(documents(&other, "ServiceMonitor").len(), 1);
    let config = check_weir_yaml(&other);
    for wanted in [
        "workers: 4",
        "refusal: nxdomain",
        "min_ttl: 30s",
        "max_connections_per_identity: 500",
        "log_flows: true",
        "mask: \"0x3000\"",
    ] {
        assert!(config.contains(wanted), "{wanted} missing from weir.yaml:\n{config}");
    }

    // the API server accepts them: dry run first (the namespace must exist
    // for it), then the manifest for real
    let kube = Kube::start();
    kube.must(&["create", "namespace", "weir-system"], "");
    kube.must(&["apply", "--server-side", "--dry-run=server", "-f", "-"], &default);
    // the ServiceMonitor's CRD belongs to the Prometheus operator, not here
    let without_monitor: Vec<&str> =
        other.split("\n---\n").filter(|doc| !doc.contains("\nkind: ServiceMonitor\n")).collect();
    kube.must(&["apply", "--server-side", "--dry-run=server", "-f", "-"], &without_monitor.join("\n---\n"));
    kube.must(&["apply", "--server-side", "-f", repo("deploy/manifests/weir.yaml").to_str().unwrap()], "");
    let daemonset = kube.get_json(&["daemonset", "weir-node", "-n", "weir-system"]);
    let container = &daemonset["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["securityContext"]["capabilities"]["add"], serde_json::json!(["NET_ADMIN", "BPF", "PERFMON"]));
    let strategy = &daemonset["spec"]["updateStrategy"]["rollingUpdate"];
    assert_eq!((strategy["maxSurge"].as_i64(), strategy["maxUnavailable"].as_i64()), (Some(1), Some(0)), "{strategy}");
    let operator = kube.get_json(&["deployment", "weir-operator", "-n", "weir-system"]);
    assert_eq!(operator["spec"]["replicas"], 2);
}
