//! Policies from a real kube-apiserver (scripts/kube.sh): objects written
//! with kubectl are enforced by a running weir; a bad one is set aside alone
//! (a new bad object is not enforced, a bad new version leaves its last good
//! version in force) and the operator writes the verdict on the object
//! (`status.conditions`) and as an Event; a CRD installed after weir started
//! is followed without a restart. weir and the operator run with the
//! service accounts and RBAC of deploy/manifests/weir.yaml.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use weir_integration::kube::{Kube, Operator};
use weir_integration::*;

fn config(upstream: SocketAddr, port: u16) -> String {
    format!(
        "admin: ADMIN\n\
         endpoints:\n  - {{name: frontend, address: {FRONTEND}, labels: {{app: frontend}}}}\n  \
         - {{name: crawler, address: {CRAWLER}, labels: {{app: crawler}}}}\n\
         listeners:\n  - name: web\n    bind: 127.0.0.1:{port}\n    upstream: {upstream}\n    \
         destination: {{labels: {{app: web}}, port: 80}}\n"
    )
}

fn cnp(name: &str, from: &str, path: &str) -> String {
    format!(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: {name}, namespace: default}}
spec:
  endpointSelector: {{matchLabels: {{app: web}}}}
  ingress:
    - fromEndpoints: [{{matchLabels: {{app: {from}}}}}]
      toPorts:
        - ports: [{{port: "80", protocol: TCP}}]
          rules:
            http: [{{method: GET, path: "{path}"}}]
"#
    )
}

fn url(port: u16, path: &str) -> String {
    format!("http://127.0.0.1:{port}{path}")
}

fn status(from: &str, port: u16, path: &str) -> u16 {
    curl_from(from, &[&url(port, path)]).status
}

fn weir_following(kube: &Kube, nginx: &Nginx, port: u16) -> Weir {
    let kubeconfig = kube.kubeconfig_as("weir-node", None);
    let args = ["--kubernetes", "--kubeconfig", kubeconfig.to_str().unwrap(), "--node-name", "node-a"];
    Weir::start_with(&config(nginx.addr, port), &[], &args)
}

fn set_aside(weir: &Weir) -> String {
    weir.config()["reload"]["set_aside"].to_string()
}

/// The `Valid` condition the operator wrote on a policy object.
fn valid_condition(kube: &Kube, kind: &str, name: &str) -> Option<serde_json::Value> {
    let object = kube.get_json(&[kind, name, "-n", "default"]);
    object.pointer("/status/conditions")?.as_array()?.iter().find(|c| c["type"] == "Valid").cloned()
}

#[test]
fn policies_written_with_kubectl_are_enforced_and_judged_on_the_object() {
    let kube = Kube::start();
    kube.install_weir();
    let _operator = Operator::start(&kube, "operator-1", "1h");
    let nginx = Nginx::start();
    let port = free_port();
    let weir = weir_following(&kube, &nginx, port);

    // nothing selects `app: web` yet: allowed, as with no policy file
    assert_eq!(status(FRONTEND, port, "/admin/secret.txt"), 200);

    let applied = Instant::now();
    kube.apply(&cnp("web", "frontend", "/public/.*"));
    wait_for("the CNP enforced", Duration::from_secs(30), || status(FRONTEND, port, "/admin/secret.txt") == 403);
    eprintln!("kubectl apply to enforced: {:?}", applied.elapsed());
    assert_eq!(status(FRONTEND, port, "/public/hello.txt"), 200);
    assert_eq!(status(CRAWLER, port, "/robots.txt"), 0, "crawler: no rule, reset at L3/L4");
    wait_for("the operator's verdict", Duration::from_secs(30), || {
        valid_condition(&kube, "cnp", "web").is_some_and(|c| c["status"] == "True")
    });

    // a new object weir cannot enforce exactly: set aside alone (the model
    // still changes around it), named with its field, not enforced; the
    // operator writes why on the object and as an Event
    let generation = weir.generation();
    kube.apply(&cnp("broken", "crawler", "/robots(.txt"));
    wait_for("the broken CNP set aside", Duration::from_secs(30), || {
        set_aside(&weir).contains("policy default/broken")
    });
    let why = set_aside(&weir);
    assert!(why.contains("kubernetes ciliumnetworkpolicies"), "{why}");
    assert!(why.contains("spec.ingress[0].toPorts[0].rules.http[0].path"), "{why}");
    assert!(why.contains("(not enforced)"), "{why}");
    assert!(weir.generation() > generation, "the rest of the update went in");
    assert_eq!(status(CRAWLER, port, "/robots.txt"), 0, "the broken rule allows nothing");
    assert_eq!(status(FRONTEND, port, "/admin/secret.txt"), 403);
    wait_for("the condition on the broken object", Duration::from_secs(30), || {
        valid_condition(&kube, "cnp", "broken").is_some_and(|c| c["status"] == "False")
    });
    let condition = valid_condition(&kube, "cnp", "broken").unwrap();
    let message = condition["message"].as_str().unwrap();
    assert!(message.contains("spec.ingress[0].toPorts[0].rules.http[0].path"), "{condition}");
    assert_eq!(condition["reason"], "Invalid");
    let events = kube.get_json(&["events", "-n", "default", "--field-selector", "involvedObject.name=broken"]);
    let event = &events["items"][0];
    assert_eq!(event["reason"], "InvalidPolicy", "{events}");
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["involvedObject"]["kind"], "CiliumNetworkPolicy");
    assert!(event["message"].as_str().unwrap().contains("rules.http[0].path"), "{event}");

    // a bad new version of a good object: its last good version stays
    kube.apply(&cnp("web", "frontend", "/public/(.*"));
    wait_for("the bad version set aside", Duration::from_secs(30), || set_aside(&weir).contains("policy default/web"));
    assert!(set_aside(&weir).contains("its last good version stays in force"), "{}", set_aside(&weir));
    assert_eq!(status(FRONTEND, port, "/admin/secret.txt"), 403);
    assert_eq!(status(FRONTEND, port, "/public/hello.txt"), 200);
    wait_for("the web object marked invalid", Duration::from_secs(30), || {
        valid_condition(&kube, "cnp", "web").is_some_and(|c| c["status"] == "False")
    });

    // fixed: the new version goes in, and the object says so
    kube.apply(&cnp("web", "frontend", "/admin/.*"));
    wait_for("the fixed version enforced", Duration::from_secs(30), || {
        status(FRONTEND, port, "/admin/secret.txt") == 200
    });
    assert_eq!(status(FRONTEND, port, "/public/hello.txt"), 403);
    wait_for("the web object valid again", Duration::from_secs(30), || {
        valid_condition(&kube, "cnp", "web").is_some_and(|c| c["status"] == "True")
    });

    // the CRDs' schemas are generated from the types weir parses with: a
    // field weir does not read is refused at apply, before any node sees it
    let typo = cnp("typo", "frontend", "/x").replace("toPorts", "toPort");
    let refused = kube.kubectl(&["apply", "-f", "-"], &typo);
    assert!(!refused.status.success(), "a misspelt field was accepted");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("unknown field") && said.contains("toPort"), "{said}");
    let wrong_type = cnp("typo", "frontend", "/x").replace("[{method: GET", "{method: GET").replace("\"}]", "\"}");
    let refused = kube.kubectl(&["apply", "-f", "-"], &wrong_type);
    assert!(!refused.status.success(), "an object where a list belongs was accepted: {wrong_type}");

    // deleting objects: the broken one leaves no trace, the good one lifts
    // its selection
    kube.must(&["delete", "ciliumnetworkpolicy", "broken"], "");
    wait_for("nothing set aside", Duration::from_secs(30), || set_aside(&weir) == "[]");
    kube.must(&["delete", "cnp", "web"], "");
    wait_for("the CNP lifted", Duration::from_secs(30), || status(FRONTEND, port, "/public/hello.txt") == 200);

    // audited through the annotation (Cilium's kind has no field for it):
    // evaluated and reported, not enforced
    let audited = cnp("watch", "frontend", "/public/.*").replace(
        "metadata: {name: watch, namespace: default}",
        "metadata: {name: watch, namespace: default, annotations: {policy.weir.dev/audit: \"true\"}}",
    );
    kube.apply(&audited);
    wait_for("the audited CNP in the model", Duration::from_secs(30), || {
        let config = weir.config();
        config["model"]["rules"]
            .as_array()
            .is_some_and(|rules| rules.iter().any(|r| r["policy"] == "default/watch" && r["audit"] == true))
    });
    assert_eq!(status(FRONTEND, port, "/admin/secret.txt"), 200, "audited, not enforced");
    let flow = weir.wait_flow("verdict=audited", "the audited request", |f| {
        f.http().is_some_and(|h| h.path == "/admin/secret.txt")
    });
    assert_eq!(flow.audited_by, ["default/watch"]);
    let field = cnp("watch-2", "frontend", "/x").replace("  ingress:", "  enforcementMode: audit\n  ingress:");
    let refused = kube.kubectl(&["apply", "-f", "-"], &field);
    assert!(!refused.status.success(), "enforcementMode on a CiliumNetworkPolicy was accepted");
    let log = weir.log();
    assert!(log.contains("following the Kubernetes API server"), "{log}");
}

#[test]
fn network_policies_and_a_crd_installed_later_are_followed() {
    let kube = Kube::start();
    // the identities' CRD and the RBAC, but no policy CRD: weir starts on
    // what the API server has (NetworkPolicy)
    kube.install_crds("weiridentities");
    kube.install_weir_without_crds();
    let nginx = Nginx::start();
    let port = free_port();
    let weir = weir_following(&kube, &nginx, port);

    // a Kubernetes NetworkPolicy, as Cilium reads it: only the crawler may
    // connect to `app: web`
    kube.apply(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: crawler-only, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{podSelector: {matchLabels: {app: crawler}}}], ports: [{port: 80}]}]
"#,
    );
    wait_for("the NetworkPolicy enforced", Duration::from_secs(30), || {
        status(FRONTEND, port, "/public/hello.txt") == 0
    });
    assert_eq!(status(CRAWLER, port, "/robots.txt"), 200);

    // Weir's own kind, after its CRD is installed: followed without a restart
    let generation = weir.generation();
    kube.install_crds("policy.weir.dev_weirnetworkpolicies");
    kube.apply(
        r#"
apiVersion: policy.weir.dev/v1alpha1
kind: WeirNetworkPolicy
metadata: {name: frontend-public, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: frontend}}]
      toPorts:
        - ports: [{port: "80", protocol: TCP}]
          rules: {http: [{method: GET, path: "/public/.*"}]}
"#,
    );
    wait_for("the WeirNetworkPolicy enforced", Duration::from_secs(60), || {
        status(FRONTEND, port, "/public/hello.txt") == 200
    });
    assert!(weir.generation() > generation);
    assert_eq!(status(FRONTEND, port, "/admin/secret.txt"), 403);
}
