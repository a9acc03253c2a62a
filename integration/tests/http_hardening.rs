//! HTTP hardening end to end (issue 22): the weir binary with raw HTTP/1.1
//! and HTTP/2 clients in front and real upstreams behind (nginx, weir's demo
//! backend, a raw socket upstream that records the bytes it received).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::mpsc;
use std::time::Duration;

use weir_integration::*;

fn config(upstream: SocketAddr, port: u16, extra_listener: &str, extra: &str) -> String {
    format!(
        "admin: ADMIN\n\
         endpoints:\n  - {{name: frontend, address: {FRONTEND}, labels: {{app: frontend}}}}\n  \
         - {{name: crawler, address: {CRAWLER}, labels: {{app: crawler}}}}\n\
         listeners:\n  - name: web\n    bind: 127.0.0.1:{port}\n    upstream: {upstream}\n    \
         destination: {{labels: {{app: web}}, port: 80}}\n{extra_listener}{extra}"
    )
}

fn policy(rules: &str) -> String {
    format!(
        r#"
apiVersion: policy.weir.dev/v1alpha1
kind: WeirNetworkPolicy
metadata: {{name: web}}
spec:
  endpointSelector: {{matchLabels: {{app: web}}}}
  ingress:
    - fromEndpoints: [{{matchLabels: {{app: frontend}}}}]
      toPorts:
        - ports: [{{port: "80", protocol: TCP}}]
          rules:
{rules}
"#
    )
}

const PUBLIC_ONLY: &str = "            http: [{method: \"GET|HEAD\", path: \"/public/.*\"}]";

fn addr(port: u16) -> SocketAddr {
    format!("127.0.0.1:{port}").parse().unwrap()
}

/// Send `pieces` one by one with a pause between, then read the answer.
fn exchange_in_pieces(to: SocketAddr, pieces: &[&[u8]]) -> String {
    let mut stream = connect_from(FRONTEND, to);
    for piece in pieces {
        stream.write_all(piece).unwrap();
        stream.flush().unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    read_until_quiet(&mut stream, Duration::from_secs(2))
}

/// Heads shaped to walk the old framing guard out of step with hyper, each
/// followed on the same connection by a Content-Length + Transfer-Encoding
/// request the policy would allow: that one must be refused, never forwarded.
#[test]
fn no_head_shape_walks_the_framing_guard_out_of_step() {
    let nginx = Nginx::start();
    let port = free_port();
    let _weir = Weir::start(&config(nginx.addr, port, "", ""), &[("web.yaml", &policy(PUBLIC_ONLY))]);
    let smuggled: &[u8] =
        b"GET /public/smuggled HTTP/1.1\r\nHost: w\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let padding: Vec<u8> = (0..90).flat_map(|i| format!("X-Pad-{i}: {}\r\n", "p".repeat(1500)).into_bytes()).collect();
    let big_head = [b"GET /public/big HTTP/1.1\r\nHost: w\r\n".as_slice(), &padding, b"\r\n"].concat();
    let walkers: Vec<(&str, Vec<Vec<u8>>)> = vec![
        ("a head ending in CRLF LF", vec![b"GET /public/hello.txt HTTP/1.1\r\nHost: w\r\n\n".to_vec()]),
        ("a head in bare LF", vec![b"GET /public/hello.txt HTTP/1.1\nHost: w\n\n".to_vec()]),
        (
            "a request split after its first byte",
            vec![b"P".to_vec(), b"UT /public/put HTTP/1.1\r\nHost: w\r\n\r\n".to_vec()],
        ),
        ("a head over the old guard's 128 KiB", vec![big_head]),
        (
            "a chunk size with leading zeros",
            vec![
                b"GET /public/hello.txt HTTP/1.1\r\nHost: w\r\nTransfer-Encoding: chunked\r\n\r\n\
                   00000000000000000000001\r\na\r\n0\r\n\r\n"
                    .to_vec(),
            ],
        ),
    ];
    for (name, walker) in &walkers {
        let mut pieces: Vec<&[u8]> = walker.iter().map(Vec::as_slice).collect();
        pieces.push(smuggled);
        let answer = exchange_in_pieces(addr(port), &pieces);
        let statuses: Vec<&str> = answer.lines().filter(|l| l.starts_with("HTTP/1.1 ")).collect();
        assert_eq!(statuses.last(), Some(&"HTTP/1.1 400 Bad Request"), "{name}: {answer}");
        assert!(statuses.len() >= 2, "{name}: the first request is answered too: {answer}");
    }
    let log = nginx.access_log();
    assert!(!log.contains("/public/smuggled"), "a CL+TE request reached nginx: {log}");
    // a bare-LF head is served like any other, as hyper and nginx read it
    assert!(log.matches("GET /public/hello.txt").count() >= 2, "{log}");
}

/// A policy whose rule needs `X-Token: secret`, and a custom filter that
/// stamps `x-weir-caller`; the demo backend echoes what it received.
fn token_policy() -> String {
    policy(
        "            http: [{path: \"/.*\", headers: [\"X-Token: secret\"]}]\n\
         \x20           wasm:\n\
         \x20             - name: stamp\n\
         \x20               config: {header: x-token, pattern: \".+\", stampHeader: x-weir-caller}",
    )
}

#[test]
fn headers_named_in_connection_are_judged_as_forwarded() {
    let backend = DemoBackend::start();
    let port = free_port();
    let extra = "filters:\n  - {name: stamp, builtin: require-header}\n";
    let _weir = Weir::start(&config(backend.addr, port, "", extra), &[("web.yaml", &token_policy())]);
    let url = format!("http://127.0.0.1:{port}/anything");

    let plain = curl_from(FRONTEND, &["-H", "X-Token: secret", &url]);
    assert_eq!(plain.status, 200, "{plain:?}");
    let echo: serde_json::Value = serde_json::from_str(&plain.body).unwrap();
    assert_eq!(echo["headers"]["x-token"], serde_json::json!(["secret"]));

    // the rule's header is hop-by-hop here: the upstream would never get it
    let hidden = curl_from(FRONTEND, &["-H", "X-Token: secret", "-H", "Connection: x-token", &url]);
    assert_eq!(hidden.status, 403, "judged without the header the upstream would not get: {hidden:?}");

    // a client cannot remove the header a filter stamped
    let unstamped = curl_from(FRONTEND, &["-H", "X-Token: secret", "-H", "Connection: x-weir-caller", &url]);
    assert_eq!(unstamped.status, 200, "{unstamped:?}");
    let echo: serde_json::Value = serde_json::from_str(&unstamped.body).unwrap();
    assert!(echo["headers"]["x-weir-caller"].is_array(), "the filter's stamp reaches the upstream: {echo}");

    // end-to-end headers cannot be made hop-by-hop
    for named in ["host", "Content-Length", "transfer-encoding", "content-type"] {
        let refused = curl_from(FRONTEND, &["-H", "X-Token: secret", "-H", &format!("Connection: {named}"), &url]);
        assert_eq!(refused.status, 400, "Connection: {named}: {refused:?}");
    }
}

/// An upstream that answers every request 200 and sends what it read to the test.
fn recording_upstream() -> (SocketAddr, mpsc::Receiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let (sender, received) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let sender = sender.clone();
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                // one chunked request: up to the empty line after the last chunk
                while !(seen.windows(5).any(|w| w == b"0\r\n\r\n")
                    || seen.ends_with(b"\r\n\r\n") && seen.windows(4).filter(|w| *w == b"\r\n\r\n").count() >= 2)
                {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n");
                let _ = sender.send(seen);
            });
        }
    });
    (address, received)
}

#[test]
fn request_trailers_are_not_forwarded_unjudged() {
    let (upstream, received) = recording_upstream();
    let port = free_port();
    let rules = "            http: [{method: POST, path: \"/upload\"}]";
    let _weir = Weir::start(&config(upstream, port, "", ""), &[("web.yaml", &policy(rules))]);
    let request =
        b"POST /upload HTTP/1.1\r\nHost: w\r\nTransfer-Encoding: chunked\r\nTrailer: X-Trailer-Secret\r\n\r\n\
        5\r\nhello\r\n0\r\nX-Trailer-Secret: unjudged\r\n\r\n";
    let answer = raw_exchange(FRONTEND, addr(port), request, Duration::from_secs(2));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = received.recv_timeout(Duration::from_secs(10)).expect("the upstream got the request");
    let seen = String::from_utf8_lossy(&seen).to_ascii_lowercase();
    assert!(seen.contains("hello"), "the body is forwarded: {seen}");
    assert!(!seen.contains("x-trailer-secret: unjudged"), "a trailer no rule judged reached the upstream: {seen}");
}

#[test]
fn path_forms_upstreams_read_differently_are_refused_unless_allowed() {
    let nginx = Nginx::start();
    let (port, allowing) = (free_port(), free_port());
    let second = format!(
        "  - name: lenient\n    bind: 127.0.0.1:{allowing}\n    upstream: {}\n    \
         destination: {{labels: {{app: web}}, port: 80}}\n    ambiguous_paths: allow\n",
        nginx.addr
    );
    let _weir = Weir::start(&config(nginx.addr, port, &second, ""), &[("web.yaml", &policy(PUBLIC_ONLY))]);
    let attempts = [
        "/public/..;/admin/secret.txt",
        "/public/..;jsessionid=1/admin/secret.txt",
        "/public/..%3B/admin/secret.txt",
        "/public/%2e%2e;/admin/secret.txt",
        "/public/%252e%252e/admin/secret.txt",
        "/public/%252e%252e%252fadmin/secret.txt",
    ];
    for attempt in attempts {
        let r = curl_from(FRONTEND, &["--path-as-is", &format!("http://127.0.0.1:{port}{attempt}")]);
        assert_eq!(r.status, 400, "{attempt}: {r:?}");
    }
    assert_eq!(nginx.access_log(), "", "nothing reached the upstream");
    // a listener may allow them: forwarded as plain names (nginx: 404)
    let r = curl_from(FRONTEND, &["--path-as-is", &format!("http://127.0.0.1:{allowing}/public/..;/admin/secret.txt")]);
    assert_eq!(r.status, 404, "{r:?}");
    assert!(nginx.access_log().contains("/public/..;/admin/secret.txt"), "{}", nginx.access_log());
}

#[test]
fn host_rules_match_the_authority_as_users_expect() {
    let backend = DemoBackend::start();
    let port = free_port();
    let rules = "            http: [{host: \"api\\\\.example\"}]";
    let _weir = Weir::start(&config(backend.addr, port, "", ""), &[("web.yaml", &policy(rules))]);
    let url = format!("http://127.0.0.1:{port}/x");
    for host in ["api.example", "API.EXAMPLE", "api.example.", "api.example:80", "Api.Example.:80"] {
        let r = curl_from(FRONTEND, &["-H", &format!("Host: {host}"), &url]);
        assert_eq!(r.status, 200, "Host: {host}: {r:?}");
        let echo: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        // what was judged is what is forwarded
        assert_eq!(echo["headers"]["host"], serde_json::json!(["api.example"]), "Host: {host}");
    }
    for host in ["api.example:8080", "api.example.org", "xapi.example"] {
        let r = curl_from(FRONTEND, &["-H", &format!("Host: {host}"), &url]);
        assert_eq!(r.status, 403, "Host: {host}: {r:?}");
    }
}

/// What an HTTP/1.1 upstream reads of an HTTP/2 request is what the policy
/// judged: crumbs of `Cookie` arrive as one header, joined with "; "; a
/// request with no authority is judged with the Host weir sends (the
/// upstream's address); and what the h2 crate lets through but an HTTP/1.1
/// reader would read otherwise — blanks around a value (trimmed there), a
/// name that is not a token, an empty or repeated Content-Length — is
/// refused before it reaches the upstream.
#[test]
fn http2_heads_reach_an_http1_upstream_as_judged() {
    use h2::*;
    let (upstream, received) = recording_upstream();
    let port = free_port();
    // HTTP/1.1 to the upstream whatever the client speaks
    let http1 =
        config(upstream, port, "", "").replace("    destination:", "    upstream_protocol: http1\n    destination:");
    let weir = Weir::start(&http1, &[("web.yaml", &policy(PUBLIC_ONLY))]);
    let send = |block: Vec<u8>| {
        let mut stream = connect_from(FRONTEND, addr(port));
        connect(&mut stream);
        stream.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &block)).unwrap();
        read_frames(&mut stream, Duration::from_secs(5), |kind, flags, _, _| {
            (kind == HEADERS || kind == DATA) && flags & END_STREAM != 0
        });
    };
    for (path, extra, why) in [
        ("/public/blank", literal("x-role", "reader "), "blanks around its value"),
        ("/public/tab", literal("x-role", "\treader"), "blanks around its value"),
        ("/public/quote", literal("x\"role", "reader"), "is not a token"),
        ("/public/empty-length", literal("content-length", ""), "Content-Length is not a number"),
        (
            "/public/two-lengths",
            [literal("content-length", "0"), literal("content-length", "0")].concat(),
            "more than one Content-Length",
        ),
    ] {
        send([request_block(path), extra].concat());
        let refused = weir.last_flow(path);
        assert!(refused.reason.as_deref().unwrap().contains(why), "{path}: {refused:?}");
        assert_eq!(refused.http().unwrap().status, Some(400), "{path}");
    }
    assert!(received.recv_timeout(Duration::from_secs(1)).is_err(), "a refused request reached the upstream");

    let crumbs = [request_block("/public/crumbs"), literal("cookie", "a=1"), literal("cookie", "b=2")].concat();
    send(crumbs);
    let seen = String::from_utf8_lossy(&received.recv_timeout(Duration::from_secs(10)).unwrap()).into_owned();
    assert_eq!(seen.matches("cookie:").count(), 1, "{seen}");
    assert!(seen.contains("cookie: a=1; b=2\r\n"), "{seen}");

    let no_authority =
        [literal(":method", "GET"), literal(":scheme", "http"), literal(":path", "/public/bare")].concat();
    send(no_authority);
    let seen = String::from_utf8_lossy(&received.recv_timeout(Duration::from_secs(10)).unwrap()).into_owned();
    assert!(seen.to_ascii_lowercase().contains(&format!("host: {upstream}\r\n")), "{seen}");
    let judged = weir.last_flow("/public/bare");
    assert_eq!(judged.http().unwrap().host, upstream.to_string());
}

/// HTTP/2 frames by hand: enough to attack a server.
mod h2 {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    pub const DATA: u8 = 0;
    pub const HEADERS: u8 = 1;
    pub const RST_STREAM: u8 = 3;
    pub const SETTINGS: u8 = 4;
    pub const PING: u8 = 6;
    pub const GOAWAY: u8 = 7;
    pub const CONTINUATION: u8 = 9;
    pub const END_STREAM: u8 = 1;
    pub const END_HEADERS: u8 = 4;

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + payload.len());
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        out.extend_from_slice(&[kind, flags]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// HPACK "literal without indexing, new name" (no Huffman).
    pub fn literal(name: &str, value: &str) -> Vec<u8> {
        let mut out = vec![0u8];
        for s in [name, value] {
            assert!(s.len() < 127);
            out.push(s.len() as u8);
            out.extend_from_slice(s.as_bytes());
        }
        out
    }

    pub fn request_block(path: &str) -> Vec<u8> {
        [literal(":method", "GET"), literal(":scheme", "http"), literal(":path", path), literal(":authority", "w")]
            .concat()
    }

    pub fn connect(stream: &mut TcpStream) {
        stream.write_all(PREFACE).unwrap();
        stream.write_all(&frame(SETTINGS, 0, 0, &[])).unwrap();
    }

    /// Frames the server sent, until `stop` says so, EOF, or `limit`.
    pub fn read_frames(
        stream: &mut TcpStream,
        limit: Duration,
        mut stop: impl FnMut(u8, u8, u32, &[u8]) -> bool,
    ) -> Vec<(u8, u32, Vec<u8>)> {
        stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let deadline = Instant::now() + limit;
        let (mut buffer, mut frames) = (Vec::new(), Vec::new());
        let mut chunk = [0u8; 16384];
        while Instant::now() < deadline {
            while buffer.len() >= 9 {
                let len = u32::from_be_bytes([0, buffer[0], buffer[1], buffer[2]]) as usize;
                if buffer.len() < 9 + len {
                    break;
                }
                let (kind, flags) = (buffer[3], buffer[4]);
                let id = u32::from_be_bytes([buffer[5], buffer[6], buffer[7], buffer[8]]) & 0x7fff_ffff;
                let payload = buffer[9..9 + len].to_vec();
                buffer.drain(..9 + len);
                let done = stop(kind, flags, id, &payload);
                frames.push((kind, id, payload));
                if done {
                    return frames;
                }
            }
            match stream.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
        }
        frames
    }

    pub fn goaway_code(frames: &[(u8, u32, Vec<u8>)]) -> Option<u32> {
        frames.iter().find(|(kind, _, _)| *kind == GOAWAY).map(|(_, _, p)| u32::from_be_bytes([p[4], p[5], p[6], p[7]]))
    }
}

fn h2_still_serves(port: u16) {
    let ok = curl_from(CRAWLER, &["--http2-prior-knowledge", &format!("http://127.0.0.1:{port}/public/ok")]);
    assert_eq!(ok.status, 200, "another client is served: {ok:?}");
}

const ENHANCE_YOUR_CALM: u32 = 11;

#[test]
fn http2_floods_end_the_attackers_connection_and_spare_everyone_else() {
    let backend = DemoBackend::start();
    let port = free_port();
    let rules = "            http: [{path: \"/public/.*\"}]";
    let both = policy(rules).replace(
        "fromEndpoints: [{matchLabels: {app: frontend}}]",
        "fromEndpoints: [{matchLabels: {app: frontend}}, {matchLabels: {app: crawler}}]",
    );
    let weir = Weir::start(&config(backend.addr, port, "", ""), &[("web.yaml", &both)]);
    h2_still_serves(port);

    // rapid reset (CVE-2023-44487): open and cancel streams as fast as possible
    let mut attacker = connect_from(FRONTEND, addr(port));
    h2::connect(&mut attacker);
    let mut burst = Vec::new();
    for i in 0..2000u32 {
        let id = 2 * i + 1;
        burst.extend(h2::frame(h2::HEADERS, h2::END_HEADERS | h2::END_STREAM, id, &h2::request_block("/public/r")));
        burst.extend(h2::frame(h2::RST_STREAM, 0, id, &8u32.to_be_bytes()));
    }
    let _ = attacker.write_all(&burst);
    let frames = h2::read_frames(&mut attacker, Duration::from_secs(20), |kind, _, _, _| kind == h2::GOAWAY);
    assert_eq!(h2::goaway_code(&frames), Some(ENHANCE_YOUR_CALM), "rapid reset ends with GOAWAY");
    h2_still_serves(port);

    // CONTINUATION flood: a header block that never ends
    let mut attacker = connect_from(FRONTEND, addr(port));
    h2::connect(&mut attacker);
    let _ = attacker.write_all(&h2::frame(h2::HEADERS, 0, 1, &h2::request_block("/public/c")));
    let filler = h2::literal("x-flood", &"f".repeat(100));
    let mut flood = Vec::new();
    for _ in 0..5000 {
        flood.extend(h2::frame(h2::CONTINUATION, 0, 1, &filler));
    }
    let _ = attacker.write_all(&flood);
    let frames = h2::read_frames(&mut attacker, Duration::from_secs(20), |kind, _, _, _| kind == h2::GOAWAY);
    assert!(h2::goaway_code(&frames).is_some(), "a CONTINUATION flood ends with GOAWAY: {frames:?}");
    h2_still_serves(port);

    // HPACK bomb: one large header in the dynamic table, referenced many
    // times with a byte each, decodes to a header list of megabytes
    let mut attacker = connect_from(FRONTEND, addr(port));
    h2::connect(&mut attacker);
    let mut block = h2::request_block("/public/bomb");
    block.push(0x40); // literal with incremental indexing, new name
    block.push(6);
    block.extend_from_slice(b"x-bomb");
    // value length 4000 as an HPACK integer with a 7-bit prefix
    let rest = 4000 - 127;
    block.extend_from_slice(&[0x7f, 0x80 | (rest & 0x7f) as u8, (rest >> 7) as u8]);
    block.extend(std::iter::repeat_n(b'b', 4000));
    block.extend(std::iter::repeat_n(0xbe, 1000)); // indexed: dynamic entry 62
    let _ = attacker.write_all(&h2::frame(h2::HEADERS, h2::END_STREAM | h2::END_HEADERS, 1, &block));
    let frames = h2::read_frames(&mut attacker, Duration::from_secs(20), |kind, flags, id, _| {
        kind == h2::GOAWAY
            || (id == 1 && (kind == h2::RST_STREAM || (kind == h2::HEADERS && flags & h2::END_STREAM != 0)))
    });
    let answered_200 =
        frames.iter().any(|(kind, id, payload)| *kind == h2::HEADERS && *id == 1 && payload.first() == Some(&0x88));
    assert!(!answered_200, "a header list of megabytes is refused, not forwarded: {frames:?}");
    assert!(!frames.is_empty(), "the server answered the bomb (RST_STREAM, 431 or GOAWAY)");
    h2_still_serves(port);

    // more concurrent streams than the limit: the excess is refused
    let mut attacker = connect_from(FRONTEND, addr(port));
    h2::connect(&mut attacker);
    let mut open = Vec::new();
    for i in 0..150u32 {
        // no END_STREAM: each stream stays open waiting for its body
        open.extend(h2::frame(h2::HEADERS, h2::END_HEADERS, 2 * i + 1, &h2::request_block("/public/open")));
    }
    let _ = attacker.write_all(&open);
    let frames = h2::read_frames(&mut attacker, Duration::from_secs(20), |kind, _, _, payload| {
        kind == h2::GOAWAY || (kind == h2::RST_STREAM && payload == 7u32.to_be_bytes())
    });
    let refused = frames.iter().any(|(kind, _, p)| *kind == h2::RST_STREAM && *p == 7u32.to_be_bytes());
    assert!(refused || h2::goaway_code(&frames).is_some(), "streams past 100 are refused: {frames:?}");
    h2_still_serves(port);

    // PING and SETTINGS floods from a client that never reads its answers
    let mut attacker = connect_from(FRONTEND, addr(port));
    h2::connect(&mut attacker);
    attacker.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut control = Vec::new();
    for i in 0..20_000u64 {
        control.extend(h2::frame(h2::PING, 0, 0, &i.to_be_bytes()));
        control.extend(h2::frame(h2::SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]));
    }
    let _ = attacker.write_all(&control); // stalls once the proxy stops reading: fine
    h2_still_serves(port);
    drop(attacker);
    let _ = h2::DATA;
    assert!(weir.metrics().contains("weir_"), "the admin API still answers");
}
