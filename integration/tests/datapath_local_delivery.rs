//! Local delivery (`datapath.host_routing`): allowed packets between two
//! pods of one node go from the sender's veth straight into the receiver
//! (`bpf_redirect_peer`) with `bpf`, the default, and through the node's
//! routing with `kernel`. Either way the policy is the same and the packet
//! looks as if a router forwarded it (TTL one less).

use std::process::{Child, Stdio};
use std::time::Duration;

use weir_integration::node::{Node, SERVER_HTTP_POLICY, peer_script};
use weir_integration::wait_for;

const BASE: &str = "admin: ADMIN\nworkers: 1\nlog_flows: true\n";

/// `app: server` takes everything from `app: client` (L3), nothing from
/// `app: other`.
const SERVER_L3_POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server-l3}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: client}}]
"#;

/// A node of `cli`, `srv`, `oth` with a web server in `srv` and weir running
/// `policy` with `datapath.host_routing: mode`.
fn start(mode: &str, policy: &str, dual_stack: bool) -> Node {
    let mut node =
        if dual_stack { Node::dual_stack(&["cli", "srv", "oth"]) } else { Node::new(&["cli", "srv", "oth"]) };
    node.enter();
    let server = node.pod("srv").ip.to_string();
    node.serve("srv", "http server", "python3", &[&peer_script(), "http", &server, "80"]);
    if let Some(server6) = node.pod("srv").ip6 {
        node.serve("srv", "http server v6", "python3", &[&peer_script(), "http", &server6.to_string(), "80"]);
    }
    let endpoints = node.endpoints_yaml(&[("cli", "client"), ("srv", "server"), ("oth", "other")]);
    let endpoints = endpoints.replacen("datapath:\n", &format!("datapath:\n  host_routing: {mode}\n"), 1);
    node.start_weir(&format!("{BASE}{endpoints}"), &[("server.yaml", policy)]);
    let url = format!("http://{server}/public/ready");
    wait_for("the server in its pod", Duration::from_secs(10), || node.curl("cli", &url).0 == 200);
    node
}

/// Packets the node has sent out of `pod`'s host veth (into the pod).
fn into_pod(node: &Node, pod: &str) -> u64 {
    let out = std::process::Command::new("ip")
        .args(["-n", &node.netns, "-s", "-j", "link", "show", "dev", &node.pod(pod).interface])
        .output()
        .expect("ip link");
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j output");
    links[0]["stats64"]["tx"]["packets"].as_u64().expect("tx packets")
}

/// The endpoint line of `weir datapath status` for `pod`.
fn status_line(node: &Node, pod: &str) -> String {
    let status = node.datapath_status();
    let prefix = format!("endpoint {} ", node.pod(pod).interface);
    status.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("no {prefix:?} in:\n{status}")).to_string()
}

/// A UDP receiver in `pod` on `address`:9009 that prints the TTL (hop
/// limit) of the first datagram it gets, or `none` after 3 s.
fn ttl_receiver(node: &Node, pod: &str, address: &str) -> Child {
    let (family, level, option, answer) = if address.contains(':') {
        ("AF_INET6", "IPPROTO_IPV6", "socket.IPV6_RECVHOPLIMIT", "IPV6_HOPLIMIT")
    } else {
        // IP_RECVTTL (12): Python's socket module does not name it
        ("AF_INET", "IPPROTO_IP", "12", "IP_TTL")
    };
    let program = format!(
        "import socket\n\
         s=socket.socket(socket.{family},socket.SOCK_DGRAM)\n\
         s.setsockopt(socket.{level},{option},1)\n\
         s.bind(('{address}',9009)); s.settimeout(3)\n\
         print('ready',flush=True)\n\
         try:\n\
         \x20   _,anc,_,_=s.recvmsg(100,socket.CMSG_SPACE(4))\n\
         \x20   print([int.from_bytes(d[:4],'little') for _,t,d in anc if t==socket.{answer}][0])\n\
         except socket.timeout:\n\
         \x20   print('none')\n"
    );
    let mut child = node
        .in_pod(pod, "python3")
        .args(["-c", &program])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.as_mut().unwrap()), &mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    child
}

/// Send one datagram from `pod` to `address`:9009 with this TTL (hop
/// limit), and read what the receiver saw.
fn ttl_seen(node: &Node, pod: &str, address: &str, ttl: u8, receiver: Child) -> String {
    let (family, level, option) = if address.contains(':') {
        ("AF_INET6", "IPPROTO_IPV6", "IPV6_UNICAST_HOPS")
    } else {
        ("AF_INET", "IPPROTO_IP", "IP_TTL")
    };
    let program = format!(
        "import socket\n\
         s=socket.socket(socket.{family},socket.SOCK_DGRAM)\n\
         s.setsockopt(socket.{level},socket.{option},{ttl})\n\
         s.sendto(b'ttl',('{address}',9009))\n"
    );
    let sent = node.in_pod(pod, "python3").args(["-c", &program]).status().expect("python3");
    assert!(sent.success());
    let out = receiver.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Twenty HTTP exchanges from `cli` to `srv`, each on a new connection:
/// how many packets the node's host veths sent into `srv` and into `cli`.
fn packets_routed_by_the_node(node: &Node, server: &str) -> (u64, u64) {
    let before = (into_pod(node, "srv"), into_pod(node, "cli"));
    for i in 0..20 {
        let (status, body) = node.curl("cli", &format!("http://{server}/public/{i}"));
        assert_eq!(status, 200, "{body}");
    }
    (into_pod(node, "srv") - before.0, into_pod(node, "cli") - before.1)
}

#[test]
fn allowed_packets_between_local_pods_skip_the_node_and_denied_ones_still_drop() {
    let node = start("bpf", SERVER_L3_POLICY, false);
    let server = node.pod("srv").ip.to_string();
    // both pods have answered the node's ARP (the first exchange went by
    // the node's routing, which asked): weir knows where they are
    let learned =
        || ["cli", "srv"].iter().all(|pod| status_line(&node, pod).ends_with("delivered past the node's stack"));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !learned() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(learned(), "{}", node.datapath_status());

    // twenty connections, about ten packets each way: none of them left the
    // node through the receivers' host veths (a stray ARP or two may)
    let (into_server, into_client) = packets_routed_by_the_node(&node, &server);
    assert!(into_server <= 4 && into_client <= 4, "the node still routed {into_server} / {into_client} packets");

    // as a router: one hop, TTL one less; a packet whose TTL runs out here
    // is not delivered (the node's routing drops it and says so)
    let receiver = ttl_receiver(&node, "srv", &server);
    assert_eq!(ttl_seen(&node, "cli", &server, 64, receiver), "63");
    let receiver = ttl_receiver(&node, "srv", &server);
    assert_eq!(ttl_seen(&node, "cli", &server, 1, receiver), "none");

    // the policy is the one the node's routing had: `other` is dropped at
    // the sender's veth (a policy change on a delivered connection is
    // datapath_ebpf's a_policy_change_reaches_established_connections_at_once,
    // which runs with local delivery on, the default)
    assert_eq!(node.curl("oth", &format!("http://{server}/public/a")).0, 0);
}

#[test]
fn l7_connections_still_reach_the_proxy_with_local_delivery_on() {
    // the L7 rule's port goes to the proxy, whatever local delivery does
    let node = start("bpf", SERVER_HTTP_POLICY, false);
    let server = node.pod("srv").ip;
    for _ in 0..3 {
        assert_eq!(node.curl("cli", &format!("http://{server}/private")).0, 403);
        let (status, body) = node.curl("cli", &format!("http://{server}/public/a"));
        assert_eq!((status, body.matches("path=").count()), (200, 1), "{body}");
    }
}

#[test]
fn kernel_host_routing_leaves_pod_traffic_to_the_node() {
    let node = start("kernel", SERVER_L3_POLICY, false);
    let server = node.pod("srv").ip.to_string();
    assert!(status_line(&node, "srv").ends_with("delivered by the node's routing"), "{}", status_line(&node, "srv"));
    let (into_server, into_client) = packets_routed_by_the_node(&node, &server);
    // SYN, request, ACKs and FIN at least, each way, for each of twenty
    assert!(into_server >= 60 && into_client >= 60, "routed {into_server} / {into_client}");
    let receiver = ttl_receiver(&node, "srv", &server);
    assert_eq!(ttl_seen(&node, "cli", &server, 64, receiver), "63");
    assert_eq!(node.curl("oth", &format!("http://{server}/public/a")).0, 0);
}

#[test]
fn ipv6_packets_between_local_pods_skip_the_node_too() {
    let node = start("bpf", SERVER_L3_POLICY, true);
    let server6 = node.pod("srv").ip6.expect("dual-stack").to_string();
    let url = format!("http://[{server6}]/public/six");
    // the first exchange goes by the node's routing, whose neighbour
    // solicitations the pods answer: from then on, past the node
    assert_eq!(node.curl("cli", &url).0, 200);
    let receiver = ttl_receiver(&node, "srv", &server6);
    assert_eq!(ttl_seen(&node, "cli", &server6, 64, receiver), "63");
    let before = into_pod(&node, "srv");
    for _ in 0..20 {
        assert_eq!(node.curl("cli", &url).0, 200);
    }
    let routed = into_pod(&node, "srv") - before;
    assert!(routed <= 4, "the node still routed {routed} IPv6 packets into srv");
    assert_eq!(node.curl("oth", &url).0, 0);
}

#[test]
fn pods_already_talking_when_weir_starts_are_delivered_past_the_node_at_once() {
    let mut node = Node::new(&["cli", "srv", "oth"]);
    node.enter();
    let server = node.pod("srv").ip.to_string();
    node.serve("srv", "http server", "python3", &[&peer_script(), "http", &server, "80"]);
    // before weir: the node routes, and its neighbour table knows both pods
    let url = format!("http://{server}/public/before");
    wait_for("the server, routed by the node", Duration::from_secs(10), || node.curl("cli", &url).0 == 200);
    let endpoints = node.endpoints_yaml(&[("cli", "client"), ("srv", "server"), ("oth", "other")]);
    node.start_weir(&format!("{BASE}{endpoints}"), &[("server.yaml", SERVER_L3_POLICY)]);
    // no neighbour message needs to cross a veth (the pods' and the node's
    // entries are fresh): weir read the node's table when it attached
    for pod in ["cli", "srv"] {
        let line = status_line(&node, pod);
        assert!(line.ends_with("delivered past the node's stack"), "{line}");
    }
    let (into_server, into_client) = packets_routed_by_the_node(&node, &server);
    assert!(into_server <= 4 && into_client <= 4, "the node still routed {into_server} / {into_client} packets");
}
