//! Splicing (sockmap, `datapath.splice: true`): what the HTTP proxy writes
//! to a local pod goes straight into the pod's socket, past TCP. A client pod
//! keeps one connection through the proxy, reads its answers, and asks its
//! own socket (TCP_INFO) how many bytes TCP delivered: with splicing almost
//! none; by default (off, docs/datapath.md says why) all of them.

use std::time::Duration;

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
