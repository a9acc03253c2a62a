//! Every L7 protocol through the eBPF datapath: the programs redirect a
//! Kafka, memcached, Cassandra or `l7proto` port to its own engine's
//! transparent listener, with the sender's identity in the mark, and the
//! engine dials the original destination from the client's address. The
//! pods run real servers and clients — the tansu broker and kcat, Debian's
//! memcached and pymemcache, the cassandra-driver against the CQL STAND-IN
//! (no Cassandra server runs in a pod here; issue 19 brings the real one),
//! and a line echo server for the r2d2 stream filter — none of them told
//! about the proxy.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use serde_json::{Value, json};
use weir::observe::flow::FlowRecord;
use weir_integration::node::{Node, peer_script};
use weir_integration::wait_for;

const BASE: &str = "admin: ADMIN\nworkers: 1\nlog_flows: true\n";

/// `app: client` may use each service on `app: server` within its rules;
/// `app: other` is not named, so the kernel drops its SYNs.
const POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server-l7}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: client}}]
      toPorts:
        - ports: [{port: "9092", protocol: TCP}]
          rules:
            kafka:
              - {role: produce, topic: announce}
              - {role: consume, topic: announce}
        - ports: [{port: "11211", protocol: TCP}]
          rules:
            l7proto: memcache
            l7:
              - {command: get, keyPrefix: "public/"}
              - {command: set, keyPrefix: "public/"}
        - ports: [{port: "9042", protocol: TCP}]
          rules:
            l7proto: cassandra
            l7:
              - {query_action: select, query_table: "^app\\.items$"}
              - {query_action: select, query_table: "^system\\."}
        - ports: [{port: "4000", protocol: TCP}]
          rules:
            l7proto: r2d2
            l7:
              - {cmd: READ, file: "/public/.*"}
"#;

fn python_script(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python").join(name).display().to_string()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Whether something in `pod` listens on TCP `port` (asked inside the pod:
/// from the node, the policy would drop the probe).
fn listening(node: &Node, pod: &str, port: u16) -> bool {
    let out = node.in_pod(pod, "ss").args(["-Htln", &format!("sport = :{port}")]).output().unwrap();
    !text(&out.stdout).trim().is_empty()
}

/// JSON lines a Python client printed.
fn json_lines(out: &Output, what: &str) -> Vec<Value> {
    assert!(out.status.success(), "{what}: {}", text(&out.stderr));
    text(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn wait_flow(node: &Node, query: &str, what: &str, pick: impl Fn(&FlowRecord) -> bool) -> FlowRecord {
    let mut found = None;
    wait_for(what, Duration::from_secs(10), || {
        found = node.weir().flows(query).into_iter().find(|f| pick(f));
        found.is_some()
    });
    found.unwrap()
}

fn from_client(flow: &FlowRecord, node: &Node) {
    assert!(flow.source.labels.iter().any(|l| l == "k8s:app=client"), "{flow:?}");
    assert_eq!(flow.source.address.ip(), node.pod("cli").ip, "{flow:?}");
    assert!(flow.destination.labels.iter().any(|l| l == "k8s:app=server"), "{flow:?}");
    assert_eq!(flow.listener, "ebpf", "{flow:?}");
}

#[test]
fn kafka_memcached_cassandra_and_stream_ports_reach_their_engines_in_the_kernel_path() {
    let mut node = Node::new(&["cli", "srv", "oth"]);
    node.enter();
    let server = node.pod("srv").ip.to_string();
    let log_dir = tempfile::tempdir().unwrap();
    let cql_log = log_dir.path().join("cql.jsonl").display().to_string();
    let kafka = format!("tcp://{server}:9092");
    node.serve(
        "srv",
        "tansu",
        "tansu",
        &[
            "broker",
            "--listener-url",
            &kafka,
            "--advertised-listener-url",
            &kafka,
            "--storage-engine",
            "memory://tansu/",
        ],
    );
    node.serve(
        "srv",
        "memcached",
        "memcached",
        &["-U", "0", "-m", "64", "-t", "1", "-u", "root", "-l", &server, "-p", "11211"],
    );
    node.serve(
        "srv",
        "cql stand-in",
        "python3",
        &[&python_script("cql_standin.py"), &format!("{server}:9042"), &cql_log],
    );
    node.serve("srv", "line echo", "python3", &[&peer_script(), "tcp-echo", &server, "4000"]);
    for port in [9092, 11211, 9042, 4000] {
        wait_for(&format!("a server on port {port}"), Duration::from_secs(30), || listening(&node, "srv", port));
    }
    let topic =
        node.run_in("srv", "tansu", &["topic", "create", "--broker", &kafka, "--partitions", "1", "announce"], "");
    assert!(topic.status.success(), "tansu topic create: {}", text(&topic.stderr));

    let config = format!("{BASE}{}", node.endpoints_yaml(&[("cli", "client"), ("srv", "server"), ("oth", "other")]));
    node.start_weir(&config, &[("server.yaml", POLICY)]);
    let (client, other) = (node.pod("cli").ip, node.pod("oth").ip);

    // Kafka: kcat produces and consumes `announce` through the Kafka engine
    // (Metadata names the broker's own address, which is redirected again)
    let broker = format!("{server}:9092");
    let kcat = |args: &[&str], input: &str| {
        let mut all = vec!["-b", broker.as_str(), "-m", "10"];
        all.extend_from_slice(args);
        node.run_in("cli", "kcat", &all, input)
    };
    let produced = kcat(&["-P", "-t", "announce"], "one\ntwo\n");
    assert!(produced.status.success(), "kcat -P: {}", text(&produced.stderr));
    let consumed = kcat(&["-C", "-t", "announce", "-o", "beginning", "-e"], "");
    assert_eq!(text(&consumed.stdout), "one\ntwo\n", "kcat -C: {}", text(&consumed.stderr));
    // a topic the rules do not name: Metadata for it is refused, and
    // librdkafka reads the refusal
    let refused = kcat(&["-P", "-t", "secret"], "x\n");
    assert!(!refused.status.success(), "{}", text(&refused.stdout));
    let denied = wait_flow(&node, "protocol=kafka&verdict=denied", "a Kafka refusal", |f| {
        f.kafka().is_some_and(|k| k.topics.iter().any(|t| t == "secret"))
    });
    from_client(&denied, &node);
    let produce = wait_flow(&node, "protocol=kafka&verdict=forwarded", "a forwarded Produce", |f| {
        f.kafka().is_some_and(|k| k.api_key == "Produce")
    });
    from_client(&produce, &node);

    // memcached: pymemcache, key by key
    let ops = json!([["set", "public/a", "hello"], ["get", "public/a"], ["set", "secret", "x"], ["get", "secret"]]);
    let memcached = node.run_in(
        "cli",
        "python3",
        &[&python_script("memcached_client.py"), &format!("{server}:11211"), "text", &ops.to_string()],
        "",
    );
    let results = json_lines(&memcached, "memcached_client.py");
    assert_eq!(results[0]["ok"], true, "{results:?}");
    assert_eq!(results[1]["value"], "hello", "{results:?}");
    for i in [2, 3] {
        assert_eq!(results[i]["error"], "MemcacheClientError", "op {i}: {results:?}");
    }
    let denied = wait_flow(&node, "protocol=memcached&verdict=denied", "a memcached refusal", |f| {
        f.memcached().is_some_and(|m| m.keys == ["secret"])
    });
    from_client(&denied, &node);

    // Cassandra: the driver's connection layer, protocol v4
    let ops = json!([["query", "SELECT * FROM app.items"], ["query", "SELECT * FROM app.secrets"]]);
    let cql = node.run_in(
        "cli",
        "python3",
        &[&python_script("cassandra_client.py"), &format!("{server}:9042"), "4", &ops.to_string()],
        "",
    );
    let results = json_lines(&cql, "cassandra_client.py");
    assert_eq!(results[0]["connected"], true, "{results:?}");
    assert_eq!(results[1]["ok"], true, "{results:?}");
    assert_eq!((results[2]["ok"].clone(), results[2]["error"].clone()), (json!(false), json!("Unauthorized")));
    let ran = std::fs::read_to_string(&cql_log).unwrap();
    assert!(ran.contains("app.items") && !ran.contains("app.secrets"), "the stand-in saw: {ran}");
    let denied = wait_flow(&node, "protocol=cassandra&verdict=denied", "a CQL refusal", |_| true);
    from_client(&denied, &node);

    // l7proto r2d2: the stream engine runs the r2d2 filter on the lines
    let lines = node.run_in(
        "cli",
        "python3",
        &[&peer_script(), "lines", &server, "4000"],
        "READ /public/a\r\nREAD /etc/passwd\r\n",
    );
    let answer = text(&lines.stdout);
    assert!(answer.contains("READ /public/a") && answer.contains("ERROR"), "{answer:?}: {}", text(&lines.stderr));
    assert!(!answer.contains("/etc/passwd"), "the echo server never saw the refused line: {answer:?}");
    let denied = wait_flow(&node, "protocol=r2d2&verdict=denied", "an r2d2 refusal", |_| true);
    from_client(&denied, &node);

    // every flow the engines recorded names the client pod: the proxy's
    // own upstream legs were not redirected back to it
    let flows = node.weir().flows("");
    assert!(
        flows.iter().filter(|f| f.listener == "ebpf").all(|f| f.source.address.ip() == client),
        "every proxied flow came from the client pod: {flows:?}"
    );

    // `other` is not named by the policy: its SYN is dropped in the kernel,
    // before any engine
    let out = node.run_in("oth", "python3", &[&peer_script(), "lines", &server, "9042"], "READ /public/a\r\n");
    assert!(text(&out.stderr).contains("timed out"), "{}{}", text(&out.stdout), text(&out.stderr));
    let drop = wait_flow(&node, "verdict=dropped", "a kernel drop for other", |f| f.source.address.ip() == other);
    assert_eq!(drop.protocol, "tcp", "{drop:?}");
    assert!(!node.weir().flows("").iter().any(|f| f.listener == "ebpf" && f.source.address.ip() == other));
}
