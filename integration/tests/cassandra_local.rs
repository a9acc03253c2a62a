//! The Cassandra engine in local mode, end to end, against a STAND-IN server
//! (`cassandra_real.rs` runs the real Cassandra 5 node; the stand-in stays for
//! broken input and for its log of what reached it: `integration/python/cql_standin.py`,
//! built on the cassandra-driver's own protocol code; it logs every request
//! it receives) and the client is the real cassandra-driver's connection
//! layer (`cassandra_client.py`), on protocol v3, v4 and v5. Raw sockets
//! bring the broken frames. Clients connect from 127.0.0.1 (`cql-client`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use weir_integration::*;

const CLIENT: &str = "127.0.0.1";
/// Another identity (`cql-reader`), allowed to read app.items only.
const READER: &str = "127.0.0.2";

const POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: cql-access}
spec:
  endpointSelector: {matchLabels: {app: cassandra}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: cql-client}}]
      toPorts:
        - ports: [{port: "9042", protocol: TCP}]
          rules:
            l7proto: cassandra
            l7:
              - {query_action: select, query_table: "^app\\.(orders|items)$"}
              - {query_action: insert, query_table: "^app\\.orders$"}
              - {query_action: select, query_table: "^system\\."}
    - fromEndpoints: [{matchLabels: {app: cql-reader}}]
      toPorts:
        - ports: [{port: "9042", protocol: TCP}]
          rules:
            l7proto: cassandra
            l7:
              - {query_action: select, query_table: "^app\\.items$"}
"#;

/// The stand-in CQL server, with the log of what reached it.
struct Standin {
    addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
    _process: Process,
}

impl Standin {
    fn start(args: &[&str]) -> Standin {
        let dir = tempfile::tempdir().unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = dir.path().join("requests.jsonl");
        let mut all = vec![addr.to_string(), log.display().to_string()];
        all.extend(args.iter().map(|a| a.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let process = python_server("cql_standin.py", &all, addr);
        Standin { addr, log, _dir: dir, _process: process }
    }

    /// Every request the server received.
    fn received(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    fn received_queries(&self) -> Vec<String> {
        self.received().iter().filter_map(|r| r["query"].as_str().map(str::to_string)).collect()
    }

    /// (action, table) of every statement the server ran, as Cassandra
    /// would read the requests that reached it.
    fn ran(&self) -> Vec<(String, String)> {
        let runs = self.received().into_iter().flat_map(|r| r["runs"].as_array().cloned().unwrap_or_default());
        runs.map(|run| (run[0].as_str().unwrap().to_string(), run[1].as_str().unwrap_or("").to_string())).collect()
    }
}

fn start_weir(upstream: SocketAddr) -> (Weir, SocketAddr) {
    let listener: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    (start_weir_on(upstream, listener), listener)
}

fn start_weir_on(upstream: SocketAddr, listener: SocketAddr) -> Weir {
    let config = format!(
        "admin: ADMIN\n\
         endpoints:\n  - {{name: client, address: {CLIENT}, labels: {{app: cql-client}}}}\n  \
         - {{name: reader, address: {READER}, labels: {{app: cql-reader}}}}\n\
         listeners:\n  \
         - {{name: cql, protocol: cassandra, bind: {listener}, upstream: {upstream}, \
              destination: {{labels: {{app: cassandra}}, port: 9042}}}}\n"
    );
    Weir::start(&config, &[("cql.yaml", POLICY)])
}

struct Client {
    connected: Value,
    results: Vec<Value>,
}

fn client(addr: SocketAddr, version: u8, ops: Value, flags: &[&str]) -> Client {
    let mut args = vec![addr.to_string(), version.to_string(), ops.to_string()];
    args.extend(flags.iter().map(|f| f.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = python("cassandra_client.py", &args);
    assert!(out.status.success(), "cassandra_client.py: {}", String::from_utf8_lossy(&out.stderr));
    let mut lines =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect::<Vec<Value>>();
    assert!(!lines.is_empty(), "no output: {}", String::from_utf8_lossy(&out.stderr));
    let connected = lines.remove(0);
    assert_eq!(connected["connected"], true, "{connected}");
    Client { connected, results: lines }
}

fn rows(r: &Value) -> Value {
    assert_eq!(r["ok"], true, "{r}");
    r["rows"].clone()
}

fn unauthorized(r: &Value) {
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["error"], "Unauthorized", "{r}");
    assert!(r["message"].as_str().unwrap().contains("code=2100"), "{r}");
}

/// Every flow of one connection.
fn flows_of(weir: &Weir, connection: u64) -> Vec<FlowRecord> {
    weir.flows("protocol=cassandra").into_iter().filter(|f| f.connection == connection).collect()
}

fn statements(f: &FlowRecord) -> Vec<(String, Option<String>)> {
    f.cassandra().unwrap().statements.iter().map(|s| (s.action.clone(), s.table.clone())).collect()
}

/// A legacy (v3/v4) or pre-handshake frame.
fn frame(version: u8, stream: i16, opcode: u8, body: &[u8]) -> Vec<u8> {
    let mut f = vec![version, 0];
    f.extend_from_slice(&stream.to_be_bytes());
    f.push(opcode);
    f.extend_from_slice(&(body.len() as u32).to_be_bytes());
    f.extend_from_slice(body);
    f
}

fn long_string(s: &str) -> Vec<u8> {
    let mut b = (s.len() as u32).to_be_bytes().to_vec();
    b.extend_from_slice(s.as_bytes());
    b
}

fn query(version: u8, stream: i16, cql: &str) -> Vec<u8> {
    let mut body = long_string(cql);
    body.extend_from_slice(&[0, 1, 0]); // consistency ONE, no flags
    frame(version, stream, 0x07, &body)
}

fn string_map(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut b = (pairs.len() as u16).to_be_bytes().to_vec();
    for (k, v) in pairs {
        for s in [k, v] {
            b.extend_from_slice(&(s.len() as u16).to_be_bytes());
            b.extend_from_slice(s.as_bytes());
        }
    }
    b
}

/// Read frames until the peer closes or goes quiet.
fn read_quiet(stream: &mut TcpStream, quiet: Duration) -> Vec<u8> {
    stream.set_read_timeout(Some(quiet)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}

/// (stream, opcode, body) of each legacy frame in `bytes`.
fn parse_frames(mut bytes: &[u8]) -> Vec<(i16, u8, Vec<u8>)> {
    let mut out = Vec::new();
    while bytes.len() >= 9 {
        let len = u32::from_be_bytes(bytes[5..9].try_into().unwrap()) as usize;
        out.push((i16::from_be_bytes([bytes[2], bytes[3]]), bytes[4], bytes[9..9 + len].to_vec()));
        bytes = &bytes[9 + len..];
    }
    out
}

fn error_code(body: &[u8]) -> u32 {
    u32::from_be_bytes(body[..4].try_into().unwrap())
}

#[test]
fn driver_requests_are_allowed_or_refused_per_statement_and_the_connection_stays_usable() {
    let standin = Standin::start(&[]);
    let (weir, listener) = start_weir(standin.addr);
    let c = client(
        listener,
        4,
        json!([
            ["query", "USE app"],
            ["query", "SELECT * FROM orders WHERE id = 1"],
            ["query", "SELECT * FROM secrets"],
            ["query", "DELETE FROM orders WHERE id = 1"],
            ["query", "SELECT * /* FROM app.orders */ FROM app.secrets"],
            ["prepare", "items", "SELECT * FROM items"],
            ["execute", "items"],
            ["prepare", "wipe", "TRUNCATE orders"],
            ["batch", ["INSERT INTO orders (id) VALUES (1)", "INSERT INTO app.orders (id) VALUES (2)"]],
            ["batch", ["INSERT INTO orders (id) VALUES (3)", "INSERT INTO app.audit (id) VALUES (4)"]],
            [
                "together",
                [
                    ["query", "SELECT * FROM items"],
                    ["query", "SELECT * FROM ledger"],
                    ["query", "SELECT * FROM system.local"]
                ]
            ],
            ["query", "SELECT * FROM orders"],
        ]),
        &[],
    );
    let r = &c.results;
    assert_eq!(r.len(), 14, "{r:?}");
    assert_eq!(r[0]["kind"], 3, "USE answered SetKeyspace: {}", r[0]);
    assert_eq!(rows(&r[1]), json!([["SELECT * FROM orders WHERE id = 1", "app"]]));
    for i in [2, 3, 4, 7, 9, 11] {
        unauthorized(&r[i]);
    }
    assert_eq!(r[5]["kind"], 4, "prepared: {}", r[5]);
    assert_eq!(rows(&r[6]), json!([["SELECT * FROM items", "app"]]), "EXECUTE ran the prepared text");
    assert_eq!(r[8]["kind"], 1, "an allowed batch: {}", r[8]);
    // several streams at once: each answered on its own stream
    assert_eq!(rows(&r[10]), json!([["SELECT * FROM items", "app"]]));
    assert_eq!(rows(&r[12])[0][0], "local", "the stand-in's node row: {}", r[12]);
    assert_eq!(rows(&r[13]), json!([["SELECT * FROM orders", "app"]]), "still usable after refusals");

    // the server never saw a refused request
    let seen = standin.received_queries();
    for refused in ["secrets", "DELETE", "TRUNCATE", "ledger", "audit"] {
        assert!(!seen.iter().any(|q| q.contains(refused)), "{refused} reached the server: {seen:?}");
    }
    let batches: Vec<Value> = standin.received().into_iter().filter(|r| r["op"] == "batch").collect();
    assert_eq!(batches.len(), 1, "{batches:?}");

    // flows: action and keyspace-qualified table, per statement
    let denied = weir.wait_flow("protocol=cassandra&verdict=denied", "the refused select", |f| {
        statements(f) == [("select".to_string(), Some("app.secrets".to_string()))]
            && f.cassandra().unwrap().opcode == "query"
    });
    let c = denied.cassandra().unwrap();
    assert_eq!((c.version, c.response.as_deref()), (4, Some("error 0x2100")));
    assert_eq!(
        denied.reason.as_deref(),
        Some(
            "cassandra-policy: select on app.secrets is not allowed (rules of default/cql-access spec.ingress[0].toPorts[0])"
        )
    );
    assert_eq!(denied.source.labels.first().map(String::as_str), Some("k8s:app=cql-client"));
    let batch = weir.wait_flow("protocol=cassandra&verdict=denied", "the refused batch", |f| {
        f.cassandra().unwrap().opcode == "batch"
    });
    assert_eq!(
        statements(&batch),
        [("insert".to_string(), Some("app.orders".to_string())), ("insert".to_string(), Some("app.audit".to_string()))]
    );
    let executed = weir.wait_flow("protocol=cassandra&verdict=forwarded", "the execute", |f| {
        f.cassandra().unwrap().opcode == "execute"
    });
    assert_eq!(statements(&executed), [("select".to_string(), Some("app.items".to_string()))]);
    assert_eq!(executed.cassandra().unwrap().response.as_deref(), Some("rows"));
    assert!(executed.latency_us.is_some());
    let truncate = weir.wait_flow("protocol=cassandra&verdict=denied", "the refused prepare", |f| {
        f.cassandra().unwrap().opcode == "prepare"
    });
    assert_eq!(statements(&truncate), [("truncate-table".to_string(), Some("app.orders".to_string()))]);
    let metrics = weir.metrics();
    assert!(metrics.contains(r#"weir_cassandra_requests_total{opcode="query",verdict="denied"} 4"#), "{metrics}");

    // and weir observe shows them
    let text = std::process::Command::new(weir_bin())
        .args([
            "observe",
            "--admin",
            &weir.admin.to_string(),
            "--no-follow",
            "--protocol",
            "cassandra",
            "--verdict",
            "denied",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.lines()
            .any(|l| l.contains("v4 query") && l.contains("select:app.secrets") && l.contains("=> error 0x2100")),
        "{text}"
    );
}

#[test]
fn a_query_sent_right_behind_use_is_judged_in_the_keyspace_use_sets() {
    let standin = Standin::start(&[]);
    let (weir, listener) = start_weir(standin.addr);
    let mut stream = connect_from(CLIENT, listener);
    stream.write_all(&frame(4, 0, 0x01, &string_map(&[("CQL_VERSION", "3.0.0")]))).unwrap();
    stream.write_all(&query(4, 1, "USE app")).unwrap();
    let answers = parse_frames(&read_quiet(&mut stream, Duration::from_millis(500)));
    assert_eq!(answers.iter().map(|a| a.1).collect::<Vec<_>>(), [0x02, 0x08]);
    // in one write: weir must not judge the SELECT before the USE is answered
    let mut both = query(4, 2, "USE other");
    both.extend(query(4, 3, "SELECT * FROM orders"));
    stream.write_all(&both).unwrap();
    let answers = parse_frames(&read_quiet(&mut stream, Duration::from_millis(500)));
    let by_stream: std::collections::HashMap<i16, (u8, Vec<u8>)> =
        answers.into_iter().map(|(s, op, body)| (s, (op, body))).collect();
    assert_eq!(by_stream[&2].0, 0x08, "USE answered");
    assert_eq!((by_stream[&3].0, error_code(&by_stream[&3].1)), (0x00, 0x2100), "other.orders is refused");
    weir.wait_flow("protocol=cassandra&verdict=denied", "the select in keyspace other", |f| {
        statements(f) == [("select".to_string(), Some("other.orders".to_string()))]
    });
    assert!(!standin.received_queries().contains(&"SELECT * FROM orders".to_string()));
}

#[test]
fn the_drivers_session_prepares_again_when_a_restarted_weir_answers_unprepared() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let standin = Standin::start(&[]);
    let listener: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut weir = start_weir_on(standin.addr, listener);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/cassandra_session.py");
    let mut session = Command::new("python3")
        .arg(script)
        .arg(listener.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(session.stdout.take().unwrap()).lines();
    let mut next = || -> Value { serde_json::from_str(&lines.next().expect("a line").unwrap()).unwrap() };
    // Cluster's control connection read system.local and system.peers through weir
    let executed = next();
    assert_eq!(executed["rows"], json!([["SELECT * FROM app.orders", null]]), "{executed}");
    let refused = next();
    assert_eq!(refused["error"], "Unauthorized", "{refused}");
    assert_eq!(next()["step"], "pause");

    // a new weir knows no prepared statement: it answers Unprepared, and
    // the driver prepares again, through weir, and retries by itself
    weir.terminate();
    let weir = start_weir_on(standin.addr, listener);
    writeln!(session.stdin.as_mut().unwrap()).unwrap();
    let again = next();
    assert_eq!(again["rows"], json!([["SELECT * FROM app.orders", null]]), "{again}");
    assert!(session.wait().unwrap().success());
    let prepares =
        standin.received().iter().filter(|r| r["op"] == "prepare" && r["query"] == "SELECT * FROM app.orders").count();
    assert_eq!(prepares, 2, "prepared once per weir");
    let unprepared = weir.wait_flow("protocol=cassandra&verdict=error", "the unknown id", |f| {
        f.cassandra().is_some_and(|c| c.opcode == "execute")
    });
    assert_eq!(unprepared.cassandra().unwrap().response.as_deref(), Some("error 0x2500"));
    weir.wait_flow("protocol=cassandra&verdict=forwarded", "the execute after preparing again", |f| {
        f.cassandra().is_some_and(|c| c.opcode == "execute" && c.response.as_deref() == Some("rows"))
    });
}

#[test]
fn protocol_v3_v4_and_v5_are_judged_alike() {
    let standin = Standin::start(&[]);
    let (weir, listener) = start_weir(standin.addr);
    for version in [3u8, 4, 5] {
        let c = client(
            listener,
            version,
            json!([
                ["query", "SELECT * FROM app.orders"],
                ["query", "UPDATE app.orders SET v = 1 WHERE id = 1"],
                ["prepare", "p", "SELECT * FROM app.items"],
                ["execute", "p"],
                // a large query: more than one v5 segment (128 KiB) each way
                ["query", "SELECT * FROM app.orders WHERE note = 'PAD'", 200_000],
            ]),
            &[],
        );
        let r = &c.results;
        assert_eq!(rows(&r[0]), json!([["SELECT * FROM app.orders", null]]), "v{version}");
        unauthorized(&r[1]);
        assert_eq!(rows(&r[3]), json!([["SELECT * FROM app.items", null]]), "v{version}");
        assert_eq!(rows(&r[4])[0][0].as_str().unwrap().len(), 200_040, "v{version}");
        weir.wait_flow("protocol=cassandra&verdict=denied", "the refused update", |f| {
            f.cassandra().is_some_and(|c| c.version == version && statements(f)[0].0 == "update")
        });
    }
    assert!(!standin.received_queries().iter().any(|q| q.starts_with("UPDATE")));
}

#[test]
fn prepared_ids_are_followed_across_connections_and_unknown_ones_get_unprepared() {
    let standin = Standin::start(&[]);
    let (weir, listener) = start_weir(standin.addr);
    // prepared on one connection...
    let first = client(listener, 4, json!([["prepare", "p", "SELECT * FROM app.orders"]]), &[]);
    let id = first.results[0]["id"].as_str().unwrap().to_string();
    // ...executed on another, as drivers do
    let second = client(listener, 4, json!([["execute_id", id], ["execute_id", "0badc0de"]]), &[]);
    assert_eq!(rows(&second.results[0]), json!([["SELECT * FROM app.orders", null]]));
    let unknown = &second.results[1];
    assert_eq!(unknown["error"], "PreparedQueryNotFound", "{unknown}");
    assert_eq!(unknown["code"], 0x2500);
    // the stand-in never saw the unknown id
    let executes: Vec<Value> = standin.received().into_iter().filter(|r| r["op"] == "execute").collect();
    assert_eq!(executes.len(), 1, "{executes:?}");
    let flow = weir.wait_flow("protocol=cassandra&verdict=error", "the unknown id", |f| {
        f.reason.as_deref().is_some_and(|r| r.contains("0badc0de"))
    });
    assert_eq!(flow.cassandra().unwrap().response.as_deref(), Some("error 0x2500"));
}

#[test]
fn authentication_passes_and_compression_is_declined() {
    let standin = Standin::start(&["--auth"]);
    let (weir, listener) = start_weir(standin.addr);
    // v5: AUTHENTICATE starts segment framing; AUTH_RESPONSE comes in a segment
    let c = client(listener, 5, json!([["query", "SELECT * FROM app.orders"]]), &["--auth"]);
    assert_eq!(c.connected["compressor"], Value::Null);
    assert_eq!(rows(&c.results[0]), json!([["SELECT * FROM app.orders", null]]));
    assert!(standin.received().iter().any(|r| r["op"] == "auth-response" && r["ok"] == true));
    weir.wait_flow("protocol=cassandra&verdict=forwarded", "the auth response", |f| {
        f.cassandra().unwrap().opcode == "auth-response"
    });

    // SUPPORTED reaches the client with no compression on offer
    let mut stream = connect_from(CLIENT, listener);
    stream.write_all(&frame(4, 1, 0x05, &[])).unwrap();
    let answer = parse_frames(&read_quiet(&mut stream, Duration::from_millis(500)));
    assert_eq!(answer[0].1, 0x06, "SUPPORTED: {answer:?}");
    let body = String::from_utf8_lossy(&answer[0].2).into_owned();
    assert!(body.contains("COMPRESSION") && !body.contains("lz4") && !body.contains("snappy"), "{body:?}");
    // a client that asks anyway is told why, and may start again without
    let startup = frame(4, 2, 0x01, &string_map(&[("CQL_VERSION", "3.0.0"), ("COMPRESSION", "lz4")]));
    stream.write_all(&startup).unwrap();
    let answer = parse_frames(&read_quiet(&mut stream, Duration::from_millis(500)));
    let (stream_id, opcode, body) = &answer[0];
    assert_eq!((*stream_id, *opcode, error_code(body)), (2, 0x00, 0x000a));
    assert!(String::from_utf8_lossy(body).contains("connect without compression"), "{body:?}");
    stream.write_all(&frame(4, 3, 0x01, &string_map(&[("CQL_VERSION", "3.0.0")]))).unwrap();
    let answer = parse_frames(&read_quiet(&mut stream, Duration::from_millis(500)));
    // on failure, say which verdict weir reached and why (a CI run once saw
    // this STARTUP refused and showed nothing more)
    let why = || {
        let flows = weir.flows("protocol=cassandra");
        let flows: Vec<_> = flows.iter().map(|f| (&f.verdict, f.reason.as_deref(), f.connection)).collect();
        format!("AUTHENTICATE: {answer:?}\nflows: {flows:?}\nlog: {}", weir.log())
    };
    assert_eq!((answer[0].0, answer[0].1), (3, 0x03), "{}", why());
    let startups: Vec<Value> = standin.received().into_iter().filter(|r| r["op"] == "startup").collect();
    assert!(startups.iter().all(|s| s["options"].get("COMPRESSION").is_none()), "{startups:?}");
}

#[test]
fn broken_frames_close_the_connection_with_a_flow_and_weir_keeps_serving() {
    let standin = Standin::start(&[]);
    let (weir, listener) = start_weir(standin.addr);
    let mut huge = frame(4, 1, 0x07, &[]);
    huge[5..9].copy_from_slice(&(300u32 << 20).to_be_bytes());
    let mut bad_string = query(4, 1, "SELECT 1");
    bad_string[9..13].copy_from_slice(&1000u32.to_be_bytes());
    let cases: [(Vec<u8>, &str); 5] = [
        (frame(0x84, 1, 0x02, &[]), "expected a request"),
        (huge, "over the"),
        (query(4, 1, "SELECT * FROM app.orders")[..15].to_vec(), "inside a frame"),
        (bad_string, "body ends inside"),
        (frame(4, 1, 0x08, &[0, 0, 0, 1]), "is not a request"),
    ];
    for (bytes, why) in cases {
        let mut stream = connect_from(CLIENT, listener);
        stream.write_all(&bytes).unwrap();
        if why == "inside a frame" {
            stream.shutdown(std::net::Shutdown::Write).unwrap();
        }
        assert_eq!(read_quiet(&mut stream, Duration::from_secs(2)), b"", "nothing answers {why:?}");
        weir.wait_flow("protocol=cassandra&verdict=error", why, |f| {
            f.reason.as_deref().is_some_and(|r| r.contains(why))
        });
    }
    // an unsupported version gets the error drivers downgrade on, then the close
    let mut stream = connect_from(CLIENT, listener);
    stream.write_all(&frame(6, 0, 0x05, &[])).unwrap();
    let answer = parse_frames(&read_quiet(&mut stream, Duration::from_secs(2)));
    assert_eq!(answer.len(), 1, "{answer:?}");
    assert_eq!(error_code(&answer[0].2), 0x000a);
    assert!(String::from_utf8_lossy(&answer[0].2).contains("Invalid or unsupported protocol version (6)"));

    // v5: a corrupt segment after the handshake
    let mut stream = connect_from(CLIENT, listener);
    stream.write_all(&frame(5, 0, 0x01, &string_map(&[("CQL_VERSION", "3.0.0")]))).unwrap();
    let ready = parse_frames(&read_quiet(&mut stream, Duration::from_millis(500)));
    assert_eq!(ready[0].1, 0x02, "READY: {ready:?}");
    stream.write_all(&[9, 0, 2, 0x11, 0x22, 0x33, 0, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap();
    assert_eq!(read_quiet(&mut stream, Duration::from_secs(2)), b"");
    weir.wait_flow("protocol=cassandra&verdict=error", "the corrupt segment", |f| {
        f.reason.as_deref().is_some_and(|r| r.contains("CRC24"))
    });

    // v5: bytes pipelined behind STARTUP are read as the server will read
    // them, as segments (weir waits for READY), never as a legacy frame
    let last = weir.flows("protocol=cassandra").iter().map(|f| f.id).max().unwrap_or(0);
    let mut stream = connect_from(CLIENT, listener);
    let mut pipelined = frame(5, 0, 0x01, &string_map(&[("CQL_VERSION", "3.0.0")]));
    pipelined.extend(query(5, 1, "SELECT * FROM app.orders"));
    stream.write_all(&pipelined).unwrap();
    let answer = parse_frames(&read_quiet(&mut stream, Duration::from_secs(2)));
    assert_eq!(answer.iter().map(|a| a.1).collect::<Vec<_>>(), [0x02], "READY, then the close: {answer:?}");
    let flow = weir.wait_flow("protocol=cassandra&verdict=error", "the legacy frame after v5 STARTUP", |f| {
        f.id > last && f.reason.as_deref().is_some_and(|r| r.contains("CRC24"))
    });
    assert!(flows_of(&weir, flow.connection).iter().all(|f| f.cassandra().is_none_or(|c| c.opcode != "query")));

    // nothing broken reached the server, and weir still serves
    assert!(standin.received_queries().is_empty(), "{:?}", standin.received_queries());
    let c = client(listener, 4, json!([["query", "SELECT * FROM app.orders"]]), &[]);
    assert_eq!(rows(&c.results[0]), json!([["SELECT * FROM app.orders", null]]));
}

#[test]
fn a_server_that_hangs_up_mid_response_closes_the_client_with_a_flow() {
    // stand-in server: READY to STARTUP, half a RESULT to the query, gone
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = server.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in server.incoming().take(1) {
            let mut stream = stream.unwrap();
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(&frame(0x84, 0, 0x02, &[]));
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(&frame(0x84, 1, 0x08, &[0, 0, 0, 2, 0, 0])[..12]);
        }
    });
    let (weir, listener) = start_weir(upstream);
    let mut stream = connect_from(CLIENT, listener);
    stream.write_all(&frame(4, 0, 0x01, &string_map(&[("CQL_VERSION", "3.0.0")]))).unwrap();
    assert_eq!(parse_frames(&read_quiet(&mut stream, Duration::from_millis(500)))[0].1, 0x02);
    stream.write_all(&query(4, 1, "SELECT * FROM app.orders")).unwrap();
    assert_eq!(read_quiet(&mut stream, Duration::from_secs(2)), b"", "the half response is not relayed");
    let flow = weir.wait_flow("protocol=cassandra&verdict=error", "the unanswered query", |f| {
        f.cassandra().unwrap().opcode == "query"
    });
    assert!(flow.reason.as_deref().unwrap().contains("inside a frame"), "{flow:?}");
}

/// QUERY with options: consistency ONE, the keyspace flag (0x80) and
/// `keyspace`, in the version's flags width ([byte] before v5).
fn query_in(version: u8, stream: i16, cql: &str, keyspace: &str) -> Vec<u8> {
    let mut body = long_string(cql);
    body.extend_from_slice(&[0, 1]);
    body.extend(options_with_keyspace(version, keyspace));
    frame(version, stream, 0x07, &body)
}

fn options_with_keyspace(version: u8, keyspace: &str) -> Vec<u8> {
    let mut b = if version >= 5 { vec![0, 0, 0, 0x80] } else { vec![0x80] };
    b.extend_from_slice(&(keyspace.len() as u16).to_be_bytes());
    b.extend_from_slice(keyspace.as_bytes());
    b
}

/// A logged BATCH of query strings (no values), with the keyspace option.
fn batch_in(version: u8, stream: i16, queries: &[&str], keyspace: &str) -> Vec<u8> {
    let mut body = vec![0];
    body.extend_from_slice(&(queries.len() as u16).to_be_bytes());
    for q in queries {
        body.push(0);
        body.extend(long_string(q));
        body.extend_from_slice(&[0, 0]);
    }
    body.extend_from_slice(&[0, 1]);
    body.extend(options_with_keyspace(version, keyspace));
    frame(version, stream, 0x0d, &body)
}

fn prepare(version: u8, stream: i16, cql: &str) -> Vec<u8> {
    frame(version, stream, 0x09, &long_string(cql))
}

fn execute(version: u8, stream: i16, id: &[u8]) -> Vec<u8> {
    let mut body = (id.len() as u16).to_be_bytes().to_vec();
    body.extend_from_slice(id);
    body.extend_from_slice(&[0, 1, 0]);
    frame(version, stream, 0x0a, &body)
}

/// A raw connection from `source`, STARTUP answered with READY.
fn raw_session(version: u8, source: &str, listener: SocketAddr) -> TcpStream {
    let mut stream = connect_from(source, listener);
    stream.write_all(&frame(version, 0, 0x01, &string_map(&[("CQL_VERSION", "3.0.0")]))).unwrap();
    let ready = read_frames(&mut stream, 1);
    assert_eq!(ready.iter().map(|a| a.1).collect::<Vec<_>>(), [0x02], "READY: {ready:?}");
    stream
}

/// The next `n` legacy frames (fewer if the peer closes or stays silent
/// for a generous while: the caller's assertions then say what is missing).
fn read_frames(stream: &mut TcpStream, n: usize) -> Vec<(i16, u8, Vec<u8>)> {
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut bytes = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        let frames = parse_frames(&bytes[..whole_frames(&bytes)]);
        if frames.len() >= n {
            return frames;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return frames,
            Ok(k) => bytes.extend_from_slice(&buf[..k]),
        }
    }
}

/// How many of `bytes`' first bytes are whole legacy frames.
fn whole_frames(bytes: &[u8]) -> usize {
    let mut at = 0;
    while let Some(header) = bytes.get(at..at + 9) {
        let end = at + 9 + u32::from_be_bytes(header[5..9].try_into().unwrap()) as usize;
        if end > bytes.len() {
            break;
        }
        at = end;
    }
    at
}

/// The result kind of a RESULT body, or the error code of an ERROR one.
fn answer(frame: &(i16, u8, Vec<u8>)) -> (u8, u32) {
    (frame.1, error_code(&frame.2))
}

#[test]
fn comments_and_batches_are_split_where_cassandra_splits_them() {
    let standin = Standin::start(&[]);
    let (weir, listener) = start_weir(standin.addr);
    let c = client(
        listener,
        4,
        json!([
            ["query", "USE app"],
            // Cassandra's lexer ends a -- or // comment at a carriage return too
            [
                "query",
                "BEGIN BATCH INSERT INTO orders (id) VALUES (1); --\rDELETE FROM orders WHERE id = 1;\nAPPLY BATCH"
            ],
            [
                "query",
                "BEGIN BATCH INSERT INTO orders (id) VALUES (1) // x\rUPDATE secrets SET v = 1 WHERE id = 1\nAPPLY BATCH"
            ],
            // the ';' between batch statements is optional
            ["query", "BEGIN BATCH INSERT INTO orders (id) VALUES (2) DELETE FROM orders WHERE id = 2 APPLY BATCH"],
            // one statement per QUERY: two are never forwarded
            ["query", "SELECT * FROM orders; DELETE FROM orders WHERE id = 3"],
            // allowed, and judged as what the server runs
            [
                "query",
                "BEGIN BATCH INSERT INTO orders (id) VALUES (4) INSERT INTO app.orders (id) VALUES (5) APPLY BATCH"
            ],
            ["query", "SELECT * FROM -- why not\rorders"],
        ]),
        &[],
    );
    let r = &c.results;
    assert_eq!(r.len(), 7, "{r:?}");
    for refused in &r[1..5] {
        unauthorized(refused);
    }
    assert_eq!(r[5]["kind"], 2, "{}", r[5]);
    assert_eq!(rows(&r[6]), json!([["SELECT * FROM -- why not\rorders", "app"]]));

    // the server ran inserts into and selects from app.orders, nothing else
    let ran = standin.ran();
    assert!(!ran.is_empty());
    for (action, table) in &ran {
        assert!(
            matches!(action.as_str(), "use" | "insert" | "select") && (table.is_empty() || table == "app.orders"),
            "the server ran {action} on {table}: {ran:?}"
        );
    }
    let flows = weir.flows("protocol=cassandra&verdict=denied");
    let judged: Vec<_> = flows.iter().map(statements).collect();
    for expected in [
        vec![("insert", "app.orders"), ("delete", "app.orders")],
        vec![("insert", "app.orders"), ("update", "app.secrets")],
    ] {
        let expected: Vec<_> = expected.iter().map(|(a, t)| (a.to_string(), Some(t.to_string()))).collect();
        assert!(judged.contains(&expected), "{expected:?} not in {judged:?}");
    }
    assert!(
        flows.iter().any(|f| f.reason.as_deref().is_some_and(|r| r.contains("more than one statement"))),
        "{flows:?}"
    );
}

#[test]
fn the_keyspace_query_option_decides_unqualified_names_in_v3_v4_and_v5() {
    let standin = Standin::start(&[]);
    let (weir, listener) = start_weir(standin.addr);
    for version in [3u8, 4] {
        let mut s = raw_session(version, CLIENT, listener);
        s.write_all(&query(version, 1, "USE app")).unwrap();
        assert_eq!(read_frames(&mut s, 1)[0].1, 0x08);
        let mut bytes = query_in(version, 2, "SELECT * FROM orders", "other");
        bytes.extend(query_in(version, 3, "SELECT * FROM orders", "app"));
        bytes.extend(batch_in(version, 4, &["INSERT INTO orders (id) VALUES (1)"], "other"));
        bytes.extend(batch_in(version, 5, &["INSERT INTO orders (id) VALUES (1)"], "app"));
        s.write_all(&bytes).unwrap();
        let answers: std::collections::HashMap<i16, (u8, u32)> =
            read_frames(&mut s, 4).iter().map(|f| (f.0, answer(f))).collect();
        assert_eq!(answers.get(&2), Some(&(0x00, 0x2100)), "other.orders is refused (v{version}): {answers:?}");
        assert_eq!(answers.get(&3), Some(&(0x08, 2)), "app.orders is read (v{version}): {answers:?}");
        assert_eq!(answers.get(&4), Some(&(0x00, 0x2100)), "a batch into other.orders (v{version}): {answers:?}");
        assert_eq!(answers.get(&5), Some(&(0x08, 1)), "a batch into app.orders (v{version}): {answers:?}");
        weir.wait_flow("protocol=cassandra&verdict=denied", "the select in the keyspace option", |f| {
            f.cassandra().unwrap().version == version
                && statements(f) == [("select".to_string(), Some("other.orders".to_string()))]
        });
    }
    // v5: the driver itself sends the option
    let c = client(
        listener,
        5,
        json!([["query_in", "other", "SELECT * FROM orders"], ["query_in", "app", "SELECT * FROM orders"]]),
        &[],
    );
    unauthorized(&c.results[0]);
    assert_eq!(rows(&c.results[1]), json!([["SELECT * FROM orders", "app"]]));
    let ran = standin.ran();
    assert!(ran.iter().all(|(_, table)| table.is_empty() || table == "app.orders"), "{ran:?}");
    assert_eq!(ran.iter().filter(|(_, table)| table == "app.orders").count(), 5, "{ran:?}");
}

#[test]
fn a_stream_still_in_flight_is_refused_so_a_use_is_always_learned() {
    let standin = Standin::start(&[]);
    let (weir, listener) = start_weir(standin.addr);
    let mut s = raw_session(4, CLIENT, listener);
    s.write_all(&query(4, 1, "USE app")).unwrap();
    assert_eq!(read_frames(&mut s, 1)[0].1, 0x08);
    // in one write: stream 5 twice, the second time a USE that would change
    // how the query on stream 6 reads; then a USE on the server's stream -1
    let mut bytes = query(4, 5, "SELECT * FROM orders");
    bytes.extend(query(4, 5, "USE other"));
    bytes.extend(query(4, 6, "SELECT * FROM orders"));
    bytes.extend(query(4, -1, "USE other"));
    s.write_all(&bytes).unwrap();
    let answers = read_frames(&mut s, 4);
    let on = |stream: i16| answers.iter().filter(|f| f.0 == stream).map(answer).collect::<Vec<_>>();
    let mut five = on(5);
    five.sort();
    assert_eq!(five, [(0x00, 0x000a), (0x08, 2)], "rows for the first, a protocol error for the reuse: {answers:?}");
    assert_eq!(on(6), [(0x08, 2)], "{answers:?}");
    assert_eq!(on(-1), [(0x00, 0x000a)], "{answers:?}");
    let reused = answers.iter().find(|f| f.0 == 5 && f.1 == 0x00).unwrap();
    assert!(String::from_utf8_lossy(&reused.2).contains("still in flight"), "{reused:?}");

    // the server never switched keyspace: everything ran in app
    assert!(!standin.received_queries().iter().any(|q| q == "USE other"), "{:?}", standin.received_queries());
    let ran = standin.ran();
    assert!(ran.iter().all(|(_, table)| table.is_empty() || table == "app.orders"), "{ran:?}");
    weir.wait_flow("protocol=cassandra&verdict=error", "the reused stream", |f| {
        f.reason.as_deref().is_some_and(|r| r.contains("stream id 5 is still in flight"))
    });
    weir.wait_flow("protocol=cassandra&verdict=error", "the negative stream", |f| {
        f.reason.as_deref().is_some_and(|r| r.contains("stream id -1 is negative"))
    });
    // and the connection still serves
    s.write_all(&query(4, 5, "SELECT * FROM items")).unwrap();
    assert_eq!(read_frames(&mut s, 1).iter().map(answer).collect::<Vec<_>>(), [(0x08, 2)]);
}

#[test]
fn a_prepared_id_is_filed_with_the_statement_its_server_prepared() {
    let standin = Standin::start(&[]);
    let (weir, listener) = start_weir(standin.addr);
    // cql-client may read app.orders and app.items; it prepares both on one
    // stream, the second while the first is in flight
    let mut client = raw_session(4, CLIENT, listener);
    let mut bytes = prepare(4, 3, "SELECT * FROM app.orders");
    bytes.extend(prepare(4, 3, "SELECT * FROM app.items"));
    client.write_all(&bytes).unwrap();
    let answers = read_frames(&mut client, 2);
    let mut kinds: Vec<_> = answers.iter().map(answer).collect();
    kinds.sort();
    assert_eq!(kinds, [(0x00, 0x000a), (0x08, 4)], "one PREPARED, one refusal: {answers:?}");
    let prepared = &answers.iter().find(|f| f.1 == 0x08).unwrap().2;
    let id_len = u16::from_be_bytes([prepared[4], prepared[5]]) as usize;
    let orders_id = prepared[6..6 + id_len].to_vec();
    let prepares: Vec<Value> = standin.received().into_iter().filter(|r| r["op"] == "prepare").collect();
    assert_eq!(prepares.len(), 1, "{prepares:?}");
    assert_eq!(prepares[0]["query"], "SELECT * FROM app.orders");

    // cql-reader may read app.items only: the orders id is judged as orders
    let mut reader = raw_session(4, READER, listener);
    reader.write_all(&execute(4, 1, &orders_id)).unwrap();
    assert_eq!(read_frames(&mut reader, 1).iter().map(answer).collect::<Vec<_>>(), [(0x00, 0x2100)]);
    assert!(!standin.received().iter().any(|r| r["op"] == "execute"), "the reader's EXECUTE reached the server");
    let denied = weir.wait_flow("protocol=cassandra&verdict=denied", "the reader's execute", |f| {
        f.cassandra().unwrap().opcode == "execute"
    });
    assert_eq!(statements(&denied), [("select".to_string(), Some("app.orders".to_string()))]);
    // while the client that may read orders executes it
    client.write_all(&execute(4, 4, &orders_id)).unwrap();
    assert_eq!(read_frames(&mut client, 1).iter().map(answer).collect::<Vec<_>>(), [(0x08, 2)]);
}

#[test]
fn a_prepared_id_that_is_not_cassandras_digest_of_the_statement_is_not_filed() {
    // a server answering PREPARE with an id that is not MD5(keyspace +
    // query): weir cannot tie it to the statement, so EXECUTE of it is
    // answered Unprepared and never reaches the server
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = server.local_addr().unwrap();
    let (seen_tx, seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let Some(Ok(mut stream)) = server.incoming().next() else { return };
        let mut buf = [0u8; 4096];
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 {
                break;
            }
            for (stream_id, opcode, _) in parse_frames(&buf[..n]) {
                let _ = seen_tx.send(opcode);
                let reply = match opcode {
                    0x01 => frame(0x84, stream_id, 0x02, &[]),
                    // Prepared, id 0xdeadbeef, no metadata
                    0x09 => frame(
                        0x84,
                        stream_id,
                        0x08,
                        &[
                            0, 0, 0, 4, 0, 4, 0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4,
                            0, 0, 0, 0,
                        ],
                    ),
                    _ => frame(0x84, stream_id, 0x08, &[0, 0, 0, 1]),
                };
                let _ = stream.write_all(&reply);
            }
        }
    });
    let (weir, listener) = start_weir(upstream);
    let mut s = raw_session(4, CLIENT, listener);
    s.write_all(&prepare(4, 1, "SELECT * FROM app.items")).unwrap();
    assert_eq!(read_frames(&mut s, 1).iter().map(answer).collect::<Vec<_>>(), [(0x08, 4)]);
    s.write_all(&execute(4, 2, &[0xde, 0xad, 0xbe, 0xef])).unwrap();
    assert_eq!(read_frames(&mut s, 1).iter().map(answer).collect::<Vec<_>>(), [(0x00, 0x2500)]);
    let flow = weir.wait_flow("protocol=cassandra&verdict=error", "the unfiled prepare", |f| {
        f.cassandra().unwrap().opcode == "prepare"
    });
    assert!(flow.reason.as_deref().unwrap().contains("not the MD5"), "{flow:?}");
    drop(s);
    let opcodes: Vec<u8> = seen.try_iter().collect();
    assert_eq!(opcodes, [0x01, 0x09], "the EXECUTE never reached the server");
}
