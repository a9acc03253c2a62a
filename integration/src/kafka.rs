//! Kafka peers for tests: the real Apache Kafka broker (KRaft, one node or a
//! small cluster, from Maven Central jars: `scripts/kafka.sh`) and the tansu
//! broker (a Kafka-compatible broker from crates.io), both installed by
//! `scripts/setup.sh`; kcat and kafka-python as clients; and a raw client
//! built on the `kafka-protocol` crate for what real clients never do on
//! purpose (pipelined mixes, broken frames).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, MetadataRequest, MetadataResponse, RequestHeader, RequestKind, ResponseHeader,
    ResponseKind, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use crate::{Process, free_port, wait_for};

/// A tansu broker in memory, advertising `advertised` (weir's listener) so
/// that clients come back through weir after their first Metadata.
pub struct Tansu {
    pub addr: SocketAddr,
    _process: Process,
}

impl Tansu {
    pub fn start(advertised: SocketAddr) -> Tansu {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let process = Process::spawn(
            "tansu",
            Command::new("tansu")
                .args(["broker", "--listener-url", &format!("tcp://{addr}")])
                .args(["--advertised-listener-url", &format!("tcp://{advertised}")])
                .args(["--storage-engine", "memory://tansu/"])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        wait_for("tansu to listen", Duration::from_secs(30), || TcpStream::connect(addr).is_ok());
        Tansu { addr, _process: process }
    }

    pub fn create_topic(&self, name: &str) {
        let out = Command::new("tansu")
            .args(["topic", "create", "--broker", &format!("tcp://{}", self.addr), "--partitions", "1", name])
            .output()
            .expect("tansu topic create");
        assert!(out.status.success(), "creating {name}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// The real Apache Kafka broker (`scripts/kafka.sh start`), in a temporary
/// directory. Its client listener (`addr`) advertises `advertised` (weir's
/// listener), so clients come back through weir after their first
/// Metadata; a second listener (`setup`) advertises itself, for creating
/// topics without weir, and carries the broker's traffic to itself.
pub struct ApacheKafka {
    pub addr: SocketAddr,
    pub setup: SocketAddr,
    _process: Process,
    _dir: tempfile::TempDir,
}

impl ApacheKafka {
    pub fn start(advertised: SocketAddr) -> ApacheKafka {
        let dir = tempfile::tempdir().unwrap();
        let [port, setup, controller] = [free_port(), free_port(), free_port()];
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/kafka.sh");
        let listeners = format!(
            "listeners=PLAINTEXT://127.0.0.1:{port},SETUP://127.0.0.1:{setup},CONTROLLER://127.0.0.1:{controller}\n\
             advertised.listeners=PLAINTEXT://{advertised},SETUP://127.0.0.1:{setup}\n\
             listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SETUP:PLAINTEXT\n\
             inter.broker.listener.name=SETUP\n\
             auto.create.topics.enable=false\n"
        );
        let process = Process::spawn(
            "apache kafka",
            Command::new("bash")
                .arg(script)
                .args(["start", &dir.path().display().to_string(), &port.to_string()])
                .env("WEIR_KAFKA_CONTROLLER_PORT", controller.to_string())
                .env("WEIR_KAFKA_PROPERTIES", listeners)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let setup: SocketAddr = format!("127.0.0.1:{setup}").parse().unwrap();
        wait_for("Apache Kafka to answer metadata", Duration::from_secs(60), || {
            Command::new("kcat")
                .args(["-b", &setup.to_string(), "-L", "-m", "2"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        ApacheKafka { addr, setup, _process: process, _dir: dir }
    }

    pub fn create_topic(&self, name: &str) {
        let out = crate::python("kafka_client.py", &[&self.setup.to_string(), "setup", "create-topic", name]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.contains("\"ok\": true"), "creating {name}: {text}");
    }
}

/// A real Apache Kafka cluster (`scripts/kafka.sh start` once per node), in
/// one temporary directory: node 1 is broker and controller, nodes 2.. are
/// brokers only, each advertising its own address, so clients talk to the
/// leader of each partition directly.
pub struct ApacheKafkaCluster {
    nodes: Vec<(i32, SocketAddr)>,
    // declared before the directory: the JVMs write into it until killed
    _processes: Vec<Process>,
    _dir: tempfile::TempDir,
}

impl ApacheKafkaCluster {
    pub fn start(brokers: usize) -> ApacheKafkaCluster {
        assert!(brokers >= 1, "a cluster needs a broker");
        let dir = tempfile::tempdir().unwrap();
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/kafka.sh");
        let controller = free_port();
        let quorum = format!("1@127.0.0.1:{controller}");
        // every node formatted with the same id, or they refuse each other
        let out = Command::new("bash").arg(&script).arg("cluster-id").output().expect("scripts/kafka.sh cluster-id");
        assert!(out.status.success(), "scripts/kafka.sh cluster-id: {}", String::from_utf8_lossy(&out.stderr));
        let cluster_id = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let nodes: Vec<(i32, SocketAddr)> =
            (1..=brokers as i32).map(|id| (id, format!("127.0.0.1:{}", free_port()).parse().unwrap())).collect();
        let mut processes = Vec::new();
        for &(id, addr) in &nodes {
            let node_dir = dir.path().join(format!("node-{id}"));
            let mut command = Command::new("bash");
            command
                .arg(&script)
                .args(["start", &node_dir.display().to_string(), &addr.port().to_string()])
                .env("WEIR_KAFKA_NODE_ID", id.to_string())
                .env("WEIR_KAFKA_ROLES", if id == 1 { "broker,controller" } else { "broker" })
                .env("WEIR_KAFKA_CONTROLLER_PORT", controller.to_string())
                .env("WEIR_KAFKA_QUORUM", &quorum)
                .env("WEIR_KAFKA_CLUSTER_ID", &cluster_id)
                // a misspelt topic fails instead of appearing with one partition
                .env("WEIR_KAFKA_PROPERTIES", "auto.create.topics.enable=false\n")
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            processes.push(Process::spawn(&format!("apache kafka node {id}"), &mut command));
        }
        // fenced (not yet registered) brokers are left out of Metadata: ready
        // when every broker lists them all
        wait_for("the Apache Kafka cluster to list its brokers", Duration::from_secs(90), || {
            nodes.iter().all(|&(_, addr)| metadata(addr).is_some_and(|m| m.brokers.len() == brokers))
        });
        ApacheKafkaCluster { nodes, _processes: processes, _dir: dir }
    }

    /// Every broker's node id and address (advertised as it is), node 1 first.
    pub fn addrs(&self) -> Vec<(i32, SocketAddr)> {
        self.nodes.clone()
    }

    /// A topic of `partitions` partitions, replication factor 1: the
    /// controller spreads their leaders over the brokers. Returns once every
    /// broker knows a leader for each.
    pub fn create_topic(&self, name: &str, partitions: i32) {
        let topic = TopicName(StrBytes::from_string(name.into()));
        let request =
            RequestKind::CreateTopics(CreateTopicsRequest::default().with_timeout_ms(10_000).with_topics(vec![
                CreatableTopic::default()
                    .with_name(topic.clone())
                    .with_num_partitions(partitions)
                    .with_replication_factor(1),
            ]));
        // any broker forwards it to the controller
        let mut client = RawClient::connect("127.0.0.1", self.nodes[0].1);
        client.stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        client.send(ApiKey::CreateTopics, 5, &request);
        let Some((_, ResponseKind::CreateTopics(answer))) = client.receive(ApiKey::CreateTopics, 5) else {
            panic!("no CreateTopics answer for {name}");
        };
        let result = &answer.topics[0];
        assert_eq!(result.error_code, 0, "creating {name}: {:?}", result.error_message);
        wait_for(&format!("every broker to know the leaders of {name}"), Duration::from_secs(30), || {
            self.nodes.iter().all(|&(_, addr)| {
                metadata(addr).is_some_and(|m| {
                    m.topics.iter().any(|t| {
                        t.name.as_ref() == Some(&topic)
                            && t.error_code == 0
                            && t.partitions.len() == partitions as usize
                            && t.partitions.iter().all(|p| p.error_code == 0 && p.leader_id.0 >= 0)
                    })
                })
            })
        });
    }
}

/// `addr`'s answer to a Metadata request (v9) for all topics; `None` if it
/// does not answer (not up yet, or gone).
pub fn metadata(addr: SocketAddr) -> Option<MetadataResponse> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut client = RawClient { stream, next_correlation_id: 1 };
    client.send(ApiKey::Metadata, 9, &RequestKind::Metadata(MetadataRequest::default().with_topics(None)));
    match client.receive(ApiKey::Metadata, 9)? {
        (_, ResponseKind::Metadata(answer)) => Some(answer),
        (_, other) => panic!("Metadata answered with {other:?}"),
    }
}

/// Which broker a test runs against: every Kafka test runs against both.
#[derive(Clone, Copy, Debug)]
pub enum BrokerKind {
    Tansu,
    Apache,
}

pub enum Broker {
    Tansu(Tansu),
    Apache(ApacheKafka),
}

impl Broker {
    /// A broker whose clients are sent back to `advertised` (weir).
    pub fn start(kind: BrokerKind, advertised: SocketAddr) -> Broker {
        match kind {
            BrokerKind::Tansu => Broker::Tansu(Tansu::start(advertised)),
            BrokerKind::Apache => Broker::Apache(ApacheKafka::start(advertised)),
        }
    }

    /// Where weir forwards to.
    pub fn addr(&self) -> SocketAddr {
        match self {
            Broker::Tansu(b) => b.addr,
            Broker::Apache(b) => b.addr,
        }
    }

    pub fn create_topic(&self, name: &str) {
        match self {
            Broker::Tansu(b) => b.create_topic(name),
            Broker::Apache(b) => b.create_topic(name),
        }
    }
}

/// Run kcat with `args` against `broker`, feeding it `input`.
/// kafka-python (integration/python/kafka_client.py) with `bootstrap` as
/// its only broker address: one JSON object per line it printed.
pub fn python_client(bootstrap: SocketAddr, client_id: &str, args: &[&str]) -> Vec<serde_json::Value> {
    let bootstrap = bootstrap.to_string();
    let mut all = vec![bootstrap.as_str(), client_id];
    all.extend_from_slice(args);
    let out = crate::python("kafka_client.py", &all);
    assert!(out.status.success(), "kafka_client.py {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// One of Kafka's own tools (a main class of the jars scripts/kafka.sh
/// installed), ready to run: `scripts/kafka.sh run MAIN ARGS`.
pub fn java_tool(main: &str, args: &[&str]) -> Command {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/kafka.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(script).arg("run").arg(main).args(args);
    cmd
}

pub fn kcat(broker: SocketAddr, args: &[&str], input: &str) -> Output {
    let mut child = Command::new("kcat")
        .args(["-b", &broker.to_string(), "-m", "10"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kcat (scripts/setup.sh installs it)");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    // read its output while it runs: a pipe holds 64 KiB, and kcat blocks
    // writing more
    let drain = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    // kcat retries a refused request until its timeouts: bound it
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output { status, stdout: stdout.join().unwrap(), stderr: stderr.join().unwrap() }
}

/// A Kafka client speaking raw frames, from a chosen source address.
pub struct RawClient {
    pub stream: TcpStream,
    next_correlation_id: i32,
}

impl RawClient {
    pub fn connect(source: &str, to: SocketAddr) -> RawClient {
        let stream = crate::connect_from(source, to);
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        RawClient { stream, next_correlation_id: 1 }
    }

    /// A request frame (length prefix included); returns it and its correlation id.
    pub fn frame(&mut self, key: ApiKey, version: i16, body: &RequestKind) -> (Vec<u8>, i32) {
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id += 1;
        let mut out = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("raw-client")))
            .encode(&mut out, key.request_header_version(version))
            .unwrap();
        body.encode(&mut out, version).unwrap();
        let mut frame = (out.len() as i32).to_be_bytes().to_vec();
        frame.extend_from_slice(&out);
        (frame, correlation_id)
    }

    pub fn send(&mut self, key: ApiKey, version: i16, body: &RequestKind) -> i32 {
        let (frame, id) = self.frame(key, version, body);
        match self.stream.write_all(&frame) {
            Ok(()) => {}
            // the proxy has already closed the connection (a drop): the next
            // `receive` reports it as `None`
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => {}
            Err(e) => panic!("send {key:?}: {e}"),
        }
        id
    }

    /// The next response, decoded as `key` v`version`; `None` if the
    /// connection closed first.
    pub fn receive(&mut self, key: ApiKey, version: i16) -> Option<(i32, ResponseKind)> {
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len).ok()?;
        let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
        self.stream.read_exact(&mut body).ok()?;
        let mut buf = Bytes::from(body);
        let header = ResponseHeader::decode(&mut buf, key.response_header_version(version)).unwrap();
        Some((header.correlation_id, ResponseKind::decode(key, &mut buf, version).unwrap()))
    }

    /// Whether the peer closed the connection (EOF or reset) within the read timeout.
    pub fn closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.stream.read(&mut byte), Ok(0) | Err(_))
    }
}
