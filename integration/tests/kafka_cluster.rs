//! Weir in front of a real three-broker Apache Kafka cluster (KRaft, one JVM
//! per broker), each broker advertising its own address. Clients are given
//! only weir's bootstrap address; the listener's `brokers` make every answer
//! that names brokers name weir's listener for each, so kafka-python's
//! producer and consumer group reach the leaders of all six partitions —
//! led by three different brokers — through weir, judged there.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use weir_integration::kafka::{ApacheKafkaCluster, RawClient, java_tool, metadata, python_client};
use weir_integration::*;

const HQ: &str = "127.0.0.1";

const POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: empire-kafka}
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
              - {role: consume, topic: deathstar-plans}
              - {apiKey: describegroups}
              - {apiKey: consumergroupdescribe}
              # the group tool reads every committed offset of the group
              # (OffsetFetch for all topics): a rule without a topic
              - {apiKey: offsetfetch}
              - {apiKey: listgroups}
              - {apiKey: describecluster}
"#;

/// A Kafka tool run to its end: its stdout, or a panic with its stderr.
fn run_tool(main: &str, args: &[&str]) -> String {
    let out = java_tool(main, args).output().expect("scripts/kafka.sh run");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{main} {args:?}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

#[test]
fn clients_given_weirs_address_reach_every_broker_through_weir() {
    let cluster = ApacheKafkaCluster::start(3);
    cluster.create_topic("empire-announce", 6);
    cluster.create_topic("deathstar-plans", 3);
    let brokers = cluster.addrs();
    // the cluster as clients would see it without weir: three leaders, each
    // broker at its own address
    let direct = metadata(brokers[0].1).expect("the cluster answers Metadata");
    let topic = direct.topics.iter().find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == "empire-announce"));
    let leaders: BTreeSet<i32> = topic.unwrap().partitions.iter().map(|p| p.leader_id.0).collect();
    assert_eq!(leaders, BTreeSet::from([1, 2, 3]), "partitions led by every broker");

    let bootstrap: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let weir_ports: Vec<(i32, u16)> = brokers.iter().map(|&(id, _)| (id, free_port())).collect();
    let entries: Vec<String> = brokers
        .iter()
        .zip(&weir_ports)
        .map(|(&(id, addr), &(_, port))| format!("{{id: {id}, bind: 127.0.0.1:{port}, upstream: {addr}}}"))
        .collect();
    let config = format!(
        "admin: ADMIN\n\
         endpoints:\n  - {{name: hq, address: {HQ}, labels: {{app: empire-hq}}}}\n\
         listeners:\n  \
         - {{name: kafka, protocol: kafka, bind: {bootstrap}, upstream: {}, \
              destination: {{labels: {{app: kafka}}, port: 9092}}, brokers: [{}]}}\n",
        brokers[0].1,
        entries.join(", ")
    );
    let weir = Weir::start(&config, &[("kafka.yaml", POLICY)]);

    // through weir, Metadata names weir's listeners only
    let mut client = RawClient::connect(HQ, bootstrap);
    let ask = MetadataRequest::default().with_topics(Some(vec![
        MetadataRequestTopic::default().with_name(Some(TopicName(StrBytes::from_static_str("empire-announce")))),
    ]));
    client.send(ApiKey::Metadata, 12, &RequestKind::Metadata(ask));
    let Some((_, ResponseKind::Metadata(answer))) = client.receive(ApiKey::Metadata, 12) else {
        panic!("no Metadata answer through weir")
    };
    let mut named: Vec<(i32, String, i32)> =
        answer.brokers.iter().map(|b| (b.node_id.0, b.host.to_string(), b.port)).collect();
    named.sort();
    let expected: Vec<(i32, String, i32)> =
        weir_ports.iter().map(|&(id, port)| (id, "127.0.0.1".to_string(), i32::from(port))).collect();
    assert_eq!(named, expected, "every broker at weir's address for it");

    // kafka-python, given weir's bootstrap address alone, produces to all six
    // partitions and reads them back as a consumer group
    let values: Vec<String> = (0..40).map(|i| format!("order-{i}")).collect();
    let mut args = vec!["produce", "empire-announce"];
    args.extend(values.iter().map(String::as_str));
    let produced = python_client(bootstrap, "hq", &args);
    assert!(produced.iter().all(|r| r["ok"] == true), "{produced:?}");
    let consumed = python_client(bootstrap, "hq", &["consume", "empire-announce", "readers", "40"]);
    assert_eq!(consumed[0]["ok"], true, "{consumed:?}");
    let mut got: Vec<String> =
        consumed[0]["values"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    got.sort();
    let mut want = values.clone();
    want.sort();
    assert_eq!(got, want, "every message back, from every partition");

    // and weir judged them on each broker's listener
    for &(id, _) in &weir_ports {
        let listener = format!("kafka-broker-{id}");
        weir.wait_flow("protocol=kafka&verdict=forwarded", &format!("a Produce through {listener}"), |f| {
            f.listener == listener && f.kafka().is_some_and(|k| k.api_key == "Produce")
        });
        weir.wait_flow("protocol=kafka&verdict=forwarded", &format!("a Fetch through {listener}"), |f| {
            f.listener == listener && f.kafka().is_some_and(|k| k.api_key == "Fetch")
        });
    }
    // the group's coordinator too was reached through weir
    weir.wait_flow("protocol=kafka&verdict=forwarded", "a JoinGroup on a broker's listener", |f| {
        f.listener.starts_with("kafka-broker-") && f.kafka().is_some_and(|k| k.api_key == "JoinGroup")
    });

    // Kafka's own Java tools, given weir's address alone: the console
    // consumer reads every partition in a group of its own (the Java client
    // on the newest versions weir reads), the group tool finds the group's
    // coordinator and offsets, the cluster tool lists the brokers — all
    // through weir's listeners
    let bootstrap_arg = bootstrap.to_string();
    let read = run_tool(
        "org.apache.kafka.tools.consumer.ConsoleConsumer",
        &[
            "--bootstrap-server",
            &bootstrap_arg,
            "--topic",
            "empire-announce",
            "--group",
            "java-readers",
            "--from-beginning",
            "--max-messages",
            "40",
            "--timeout-ms",
            "30000",
        ],
    );
    let mut got: Vec<&str> = read.lines().collect();
    got.sort();
    assert_eq!(got, want, "the Java consumer reads every partition through weir");
    let groups = run_tool(
        "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
        &["--bootstrap-server", &bootstrap_arg, "--describe", "--group", "java-readers"],
    );
    let partitions = groups.lines().filter(|l| l.contains("empire-announce")).count();
    assert_eq!(partitions, 6, "the group's six partitions, with their offsets:\n{groups}");
    let cluster_said =
        run_tool("org.apache.kafka.tools.ClusterTool", &["list-endpoints", "--bootstrap-server", &bootstrap_arg]);
    // (DescribeCluster: each broker's id, host and port on a line)
    for &(id, port) in &weir_ports {
        let line = cluster_said.lines().find(|l| l.split_whitespace().next() == Some(&id.to_string()));
        assert!(line.is_some_and(|l| l.contains(&port.to_string())), "broker {id} at weir's {port}:\n{cluster_said}");
    }

    // a refused Produce is refused whichever broker leads the partition
    let refused = python_client(bootstrap, "hq", &["produce", "deathstar-plans", "the plans"]);
    assert_eq!(refused[0]["ok"], false, "{refused:?}");
    assert_eq!(refused[0]["error"], "TopicAuthorizationFailedError", "{refused:?}");
    let flow = weir.wait_flow("protocol=kafka&verdict=denied", "the Produce refusal", |f| {
        f.kafka().is_some_and(|k| k.api_key == "Produce" && k.topics == ["deathstar-plans"])
    });
    assert!(flow.listener.starts_with("kafka-broker-"), "judged on the leader's listener: {flow:?}");

    // a broker missing from `brokers`: by default its address reaches the
    // client (and weir warns); with `unlisted_brokers: refuse` an answer
    // naming it is refused and the connection closes
    for (setting, refused) in [("", false), (", unlisted_brokers: refuse", true)] {
        let bootstrap: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = format!(
            "admin: ADMIN\n\
             endpoints:\n  - {{name: hq, address: {HQ}, labels: {{app: empire-hq}}}}\n\
             listeners:\n  \
             - {{name: kafka, protocol: kafka, bind: {bootstrap}, upstream: {}, \
                  destination: {{labels: {{app: kafka}}, port: 9092}}, brokers: [{}, {}]{setting}}}\n",
            brokers[0].1, entries[0], entries[1]
        );
        let partial = Weir::start(&config, &[("kafka.yaml", POLICY)]);
        let mut client = RawClient::connect(HQ, bootstrap);
        client.send(ApiKey::Metadata, 12, &RequestKind::Metadata(MetadataRequest::default()));
        match client.receive(ApiKey::Metadata, 12) {
            Some((_, ResponseKind::Metadata(answer))) => {
                assert!(!refused, "answered: {answer:?}");
                let third = answer.brokers.iter().find(|b| b.node_id.0 == 3).expect("broker 3 named");
                assert_eq!(i32::from(brokers[2].1.port()), third.port, "broker 3 at its own address");
                assert!(partial.log().contains("have no weir listener"), "{}", partial.log());
            }
            other => {
                assert!(refused, "{other:?}");
                let flow = partial.wait_flow("protocol=kafka&verdict=error", "the refused Metadata", |f| {
                    f.kafka().is_some_and(|k| k.api_key == "Metadata")
                });
                assert!(flow.reason.unwrap().contains("brokers [3], which have no weir listener"));
            }
        }
    }
}
