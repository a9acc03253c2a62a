//! Splicing (sockmap): with `datapath.splice: true` what the HTTP proxy
//! writes to a local pod goes straight into the pod's socket, past TCP; with
//! `datapath.splice_pods: true` so do both sides of a pod-to-pod connection
//! no L7 rule covers. A client pod asks its own socket (TCP_INFO) how many
//! bytes TCP carried: with splicing almost none; by default (off,
//! docs/datapath.md says why) all of them.

use std::time::Duration;

use weir::observe::flow::Verdict;
use weir_integration::node::{Node, SERVER_HTTP_POLICY, peer_script};
use weir_integration::wait_for;

const BASE: &str = "admin: ADMIN\nworkers: 1\nlog_flows: true\n";

/// Python, run in the client pod: `n` keep-alive GETs on one connection;
/// prints the bytes the client read and the bytes TCP received
/// (tcpi_bytes_received, at offset 128 of struct tcp_info).
fn client_program(server: &str, n: usize) -> String {
    format!(
        "import socket,struct\n\
         s=socket.create_connection(('{server}',80),timeout=5)\n\
         f=s.makefile('rb')\n\
         read=0\n\
         for i in range({n}):\n\
         \x20   s.sendall(b'GET /public/'+str(i).encode()+b' HTTP/1.1\\r\\nHost: srv\\r\\n\\r\\n')\n\
         \x20   length=0\n\
         \x20   while True:\n\
         \x20       line=f.readline(); read+=len(line)\n\
         \x20       if line.lower().startswith(b'content-length:'): length=int(line.split(b':')[1])\n\
         \x20       if line in (b'\\r\\n',b''): break\n\
         \x20   body=f.read(length); read+=len(body)\n\
         \x20   assert body.startswith(b'client='), body\n\
         info=s.getsockopt(socket.IPPROTO_TCP,socket.TCP_INFO,256)\n\
         print(read, struct.unpack_from('Q',info,128)[0])\n"
    )
}

/// (bytes the client read, bytes TCP delivered to it) over 50 requests.
fn read_and_received(splice: Option<bool>) -> (u64, u64) {
    let mut node = Node::new(&["cli", "srv", "oth"]);
    node.enter();
    let server = node.pod("srv").ip.to_string();
    node.serve("srv", "http server", "python3", &[&peer_script(), "http", &server, "80"]);
    let endpoints = node.endpoints_yaml(&[("cli", "client"), ("srv", "server"), ("oth", "other")]);
    let endpoints = match splice {
        Some(splice) => endpoints.replacen("datapath:\n", &format!("datapath:\n  splice: {splice}\n"), 1),
        None => endpoints,
    };
    node.start_weir(&format!("{BASE}{endpoints}"), &[("server.yaml", SERVER_HTTP_POLICY)]);
    let url = format!("http://{server}/public/ready");
    wait_for("the server through the proxy", Duration::from_secs(10), || node.curl("cli", &url).0 == 200);
    let out = node.in_pod("cli", "python3").args(["-c", &client_program(&server, 50)]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let numbers: Vec<u64> = text.split_whitespace().map(|n| n.parse().unwrap()).collect();
    // the answers came through the proxy (its flows), whichever way
    let flows = node.weir().flows("protocol=http");
    assert!(flows.iter().filter(|f| f.listener == "ebpf").count() >= 50, "{} flows", flows.len());
    (numbers[0], numbers[1])
}

#[test]
fn the_proxys_writes_to_a_local_pod_are_spliced_into_its_socket() {
    let (read, received) = read_and_received(Some(true));
    assert!(read > 5000, "{read} bytes read");
    // TCP delivered nothing of the answers (a few bytes may come before
    // the proxy's socket joined, none here: it joins before its first write)
    assert!(received < read / 10, "TCP delivered {received} of {read} bytes: not spliced");
}

#[test]
fn by_default_tcp_delivers_every_byte() {
    let (read, received) = read_and_received(None);
    assert!(read > 5000, "{read} bytes read");
    assert_eq!(received, read, "TCP delivered what the client read");
}

/// `app: client` may open TCP to `app: server` on `ports`, at L3/L4 only.
fn l4_policy(ports: &[&str]) -> String {
    let ports: Vec<String> = ports.iter().map(|p| format!("{{port: \"{p}\", protocol: TCP}}")).collect();
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: server-l4}}\nspec:\n  \
         endpointSelector: {{matchLabels: {{app: server}}}}\n  ingress:\n    \
         - fromEndpoints: [{{matchLabels: {{app: client}}}}]\n      toPorts: [{{ports: [{}]}}]\n",
        ports.join(", ")
    )
}

/// A node whose client pod may reach the server pod's echo server on 9000
/// (L3/L4 only), with `datapath.splice_pods` as given.
fn echo_node(splice_pods: Option<bool>) -> Node {
    let mut node = Node::new(&["cli", "srv"]);
    node.enter();
    let server = node.pod("srv").ip.to_string();
    node.serve("srv", "tcp echo", "python3", &[&peer_script(), "tcp-echo", &server, "9000"]);
    let endpoints = node.endpoints_yaml(&[("cli", "client"), ("srv", "server")]);
    let endpoints = match splice_pods {
        Some(on) => endpoints.replacen("datapath:\n", &format!("datapath:\n  splice_pods: {on}\n"), 1),
        None => endpoints,
    };
    node.start_weir(&format!("{BASE}{endpoints}"), &[("server.yaml", &l4_policy(&["9000"]))]);
    wait_for("the echo server", Duration::from_secs(10), || {
        node.in_pod("cli", "ncat").args(["-z", "-w", "1", &server, "9000"]).status().is_ok_and(|s| s.success())
    });
    node
}

/// Python, run in the client pod: 200 short lines, then 1 MiB of random
/// hex in 1,024 lines, each echoed back and compared; prints the bytes it
/// sent, the bytes it read, and what TCP carried: tcpi_bytes_acked (offset
/// 120 of struct tcp_info) and tcpi_bytes_received (128).
fn echo_program(server: &str) -> String {
    format!(
        "import os,socket,struct\n\
         s=socket.create_connection(('{server}',9000),timeout=5)\n\
         f=s.makefile('rb')\n\
         lines=[b'line %d\\n' % i for i in range(200)]+[os.urandom(512).hex().encode()+b'\\n' for _ in range(1024)]\n\
         sent=read=0\n\
         for line in lines:\n\
         \x20   s.sendall(line); sent+=len(line)\n\
         \x20   back=f.readline(); read+=len(back)\n\
         \x20   assert back==line, (line[:40], back[:40])\n\
         info=s.getsockopt(socket.IPPROTO_TCP,socket.TCP_INFO,256)\n\
         print(sent, read, struct.unpack_from('Q',info,120)[0], struct.unpack_from('Q',info,128)[0])\n"
    )
}

/// (sent, read, bytes TCP carried of what the client sent, bytes TCP
/// delivered to it) over one echoed connection.
fn echoed_over(node: &Node) -> [u64; 4] {
    let server = node.pod("srv").ip.to_string();
    let out = node.in_pod("cli", "python3").args(["-c", &echo_program(&server)]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let numbers: Vec<u64> = text.split_whitespace().map(|n| n.parse().unwrap()).collect();
    numbers.try_into().unwrap_or_else(|n| panic!("client printed {n:?}"))
}

#[test]
fn a_pod_to_pod_connection_is_spliced_both_ways_and_loses_nothing() {
    let node = echo_node(Some(true));
    let [sent, read, acked, received] = echoed_over(&node);
    assert!(sent > 1 << 20 && read == sent, "sent {sent}, read {read}");
    // neither side's writes went over TCP: the handshake's and the close's
    // segments carry no data
    assert!(acked < sent / 100, "TCP carried {acked} of the {sent} bytes the client sent: not spliced");
    assert!(received < read / 100, "TCP delivered {received} of the {read} bytes the client read: not spliced");
}

#[test]
fn by_default_a_pod_to_pod_connection_goes_over_tcp() {
    let node = echo_node(None);
    let [sent, read, acked, received] = echoed_over(&node);
    assert_eq!(read, sent);
    assert!(acked >= sent, "TCP carried {acked} of {sent}");
    assert_eq!(received, read, "TCP delivered what the client read");
}

/// The policy revision reaches spliced connections as it reaches those the
/// TC programs see: the next write after a change goes over TCP, where it
/// is judged again; taken away, the port's open connection stops at once.
#[test]
fn a_spliced_connection_is_judged_again_when_the_policy_changes() {
    let node = echo_node(Some(true));
    let server = node.pod("srv").ip.to_string();
    let mut client = node.line_client("cli", &server, 9000);
    for i in 0..20 {
        assert_eq!(client.exchange(&format!("line {i}")), format!("line {i}"));
    }
    let status = node.datapath_status();
    assert!(
        status.lines().any(|l| l.contains("WEIR_SPLICE_PAIRS") && l.contains(" 2/")),
        "both sockets are in the pair map:\n{status}"
    );

    let generation = node.weir().generation();
    node.weir().write_policy("server.yaml", &l4_policy(&["9000", "9001"]));
    node.weir().wait_generation_above(generation);
    assert_eq!(client.exchange("after an unrelated change"), "after an unrelated change");

    let generation = node.weir().generation();
    node.weir().write_policy("server.yaml", &l4_policy(&["9001"]));
    node.weir().wait_generation_above(generation);
    let refused = client.exchange("after the port was taken away");
    assert!(refused.starts_with("error"), "the spliced connection still passes: {refused}");
    let dropped = node.weir().wait_flow("", "the drop of a spliced connection's next write", |f| {
        f.verdict == Verdict::Dropped && f.port == 9000
    });
    assert!(dropped.reason.as_deref().is_some_and(|r| r.contains("no ingress rule")), "{dropped:?}");
}

/// Bytes spliced to a socket wait in a queue the kernel frees when the
/// socket leaves the map: a weir that stops while pods are spliced keeps
/// the map pinned, and their connection goes on whole; once it has closed,
/// `weir datapath cleanup` removes the pin.
#[test]
fn a_stopping_weir_leaves_spliced_connections_their_map() {
    let mut node = echo_node(Some(true));
    let server = node.pod("srv").ip.to_string();
    let mut client = node.line_client("cli", &server, 9000);
    assert_eq!(client.exchange("before"), "before");
    let config_dir = node.weir().config_dir().to_path_buf();
    let mut weir = node.weir.take().unwrap();
    assert!(weir.terminate().is_some_and(|s| s.success()), "{}", weir.log());
    let leftovers = node.leftovers();
    assert!(leftovers.contains("pin "), "the pair map's pin was removed:\n{leftovers}");
    assert!(weir.log().contains("still spliced"), "{}", weir.log());
    for i in 0..20 {
        assert_eq!(client.exchange(&format!("after {i}")), format!("after {i}"));
    }
    drop(client);
    // (from this process: `ip netns exec` would hide bpffs behind its own sysfs)
    wait_for("the pair map to empty and its pin to go", Duration::from_secs(10), || {
        let cleanup = std::process::Command::new(weir_integration::weir_bin())
            .args(["datapath", "cleanup", "--config"])
            .arg(&config_dir)
            .output()
            .unwrap();
        assert!(cleanup.status.success(), "{}", String::from_utf8_lossy(&cleanup.stderr));
        node.leftovers().is_empty()
    });
}
