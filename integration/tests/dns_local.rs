//! The DNS proxy and `toFQDNs` in local mode, end to end: dig and kdig as
//! clients, unbound serving test zones as the resolver, weir's demo backend
//! as the service behind a learned name.

use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use weir_integration::resolver::{Unbound, dig, free_udp_and_tcp_port, kdig};
use weir_integration::*;

const CLIENT: &str = "127.0.0.2";
/// Where api.example.com points, and where the demo backend listens.
const API_ADDRESS: &str = "127.0.0.61";
/// Where cache.example.com points, and where memcached listens.
const CACHE_ADDRESS: &str = "127.0.0.62";
/// An address no DNS answer ever names.
const UNLEARNED_ADDRESS: &str = "127.0.0.63";

const ZONES: &[&str] = &["example.com.", "example.org."];

fn records() -> Vec<String> {
    let mut records = vec![
        format!("api.example.com. 2 IN A {API_ADDRESS}"),
        format!("cache.example.com. 2 IN A {CACHE_ADDRESS}"),
        "www.example.com. 300 IN A 127.0.0.70".into(),
        "a.b.example.com. 300 IN A 127.0.0.71".into(),
        "exact.example.org. 300 IN A 127.0.0.72".into(),
        "other.example.org. 300 IN A 127.0.0.73".into(),
    ];
    // 40 addresses: more than 512 bytes, so a plain-DNS UDP answer is truncated
    records.extend((1..=40).map(|i| format!("big.example.com. 300 IN A 127.0.1.{i}")));
    records
}

fn unbound() -> Unbound {
    let records = records();
    Unbound::start(ZONES, &records.iter().map(String::as_str).collect::<Vec<_>>())
}

const POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-egress}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
    - toEndpoints: [{matchLabels: {k8s-app: kube-dns}}]
      toPorts:
        - ports: [{port: "53", protocol: ANY}]
          rules:
            dns:
              - matchPattern: "*.example.com"
              - matchName: "Exact.Example.ORG."
    - toFQDNs: [{matchName: api.example.com}]
      toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
    - toFQDNs: [{matchName: cache.example.com}]
      toPorts: [{ports: [{port: "11211", protocol: TCP}]}]
"#;

/// A policy that changes nothing for the client: writing it only makes a new model.
const UNRELATED_POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: unrelated}
spec:
  endpointSelector: {matchLabels: {app: nobody}}
  egress: [{toEndpoints: [{matchLabels: {app: nothing}}]}]
"#;

/// weir.yaml: the client endpoint, a DNS listener in front of `resolver`,
/// and HTTP listeners to the world addresses `api` and `unlearned`.
fn config(dns_port: u16, resolver: SocketAddr, api: SocketAddr, api_port: u16, extra: &str) -> String {
    let unlearned_port = free_port();
    format!(
        "admin: ADMIN\n\
         endpoints:\n  - {{name: client, address: {CLIENT}, labels: {{app: client}}}}\n\
         listeners:\n  \
         - {{name: dns, protocol: dns, bind: 127.0.0.1:{dns_port}, upstream: {resolver}, \
              destination: {{labels: {{k8s-app: kube-dns}}, port: 53}}}}\n  \
         - {{name: api, bind: 127.0.0.1:{api_port}, upstream: {api}, destination: {{port: 8080}}}}\n  \
         - {{name: unlearned, bind: 127.0.0.1:{unlearned_port}, upstream: {UNLEARNED_ADDRESS}:{}, \
              destination: {{port: 8080}}}}\n{extra}",
        api.port()
    )
}

fn dns_addr(port: u16) -> SocketAddr {
    format!("127.0.0.1:{port}").parse().unwrap()
}

fn from_client<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec!["-b", CLIENT, "+time=3", "+tries=1"];
    all.extend_from_slice(args);
    all
}

#[test]
fn queries_are_refused_or_answered_by_cilium_name_patterns() {
    let resolver = unbound();
    let dns_port = free_udp_and_tcp_port();
    let weir = Weir::start(&config(dns_port, resolver.addr, dns_addr(1), free_port(), ""), &[("p.yaml", POLICY)]);
    let dns = dns_addr(dns_port);

    let ok = dig(dns, &from_client(&["api.example.com", "A"]));
    assert_eq!(ok.status.as_deref(), Some("NOERROR"), "{}", ok.output);
    assert_eq!(ok.data(), [API_ADDRESS], "the resolver's answer, relayed");
    // case and the trailing dot do not matter, in the query or in the rule
    for name in ["API.Example.COM.", "www.example.com", "exact.example.org.", "EXACT.example.org"] {
        let a = dig(dns, &from_client(&[name, "A"]));
        assert_eq!(a.status.as_deref(), Some("NOERROR"), "{name}: {}", a.output);
        assert_eq!(a.answers.len(), 1, "{name}: {}", a.output);
    }
    // `*` stays within one label and needs one; matchName is exact
    for name in ["a.b.example.com", "example.com", "other.example.org", "example.org.evil.net"] {
        let refused = dig(dns, &from_client(&[name, "A"]));
        assert_eq!(refused.status.as_deref(), Some("REFUSED"), "{name}: {}", refused.output);
        assert!(refused.answers.is_empty());
        assert!(refused.output.contains(&format!(";{}.", name.trim_end_matches('.'))), "the question comes back");
    }

    // TCP, with Knot's client: the same verdicts
    let tcp = kdig(dns, &["-b", CLIENT, "+tcp", "www.example.com", "A"]);
    assert_eq!(tcp.status.as_deref(), Some("NOERROR"), "{}", tcp.output);
    assert_eq!(tcp.data(), ["127.0.0.70"]);
    let tcp = kdig(dns, &["-b", CLIENT, "+tcp", "other.example.org", "A"]);
    assert_eq!(tcp.status.as_deref(), Some("REFUSED"), "{}", tcp.output);

    // EDNS0 passes through: the client's OPT record reaches the resolver and its answer comes back
    let edns = dig(dns, &from_client(&["+edns=0", "+bufsize=1232", "www.example.com"]));
    assert!(edns.output.contains("OPT PSEUDOSECTION") && edns.output.contains("udp: "), "{}", edns.output);

    let denied = weir.flows("protocol=dns&verdict=denied&dns_name=%5Ea%5C.b%5C.");
    assert_eq!(denied.len(), 1, "{denied:?}");
    let d = &denied[0];
    let dns_flow = d.dns().unwrap();
    assert_eq!((dns_flow.query.as_str(), dns_flow.qtype.as_str()), ("a.b.example.com", "A"));
    assert_eq!(dns_flow.rcode.as_deref(), Some("REFUSED"));
    assert_eq!(
        d.reason.as_deref(),
        Some(
            "dns-policy: no DNS rule allows a.b.example.com (rules of default/client-egress spec.egress[0].toPorts[0])"
        )
    );
    assert!(d.source.labels.iter().any(|l| l == "k8s:app=client"), "{d:?}");
    let forwarded = weir.flows("protocol=dns&verdict=forwarded&dns_name=%5Eapi%5C.");
    let f = forwarded[0].dns().unwrap();
    assert_eq!(f.answers[0].data, API_ADDRESS);
    assert_eq!(f.rcode.as_deref(), Some("NOERROR"));
    assert!(forwarded[0].matched.as_deref().unwrap_or("").contains("client-egress"), "{:?}", forwarded[0]);

    let metrics = weir.metrics();
    assert!(metrics.contains(r#"weir_dns_queries_total{verdict="denied",rcode="REFUSED"} 5"#), "{metrics}");
    assert!(metrics.contains("weir_dns_upstream_duration_seconds_count"), "{metrics}");
}

#[test]
fn truncated_udp_answers_send_the_client_to_tcp() {
    let resolver = unbound();
    let dns_port = free_udp_and_tcp_port();
    let weir = Weir::start(&config(dns_port, resolver.addr, dns_addr(1), free_port(), ""), &[("p.yaml", POLICY)]);
    // plain DNS (no EDNS): 512 bytes at most over UDP; dig retries on TCP by itself
    let big = dig(dns_addr(dns_port), &from_client(&["+noedns", "big.example.com", "A"]));
    assert_eq!(big.status.as_deref(), Some("NOERROR"), "{}", big.output);
    assert_eq!(big.answers.len(), 40, "{}", big.output);
    assert!(big.output.contains("Truncated, retrying in TCP mode"), "{}", big.output);
    let flows = weir.flows("protocol=dns&dns_name=%5Ebig");
    let udp = flows.iter().find(|f| f.dns().unwrap().transport == "udp").expect("the UDP try");
    assert!(udp.dns().unwrap().truncated, "{udp:?}");
    let tcp = flows.iter().find(|f| f.dns().unwrap().transport == "tcp").expect("the TCP retry");
    assert_eq!(tcp.dns().unwrap().answers.len(), 40);
}

#[test]
fn one_tcp_connection_carries_several_queries_in_order() {
    let resolver = unbound();
    let dns_port = free_udp_and_tcp_port();
    let weir = Weir::start(&config(dns_port, resolver.addr, dns_addr(1), free_port(), ""), &[("p.yaml", POLICY)]);
    // pipelined on one connection: allowed, refused, allowed
    let mut stream = connect_from(CLIENT, dns_addr(dns_port));
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut burst = Vec::new();
    for (id, name) in [(1u16, "www.example.com"), (2, "other.example.org"), (3, "api.example.com")] {
        let q = query_bytes(id, name);
        burst.extend_from_slice(&(q.len() as u16).to_be_bytes());
        burst.extend_from_slice(&q);
    }
    stream.write_all(&burst).unwrap();
    let mut answers = Vec::new();
    for _ in 0..3 {
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).unwrap();
        let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
        stream.read_exact(&mut msg).unwrap();
        answers.push((u16::from_be_bytes([msg[0], msg[1]]), msg[3] & 0x0f));
    }
    assert_eq!(answers, [(1, 0), (2, 5), (3, 0)], "(id, rcode) in order: NOERROR, REFUSED, NOERROR");
    // the connection is still usable: kdig's keep-open mode sends two more on one connection
    let two = kdig(dns_addr(dns_port), &["-b", CLIENT, "+tcp", "+keepopen", "www.example.com", "api.example.com"]);
    assert_eq!(two.output.matches("status: NOERROR").count(), 2, "{}", two.output);
    let flows = weir.flows("protocol=dns");
    let tcp: Vec<_> = flows.iter().filter(|f| f.dns().unwrap().transport == "tcp").collect();
    assert_eq!(tcp.len(), 5);
    assert!(tcp[..3].iter().all(|f| f.connection == tcp[0].connection), "one connection, one id");
}

/// A minimal query (RD set, one question, class IN, type A).
fn query_bytes(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

#[test]
fn malformed_queries_and_a_silent_resolver_get_clear_answers() {
    let resolver = unbound();
    let dns_port = free_udp_and_tcp_port();
    // a "resolver" that takes queries and never answers
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let silent_port = free_udp_and_tcp_port();
    let extra = format!(
        "  - {{name: silent, protocol: dns, bind: 127.0.0.1:{silent_port}, upstream: {}, \
              destination: {{labels: {{k8s-app: kube-dns}}, port: 53}}}}\n\
         dns: {{upstream_timeout: 300ms, refusal: nxdomain}}\n",
        silent.local_addr().unwrap()
    );
    let weir = Weir::start(&config(dns_port, resolver.addr, dns_addr(1), free_port(), &extra), &[("p.yaml", POLICY)]);
    let dns = dns_addr(dns_port);

    let client = UdpSocket::bind(format!("{CLIENT}:0")).unwrap();
    client.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let mut buf = [0u8; 512];
    // not even a header: nothing to answer, nothing breaks
    client.send_to(b"hello", dns).unwrap();
    assert!(client.recv_from(&mut buf).is_err(), "five bytes get no answer");
    // a header with a broken question: FORMERR with the client's id
    let mut broken = query_bytes(0xBEEF, "www.example.com");
    broken.truncate(20);
    client.send_to(&broken, dns).unwrap();
    let (n, _) = client.recv_from(&mut buf).expect("FORMERR");
    assert_eq!((u16::from_be_bytes([buf[0], buf[1]]), buf[3] & 0x0f, n), (0xBEEF, 1, 12));
    // the same over TCP
    let mut stream = connect_from(CLIENT, dns);
    stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    stream.write_all(&[0, broken.len() as u8]).unwrap();
    stream.write_all(&broken).unwrap();
    let mut answer = [0u8; 14];
    stream.read_exact(&mut answer).unwrap();
    assert_eq!((answer[2], answer[3], answer[5] & 0x0f), (0xBE, 0xEF, 1));
    // and the proxy keeps serving
    let ok = dig(dns, &from_client(&["www.example.com"]));
    assert_eq!(ok.status.as_deref(), Some("NOERROR"), "{}", ok.output);
    // refusals are NXDOMAIN when configured so
    let nx = dig(dns, &from_client(&["other.example.org"]));
    assert_eq!(nx.status.as_deref(), Some("NXDOMAIN"), "{}", nx.output);

    let started = Instant::now();
    let servfail = dig(dns_addr(silent_port), &from_client(&["www.example.com"]));
    assert_eq!(servfail.status.as_deref(), Some("SERVFAIL"), "{}", servfail.output);
    assert!(started.elapsed() < Duration::from_secs(3), "SERVFAIL after the upstream timeout, not dig's");
    let errors = weir.flows("protocol=dns&verdict=error");
    assert!(errors.iter().any(|f| f.reason.as_deref().unwrap_or("").contains("malformed query")), "{errors:?}");
    assert!(errors.iter().any(|f| f.reason.as_deref().unwrap_or("").contains("not a DNS query")), "{errors:?}");
    assert!(errors.iter().any(|f| f.reason.as_deref().unwrap_or("").contains("did not answer within 300ms")));
}

#[test]
fn to_fqdns_opens_learned_addresses_for_their_ttl_only() {
    let resolver = unbound();
    let backend = DemoBackend::start_on(format!("{API_ADDRESS}:{}", free_port()).parse().unwrap());
    let (dns_port, api_port) = (free_udp_and_tcp_port(), free_port());
    let weir = Weir::start(&config(dns_port, resolver.addr, backend.addr, api_port, ""), &[("p.yaml", POLICY)]);
    let api = format!("http://127.0.0.1:{api_port}/");

    let before = curl_from(CLIENT, &[&api]);
    assert_eq!(before.status, 0, "blocked before any lookup: {before:?}");
    let dropped = weir.flows("verdict=dropped&protocol=http");
    assert!(dropped[0].reason.as_deref().unwrap_or("").contains("no egress rule"), "{dropped:?}");

    let lookup = dig(dns_addr(dns_port), &from_client(&["api.example.com", "A"]));
    assert_eq!(lookup.data(), [API_ADDRESS], "{}", lookup.output);
    let after = curl_from(CLIENT, &[&api]);
    assert_eq!(after.status, 200, "allowed after the lookup: {after:?}");

    // the learned entry, as the CLI shows it
    let cli = std::process::Command::new(weir_bin())
        .args(["fqdn", "cache", "--admin", &weir.admin.to_string()])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&cli.stdout);
    assert!(table.contains("default/client") && table.contains("api.example.com") && table.contains(API_ADDRESS));

    // an address of the world that no answer named stays closed
    let unlearned = weir.config()["model"]["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "unlearned")
        .unwrap()["bind"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(curl_from(CLIENT, &[&format!("http://{unlearned}/")]).status, 0);

    // a connection opened while the answer held outlives its TTL
    let mut kept = connect_from(CLIENT, format!("127.0.0.1:{api_port}").parse().unwrap());
    let get = b"GET / HTTP/1.1\r\nHost: api\r\n\r\n";
    kept.write_all(get).unwrap();
    assert!(read_until_quiet(&mut kept, Duration::from_millis(300)).starts_with("HTTP/1.1 200"));
    std::thread::sleep(Duration::from_millis(2600)); // the TTL was 2s
    kept.write_all(get).unwrap();
    assert!(read_until_quiet(&mut kept, Duration::from_millis(300)).starts_with("HTTP/1.1 200"), "not cut");
    // while it is open the address is kept ("zombie"); once closed, it goes
    drop(kept);
    wait_for("the expired address to be forgotten", Duration::from_secs(5), || curl_from(CLIENT, &[&api]).status == 0);
}

/// The lease is the connection step's, so every TCP engine holds it, not
/// only HTTP: a memcached connection `toFQDNs` allowed outlives the answer's
/// TTL, even when a policy change makes it decide again after the TTL, and
/// once it closes, the address goes.
#[test]
fn a_memcached_connection_to_a_learned_address_outlives_the_ttl() {
    let resolver = unbound();
    let memcached = Memcached::start_on(format!("{CACHE_ADDRESS}:{}", free_port()).parse().unwrap());
    let (dns_port, api_port, cache_port) = (free_udp_and_tcp_port(), free_port(), free_port());
    let cache: SocketAddr = format!("127.0.0.1:{cache_port}").parse().unwrap();
    let extra = format!(
        "  - {{name: cache, protocol: memcached, bind: {cache}, upstream: {}, destination: {{port: 11211}}}}\n",
        memcached.addr
    );
    let api = DemoBackend::start_on(format!("{API_ADDRESS}:{}", free_port()).parse().unwrap());
    let weir = Weir::start(&config(dns_port, resolver.addr, api.addr, api_port, &extra), &[("p.yaml", POLICY)]);
    // a dropped connection may be reset before the write: then nothing is read
    let version = |stream: &mut std::net::TcpStream| {
        let _ = stream.write_all(b"version\r\n");
        read_until_quiet(stream, Duration::from_millis(300))
    };

    assert_eq!(version(&mut connect_from(CLIENT, cache)), "", "dropped before any lookup");
    let lookup = dig(dns_addr(dns_port), &from_client(&["cache.example.com", "A"]));
    assert_eq!(lookup.data(), [CACHE_ADDRESS], "{}", lookup.output);
    let mut kept = connect_from(CLIENT, cache);
    assert!(version(&mut kept).starts_with("VERSION "), "allowed after the lookup");

    // past the TTL (2s), a policy change makes the open connection decide
    // again under the new model: the lease is what still allows it
    std::thread::sleep(Duration::from_millis(2600));
    let generation = weir.generation();
    weir.write_policy("unrelated.yaml", UNRELATED_POLICY);
    weir.wait_generation_above(generation);
    assert!(version(&mut kept).starts_with("VERSION "), "not cut when its TTL ran out");
    let denied = weir.flows("verdict=denied&protocol=memcached");
    assert!(denied.is_empty(), "{denied:?}");

    // while it is open the address is kept for everyone of this endpoint;
    // once closed, it goes, and a new connection is dropped
    drop(kept);
    wait_for("the expired address to be forgotten", Duration::from_secs(5), || {
        version(&mut connect_from(CLIENT, cache)).is_empty()
    });
    let dropped = weir.flows("verdict=dropped&protocol=memcached");
    assert!(dropped[0].reason.as_deref().unwrap_or("").contains("no egress rule"), "{dropped:?}");
}

#[test]
fn learned_addresses_survive_a_restart() {
    let resolver = unbound();
    let backend = DemoBackend::start_on(format!("{API_ADDRESS}:{}", free_port()).parse().unwrap());
    let (dns_port, api_port) = (free_udp_and_tcp_port(), free_port());
    let state = tempfile::tempdir().unwrap();
    let cache = state.path().join("fqdn.json");
    // a long TTL floor, so the entry outlives the restart
    let extra = format!("dns: {{min_ttl: 1h, cache_file: {}}}\n", cache.display());
    let yaml = config(dns_port, resolver.addr, backend.addr, api_port, &extra);
    let api = format!("http://127.0.0.1:{api_port}/");
    let mut first = Weir::start(&yaml, &[("p.yaml", POLICY)]);
    assert_eq!(dig(dns_addr(dns_port), &from_client(&["api.example.com"])).data(), [API_ADDRESS]);
    assert_eq!(curl_from(CLIENT, &[&api]).status, 200);
    assert!(first.terminate().is_some_and(|s| s.success()), "{}", first.log());
    drop(first);

    let second = Weir::start(&yaml, &[("p.yaml", POLICY)]);
    assert!(second.log().contains("FQDN cache restored"), "{}", second.log());
    assert_eq!(curl_from(CLIENT, &[&api]).status, 200, "allowed without a new lookup");
}

/// A query for `name` (allowed by the policy) that carries something more
/// than its question: what unbound answers when sent it directly.
struct Tainted {
    what: &'static str,
    bytes: Vec<u8>,
    /// unbound's own rcode for these bytes (1 FORMERR, 3 NXDOMAIN).
    unbound_rcode: u8,
}

fn tainted(id: u16, name: &str) -> Vec<Tainted> {
    let plain = query_bytes(id, name);
    let set_count = |mut q: Vec<u8>, at: usize| {
        q[at + 1] = 1;
        q
    };
    // a record for a name the policy refuses
    let record = {
        let mut r = query_bytes(0, "other.example.org")[12..].to_vec();
        r.extend_from_slice(&[0, 0, 0, 60, 0, 4, 127, 0, 0, 73]);
        r
    };
    let opt = [0u8, 0, 41, 4, 208, 0, 0, 0, 0, 0, 0];
    let with = |at: usize, tail: &[&[u8]]| {
        let mut q = set_count(plain.clone(), at);
        tail.iter().for_each(|t| q.extend_from_slice(t));
        q
    };
    let mut two_additional = with(10, &[&opt, &record]);
    two_additional[11] = 2;
    vec![
        Tainted {
            what: "a second question behind QDCOUNT=1",
            bytes: [plain.clone(), query_bytes(0, "other.example.org")[12..].to_vec()].concat(),
            unbound_rcode: 3,
        },
        Tainted {
            what: "trailing garbage",
            bytes: [plain.clone(), b"\xde\xad\xbe\xef".to_vec()].concat(),
            unbound_rcode: 3,
        },
        Tainted {
            what: "garbage after an OPT record",
            bytes: [with(10, &[&opt]), vec![0xff; 9]].concat(),
            unbound_rcode: 3,
        },
        Tainted { what: "an answer record", bytes: with(6, &[&record]), unbound_rcode: 1 },
        Tainted { what: "an authority record", bytes: with(8, &[&record]), unbound_rcode: 1 },
        Tainted { what: "an additional record that is not OPT", bytes: with(10, &[&record]), unbound_rcode: 1 },
        Tainted { what: "an OPT record and another", bytes: two_additional, unbound_rcode: 1 },
    ]
}

fn rcode_over_udp(client: &UdpSocket, server: SocketAddr, query: &[u8]) -> (u16, u8) {
    client.send_to(query, server).unwrap();
    let mut buf = [0u8; 1500];
    let (n, _) = client.recv_from(&mut buf).expect("an answer");
    assert!(n >= 12);
    (u16::from_be_bytes([buf[0], buf[1]]), buf[3] & 0x0f)
}

fn rcode_over_tcp(server: SocketAddr, query: &[u8]) -> (u16, u8) {
    let mut stream = connect_from(CLIENT, server);
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream.write_all(&[&(query.len() as u16).to_be_bytes()[..], query].concat()).unwrap();
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).unwrap();
    let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
    stream.read_exact(&mut msg).unwrap();
    (u16::from_be_bytes([msg[0], msg[1]]), msg[3] & 0x0f)
}

/// Bytes nobody judged never reach the resolver: a query carrying anything
/// but its question and one OPT record is answered FORMERR by weir and not
/// forwarded, over UDP and TCP. unbound itself answers FORMERR to the
/// records, and ignores trailing bytes (it answers the first question): weir
/// is stricter there, so no resolver reads what weir did not judge.
#[test]
fn queries_carrying_more_than_their_question_get_formerr_and_reach_no_resolver() {
    let resolver = unbound();
    let dns_port = free_udp_and_tcp_port();
    let weir = Weir::start(&config(dns_port, resolver.addr, dns_addr(1), free_port(), ""), &[("p.yaml", POLICY)]);
    let dns = dns_addr(dns_port);
    let client = UdpSocket::bind(format!("{CLIENT}:0")).unwrap();
    client.set_read_timeout(Some(Duration::from_secs(3))).unwrap();

    let cases = tainted(0, "x.example.com").len();
    for i in 0..cases {
        // a name of its own per case, to find it in unbound's log
        let id = 0x5000 + i as u16;
        let case = tainted(id, &format!("direct{i}.example.com")).remove(i);
        assert_eq!(
            rcode_over_udp(&client, resolver.addr, &case.bytes),
            (id, case.unbound_rcode),
            "unbound, {}",
            case.what
        );
    }
    for (i, case) in tainted(0x6000, "via-weir.example.com").into_iter().enumerate() {
        let id = 0x6000 + i as u16;
        let mut bytes = case.bytes;
        bytes[..2].copy_from_slice(&id.to_be_bytes());
        assert_eq!(rcode_over_udp(&client, dns, &bytes), (id, 1), "weir over UDP, {}", case.what);
        assert_eq!(rcode_over_tcp(dns, &bytes), (id, 1), "weir over TCP, {}", case.what);
    }
    // a clean query still goes through, and shows unbound's log is read
    let clean = query_bytes(0x7000, "clean.example.com");
    assert_eq!(rcode_over_udp(&client, dns, &clean), (0x7000, 3), "NXDOMAIN from unbound");
    wait_for("unbound to log the clean query", Duration::from_secs(10), || {
        resolver.queries_read().iter().any(|q| q == "clean.example.com. A IN")
    });
    let read = resolver.queries_read();
    // unbound read the question of the tainted queries sent to it directly
    // when it answered them (trailing bytes ignored), and of the non-OPT
    // additional record before answering FORMERR ...
    let direct: Vec<&str> = read.iter().filter(|q| q.starts_with("direct")).map(String::as_str).collect();
    assert_eq!(
        direct,
        [
            "direct0.example.com. A IN",
            "direct1.example.com. A IN",
            "direct2.example.com. A IN",
            "direct5.example.com. A IN"
        ],
        "{read:?}"
    );
    // ... and never saw one of those weir was sent
    assert!(!read.iter().any(|q| q.contains("via-weir")), "{read:?}");
    assert!(!read.iter().any(|q| q.contains("other.example.org")), "{read:?}");

    let errors = weir.flows("protocol=dns&verdict=error");
    let formerr: Vec<_> =
        errors.iter().filter(|f| f.reason.as_deref().unwrap_or("").contains("not forwarded")).collect();
    assert_eq!(formerr.len(), 14, "seven cases, UDP and TCP: {errors:#?}");
    assert!(formerr.iter().all(|f| f.dns().unwrap().rcode.as_deref() == Some("FORMERR")));
    assert!(formerr.iter().any(|f| f.reason.as_deref().unwrap().contains("byte(s) after the end")), "{formerr:#?}");
    assert!(formerr.iter().any(|f| f.reason.as_deref().unwrap().contains("1 answer record")), "{formerr:#?}");
}
