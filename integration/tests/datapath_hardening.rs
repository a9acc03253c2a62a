//! The eBPF datapath against a hostile pod: raw frames (scapy) from inside
//! the pods, a sniffer in the receiving pod that logs what actually arrives,
//! and an iptables DNAT in the node standing in for kube-proxy's service
//! rule. One test per bypass class of issue 23, and one for ICMP type
//! rules; each asserts on what the receiving pod got and on the drop flows
//! and counters weir reports.

use std::path::{Path, PathBuf};
use std::time::Duration;

use weir::observe::flow::Verdict;
use weir_integration::node::{Node, SERVER_HTTP_POLICY, SERVER_SILENT, SERVER_UDP_POLICY};
use weir_integration::wait_for;

fn script(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python").join(name).display().to_string()
}

fn frames() -> String {
    script("datapath_frames.py")
}

const BASE: &str = "admin: ADMIN\nworkers: 1\nlog_flows: true\n";

/// Short lifetimes, so expiry can be watched.
const SHORT_LIVED: &str = "{udp: 10s, icmp: 10s, other: 10s, gc_interval: 1s}";
/// The same without weir's collector: expired entries stay in the map, and
/// the programs must treat them as absent by themselves.
const SHORT_LIVED_UNCOLLECTED: &str = "{udp: 10s, icmp: 10s, other: 10s, gc_interval: 1h}";
/// Short lifetimes, and a per-endpoint limit of fragment records below the
/// default (128): the setting reaches the programs.
const FEW_FRAGMENTS: &str = "{udp: 10s, icmp: 10s, other: 10s, gc_interval: 1s, fragments_per_endpoint: 64}";
/// A small per-endpoint limit (and UDP entries outliving the test).
const SMALL_LIMIT: &str = "{per_endpoint: 64}";

fn config(node: &Node, labels: &[(&str, &str)], conntrack: &str) -> String {
    let endpoints =
        node.endpoints_yaml(labels).replacen("datapath:\n", &format!("datapath:\n  conntrack: {conntrack}\n"), 1);
    format!("{BASE}{endpoints}")
}

/// Run the frame tool in a pod; it must succeed.
fn send(node: &Node, pod: &str, args: &[&str]) {
    let out = node.in_pod(pod, "python3").arg(frames()).args(args).output().expect("python3");
    assert!(out.status.success(), "{args:?} from {pod}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A sniffer on the pod's eth0; returns the log it writes.
fn sniff(node: &mut Node, pod: &str, dir: &Path) -> PathBuf {
    let log = dir.join(format!("{pod}.sniff"));
    node.serve(pod, "sniffer", "python3", &[&frames(), "sniff", log.to_str().unwrap()]);
    wait_for("the sniffer", Duration::from_secs(10), || log.exists());
    log
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Lines of a sniffer log that contain `what`.
fn seen(log: &Path, what: &str) -> Vec<String> {
    read(log).lines().filter(|l| l.contains(what)).map(str::to_string).collect()
}

fn wait_drops(node: &Node, reason: &str, above: u64) -> u64 {
    let mut now = 0;
    wait_for(&format!("drops of reason {reason} above {above}"), Duration::from_secs(10), || {
        now = node.weir().datapath_drops(reason);
        now > above
    });
    now
}

/// Give frames that should *not* arrive a moment to do so anyway.
fn settle() {
    std::thread::sleep(Duration::from_millis(500));
}

/// Class 1: every frame a pod sends is judged or dropped. Two VLAN tags
/// with ID 0 around an IPv4 packet with the client's address used to skip
/// the program entirely (anti-spoofing, egress, the server's ingress).
#[test]
fn tagged_and_unknown_frames_are_dropped_and_counted() {
    let mut node = Node::new(&["cli", "srv", "oth"]);
    node.enter();
    let dir = tempfile::tempdir().unwrap();
    let (client, server) = (node.pod("cli").ip.to_string(), node.pod("srv").ip.to_string());
    let log = sniff(&mut node, "srv", dir.path());
    let config = config(&node, &[("cli", "client"), ("srv", "server"), ("oth", "other")], SHORT_LIVED);
    node.start_weir(&config, &[("server.yaml", SERVER_UDP_POLICY)]);

    // the allowed flow works, plain and untagged
    wait_for("client UDP delivered", Duration::from_secs(10), || {
        send(&node, "cli", &["udp", "40000", &server, "9001", "plain"]);
        !seen(&log, "plain").is_empty()
    });

    // the hostile pod forges the client's address inside tags
    send(&node, "oth", &["qinq", &client, &server, "9001", "qinq-forged"]);
    send(&node, "oth", &["qinq-ad", &client, &server, "9001", "qinq-ad-forged"]);
    // even the client's own allowed flow may not come tagged
    send(&node, "cli", &["vlan", &client, &server, "9001", "vlan-single"]);
    settle();
    for payload in ["qinq-forged", "qinq-ad-forged", "vlan-single"] {
        assert!(seen(&log, payload).is_empty(), "{payload} reached the server:\n{}", read(&log));
    }
    let tagged = wait_drops(&node, "vlan_tagged", 2);
    assert!(tagged >= 3, "three tagged frames, {tagged} counted");

    // other ethertypes, and IPv6 (not enforced yet, so dropped)
    send(&node, "oth", &["ethertype", "88b5"]);
    wait_drops(&node, "ethertype", 0);
    send(&node, "oth", &["ipv6", "fd00::11"]);
    wait_drops(&node, "ipv6", 0);
    node.weir().wait_flow("", "the hostile pod's VLAN drop flow", |f| {
        f.verdict == Verdict::Dropped
            && f.reason.as_deref().is_some_and(|r| r.contains("VLAN-tagged"))
            && f.source.labels.iter().any(|l| l == "k8s:app=other")
    });
    assert!(node.weir().flows("").iter().any(|f| f.reason.as_deref().is_some_and(|r| r.contains("ethertype 0x88b5"))));

    // what held stays held: spoofing without tags, the hostile pod's own flow
    send(&node, "oth", &["udp", "40000", &server, "9001", "hostile-own"]);
    let spoofed = node.weir().datapath_drops("spoofed_source");
    let out = node
        .in_pod("oth", "python3")
        .args(["-c", &format!(
            "from scapy.all import *; sendp(Ether(dst=getmacbyip('169.254.1.1'))/IP(src='{client}',dst='{server}')/UDP(sport=40000,dport=9001)/b'spoofed-plain', iface='eth0', verbose=False)"
        )])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_drops(&node, "spoofed_source", spoofed);
    // and from the client, allowed UDP 9001 only: odd TCP flags without a
    // SYN, GRE and TCP on the UDP port are no way in
    send(
        &node,
        "cli",
        &[
            "multi",
            &format!("tcp 40000 {server} 9001 FPU odd-flags"),
            &format!("tcp 40001 {server} 9001 A bare-ack"),
            &format!("proto {server} 47 gre"),
        ],
    );
    settle();
    for payload in ["hostile-own", "spoofed-plain", "odd-flags", "bare-ack", "gre"] {
        assert!(seen(&log, payload).is_empty(), "{payload} reached the server:\n{}", read(&log));
    }
}

/// srv may connect out to the client (TCP 7000, and anything else L3), but
/// takes nothing from it: an `ingressDeny`.
const SERVER_OUT_ONLY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server-out-only}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: nobody}}]
  ingressDeny:
    - fromEndpoints: [{matchLabels: {app: client}}]
  egress:
    - toEndpoints: [{matchLabels: {app: client}}]
"#;

/// Class 2: an entry of srv's connection out does not let the peer open a
/// connection back (a SYN is always new); UDP and ICMP replies pass only
/// for the exact reverse tuple (the echo id) and only until the timeout.
#[test]
fn reversed_tuples_open_nothing_and_entries_expire() {
    let mut node = Node::new(&["cli", "srv"]);
    node.enter();
    let dir = tempfile::tempdir().unwrap();
    let (client, server) = (node.pod("cli").ip.to_string(), node.pod("srv").ip.to_string());
    node.serve("cli", "tcp echo", "python3", &[&script("datapath_peer.py"), "tcp-echo", &client, "7000"]);
    let log = sniff(&mut node, "srv", dir.path());
    let config = config(&node, &[("cli", "client"), ("srv", "server")], SHORT_LIVED_UNCOLLECTED);
    node.start_weir(&config, &[("server.yaml", SERVER_OUT_ONLY)]);

    // srv connects out from port 40123 to cli:7000 and keeps it open
    wait_for("srv's connection out", Duration::from_secs(10), || {
        node.in_pod("srv", "ncat").args(["-z", "-w", "1", &client, "7000"]).status().is_ok_and(|s| s.success())
    });
    node.serve("srv", "holder", "python3", &[&frames(), "hold", &client, "7000", "40123"]);
    wait_for("the held connection's echo", Duration::from_secs(10), || {
        !seen(&log, &format!("tcp {client}:7000 > {server}:40123")).is_empty()
    });

    // cli opens a new connection on the reversed tuple: a SYN, judged as new
    send(&node, "cli", &["syn", "7000", &server, "40123"]);
    let drop = node.weir().wait_flow("", "the reversed SYN's drop", |f| {
        f.verdict == Verdict::Dropped && f.protocol == "tcp" && f.port == 40123
    });
    assert!(drop.reason.as_deref().unwrap_or_default().contains("server-out-only"), "{drop:?}");
    settle();
    let syns: Vec<String> = seen(&log, &format!("tcp {client}:7000 > {server}:40123 S "))
        .into_iter()
        .filter(|l| !l.contains(" SA"))
        .collect();
    assert!(syns.is_empty(), "the reversed SYN reached srv: {syns:?}");

    // UDP: srv's datagram from 6000 opens exactly 6000 <- 5353, for a while
    send(&node, "srv", &["udp", "6000", &client, "5353", "srv-out"]);
    send(
        &node,
        "cli",
        &["multi", &format!("udp 5353 {server} 6000 udp-reply"), &format!("udp 5353 {server} 6001 udp-other-port")],
    );
    wait_for("the UDP reply", Duration::from_secs(5), || !seen(&log, "udp-reply").is_empty());
    settle();
    assert!(seen(&log, "udp-other-port").is_empty(), "{}", read(&log));

    // ICMP: srv's echo request id 4242 lets the reply with that id in, no other
    send(&node, "srv", &["icmp", &client, "8", "4242", "ping"]);
    wait_for("cli's kernel echo reply", Duration::from_secs(5), || {
        !seen(&log, &format!("icmp {client} > {server} 0 4242")).is_empty()
    });
    send(
        &node,
        "cli",
        &[
            "multi",
            &format!("icmp {server} 0 4242 right-id"),
            &format!("icmp {server} 0 4243 wrong-id"),
            &format!("icmp {server} 13 4242 timestamp"),
            &format!("icmp {server} 8 4242 request-back"),
        ],
    );
    wait_for("the echo reply with the request's id", Duration::from_secs(5), || !seen(&log, "right-id").is_empty());
    settle();
    for payload in ["wrong-id", "timestamp", "request-back"] {
        assert!(seen(&log, payload).is_empty(), "{payload} reached srv:\n{}", read(&log));
    }

    // past the (configured, 10 s) UDP and ICMP lifetimes, nothing is a reply
    std::thread::sleep(Duration::from_secs(12));
    send(
        &node,
        "cli",
        &["multi", &format!("udp 5353 {server} 6000 udp-late"), &format!("icmp {server} 0 4242 icmp-late")],
    );
    settle();
    assert!(seen(&log, "udp-late").is_empty(), "an expired UDP entry still passed:\n{}", read(&log));
    assert!(seen(&log, "icmp-late").is_empty(), "an expired ICMP entry still passed:\n{}", read(&log));
    assert_eq!(node.weir().metric("weir_datapath_conntrack_expired_total"), 0, "no collector ran");
}

/// srv takes TCP 8080 from `friend` only; port 8081 only through an L7 rule.
const SERVER_FRIENDS: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server-friends}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: friend}}]
      toPorts:
        - ports: [{port: "8080", protocol: TCP}]
        - ports: [{port: "8081", protocol: TCP}]
          rules:
            http: [{method: GET}]
"#;

/// Removes the node's service rules even when the test fails (the node's
/// namespace goes too, this is belt and braces).
struct ServiceRules(String);

impl Drop for ServiceRules {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "exec", &self.0, "iptables", "-t", "nat", "-F", "PREROUTING"])
            .output();
    }
}

/// Class 3: a service address the node DNATs (as kube-proxy does) to a pod
/// on the same node: the destination's ingress rules apply to the real
/// destination.
#[test]
fn service_dnat_to_a_local_pod_meets_its_ingress_policy() {
    let mut node = Node::new(&["cli", "srv", "frnd"]);
    node.enter();
    let server = node.pod("srv").ip.to_string();
    node.serve("srv", "http 8080", "python3", &[&script("datapath_peer.py"), "http", &server, "8080"]);
    node.serve("srv", "http 8081", "python3", &[&script("datapath_peer.py"), "http", &server, "8081"]);
    let config = config(&node, &[("cli", "client"), ("srv", "server"), ("frnd", "friend")], SHORT_LIVED);
    node.start_weir(&config, &[("server.yaml", SERVER_FRIENDS)]);
    let rules = ServiceRules(node.netns.clone());
    for (vip_port, target) in [("80", "8080"), ("81", "8081")] {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &rules.0, "iptables", "-t", "nat", "-A", "PREROUTING", "-d", "10.96.0.10"])
            .args(["-p", "tcp", "--dport", vip_port, "-j", "DNAT", "--to-destination"])
            .arg(format!("{server}:{target}"))
            .output()
            .unwrap();
        assert!(out.status.success(), "iptables: {}", String::from_utf8_lossy(&out.stderr));
    }

    // the friend reaches srv through the service (replies un-DNATed back)
    wait_for("friend through the service", Duration::from_secs(10), || {
        node.curl("frnd", "http://10.96.0.10/ok").0 == 200
    });
    // the client is not allowed in, directly or through the service
    assert_eq!(node.curl("cli", &format!("http://{server}:8080/direct")).0, 0);
    let (status, body) = node.curl("cli", "http://10.96.0.10/through-service");
    assert_eq!(status, 0, "the client got through the service DNAT: {body}");
    let denied = node.weir().wait_flow("", "the DNATed drop at srv", |f| {
        f.verdict == Verdict::Dropped && f.port == 8080 && f.source.labels.iter().any(|l| l == "k8s:app=client")
    });
    assert!(denied.destination.labels.iter().any(|l| l == "k8s:app=server"), "{denied:?}");

    // an L7 port behind a service cannot be proxied there: fails closed
    let (status, _) = node.curl("frnd", "http://10.96.0.10:81/l7");
    assert_eq!(status, 0);
    let l7 = node.weir().wait_flow("", "the L7-behind-DNAT drop", |f| f.verdict == Verdict::Dropped && f.port == 8081);
    assert!(l7.reason.as_deref().unwrap_or_default().contains("needs the proxy"), "{l7:?}");
    drop(rules);
}

/// Anyone may send to the sink; srv only answers (its egress allows DNS only).
const SINK_AND_SERVER: &str = r#"
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

/// Class 4: one pod's churn of new flows is bounded by its own conntrack
/// limit (configured 64 here); the others' connections keep working.
#[test]
fn one_pods_conntrack_churn_is_bounded_per_endpoint() {
    let mut node = Node::new(&["cli", "srv", "oth", "snk"]);
    node.enter();
    let dir = tempfile::tempdir().unwrap();
    let (server, sink) = (node.pod("srv").ip.to_string(), node.pod("snk").ip.to_string());
    node.serve("srv", "tcp echo", "python3", &[&script("datapath_peer.py"), "tcp-echo", &server, "9000"]);
    let log = sniff(&mut node, "snk", dir.path());
    let config = config(&node, &[("cli", "client"), ("srv", "server"), ("oth", "other"), ("snk", "sink")], SMALL_LIMIT);
    node.start_weir(&config, &[("server.yaml", SINK_AND_SERVER)]);
    wait_for("the echo server", Duration::from_secs(10), || {
        node.in_pod("cli", "ncat").args(["-z", "-w", "1", &server, "9000"]).status().is_ok_and(|s| s.success())
    });

    // 300 new flows from the hostile pod
    send(&node, "oth", &["udp-flood", &sink, "9999", "20000", "300"]);
    settle();
    let delivered = seen(&log, "flood-").len();
    assert!((48..=80).contains(&delivered), "{delivered} of 300 flows got through a limit of 64");
    wait_for("the flood's refusals counted", Duration::from_secs(10), || {
        node.weir().metric("weir_datapath_conntrack_refused_total{endpoint=\"oth\"}") >= 200
    });
    assert!(node.weir().datapath_drops("conntrack_endpoint_limit") >= 200);
    let held = node.weir().metric("weir_datapath_conntrack_entries{endpoint=\"oth\"}");
    assert!((48..=80).contains(&held), "oth holds {held} entries");
    assert!(node.weir().metric("weir_datapath_conntrack_capacity") > 0);
    let refusal = node.weir().wait_flow("", "a refusal flow", |f| {
        f.verdict == Verdict::Dropped && f.reason.as_deref().is_some_and(|r| r.contains("limit of conntrack"))
    });
    assert!(refusal.source.labels.iter().any(|l| l == "k8s:app=other"), "{refusal:?}");

    // the client's connections to srv (replies pass by conntrack alone) work
    for _ in 0..3 {
        assert!(
            node.in_pod("cli", "ncat").args(["-z", "-w", "2", &server, "9000"]).status().unwrap().success(),
            "the client was crowded out"
        );
    }
    send(&node, "cli", &["udp", "41000", &sink, "9999", "client-still-counts"]);
    wait_for("the client's datagram", Duration::from_secs(5), || !seen(&log, "client-still-counts").is_empty());
}

/// Class 4, the table: when it is full (110 entries here), new connections
/// are refused; an established connection of another pod is not evicted —
/// it was with the LRU table, after which its replies were judged as new
/// and dropped.
#[test]
fn a_full_table_refuses_new_flows_and_evicts_no_established_one() {
    let mut node = Node::new(&["cli", "srv", "oth", "oth2", "snk"]);
    node.enter();
    let dir = tempfile::tempdir().unwrap();
    let (server, sink) = (node.pod("srv").ip.to_string(), node.pod("snk").ip.to_string());
    node.serve("srv", "tcp echo", "python3", &[&script("datapath_peer.py"), "tcp-echo", &server, "9000"]);
    let log = sniff(&mut node, "snk", dir.path());
    let labels = [("cli", "client"), ("srv", "server"), ("oth", "other"), ("oth2", "other"), ("snk", "sink")];
    node.start_weir(&config(&node, &labels, "{per_endpoint: 64, capacity: 110}"), &[("server.yaml", SINK_AND_SERVER)]);
    assert_eq!(node.weir().metric("weir_datapath_conntrack_capacity"), 110);

    let mut client = node.line_client("cli", &server, 9000);
    // srv's replies pass by conntrack alone (its egress allows DNS only)
    let mut first = String::new();
    wait_for("the client's connection", Duration::from_secs(10), || {
        first = client.exchange("one");
        first == "one"
    });

    // two hostile pods, 64 new flows each at most: the table fills up
    // (twice over: entries that are used again are what an LRU keeps)
    send(&node, "oth", &["udp-flood", &sink, "9999", "20000", "100", "2"]);
    send(&node, "oth2", &["udp-flood", &sink, "9999", "30000", "100", "2"]);
    settle();
    assert_eq!(client.exchange("two"), "two", "the established connection was evicted");
    let delivered = seen(&log, "flood-0-").len();
    assert!((100..=115).contains(&delivered), "{delivered} flows fit a table of 110");
    wait_drops(&node, "conntrack_full", 0);
    // weir exports the kernel's counters once a second: wait for the last
    // refusals to be counted rather than read them once
    let refused = || -> u64 {
        ["oth", "oth2"]
            .iter()
            .map(|p| node.weir().metric(&format!("weir_datapath_conntrack_refused_total{{endpoint=\"{p}\"}}")))
            .sum()
    };
    wait_for("at least 80 refusals counted", Duration::from_secs(10), || refused() >= 80);
}

/// Class 5: fragmented datagrams to an allowed port arrive whole; to a
/// denied port, and fragments without their first, stay dropped.
#[test]
fn fragments_follow_their_first_fragments_verdict() {
    fragments_follow_their_first(SHORT_LIVED);
}

/// The same through the node's routing: the receiver's veth keeps records
/// of its own (charged to the sender, as it is on this node).
#[test]
fn fragments_follow_their_first_fragments_verdict_through_the_nodes_routing() {
    fragments_follow_their_first(&format!("{SHORT_LIVED}\n  host_routing: kernel"));
}

fn fragments_follow_their_first(conntrack: &str) {
    let mut node = Node::new(&["cli", "srv"]);
    node.enter();
    let dir = tempfile::tempdir().unwrap();
    let server = node.pod("srv").ip.to_string();
    let udp_log = dir.path().join("udp");
    for port in ["9001", "9101"] {
        node.serve(
            "srv",
            "udp sink",
            "python3",
            &[&script("datapath_peer.py"), "udp-sink", port, udp_log.to_str().unwrap()],
        );
    }
    let log = sniff(&mut node, "srv", dir.path());
    let config = config(&node, &[("cli", "client"), ("srv", "server")], conntrack);
    node.start_weir(&config, &[("server.yaml", SERVER_UDP_POLICY)]);

    // 4000 bytes over a 1500-byte MTU: three fragments, sent by cli's kernel
    let big = |tag: &str| format!("{tag}-{}", "x".repeat(4000));
    let udp_send = |port: &str, msg: &str| {
        let status = node
            .in_pod("cli", "python3")
            .args([&script("datapath_peer.py"), "udp-send", &server, port, msg])
            .status()
            .unwrap();
        assert!(status.success());
    };
    wait_for("a fragmented datagram to the allowed port", Duration::from_secs(10), || {
        udp_send("9001", &big("allowed"));
        read(&udp_log).contains("allowed-xxxx")
    });
    assert!(!seen(&log, "fragment").is_empty(), "the datagram was not fragmented:\n{}", read(&log));
    let line = read(&udp_log).lines().find(|l| l.contains("allowed-")).unwrap().to_string();
    assert_eq!(line.matches('x').count(), 4000, "not reassembled whole");

    udp_send("9101", &big("denied"));
    // fragments whose first was never seen
    let before = node.weir().datapath_drops("fragment_without_first");
    send(&node, "cli", &["frag-tail", &server, "9001", "777"]);
    wait_drops(&node, "fragment_without_first", before);
    settle();
    assert!(!read(&udp_log).contains("denied-"), "{}", read(&udp_log));
    assert!(seen(&log, "offset 24").is_empty(), "a fragment without its first arrived:\n{}", read(&log));

    // weir's collector deletes the UDP entries once they expire (10 s)
    wait_for("expired entries collected", Duration::from_secs(30), || {
        node.weir().metric("weir_datapath_conntrack_expired_total") > 0
    });
    let entries = node.weir().metric("weir_datapath_conntrack_entries{endpoint=\"cli\"}");
    assert_eq!(entries, 0, "cli's entries are all expired and collected");
    // every record went with its datagram's last fragment, or expired
    wait_for("no fragment records held", Duration::from_secs(40), || {
        ["cli", "srv"]
            .iter()
            .all(|pod| node.weir().metric(&format!("weir_datapath_fragment_records{{endpoint=\"{pod}\"}}")) == 0)
    });
}

/// Class 5, continued: a pod's unfinished fragmented datagrams are charged
/// to it. One pod sending 17,000 first fragments whose datagrams never
/// finish (more than the 16,384 records the LRU of old held) is stopped at
/// its limit (64, set in weir.yaml) and pushes out no other pod's record; a finished
/// datagram frees its record at once, so a pod sending more whole
/// datagrams than its limit loses none; unfinished ones are freed when
/// they expire.
#[test]
fn one_pods_unfinished_fragments_cannot_push_out_anothers() {
    let mut node = Node::new(&["cli", "srv", "oth"]);
    node.enter();
    let dir = tempfile::tempdir().unwrap();
    let server = node.pod("srv").ip.to_string();
    let udp_log = dir.path().join("udp");
    node.serve(
        "srv",
        "udp sink",
        "python3",
        &[&script("datapath_peer.py"), "udp-sink", "9001", udp_log.to_str().unwrap()],
    );
    // both pods may send to the port: the flooding one's first fragments pass
    let config = config(&node, &[("cli", "client"), ("srv", "server"), ("oth", "client")], FEW_FRAGMENTS);
    node.start_weir(&config, &[("server.yaml", SERVER_UDP_POLICY)]);
    let received = |tag: &str| read(&udp_log).lines().filter(|l| l.contains(tag)).count();
    wait_for("client UDP delivered", Duration::from_secs(10), || {
        send(&node, "cli", &["udp", "40000", &server, "9001", "plain"]);
        received("plain") > 0
    });

    // more whole datagrams than the limit: each frees its record at its end
    send(&node, "cli", &["frag-datagrams", &server, "9001", "1000", "400", "whole"]);
    wait_for("400 fragmented datagrams received", Duration::from_secs(20), || received("whole-") == 400);
    assert_eq!(node.weir().datapath_drops("fragment_endpoint_limit"), 0);
    let records = |pod: &str| node.weir().metric(&format!("weir_datapath_fragment_records{{endpoint=\"{pod}\"}}"));
    wait_for("cli's records freed", Duration::from_secs(5), || {
        node.weir().metrics().contains("weir_datapath_fragment_records{endpoint=\"cli\"} 0")
    });

    // cli's datagram is half sent when oth floods
    let survivor = format!("survivor-{}", "s".repeat(100));
    send(&node, "cli", &["frag-part", &server, "9001", "4242", &survivor, "first"]);
    send(&node, "oth", &["frag-heads", &server, "9001", "20000", "17000"]);
    let refused = wait_drops(&node, "fragment_endpoint_limit", 15_000);
    assert!(refused <= 17_000 - 64, "{refused} first fragments refused: oth was held below its limit");
    let held = records("oth");
    assert!((64..=64 + 4).contains(&held), "oth holds {held} records, its limit is 64");
    node.weir().wait_flow("", "oth's drop flow", |f| {
        f.verdict == Verdict::Dropped
            && f.reason.as_deref().is_some_and(|r| r.contains("limit of unfinished fragmented datagrams"))
            && f.source.labels.iter().any(|l| l == "k8s:app=client")
            && f.source.address.ip().to_string() == node.pod("oth").ip.to_string()
    });
    send(&node, "cli", &["frag-part", &server, "9001", "4242", &survivor, "rest"]);
    wait_for("cli's datagram completed after the flood", Duration::from_secs(10), || received("survivor-") == 1);

    // oth's records expire (30 s) and are collected: it may send again
    wait_for("oth's records collected", Duration::from_secs(60), || records("oth") == 0);
    send(&node, "oth", &["frag-datagrams", &server, "9001", "50000", "3", "again"]);
    wait_for("oth's datagrams received", Duration::from_secs(10), || received("again-") == 3);
}

/// ICMP errors about a tracked connection's packet pass (here srv's kernel
/// answering "port unreachable" to the client's allowed datagram, which
/// srv's egress policy alone would drop); an error quoting a tuple that no
/// connection has is judged by policy like any ICMP, and dropped; so is one
/// quoting a live connection that is not the sender's to report on.
#[test]
fn icmp_errors_pass_only_for_tracked_connections() {
    let mut node = Node::new(&["cli", "srv", "oth"]);
    node.enter();
    let dir = tempfile::tempdir().unwrap();
    let (client, server) = (node.pod("cli").ip.to_string(), node.pod("srv").ip.to_string());
    let log = sniff(&mut node, "cli", dir.path());
    let config = config(&node, &[("cli", "client"), ("srv", "server")], SHORT_LIVED);
    node.start_weir(&config, &[("server.yaml", SERVER_SILENT)]);

    // nothing listens on srv:9001: its kernel answers with an ICMP error
    wait_for("srv's port unreachable", Duration::from_secs(10), || {
        send(&node, "cli", &["udp", "41000", &server, "9001", "to-closed-port"]);
        !seen(&log, &format!("icmp {server} > {client} 3")).is_empty()
    });
    // a forged error quoting a tuple no connection has, and one quoting a
    // later fragment of the live one (payload where the ports would be)
    send(&node, "srv", &["icmp-error", &client, &client, &server, "41001", "9001", "unrelated"]);
    send(&node, "srv", &["icmp-error", &client, &client, &server, "41000", "9001", "later-fragment", "100"]);
    settle();
    assert!(seen(&log, "unrelated").is_empty(), "an unrelated ICMP error passed:\n{}", read(&log));
    assert!(seen(&log, "later-fragment").is_empty(), "an error quoting a later fragment passed:\n{}", read(&log));
    node.weir().wait_flow("", "the unrelated error's drop", |f| f.verdict == Verdict::Dropped && f.protocol == "icmp");

    // the client's live connection to `oth`: srv may not report on it (a pod
    // answers only about packets sent to it), whatever its egress allows
    let other = node.pod("oth").ip.to_string();
    send(&node, "cli", &["udp", "41002", &other, "9001", "to-other"]);
    send(&node, "srv", &["icmp-error", &client, &client, &other, "41002", "9001", "forged-on-live"]);
    settle();
    assert!(seen(&log, "forged-on-live").is_empty(), "an error about another's connection passed:\n{}", read(&log));
}

/// `icmps`: the monitor may ping srv (echo requests, IPv4 type 8) and
/// nothing else of ICMP; the client, allowed a TCP port, may not ping.
const PINGABLE_SERVER: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: pingable}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: monitor}}]
      icmps: [{fields: [{type: EchoRequest}]}]
    - fromEndpoints: [{matchLabels: {app: client}}]
      toPorts: [{ports: [{port: "9000", protocol: TCP}]}]
"#;

/// ICMP type rules in the kernel: a message passes when an `icmps` rule
/// names its type for its sender, whatever else that sender may do.
#[test]
fn icmps_rules_let_only_the_named_icmp_types_through() {
    let mut node = Node::new(&["cli", "srv", "mon"]);
    node.enter();
    let dir = tempfile::tempdir().unwrap();
    let (server, monitor) = (node.pod("srv").ip.to_string(), node.pod("mon").ip.to_string());
    let at_server = sniff(&mut node, "srv", dir.path());
    let at_monitor = sniff(&mut node, "mon", dir.path());
    let config = config(&node, &[("cli", "client"), ("srv", "server"), ("mon", "monitor")], SHORT_LIVED);
    node.start_weir(&config, &[("server.yaml", PINGABLE_SERVER)]);

    // the monitor's echo request arrives, and srv's kernel answers it. Id 0:
    // the tuple every other ICMP type has (no id), which must open nothing
    // for them
    send(&node, "mon", &["icmp", &server, "8", "0", "monitor-ping"]);
    wait_for("the monitor's echo request at srv", Duration::from_secs(5), || {
        !seen(&at_server, "monitor-ping").is_empty()
    });
    wait_for("srv's echo reply at the monitor", Duration::from_secs(5), || {
        !seen(&at_monitor, &format!("icmp {server} > {monitor} 0 0 ")).is_empty()
    });
    // a timestamp request (type 13) from the monitor, an echo request from
    // the client: no rule names them
    send(&node, "mon", &["icmp", &server, "13", "4712", "monitor-timestamp"]);
    send(&node, "cli", &["icmp", &server, "8", "4713", "client-ping"]);
    let refused = node.weir().wait_flow("", "the timestamp's drop", |f| {
        f.verdict == Verdict::Dropped && f.protocol == "icmp" && f.source.labels.iter().any(|l| l == "k8s:app=monitor")
    });
    assert!(refused.reason.as_deref().unwrap_or_default().contains("ICMP type"), "{refused:?}");
    // the kernel's flows carry the message's type
    assert_eq!(refused.icmp_type, Some(13), "{refused:?}");
    let allowed = node.weir().wait_flow("", "the monitor's echo request allowed", |f| {
        f.verdict == Verdict::Forwarded
            && f.protocol == "icmp"
            && f.source.labels.iter().any(|l| l == "k8s:app=monitor")
    });
    assert_eq!(allowed.icmp_type, Some(8), "{allowed:?}");
    node.weir().wait_flow("", "the client's ping's drop", |f| {
        f.verdict == Verdict::Dropped && f.protocol == "icmp" && f.source.labels.iter().any(|l| l == "k8s:app=client")
    });
    settle();
    for payload in ["monitor-timestamp", "client-ping"] {
        assert!(seen(&at_server, payload).is_empty(), "{payload} reached srv:\n{}", read(&at_server));
    }
}

/// `datapath.marks` moved out of the default nibble, where another plugin
/// marks: the redirect rule, the proxy's upstream leg and the programs all
/// use the moved values; packets another plugin marked with the default
/// nibble's "from the proxy" or "to the proxy" values (`0x0a00`, `0x0200`:
/// Cilium's) are judged like any other; a successor with other marks is
/// refused while this weir runs, though both are pid 1 (as in Kubernetes);
/// and a restart moves them.
#[test]
fn moved_marks_are_weirs_own_and_foreign_ones_are_judged() {
    let mut node = Node::new(&["cli", "srv"]);
    node.enter();
    let server = node.pod("srv").ip.to_string();
    node.serve("srv", "http server", "python3", &[&script("datapath_peer.py"), "http", &server, "80"]);
    let endpoints = node.endpoints_yaml(&[("cli", "client"), ("srv", "server")]);
    let moved = "  marks: {mask: 0x3000, to_proxy: 0x1000, from_proxy: 0x2000, identity: 0x3000}\n";
    let config = format!("{BASE}{}", endpoints.replacen("datapath:\n", &format!("datapath:\n{moved}"), 1));
    // each weir pid 1 of a PID namespace of its own, as in a pod
    let pid_1 = ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc"];
    node.try_start_weir_wrapped(&config, &[("server.yaml", SERVER_HTTP_POLICY)], &pid_1).unwrap();
    let url = |path: &str| format!("http://{server}{path}");
    wait_for("the server in its pod", Duration::from_secs(10), || node.curl("cli", &url("/public/ready")).0 == 200);

    // redirected (the local-delivery rule matches the moved TO_PROXY mark),
    // judged at L7, and dialled onward from cli's address with the moved
    // FROM_PROXY mark, which srv's veth lets pass: read as any other mark, a
    // packet from cli's address without cli's identity would be dropped
    let (status, body) = node.curl("cli", &url("/public/a"));
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with(&format!("client={}:", node.pod("cli").ip)), "{body}");
    assert_eq!(node.curl("cli", &url("/private")).0, 403);
    let rules = output("ip", &["rule", "show"]);
    assert!(rules.contains("fwmark 0x1000/0x3000 iif lo lookup main"), "{rules}");
    let status = node.datapath_status();
    let in_force = "marks mask 0x3000 to_proxy 0x1000 from_proxy 0x2000 identity 0x3000";
    assert!(status.lines().any(|l| l == in_force), "{status}");
    // the pooled upstream connection to srv carries the moved mark
    let sockets = output("ss", &["-Htne", "dst", &format!("{server}:80")]);
    let marks: Vec<u32> = sockets
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("fwmark:0x"))
        .filter_map(|hex| u32::from_str_radix(hex, 16).ok())
        .collect();
    assert!(!marks.is_empty() && marks.iter().all(|m| m & 0x3f00 == 0x2000), "{sockets}");

    // the node's own packets to srv, marked by another plugin in the
    // default nibble: not weir's marks here, so srv's ingress policy judges
    // them (the node is not allowed in); a port each, for telling the drops
    // apart (a SYN let through to 81 would be refused, not dropped)
    for (foreign, port) in [("0x0a00/0x0f00", 80), ("0x0200/0x0f00", 81)] {
        let _ = output("iptables", &["-t", "mangle", "-F", "OUTPUT"]);
        let mark = ["-t", "mangle", "-A", "OUTPUT", "-d", &server, "-j", "MARK", "--set-xmark", foreign];
        let marked = std::process::Command::new("iptables").args(mark).output().unwrap();
        assert!(marked.status.success(), "iptables: {}", String::from_utf8_lossy(&marked.stderr));
        let to = format!("http://{server}:{port}/public/node");
        let from_node = output("curl", &["-s", "-m", "3", "-o", "/dev/null", "-w", "%{http_code}", &to]);
        assert_eq!(from_node, "000", "the node's packets marked {foreign} got through");
        let dropped = node.weir().wait_flow("", &format!("the drop of the node's SYN marked {foreign}"), |f| {
            f.verdict == Verdict::Dropped && f.port == port && f.source.labels.iter().any(|l| l == "reserved:host")
        });
        assert!(dropped.destination.labels.iter().any(|l| l == "k8s:app=server"), "{dropped:?}");
    }
    let _ = output("iptables", &["-t", "mangle", "-F", "OUTPUT"]);

    // a successor on the default marks would strand this weir's proxied
    // connections: refused, and this weir serves on
    let config_file = node.weir().dir.path().join("weir.yaml");
    let text = std::fs::read_to_string(&config_file).unwrap();
    std::fs::write(&config_file, text.replace(moved, "")).unwrap();
    let refused = node.weir.as_mut().unwrap().replace_refused();
    assert!(refused.contains("datapath.marks differ from those of the running weir"), "{refused}");
    assert_eq!(node.curl("cli", &url("/public/b")).0, 200, "{}", node.weir().log());

    // a crash and a start on the default marks (not a hand-over) moves them:
    // the moved rules are replaced, not kept beside the new ones
    // SAFETY: signalling our own child (unshare, which takes weir with it).
    unsafe { libc::kill(node.weir().pid() as i32, libc::SIGKILL) };
    wait_for("the killed weir to go", Duration::from_secs(10), || !node.weir.as_mut().unwrap().is_running());
    node.start_weir(&format!("{BASE}{endpoints}"), &[("server.yaml", SERVER_HTTP_POLICY)]);
    let rules = output("ip", &["rule", "show"]);
    assert!(rules.contains("fwmark 0x200/0xf00 iif lo lookup main") && !rules.contains("0x3000"), "{rules}");
    for pref in ["9000:", "9001:"] {
        assert_eq!(rules.lines().filter(|l| l.starts_with(pref)).count(), 1, "{rules}");
    }
    assert_eq!(node.curl("cli", &url("/public/c")).0, 200, "{}", node.weir().log());

    // a rule at weir's priority that is not weir's: weir refuses to start,
    // and leaves it where it is
    // SAFETY: signalling our own child.
    unsafe { libc::kill(node.weir().pid() as i32, libc::SIGKILL) };
    wait_for("the killed weir to go", Duration::from_secs(10), || !node.weir.as_mut().unwrap().is_running());
    let foreign = ["rule", "add", "pref", "9000", "fwmark", "0x5/0xff", "lookup", "main"];
    assert!(std::process::Command::new("ip").args(foreign).status().unwrap().success());
    let refused = node
        .try_start_weir_wrapped(&format!("{BASE}{endpoints}"), &[("server.yaml", SERVER_HTTP_POLICY)], &[])
        .expect_err("weir started beside another rule at its priority");
    assert!(refused.contains("rule priority 9000 is taken by another rule (fwmark 0x5/0xff lookup main)"), "{refused}");
    let rules = output("ip", &["rule", "show"]);
    assert!(rules.contains("9000:\tfrom all fwmark 0x5/0xff lookup main"), "{rules}");
}

/// A command's standard output (run in this thread's namespace: the node's).
fn output(program: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(program).args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
