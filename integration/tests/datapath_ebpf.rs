//! The eBPF datapath end to end: a node of network namespaces, weir with
//! `--datapath ebpf` in the node, real clients and servers in the pods
//! (curl, Python HTTP/TCP/UDP servers, raw SCTP packets). No pod is told
//! about the proxy: the programs on the veths redirect and enforce.

use std::path::Path;
use std::time::Duration;

use weir::observe::flow::Verdict;
use weir_integration::node::{Node, SERVER_HTTP_POLICY, peer_script};
use weir_integration::wait_for;

const BASE: &str = "admin: ADMIN\nworkers: 1\nlog_flows: true\n";

fn has_label(labels: &[String], label: &str) -> bool {
    labels.iter().any(|l| l == label)
}

fn start_http_node() -> Node {
    start_http(Node::new(&["cli", "srv", "oth"]))
}

/// weir in front of `srv`'s HTTP server on this node, ready.
fn start_http(mut node: Node) -> Node {
    node.enter();
    let server = node.pod("srv").ip.to_string();
    node.serve("srv", "http server", "python3", &[&peer_script(), "http", &server, "80"]);
    let config = format!("{BASE}{}", node.endpoints_yaml(&[("cli", "client"), ("srv", "server"), ("oth", "other")]));
    node.start_weir(&config, &[("server.yaml", SERVER_HTTP_POLICY)]);
    let url = format!("http://{server}/public/ready");
    wait_for("the server in its pod", Duration::from_secs(10), || node.curl("cli", &url).0 == 200);
    node
}

#[test]
fn l7_rules_are_enforced_transparently_with_the_senders_identity() {
    let node = start_http_node();
    let (client, server) = (node.pod("cli").ip, node.pod("srv").ip);

    // allowed: reaches the server once, from the client's own address
    let (status, body) = node.curl("cli", &format!("http://{server}/public/a"));
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with(&format!("client={client}:")), "source address not kept: {body}");
    assert!(body.contains("path=/public/a"), "{body}");

    // refused at L7 by the proxy, which the client never addressed
    let (status, body) = node.curl("cli", &format!("http://{server}/private"));
    assert_eq!(status, 403);
    assert_eq!(body, "Access denied\r\n");

    // the proxy saw the sender's identity (from the mark), not an address guess
    let denied = node.weir().wait_flow("", "the L7 denial flow", |f| {
        f.http().is_some_and(|h| h.path == "/private") && f.verdict == Verdict::Denied
    });
    assert!(has_label(&denied.source.labels, "k8s:app=client"), "{denied:?}");
    assert!(has_label(&denied.destination.labels, "k8s:app=server"), "{denied:?}");
    assert_eq!(denied.source.address.ip(), client);
    assert_eq!(denied.listener, "ebpf");
    let allowed = node.weir().wait_flow("", "the L7 allow flow", |f| f.http().is_some_and(|h| h.path == "/public/a"));
    assert_eq!(allowed.verdict, Verdict::Forwarded);
    assert_eq!(allowed.http().unwrap().status, Some(200));

    // `other` is denied at L3 by an ingressDeny rule: the SYN is dropped in
    // the kernel (no HTTP answer at all) and the drop is a flow
    let (status, _) = node.curl("oth", &format!("http://{server}/public/a"));
    assert_eq!(status, 0, "a dropped SYN gets no response");
    let drop = node.weir().wait_flow("", "the drop flow", |f| f.verdict == Verdict::Dropped && f.protocol == "tcp");
    assert!(has_label(&drop.source.labels, "k8s:app=other"), "{drop:?}");
    assert_eq!(drop.port, 80);
    assert!(drop.reason.as_deref().unwrap_or_default().contains("server-http"), "{drop:?}");

    // the proxy's own upstream leg is not redirected again: one request per
    // allowed GET reached the server (each answer names exactly one path)
    for i in 0..5 {
        let (status, body) = node.curl("cli", &format!("http://{server}/public/{i}"));
        assert_eq!((status, body.matches("path=").count()), (200, 1), "{body}");
    }
    let metrics = node.weir().metrics();
    assert!(metrics.contains("listener=\"ebpf\""), "{metrics}");

    // `weir datapath status` reads the kernel's side of all this from the pins
    let status = node.datapath_status();
    let line = |prefix: &str| {
        status
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in:\n{status}"))
            .to_string()
    };
    let cli = line(&format!("endpoint {} {client} identity ", node.pod("cli").interface));
    assert!(cli.contains("programs weir_from_pod,weir_to_pod"), "{cli}");
    let held: u64 = cli.split("conntrack ").nth(1).and_then(|t| t.split(' ').next()).unwrap().parse().unwrap();
    assert!(held >= 1, "the client's connections hold entries: {cli}");
    let drops = line("drops ");
    let policy_drops: u64 = drops.split("policy=").nth(1).and_then(|t| t.split(' ').next()).unwrap().parse().unwrap();
    assert!(policy_drops >= 1, "{drops}");
    let conntrack = line(&format!("map {}/maps/WEIR_CONNTRACK ", node.bpffs));
    assert!(conntrack.contains("/262144 entries (") && conntrack.contains(" live)"), "{conntrack}");
    assert!(line("policy revision ").len() > "policy revision ".len());
}

#[test]
fn policy_updates_apply_in_place_without_reattaching() {
    let node = start_http_node();
    let server = node.pod("srv").ip;
    assert_eq!(node.curl("cli", &format!("http://{server}/private")).0, 403);
    let before = node.datapath_status();
    assert!(before.contains("weir_from_pod") && before.contains("rule"), "{before}");

    let generation = node.weir().generation();
    node.weir().write_policy("server.yaml", &SERVER_HTTP_POLICY.replace("/public.*", "/(public|private).*"));
    node.weir().wait_generation_above(generation);
    assert_eq!(node.curl("cli", &format!("http://{server}/private")).0, 200);

    // and back to L3/L4 only: no L7 rule left, so no redirect — the flow for
    // the next connection is a kernel allow, not an HTTP record
    let generation = node.weir().generation();
    let l4_only =
        SERVER_HTTP_POLICY.replace("          rules:\n            http: [{method: GET, path: \"/public.*\"}]\n", "");
    node.weir().write_policy("server.yaml", &l4_only);
    node.weir().wait_generation_above(generation);
    let (status, body) = node.curl("cli", &format!("http://{server}/not-filtered"));
    assert_eq!(status, 200, "{body}");
    let kernel_allow = node.weir().wait_flow("", "an L4 allow flow", |f| {
        f.protocol == "tcp" && f.verdict == Verdict::Forwarded && f.reason.is_none()
    });
    assert_eq!(kernel_allow.port, 80);
    assert!(!node.weir().flows("").iter().any(|f| f.http().is_some_and(|h| h.path == "/not-filtered")));
    assert_eq!(node.datapath_status().lines().filter(|l| l.starts_with("link")).count(), 6);
}

#[test]
fn port_and_protocol_rules_for_tcp_udp_and_sctp() {
    let mut node = Node::new(&["cli", "srv"]);
    node.enter();
    let server = node.pod("srv").ip.to_string();
    let dir = tempfile::tempdir().unwrap();
    let (udp_log, sctp_log) = (dir.path().join("udp"), dir.path().join("sctp"));
    let script = peer_script();
    node.serve("srv", "tcp echo", "python3", &[&script, "tcp-echo", &server, "9000"]);
    node.serve("srv", "tcp echo 2", "python3", &[&script, "tcp-echo", &server, "9100"]);
    for port in ["9001", "9101"] {
        node.serve("srv", "udp sink", "python3", &[&script, "udp-sink", port, udp_log.to_str().unwrap()]);
    }
    for port in ["9002", "9102"] {
        node.serve("srv", "sctp sink", "python3", &[&script, "sctp-sink", port, sctp_log.to_str().unwrap()]);
    }
    let policy = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server-l4}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: client}}]
      toPorts:
        - ports: [{port: "9000", protocol: TCP}, {port: "9001", protocol: UDP}, {port: "9002", protocol: SCTP}]
"#;
    let config = format!("{BASE}{}", node.endpoints_yaml(&[("cli", "client"), ("srv", "server")]));
    node.start_weir(&config, &[("server.yaml", policy)]);

    let tcp = |port: &str| {
        node.in_pod("cli", "ncat").args(["-z", "-w", "2", &server, port]).status().map(|s| s.success()).unwrap_or(false)
    };
    wait_for("TCP 9000 allowed", Duration::from_secs(10), || tcp("9000"));
    assert!(!tcp("9100"), "TCP 9100 is not in the policy");
    // TCP on the UDP port is not allowed either
    assert!(!tcp("9001"));

    let send = |kind: &str, port: &str| {
        let mut cmd = node.in_pod("cli", "python3");
        cmd.args([&script, kind, &server, port]);
        if kind == "udp-send" {
            cmd.arg(format!("to-{port}"));
        }
        assert!(cmd.status().unwrap().success());
    };
    let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
    for _ in 0..3 {
        send("udp-send", "9001");
        send("udp-send", "9101");
        send("sctp-send", "9002");
        send("sctp-send", "9102");
    }
    wait_for("UDP 9001 delivered", Duration::from_secs(5), || read(&udp_log).contains("to-9001"));
    wait_for("SCTP 9002 delivered", Duration::from_secs(5), || read(&sctp_log).contains(" 9002"));
    std::thread::sleep(Duration::from_millis(300));
    assert!(!read(&udp_log).contains("to-9101"), "UDP 9101 must be dropped: {}", read(&udp_log));
    assert!(!read(&sctp_log).contains(" 9102"), "SCTP 9102 must be dropped: {}", read(&sctp_log));

    let dropped: Vec<(String, u16)> = node
        .weir()
        .flows("")
        .into_iter()
        .filter(|f| f.verdict == Verdict::Dropped)
        .map(|f| (f.protocol.clone(), f.port))
        .collect();
    for expected in [("tcp", 9100), ("udp", 9101), ("sctp", 9102)] {
        assert!(dropped.contains(&(expected.0.to_string(), expected.1)), "{expected:?} not in {dropped:?}");
    }
}

#[test]
fn restart_keeps_established_connections_and_stop_leaves_nothing() {
    let mut node = Node::new(&["cli", "srv"]);
    node.enter();
    let server = node.pod("srv").ip.to_string();
    let script = peer_script();
    node.serve("srv", "tcp echo", "python3", &[&script, "tcp-echo", &server, "9000"]);
    // the server may only talk to the client on port 53: its replies to the
    // client's connection pass by connection tracking alone
    let policy = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server-l4}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: client}}]
      toPorts: [{ports: [{port: "9000", protocol: TCP}]}]
  egress:
    - toEndpoints: [{matchLabels: {app: client}}]
      toPorts: [{ports: [{port: "53", protocol: UDP}]}]
"#;
    let config = format!("{BASE}{}", node.endpoints_yaml(&[("cli", "client"), ("srv", "server")]));
    node.start_weir(&config, &[("server.yaml", policy)]);
    wait_for("the echo server", Duration::from_secs(10), || {
        node.in_pod("cli", "ncat").args(["-z", "-w", "1", &server, "9000"]).status().is_ok_and(|s| s.success())
    });

    let mut client = node.line_client("cli", &server, 9000);
    assert_eq!(client.exchange("one"), "one");

    // weir crashes: the pinned links keep enforcing, conntrack is pinned
    let config_dir = node.weir().config_dir().to_path_buf();
    let old_pid = node.weir().pid();
    // SAFETY: killing our own child.
    unsafe { libc::kill(old_pid as i32, libc::SIGKILL) };
    wait_for("weir to die", Duration::from_secs(5), || {
        !Path::new(&format!("/proc/{old_pid}/cmdline")).exists()
            || std::fs::read_to_string(format!("/proc/{old_pid}/stat")).is_ok_and(|s| s.contains(") Z"))
    });
    assert_eq!(client.exchange("two"), "two", "the connection died with weir");
    assert!(
        !node
            .in_pod("srv", "ncat")
            .args(["-z", "-w", "1", &node.pod("cli").ip.to_string(), "22"])
            .status()
            .unwrap()
            .success(),
        "the server's egress policy must still be enforced while weir is down"
    );

    // a new weir takes the pinned maps and links over
    let policies = std::fs::read_to_string(config_dir.join("policies/server.yaml")).unwrap();
    node.weir = None; // the dead one: nothing to clean, its successor owns the pins
    node.start_weir(&config, &[("server.yaml", &policies)]);
    assert_eq!(client.exchange("three"), "three", "the connection died when weir came back");

    // a clean stop removes everything
    let mut weir = node.weir.take().unwrap();
    assert!(weir.terminate().is_some_and(|s| s.success()), "{}", weir.log());
    let leftovers = node.leftovers();
    assert!(leftovers.is_empty(), "left behind:\n{leftovers}\nweir log:\n{}", weir.log());
}

#[test]
fn a_policy_change_reaches_established_connections_at_once() {
    let mut node = Node::new(&["cli", "srv"]);
    node.enter();
    let server = node.pod("srv").ip.to_string();
    let script = peer_script();
    node.serve("srv", "tcp echo", "python3", &[&script, "tcp-echo", &server, "9000"]);
    let policy = |ports: &[&str]| {
        let ports: Vec<String> = ports.iter().map(|p| format!("{{port: \"{p}\", protocol: TCP}}")).collect();
        format!(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: server-l4}}\nspec:\n  \
             endpointSelector: {{matchLabels: {{app: server}}}}\n  ingress:\n    \
             - fromEndpoints: [{{matchLabels: {{app: client}}}}]\n      toPorts: [{{ports: [{}]}}]\n",
            ports.join(", ")
        )
    };
    let config = format!("{BASE}{}", node.endpoints_yaml(&[("cli", "client"), ("srv", "server")]));
    node.start_weir(&config, &[("server.yaml", &policy(&["9000"]))]);
    wait_for("the echo server", Duration::from_secs(10), || {
        node.in_pod("cli", "ncat").args(["-z", "-w", "1", &server, "9000"]).status().is_ok_and(|s| s.success())
    });
    let mut client = node.line_client("cli", &server, 9000);
    // established: later packets pass on the conntrack entry alone
    for i in 0..20 {
        assert_eq!(client.exchange(&format!("line {i}")), format!("line {i}"));
    }

    // a change that does not concern this connection (a new port) revises
    // the policy: the connection is judged again, and still allowed
    let generation = node.weir().generation();
    node.weir().write_policy("server.yaml", &policy(&["9000", "9001"]));
    node.weir().wait_generation_above(generation);
    assert_eq!(client.exchange("after an unrelated change"), "after an unrelated change");

    // the port is no longer allowed: the very next packet of the open
    // connection is dropped, not only new connections
    let generation = node.weir().generation();
    node.weir().write_policy("server.yaml", &policy(&["9001"]));
    node.weir().wait_generation_above(generation);
    let refused = client.exchange("after the port was taken away");
    assert!(refused.starts_with("error"), "the established connection still passes: {refused}");
    let dropped = node.weir().wait_flow("", "the drop of an established connection's packet", |f| {
        f.verdict == Verdict::Dropped && f.port == 9000
    });
    assert!(dropped.reason.as_deref().is_some_and(|r| r.contains("no ingress rule")), "{dropped:?}");
}

/// The server's rules, audited: the kernel lets `other` in and says it
/// would have dropped it; the proxy lets the client's /private through and
/// says it would have denied it. Then enforced: both are refused.
#[test]
fn an_audited_policy_passes_traffic_and_names_what_it_would_refuse() {
    // and the node itself (a probe), whose packets reach the pod without
    // passing an ingress hook that could hand them to the proxy
    let from_host = "    - fromEntities: [host]\n      toPorts:\n        - ports: [{port: \"80\", protocol: TCP}]\n          \
                     rules:\n            http: [{method: GET, path: \"/public.*\"}]\n";
    let audited = SERVER_HTTP_POLICY
        .replace("cilium.io/v2\nkind: CiliumNetworkPolicy", "policy.weir.dev/v1alpha1\nkind: WeirNetworkPolicy")
        .replace("  ingressDeny:\n    - fromEndpoints: [{matchLabels: {app: other}}]\n", from_host)
        .replace("  ingress:\n", "  enforcementMode: audit\n  ingress:\n");
    let mut node = Node::new(&["cli", "srv", "oth"]);
    node.enter();
    let server = node.pod("srv").ip.to_string();
    node.serve("srv", "http server", "python3", &[&peer_script(), "http", &server, "80"]);
    let config = format!("{BASE}{}", node.endpoints_yaml(&[("cli", "client"), ("srv", "server"), ("oth", "other")]));
    node.start_weir(&config, &[("server.yaml", &audited)]);
    let url = |path: &str| format!("http://{server}{path}");
    wait_for("the server in its pod", Duration::from_secs(10), || node.curl("cli", &url("/public/ready")).0 == 200);

    assert_eq!(node.curl("cli", &url("/private")).0, 200, "audited: the proxy lets it through");
    assert_eq!(node.curl("oth", &url("/public/a")).0, 200, "audited: the kernel lets it through");
    let l7 = node.weir().wait_flow("", "the proxy's audit", |f| {
        f.verdict == Verdict::Audited && f.http().is_some_and(|h| h.path == "/private")
    });
    assert_eq!(l7.listener, "ebpf", "the kernel sent it to the proxy for the audited L7 rules: {l7:?}");
    assert!(l7.reason.as_deref().unwrap().starts_with("would be denied: http-policy"), "{l7:?}");
    assert_eq!(l7.audited_by, ["default/server-http"]);
    let l4 = node.weir().wait_flow("", "the kernel's audit", |f| f.verdict == Verdict::Audited && f.protocol == "tcp");
    assert!(has_label(&l4.source.labels, "k8s:app=other"), "{l4:?}");
    assert_eq!(l4.port, 80);
    let why = l4.reason.as_deref().unwrap();
    assert!(
        why.starts_with("would be dropped: no ingress rule allows") && why.contains("default/server-http"),
        "{why}"
    );
    assert_eq!(l4.audited_by, ["default/server-http"]);
    // the node's own request: an audit never costs the traffic, so where
    // the proxy cannot look it passes unjudged, and says so
    let probe = std::process::Command::new("curl")
        .args(["-s", "-m", "3", "-o", "/dev/null", "-w", "%{http_code}", &url("/private-from-the-node")])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&probe.stdout), "200", "{probe:?}");
    let unjudged = node.weir().wait_flow("", "the node's unjudged request", |f| {
        f.protocol == "tcp" && f.reason.as_deref().is_some_and(|r| r.starts_with("passed unjudged"))
    });
    assert!(has_label(&unjudged.source.labels, "reserved:host"), "{unjudged:?}");

    // enforced: the same requests are refused where the audit said
    let generation = node.weir().generation();
    node.weir().write_policy("server.yaml", &audited.replace("  enforcementMode: audit\n", ""));
    node.weir().wait_generation_above(generation);
    assert_eq!(node.curl("cli", &url("/private")).0, 403);
    assert_eq!(node.curl("oth", &url("/public/a")).0, 0, "dropped in the kernel");
    assert_eq!(node.curl("cli", &url("/public/a")).0, 200);
}

/// Visibility without enforcement: the server's port 80 is parsed into HTTP
/// flows (the pod's `policy.cilium.io/proxy-visibility`, here in weir.yaml),
/// with no policy selecting anyone: nothing is refused, other ports are not
/// touched.
#[test]
fn visibility_parses_a_port_into_flows_and_refuses_nothing() {
    let mut node = Node::new(&["cli", "srv", "oth"]);
    node.enter();
    let server = node.pod("srv").ip.to_string();
    node.serve("srv", "http server", "python3", &[&peer_script(), "http", &server, "80"]);
    node.serve("srv", "tcp echo", "python3", &[&peer_script(), "tcp-echo", &server, "9000"]);
    let endpoints = node.endpoints_yaml(&[("cli", "client"), ("srv", "server"), ("oth", "other")]);
    let observed =
        endpoints.replace("labels: {app: server}}", "labels: {app: server}, visibility: '<Ingress/80/TCP/HTTP>'}");
    assert_ne!(observed, endpoints);
    node.start_weir(&format!("{BASE}{observed}"), &[]);
    let url = |path: &str| format!("http://{server}{path}");
    wait_for("the server in its pod", Duration::from_secs(10), || node.curl("cli", &url("/ready")).0 == 200);

    assert_eq!(node.curl("cli", &url("/seen/by/weir")).0, 200);
    assert_eq!(node.curl("oth", &url("/also/seen")).0, 200, "no default deny: nothing selects the server");
    for (from, path) in [("client", "/seen/by/weir"), ("other", "/also/seen")] {
        let flow = node
            .weir()
            .wait_flow("", "an HTTP flow of the observed port", |f| f.http().is_some_and(|h| h.path == path));
        assert_eq!(flow.verdict, Verdict::Forwarded);
        assert_eq!(flow.listener, "ebpf", "the kernel handed it to the proxy: {flow:?}");
        assert!(has_label(&flow.source.labels, &format!("k8s:app={from}")), "the sender's identity: {flow:?}");
        assert_eq!(flow.http().unwrap().status, Some(200));
    }
    // another port of the same pod: not redirected, not refused
    let echo = node.in_pod("cli", "ncat").args(["-z", "-w", "2", &server, "9000"]).status().unwrap();
    assert!(echo.success());
    assert!(
        !node.weir().flows("").iter().any(|f| f.port == 9000 && f.verdict != Verdict::Forwarded),
        "{:?}",
        node.weir().flows("")
    );
}

/// A node with IPv6 turned off (as many are): weir says it cannot redirect
/// IPv6 and serves IPv4 as before; stopping leaves nothing behind.
#[test]
fn a_node_without_ipv6_runs_the_ipv4_datapath() {
    let node = Node::new(&["cli", "srv", "oth"]);
    for setting in ["net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.lo.disable_ipv6=1"] {
        let disabled =
            std::process::Command::new("ip").args(["netns", "exec", &node.netns, "sysctl", "-qw", setting]).status();
        assert!(disabled.unwrap().success(), "{setting}");
    }
    let mut node = start_http(node);
    let server = node.pod("srv").ip;
    assert_eq!(node.curl("cli", &format!("http://{server}/private")).0, 403);
    let log = node.weir().log();
    assert!(log.contains("IPv6 redirect rules not installed"), "{log}");
    let mut weir = node.weir.take().unwrap();
    assert!(weir.terminate().is_some_and(|s| s.success()), "{}", weir.log());
    let leftovers = node.leftovers();
    assert!(leftovers.is_empty(), "a stop without IPv6 left behind:\n{leftovers}\nweir log:\n{}", weir.log());
}

/// A start that fails once the datapath is installed — here another program
/// holds the HTTP proxy's port, so weir cannot bind its transparent
/// listener — says why and takes down the pins, rules and route it made.
#[test]
fn a_start_that_fails_after_the_datapath_is_installed_leaves_nothing_behind() {
    let mut node = Node::new(&["cli", "srv"]);
    let holder = "import socket,time\n\
                  s=socket.socket(); s.bind(('127.0.0.1',15001)); s.listen()\n\
                  print('ready',flush=True); time.sleep(60)\n";
    let mut squatter = std::process::Command::new("ip")
        .args(["netns", "exec", &node.netns, "python3", "-c", holder])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(squatter.stdout.as_mut().unwrap()), &mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    node.enter();
    let config = format!("{BASE}{}", node.endpoints_yaml(&[("cli", "client"), ("srv", "server")]));
    let started = node.try_start_weir_wrapped(&config, &[("server.yaml", SERVER_HTTP_POLICY)], &[]);
    let _ = squatter.kill();
    let _ = squatter.wait();
    let log = started.expect_err("weir cannot start without its transparent listener");
    assert!(log.contains("transparent http sockets on 127.0.0.1:15001"), "{log}");
    let leftovers = node.leftovers();
    assert!(leftovers.is_empty(), "a failed start left behind:\n{leftovers}\nweir log:\n{log}");
}
