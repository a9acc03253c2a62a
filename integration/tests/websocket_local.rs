//! WebSocket through weir: the upgrade request is judged like any request,
//! and after the upstream's 101 the connection is relayed both ways. Real
//! parts: the `websockets` library's client and echo server, nginx for an
//! upstream that declines upgrades.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use weir::observe::flow::Verdict;
use weir_integration::*;

fn config(upstream: SocketAddr, port: u16, listener_extra: &str) -> String {
    format!(
        "admin: ADMIN\n\
         endpoints:\n  - {{name: frontend, address: {FRONTEND}, labels: {{app: frontend}}}}\n  \
         - {{name: crawler, address: {CRAWLER}, labels: {{app: crawler}}}}\n\
         listeners:\n  - name: chat\n    bind: 127.0.0.1:{port}\n    upstream: {upstream}\n    \
         destination: {{labels: {{app: chat}}, port: 80}}\n{listener_extra}"
    )
}

const CHAT_POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: chat}
spec:
  endpointSelector: {matchLabels: {app: chat}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: frontend}}]
      toPorts:
        - ports: [{port: "80", protocol: TCP}]
          rules:
            http:
              - {method: GET, path: "/ws/.*", headers: ["Upgrade: websocket"]}
              - {method: GET, path: "/public/.*"}
"#;

/// The `websockets` echo server and the log of the handshakes it read.
struct EchoServer {
    addr: SocketAddr,
    log: tempfile::NamedTempFile,
    _process: Process,
}

impl EchoServer {
    fn start() -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = tempfile::NamedTempFile::new().unwrap();
        let process = python_server("websocket_server.py", &[&addr.to_string(), log.path().to_str().unwrap()], addr);
        EchoServer { addr, log, _process: process }
    }

    /// The paths of the requests the server read.
    fn paths(&self) -> Vec<String> {
        self.requests().into_iter().map(|r| r["path"].as_str().unwrap().to_string()).collect()
    }

    fn requests(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.log.path()).unwrap();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }
}

/// Run the `websockets` client: its JSON answer.
fn ws_client(port: u16, path: &str, source: &str, messages: &[&str]) -> serde_json::Value {
    let url = format!("ws://127.0.0.1:{port}{path}");
    let mut args = vec![url.as_str(), source];
    args.extend_from_slice(messages);
    let out = python("websocket_client.py", &args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn a_websocket_is_judged_at_its_upgrade_and_then_relayed_both_ways() {
    let server = EchoServer::start();
    let port = free_port();
    let mut weir = Weir::start(&config(server.addr, port, ""), &[("chat.yaml", CHAT_POLICY)]);

    // allowed: text and a 1 MiB binary message, echoed through the tunnel
    let answer = ws_client(port, "/ws/room-1", FRONTEND, &["hello", "@bytes:1048576", "bye"]);
    assert_eq!(answer["status"], 101, "{answer}");
    assert_eq!(answer["answers"], serde_json::json!(["echo: hello", {"bytes": 1048582}, "echo: bye"]), "{answer}");
    // the server read the handshake weir judged, with the headers that ask for it
    let handshake = server.requests().into_iter().find(|r| r["path"] == "/ws/room-1").expect("handshake");
    let headers: Vec<(String, String)> = handshake["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h[0].as_str().unwrap().to_ascii_lowercase(), h[1].as_str().unwrap().to_string()))
        .collect();
    assert!(headers.contains(&("upgrade".into(), "websocket".into())), "{headers:?}");
    assert!(headers.contains(&("connection".into(), "upgrade".into())), "{headers:?}");
    assert!(headers.iter().any(|(n, _)| n == "sec-websocket-key"), "{headers:?}");

    // one request counted: the relay's end is a flow, not a request
    let metrics = weir.metrics();
    assert!(metrics.contains(r#"weir_requests_total{protocol="http",verdict="forwarded"} 1"#), "{metrics}");

    // two flows: the upgrade request (101), and the tunnel when it closed
    let opened = weir.wait_flow("protocol=http", "the upgrade's flow", |f| {
        f.http().is_some_and(|h| h.path == "/ws/room-1" && h.tunnel.is_none())
    });
    assert_eq!((opened.verdict, opened.http().unwrap().status), (Verdict::Forwarded, Some(101)), "{opened:?}");
    let closed = weir.wait_flow("protocol=http", "the tunnel's flow", |f| {
        f.http().is_some_and(|h| h.path == "/ws/room-1" && h.tunnel.is_some())
    });
    assert_eq!(closed.verdict, Verdict::Forwarded, "{closed:?}");
    let tunnel = closed.http().unwrap().tunnel.clone().unwrap();
    assert_eq!(tunnel.protocol, "websocket");
    // the frames (permessage-deflate, which random bytes do not shrink)
    // carry a little of their own around the payloads
    let about = |n: u64, payload: u64| n > payload && n < payload + payload / 100;
    assert!(about(tunnel.from_client, 1_048_576 + 8) && about(tunnel.from_upstream, 1_048_582 + 8), "{tunnel:?}");

    // denied: a path no rule allows (403), and a sender no rule allows at
    // all (the connection is reset at L3/L4); the server never reads those
    assert_eq!(ws_client(port, "/admin/ws", FRONTEND, &["x"])["status"], 403);
    let crawler = ws_client(port, "/ws/room-1", CRAWLER, &["x"]);
    // reset before any HTTP: the client reads no response, or (when the reset
    // beats its event loop's look at the finished connect) its connect fails
    assert!(
        crawler["error"].as_str().is_some_and(
            |e| e.contains("did not receive a valid HTTP response") || e.starts_with("ConnectionResetError")
        ),
        "{crawler}"
    );
    assert!(!server.paths().contains(&"/admin/ws".to_string()), "{:?}", server.paths());
    assert_eq!(server.paths().iter().filter(|p| *p == "/ws/room-1").count(), 1, "{:?}", server.paths());
    assert_eq!(weir.last_flow("/admin/ws").verdict, Verdict::Denied);

    // many at once, each its own tunnel
    let clients: Vec<_> = (0..8)
        .map(|i| std::thread::spawn(move || ws_client(port, &format!("/ws/many-{i}"), FRONTEND, &[&format!("m{i}")])))
        .collect();
    for (i, client) in clients.into_iter().enumerate() {
        assert_eq!(client.join().unwrap()["answers"], serde_json::json!([format!("echo: m{i}")]));
    }
    assert!(weir.is_running());
}

#[test]
fn upgrades_weir_does_not_forward_reach_the_upstream_as_plain_requests() {
    let server = EchoServer::start();
    let port = free_port();
    let off = free_port();
    let config = format!(
        "{}  - name: chat-no-upgrades\n    bind: 127.0.0.1:{off}\n    upstream: {}\n    \
         destination: {{labels: {{app: chat}}, port: 80}}\n    upgrades: []\n",
        config(server.addr, port, ""),
        server.addr
    );
    let mut weir = Weir::start(&config, &[("chat.yaml", CHAT_POLICY)]);
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    // h2c: HTTP/2 after the switch would be requests no rule judged. The
    // rule that needs `Upgrade: websocket` does not match a request whose
    // Upgrade is dropped, so a plain-GET rule decides: /public/ passes as
    // a plain request, with no Upgrade left in it
    let h2c = b"GET /public/h2c HTTP/1.1\r\nHost: chat\r\nConnection: Upgrade, HTTP2-Settings\r\n\
        Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n";
    let answer = raw_exchange(FRONTEND, to, h2c, Duration::from_secs(1));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("plain request for /public/h2c"), "{answer}");
    let seen = server.requests().into_iter().find(|r| r["path"] == "/public/h2c").unwrap();
    let names: Vec<String> =
        seen["headers"].as_array().unwrap().iter().map(|h| h[0].as_str().unwrap().to_ascii_lowercase()).collect();
    assert!(!names.iter().any(|n| n == "upgrade" || n == "connection" || n == "http2-settings"), "{names:?}");

    // a listener with `upgrades: []`: the WebSocket handshake arrives as a
    // plain GET, and the rule that needs `Upgrade: websocket` refuses it
    assert_eq!(ws_client(off, "/ws/room-2", FRONTEND, &["x"])["status"], 403);
    assert!(!server.paths().contains(&"/ws/room-2".to_string()));
    assert!(weir.is_running());
}

#[test]
fn after_a_declined_upgrade_the_connection_is_http_again_and_judged() {
    // nginx answers an upgrade request like any GET (200): the bytes after
    // it are HTTP, and weir judges them; a proxy that took them for the
    // tunnel would pass a forbidden request unjudged (WebSocket smuggling)
    let nginx = Nginx::start();
    let port = free_port();
    let weir = Weir::start(&config(nginx.addr, port, ""), &[("chat.yaml", CHAT_POLICY)]);
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let upgrade = "GET /ws/hello.txt HTTP/1.1\r\nHost: chat\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
        Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let forbidden = "GET /admin/secret.txt HTTP/1.1\r\nHost: chat\r\n\r\n";
    let allowed = "GET /public/hello.txt HTTP/1.1\r\nHost: chat\r\n\r\n";

    // all in one write
    let answer =
        raw_exchange(FRONTEND, to, format!("{upgrade}{forbidden}{allowed}").as_bytes(), Duration::from_secs(2));
    let statuses: Vec<&str> = answer.match_indices("HTTP/1.1 ").map(|(i, _)| &answer[i + 9..i + 12]).collect();
    // nginx has no /ws/hello.txt (404): declined, not switched
    assert_eq!(statuses, vec!["404", "403", "200"], "{answer}");
    assert!(answer.ends_with("hello from nginx\n"), "{answer}");

    // one at a time on one connection, waiting for each answer
    let mut stream = connect_from(FRONTEND, to);
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for (request, status) in [(upgrade, "404"), (forbidden, "403"), (upgrade, "404"), (allowed, "200")] {
        stream.write_all(request.as_bytes()).unwrap();
        let mut buf = [0u8; 4096];
        let n = stream.read(&mut buf).unwrap();
        let got = String::from_utf8_lossy(&buf[..n]);
        assert!(got.starts_with(&format!("HTTP/1.1 {status}")), "{request}: {got}");
    }
    assert!(!nginx.access_log().contains("/admin/secret.txt"), "{}", nginx.access_log());
    assert_eq!(weir.last_flow("/admin/secret.txt").verdict, Verdict::Denied);
}

#[test]
fn a_client_that_hangs_up_while_its_upgrade_waits_ends_the_request() {
    // an upstream that accepts and never answers
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free_port();
    let weir = Weir::start(&config(upstream.local_addr().unwrap(), port, ""), &[("chat.yaml", CHAT_POLICY)]);
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut client = connect_from(FRONTEND, to);
    client
        .write_all(
            b"GET /ws/hang HTTP/1.1\r\nHost: chat\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .unwrap();
    let (mut forwarded, _) = upstream.accept().unwrap();
    forwarded.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = [0u8; 4096];
    let n = forwarded.read(&mut head).unwrap();
    assert!(String::from_utf8_lossy(&head[..n]).contains("upgrade: websocket"), "the upgrade was forwarded");
    // the client gives up: weir ends the request and its upstream leg
    drop(client);
    let mut rest = [0u8; 64];
    assert_eq!(forwarded.read(&mut rest).unwrap(), 0, "the upstream leg was closed");
    let flow = weir.wait_flow("protocol=http&verdict=error", "the abandoned upgrade", |f| {
        f.http().is_some_and(|h| h.path == "/ws/hang")
    });
    assert!(flow.reason.unwrap().contains("client closed the connection"));
    wait_for("the connection to close", Duration::from_secs(5), || {
        weir.metrics().contains(r#"weir_active_connections{listener="chat"} 0"#)
    });
}

/// An open WebSocket was judged at its upgrade request; a policy change
/// judges that request again. A policy that still allows it leaves the
/// tunnel alone; one that no longer does closes both sides, with a denied
/// flow that says why.
#[test]
fn a_policy_change_closes_the_tunnels_it_no_longer_allows() {
    let server = EchoServer::start();
    let port = free_port();
    let weir = Weir::start(&config(server.addr, port, ""), &[("chat.yaml", CHAT_POLICY)]);
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (dir.path().join("first"), dir.path().join("second"));
    let client = {
        let (first, second) = (first.display().to_string(), second.display().to_string());
        std::thread::spawn(move || {
            let wait = |f: &str| format!("@wait:{f}");
            ws_client(port, "/ws/room-9", FRONTEND, &["one", &wait(&first), "two", &wait(&second), "three"])
        })
    };
    let opened =
        |f: &std::path::Path| wait_for("the client", Duration::from_secs(20), || f.with_extension("open").exists());

    // a change that still allows /ws/.*: the tunnel stays
    opened(&first);
    let generation = weir.generation();
    weir.write_policy("chat.yaml", &CHAT_POLICY.replace("path: \"/public/.*\"", "path: \"/docs/.*\""));
    weir.wait_generation_above(generation);
    std::fs::write(&first, "").unwrap();

    // a change that no longer allows it: weir closes the tunnel
    opened(&second);
    let generation = weir.generation();
    weir.write_policy("chat.yaml", &CHAT_POLICY.replace("/ws/.*", "/chat/.*"));
    weir.wait_generation_above(generation);
    let closed = weir.wait_flow("protocol=http", "the tunnel's flow", |f| {
        f.http().is_some_and(|h| h.path == "/ws/room-9" && h.tunnel.is_some())
    });
    std::fs::write(&second, "").unwrap();
    let answer = client.join().unwrap();
    assert_eq!(answer["answers"], serde_json::json!(["echo: one", "echo: two"]), "{answer}");
    assert!(answer["error"].as_str().is_some_and(|e| e.contains("ConnectionClosed")), "{answer}");
    assert_eq!(closed.verdict, Verdict::Denied, "{closed:?}");
    let reason = closed.reason.as_deref().unwrap_or_default();
    assert!(reason.contains("policy changed; connection closed"), "{closed:?}");
    // the new policy judges new upgrades too
    assert_eq!(ws_client(port, "/ws/room-9", FRONTEND, &["x"])["status"], 403);
}
