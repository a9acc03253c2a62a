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
    // the client has gone; the proxy's pooled connection to the server pod
    // is open, but a server's socket never joins (the upstream leg is not
    // spliced), and the bindings' map is only sized for use when splicing
    let status = node.datapath_status();
    let map = |name: &str| status.lines().find(|l| l.contains(name)).unwrap_or_default().to_string();
    assert!(map("/WEIR_SPLICE_BOUND ").contains(" 0/65536 entries"), "{status}");
    let bindings = if splice == Some(true) { " 0/65536 entries" } else { " 0/1 entries" };
    assert!(map("/WEIR_SPLICE_BINDINGS ").contains(bindings), "{status}");
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

/// Python, run in the client pod: one GET from source port 40000, whose
/// handshake the test slows down; prints the answer's status line and the
/// bytes TCP delivered (tcpi_bytes_received).
fn slow_client_program(client: &str, server: &str) -> String {
    format!(
        "import socket,struct\n\
         s=socket.socket()\n\
         s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
         s.bind(('{client}',40000))\n\
         s.settimeout(8)\n\
         s.connect(('{server}',80))\n\
         s.sendall(b'GET /public/mine HTTP/1.1\\r\\nHost: srv\\r\\nConnection: close\\r\\n\\r\\n')\n\
         data=b''\n\
         while True:\n\
         \x20   chunk=s.recv(65536)\n\
         \x20   if not chunk: break\n\
         \x20   data+=chunk\n\
         info=s.getsockopt(socket.IPPROTO_TCP,socket.TCP_INFO,256)\n\
         print(data.split(b'\\r\\n')[0].decode(), struct.unpack_from('Q',info,128)[0], len(data))\n"
    )
}

/// Python, run in another pod: the client's and the server's addresses on
/// its own loopback, and a connection between them under the client's
/// tuple; prints how many bytes that connection's client end read.
fn impostor_program(client: &str, server: &str) -> String {
    format!(
        "import socket\n\
         l=socket.socket(); l.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
         l.bind(('{server}',80)); l.listen(1)\n\
         c=socket.socket(); c.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
         c.bind(('{client}',40000)); c.connect(('{server}',80))\n\
         a,_=l.accept()\n\
         print('established',flush=True)\n\
         c.settimeout(4)\n\
         got=b''\n\
         try:\n\
         \x20   while True:\n\
         \x20       chunk=c.recv(65536)\n\
         \x20       if not chunk: break\n\
         \x20       got+=chunk\n\
         except socket.timeout:\n\
         \x20   pass\n\
         print(len(got))\n"
    )
}

/// A socket in another network namespace can carry a live connection's
/// tuple (a pod with CAP_NET_ADMIN puts the client's and the server's
/// addresses on its loopback and connects between them). While the real
/// client's handshake is slowed down, such an impostor is established
/// first under the client's tuple; without the binding it took the client's
/// place in the splice map and read the proxy's answer. Only the socket
/// whose SYN crossed the client's veth may join: the client gets its answer,
/// spliced, and the impostor nothing.
#[test]
fn a_socket_of_another_namespace_cannot_take_a_spliced_connections_place() {
    let mut node = Node::new(&["cli", "srv", "evl"]);
    node.enter();
    let (client, server) = (node.pod("cli").ip.to_string(), node.pod("srv").ip.to_string());
    node.serve("srv", "http server", "python3", &[&peer_script(), "http", &server, "80"]);
    let endpoints = node.endpoints_yaml(&[("cli", "client"), ("srv", "server"), ("evl", "other")]);
    let endpoints = endpoints.replacen("datapath:\n", "datapath:\n  splice: true\n", 1);
    node.start_weir(&format!("{BASE}{endpoints}"), &[("server.yaml", SERVER_HTTP_POLICY)]);
    let url = format!("http://{server}/public/ready");
    wait_for("the server through the proxy", Duration::from_secs(10), || node.curl("cli", &url).0 == 200);

    // the proxy's SYN-ACKs to the client are dropped until the impostor is
    // established (the client's SYN is sent again after 1 s)
    let syn_ack = ["OUTPUT", "-p", "tcp", "-d", &client, "--dport", "40000", "--tcp-flags", "SYN,ACK", "SYN,ACK"];
    let iptables = |verb: &str| {
        let out = std::process::Command::new("iptables").arg(verb).args(syn_ack).args(["-j", "DROP"]).output().unwrap();
        assert!(out.status.success(), "iptables {verb}: {}", String::from_utf8_lossy(&out.stderr));
    };
    iptables("-A");
    // (ends by itself: its socket times out after 8 s)
    let real = node
        .in_pod("cli", "python3")
        .args(["-c", &slow_client_program(&client, &server)])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    for address in [&client, &server] {
        let out =
            node.in_pod("evl", "ip").args(["addr", "add", &format!("{address}/32"), "dev", "lo"]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let mut impostor = node
        .in_pod("evl", "python3")
        .args(["-c", &impostor_program(&client, &server)])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(impostor.stdout.take().unwrap()));
    assert_eq!(lines.next().unwrap().unwrap(), "established");
    iptables("-D");
    let stolen: u64 = lines.next().unwrap().unwrap().trim().parse().unwrap();
    assert!(impostor.wait().unwrap().success());
    let out = real.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let fields: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(stolen, 0, "the impostor read {stolen} bytes of the client's answer");
    assert!(fields.len() == 5 && fields[..3] == ["HTTP/1.1", "200", "OK"], "{text}");
    let (received, read): (u64, u64) = (fields[3].parse().unwrap(), fields[4].parse().unwrap());
    assert!(received < read / 10, "TCP delivered {received} of {read} bytes: the client's socket was not spliced");
}
