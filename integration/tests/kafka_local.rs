//! The Kafka engine in local mode, end to end: every test runs twice, against
//! the real Apache Kafka broker (KRaft, from Maven Central: `apache::`) and
//! against tansu (`tansu::`); kcat (librdkafka) and kafka-python as clients,
//! and a raw client for pipelined mixes and broken frames. Clients come from
//! 127.0.0.1 (kcat and kafka-python cannot pick a source address), which is
//! `empire-hq`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use weir_integration::kafka::{Broker, BrokerKind, RawClient, java_tool, kcat, python_client};
use weir_integration::*;

const HQ: &str = "127.0.0.1";
/// No endpoint has this address: a world peer that no rule allows.
const STRANGER: &str = "127.0.0.4";

const POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: secure-empire-kafka}
spec:
  endpointSelector: {matchLabels: {app: kafka}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: empire-hq}}]
      toPorts:
        - ports: [{port: "9092", protocol: TCP}]
          rules:
            kafka:
              - {role: produce, topic: empire-announce}
              - {role: consume, topic: empire-announce}
              - {role: consume, topic: deathstar-plans, clientID: rdkafka}
              - {role: produce, topic: deathstar-plans, clientID: vader}
              - {apiKey: createtopics, topic: allowed-new}
              - {apiKey: deletetopics, topic: allowed-new}
              - {apiKey: describeconfigs, topic: empire-announce}
              - {apiKey: deletegroups, topic: empire-announce}
"#;

struct Setup {
    weir: Weir,
    listener: SocketAddr,
    _broker: Broker,
}

fn setup(kind: BrokerKind) -> Setup {
    let listener: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let broker = Broker::start(kind, listener);
    for topic in ["empire-announce", "deathstar-plans"] {
        broker.create_topic(topic);
    }
    let config = format!(
        "admin: ADMIN\n\
         endpoints:\n  - {{name: hq, address: {HQ}, labels: {{app: empire-hq}}}}\n\
         listeners:\n  \
         - {{name: kafka, protocol: kafka, bind: {listener}, upstream: {}, \
              destination: {{labels: {{app: kafka}}, port: 9092}}}}\n",
        broker.addr()
    );
    let weir = Weir::start(&config, &[("kafka.yaml", POLICY)]);
    Setup { weir, listener, _broker: broker }
}

/// Each test below, once per broker: `apache::NAME` and `tansu::NAME`.
macro_rules! against_both_brokers {
    ($($name:ident),* $(,)?) => {
        mod apache {
            $(#[test] fn $name() { super::$name(weir_integration::kafka::BrokerKind::Apache) })*
        }
        mod tansu {
            $(#[test] fn $name() { super::$name(weir_integration::kafka::BrokerKind::Tansu) })*
        }
    };
}

against_both_brokers!(
    kcat_produces_and_consumes_where_the_roles_allow,
    kafka_python_clients_by_client_id_and_a_consumer_group,
    kafka_python_admin_apis_are_judged_on_the_topics_they_name,
    pipelined_requests_are_answered_in_order_refusals_included,
    broken_frames_close_the_connection_and_are_never_forwarded,
    a_peer_no_rule_allows_is_dropped_at_connect,
    idempotent_producers_pass_under_the_produce_role_and_transactions_do_not,
    delete_topics_by_api_key_and_the_java_console_producer,
);

/// DeleteTopics is judged on the topics it names (an `apiKey` rule with a
/// topic), and the Java clients shipped in Kafka's own jars (the console
/// producer, on the newest versions weir's narrowing leaves it, idempotent
/// by default) produce through weir like librdkafka and kafka-python.
fn delete_topics_by_api_key_and_the_java_console_producer(broker: BrokerKind) {
    let s = setup(broker);
    let created = python_client(s.listener, "admin", &["create-topic", "allowed-new"]);
    assert_eq!(created[0]["ok"], true, "{created:?}");
    let deleted = python_client(s.listener, "admin", &["delete-topic", "allowed-new"]);
    assert_eq!(deleted[0]["ok"], true, "{deleted:?}");
    let refused = python_client(s.listener, "admin", &["delete-topic", "empire-announce"]);
    assert_eq!(refused[0]["ok"], false, "{refused:?}");
    let flow =
        s.weir.wait_flow("protocol=kafka&verdict=denied", "the DeleteTopics refusal", |f| api(f) == "DeleteTopics");
    assert_eq!(flow.kafka().unwrap().topics, vec!["empire-announce".to_string()]);

    let listener = s.listener.to_string();
    let mut producer = java_tool(
        "org.apache.kafka.tools.ConsoleProducer",
        &["--bootstrap-server", &listener, "--topic", "empire-announce"],
    )
    .stdin(std::process::Stdio::piped())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .expect("scripts/kafka.sh run");
    producer.stdin.take().unwrap().write_all(b"from java\n").unwrap();
    let out = producer.wait_with_output().unwrap();
    assert!(out.status.success(), "ConsoleProducer: {}", text(&out.stderr));
    let consumed = kcat(s.listener, &["-C", "-t", "empire-announce", "-o", "beginning", "-e"], "");
    assert_eq!(text(&consumed.stdout), "from java\n", "kcat -C: {}", text(&consumed.stderr));
    // Kafka 4.4's Java client asks ApiVersions v5, newer than weir reads:
    // weir answers UNSUPPORTED_VERSION and the client asks again in v4
    s.weir.wait_flow("protocol=kafka", "the too-new ApiVersions", |f| {
        f.reason.as_deref().is_some_and(|r| r.contains("newer than weir reads"))
    });
    let produce = s.weir.wait_flow("protocol=kafka&verdict=forwarded", "the Java client's Produce", |f| {
        api(f) == "Produce" && f.kafka().unwrap().client_id.starts_with("console-producer")
    });
    assert!(produce.kafka().unwrap().api_version <= 12, "weir narrows Produce to versions that name topics");
}

/// `role: produce` covers an idempotent producer (InitProducerId without a
/// transactional id, then sequenced Produce requests); a transactional one
/// needs its own rules, so its first transactional request is refused with
/// 53 and kafka-python reports the transactional id as not authorized.
fn idempotent_producers_pass_under_the_produce_role_and_transactions_do_not(broker: BrokerKind) {
    let s = setup(broker);
    let idempotent = python_client(s.listener, "hq", &["produce-idempotent", "empire-announce", "one", "two"]);
    assert!(idempotent.iter().all(|r| r["ok"] == true), "{idempotent:?}");
    s.weir.wait_flow("protocol=kafka&verdict=forwarded", "InitProducerId", |f| api(f) == "InitProducerId");

    let transactional = python_client(s.listener, "hq", &["produce-transactional", "empire-announce", "tx-1", "three"]);
    assert_eq!(transactional[0]["ok"], false, "{transactional:?}");
    assert!(
        transactional[0]["error"].as_str().unwrap_or_default().contains("TransactionalIdAuthorization"),
        "{transactional:?}"
    );
    let refused = s.weir.wait_flow("protocol=kafka&verdict=denied", "the transactional refusal", |_| true);
    assert_eq!(refused.kafka().unwrap().error_code, Some(53), "{refused:?}");
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn kafka_flows(weir: &Weir, query: &str) -> Vec<FlowRecord> {
    weir.flows(&format!("protocol=kafka&{query}"))
}

fn api(flow: &FlowRecord) -> &str {
    &flow.kafka().unwrap().api_key
}

fn kcat_produces_and_consumes_where_the_roles_allow(broker: BrokerKind) {
    let s = setup(broker);
    let produced = kcat(s.listener, &["-P", "-t", "empire-announce"], "hello\nfrom\nhq\n");
    assert!(produced.status.success(), "kcat -P: {}", text(&produced.stderr));
    let consumed = kcat(s.listener, &["-C", "-t", "empire-announce", "-o", "beginning", "-e"], "");
    assert!(consumed.status.success(), "kcat -C: {}", text(&consumed.stderr));
    assert_eq!(text(&consumed.stdout), "hello\nfrom\nhq\n");

    // Metadata for deathstar-plans is allowed (consume, client rdkafka),
    // Produce is not: librdkafka reads weir's Produce refusal
    let refused = kcat(s.listener, &["-P", "-t", "deathstar-plans"], "the plans\n");
    assert!(!refused.status.success());
    assert!(text(&refused.stderr).contains("Topic authorization failed"), "{}", text(&refused.stderr));
    let flow = s.weir.wait_flow("protocol=kafka&verdict=denied", "the produce refusal", |f| api(f) == "Produce");
    let kafka = flow.kafka().unwrap();
    assert_eq!(
        (kafka.topics.clone(), kafka.error_code, kafka.client_id.as_str()),
        (vec!["deathstar-plans".into()], Some(29), "rdkafka")
    );
    assert!(flow.reason.as_deref().unwrap().contains("deathstar-plans"), "{flow:?}");
    assert_eq!(flow.source.labels.first().map(String::as_str), Some("k8s:app=empire-hq"));

    // answers larger than weir's read buffer move socket to socket in the
    // kernel (splice): 400 KiB of records, read back byte for byte
    let big: String = (0..100).map(|i| format!("{i:04}{}\n", "x".repeat(4096))).collect();
    let produced = kcat(s.listener, &["-P", "-t", "empire-announce"], &big);
    assert!(produced.status.success(), "kcat -P: {}", text(&produced.stderr));
    let consumed = kcat(s.listener, &["-C", "-t", "empire-announce", "-o", "3", "-e"], "");
    assert!(consumed.status.success(), "kcat -C: {}", text(&consumed.stderr));
    assert!(text(&consumed.stdout) == big, "the large answer arrived whole and in order");
    let spliced: u64 = s
        .weir
        .metrics()
        .lines()
        .find_map(|l| l.strip_prefix("weir_kafka_spliced_bytes_total ")?.trim().parse().ok())
        .unwrap_or(0);
    assert!(spliced >= 64 << 10, "the large answer went through splice: {spliced} bytes");

    // the allowed requests went through and were recorded with latency
    let fetch = s.weir.wait_flow("protocol=kafka&verdict=forwarded", "a forwarded fetch", |f| api(f) == "Fetch");
    assert!(fetch.latency_us.is_some());
    assert_eq!(fetch.kafka().unwrap().topics, vec!["empire-announce".to_string()]);
    let metrics = s.weir.metrics();
    assert!(metrics.contains("weir_kafka_requests_total{api=\"Produce\",verdict=\"denied\"}"), "{metrics}");
}

fn kafka_python_clients_by_client_id_and_a_consumer_group(broker: BrokerKind) {
    let s = setup(broker);
    let vader = python_client(s.listener, "vader", &["produce", "deathstar-plans", "plan-a", "plan-b"]);
    assert!(vader.iter().all(|r| r["ok"] == true), "{vader:?}");
    let spy = python_client(s.listener, "spy", &["produce", "deathstar-plans", "stolen"]);
    assert_eq!(spy[0]["error"], "TopicAuthorizationFailedError", "{spy:?}");

    let hq = python_client(s.listener, "hq", &["produce", "empire-announce", "one", "two", "three"]);
    assert!(hq.iter().all(|r| r["ok"] == true), "{hq:?}");
    let group = python_client(s.listener, "hq", &["consume", "empire-announce", "imperial-readers", "3"]);
    assert_eq!(group[0]["values"], serde_json::json!(["one", "two", "three"]), "{group:?}");
    assert_eq!(group[0]["committed"], 3);
    for api_key in ["FindCoordinator", "JoinGroup", "SyncGroup", "OffsetCommit", "OffsetFetch"] {
        s.weir.wait_flow("protocol=kafka&verdict=forwarded", api_key, |f| api(f) == api_key);
    }

    let allowed = python_client(s.listener, "admin", &["create-topic", "allowed-new"]);
    assert_eq!(allowed[0]["ok"], true, "{allowed:?}");
    let refused = python_client(s.listener, "admin", &["create-topic", "forbidden-new"]);
    assert_eq!(refused[0]["ok"], false, "{refused:?}");
    let flow =
        s.weir.wait_flow("protocol=kafka&verdict=denied", "the CreateTopics refusal", |f| api(f) == "CreateTopics");
    assert_eq!(flow.kafka().unwrap().error_code, Some(29));
}

/// Admin APIs that name topics as resources are judged on those topics: an
/// `apiKey` rule with a topic allows that topic's resource only, and a
/// group-wide API (every topic of the group) needs a rule without topic.
fn kafka_python_admin_apis_are_judged_on_the_topics_they_name(broker: BrokerKind) {
    let s = setup(broker);
    let allowed = python_client(s.listener, "admin", &["describe-configs", "empire-announce"]);
    assert_eq!(allowed[0]["ok"], true, "{allowed:?}");
    let flow = s
        .weir
        .wait_flow("protocol=kafka&verdict=forwarded", "the allowed DescribeConfigs", |f| api(f) == "DescribeConfigs");
    assert_eq!(flow.kafka().unwrap().topics, vec!["empire-announce".to_string()]);

    let refused = python_client(s.listener, "admin", &["describe-configs", "deathstar-plans"]);
    assert_eq!(refused[0]["keys"], serde_json::json!([]), "the refusal carries no configs: {refused:?}");
    let flow = s
        .weir
        .wait_flow("protocol=kafka&verdict=denied", "the DescribeConfigs refusal", |f| api(f) == "DescribeConfigs");
    let kafka = flow.kafka().unwrap();
    assert_eq!((kafka.topics.clone(), kafka.error_code), (vec!["deathstar-plans".to_string()], Some(29)));
    assert!(flow.reason.as_deref().unwrap().contains("deathstar-plans"), "{flow:?}");

    // kafka-python does not show the per-resource code: read it with a raw
    // client, and see the broker's own answer for the allowed topic
    let mut client = RawClient::connect(HQ, s.listener);
    let describe = |names: &[&str]| {
        RequestKind::DescribeConfigs(
            DescribeConfigsRequest::default().with_resources(
                names
                    .iter()
                    .map(|n| {
                        describe_configs_request::DescribeConfigsResource::default()
                            .with_resource_type(2)
                            .with_resource_name(StrBytes::from_string(n.to_string()))
                    })
                    .collect(),
            ),
        )
    };
    let codes = |client: &mut RawClient, names: &[&str]| {
        client.send(ApiKey::DescribeConfigs, 4, &describe(names));
        let (_, ResponseKind::DescribeConfigs(r)) = client.receive(ApiKey::DescribeConfigs, 4).unwrap() else {
            panic!("not a DescribeConfigs answer")
        };
        r.results.iter().map(|r| (r.resource_name.to_string(), r.error_code)).collect::<Vec<_>>()
    };
    assert_eq!(codes(&mut client, &["empire-announce"]), [("empire-announce".to_string(), 0)], "the broker answers");
    assert_eq!(
        codes(&mut client, &["empire-announce", "deathstar-plans"]),
        [("empire-announce".to_string(), 29), ("deathstar-plans".to_string(), 29)],
        "weir refuses the whole request"
    );

    // DeleteGroups removes the group's offsets of every topic: a rule with a
    // topic does not allow it
    // (a real broker answers COORDINATOR_NOT_AVAILABLE until its offsets
    // topic exists, and kafka-python's delete_groups does not retry: the test
    // does, as an operator would)
    let mut deleted = Vec::new();
    wait_for("a group coordinator", Duration::from_secs(20), || {
        deleted = python_client(s.listener, "admin", &["delete-groups", "imperial-readers"]);
        deleted[0]["error"] != "CoordinatorNotAvailableError"
    });
    assert_eq!(deleted[0]["results"]["imperial-readers"], "GroupAuthorizationFailedError", "{deleted:?}");
    let flow =
        s.weir.wait_flow("protocol=kafka&verdict=denied", "the DeleteGroups refusal", |f| api(f) == "DeleteGroups");
    assert_eq!(flow.kafka().unwrap().topics, vec!["*".to_string()]);
}

fn topic(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

fn metadata(topics: &[&str]) -> RequestKind {
    RequestKind::Metadata(
        MetadataRequest::default().with_topics(Some(
            topics.iter().map(|t| MetadataRequestTopic::default().with_name(Some(topic(t)))).collect(),
        )),
    )
}

fn produce(topic_name: &str, acks: i16) -> RequestKind {
    RequestKind::Produce(ProduceRequest::default().with_acks(acks).with_timeout_ms(5000).with_topic_data(vec![
        TopicProduceData::default()
            .with_name(topic(topic_name))
            .with_partition_data(vec![PartitionProduceData::default().with_index(0)]),
    ]))
}

fn pipelined_requests_are_answered_in_order_refusals_included(broker: BrokerKind) {
    let s = setup(broker);
    let mut client = RawClient::connect(HQ, s.listener);
    // allowed, refused (raw-client may not produce to deathstar-plans), a
    // refused acks=0 produce that must get no answer, allowed: all at once
    let (a, id_a) = client.frame(ApiKey::Metadata, 9, &metadata(&["empire-announce"]));
    let (b, id_b) = client.frame(ApiKey::Produce, 9, &produce("deathstar-plans", 1));
    let (c, _) = client.frame(ApiKey::Produce, 9, &produce("deathstar-plans", 0));
    let (d, id_d) = client.frame(ApiKey::Metadata, 9, &metadata(&["empire-announce", "deathstar-plans"]));
    client.stream.write_all(&[a, b, c, d].concat()).unwrap();

    let (id, ResponseKind::Metadata(first)) = client.receive(ApiKey::Metadata, 9).unwrap() else { panic!() };
    assert_eq!(id, id_a);
    assert_eq!(first.topics[0].error_code, 0, "allowed metadata comes from the broker");
    assert!(!first.brokers.is_empty());
    let (id, ResponseKind::Produce(second)) = client.receive(ApiKey::Produce, 9).unwrap() else { panic!() };
    assert_eq!(id, id_b);
    assert_eq!(second.responses[0].partition_responses[0].error_code, 29);
    // mixed topics: the whole request is refused, each topic named
    let (id, ResponseKind::Metadata(fourth)) = client.receive(ApiKey::Metadata, 9).unwrap() else { panic!() };
    assert_eq!(id, id_d, "the acks=0 produce got no answer; order kept");
    let codes: Vec<(String, i16)> =
        fourth.topics.iter().map(|t| (t.name.as_ref().unwrap().0.to_string(), t.error_code)).collect();
    assert_eq!(codes, vec![("empire-announce".into(), 29), ("deathstar-plans".into(), 29)]);
    // the refusal came through the broker: its brokers are in it
    assert!(!fourth.brokers.is_empty(), "a Metadata refusal without brokers: {fourth:?}");
    let denied = kafka_flows(&s.weir, "verdict=denied");
    assert_eq!(denied.iter().filter(|f| api(f) == "Produce").count(), 2, "both refusals recorded: {denied:#?}");
}

fn broken_frames_close_the_connection_and_are_never_forwarded(broker: BrokerKind) {
    let s = setup(broker);
    // a frame whose body is not a Produce request
    let mut client = RawClient::connect(HQ, s.listener);
    let mut garbage = 14i32.to_be_bytes().to_vec();
    garbage.extend_from_slice(&[0, 0, 0, 9, 0, 0, 0, 5, 0, 2, b'x', b'y', 0xff, 0xff]);
    client.stream.write_all(&garbage).unwrap();
    assert!(client.closed(), "an unparsable request closes the connection");
    let flow = s.weir.wait_flow("protocol=kafka&verdict=error", "the unparsable frame", |f| {
        f.reason.as_deref().is_some_and(|r| r.contains("unparsable"))
    });
    assert_eq!(flow.kafka().unwrap().api_key, "Produce");

    // a negative length is not Kafka framing
    let mut client = RawClient::connect(HQ, s.listener);
    client.stream.write_all(&(-5i32).to_be_bytes()).unwrap();
    assert!(client.closed());
    s.weir.wait_flow("protocol=kafka&verdict=error", "the bad length", |f| {
        f.reason.as_deref().is_some_and(|r| r.contains("frame length -5"))
    });

    // a client that hangs up inside a frame
    let mut client = RawClient::connect(HQ, s.listener);
    let (frame, _) = client.frame(ApiKey::Metadata, 9, &metadata(&["empire-announce"]));
    client.stream.write_all(&frame[..frame.len() / 2]).unwrap();
    drop(client);
    s.weir.wait_flow("protocol=kafka&verdict=error", "the half frame", |f| {
        f.reason.as_deref().is_some_and(|r| r.contains("inside a frame"))
    });

    // and weir keeps serving
    let mut client = RawClient::connect(HQ, s.listener);
    client.send(ApiKey::Metadata, 9, &metadata(&["empire-announce"]));
    let (_, ResponseKind::Metadata(ok)) = client.receive(ApiKey::Metadata, 9).unwrap() else { panic!() };
    assert_eq!(ok.topics[0].error_code, 0);
}

fn a_peer_no_rule_allows_is_dropped_at_connect(broker: BrokerKind) {
    let s = setup(broker);
    let mut client = RawClient::connect(STRANGER, s.listener);
    client.send(ApiKey::ApiVersions, 3, &RequestKind::ApiVersions(ApiVersionsRequest::default()));
    assert!(client.receive(ApiKey::ApiVersions, 3).is_none(), "dropped connections get no answer");
    let flow = s.weir.wait_flow("protocol=kafka&verdict=dropped", "the dropped connection", |_| true);
    assert!(flow.source.labels.iter().any(|l| l == "reserved:world"), "{flow:?}");
}

/// A stand-in broker on a port of its own: it accepts one connection, reads
/// one request and lets `answer` misbehave with the connection and the
/// request's correlation id.
fn stand_in_broker(
    answer: impl FnOnce(std::net::TcpStream, [u8; 4]) + Send + 'static,
) -> (SocketAddr, std::thread::JoinHandle<()>) {
    let broker = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = broker.local_addr().unwrap();
    let thread = std::thread::spawn(move || {
        let (mut conn, _) = broker.accept().unwrap();
        let mut len = [0u8; 4];
        conn.read_exact(&mut len).unwrap();
        let mut request = vec![0u8; i32::from_be_bytes(len) as usize];
        conn.read_exact(&mut request).unwrap();
        answer(conn, request[4..8].try_into().unwrap());
    });
    (addr, thread)
}

/// Weir with a Kafka listener before `broker` (HQ may produce and consume),
/// and `extra` lines of weir.yaml; its listener's address.
fn weir_before(broker: SocketAddr, extra: &str) -> (Weir, SocketAddr) {
    let listener: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = format!(
        "admin: ADMIN\n{extra}\
         endpoints:\n  - {{name: hq, address: {HQ}, labels: {{app: empire-hq}}}}\n\
         listeners:\n  \
         - {{name: kafka, protocol: kafka, bind: {listener}, upstream: {broker}, \
              destination: {{labels: {{app: kafka}}, port: 9092}}}}\n"
    );
    (Weir::start(&config, &[("kafka.yaml", POLICY)]), listener)
}

/// A stand-in broker (not Kafka: tansu cannot be told to fail mid-answer)
/// that reads one request and sends half a response, then hangs up.
#[test]
fn a_broker_that_hangs_up_mid_response_is_an_error_flow_and_a_closed_client() {
    let (broker_addr, stand_in) = stand_in_broker(|mut conn, correlation_id| {
        // promise 100 bytes, send 10
        let mut half = 100i32.to_be_bytes().to_vec();
        half.extend_from_slice(&correlation_id);
        half.extend_from_slice(&[0; 6]);
        conn.write_all(&half).unwrap();
    });
    let (weir, listener) = weir_before(broker_addr, "");
    let mut client = RawClient::connect(HQ, listener);
    client.send(ApiKey::Metadata, 9, &metadata(&["empire-announce"]));
    assert!(client.receive(ApiKey::Metadata, 9).is_none(), "the client sees the connection close");
    stand_in.join().unwrap();
    let flow = weir.wait_flow("protocol=kafka&verdict=error", "the broken response", |f| api(f) == "Metadata");
    assert!(flow.reason.as_deref().unwrap().contains("broker"), "{flow:?}");
}

/// An answer weir must read whole (ApiVersions, which it narrows) is
/// reserved from the process-wide buffer budget before its body is read:
/// a broker declaring more than the budget closes the connection with an
/// error flow, and weir never allocates what it declared.
#[test]
fn an_answer_read_whole_past_the_buffer_budget_closes_the_connection() {
    let (broker_addr, stand_in) = stand_in_broker(|mut conn, correlation_id| {
        // declare a 64 MiB ApiVersions answer; send its head and a little
        let mut head = (64i32 << 20).to_be_bytes().to_vec();
        head.extend_from_slice(&correlation_id);
        head.extend_from_slice(&[0; 1024]);
        let _ = conn.write_all(&head);
        // hold the connection until weir closes it (or gives up waiting)
        conn.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let _ = conn.read(&mut [0u8; 1]);
    });
    let (weir, listener) = weir_before(broker_addr, "limits: {max_buffered: 4MiB}\n");
    let mut client = RawClient::connect(HQ, listener);
    client.send(ApiKey::ApiVersions, 3, &RequestKind::ApiVersions(ApiVersionsRequest::default()));
    assert!(client.receive(ApiKey::ApiVersions, 3).is_none(), "the client sees the connection close");
    stand_in.join().unwrap();
    let flow = weir.wait_flow("protocol=kafka&verdict=error", "the refused answer", |f| api(f) == "ApiVersions");
    let reason = flow.reason.as_deref().unwrap();
    assert!(reason.contains("weir's buffers are full") && reason.contains("limits.max_buffered"), "{flow:?}");
}
