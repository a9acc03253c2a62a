//! Two nodes joined by a wire, each with its own pods and its own weir
//! (`--datapath ebpf`): a pod on node A talks to a policed pod on node B.
//! Node B's weir judges the L7 rules for A's pod, with A's pod's identity
//! taken from B's ipcache (no mark crosses the wire), after its
//! `weir_from_netdev` program handed the connection to B's proxy. L3/L4
//! allows and drops stay in B's `weir_to_pod`; replies to B's own
//! connections pass.

use std::time::Duration;

use weir::observe::flow::{FlowRecord, Verdict};
use weir_integration::node::{Node, peer_script};
use weir_integration::wait_for;

const BASE: &str = "admin: ADMIN\nworkers: 1\nlog_flows: true\n";

/// `app: client` may GET `/public*` on `app: server`:80 and reach :4000
/// without L7 rules; `app: other` is denied outright.
const POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server-ingress}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: client}}]
      toPorts:
        - ports: [{port: "80", protocol: TCP}]
          rules:
            http: [{method: GET, path: "/public.*"}]
        - ports: [{port: "4000", protocol: TCP}]
  ingressDeny:
    - fromEndpoints: [{matchLabels: {app: other}}]
"#;

const LABELS: [(&str, &str); 3] = [("cli", "client"), ("oth", "other"), ("srv", "server")];

fn has_label(flow: &FlowRecord, label: &str) -> bool {
    flow.source.labels.iter().any(|l| l == label)
}

#[test]
fn l7_ingress_from_another_node_is_judged_by_the_receiving_nodes_proxy() {
    let mut a = Node::in_subnet(&["cli", "oth"], 1);
    let mut b = Node::in_subnet(&["srv"], 2);
    Node::wire(&mut a, &mut b, &LABELS);
    let server = b.pod("srv").ip;
    let client = a.pod("cli").ip;
    b.serve("srv", "http server", "python3", &[&peer_script(), "http", &server.to_string(), "80"]);
    b.serve("srv", "line echo", "python3", &[&peer_script(), "tcp-echo", &server.to_string(), "4000"]);
    a.serve("cli", "client's own server", "python3", &[&peer_script(), "http", &client.to_string(), "8080"]);

    // each node's weir, started from inside its node
    a.enter();
    a.start_weir(&format!("{BASE}{}", a.endpoints_yaml(&LABELS)), &[("server.yaml", POLICY)]);
    a.leave();
    b.enter();
    b.start_weir(&format!("{BASE}{}", b.endpoints_yaml(&LABELS)), &[("server.yaml", POLICY)]);
    let wire = b.wire.clone().unwrap();
    let status = b.datapath_status();
    assert!(status.lines().any(|l| l == format!("device {wire}: weir_from_netdev")), "{status}");

    // allowed at L7 by B's proxy: the server sees the client's own address,
    // and exactly one request per GET (the proxy's leg is not redirected again)
    let url = format!("http://{server}/public/ready");
    wait_for("the server across the wire", Duration::from_secs(10), || a.curl("cli", &url).0 == 200);
    for i in 0..3 {
        let (status, body) = a.curl("cli", &format!("http://{server}/public/{i}"));
        assert_eq!(status, 200, "{body}");
        assert!(body.starts_with(&format!("client={client}:")), "source address not kept: {body}");
        assert_eq!(body.matches("path=").count(), 1, "{body}");
    }

    // refused at L7 by B's proxy, with A's pod's identity from B's ipcache
    let (status, body) = a.curl("cli", &format!("http://{server}/private"));
    assert_eq!((status, body.as_str()), (403, "Access denied\r\n"));
    let denied = b.weir().wait_flow("", "the L7 denial", |f| {
        f.http().is_some_and(|h| h.path == "/private") && f.verdict == Verdict::Denied
    });
    assert!(has_label(&denied, "k8s:app=client"), "{denied:?}");
    assert_eq!((denied.source.address.ip(), denied.listener.as_str()), (client.into(), "ebpf"));
    let redirect = b.weir().wait_flow("", "the kernel's redirect of the off-node SYN", |f| {
        f.listener == "datapath" && f.port == 80 && f.reason.as_deref() == Some("redirected to the proxy")
    });
    assert!(has_label(&redirect, "k8s:app=client"), "{redirect:?}");
    assert!(redirect.policies.iter().any(|p| p.contains("server-ingress")), "{redirect:?}");

    // L3/L4 without L7 rules: allowed in B's weir_to_pod, not proxied
    let echo =
        a.run_in("cli", "python3", &[&peer_script(), "lines", &server.to_string(), "4000"], "hello over the wire\n");
    assert_eq!(String::from_utf8_lossy(&echo.stdout), "hello over the wire\n");
    let allowed = b.weir().wait_flow("", "the L4 allow", |f| {
        f.port == 4000 && f.verdict == Verdict::Forwarded && f.listener == "datapath"
    });
    assert!(has_label(&allowed, "k8s:app=client"), "{allowed:?}");
    assert!(!b.weir().flows("").iter().any(|f| f.port == 4000 && f.listener == "ebpf"), "port 4000 was not proxied");

    // `other` on A is denied at L3 by B: its SYN never gets an answer, and
    // the drop is B's flow, naming the policy
    let other = a.pod("oth").ip;
    assert_eq!(a.curl("oth", &format!("http://{server}/public/a")).0, 0);
    let dropped = b
        .weir()
        .wait_flow("", "the drop", |f| f.verdict == Verdict::Dropped && f.source.address.ip() == other && f.port == 80);
    assert!(has_label(&dropped, "k8s:app=other"), "{dropped:?}");

    // B's pod opens a connection to A's pod: its replies come back over the
    // wire, pass weir_from_netdev (nothing there redirects them) and are let
    // in by weir_to_pod as replies (B's ingress policy alone would drop them)
    let (status, body) = b.curl("srv", &format!("http://{client}:8080/from-b"));
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with(&format!("client={server}:")), "{body}");
}

/// A sender B's weir knows only by a `fromCIDR` prefix has a CIDR identity
/// (2^24 + n), which does not fit the mark's 24 bits: the mark must carry no
/// identity then, or the proxy would read the truncated number as another
/// identity — here the second prefix would read as `reserved:host`, which
/// this policy lets in without L7 rules.
#[test]
fn an_off_node_sender_known_by_cidr_keeps_its_l7_rules() {
    const CIDR_POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server-cidr}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
    - fromCIDR: [10.1.0.0/16]
      toPorts: [{ports: [{port: "80", protocol: TCP}]}]
    - fromCIDR: [10.200.1.0/24]
      toPorts:
        - ports: [{port: "80", protocol: TCP}]
          rules:
            http: [{method: GET, path: "/public.*"}]
    - fromCIDR: [10.250.0.0/16]
      toPorts: [{ports: [{port: "80", protocol: TCP}]}]
    - fromEntities: [host]
      toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"#;
    let mut a = Node::in_subnet(&["cli"], 1);
    let mut b = Node::in_subnet(&["srv"], 2);
    Node::wire(&mut a, &mut b, &LABELS);
    b.remote_pods.clear(); // B knows A's pod by its address only
    let server = b.pod("srv").ip;
    b.serve("srv", "http server", "python3", &[&peer_script(), "http", &server.to_string(), "80"]);
    b.enter();
    b.start_weir(&format!("{BASE}{}", b.endpoints_yaml(&LABELS)), &[("server.yaml", CIDR_POLICY)]);
    let url = format!("http://{server}/public/ready");
    wait_for("the server across the wire", Duration::from_secs(10), || a.curl("cli", &url).0 == 200);
    let (status, body) = a.curl("cli", &format!("http://{server}/private"));
    assert_eq!((status, body.as_str()), (403, "Access denied\r\n"), "the CIDR sender's L7 rules were skipped");
    let denied = b.weir().wait_flow("", "the L7 denial", |f| f.http().is_some_and(|h| h.path == "/private"));
    // judged as the address it is (a world address the CIDR rule names), not
    // as the host
    assert!(denied.policies.iter().any(|p| p.ends_with("spec.ingress[1].toPorts[0]")), "{denied:?}");
    assert_eq!(denied.source.address.ip(), a.pod("cli").ip);
}

/// Without the node's uplink in `datapath.devices`, no program can hand an
/// off-node connection to the proxy: an L7 ingress rule fails closed for
/// it — dropped at the pod's veth, with a flow saying why — while the
/// same sender's L3/L4-only port still works.
#[test]
fn without_the_uplink_in_devices_l7_ingress_from_another_node_fails_closed() {
    let mut a = Node::in_subnet(&["cli"], 1);
    let mut b = Node::in_subnet(&["srv"], 2);
    Node::wire(&mut a, &mut b, &LABELS);
    let server = b.pod("srv").ip;
    b.serve("srv", "http server", "python3", &[&peer_script(), "http", &server.to_string(), "80"]);
    b.serve("srv", "line echo", "python3", &[&peer_script(), "tcp-echo", &server.to_string(), "4000"]);
    b.enter();
    let wire = b.wire.clone().unwrap();
    let config = b.endpoints_yaml(&LABELS).replace(&format!("  devices: [{wire}]\n"), "");
    assert!(!config.contains("devices"), "{config}");
    b.start_weir(&format!("{BASE}{config}"), &[("server.yaml", POLICY)]);
    let status = b.datapath_status();
    assert!(!status.contains("weir_from_netdev"), "{status}");

    // the L3/L4 port answers across the wire (weir_to_pod allows it)
    wait_for("the echo across the wire", Duration::from_secs(10), || {
        let out = a.run_in("cli", "python3", &[&peer_script(), "lines", &server.to_string(), "4000"], "ping\n");
        String::from_utf8_lossy(&out.stdout).contains("ping")
    });
    // the L7 port does not: dropped, never answered unjudged
    let (status, body) = a.curl("cli", &format!("http://{server}/public/ready"));
    assert_eq!(status, 0, "an L7 port answered an off-node client past the proxy: {body}");
    let dropped = b.weir().wait_flow("", "the fail-closed drop", |f| f.verdict == Verdict::Dropped && f.port == 80);
    assert!(has_label(&dropped, "k8s:app=client"), "{dropped:?}");
    assert!(dropped.reason.as_deref().unwrap_or_default().contains("needs the proxy"), "{dropped:?}");
}
