use std::net::IpAddr;

use super::document::parse_file;
use super::*;
use crate::context::Direction;
use crate::identity::{Identity, Label, Labels, NAMESPACE_LABEL, reserved};
use crate::protocol::Protocol;

fn identity(id: u32, namespace: &str, labels: &[(&str, &str)]) -> Identity {
    let mut all: Vec<Label> = labels.iter().map(|(k, v)| Label::k8s(k, v)).collect();
    all.push(Label::k8s(NAMESPACE_LABEL, namespace));
    Identity::new(id, Labels::new(all))
}

fn set(yaml: &str) -> PolicySet {
    let (docs, errors) = parse_file("test.yaml", yaml);
    assert!(errors.is_empty(), "{errors:?}");
    PolicySet::compile(&docs).unwrap_or_else(|e| panic!("{e:?}"))
}

fn errors(yaml: &str) -> Vec<PolicyError> {
    let (docs, mut errors) = parse_file("bad.yaml", yaml);
    errors.extend(PolicySet::compile(&docs).err().unwrap_or_default());
    assert!(!errors.is_empty(), "expected the policy to be rejected");
    errors
}

fn ip(s: &str) -> ipnet::IpNet {
    ipnet::IpNet::from(s.parse::<IpAddr>().unwrap())
}

const WEB_FROM_FRONTEND: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: frontend}}]
      toPorts:
        - ports: [{port: "80", protocol: TCP}]
          rules:
            http: [{method: GET, path: "/.*"}]
"#;

fn allowed(v: &SideVerdict<'_>) -> bool {
    matches!(v, SideVerdict::Allowed(_))
}

#[test]
fn ingress_rule_allows_selected_peer_on_its_port_with_l7_rules() {
    let set = set(WEB_FROM_FRONTEND);
    let web = identity(300, "shop", &[("app", "web")]);
    let frontend = identity(301, "shop", &[("app", "frontend")]);
    let peer = PeerInfo::new(&frontend, ip("10.0.0.1"));
    match set.evaluate(Direction::Ingress, &web, peer, 80, L4Protocol::Tcp) {
        SideVerdict::Allowed(a) => {
            assert_eq!(a.len(), 1);
            assert_eq!(a[0].origin, "shop/web spec.ingress[0].toPorts[0]");
            assert_eq!(a[0].l7.unwrap().http().unwrap()[0].path.as_deref(), Some("/.*"));
        }
        other => panic!("{other:?}"),
    }
    // other port, other protocol, other peer, other namespace: default deny
    assert!(matches!(set.evaluate(Direction::Ingress, &web, peer, 81, L4Protocol::Tcp), SideVerdict::Denied { .. }));
    assert!(matches!(set.evaluate(Direction::Ingress, &web, peer, 80, L4Protocol::Udp), SideVerdict::Denied { .. }));
    let db = identity(302, "shop", &[("app", "db")]);
    let other = PeerInfo::new(&db, ip("10.0.0.2"));
    assert!(matches!(set.evaluate(Direction::Ingress, &web, other, 80, L4Protocol::Tcp), SideVerdict::Denied { .. }));
    let foreign = identity(303, "elsewhere", &[("app", "frontend")]);
    let foreign = PeerInfo::new(&foreign, ip("10.0.0.3"));
    assert!(matches!(set.evaluate(Direction::Ingress, &web, foreign, 80, L4Protocol::Tcp), SideVerdict::Denied { .. }));
    // the policy's namespace confines its endpointSelector too
    let web_elsewhere = identity(304, "elsewhere", &[("app", "web")]);
    assert!(matches!(
        set.evaluate(Direction::Ingress, &web_elsewhere, peer, 80, L4Protocol::Tcp),
        SideVerdict::Unenforced
    ));
    // egress of web is not enforced by an ingress-only policy
    assert!(matches!(set.evaluate(Direction::Egress, &web, peer, 80, L4Protocol::Tcp), SideVerdict::Unenforced));
}

#[test]
fn deny_rules_win_and_enable_default_deny() {
    let set = set(r#"
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: guard}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromEntities: [all]
  ingressDeny:
    - fromEndpoints: [{matchLabels: {app: attacker}}]
      toPorts: [{ports: [{port: "80"}]}]
"#);
    let web = identity(300, "a", &[("app", "web")]);
    let attacker = identity(301, "b", &[("app", "attacker")]);
    let friend = identity(302, "b", &[("app", "friend")]);
    let at = |who: &Identity, port| {
        set.evaluate(Direction::Ingress, &web, PeerInfo::new(who, ip("10.1.1.1")), port, L4Protocol::Tcp)
    };
    match at(&attacker, 80) {
        SideVerdict::Denied { reason } => assert!(reason.contains("guard spec.ingressDeny[0].toPorts[0]"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(allowed(&at(&attacker, 443)), "deny covers port 80 only");
    assert!(allowed(&at(&friend, 80)));
    // clusterwide: the empty-namespace rule spans namespaces
    assert!(allowed(&at(&Identity::reserved(reserved::WORLD), 80)), "fromEntities: all includes world");
}

#[test]
fn default_deny_can_be_switched_off() {
    let set = set(r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: visibility}
spec:
  endpointSelector: {}
  enableDefaultDeny: {ingress: false}
  ingress:
    - fromEndpoints: [{matchLabels: {app: a}}]
      toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{}]}}]
"#);
    let web = identity(300, "default", &[("app", "web")]);
    let a = identity(301, "default", &[("app", "a")]);
    let b = identity(302, "default", &[("app", "b")]);
    let at = |who: &Identity| {
        set.evaluate(Direction::Ingress, &web, PeerInfo::new(who, ip("10.0.0.9")), 80, L4Protocol::Tcp)
    };
    assert!(allowed(&at(&a)), "a gets the L7 visibility rule");
    assert!(matches!(at(&b), SideVerdict::Unenforced), "b is not denied: default deny is off");
}

#[test]
fn entities_cidrs_and_port_ranges() {
    let set = set(r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: edge}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromCIDRSet: [{cidr: 192.0.2.0/24, except: [192.0.2.128/25]}]
      toPorts: [{ports: [{port: "8000", endPort: 8099, protocol: TCP}]}]
    - fromEntities: [host]
"#);
    let web = identity(300, "default", &[("app", "web")]);
    let world = Identity::reserved(reserved::WORLD);
    let host = Identity::reserved(reserved::HOST);
    let from = |who: &Identity, addr: &str, port| {
        set.evaluate(Direction::Ingress, &web, PeerInfo::new(who, ip(addr)), port, L4Protocol::Tcp)
    };
    assert!(allowed(&from(&world, "192.0.2.10", 8050)));
    assert!(!allowed(&from(&world, "192.0.2.200", 8050)), "except carves out the upper half");
    assert!(!allowed(&from(&world, "192.0.2.10", 8100)), "outside the range");
    assert!(!allowed(&from(&world, "198.51.100.1", 8050)));
    let managed = identity(305, "default", &[("app", "x")]);
    assert!(!allowed(&from(&managed, "192.0.2.10", 8050)), "CIDR rules never match managed endpoints");
    assert!(allowed(&from(&host, "127.0.0.1", 22)), "host entity on any port");
}

#[test]
fn rule_without_http_rules_allows_all_l7_alongside_an_l7_rule() {
    let set = set(r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: mixed}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: a}}]
      toPorts: [{ports: [{port: "80"}], rules: {http: [{path: /only}]}}]
    - fromEndpoints: [{matchLabels: {role: admin}}]
"#);
    let web = identity(300, "default", &[("app", "web")]);
    let admin_a = identity(301, "default", &[("app", "a"), ("role", "admin")]);
    match set.evaluate(Direction::Ingress, &web, PeerInfo::new(&admin_a, ip("10.0.0.1")), 80, L4Protocol::Tcp) {
        SideVerdict::Allowed(a) => {
            assert_eq!(a.len(), 2);
            assert!(a.iter().any(|x| x.l7.is_none()), "the L3-only rule contributes an allow-all group");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn egress_is_evaluated_for_the_source() {
    let set = set(r#"
apiVersion: policy.weir.dev/v1alpha1
kind: WeirNetworkPolicy
metadata: {name: out}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
    - toEndpoints: [{matchLabels: {app: api}}]
      toPorts: [{ports: [{port: "443", protocol: TCP}]}]
"#);
    let client = identity(300, "default", &[("app", "client")]);
    let api = identity(301, "default", &[("app", "api")]);
    let to = |who: &Identity, port| {
        set.evaluate(Direction::Egress, &client, PeerInfo::new(who, ip("10.0.0.5")), port, L4Protocol::Tcp)
    };
    assert!(allowed(&to(&api, 443)));
    assert!(!allowed(&to(&api, 80)));
    assert!(!allowed(&to(&Identity::reserved(reserved::WORLD), 443)));
}

fn one_error(yaml: &str) -> PolicyError {
    let mut e = errors(yaml);
    assert_eq!(e.len(), 1, "{e:?}");
    e.remove(0)
}

const HEAD: &str = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\n";

#[test]
fn errors_name_the_file_policy_and_field() {
    let e = one_error(&format!("{HEAD}spec:\n  endpointSelector: {{}}\n  ingress:\n    - fromEndpoint: []\n"));
    assert_eq!(e.file, "bad.yaml");
    assert_eq!(e.field.as_deref(), Some("spec.ingress[0].fromEndpoint"));
    assert!(e.message.contains("unknown field `fromEndpoint`"), "{}", e.message);

    let e = one_error(&format!(
        "{HEAD}spec:\n  endpointSelector: {{}}\n  ingress:\n    - toPorts: [{{ports: [{{port: '80', protocol: TPC}}]}}]\n"
    ));
    assert_eq!(e.object.as_deref(), Some("policy default/p"));
    assert_eq!(e.field.as_deref(), Some("spec.ingress[0].toPorts[0].ports[0].protocol"));

    let e = one_error(&format!("{HEAD}spec:\n  ingress: []\n"));
    assert_eq!(e.field.as_deref(), Some("spec.endpointSelector"));

    let e = one_error(&format!(
        "{HEAD}spec:\n  endpointSelector: {{}}\n  egress:\n    - toFQDNs: [{{matchName: example.com}}]\n      toEntities: [world]\n"
    ));
    assert_eq!(e.field.as_deref(), Some("spec.egress[0].toFQDNs"));
    assert!(e.message.contains("cannot be combined with toEntities"), "{}", e.message);

    let e = one_error(&format!(
        "{HEAD}spec:\n  endpointSelector: {{}}\n  egress:\n    - toFQDNs: [{{matchPattern: 'a..b'}}]\n"
    ));
    assert_eq!(e.field.as_deref(), Some("spec.egress[0].toFQDNs[0].matchPattern"));
    assert!(e.message.contains("empty label"), "{}", e.message);

    let e = one_error(&format!(
        "{HEAD}spec:\n  endpointSelector: {{}}\n  egress:\n    - toPorts: [{{ports: [{{port: '53', protocol: UDP}}], rules: {{dns: [{{matchName: 'bad name'}}]}}}}]\n"
    ));
    assert_eq!(e.field.as_deref(), Some("spec.egress[0].toPorts[0].rules.dns[0].matchName"));

    let e = one_error(&format!(
        "{HEAD}spec:\n  endpointSelector: {{}}\n  ingress:\n    - toPorts: [{{ports: [{{port: '53', protocol: UDP}}], rules: {{dns: [{{matchPattern: '*'}}]}}}}]\n"
    ));
    assert!(e.message.contains("egress only"), "{}", e.message);

    let e = one_error(&format!(
        "{HEAD}spec:\n  endpointSelector: {{}}\n  egress:\n    - toPorts: [{{ports: [{{port: '53', protocol: UDP}}], rules: {{http: [{{}}]}}}}]\n"
    ));
    assert!(e.message.contains("HTTP rules need TCP"), "{}", e.message);

    let e = one_error(&format!(
        "{HEAD}spec:\n  endpointSelector: {{}}\n  ingressDeny:\n    - toPorts: [{{ports: [{{port: '80'}}], rules: {{http: [{{}}]}}}}]\n"
    ));
    assert_eq!(e.field.as_deref(), Some("spec.ingressDeny[0].toPorts[0].rules"));

    let e = one_error(&format!(
        "{HEAD}spec:\n  endpointSelector: {{}}\n  ingress:\n    - toPorts: [{{ports: [{{port: '53', protocol: UDP}}], rules: {{http: [{{}}]}}}}]\n"
    ));
    assert!(e.message.contains("need TCP"), "{}", e.message);

    let e = one_error("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n");
    assert_eq!(e.field.as_deref(), Some("kind"));

    let e = one_error(&format!("{HEAD}spec:\n  endpointSelector: {{}}\n  ingress:\n    - fromEndpoints: []\n"));
    assert!(e.message.contains("empty list"), "{}", e.message);

    let e = one_error(&format!("{HEAD}spec:\n  endpointSelector: {{}}\n  ingress:\n    - fromCIDR: [10.0.0.300/8]\n"));
    assert_eq!(e.field.as_deref(), Some("spec.ingress[0].fromCIDR[0]"));
}

#[test]
fn every_bad_document_is_reported() {
    let two = format!(
        "{HEAD}spec:\n  endpointSelector: {{}}\n  ingress: [{{fromEntities: [moon]}}]\n---\n{HEAD}spec:\n  endpointSelector: {{}}\n  bogus: 1\n"
    );
    assert_eq!(errors(&two).len(), 2);
}

#[test]
fn kubectl_output_metadata_and_multi_document_files_load() {
    let yaml = format!(
        "{}---\n# a comment-only document is skipped\n---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\n\
         metadata:\n  name: q\n  namespace: shop\n  uid: 1234\n  resourceVersion: \"42\"\n  creationTimestamp: null\n\
         spec:\n  endpointSelector: {{}}\n",
        WEB_FROM_FRONTEND
    );
    let (docs, errors) = parse_file("multi.yaml", &yaml);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(docs.iter().map(|d| d.name()).collect::<Vec<_>>(), vec!["shop/web", "shop/q"]);
}

#[test]
fn duplicate_policy_names_are_rejected() {
    let doubled = format!("{WEB_FROM_FRONTEND}---\n{WEB_FROM_FRONTEND}");
    let e = errors(&doubled);
    assert_eq!(e.len(), 1);
    assert!(e[0].message.contains("already defined"));
}

#[test]
fn one_name_may_be_used_once_per_kind() {
    // in Kubernetes these are three objects: weir enforces all three
    let weir = WEB_FROM_FRONTEND
        .replace("cilium.io/v2", "policy.weir.dev/v1alpha1")
        .replace("CiliumNetworkPolicy", "WeirNetworkPolicy");
    let network_policy = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: shop}\n\
         spec: {podSelector: {matchLabels: {app: web}}, ingress: [{from: [{podSelector: {matchLabels: {app: crawler}}}]}]}\n";
    let set = set(&format!("{WEB_FROM_FRONTEND}---\n{weir}---\n{network_policy}"));
    let web = identity(300, "shop", &[("app", "web")]);
    let crawler = identity(301, "shop", &[("app", "crawler")]);
    let from = |who: &Identity| {
        set.evaluate(Direction::Ingress, &web, PeerInfo::new(who, ip("10.0.0.1")), 80, L4Protocol::Tcp)
    };
    assert!(allowed(&from(&crawler)), "the NetworkPolicy's rule is in force");
}

const K8S_NETWORK_POLICY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress, Egress]
  ingress:
    - from:
        - podSelector: {matchLabels: {app: web}}
        - podSelector: {matchLabels: {app: backup}}
          namespaceSelector: {}
        - ipBlock: {cidr: 10.9.0.0/16, except: [10.9.9.0/24]}
      ports: [{port: 5432}, {port: 9000, endPort: 9002, protocol: UDP}]
"#;

#[test]
fn kubernetes_network_policy_means_what_cilium_makes_of_it() {
    let set = set(K8S_NETWORK_POLICY);
    let db = identity(400, "shop", &[("app", "db")]);
    let web = identity(401, "shop", &[("app", "web")]);
    let web_elsewhere = identity(402, "lab", &[("app", "web")]);
    let backup_elsewhere = identity(403, "ops", &[("app", "backup")]);
    let world = Identity::reserved(reserved::WORLD);
    let ingress = |who: &Identity, addr: &str, port, proto| {
        allowed(&set.evaluate(Direction::Ingress, &db, PeerInfo::new(who, ip(addr)), port, proto))
    };
    // port without protocol is TCP; a podSelector stays in the namespace
    assert!(ingress(&web, "10.0.0.1", 5432, L4Protocol::Tcp));
    assert!(!ingress(&web, "10.0.0.1", 5432, L4Protocol::Udp));
    assert!(!ingress(&web_elsewhere, "10.0.0.2", 5432, L4Protocol::Tcp));
    // namespaceSelector {} widens to every namespace; endPort ranges
    assert!(ingress(&backup_elsewhere, "10.0.0.3", 9001, L4Protocol::Udp));
    assert!(!ingress(&backup_elsewhere, "10.0.0.3", 9003, L4Protocol::Udp));
    // ipBlock with except, for world peers
    assert!(ingress(&world, "10.9.1.1", 5432, L4Protocol::Tcp));
    assert!(!ingress(&world, "10.9.9.1", 5432, L4Protocol::Tcp));
    // Egress listed without rules: all egress denied
    let egress = set.evaluate(Direction::Egress, &db, PeerInfo::new(&web, ip("10.0.0.1")), 53, L4Protocol::Udp);
    assert!(matches!(egress, SideVerdict::Denied { .. }), "{egress:?}");
}

#[test]
fn a_namespace_selector_selects_by_the_labels_of_the_pods_namespace() {
    let by_team = K8S_NETWORK_POLICY.replace(
        "namespaceSelector: {}",
        "namespaceSelector: {matchLabels: {team: ops}, matchExpressions: [{key: env, operator: NotIn, values: [dev]}]}",
    );
    let set = set(&by_team);
    let db = identity(400, "shop", &[("app", "db")]);
    // as the Kubernetes source labels pods: their namespace's labels
    fn ns<'a>(team: &'a str, env: &'a str) -> [(&'static str, &'a str); 2] {
        [("io.cilium.k8s.namespace.labels.team", team), ("io.cilium.k8s.namespace.labels.env", env)]
    }
    let [team, env] = ns("ops", "prod");
    let backup_ops = identity(403, "ops", &[("app", "backup"), team, env]);
    let [team, env] = ns("ops", "dev");
    let backup_ops_dev = identity(404, "ops-dev", &[("app", "backup"), team, env]);
    let [team, env] = ns("lab", "prod");
    let backup_lab = identity(405, "lab", &[("app", "backup"), team, env]);
    let from = |who: &Identity| {
        allowed(&set.evaluate(Direction::Ingress, &db, PeerInfo::new(who, ip("10.0.0.3")), 5432, L4Protocol::Tcp))
    };
    assert!(from(&backup_ops), "in a namespace the selector selects, any namespace name");
    assert!(!from(&backup_ops_dev), "matchExpressions on the namespace's labels count too");
    assert!(!from(&backup_lab), "a namespace without the label is not selected");
}

#[test]
fn kubernetes_network_policy_refuses_what_it_cannot_enforce() {
    let named_port = K8S_NETWORK_POLICY.replace("{port: 5432}", "{port: postgres}");
    let e = errors(&named_port);
    assert!(e[0].message.contains("named ports"), "{e:?}");
    let typo = K8S_NETWORK_POLICY.replace("podSelector: {matchLabels: {app: db}}", "podSelectr: {}");
    let e = errors(&typo);
    assert!(e[0].message.contains("podSelectr"), "{e:?}");
}

#[test]
fn to_fqdns_allows_only_learned_world_addresses_for_matching_names() {
    let set = set(r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: fqdn}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
    - toFQDNs: [{matchName: api.example.com}, {matchPattern: "*.cdn.example.net"}]
      toPorts: [{ports: [{port: "443", protocol: TCP}]}]
"#);
    let client = identity(300, "default", &[("app", "client")]);
    let world = Identity::reserved(reserved::WORLD);
    let api = identity(301, "default", &[("app", "api")]);
    let to = |who: &Identity, names: &[&str], port| {
        let names: Vec<std::sync::Arc<str>> = names.iter().map(|n| std::sync::Arc::from(*n)).collect();
        let peer = PeerInfo { identity: who, address: ip("192.0.2.1"), learned_names: &names };
        allowed(&set.evaluate(Direction::Egress, &client, peer, port, L4Protocol::Tcp))
    };
    assert!(!to(&world, &[], 443), "an address never learned stays blocked");
    assert!(to(&world, &["api.example.com"], 443));
    assert!(to(&world, &["eu.cdn.example.net"], 443));
    assert!(!to(&world, &["a.b.cdn.example.net"], 443), "a star does not cross a dot");
    assert!(!to(&world, &["other.example.com"], 443), "learned, but for a name no rule names");
    assert!(!to(&world, &["api.example.com"], 80), "the port still counts");
    assert!(!to(&api, &["api.example.com"], 443), "toFQDNs selects world addresses only");
}

#[test]
fn dns_rules_compile_for_udp_and_tcp_and_keep_their_kind() {
    let set = set(r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: dns}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
    - toEndpoints: [{matchLabels: {k8s-app: kube-dns}}]
      toPorts:
        - ports: [{port: "53", protocol: ANY}]
          rules:
            dns: [{matchPattern: "*.example.com"}]
"#);
    let client = identity(300, "default", &[("app", "client")]);
    let dns = identity(302, "default", &[("k8s-app", "kube-dns")]);
    for protocol in [L4Protocol::Udp, L4Protocol::Tcp] {
        let v = set.evaluate(Direction::Egress, &client, PeerInfo::new(&dns, ip("10.0.0.53")), 53, protocol);
        let SideVerdict::Allowed(a) = v else { panic!("{protocol:?} to the resolver is allowed") };
        let l7 = a[0].l7.expect("with DNS rules");
        assert_eq!(l7.kind(), crate::protocol::Protocol::Dns);
        assert_eq!(l7.dns().unwrap()[0].match_pattern.as_deref(), Some("*.example.com"));
    }
}

const KAFKA_POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: kafka}
spec:
  endpointSelector: {matchLabels: {app: kafka}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: empire-hq}}]
      toPorts:
        - ports: [{port: "9092", protocol: PROTO}]
          rules:
            RULES
"#;

#[test]
fn kafka_rules_compile_with_their_kind_and_fields() {
    let yaml = KAFKA_POLICY
        .replace("PROTO", "TCP")
        .replace("RULES", "kafka: [{role: produce, topic: empire-announce, clientID: hq}]");
    let set = set(&yaml);
    let kafka = identity(400, "default", &[("app", "kafka")]);
    let hq = identity(401, "default", &[("app", "empire-hq")]);
    let v = set.evaluate(Direction::Ingress, &kafka, PeerInfo::new(&hq, ip("10.0.0.7")), 9092, L4Protocol::Tcp);
    let SideVerdict::Allowed(a) = v else { panic!("hq may connect") };
    let l7 = a[0].l7.expect("with Kafka rules");
    assert_eq!(l7.kind(), Protocol::Kafka);
    let rule = &l7.kafka().unwrap()[0];
    assert_eq!(
        (rule.role.as_deref(), rule.topic.as_deref(), rule.client_id.as_deref()),
        (Some("produce"), Some("empire-announce"), Some("hq"))
    );
}

#[test]
fn kafka_rules_need_tcp_one_protocol_per_port_and_known_fields() {
    let udp = KAFKA_POLICY.replace("PROTO", "UDP").replace("RULES", "kafka: [{role: produce}]");
    assert!(errors(&udp)[0].message.contains("Kafka rules need TCP"), "{:?}", errors(&udp));
    let mixed =
        KAFKA_POLICY.replace("PROTO", "TCP").replace("RULES", "kafka: [{role: produce}]\n            http: [{}]");
    let e = errors(&mixed);
    assert!(e[0].message.contains("put http and kafka in separate toPorts"), "{e:?}");
    let typo = KAFKA_POLICY.replace("PROTO", "TCP").replace("RULES", "kafka: [{topics: t}]");
    assert!(errors(&typo)[0].message.contains("unknown field `topics`"), "{:?}", errors(&typo));
}

#[test]
fn l7proto_selects_weirs_engines_or_a_stream_filter_by_name() {
    let kafka = identity(400, "default", &[("app", "kafka")]);
    let hq = identity(401, "default", &[("app", "empire-hq")]);
    for (proto, kind) in
        [("memcache", Protocol::Memcached), ("cassandra", Protocol::Cassandra), ("r2d2", Protocol::Stream)]
    {
        let yaml = KAFKA_POLICY
            .replace("PROTO", "TCP")
            .replace("RULES", &format!("l7proto: {proto}\n            l7: [{{command: get, keyPrefix: a/}}]"));
        let set = set(&yaml);
        let v = set.evaluate(Direction::Ingress, &kafka, PeerInfo::new(&hq, ip("10.0.0.7")), 9092, L4Protocol::Tcp);
        let SideVerdict::Allowed(a) = v else { panic!("hq may connect") };
        let l7 = a[0].l7.expect("with l7 rules");
        assert_eq!((l7.kind(), l7.l7proto()), (kind, Some(proto)));
        assert_eq!(l7.generic().unwrap()[0]["keyPrefix"], "a/");
    }
}

#[test]
fn l7_rules_need_a_parser_tcp_and_a_port_of_their_own() {
    let orphan = KAFKA_POLICY.replace("PROTO", "TCP").replace("RULES", "l7: [{cmd: READ}]");
    assert!(errors(&orphan)[0].message.contains("l7 rules need l7proto"), "{:?}", errors(&orphan));
    let udp = KAFKA_POLICY.replace("PROTO", "UDP").replace("RULES", "l7proto: memcache");
    assert!(errors(&udp)[0].message.contains("l7proto memcache need TCP"), "{:?}", errors(&udp));
    let mixed = KAFKA_POLICY.replace("PROTO", "TCP").replace("RULES", "l7proto: r2d2\n            kafka: [{}]");
    assert!(errors(&mixed)[0].message.contains("separate toPorts"), "{:?}", errors(&mixed));
    let bad_name = KAFKA_POLICY.replace("PROTO", "TCP").replace("RULES", "l7proto: \"a b\"");
    assert!(errors(&bad_name)[0].message.contains("not a parser name"), "{:?}", errors(&bad_name));
}

#[test]
fn audit_mode_is_read_per_rule_and_per_object_and_refused_where_it_would_vanish() {
    let weir = r#"
apiVersion: policy.weir.dev/v1alpha1
kind: WeirNetworkPolicy
metadata: {name: web, namespace: shop}
specs:
  - endpointSelector: {matchLabels: {app: web}}
    enforcementMode: audit
    ingress: [{fromEndpoints: [{matchLabels: {app: frontend}}]}]
  - endpointSelector: {matchLabels: {app: db}}
    enforcementMode: enforce
    ingress: [{fromEndpoints: [{matchLabels: {app: web}}]}]
"#;
    let compiled = set(weir);
    assert_eq!(compiled.rules.iter().map(|r| r.audit).collect::<Vec<_>>(), [true, false]);
    assert!(compiled.audits());
    assert_eq!(compiled.enforced().rules.len(), 1, "the enforced set leaves the audited rule out");
    assert_eq!(compiled.enforced().rules[0].path, "specs[1]");

    // on Cilium's kinds, the annotation (Cilium's CRD would prune the field)
    let annotated = WEB_FROM_FRONTEND.replace(
        "metadata: {name: web, namespace: shop}",
        "metadata: {name: web, namespace: shop, annotations: {policy.weir.dev/audit: \"true\"}}",
    );
    assert!(set(&annotated).rules.iter().all(|r| r.audit));
    assert!(!set(WEB_FROM_FRONTEND).audits());

    let field_on_cilium = WEB_FROM_FRONTEND.replace("  ingress:\n", "  enforcementMode: audit\n  ingress:\n");
    let e = errors(&field_on_cilium);
    assert_eq!(e[0].field.as_deref(), Some("spec.enforcementMode"), "{e:?}");
    assert!(e[0].message.contains("policy.weir.dev/audit"), "{e:?}");

    let bad_value = annotated.replace("\"true\"", "\"yes\"");
    let e = errors(&bad_value);
    assert_eq!(e[0].field.as_deref(), Some("metadata.annotations[policy.weir.dev/audit]"), "{e:?}");

    let contradiction = weir.replace(
        "metadata: {name: web, namespace: shop}",
        "metadata: {name: web, namespace: shop, annotations: {policy.weir.dev/audit: \"true\"}}",
    );
    let e = errors(&contradiction);
    assert_eq!(e[0].field.as_deref(), Some("specs[1].enforcementMode"), "{e:?}");

    let stream = r#"
apiVersion: policy.weir.dev/v1alpha1
kind: WeirNetworkPolicy
metadata: {name: r2d2}
spec:
  endpointSelector: {}
  enforcementMode: audit
  ingress: [{toPorts: [{ports: [{port: "4000"}], rules: {l7proto: r2d2, l7: [{cmd: READ}]}}]}]
"#;
    let e = errors(stream);
    assert_eq!(e[0].field.as_deref(), Some("spec.ingress[0].toPorts[0].l7proto"), "{e:?}");
}

#[test]
fn a_default_deny_names_the_policies_that_make_it() {
    let set = set(WEB_FROM_FRONTEND);
    let web = identity(300, "shop", &[("app", "web")]);
    let other = identity(302, "shop", &[("app", "other")]);
    match set.evaluate(Direction::Ingress, &web, PeerInfo::new(&other, ip("10.0.0.2")), 80, L4Protocol::Tcp) {
        SideVerdict::Denied { reason } => {
            assert!(reason.starts_with("no ingress rule allows"), "{reason}");
            assert!(reason.ends_with("on port 80 (default deny of shop/web)"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn icmps_rules_allow_the_types_they_name_and_nothing_else() {
    let set = set(r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: pingable, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: monitor}}]
      icmps:
        - fields: [{type: 8}, {type: EchoRequest, family: IPv6}]
        - fields: [{type: "13"}]
    - fromEndpoints: [{matchLabels: {app: frontend}}]
      toPorts: [{ports: [{port: "80", protocol: TCP}]}]
    - fromEndpoints: [{matchLabels: {app: scanner}}]
      toPorts: [{ports: [{port: "1", endPort: 65535}]}]
"#);
    let web = identity(300, "shop", &[("app", "web")]);
    let monitor = identity(301, "shop", &[("app", "monitor")]);
    let scanner = identity(303, "shop", &[("app", "scanner")]);
    let frontend = identity(302, "shop", &[("app", "frontend")]);
    let judge = |who: &Identity, port, protocol| {
        set.evaluate(Direction::Ingress, &web, PeerInfo::new(who, ip("10.0.0.9")), port, protocol)
    };
    let icmp = |t| L4Protocol::icmp_port(t);
    assert!(allowed(&judge(&monitor, icmp(8), L4Protocol::Icmp)), "echo request");
    assert!(allowed(&judge(&monitor, icmp(13), L4Protocol::Icmp)), "timestamp, named as a string");
    assert!(allowed(&judge(&monitor, icmp(128), L4Protocol::Icmp6)), "ICMPv6 echo request by name");
    match judge(&monitor, icmp(0), L4Protocol::Icmp) {
        SideVerdict::Denied { reason } => assert!(reason.contains("on ICMP type 0"), "{reason}"),
        other => panic!("echo reply is not named: {other:?}"),
    }
    assert!(!allowed(&judge(&monitor, icmp(8), L4Protocol::Icmp6)), "type 8 was named for IPv4 only");
    assert!(!allowed(&judge(&monitor, 0, L4Protocol::Other)), "other port-less protocols are not ICMP types");
    assert!(!allowed(&judge(&monitor, 80, L4Protocol::Tcp)), "an icmps rule allows no port");
    assert!(allowed(&judge(&frontend, 80, L4Protocol::Tcp)));
    assert!(!allowed(&judge(&frontend, icmp(8), L4Protocol::Icmp)), "a toPorts rule allows no ICMP");
    // ANY is TCP, UDP and SCTP: a range of its ports holds no ICMP type
    assert!(allowed(&judge(&scanner, 9, L4Protocol::Udp)));
    assert!(!allowed(&judge(&scanner, icmp(8), L4Protocol::Icmp)), "port 9 of ANY is not ICMP type 8");
}

#[test]
fn bad_icmps_rules_are_refused_with_the_field() {
    let rule = |icmps: &str| format!("{HEAD}spec:\n  endpointSelector: {{}}\n  ingress:\n    - icmps: {icmps}\n");
    let cases = [
        ("[{fields: [{type: Echo, family: IPv6}]}]", "spec.ingress[0].icmps[0].fields[0].type", "not an ICMPv6 type"),
        ("[{fields: [{type: 256}]}]", "spec.ingress[0].icmps[0].fields[0].type", "not an ICMP type"),
        ("[{fields: [{type: 255}]}]", "spec.ingress[0].icmps[0].fields[0].type", "reserved"),
        ("[{fields: [{type: 8, family: IPv5}]}]", "spec.ingress[0].icmps[0].fields[0].family", "not IPv4 or IPv6"),
        ("[{fields: []}]", "spec.ingress[0].icmps[0].fields", "names no ICMP type"),
        ("[]", "spec.ingress[0].icmps", "names no ICMP type"),
    ];
    for (icmps, field, message) in cases {
        let e = one_error(&rule(icmps));
        assert_eq!(e.field.as_deref(), Some(field), "{icmps}: {e:?}");
        assert!(e.message.contains(message), "{icmps}: {}", e.message);
    }
    let e = one_error(&format!(
        "{HEAD}spec:\n  endpointSelector: {{}}\n  egress:\n    - icmps: [{{fields: [{{type: 8}}]}}]\n      toPorts: [{{ports: [{{port: '53'}}]}}]\n"
    ));
    assert_eq!(e.field.as_deref(), Some("spec.egress[0].icmps"));
    assert!(e.message.contains("cannot be combined with toPorts"), "{}", e.message);
}
