//! Audit mode and policy replay in local mode, end to end: the same traffic
//! (curl, dig, a raw Kafka client against Apache Kafka) first under audited
//! policies, then under the same policies enforced. What was audited is what
//! is then refused, and `weir policy replay` on the audited run's flows
//! predicts exactly those refusals.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Command;

use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use weir::observe::flow::Verdict;
use weir_integration::kafka::{Broker, BrokerKind, RawClient};
use weir_integration::resolver::{Unbound, dig, free_udp_and_tcp_port};
use weir_integration::*;

/// The DNS client, and the Kafka client (kcat-like tools cannot pick a source).
const CLIENT: &str = "127.0.0.5";
const HQ: &str = "127.0.0.1";

/// Three policies, each `enforcementMode: audit` (written by `policies`).
const POLICIES: &str = r#"
apiVersion: policy.weir.dev/v1alpha1
kind: WeirNetworkPolicy
metadata: {name: web}
spec:
  endpointSelector: {matchLabels: {app: web}}
  MODE
  ingress:
    - fromEndpoints: [{matchLabels: {app: frontend}}]
      toPorts:
        - ports: [{port: "80", protocol: TCP}]
          rules:
            http: [{method: GET, path: "/public/.*"}]
---
apiVersion: policy.weir.dev/v1alpha1
kind: WeirNetworkPolicy
metadata: {name: client-dns}
spec:
  endpointSelector: {matchLabels: {app: client}}
  MODE
  egress:
    - toEndpoints: [{matchLabels: {k8s-app: kube-dns}}]
      toPorts:
        - ports: [{port: "53", protocol: ANY}]
          rules:
            dns: [{matchPattern: "*.example.com"}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: kafka
  annotations: {ANNOTATION}
spec:
  endpointSelector: {matchLabels: {app: kafka}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: empire-hq}}]
      toPorts:
        - ports: [{port: "9092", protocol: TCP}]
          rules:
            kafka: [{role: consume, topic: empire-announce}]
"#;

fn policies(audit: bool) -> String {
    if audit {
        POLICIES.replace("MODE", "enforcementMode: audit").replace("ANNOTATION", "policy.weir.dev/audit: \"true\"")
    } else {
        POLICIES.replace("  MODE\n", "").replace("ANNOTATION", "")
    }
}

struct Setup {
    weir: Weir,
    web: u16,
    dns: SocketAddr,
    kafka: SocketAddr,
    _nginx: Nginx,
    _resolver: Unbound,
    _broker: Broker,
}

fn setup() -> Setup {
    let nginx = Nginx::start();
    let resolver = Unbound::start(
        &["example.com.", "example.org."],
        &["www.example.com. 300 IN A 127.0.0.70", "other.example.org. 300 IN A 127.0.0.73"],
    );
    let kafka: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let broker = Broker::start(BrokerKind::Apache, kafka);
    broker.create_topic("empire-announce");
    broker.create_topic("deathstar-plans");
    let (web, dns) = (free_port(), free_udp_and_tcp_port());
    let config = format!(
        "admin: ADMIN\n\
         endpoints:\n  - {{name: frontend, address: {FRONTEND}, labels: {{app: frontend}}}}\n  \
         - {{name: crawler, address: {CRAWLER}, labels: {{app: crawler}}}}\n  \
         - {{name: client, address: {CLIENT}, labels: {{app: client}}}}\n  \
         - {{name: hq, address: {HQ}, labels: {{app: empire-hq}}}}\n\
         listeners:\n  \
         - {{name: web, bind: 127.0.0.1:{web}, upstream: {}, destination: {{labels: {{app: web}}, port: 80}}}}\n  \
         - {{name: dns, protocol: dns, bind: 127.0.0.1:{dns}, upstream: {}, \
              destination: {{labels: {{k8s-app: kube-dns}}, port: 53}}}}\n  \
         - {{name: kafka, protocol: kafka, bind: {kafka}, upstream: {}, \
              destination: {{labels: {{app: kafka}}, port: 9092}}}}\n",
        nginx.addr,
        resolver.addr,
        broker.addr()
    );
    let weir = Weir::start(&config, &[("policies.yaml", &policies(true))]);
    let dns = format!("127.0.0.1:{dns}").parse().unwrap();
    Setup { weir, web, dns, kafka, _nginx: nginx, _resolver: resolver, _broker: broker }
}

fn metadata(topic: &str) -> RequestKind {
    RequestKind::Metadata(MetadataRequest::default().with_topics(Some(vec![
        MetadataRequestTopic::default().with_name(Some(TopicName(StrBytes::from_string(topic.into())))),
    ])))
}

/// What each request got, in the order sent.
#[derive(Debug, PartialEq)]
struct Answers {
    frontend_public: u16,
    frontend_admin: u16,
    crawler: u16,
    dns_allowed: String,
    dns_other: String,
    kafka: Vec<i16>,
}

/// The traffic: two requests of the frontend, one of the crawler (whom no
/// rule names), two DNS queries of the client, two Metadata requests of HQ.
fn traffic(s: &Setup) -> Answers {
    let url = |path: &str| format!("http://127.0.0.1:{}{path}", s.web);
    let dns = |name: &str| {
        let answer = dig(s.dns, &["-b", CLIENT, "+time=3", "+tries=1", name, "A"]);
        answer.status.unwrap_or_else(|| format!("no answer: {}", answer.output))
    };
    let mut client = RawClient::connect(HQ, s.kafka);
    let mut kafka = Vec::new();
    for topic in ["empire-announce", "deathstar-plans"] {
        client.send(ApiKey::Metadata, 9, &metadata(topic));
        let Some((_, ResponseKind::Metadata(answer))) = client.receive(ApiKey::Metadata, 9) else {
            panic!("no Metadata answer for {topic}")
        };
        kafka.push(answer.topics[0].error_code);
    }
    Answers {
        frontend_public: curl_from(FRONTEND, &[&url("/public/hello.txt")]).status,
        frontend_admin: curl_from(FRONTEND, &[&url("/admin/secret.txt")]).status,
        crawler: curl_from(CRAWLER, &[&url("/public/hello.txt")]).status,
        dns_allowed: dns("www.example.com"),
        dns_other: dns("other.example.org"),
        kafka,
    }
}

fn weir_policy(args: &[&str]) -> std::process::Output {
    Command::new(weir_bin()).arg("policy").args(args).output().expect("weir policy")
}

#[test]
fn what_audit_reports_is_what_enforcement_refuses_and_replay_predicts_it() {
    let s = setup();

    // audited: everything passes
    let audited = traffic(&s);
    assert_eq!(
        audited,
        Answers {
            frontend_public: 200,
            frontend_admin: 200,
            crawler: 200,
            dns_allowed: "NOERROR".into(),
            dns_other: "NOERROR".into(),
            kafka: vec![0, 0],
        }
    );
    // flows are written once the answer is out: wait for the last ones
    wait_for("four audited flows", std::time::Duration::from_secs(10), || s.weir.flows("verdict=audited").len() >= 4);
    let flows = s.weir.flows("");
    let audit_flows: Vec<_> = flows.iter().filter(|f| f.verdict == Verdict::Audited).collect();
    let app = |labels: &[String]| labels.iter().find(|l| l.starts_with("k8s:app=")).cloned().unwrap_or_default();
    let what: BTreeSet<String> = audit_flows
        .iter()
        .map(|f| match (f.http(), f.dns(), f.kafka()) {
            (Some(h), _, _) => format!("http {} {}", app(&f.source.labels), h.path),
            (_, Some(d), _) => format!("dns {}", d.query),
            (_, _, Some(k)) => format!("kafka {} {}", k.api_key, k.topics.join(",")),
            _ => panic!("{f:?}"),
        })
        .collect();
    let expected: BTreeSet<String> = [
        "http k8s:app=frontend /admin/secret.txt",
        "http k8s:app=crawler /public/hello.txt",
        "dns other.example.org",
        "kafka Metadata deathstar-plans",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(what, expected, "{audit_flows:#?}");
    assert_eq!(audit_flows.len(), 4, "one audited flow per refused request: {audit_flows:#?}");

    // each names why and which policy
    let reason = |needle: &str| {
        audit_flows
            .iter()
            .find(|f| f.reason.as_deref().is_some_and(|r| r.contains(needle)))
            .unwrap_or_else(|| panic!("no audited flow says {needle:?}: {audit_flows:#?}"))
    };
    let admin =
        reason("would be denied: http-policy: no HTTP rule matched (rules of default/web spec.ingress[0].toPorts[0])");
    assert_eq!(admin.audited_by, ["default/web"]);
    let crawler = reason("would be dropped: no ingress rule allows");
    assert!(crawler.reason.as_deref().unwrap().contains("(default deny of default/web)"), "{crawler:?}");
    assert_eq!(reason("would be denied: dns-policy").audited_by, ["default/client-dns"]);
    assert_eq!(reason("would be denied: kafka-policy").audited_by, ["default/kafka"]);
    let metrics = s.weir.metrics();
    for (policy, count) in [("default/web", 2), ("default/client-dns", 1), ("default/kafka", 1)] {
        let line = format!("weir_policy_audited_total{{policy=\"{policy}\"}} {count}");
        assert!(metrics.contains(&line), "{line} not in:\n{metrics}");
    }

    // replay the audited run's flows against the enforced policies: the
    // four audited requests are the ones it says would be refused
    let dir = tempfile::tempdir().unwrap();
    let recorded = dir.path().join("flows.ndjson");
    let lines: Vec<String> = flows.iter().map(|f| serde_json::to_string(f).unwrap()).collect();
    std::fs::write(&recorded, lines.join("\n") + "\n").unwrap();
    let enforced = dir.path().join("enforced.yaml");
    std::fs::write(&enforced, policies(false)).unwrap();
    let replay = |policy: &std::path::Path| {
        let out =
            weir_policy(&["replay", "--flows", recorded.to_str().unwrap(), "-o", "json", policy.to_str().unwrap()]);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        (out.status.code(), report)
    };
    let (status, report) = replay(&enforced);
    assert_eq!(status, Some(1), "changes: exit 1; {report:#}");
    let predicted: BTreeSet<u64> =
        report["newly_refused"].as_array().unwrap().iter().map(|f| f["id"].as_u64().unwrap()).collect();
    let audited_ids: BTreeSet<u64> = audit_flows.iter().map(|f| f.id).collect();
    assert_eq!(predicted, audited_ids, "{report:#}");
    assert_eq!(report["newly_allowed"].as_array().unwrap().len(), 0, "{report:#}");
    assert_eq!(report["unknown"].as_array().unwrap().len(), 0, "{report:#}");
    let admin_replayed = report["newly_refused"].as_array().unwrap().iter().find(|f| f["id"] == admin.id).unwrap();
    assert_eq!(
        admin_replayed["because"],
        "http-policy: no HTTP rule matched (rules of default/web spec.ingress[0].toPorts[0])",
        "the same cause as the live audit"
    );
    let text = weir_policy(&["replay", "--flows", recorded.to_str().unwrap(), enforced.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("4 newly refused, 0 newly allowed, 0 unknown"), "{text}");

    // enforced, live: the same traffic is refused where the audit said
    let generation = s.weir.generation();
    s.weir.write_policy("policies.yaml", &policies(false));
    s.weir.wait_generation_above(generation);
    let enforced_answers = traffic(&s);
    assert_eq!(
        enforced_answers,
        Answers {
            frontend_public: 200,
            frontend_admin: 403,
            crawler: 0,
            dns_allowed: "NOERROR".into(),
            dns_other: "REFUSED".into(),
            kafka: vec![0, 29],
        }
    );
    let refusals = |all: &[weir::observe::flow::FlowRecord]| {
        all.iter()
            .filter(|f| f.id > flows.last().unwrap().id && matches!(f.verdict, Verdict::Denied | Verdict::Dropped))
            .count()
    };
    wait_for("four refusals", std::time::Duration::from_secs(10), || refusals(&s.weir.flows("")) >= 4);
    let live = s.weir.flows("");
    let live: Vec<_> = live.into_iter().filter(|f| f.id > flows.last().unwrap().id).collect();
    let refused = live.iter().filter(|f| matches!(f.verdict, Verdict::Denied | Verdict::Dropped)).count();
    assert_eq!(refused, 4, "{live:#?}");
    assert!(!live.iter().any(|f| f.verdict == Verdict::Audited), "nothing is audited once enforced");

    // and the enforced run's own flows replay with no change
    let recorded_live = dir.path().join("live.ndjson");
    let lines: Vec<String> = live.iter().map(|f| serde_json::to_string(f).unwrap()).collect();
    std::fs::write(&recorded_live, lines.join("\n") + "\n").unwrap();
    let out = weir_policy(&["replay", "--flows", recorded_live.to_str().unwrap(), enforced.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    // the crawler's connection was dropped at connect: no request to judge
    // again, but its L3/L4 verdict is the same
    assert!(text.contains("0 newly refused, 0 newly allowed, 0 unknown"), "{text}");
}

#[test]
fn a_bad_flow_file_or_policy_is_an_error_not_a_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let flows = dir.path().join("flows.ndjson");
    std::fs::write(&flows, "{\"not\": \"a flow\"}\n").unwrap();
    let policy = dir.path().join("p.yaml");
    std::fs::write(&policy, policies(false)).unwrap();
    let out = weir_policy(&["replay", "--flows", flows.to_str().unwrap(), policy.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 1: not a flow record"), "{out:?}");

    std::fs::write(&flows, "").unwrap();
    std::fs::write(&policy, policies(false).replace("kind: WeirNetworkPolicy", "kind: Nope")).unwrap();
    let out = weir_policy(&["replay", "--flows", flows.to_str().unwrap(), policy.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unsupported policy type"), "{out:?}");
}
