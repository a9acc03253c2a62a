//! CONNECT through weir: refused unless an http rule allows it; allowed, it
//! goes to the listener's upstream — a forward proxy — and after that
//! proxy's 2xx the connection is a tunnel, relayed both ways until a side
//! closes or the policy no longer allows it. Real parts: curl
//! (`--proxytunnel`), tinyproxy as the forward proxy, nginx at the far end.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use weir::observe::flow::Verdict;
use weir_integration::*;

/// tinyproxy on a free port, tunnelling only to `connect_port`, with a log
/// of the requests it read.
struct Tinyproxy {
    addr: SocketAddr,
    dir: tempfile::TempDir,
    _process: Process,
}

impl Tinyproxy {
    fn start(connect_port: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 30\nLogFile \"{}\"\nLogLevel Connect\nMaxClients 20\n\
             Allow 127.0.0.1\nConnectPort {connect_port}\n",
            dir.path().join("tinyproxy.log").display()
        );
        std::fs::write(dir.path().join("tinyproxy.conf"), conf).unwrap();
        let process = Process::spawn(
            "tinyproxy",
            Command::new("tinyproxy")
                .arg("-d")
                .arg("-c")
                .arg(dir.path().join("tinyproxy.conf"))
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_port(addr, "tinyproxy");
        Tinyproxy { addr, dir, _process: process }
    }

    /// The request lines tinyproxy read (`CONNECT 127.0.0.1:80 HTTP/1.1`).
    fn requests(&self) -> Vec<String> {
        let log: PathBuf = self.dir.path().join("tinyproxy.log");
        let text = std::fs::read_to_string(log).unwrap_or_default();
        text.lines()
            .filter_map(|l| l.split_once("): ").map(|(_, r)| r.to_string()))
            .filter(|r| r.contains(" HTTP/"))
            .collect()
    }
}

fn config(upstream: SocketAddr, port: u16, open_port: u16) -> String {
    format!(
        "admin: ADMIN\n\
         endpoints:\n  - {{name: frontend, address: {FRONTEND}, labels: {{app: frontend}}}}\n\
         listeners:\n  - name: egress\n    bind: 127.0.0.1:{port}\n    upstream: {upstream}\n    \
         upstream_protocol: http1\n    destination: {{labels: {{app: egress-proxy}}, port: 3128}}\n  \
         - name: open\n    bind: 127.0.0.1:{open_port}\n    upstream: {upstream}\n    \
         upstream_protocol: http1\n    destination: {{labels: {{app: unpoliced}}, port: 3128}}\n"
    )
}

/// CONNECT to `target` is allowed; plain requests only under /public/.
fn policy(target: &str) -> String {
    format!(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: egress-proxy}}
spec:
  endpointSelector: {{matchLabels: {{app: egress-proxy}}}}
  ingress:
    - fromEndpoints: [{{matchLabels: {{app: frontend}}}}]
      toPorts:
        - ports: [{{port: "3128", protocol: TCP}}]
          rules:
            http:
              - {{method: CONNECT, host: "{target}"}}
              - {{method: GET, path: "/public/.*"}}
"#
    )
}

fn connect_request(target: &str) -> String {
    format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n")
}

#[test]
fn connect_opens_a_tunnel_only_where_a_rule_allows_it() {
    let nginx = Nginx::start();
    let other = Nginx::start();
    let proxy = Tinyproxy::start(nginx.addr.port());
    let (port, open_port) = (free_port(), free_port());
    let (target, other_target) = (nginx.addr.to_string(), other.addr.to_string());
    // a rule for the other target that leaves the method open: plain
    // requests to it pass, a CONNECT does not (only a rule naming it may)
    let policy = policy(&target).replace(
        "              - {method: GET, path: \"/public/.*\"}\n",
        &format!(
            "              - {{method: GET, path: \"/public/.*\"}}\n              - {{host: \"{other_target}\"}}\n"
        ),
    );
    assert_ne!(policy, self::policy(&target));
    let weir = Weir::start(&config(proxy.addr, port, open_port), &[("egress.yaml", &policy)]);
    let weir_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    // allowed: curl tunnels through weir and tinyproxy to nginx
    let proxy_url = format!("http://127.0.0.1:{port}");
    let got = curl_from(FRONTEND, &["-p", "-x", &proxy_url, &format!("http://{target}/public/hello.txt")]);
    assert_eq!((got.status, got.body.as_str()), (200, "hello from nginx\n"), "{}", got.stderr);
    assert!(proxy.requests().contains(&format!("CONNECT {target} HTTP/1.1")), "{:?}", proxy.requests());
    // the GET went through the tunnel, unjudged: nginx read it, tinyproxy did not
    assert!(nginx.access_log().contains("\"GET /public/hello.txt HTTP/1.1\" 200"), "{}", nginx.access_log());
    assert!(!proxy.requests().iter().any(|r| r.starts_with("GET")), "{:?}", proxy.requests());
    let opened = weir.wait_flow("protocol=http", "the CONNECT's flow", |f| {
        f.http().is_some_and(|h| h.method == "CONNECT" && h.tunnel.is_none())
    });
    let http = opened.http().unwrap();
    assert_eq!((opened.verdict, http.status, http.host.as_str()), (Verdict::Forwarded, Some(200), target.as_str()));
    let closed = weir.wait_flow("protocol=http", "the tunnel's flow", |f| {
        f.http().is_some_and(|h| h.method == "CONNECT" && h.tunnel.is_some())
    });
    let tunnel = closed.http().unwrap().tunnel.clone().unwrap();
    assert_eq!(tunnel.protocol, "CONNECT");
    assert!(tunnel.from_client > 0 && tunnel.from_upstream > 0, "{tunnel:?}");

    // denied: another target (the CONNECT rule names one; the rule without
    // a method does not count), before tinyproxy hears of it
    let answer = raw_exchange(FRONTEND, weir_addr, connect_request(&other_target).as_bytes(), Duration::from_secs(1));
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    // a Host naming another target than the request's: the upstream would
    // connect to the one the rule did not judge
    let lying = format!("CONNECT {other_target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    let answer = raw_exchange(FRONTEND, weir_addr, lying.as_bytes(), Duration::from_secs(1));
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    assert!(answer.contains("Host header differs"), "{answer}");
    // a listener no policy selects forwards plain requests, never a CONNECT
    let open_addr: SocketAddr = format!("127.0.0.1:{open_port}").parse().unwrap();
    let answer = raw_exchange(FRONTEND, open_addr, connect_request(&target).as_bytes(), Duration::from_secs(1));
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    assert!(answer.contains("CONNECT needs an http rule"), "{answer}");
    assert!(!proxy.requests().iter().any(|r| r.contains(&other_target)), "{:?}", proxy.requests());
    assert_eq!(proxy.requests().iter().filter(|r| r.starts_with("CONNECT")).count(), 1, "{:?}", proxy.requests());
    let refused = weir.wait_flow("protocol=http", "the open listener's refusal", |f| {
        f.http().is_some_and(|h| h.method == "CONNECT") && f.listener == "open"
    });
    assert_eq!(refused.verdict, Verdict::Denied, "{refused:?}");
}

#[test]
fn bytes_after_a_declined_connect_are_requests_and_judged() {
    let nginx = Nginx::start();
    // tinyproxy tunnels to nothing weir's rule allows: it declines
    let proxy = Tinyproxy::start(1);
    let (port, open_port) = (free_port(), free_port());
    let target = nginx.addr.to_string();
    let _weir = Weir::start(&config(proxy.addr, port, open_port), &[("egress.yaml", &policy(&target))]);
    let weir_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    // the CONNECT and a request no rule allows, in one write: had weir
    // relayed after its CONNECT whatever the answer, the second would pass unjudged
    let smuggled = format!("{}GET /admin/secret.txt HTTP/1.1\r\nHost: {target}\r\n\r\n", connect_request(&target));
    let answer = raw_exchange(FRONTEND, weir_addr, smuggled.as_bytes(), Duration::from_secs(2));
    assert!(answer.starts_with("HTTP/1.1 403"), "tinyproxy declined: {answer}");
    let requests = proxy.requests();
    assert!(requests.contains(&format!("CONNECT {target} HTTP/1.1")), "{requests:?}");
    assert!(
        !requests.iter().any(|r| r.contains("/admin/")),
        "the forbidden request reached the upstream: {requests:?}"
    );
    assert!(!nginx.access_log().contains("/admin/"), "{}", nginx.access_log());
}

#[test]
fn a_policy_change_closes_a_tunnel_it_no_longer_allows() {
    let nginx = Nginx::start();
    let proxy = Tinyproxy::start(nginx.addr.port());
    let (port, open_port) = (free_port(), free_port());
    let target = nginx.addr.to_string();
    let weir = Weir::start(&config(proxy.addr, port, open_port), &[("egress.yaml", &policy(&target))]);
    let weir_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    let mut tunnel = connect_from(FRONTEND, weir_addr);
    tunnel.write_all(connect_request(&target).as_bytes()).unwrap();
    let established = read_until_quiet(&mut tunnel, Duration::from_millis(500));
    assert!(established.starts_with("HTTP/1.1 200"), "{established}");
    let get = format!("GET /public/hello.txt HTTP/1.1\r\nHost: {target}\r\n\r\n");
    tunnel.write_all(get.as_bytes()).unwrap();
    let answer = read_until_quiet(&mut tunnel, Duration::from_millis(500));
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("hello from nginx\n"), "{answer}");

    // an unrelated change leaves it open
    let generation = weir.generation();
    weir.write_policy("egress.yaml", &policy(&target).replace("/public/.*", "/pub/.*"));
    weir.wait_generation_above(generation);
    tunnel.write_all(get.as_bytes()).unwrap();
    let answer = read_until_quiet(&mut tunnel, Duration::from_millis(500));
    assert!(answer.ends_with("hello from nginx\n"), "still open: {answer}");

    // the CONNECT rule removed: weir closes both sides
    let generation = weir.generation();
    let without = policy(&target).replace(&format!("              - {{method: CONNECT, host: \"{target}\"}}\n"), "");
    assert_ne!(without, policy(&target));
    weir.write_policy("egress.yaml", &without);
    weir.wait_generation_above(generation);
    let closed = weir.wait_flow("protocol=http", "the tunnel's end", |f| {
        f.http().is_some_and(|h| h.method == "CONNECT" && h.tunnel.is_some())
    });
    assert_eq!(closed.verdict, Verdict::Denied, "{closed:?}");
    assert!(closed.reason.as_deref().unwrap_or("").contains("policy changed"), "{closed:?}");
    tunnel.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = tunnel.write_all(get.as_bytes());
    let mut rest = Vec::new();
    let read = tunnel.read_to_end(&mut rest);
    assert!(read.is_err() || rest.is_empty(), "the tunnel still answered: {}", String::from_utf8_lossy(&rest));
}

#[test]
fn a_connect_the_forward_proxy_refuses_leaves_its_connection_to_no_other_request() {
    // A forward proxy (a stand-in) that refuses everything with 407 and
    // keeps each connection open, as one asking for credentials does: the
    // connection it refused a CONNECT on may hold per-connection state (the
    // authentication exchange), so no other request may use it.
    let forward_proxy = CountingUpstream::start(
        b"HTTP/1.1 407 Proxy Authentication Required\r\n\
          Proxy-Authenticate: Basic realm=\"egress\"\r\nContent-Length: 0\r\n\r\n",
        false,
    );
    let (port, open_port) = (free_port(), free_port());
    let target = "127.0.0.1:9443";
    let _weir = Weir::start(&config(forward_proxy.addr, port, open_port), &[("egress.yaml", &policy(target))]);
    let weir_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let answer = raw_exchange(FRONTEND, weir_addr, connect_request(target).as_bytes(), Duration::from_secs(1));
    assert!(answer.starts_with("HTTP/1.1 407"), "{answer}");
    assert_eq!(forward_proxy.accepted(), 1);
    // a plain request after it, from another client: a new connection
    for i in 0..2 {
        let got = curl_from(FRONTEND, &[&format!("http://127.0.0.1:{port}/public/{i}")]);
        assert_eq!(got.status, 407, "{got:?}");
    }
    assert_eq!(forward_proxy.accepted(), 2, "the refused CONNECT's connection was not lent to the GETs");
}
