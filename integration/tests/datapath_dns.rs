//! DNS policy and `toFQDNs` with the eBPF datapath: a client pod that knows
//! nothing of weir looks names up at a resolver pod (unbound) and connects to
//! a server outside the cluster (a pod weir does not manage: `reserved:world`).
//! The programs hand the pod's DNS traffic (UDP and TCP) to weir's DNS proxy;
//! the addresses it learns become kernel policy for that pod, for their TTL.

use std::path::Path;
use std::time::Duration;

use weir::observe::flow::Verdict;
use weir_integration::node::Node;
use weir_integration::resolver::{DigAnswer, PodResolvConf};
use weir_integration::wait_for;

fn peer_script() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python/datapath_peer.py").display().to_string()
}

const POLICY: &str = r#"
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
        - ports: [{port: "8080", protocol: TCP}]
          rules:
            http: [{method: GET, path: "/hello.*"}]
        - ports: [{port: "9000", protocol: TCP}]
"#;

fn dig_in(node: &Node, pod: &str, server: &str, args: &[&str]) -> DigAnswer {
    let output = node
        .in_pod(pod, "dig")
        .arg(format!("@{server}"))
        .args(["+time=2", "+tries=1"])
        .args(args)
        .output()
        .expect("dig");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let status = text
        .lines()
        .find_map(|l| l.split("status: ").nth(1))
        .map(|rest| rest.split([',', ';']).next().unwrap_or("").trim().to_string());
    let answers: Vec<String> = text
        .lines()
        .skip_while(|l| !l.starts_with(";; ANSWER SECTION"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    DigAnswer { status, answers, flags: String::new(), output: text }
}

#[test]
fn pods_get_refused_names_and_learned_addresses_open_for_their_ttl() {
    let mut node = Node::new(&["cli", "dns", "ext"]);
    node.enter();
    let (client, resolver, external) =
        (node.pod("cli").ip.to_string(), node.pod("dns").ip.to_string(), node.pod("ext").ip.to_string());
    let script = peer_script();
    node.serve("ext", "http server", "python3", &[&script, "http", &external, "8080"]);
    node.serve("ext", "tcp echo", "python3", &[&script, "tcp-echo", &external, "9000"]);
    let records = [format!("api.example.com. 2 IN A {external}"), format!("www.example.com. 300 IN A {external}")];
    let _unbound = node.unbound("dns", &["example.com."], &records);
    // the external server is no endpoint: its address is the world's
    let config = format!(
        "admin: ADMIN\nworkers: 1\ndatapath:\n  bpffs: {}\nendpoints:\n  \
         - {{name: cli, address: {client}, interface: {}, labels: {{app: client}}}}\n  \
         - {{name: dns, address: {resolver}, interface: {}, labels: {{app: kube-dns}}}}\n",
        node.bpffs,
        node.pod("cli").interface,
        node.pod("dns").interface
    );
    node.start_weir(&config, &[("client.yaml", POLICY)]);
    let api = format!("http://{external}:8080/");

    // nothing learned yet: the world server is closed to the client
    assert_eq!(node.curl("cli", &api).0, 0, "blocked before any lookup");

    // DNS over UDP, to the resolver the pod addressed; weir answers refusals
    let refused = dig_in(&node, "cli", &resolver, &["evil.example.org", "A"]);
    assert_eq!(refused.status.as_deref(), Some("REFUSED"), "{}", refused.output);
    let tcp = dig_in(&node, "cli", &resolver, &["+tcp", "www.example.com", "A"]);
    assert_eq!(tcp.status.as_deref(), Some("NOERROR"), "DNS over TCP: {}", tcp.output);
    let flows = node.weir().flows("protocol=dns");
    let denied = flows.iter().find(|f| f.verdict == Verdict::Denied).expect("a denied DNS flow");
    assert!(denied.source.labels.iter().any(|l| l == "k8s:app=client"), "identity from the mark: {denied:?}");
    assert_eq!(denied.destination.address.to_string(), format!("{resolver}:53"), "the resolver the pod asked");
    assert!(flows.iter().any(|f| f.dns().is_some_and(|d| d.transport == "tcp") && f.verdict == Verdict::Forwarded));
    // www.example.com points at the server too, but toFQDNs names only api.example.com
    assert_eq!(node.curl("cli", &api).0, 0, "an address learned for another name stays closed");

    // the pod's own resolver (glibc, from its resolv.conf) looks the name up;
    // the connection right after it is allowed (the answer waited for the maps)
    let _resolv = PodResolvConf::new(&node.pod("cli").netns, &resolver);
    let (status, body) = node.curl("cli", "http://api.example.com:8080/hello");
    assert_eq!(status, 200, "{body}");
    // a world server sees the node's address (the proxy's upstream leg is
    // not steered back by any program on the server's side)
    assert!(body.starts_with("client=169.254.1.1:") && body.contains("path=/hello"), "{body}");
    // the HTTP rules of the toFQDNs port apply too: the connection went through the proxy
    let (status, body) = node.curl("cli", "http://api.example.com:8080/secret");
    assert_eq!(status, 403, "{body}");
    let http = node.weir().flows("protocol=http&verdict=denied");
    assert!(
        http.iter()
            .any(|f| f.source.labels.iter().any(|l| l == "k8s:app=client")
                && f.http().is_some_and(|h| h.path == "/secret")),
        "{http:?}"
    );

    // a connection opened while the answer held is not cut when it expires
    let mut lines = node.line_client("cli", &external, 9000);
    assert_eq!(lines.exchange("one"), "one");
    // TTL 2s: the kernel forgets the address, new connections are dropped
    // (until then this path is refused at L7 with 403; after, at L3/L4)
    wait_for("the learned address to expire", Duration::from_secs(10), || node.curl("cli", &api).0 == 0);
    assert_eq!(lines.exchange("two"), "two", "the established connection survived the expiry");
    drop(lines);
    let drop = node.weir().flows("verdict=dropped");
    assert!(drop.iter().any(|f| f.destination.address.ip().to_string() == external), "{drop:?}");
}
