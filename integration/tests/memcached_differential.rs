//! No parser differential between weir and memcached (issue 22, classes 1
//! and 2): the same byte sequences go to Debian's memcached directly and
//! through weir to another memcached. Each starts with a request memcached
//! refuses (or reads differently from a naive parser) followed by bytes a
//! naive proxy would take for its data block: forbidden commands and a
//! marker. Directly, memcached executes them; through weir, every command
//! the server executed must be one weir judged and allowed, and weir
//! answers what memcached answers (with refusals where the policy says so).

use std::net::SocketAddr;
use std::time::Duration;

use weir_integration::*;

const CLIENT: &str = "127.0.0.1";
const DENIED: &str = "CLIENT_ERROR access denied";

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
              - {command: storage, keyPrefix: "public/"}
              - {command: delete, keyPrefix: "public/"}
              - {command: touch, keyPrefix: "public/"}
              - {command: stats}
              - {command: noop}
"#;

struct Setup {
    weir: Weir,
    listener: SocketAddr,
    /// The server behind weir.
    behind: Memcached,
    /// The same server, spoken to directly: what memcached does with the bytes.
    direct: Memcached,
}

fn setup() -> Setup {
    let behind = Memcached::start();
    let direct = Memcached::start();
    let listener: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = format!(
        "admin: ADMIN\n\
         endpoints:\n  - {{name: client, address: {CLIENT}, labels: {{app: cache-client}}}}\n\
         listeners:\n  \
         - {{name: cache, protocol: memcached, bind: {listener}, upstream: {}, \
              destination: {{labels: {{app: memcached}}, port: 11211}}}}\n",
        behind.addr
    );
    let weir = Weir::start(&config, &[("cache.yaml", POLICY)]);
    for server in [behind.addr, direct.addr] {
        let seeded = exchange(server, b"set secret/canary 0 0 6\r\nintact\r\nset secret/bcanary 0 0 6\r\nintact\r\n");
        assert_eq!(seeded, "STORED\r\nSTORED\r\n");
    }
    Setup { weir, listener, behind, direct }
}

fn exchange(to: SocketAddr, request: &[u8]) -> String {
    raw_exchange(CLIENT, to, request, Duration::from_millis(500))
}

/// The value of `key` on a server, read directly (bypassing weir).
fn value_of(server: SocketAddr, key: &str) -> Option<String> {
    let reply = exchange(server, format!("get {key}\r\n").as_bytes());
    let mut lines = reply.split("\r\n");
    match lines.next() {
        Some(l) if l.starts_with("VALUE ") => lines.next().map(str::to_string),
        _ => None,
    }
}

/// The bytes a naive proxy forwards as the data block of shape `i`: a
/// forbidden store, a forbidden delete and an allowed marker.
fn hidden(i: usize) -> String {
    format!("set secret/owned-{i} 0 0 5\r\npwned\r\ndelete secret/canary\r\nset public/marker-{i} 0 0 1\r\nX\r\n")
}

/// The first line of shape `i`, given the index.
type FirstLine = Box<dyn Fn(usize) -> String>;

/// Text shapes: a first line whose trouble is named, declaring the hidden
/// block as its data where it declares anything.
fn text_shapes() -> Vec<(&'static str, String)> {
    let long_key = format!("public/{}", "k".repeat(250));
    let flags = "v t c f s k h l u O1 P L I N1 R1 T1 C1";
    let n = |i: usize| hidden(i).len();
    let shapes: Vec<(&str, FirstLine)> = vec![
        ("an exptime memcached cannot parse", Box::new(move |i| format!("set public/a 0 abc {}\r\n", n(i)))),
        ("flags memcached cannot parse", Box::new(move |i| format!("set public/a x 0 {}\r\n", n(i)))),
        ("negative flags", Box::new(move |i| format!("set public/a -1 0 {}\r\n", n(i)))),
        ("an overflowing exptime", Box::new(move |i| format!("set public/a 0 99999999999999999999 {}\r\n", n(i)))),
        ("a token after noreply", Box::new(move |i| format!("set public/a 0 0 {} noreply extra\r\n", n(i)))),
        ("noreply before the length", Box::new(move |i| format!("set public/a 0 0 {} 0 noreply\r\n", n(i)))),
        ("a cas without its unique", Box::new(move |i| format!("cas public/a 0 0 {}\r\n", n(i)))),
        ("a key over 250 bytes", {
            let k = long_key.clone();
            Box::new(move |i| format!("set {k} 0 0 {}\r\n", n(i)))
        }),
        ("an ms key over 250 bytes", Box::new(move |i| format!("ms {long_key} {}\r\n", n(i)))),
        ("an ms with too many flags", Box::new(move |i| format!("ms public/a {} {flags}\r\n", n(i)))),
        ("a data block longer than declared", Box::new(|_| "set public/a 0 0 1\r\nXYZ".to_string())),
        // memcached swallows this one's data block: nothing hidden runs
        ("an ms with an unknown flag", Box::new(move |i| format!("ms public/a {} Z\r\n", n(i)))),
    ];
    shapes.into_iter().enumerate().map(|(i, (what, line))| (what, format!("{}{}\r\n", line(i), hidden(i)))).collect()
}

#[test]
fn what_memcached_executes_through_weir_is_what_weir_judged() {
    let s = setup();
    let shapes = text_shapes();
    for (i, (what, bytes)) in shapes.iter().enumerate() {
        let direct = exchange(s.direct.addr, bytes.as_bytes());
        let through = exchange(s.listener, bytes.as_bytes());
        // nothing forbidden ran behind weir
        assert_eq!(value_of(s.behind.addr, &format!("secret/owned-{i}")), None, "{what}: {through:?}");
        assert_eq!(value_of(s.behind.addr, "secret/canary").as_deref(), Some("intact"), "{what}");
        // weir answers line for line what memcached answers, with its
        // refusals in place of what the policy forbids
        let direct_lines: Vec<&str> = direct.split_terminator("\r\n").collect();
        let weir_lines: Vec<&str> = through.split_terminator("\r\n").collect();
        assert_eq!(direct_lines.len(), weir_lines.len(), "{what}:\ndirect {direct:?}\nweir   {through:?}");
        for (d, w) in direct_lines.iter().zip(&weir_lines) {
            assert!(d == w || *w == DENIED, "{what}: memcached said {d:?}, weir {w:?}\n{through:?}");
        }
        // the shape matters: memcached itself ran the hidden commands (all
        // but the swallowed one)
        let swallowed = what.contains("unknown flag");
        assert_eq!(value_of(s.direct.addr, &format!("secret/owned-{i}")).is_some(), !swallowed, "{what}: {direct:?}");
    }
    // each first request was refused by weir for memcached, not forwarded
    let refused = s.weir.flows("protocol=memcached&verdict=error");
    let refused = refused.iter().filter(|f| f.reason.as_deref().is_some_and(|r| r.contains("memcached would refuse")));
    assert!(refused.count() >= shapes.len());
    // behind weir: nothing forbidden ran, and every marker the server holds
    // is one weir judged and forwarded (the ones memcached read as commands)
    assert_eq!(value_of(s.behind.addr, "secret/canary").as_deref(), Some("intact"));
    let forwarded = s.weir.flows("protocol=memcached&verdict=forwarded");
    for (i, (what, _)) in shapes.iter().enumerate() {
        assert_eq!(value_of(s.behind.addr, &format!("secret/owned-{i}")), None, "{what}");
        let marker = format!("public/marker-{i}");
        let judged = forwarded.iter().any(|f| f.memcached().is_some_and(|m| m.keys == [marker.clone()]));
        assert_eq!(value_of(s.behind.addr, &marker).is_some(), judged, "{what}: the marker ran iff weir forwarded it");
        assert_eq!(judged, value_of(s.direct.addr, &marker).is_some(), "{what}: and memcached ran it directly too");
    }
    // weir keeps serving
    let served = exchange(s.listener, b"get public/marker-0\r\n");
    assert_eq!(served, "VALUE public/marker-0 0 1\r\nX\r\nEND\r\n", "{:#?}", s.weir.flows("protocol=memcached").last());
}

#[test]
fn numbers_memcached_reads_leniently_close_the_connection_unforwarded() {
    let s = setup();
    // memcached takes "+N", a length with junk after a tab, flags past 32
    // bits (truncated): weir does not forward a number read that way
    for (i, line) in
        ["set public/l 0 0 +{n}\r\n", "set public/l 0 0 {n}\tjunk\r\n", "set public/l 4294967296 0 {n}\r\n"]
            .iter()
            .enumerate()
    {
        let bytes = format!("{}{}\r\n", line.replace("{n}", &hidden(i).len().to_string()), hidden(i));
        let through = exchange(s.listener, bytes.as_bytes());
        assert_eq!(through, "CLIENT_ERROR bad command line format\r\n", "{line:?}");
        assert_eq!(value_of(s.behind.addr, "public/l"), None);
        assert_eq!(value_of(s.behind.addr, &format!("public/marker-{i}")), None);
        s.weir.wait_flow("protocol=memcached&verdict=error", line, |f| {
            f.reason.as_deref().is_some_and(|r| r.contains("leniently") && r.contains("connection closed"))
        });
    }
    // a NUL in the line: memcached stops reading there; weir closes
    let through = exchange(s.listener, b"get public/a\0 secret/canary\r\n");
    assert_eq!(through, "CLIENT_ERROR bad command line format\r\n");
}

#[test]
fn base64_keys_are_judged_as_the_key_memcached_uses() {
    let s = setup();
    // "secret/canary", base64: refused for every meta command
    let encoded = "c2VjcmV0L2NhbmFyeQ==";
    for request in [
        format!("mg {encoded} b v\r\n"),
        format!("md {encoded} b\r\n"),
        format!("ma {encoded} b\r\n"),
        format!("ms {encoded} 5 b\r\npwned\r\n"),
        format!("me {encoded} b\r\n"),
    ] {
        let direct = exchange(s.direct.addr, request.as_bytes());
        assert!(!direct.starts_with("CLIENT_ERROR"), "memcached takes {request:?}: {direct:?}");
        assert_eq!(exchange(s.listener, request.as_bytes()), format!("{DENIED}\r\n"), "{request:?}");
    }
    assert_eq!(value_of(s.behind.addr, "secret/canary").as_deref(), Some("intact"));
    let denied = s.weir.wait_flow("protocol=memcached&verdict=denied", "the base64 mg", |f| {
        f.memcached().is_some_and(|m| m.command == "mg")
    });
    assert_eq!(denied.memcached().unwrap().keys, vec!["secret/canary"], "the flow names the decoded key");

    // "public/A" is valid base64 too: it names a binary key outside public/
    let stored = exchange(s.behind.addr, b"ms public/A 6 b\r\nSECRET\r\n");
    assert_eq!(stored, "HD\r\n");
    assert_eq!(exchange(s.behind.addr, b"mg public/A b v\r\n"), "VA 6\r\nSECRET\r\n");
    assert_eq!(exchange(s.listener, b"mg public/A b v\r\n"), format!("{DENIED}\r\n"));
    assert_eq!(exchange(s.listener, b"md public/A b\r\n"), format!("{DENIED}\r\n"));
    assert_eq!(exchange(s.behind.addr, b"mg public/A b v\r\n"), "VA 6\r\nSECRET\r\n", "still there");
    // undecodable: memcached's own error, nothing forwarded
    assert_eq!(exchange(s.direct.addr, b"mg cHVi b v\r\n"), "EN\r\n");
    assert_eq!(exchange(s.listener, b"mg public/ab b v\r\n"), "CLIENT_ERROR error decoding key\r\n");
    assert_eq!(exchange(s.direct.addr, b"mg public/ab b v\r\n"), "CLIENT_ERROR error decoding key\r\n");
    // a plain base64 key inside public/ is served
    assert_eq!(exchange(s.listener, b"ms cHVibGljL2I= 2 b\r\nok\r\n"), "HD\r\n");
    assert_eq!(value_of(s.behind.addr, "public/b").as_deref(), Some("ok"));
}

#[test]
fn meta_flags_that_touch_or_create_need_those_commands_too() {
    // get only: mg with T would touch, with N would create; ma with MD decrements
    let behind = Memcached::start();
    let listener: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = format!(
        "admin: ADMIN\n\
         endpoints:\n  - {{name: client, address: {CLIENT}, labels: {{app: cache-client}}}}\n\
         listeners:\n  \
         - {{name: cache, protocol: memcached, bind: {listener}, upstream: {}, \
              destination: {{labels: {{app: memcached}}, port: 11211}}}}\n",
        behind.addr
    );
    let policy = POLICY.replace(
        "              - {command: storage, keyPrefix: \"public/\"}\n",
        "              - {command: incr, keyPrefix: \"public/\"}\n",
    );
    let _weir = Weir::start(&config, &[("cache.yaml", &policy)]);
    assert_eq!(exchange(behind.addr, b"set public/n 0 0 2\r\n10\r\n"), "STORED\r\n");
    assert_eq!(exchange(listener, b"mg public/n v\r\n"), "VA 2\r\n10\r\n");
    assert_eq!(exchange(listener, b"mg public/n v T300\r\n"), "VA 2\r\n10\r\n", "touch is allowed here");
    assert_eq!(exchange(listener, b"mg public/new N30\r\n"), format!("{DENIED}\r\n"), "no add rule");
    assert_eq!(value_of(behind.addr, "public/new"), None);
    assert_eq!(exchange(listener, b"ma public/n v\r\n"), "VA 2\r\n11\r\n");
    assert_eq!(exchange(listener, b"ma public/n v MD\r\n"), format!("{DENIED}\r\n"), "no decr rule");
    assert_eq!(value_of(behind.addr, "public/n").as_deref(), Some("11"));
}

/// Like `exchange`, for binary answers.
fn exchange_bytes(to: SocketAddr, request: &[u8]) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut stream = connect_from(CLIENT, to);
    stream.write_all(request).unwrap();
    stream.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let (mut out, mut buf) = (Vec::new(), [0u8; 4096]);
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}

fn binary(op: u8, key: &[u8], extras: &[u8], value: &[u8]) -> Vec<u8> {
    let body = extras.len() + key.len() + value.len();
    let mut p = vec![0x80, op];
    p.extend_from_slice(&(key.len() as u16).to_be_bytes());
    p.extend_from_slice(&[extras.len() as u8, 0, 0, 0]);
    p.extend_from_slice(&(body as u32).to_be_bytes());
    p.extend_from_slice(&[0; 12]);
    p.extend_from_slice(extras);
    p.extend_from_slice(key);
    p.extend_from_slice(value);
    p
}

#[test]
fn binary_packets_memcached_reads_shorter_than_their_body_are_refused() {
    let s = setup();
    // stat and touch read only their key and extras: memcached runs the rest
    // of the declared body as new packets (here a forbidden delete)
    let hidden = binary(0x04, b"secret/bcanary", &[], &[]);
    for (what, packet) in
        [("stat", binary(0x10, b"", &[], &hidden)), ("touch", binary(0x1c, b"public/t", &[0; 4], &hidden))]
    {
        exchange(s.direct.addr, b"set secret/bcanary 0 0 6\r\nintact\r\n");
        exchange(s.direct.addr, &packet);
        assert_eq!(value_of(s.direct.addr, "secret/bcanary"), None, "{what}: memcached ran the hidden delete");
        let through = exchange_bytes(s.listener, &packet);
        assert_eq!(through.len(), 24 + "Invalid arguments".len(), "{what}: {through:?}");
        assert_eq!((through[0], through[1], u16::from_be_bytes([through[6], through[7]])), (0x81, packet[1], 0x0004));
        assert_eq!(value_of(s.behind.addr, "secret/bcanary").as_deref(), Some("intact"), "{what}");
        s.weir.wait_flow("protocol=memcached&verdict=error", what, |f| {
            f.reason.as_deref().is_some_and(|r| r.contains("new requests"))
        });
    }
}

#[test]
fn answers_for_memcached_keep_their_place_behind_quiet_requests() {
    let s = setup();
    exchange(s.behind.addr, b"set public/q 0 0 2\r\nhi\r\n");
    exchange(s.direct.addr, b"set public/q 0 0 2\r\nhi\r\n");
    // a quiet hit, a quiet miss, requests memcached refuses, a bad data
    // chunk, an allowed get: weir's answers land where memcached's do
    let pipeline = b"mg public/q v q\r\nmg public/none v q\r\nmg public/q Z\r\nset public/q 0 0 1\r\nXYZ\r\n\
                     incr public/q x\r\nget public/q\r\nmn\r\n";
    let direct = exchange(s.direct.addr, pipeline);
    assert_eq!(exchange(s.listener, pipeline), direct);
    assert!(direct.contains("CLIENT_ERROR invalid flag") && direct.ends_with("MN\r\n"), "{direct:?}");
}
