//! The eBPF datapath on a dual-stack node: pods with IPv4 and IPv6
//! addresses, real clients and servers in them (curl, Python TCP and HTTP
//! servers bound to IPv6), weir with `--datapath ebpf`. IPv6 is judged as
//! IPv4 is: the same policies, conntrack of its own, the L7 redirect to the
//! proxy's IPv6 listener, anti-spoofing, neighbour discovery passing.

use std::time::Duration;

use weir::observe::flow::Verdict;
use weir_integration::node::{Node, SERVER_SILENT, SERVER_UDP_POLICY, peer_script};
use weir_integration::wait_for;

const BASE: &str = "admin: ADMIN\nworkers: 1\nlog_flows: true\n";

/// srv takes TCP 7000 from the client (L3/L4), and HTTP GET /public* on 80
/// (L7); `other` is denied outright. srv's egress is not enforced.
const SERVER_POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server-dual}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: client}}]
      toPorts:
        - ports: [{port: "7000", protocol: TCP}]
    - fromEndpoints: [{matchLabels: {app: client}}]
      toPorts:
        - ports: [{port: "80", protocol: TCP}]
          rules:
            http: [{method: GET, path: "/public.*"}]
  ingressDeny:
    - fromEndpoints: [{matchLabels: {app: other}}]
"#;

/// `other` may send only to the server's TCP 7000 (which the server refuses).
const OTHER_EGRESS: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: other-egress}
spec:
  endpointSelector: {matchLabels: {app: other}}
  egress:
    - toEndpoints: [{matchLabels: {app: server}}]
      toPorts:
        - ports: [{port: "7000", protocol: TCP}]
"#;

const LABELS: &[(&str, &str)] = &[("cli", "client"), ("srv", "server"), ("oth", "other")];

fn ip6(node: &Node, pod: &str) -> String {
    node.pod(pod).ip6.expect("a dual-stack pod").to_string()
}

/// One line through a fresh TCP connection from `pod` to `[host]:port`: the
/// echo, or what went wrong (`error ...`, `closed`).
fn echo_once(node: &Node, pod: &str, host: &str, port: u16, line: &str) -> String {
    let out = node.run_in(pod, "python3", &[&peer_script(), "lines", host, &port.to_string()], &format!("{line}\n"));
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if text.is_empty() { format!("error {}", String::from_utf8_lossy(&out.stderr).trim()) } else { text }
}

/// Python, run in `pod`: one ICMPv6 echo request to `to`; "reply" or "none".
fn ping6(node: &Node, pod: &str, to: &str) -> String {
    let program = format!(
        "import socket,struct\n\
         s=socket.socket(socket.AF_INET6,socket.SOCK_RAW,socket.IPPROTO_ICMPV6)\n\
         s.settimeout(2)\n\
         s.sendto(struct.pack('!BBHHH',128,0,0,0x4242,1)+b'weir',('{to}',0))\n\
         try:\n\
         \x20   while True:\n\
         \x20       data,_=s.recvfrom(1500)\n\
         \x20       if data[0]==129 and data[4:6]==b'\\x42\\x42':\n\
         \x20           print('reply'); break\n\
         except socket.timeout:\n\
         \x20   print('none')\n"
    );
    let out = node.in_pod(pod, "python3").args(["-c", &program]).output().expect("python3");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Python, run in `pod`: one ICMP echo request to `to` (checksummed by
/// hand: raw IPv4 ICMP is not); "reply" or "none".
fn ping4(node: &Node, pod: &str, to: &str) -> String {
    let program = format!(
        "import socket,struct\n\
         def csum(b):\n\
         \x20   s=sum(struct.unpack('!%dH'%(len(b)//2),b)); s=(s>>16)+(s&0xffff); s+=s>>16\n\
         \x20   return ~s&0xffff\n\
         m=struct.pack('!BBHHH',8,0,0,0x4343,1)+b'weir'\n\
         m=m[:2]+struct.pack('!H',csum(m))+m[4:]\n\
         s=socket.socket(socket.AF_INET,socket.SOCK_RAW,socket.IPPROTO_ICMP)\n\
         s.settimeout(2)\n\
         s.sendto(m,('{to}',0))\n\
         try:\n\
         \x20   while True:\n\
         \x20       data,_=s.recvfrom(1500)\n\
         \x20       if data[20]==0 and data[24:26]==b'\\x43\\x43':\n\
         \x20           print('reply'); break\n\
         except socket.timeout:\n\
         \x20   print('none')\n"
    );
    let out = node.in_pod(pod, "python3").args(["-c", &program]).output().expect("python3");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn start(node: &mut Node) {
    node.enter();
    let (server, server6) = (node.pod("srv").ip.to_string(), ip6(node, "srv"));
    for (name, host) in [("echo v4", server.clone()), ("echo v6", server6.clone())] {
        node.serve("srv", name, "python3", &[&peer_script(), "tcp-echo", &host, "7000"]);
    }
    node.serve("srv", "http v6", "python3", &[&peer_script(), "http", &server6, "80"]);
    node.serve("oth", "echo", "python3", &[&peer_script(), "tcp-echo", "::", "7100"]);
    let config = format!("{BASE}{}", node.endpoints_yaml(LABELS));
    node.start_weir(&config, &[("server.yaml", SERVER_POLICY), ("other.yaml", OTHER_EGRESS)]);
    wait_for("the IPv6 echo server through the datapath", Duration::from_secs(10), || {
        echo_once(node, "cli", &server6, 7000, "ready") == "ready"
    });
    let ready = format!("http://[{server6}]/public/ready");
    wait_for("the IPv6 HTTP server through the proxy", Duration::from_secs(10), || node.curl("cli", &ready).0 == 200);
}

#[test]
fn ipv6_is_judged_by_the_same_policy_as_ipv4() {
    let mut node = Node::dual_stack(&["cli", "srv", "oth"]);
    start(&mut node);
    let (server, server6, client6) = (node.pod("srv").ip.to_string(), ip6(&node, "srv"), ip6(&node, "cli"));

    // the same rule lets the client in over both families
    assert_eq!(echo_once(&node, "cli", &server, 7000, "over-v4"), "over-v4");
    assert_eq!(echo_once(&node, "cli", &server6, 7000, "over-v6"), "over-v6");

    // `other` is denied over IPv6 as over IPv4: its SYN is dropped in the
    // kernel, and the drop is a flow with IPv6 addresses and the rule's name
    assert!(echo_once(&node, "oth", &server6, 7000, "hostile").starts_with("error"), "other got through");
    let drop = node.weir().wait_flow("", "the IPv6 drop flow", |f| {
        f.verdict == Verdict::Dropped && f.source.address.ip().is_ipv6() && f.port == 7000
    });
    assert_eq!(drop.source.address.ip().to_string(), ip6(&node, "oth"));
    assert_eq!(drop.destination.address.ip().to_string(), server6);
    assert!(drop.source.labels.iter().any(|l| l == "k8s:app=other"), "{drop:?}");
    assert!(drop.reason.as_deref().unwrap_or_default().contains("server-dual"), "{drop:?}");

    // a port no rule names is closed to the client too (default deny)
    assert!(echo_once(&node, "cli", &server6, 7001, "closed-port").starts_with("error"));
    node.weir().wait_flow("", "the default-deny flow", |f| {
        f.verdict == Verdict::Dropped && f.port == 7001 && f.source.address.ip().to_string() == client6
    });

    // srv takes nothing from `other`, yet its own connection out to `other`
    // gets its replies: conntrack of IPv6 connections, as of IPv4 ones
    assert_eq!(echo_once(&node, "srv", &ip6(&node, "oth"), 7100, "out-and-back"), "out-and-back");

    // neighbour discovery passes only on the link: a neighbour solicitation
    // sent to srv's routed address (hop limit 255, as ND's) is ICMPv6 that
    // srv's ingress allows from no one, and is dropped like any other
    let smuggle = format!(
        "import socket\n\
         s=socket.socket(socket.AF_INET6,socket.SOCK_RAW,socket.IPPROTO_ICMPV6)\n\
         s.setsockopt(socket.IPPROTO_IPV6,socket.IPV6_UNICAST_HOPS,255)\n\
         s.sendto(bytes([135,0,0,0,0,0,0,0])+socket.inet_pton(socket.AF_INET6,'{server6}')+b'smuggled',('{server6}',0))\n"
    );
    let out = node.in_pod("cli", "python3").args(["-c", &smuggle]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    node.weir().wait_flow("", "the routed neighbour solicitation dropped", |f| {
        f.verdict == Verdict::Dropped && f.protocol == "icmpv6" && f.destination.address.ip().to_string() == server6
    });

    // a router advertisement is not a pod's to send: `other`'s, to all
    // nodes, is judged by its egress policy (which allows it nothing there)
    let advertise = "from scapy.all import *\n\
         sendp(Ether(dst='33:33:00:00:00:01')/IPv6(dst='ff02::1',hlim=255)/ICMPv6ND_RA(routerlifetime=1800)\
         /ICMPv6NDOptPrefixInfo(prefix='fd00:bad::',prefixlen=64),iface='eth0',verbose=False)\n";
    let out = node.in_pod("oth", "python3").args(["-c", advertise]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    node.weir().wait_flow("", "the pod's router advertisement dropped", |f| {
        f.verdict == Verdict::Dropped && f.protocol == "icmpv6" && f.destination.address.ip().to_string() == "ff02::1"
    });

    // a packet with a local pod's address that did not leave through that
    // pod's veth (here: sent from the node itself) does not get its identity:
    // the client may reach srv:7000, this SYN may not
    let spoofed_before = node.weir().datapath_drops("spoofed_source");
    let forged_syn = format!(
        "from scapy.all import *\nsend(IPv6(src='{client6}',dst='{server6}')/TCP(sport=41000,dport=7000,flags='S'),verbose=False)\n"
    );
    let out = std::process::Command::new("python3").args(["-c", &forged_syn]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_for("the off-veth packet with the client's address counted as spoofed", Duration::from_secs(10), || {
        node.weir().datapath_drops("spoofed_source") > spoofed_before
    });

    // ICMPv6: echo to an unenforced pod and back; to srv, whose ingress
    // allows no ICMP from anyone, nothing comes back
    assert_eq!(ping6(&node, "cli", &ip6(&node, "oth")), "reply");
    assert_eq!(ping6(&node, "cli", &server6), "none");

    // a pod may send only from its own IPv6 address: the client borrowing
    // the other pod's address is dropped and counted
    let spoofed_before = node.weir().datapath_drops("spoofed_source");
    let forge = format!(
        "import socket\n\
         s=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM)\n\
         s.setsockopt(socket.IPPROTO_IPV6,75,1)\n\
         s.bind(('{}',0))\n\
         s.sendto(b'forged',('{server6}',7000))\n",
        ip6(&node, "oth")
    );
    let out = node.in_pod("cli", "python3").args(["-c", &forge]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_for("the spoofed IPv6 datagram counted", Duration::from_secs(10), || {
        node.weir().datapath_drops("spoofed_source") > spoofed_before
    });

    // `weir datapath status` names both addresses and the IPv6 table's entries
    let status = node.datapath_status();
    let endpoint = format!("endpoint {} {},{client6} identity ", node.pod("cli").interface, node.pod("cli").ip);
    assert!(status.lines().any(|l| l.starts_with(&endpoint)), "no {endpoint:?} in:\n{status}");
    let conntrack6 = status
        .lines()
        .find(|l| l.starts_with(&format!("map {}/maps/WEIR_CONNTRACK6 ", node.bpffs)))
        .unwrap_or_else(|| panic!("no IPv6 conntrack map in:\n{status}"));
    let live: u64 = conntrack6.split('(').nth(1).and_then(|t| t.split(' ').next()).unwrap().parse().unwrap();
    assert!(live >= 1, "{conntrack6}");
    assert!(status.lines().any(|l| l.starts_with("ipv6 route table 2004 local default dev lo")), "{status}");
    assert!(status.lines().any(|l| l.starts_with("ipv6 rule 9001:") && l.contains("lookup 2004")), "{status}");
}

#[test]
fn ipv6_l7_rules_go_through_the_proxy_with_the_senders_identity() {
    let mut node = Node::dual_stack(&["cli", "srv", "oth"]);
    start(&mut node);
    let (server6, client6) = (ip6(&node, "srv"), ip6(&node, "cli"));
    let url = |path: &str| format!("http://[{server6}]{path}");

    // allowed: reaches the server once, from the client's own IPv6 address
    let (status, body) = node.curl("cli", &url("/public/a"));
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with(&format!("client={client6}:")), "source address not kept: {body}");
    assert_eq!(body.matches("path=").count(), 1, "{body}");

    // refused at L7 by the proxy
    let (status, body) = node.curl("cli", &url("/private"));
    assert_eq!((status, body.as_str()), (403, "Access denied\r\n"));
    let denied = node.weir().wait_flow("", "the IPv6 L7 denial", |f| {
        f.http().is_some_and(|h| h.path == "/private") && f.verdict == Verdict::Denied
    });
    assert_eq!(denied.source.address.ip().to_string(), client6);
    assert!(denied.source.labels.iter().any(|l| l == "k8s:app=client"), "{denied:?}");
    assert!(denied.destination.labels.iter().any(|l| l == "k8s:app=server"), "{denied:?}");
    assert_eq!(denied.listener, "ebpf");

    // `other` never reaches the proxy: dropped in the kernel
    assert_eq!(node.curl("oth", &url("/public/a")).0, 0);
}

/// The client may ask `kube-dns` about `*.example.com` (over UDP and TCP) and
/// reach `api.example.com` on TCP 9000, wherever DNS says it is.
const CLIENT_FQDN_POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-egress}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
    - toEndpoints: [{matchLabels: {app: kube-dns}}]
      toPorts:
        - ports: [{port: "53", protocol: ANY}]
          rules:
            dns: [{matchPattern: "*.example.com"}]
    - toFQDNs: [{matchName: api.example.com}]
      toPorts:
        - ports: [{port: "9000", protocol: TCP}]
"#;

fn dig6(node: &Node, resolver: &str, args: &[&str]) -> (Option<String>, String) {
    let out = node
        .in_pod("cli", "dig")
        .arg(format!("@{resolver}"))
        .args(["+time=2", "+tries=1"])
        .args(args)
        .output()
        .expect("dig");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text
        .lines()
        .find_map(|l| l.split("status: ").nth(1))
        .map(|rest| rest.split([',', ';']).next().unwrap_or("").trim().to_string());
    (status, text)
}

#[test]
fn dns_over_ipv6_is_judged_and_aaaa_answers_open_to_fqdns_in_the_kernel() {
    let mut node = Node::dual_stack(&["cli", "dns", "ext"]);
    node.enter();
    let (resolver6, external6) = (ip6(&node, "dns"), ip6(&node, "ext"));
    node.serve("ext", "echo", "python3", &[&peer_script(), "tcp-echo", &external6, "9000"]);
    let records =
        [format!("api.example.com. 2 IN AAAA {external6}"), format!("www.example.com. 300 IN AAAA {external6}")];
    let resolver_address = node.pod("dns").ip6.unwrap().into();
    let _unbound = node.unbound_at("dns", resolver_address, &["example.com."], &records);
    // ext is no endpoint: its address is the world's
    let config = format!(
        "{BASE}datapath:\n  bpffs: {}\nendpoints:\n  \
         - {{name: cli, addresses: [{}, \"{}\"], interface: {}, labels: {{app: client}}}}\n  \
         - {{name: dns, addresses: [{}, \"{resolver6}\"], interface: {}, labels: {{app: kube-dns}}}}\n",
        node.bpffs,
        node.pod("cli").ip,
        ip6(&node, "cli"),
        node.pod("cli").interface,
        node.pod("dns").ip,
        node.pod("dns").interface
    );
    node.start_weir(&config, &[("client.yaml", CLIENT_FQDN_POLICY)]);

    // nothing learned yet: the world server is closed to the client
    assert!(echo_once(&node, "cli", &external6, 9000, "early").starts_with("error"));

    // DNS over IPv6, UDP and TCP, to the resolver the pod addressed: weir's
    // IPv6 DNS sockets answer refusals and pass the rest on
    let (status, text) = dig6(&node, &resolver6, &["evil.example.org", "AAAA"]);
    assert_eq!(status.as_deref(), Some("REFUSED"), "{text}");
    let (status, text) = dig6(&node, &resolver6, &["+tcp", "www.example.com", "AAAA"]);
    assert_eq!(status.as_deref(), Some("NOERROR"), "DNS over TCP: {text}");
    let flows = node.weir().flows("protocol=dns");
    let denied = flows.iter().find(|f| f.verdict == Verdict::Denied).expect("a denied DNS flow");
    assert!(denied.source.labels.iter().any(|l| l == "k8s:app=client"), "identity from the mark: {denied:?}");
    assert_eq!(denied.destination.address.to_string(), format!("[{resolver6}]:53"), "the resolver the pod asked");
    // www.example.com has the same address, but toFQDNs names api.example.com
    assert!(echo_once(&node, "cli", &external6, 9000, "other-name").starts_with("error"));

    // the AAAA answer for the allowed name opens its address for the TTL
    let (status, text) = dig6(&node, &resolver6, &["api.example.com", "AAAA"]);
    assert_eq!(status.as_deref(), Some("NOERROR"), "{text}");
    assert!(text.contains(&external6), "{text}");
    assert_eq!(echo_once(&node, "cli", &external6, 9000, "learned"), "learned");
    // TTL 2 s: the kernel forgets the address, new connections are dropped
    wait_for("the learned address to expire", Duration::from_secs(10), || {
        echo_once(&node, "cli", &external6, 9000, "late").starts_with("error")
    });
}

#[test]
fn ipv6_l7_ingress_from_another_node_is_judged_by_the_receiving_nodes_proxy() {
    let labels = [("cli", "client"), ("oth", "other"), ("srv", "server")];
    let mut a = Node::dual_stack_in_subnet(&["cli", "oth"], 1);
    let mut b = Node::dual_stack_in_subnet(&["srv"], 2);
    Node::wire(&mut a, &mut b, &labels);
    let (server6, client6) = (ip6(&b, "srv"), ip6(&a, "cli"));
    b.serve("srv", "http v6", "python3", &[&peer_script(), "http", &server6, "80"]);
    b.serve("srv", "echo v6", "python3", &[&peer_script(), "tcp-echo", &server6, "7000"]);
    a.enter();
    a.start_weir(&format!("{BASE}{}", a.endpoints_yaml(&labels)), &[("server.yaml", SERVER_POLICY)]);
    a.leave();
    b.enter();
    b.start_weir(&format!("{BASE}{}", b.endpoints_yaml(&labels)), &[("server.yaml", SERVER_POLICY)]);

    // over the wire in IPv6: B's weir_from_netdev hands the connection to
    // B's proxy, which judges it with A's pod's identity from B's ipcache
    let url = |path: &str| format!("http://[{server6}]{path}");
    wait_for("the server across the wire", Duration::from_secs(10), || a.curl("cli", &url("/public/ready")).0 == 200);
    let (status, body) = a.curl("cli", &url("/public/a"));
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with(&format!("client={client6}:")), "source address not kept: {body}");
    assert_eq!(body.matches("path=").count(), 1, "{body}");
    assert_eq!(a.curl("cli", &url("/private")).0, 403);
    let denied = b.weir().wait_flow("", "the L7 denial on B", |f| {
        f.http().is_some_and(|h| h.path == "/private") && f.verdict == Verdict::Denied
    });
    assert!(denied.source.labels.iter().any(|l| l == "k8s:app=client"), "{denied:?}");
    assert_eq!(denied.source.address.ip().to_string(), client6);

    // L3/L4 across the wire: allowed for the client, dropped for `other`
    assert_eq!(echo_once(&a, "cli", &server6, 7000, "across"), "across");
    assert!(echo_once(&a, "oth", &server6, 7000, "hostile").starts_with("error"));
    assert_eq!(a.curl("oth", &url("/public/a")).0, 0);
    b.weir().wait_flow("", "B's drop of the other pod", |f| {
        f.verdict == Verdict::Dropped && f.source.address.ip().to_string() == ip6(&a, "oth")
    });
}

/// IPv6 fragments (a Fragment extension header; the sender's kernel splits a
/// 4000-byte datagram over the 1500-byte MTU) are judged by their first
/// fragment's ports: whole to the allowed port, nothing to another, and a
/// later fragment whose first was never seen is dropped.
#[test]
fn ipv6_fragments_follow_their_first_fragments_verdict() {
    let mut node = Node::dual_stack(&["cli", "srv"]);
    node.enter();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("udp");
    let (server6, client6) = (ip6(&node, "srv"), ip6(&node, "cli"));
    let sink = format!(
        "import socket,select\n\
         socks=[]\n\
         for port in (9001,9101):\n\
         \x20   s=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM); s.bind(('{server6}',port)); socks.append(s)\n\
         while True:\n\
         \x20   for s in select.select(socks,[],[])[0]:\n\
         \x20       data=s.recv(65535)\n\
         \x20       open('{}','a').write(str(s.getsockname()[1])+' '+data.decode()+'\\n')\n",
        log.display()
    );
    node.serve("srv", "udp sink", "python3", &["-c", &sink]);
    let config = format!("{BASE}{}", node.endpoints_yaml(&[("cli", "client"), ("srv", "server")]));
    node.start_weir(&config, &[("server.yaml", SERVER_UDP_POLICY)]);
    let send = |port: u16, tag: &str| {
        let program = format!(
            "import socket\nsocket.socket(socket.AF_INET6,socket.SOCK_DGRAM).sendto(b'{tag}-'+b'x'*4000,('{server6}',{port}))\n"
        );
        assert!(node.in_pod("cli", "python3").args(["-c", &program]).status().unwrap().success());
    };
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_for("a fragmented datagram to the allowed port", Duration::from_secs(10), || {
        send(9001, "allowed");
        read().contains("9001 allowed-")
    });
    let line = read().lines().find(|l| l.contains("allowed-")).unwrap().to_string();
    assert_eq!(line.matches('x').count(), 4000, "not reassembled whole");

    send(9101, "denied");
    // the later fragments of a datagram whose first fragment never came
    let before = node.weir().datapath_drops("fragment_without_first");
    let tail = format!(
        "from scapy.all import *\n\
         frags=fragment6(IPv6(src='{client6}',dst='{server6}')/IPv6ExtHdrFragment(id=0x5eed)/UDP(sport=40000,dport=9001)/Raw(b'tail-'+b'y'*3000),1280)\n\
         [send(f,verbose=False) for f in frags[1:]]\n"
    );
    let out = node.in_pod("cli", "python3").args(["-c", &tail]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_for("the headless fragments dropped", Duration::from_secs(10), || {
        node.weir().datapath_drops("fragment_without_first") > before
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(!read().contains("denied-"), "{}", read());
    assert!(!read().contains("tail-"), "{}", read());
}

/// `cli` may reach, on port 9000, 10.0.0.0/8 except 10.99.0.0/16, and
/// every IPv6 address — the IPv6 world and, by name, the NAT64 prefix.
const CLIENT_NAT64_POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-nat64}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
    - toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.99.0.0/16]}]
      toPorts:
        - ports: [{port: "9000", protocol: TCP}]
    - toCIDR: ["::/0", "64:ff9b::/96"]
      toPorts:
        - ports: [{port: "9000", protocol: TCP}]
"#;

/// A pod behind NAT64 (RFC 6052's `64:ff9b::/96`) reaches IPv4 through a
/// gateway: an address there is judged as the IPv4 address it embeds, so
/// IPv4 rules allow it and IPv4 excepts deny it, whatever IPv6 rules say
/// (before, it was the IPv6 world, and an IPv6 allow let the pod past every
/// IPv4 deny; a rule naming the prefix did the same). `ext` stands in for
/// the gateway's far side: it holds the two translated addresses.
#[test]
fn nat64_addresses_are_judged_as_the_ipv4_addresses_they_embed() {
    // 10.98.0.1 and 10.99.0.1, as NAT64 spells them
    judged_as_embedded_ipv4("", "64:ff9b::/96", "64:ff9b::a62:1", "64:ff9b::a63:1");
}

/// The same through a network-specific prefix (RFC 8215's local-use range),
/// the kind a gateway to private IPv4 addresses uses, named in weir.yaml:
/// before it could be, it was IPv6 to weir, and the IPv6 allow reached the
/// excepted address.
#[test]
fn a_network_specific_nat64_prefix_is_judged_as_ipv4_once_named() {
    let prefixes = "  nat64_prefixes: [\"64:ff9b:1:a::/96\"]\n";
    judged_as_embedded_ipv4(prefixes, "64:ff9b:1:a::/96", "64:ff9b:1:a::a62:1", "64:ff9b:1:a::a63:1");
}

/// A /56 (RFC 6052 §2.2): the IPv4 address is split around bits 64 to 71,
/// 10 before them, 98.0.1 after — so the octet that tells the allowed
/// address from the excepted one (98, 99) is read only past the u octet.
/// Before such prefixes were read, weir.yaml naming one was refused.
#[test]
fn a_nat64_prefix_shorter_than_96_bits_embeds_ipv4_around_the_u_octet() {
    let prefixes = "  nat64_prefixes: [\"64:ff9b:1:100::/56\"]\n";
    judged_as_embedded_ipv4(prefixes, "64:ff9b:1:100::/56", "64:ff9b:1:10a:62:1::", "64:ff9b:1:10a:63:1::");
}

/// `ext` holds `allowed` and `excepted` (the NAT64 spellings of 10.98.0.1
/// and 10.99.0.1 in `prefix`), which `datapath_config` makes NAT64 prefixes
/// ("" for the default).
fn judged_as_embedded_ipv4(datapath_config: &str, prefix: &str, allowed: &str, excepted: &str) {
    let mut node = Node::dual_stack(&["cli", "ext"]);
    let (ext_netns, ext_interface) = (node.pod("ext").netns.clone(), node.pod("ext").interface.clone());
    for address in [allowed, excepted] {
        let added = std::process::Command::new("ip")
            .args(["-n", &ext_netns, "addr", "add", &format!("{address}/128"), "dev", "eth0", "nodad"])
            .status()
            .unwrap();
        assert!(added.success());
    }
    let routed = std::process::Command::new("ip")
        .args(["-n", &node.netns, "-6", "route", "add", prefix, "dev", &ext_interface])
        .status()
        .unwrap();
    assert!(routed.success());
    node.enter();
    node.serve("ext", "echo", "python3", &[&peer_script(), "tcp-echo", "::", "9000"]);
    let config = format!(
        "{BASE}datapath:\n  bpffs: {}\n{datapath_config}endpoints:\n  \
         - {{name: cli, addresses: [{}, \"{}\"], interface: {}, labels: {{app: client}}}}\n",
        node.bpffs,
        node.pod("cli").ip,
        ip6(&node, "cli"),
        node.pod("cli").interface,
    );
    node.start_weir(&config, &[("client.yaml", CLIENT_NAT64_POLICY)]);
    wait_for("10.98.0.1 through NAT64", Duration::from_secs(10), || {
        echo_once(&node, "cli", allowed, 9000, "allowed") == "allowed"
    });
    // the except of the IPv4 rule holds for its NAT64 spelling, though IPv6
    // rules allow all of IPv6 (and name the well-known prefix)
    assert!(echo_once(&node, "cli", excepted, 9000, "excepted").starts_with("error"));
    // those IPv6 rules still hold for IPv6 outside the prefix
    assert_eq!(echo_once(&node, "cli", &ip6(&node, "ext"), 9000, "plain"), "plain");
    let drop = node.weir().wait_flow("", "the drop of the excepted address", |f| {
        f.verdict == Verdict::Dropped && f.destination.address.ip().to_string() == excepted
    });
    assert_eq!(drop.port, 9000);
}

/// The client may ping srv over IPv6 (ICMPv6 echo requests) and send it no
/// other ICMP: neither IPv4's echo request (the rule names IPv6's) nor
/// another ICMPv6 type.
const PINGABLE_OVER_IPV6: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: pingable-v6}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: client}}]
      icmps: [{fields: [{type: EchoRequest, family: IPv6}]}]
"#;

#[test]
fn icmps_rules_name_icmpv6_types_of_their_family_only() {
    let mut node = Node::dual_stack(&["cli", "srv"]);
    node.enter();
    let config = format!("{BASE}{}", node.endpoints_yaml(&[("cli", "client"), ("srv", "server")]));
    node.start_weir(&config, &[("server.yaml", PINGABLE_OVER_IPV6)]);
    let (server, server6) = (node.pod("srv").ip.to_string(), ip6(&node, "srv"));

    assert_eq!(ping6(&node, "cli", &server6), "reply", "the named ICMPv6 echo request");

    assert_eq!(ping4(&node, "cli", &server), "none", "IPv4's echo request: the rule names IPv6's");
    node.weir().wait_flow("", "the IPv4 echo request's drop", |f| {
        f.verdict == Verdict::Dropped && f.protocol == "icmp" && f.destination.address.ip().to_string() == server
    });

    // an ICMPv6 node information query (type 139) is no echo request
    let query = format!(
        "import socket\n\
         s=socket.socket(socket.AF_INET6,socket.SOCK_RAW,socket.IPPROTO_ICMPV6)\n\
         s.sendto(bytes([139,0,0,0,0,0,0,0])+b'weir-query',('{server6}',0))\n"
    );
    let out = node.in_pod("cli", "python3").args(["-c", &query]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let drop = node.weir().wait_flow("", "the ICMPv6 query's drop", |f| {
        f.verdict == Verdict::Dropped && f.protocol == "icmpv6" && f.destination.address.ip().to_string() == server6
    });
    assert!(drop.reason.as_deref().unwrap_or_default().contains("ICMP type"), "{drop:?}");
    // node information query: ICMPv6 type 139, in the kernel's flow
    assert_eq!(drop.icmp_type, Some(139), "{drop:?}");
    assert_eq!(ping6(&node, "cli", &server6), "reply", "and the echo request still passes");
}

/// An ICMPv6 error quoting a packet with extension headers (a packet too
/// big about a fragmented datagram quotes its Fragment header) is read past
/// them to the ports: about the client's live connection it passes; about
/// another tuple, or quoting a later fragment (payload where the ports
/// would be), it is judged by srv's egress policy and dropped.
#[test]
fn icmpv6_errors_are_read_past_the_quoted_extension_headers() {
    let mut node = Node::dual_stack(&["cli", "srv"]);
    node.enter();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("icmpv6");
    let (server6, client6) = (ip6(&node, "srv"), ip6(&node, "cli"));
    // every ICMPv6 message cli's kernel hands a raw socket, by its last bytes
    let sink = format!(
        "import socket\n\
         s=socket.socket(socket.AF_INET6,socket.SOCK_RAW,socket.IPPROTO_ICMPV6)\n\
         while True:\n\
         \x20   data=s.recv(65535)\n\
         \x20   open('{}','a').write(str(data[0])+' '+data[-12:].decode(errors='replace')+'\\n')\n",
        log.display()
    );
    node.serve("cli", "icmpv6 sink", "python3", &["-c", &sink]);
    let config = format!("{BASE}{}", node.endpoints_yaml(&[("cli", "client"), ("srv", "server")]));
    node.start_weir(&config, &[("server.yaml", SERVER_SILENT)]);
    let read = || std::fs::read_to_string(&log).unwrap_or_default();

    // the client's live connection: UDP from port 41000 to srv:9001
    let open = format!(
        "import socket\n\
         s=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM); s.bind(('{client6}',41000))\n\
         s.sendto(b'hello',('{server6}',9001))\n"
    );
    assert!(node.in_pod("cli", "python3").args(["-c", &open]).status().unwrap().success());
    // packets too big from srv, each quoting a datagram with extension headers
    let too_big = |quoted: &str, marker: &str| {
        let program = format!(
            "from scapy.all import *\n\
             send(IPv6(src='{server6}',dst='{client6}')/ICMPv6PacketTooBig(mtu=1280)\
             /IPv6(src='{client6}',dst='{server6}')/{quoted}/Raw(b'{marker}'),verbose=False)\n"
        );
        let out = node.in_pod("srv", "python3").args(["-c", &program]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    let fragment = "IPv6ExtHdrFragment(m=1,offset=0,id=7)";
    let hop_by_hop = "IPv6ExtHdrHopByHop()/IPv6ExtHdrDestOpt()";
    wait_for("the packet too big quoting a first fragment", Duration::from_secs(10), || {
        too_big(&format!("{fragment}/UDP(sport=41000,dport=9001)"), "ptb-fragment");
        read().contains("2 ptb-fragment")
    });
    too_big(&format!("{hop_by_hop}/UDP(sport=41000,dport=9001)"), "ptb-options!");
    wait_for("the packet too big quoting options", Duration::from_secs(10), || read().contains("2 ptb-options!"));

    // the same headers about a tuple no connection has, and a later
    // fragment of the live one: no rule lets srv send them
    too_big(&format!("{fragment}/UDP(sport=41001,dport=9001)"), "ptb-unrelate");
    too_big("IPv6ExtHdrFragment(m=0,offset=100,id=7)/UDP(sport=41000,dport=9001)", "ptb-laterfra");
    node.weir().wait_flow("", "the errors' drops", |f| {
        f.verdict == Verdict::Dropped && f.protocol == "icmpv6" && f.icmp_type == Some(2)
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(!read().contains("ptb-unrelate"), "{}", read());
    assert!(!read().contains("ptb-laterfra"), "{}", read());
}
