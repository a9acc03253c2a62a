//! The memcached engine in local mode, end to end: Debian's memcached
//! server, pymemcache (text protocol) and python-binary-memcached (binary)
//! as clients, and raw sockets for pipelined mixes, meta commands and
//! broken requests. Clients connect from 127.0.0.1 (`cache-client`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use weir_integration::*;

const CLIENT: &str = "127.0.0.1";

const POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: cache-access}
spec:
  endpointSelector: {matchLabels: {app: memcached}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: cache-client}}]
      toPorts:
        - ports: [{port: "11211", protocol: TCP}]
          rules:
            l7proto: memcache
            l7:
              - {command: get, keyPrefix: "public/"}
              - {command: set, keyPrefix: "public/"}
              - {command: get, keyExact: motd}
              - {command: delete, keyRegex: "^tmp[0-9]+$"}
              - {command: version}
              - {command: stats}
              - {command: noop}
"#;

struct Setup {
    weir: Weir,
    listener: SocketAddr,
    memcached: Memcached,
}

fn setup_with_upstream(upstream: SocketAddr) -> (Weir, SocketAddr) {
    let listener: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = format!(
        "admin: ADMIN\n\
         endpoints:\n  - {{name: client, address: {CLIENT}, labels: {{app: cache-client}}}}\n\
         listeners:\n  \
         - {{name: cache, protocol: memcached, bind: {listener}, upstream: {upstream}, \
              destination: {{labels: {{app: memcached}}, port: 11211}}}}\n"
    );
    (Weir::start(&config, &[("cache.yaml", POLICY)]), listener)
}

fn setup() -> Setup {
    let memcached = Memcached::start();
    let (weir, listener) = setup_with_upstream(memcached.addr);
    Setup { weir, listener, memcached }
}

fn client(addr: SocketAddr, protocol: &str, ops: serde_json::Value) -> Vec<serde_json::Value> {
    let out = python("memcached_client.py", &[&addr.to_string(), protocol, &ops.to_string()]);
    assert!(out.status.success(), "memcached_client.py: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Send `request` on a fresh connection and read until it goes quiet.
fn exchange(to: SocketAddr, request: &[u8]) -> String {
    raw_exchange(CLIENT, to, request, Duration::from_millis(500))
}

#[test]
fn pymemcache_is_allowed_and_refused_key_by_key() {
    let s = setup();
    let ops = serde_json::json!([
        ["set", "public/a", "hello"],
        ["get", "public/a"],
        ["set", "secret", "x"],
        ["get", "secret"],
        ["get_many", ["public/a", "motd"]],
        ["get_many", ["public/a", "secret"]],
        ["delete", "tmp42"],
        ["delete", "public/a"],
        ["version"],
    ]);
    let results = client(s.listener, "text", ops);
    // pymemcache reconnects after every error: no new connection is lost
    assert!(results.iter().all(|r| r["error"] != "MemcacheUnexpectedCloseError"), "{results:?}");
    assert_eq!(results[0]["ok"], true, "{results:?}");
    assert_eq!(results[1]["value"], "hello");
    // pymemcache raises its client error class for CLIENT_ERROR
    for i in [2, 3, 5, 7] {
        assert_eq!(results[i]["ok"], false, "op {i}: {:?}", results[i]);
        assert_eq!(results[i]["error"], "MemcacheClientError", "op {i}: {:?}", results[i]);
        assert!(results[i]["message"].as_str().unwrap().contains("access denied"), "{:?}", results[i]);
    }
    // two keys, each allowed by a different rule: allowed
    assert_eq!(results[4], serde_json::json!({"ok": true, "value": {"public/a": "hello"}}));
    assert_eq!(results[6]["ok"], true, "a miss is still an allowed delete: {:?}", results[6]);
    assert_eq!(results[8]["ok"], true);

    // the refused multi-get names the key that was refused
    let denied = s.weir.wait_flow("protocol=memcached&verdict=denied", "the multi-get refusal", |f| {
        f.memcached().is_some_and(|m| m.keys.len() == 2)
    });
    let m = denied.memcached().unwrap();
    assert_eq!((m.protocol.as_str(), m.command.as_str()), ("text", "get"));
    assert_eq!(m.keys, vec!["public/a", "secret"]);
    assert_eq!(m.response.as_deref(), Some("CLIENT_ERROR"));
    assert!(denied.reason.as_deref().unwrap().contains("\"secret\""), "{denied:?}");
    assert_eq!(denied.source.labels.first().map(String::as_str), Some("k8s:app=cache-client"));
    let stored = s.weir.wait_flow("protocol=memcached&verdict=forwarded", "the forwarded set", |f| {
        f.memcached().is_some_and(|m| m.command == "set")
    });
    assert_eq!(stored.memcached().unwrap().response.as_deref(), Some("STORED"));
    assert!(stored.latency_us.is_some());
    let metrics = s.weir.metrics();
    assert!(metrics.contains(r#"weir_memcached_requests_total{command="get",verdict="denied"} 2"#), "{metrics}");

    // the server never saw the refused keys
    let direct = exchange(s.memcached.addr, b"get secret\r\n");
    assert_eq!(direct, "END\r\n");
}

#[test]
fn binary_clients_get_a_binary_refusal() {
    let s = setup();
    let ops = serde_json::json!([
        ["set", "public/b", "bin"],
        ["get", "public/b"],
        ["get", "secret"],
        ["set", "secret", "x"],
        ["version"],
    ]);
    let results = client(s.listener, "binary", ops);
    assert_eq!(results[0]["ok"], true, "{results:?}");
    assert_eq!(results[1]["value"], "bin");
    for i in [2, 3] {
        let message = results[i]["message"].as_str().unwrap_or_default();
        assert!(
            results[i]["ok"] == false && message.contains("Code: 32") && message.contains("access denied"),
            "op {i}: {:?}",
            results[i]
        );
    }
    let denied = s.weir.wait_flow("protocol=memcached&verdict=denied", "a binary refusal", |f| {
        f.memcached().is_some_and(|m| m.protocol == "binary")
    });
    assert_eq!(denied.memcached().unwrap().response.as_deref(), Some("0x0020"));
}

fn binary(op: u8, key: &[u8], extras: &[u8], value: &[u8], opaque: u32) -> Vec<u8> {
    let body = extras.len() + key.len() + value.len();
    let mut p = vec![0x80, op];
    p.extend_from_slice(&(key.len() as u16).to_be_bytes());
    p.extend_from_slice(&[extras.len() as u8, 0, 0, 0]);
    p.extend_from_slice(&(body as u32).to_be_bytes());
    p.extend_from_slice(&opaque.to_be_bytes());
    p.extend_from_slice(&[0; 8]);
    p.extend_from_slice(extras);
    p.extend_from_slice(key);
    p.extend_from_slice(value);
    p
}

/// `(opcode, status, opaque)` of each binary reply packet in `bytes`.
fn binary_replies(mut bytes: &[u8]) -> Vec<(u8, u16, u32)> {
    let mut out = Vec::new();
    while bytes.len() >= 24 {
        let body = u32::from_be_bytes(bytes[8..12].try_into().unwrap()) as usize;
        out.push((
            bytes[1],
            u16::from_be_bytes([bytes[6], bytes[7]]),
            u32::from_be_bytes(bytes[12..16].try_into().unwrap()),
        ));
        bytes = &bytes[24 + body..];
    }
    out
}

#[test]
fn pipelined_requests_keep_their_order_with_refusals_in_place() {
    let s = setup();
    // text: a refusal between forwarded requests, and a refused noreply
    // store that must not answer at all
    let reply = exchange(
        s.listener,
        b"set public/p 0 0 2\r\nhi\r\nget public/p\r\nget secret\r\nset secret 0 0 1 noreply\r\nx\r\nversion\r\n",
    );
    let lines: Vec<&str> = reply.split("\r\n").collect();
    assert_eq!(&lines[..5], &["STORED", "VALUE public/p 0 2", "hi", "END", "CLIENT_ERROR access denied"], "{reply}");
    assert!(lines[5].starts_with("VERSION "), "{reply}");
    assert_eq!(lines.len(), 7, "nothing for the refused noreply store: {reply}");

    // meta commands in quiet mode: the miss says nothing, the hit answers,
    // the refusal lands after both and before mn's MN
    let reply = exchange(s.listener, b"mg public/none v q\r\nmg public/p v q\r\nmg secret v q\r\nmn\r\n");
    assert_eq!(reply, "VA 2\r\nhi\r\nCLIENT_ERROR access denied\r\nMN\r\n");

    // binary: quiet set, refused quiet get (errors are not quiet), a get
    // and the client's own noop, answered in order with their opaques
    let mut pipeline = binary(0x11, b"public/q", &[0; 8], b"v", 1);
    pipeline.extend(binary(0x0d, b"secret", &[], &[], 2));
    pipeline.extend(binary(0x0c, b"public/q", &[], &[], 3));
    pipeline.extend(binary(0x0a, b"", &[], &[], 4));
    let mut stream = connect_from(CLIENT, s.listener);
    stream.write_all(&pipeline).unwrap();
    stream.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(binary_replies(&got), vec![(0x0d, 0x20, 2), (0x0c, 0, 3), (0x0a, 0, 4)]);
}

#[test]
fn broken_requests_close_the_connection_with_a_flow_and_weir_keeps_serving() {
    let s = setup();
    let cases: [(&[u8], &str); 2] =
        [(&[b'g'; 70_000], "longer than"), (&binary(0x00, b"k", &[], &[], 0)[..20], "inside a request")];
    for (request, why) in cases {
        let mut stream = connect_from(CLIENT, s.listener);
        stream.write_all(request).unwrap();
        if why == "inside a request" {
            stream.shutdown(std::net::Shutdown::Write).unwrap();
        }
        let answer = read_until_quiet(&mut stream, Duration::from_secs(2));
        assert_eq!(answer, "", "nothing is answered to {why:?}");
        let flow = s.weir.wait_flow("protocol=memcached&verdict=error", why, |f| {
            f.reason.as_deref().is_some_and(|r| r.contains(why))
        });
        assert_eq!(flow.listener, "cache");
    }
    // what memcached answers and survives, weir answers (for it) and survives:
    // a bad number leaves the would-be data block to be read as a command, a
    // wrong data block is read whole and answered
    let cases: [(&[u8], &str, &str); 2] = [
        (b"set public/x 0 0 abc\r\nversion\r\n", "CLIENT_ERROR bad command line format\r\nVERSION ", "refuses"),
        (b"set public/x 0 0 2\r\nhello\r\n", "CLIENT_ERROR bad data chunk\r\nERROR\r\n", "bad data chunk"),
    ];
    for (request, answer, why) in cases {
        let got = exchange(s.listener, request);
        assert!(got.starts_with(answer), "{got:?}");
        assert_eq!(exchange(s.memcached.addr, request).get(..answer.len()), Some(answer), "as memcached answers");
        s.weir.wait_flow("protocol=memcached&verdict=error", why, |f| {
            f.reason.as_deref().is_some_and(|r| r.contains(why) && r.contains("not forwarded"))
        });
    }
    assert_eq!(exchange(s.memcached.addr, b"get public/x\r\n"), "END\r\n", "nothing was stored");
    // a binary packet with a body length that cannot hold its key: memcached
    // answers "unknown command" and closes; so does weir
    let mut bad = binary(0x00, b"key", &[], &[], 0);
    bad[8..12].copy_from_slice(&1u32.to_be_bytes());
    let mut stream = connect_from(CLIENT, s.listener);
    stream.write_all(&bad).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut got = Vec::new();
    let _ = stream.read_to_end(&mut got);
    assert_eq!(binary_replies(&got), vec![(0x00, 0x0081, 0)]);
    s.weir.wait_flow("protocol=memcached&verdict=error", "the inconsistent binary packet", |f| {
        f.reason.as_deref().is_some_and(|r| r.contains("longer than the body"))
    });
    assert_eq!(exchange(s.listener, b"get motd\r\n"), "END\r\n", "still serving");
}

#[test]
fn a_server_that_hangs_up_mid_reply_closes_the_client_with_a_flow() {
    // stand-in server: answers half a VALUE and hangs up
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = server.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in server.incoming().take(1) {
            let mut stream = stream.unwrap();
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(b"VALUE public/h 0 10\r\nhal");
        }
    });
    let (weir, listener) = setup_with_upstream(upstream);
    let answer = exchange(listener, b"get public/h\r\n");
    assert!(!answer.contains("END"), "{answer:?}");
    let flow = weir.wait_flow("protocol=memcached&verdict=error", "the unanswered get", |f| {
        f.memcached().is_some_and(|m| m.command == "get")
    });
    assert!(flow.reason.as_deref().unwrap().contains("inside a reply"), "{flow:?}");
}

#[test]
fn a_pipeline_deeper_than_the_in_flight_limit_is_answered_in_full() {
    let s = setup();
    // more requests in one write than weir keeps in flight (1024): the
    // batched ones must reach the server before weir waits for replies
    let requests = "version\r\n".repeat(3000);
    let mut stream = connect_from(CLIENT, s.listener);
    stream.write_all(requests.as_bytes()).unwrap();
    let answer = read_until_quiet(&mut stream, Duration::from_secs(2));
    assert_eq!(answer.matches("VERSION ").count(), 3000);
}
