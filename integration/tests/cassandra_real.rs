//! The Cassandra engine in front of a real Apache Cassandra 5.0 node
//! (`scripts/cassandra.sh`: jars from Maven Central, one node, its own seed)
//! with PasswordAuthenticator: the cassandra-driver's full client (Cluster and
//! Session: control connection, auth, prepared statements, paging, batches,
//! schema changes and their agreement) through weir, on protocol v4 and v5.
//! What weir refused must not have reached the node: its tables are counted
//! straight at the node afterwards. The stand-in (`cassandra_local.rs`)
//! keeps the broken-input cases a real server cannot produce.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use weir_integration::*;

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
              - {query_action: select, query_table: "^system"}
              - {query_action: select, query_table: "^app\\.items$"}
              - {query_action: insert, query_table: "^app\\.items$"}
              - {query_action: use, query_table: "^app$"}
              - {query_action: create-table, query_table: "^app\\.new_"}
"#;

struct CassandraNode {
    addr: SocketAddr,
    _process: Process,
    _dir: tempfile::TempDir,
}

impl CassandraNode {
    fn start() -> CassandraNode {
        let dir = tempfile::tempdir().unwrap();
        let (native, storage) = (free_port(), free_port());
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/cassandra.sh");
        let process = Process::spawn(
            "apache cassandra",
            Command::new("bash")
                .arg(script)
                .args(["start", &dir.path().display().to_string(), &native.to_string(), "--auth"])
                .env("WEIR_CASSANDRA_STORAGE_PORT", storage.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let addr: SocketAddr = format!("127.0.0.1:{native}").parse().unwrap();
        wait_for("Cassandra's native port", Duration::from_secs(120), || std::net::TcpStream::connect(addr).is_ok());
        CassandraNode { addr, _process: process, _dir: dir }
    }
}

fn driver(args: &[&str]) -> Vec<Value> {
    let out = python("cassandra_real.py", args);
    assert!(out.status.success(), "cassandra_real.py {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn step<'a>(lines: &'a [Value], name: &str) -> &'a Value {
    lines.iter().find(|l| l["step"] == name).unwrap_or_else(|| panic!("no step {name}: {lines:#?}"))
}

#[test]
fn the_driver_through_weir_against_a_real_cassandra_node() {
    let node = CassandraNode::start();
    let setup = driver(&["setup", &node.addr.to_string()]);
    assert_eq!(setup[0]["ok"], true, "{setup:?}");

    let listener: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = format!(
        "admin: ADMIN\n\
         endpoints:\n  - {{name: client, address: 127.0.0.1, labels: {{app: cql-client}}}}\n\
         listeners:\n  \
         - {{name: cql, protocol: cassandra, bind: {listener}, upstream: {}, \
              destination: {{labels: {{app: cassandra}}, port: 9042}}}}\n",
        node.addr
    );
    let weir = Weir::start(&config, &[("cql.yaml", POLICY)]);

    for version in [4, 5] {
        let lines = driver(&["run", &listener.to_string(), &version.to_string()]);
        assert_eq!(step(&lines, "connected")["result"], version, "v{version}: {lines:#?}");
        for allowed in ["use", "insert_prepared", "batch", "create_table"] {
            assert_eq!(step(&lines, allowed)["ok"], true, "v{version} {allowed}: {lines:#?}");
        }
        // 20 rows at 5 a page: Cassandra says a full last page may have more,
        // so the driver asks once more and gets an empty fifth
        let paged = &step(&lines, "paged")["result"];
        assert_eq!((paged["rows"].as_u64(), paged["pages"].as_u64()), (Some(20), Some(5)), "v{version}: {paged}");
        for refused in ["batch_refused", "select_secrets", "drop_refused"] {
            let line = step(&lines, refused);
            assert_eq!(
                (&line["ok"], &line["error"]),
                (&Value::Bool(false), &Value::from("Unauthorized")),
                "v{version} {refused}: {line}"
            );
        }
    }

    // what weir refused never ran: no batched secret, the table still there
    let counts = driver(&["count", &node.addr.to_string()]);
    assert_eq!(counts[0]["items"], 2 * (20 + 3), "{counts:?}");
    assert_eq!(counts[0]["secrets"], 1, "{counts:?}");
    assert_eq!(counts[0]["tables"], serde_json::json!(["items", "new_v4", "new_v5", "secrets"]), "{counts:?}");

    let denied = weir.flows("protocol=cassandra&verdict=denied");
    let statements: Vec<String> = denied
        .iter()
        .flat_map(|f| {
            f.cassandra()
                .map(|c| {
                    c.statements
                        .iter()
                        .map(|s| format!("{} {}", s.action, s.table.clone().unwrap_or_default()))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        })
        .collect();
    for expected in ["insert app.secrets", "select app.secrets", "drop-table app.items"] {
        assert!(statements.iter().any(|s| s == expected), "no refusal of {expected}: {statements:?}");
    }
}
