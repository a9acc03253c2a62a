//! Cilium's Kafka rule semantics, checked against the real built-in
//! `kafka-policy` component running in the real filter host.

use std::sync::{Arc, OnceLock};

use serde_json::json;
use weir::observe::metrics::Metrics;
use weir::protocol::Protocol;
use weir::wasm::kafka::{Request, RequestDecision, Topics};
use weir::wasm::{
    ConfigureError, ConfiguredFilter, FailurePolicy, FilterComponent, FilterLimits, FilterRuntime, RuntimeOptions,
    builtin, test_connection,
};

const PRODUCE: i16 = 0;
const FETCH: i16 = 1;
const LIST_OFFSETS: i16 = 2;
const METADATA: i16 = 3;
const JOIN_GROUP: i16 = 11;
const HEARTBEAT: i16 = 12;
const API_VERSIONS: i16 = 18;
const CREATE_TOPICS: i16 = 19;
const INIT_PRODUCER_ID: i16 = 22;

fn runtime() -> &'static (Arc<FilterRuntime>, Arc<FilterComponent>) {
    static RUNTIME: OnceLock<(Arc<FilterRuntime>, Arc<FilterComponent>)> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        let runtime = Arc::new(FilterRuntime::new(Arc::new(Metrics::default()), RuntimeOptions::default()).unwrap());
        let component = runtime.load(builtin::KAFKA_POLICY, builtin::find(builtin::KAFKA_POLICY).unwrap()).unwrap();
        (runtime, component)
    })
}

fn configure(groups: serde_json::Value) -> Result<Arc<ConfiguredFilter>, ConfigureError> {
    let (runtime, component) = runtime();
    let config = json!({ "groups": groups }).to_string();
    runtime.configure(component, config, FilterLimits::default(), FailurePolicy::Closed)
}

fn request(api_key: i16, version: i16, client: &str, topics: Topics) -> Request {
    Request {
        api_key,
        api_version: version,
        correlation_id: 1,
        client_id: Some(client.to_string()),
        topics,
        transactional_id: None,
    }
}

fn named(topics: &[&str]) -> Topics {
    Topics::Named(topics.iter().map(|t| t.to_string()).collect())
}

/// `Ok(matched)` or `Err(reason)`.
fn ask(filter: &ConfiguredFilter, request: &Request) -> Result<Option<String>, String> {
    match filter.on_kafka_request(test_connection(), request).expect("the filter runs") {
        RequestDecision::Allow(a) => Ok(a.matched),
        RequestDecision::Deny(d) => {
            assert!(d.error_code.is_none(), "the built-in filter leaves the error code to the host");
            Err(d.reason)
        }
    }
}

#[test]
fn the_builtin_filter_implements_the_kafka_world() {
    assert_eq!(runtime().1.world(), Protocol::Kafka);
}

#[test]
fn roles_expand_to_the_api_keys_of_the_operation() {
    let f = configure(json!([{ "name": "p", "rules": [{ "role": "Produce", "topic": "empire-announce" }] }])).unwrap();
    assert_eq!(ask(&f, &request(PRODUCE, 9, "c", named(&["empire-announce"]))), Ok(Some("p".into())));
    assert_eq!(ask(&f, &request(METADATA, 9, "c", named(&["empire-announce"]))), Ok(Some("p".into())));
    assert_eq!(ask(&f, &request(API_VERSIONS, 3, "c", Topics::None)), Ok(Some("p".into())));
    assert!(ask(&f, &request(FETCH, 11, "c", named(&["empire-announce"]))).is_err(), "fetch is consume");
    assert!(ask(&f, &request(PRODUCE, 9, "c", named(&["deathstar-plans"]))).is_err());

    let c = configure(json!([{ "name": "c", "rules": [{ "role": "consume", "topic": "t" }] }])).unwrap();
    for key in [FETCH, LIST_OFFSETS, METADATA, 8, 9, 10, JOIN_GROUP, HEARTBEAT, 13, 14, API_VERSIONS] {
        let topics = if [FETCH, LIST_OFFSETS, METADATA, 8, 9].contains(&key) { named(&["t"]) } else { Topics::None };
        assert!(ask(&c, &request(key, 4, "c", topics)).is_ok(), "consume allows API key {key}");
    }
    assert!(ask(&c, &request(PRODUCE, 9, "c", named(&["t"]))).is_err(), "consume does not produce");
    assert!(ask(&c, &request(CREATE_TOPICS, 4, "c", named(&["t"]))).is_err());
}

#[test]
fn produce_role_allows_an_idempotent_producer_id_but_not_a_transaction() {
    let f = configure(json!([{ "rules": [{ "role": "produce", "topic": "t" }] }])).unwrap();
    let mut init = request(INIT_PRODUCER_ID, 4, "c", Topics::None);
    assert!(ask(&f, &init).is_ok());
    init.transactional_id = Some("tx-1".into());
    assert!(ask(&f, &init).is_err(), "transactions need an apiKey rule");
    let explicit = configure(json!([{ "rules": [{ "apiKey": "initproducerid" }] }])).unwrap();
    assert!(ask(&explicit, &init).is_ok());
}

#[test]
fn every_topic_of_a_request_must_be_allowed_by_some_rule() {
    let f = configure(json!([
        { "name": "a", "rules": [{ "role": "produce", "topic": "one" }] },
        { "name": "b", "rules": [{ "role": "produce", "topic": "two" }] },
    ]))
    .unwrap();
    // topics are checked off across the rules of every group, as in Cilium
    assert!(ask(&f, &request(PRODUCE, 9, "c", named(&["one", "two"]))).is_ok());
    let mixed = ask(&f, &request(METADATA, 9, "c", named(&["one", "three"])));
    assert_eq!(mixed, Err("no Kafka rule allows topic \"three\" for metadata".into()));
}

#[test]
fn topic_rules_do_not_constrain_requests_without_topics() {
    let f = configure(json!([{ "rules": [{ "role": "consume", "topic": "t" }] }])).unwrap();
    assert!(ask(&f, &request(HEARTBEAT, 4, "c", Topics::None)).is_ok());
    // Metadata for brokers only (an empty list)
    assert!(ask(&f, &request(METADATA, 12, "c", named(&[]))).is_ok());
    // every topic, or topics weir could not read: only a rule without topic allows it
    let all = ask(&f, &request(METADATA, 12, "c", Topics::All));
    assert_eq!(all, Err("metadata for every topic: the rules allow only named topics".into()));
    assert!(ask(&f, &request(FETCH, 13, "c", Topics::Unknown)).unwrap_err().contains("cannot read"));
    let open = configure(json!([{ "rules": [{ "apiKey": "metadata" }] }])).unwrap();
    assert!(ask(&open, &request(METADATA, 12, "c", Topics::All)).is_ok());
}

#[test]
fn api_key_version_and_client_id_must_all_match() {
    let f = configure(json!([{ "rules": [
        { "apiKey": "Fetch", "apiVersion": "11", "clientID": "reader", "topic": "t" },
    ]}]))
    .unwrap();
    assert!(ask(&f, &request(FETCH, 11, "reader", named(&["t"]))).is_ok());
    assert!(ask(&f, &request(FETCH, 12, "reader", named(&["t"]))).is_err(), "version");
    assert!(ask(&f, &request(FETCH, 11, "writer", named(&["t"]))).is_err(), "client id");
    let mut no_client = request(FETCH, 11, "x", named(&["t"]));
    no_client.client_id = None;
    assert!(ask(&f, &no_client).is_err(), "a null client id is not \"reader\"");
    let reason = ask(&f, &request(PRODUCE, 9, "reader", named(&["t"]))).unwrap_err();
    assert_eq!(reason, "no Kafka rule allows produce v9 from client \"reader\"");
}

#[test]
fn a_rule_without_constraints_or_a_group_without_rules_allows_all() {
    let f = configure(json!([{ "name": "any", "rules": [{}] }])).unwrap();
    assert_eq!(ask(&f, &request(CREATE_TOPICS, 5, "c", named(&["x"]))), Ok(Some("any".into())));
    let open = configure(json!([{ "name": "l4", "rules": [] }, { "rules": [{ "topic": "t" }] }])).unwrap();
    assert_eq!(ask(&open, &request(PRODUCE, 9, "c", named(&["x"]))), Ok(Some("l4".into())));
}

#[test]
fn bad_rules_are_refused_with_the_field_named() {
    let cases = [
        (json!({ "role": "produce", "apiKey": "fetch" }), "kafka[0].apiKey: role and apiKey cannot both be set"),
        (json!({ "role": "admin" }), "kafka[0].role: unknown role \"admin\"; use produce or consume"),
        (json!({ "apiKey": "launch" }), "kafka[0].apiKey: unknown Kafka API key \"launch\""),
        (json!({ "apiVersion": "v3" }), "kafka[0].apiVersion: \"v3\" is not a version (0-32767)"),
        (json!({ "topic": "bad topic" }), "kafka[0].topic: \"bad topic\" is not a topic name"),
        (json!({ "topic": "t".repeat(256) }), "kafka[0].topic: longer than 255 characters"),
        (json!({ "topics": "t" }), "unknown field `topics`"),
    ];
    for (rule, expected) in cases {
        let error = configure(json!([{ "name": "g", "rules": [rule] }])).unwrap_err().to_string();
        assert!(error.contains(expected), "{error:?} should contain {expected:?}");
    }
}

const DESCRIBE_GROUPS: i16 = 15;
const DESCRIBE_CONFIGS: i16 = 32;
const CREATE_ACLS: i16 = 30;
const DELETE_GROUPS: i16 = 42;
const OFFSET_DELETE: i16 = 47;

/// The host names the topics of every API (config and ACL resources, group
/// offsets); an `apiKey` rule with a topic allows only that topic there.
#[test]
fn an_api_key_rule_with_a_topic_allows_that_topic_only() {
    let f = configure(json!([{ "rules": [
        { "apiKey": "describeconfigs", "topic": "public" },
        { "apiKey": "createacls", "topic": "public" },
        { "apiKey": "offsetdelete", "topic": "public" },
    ]}]))
    .unwrap();
    for key in [DESCRIBE_CONFIGS, CREATE_ACLS, OFFSET_DELETE] {
        assert!(ask(&f, &request(key, 1, "c", named(&["public"]))).is_ok(), "API key {key}");
        let reason = ask(&f, &request(key, 1, "c", named(&["public", "secret"]))).unwrap_err();
        assert!(reason.contains("\"secret\""), "API key {key}: {reason}");
        // a broker config, a prefixed ACL, a topic by id: not a topic the rule names
        assert!(ask(&f, &request(key, 1, "c", Topics::Unknown)).unwrap_err().contains("cannot read"), "{key}");
        // a literal `*` ACL, every topic
        assert!(ask(&f, &request(key, 1, "c", Topics::All)).unwrap_err().contains("every topic"), "{key}");
    }
    let open = configure(json!([{ "rules": [{ "apiKey": "describeconfigs" }] }])).unwrap();
    assert!(ask(&open, &request(DESCRIBE_CONFIGS, 4, "c", Topics::Unknown)).is_ok(), "a rule without topic");
}

/// Cilium has no group rules. Group membership stays topic-less (the consume
/// role needs it under topic rules); group-wide APIs reach every topic of the
/// group and are allowed only by a rule without topic.
#[test]
fn group_names_are_not_matched_and_group_wide_apis_need_a_rule_without_topic() {
    let f = configure(json!([{ "rules": [
        { "role": "consume", "topic": "t" },
        { "apiKey": "describegroups", "topic": "t" },
        { "apiKey": "deletegroups", "topic": "t" },
    ]}]))
    .unwrap();
    assert!(ask(&f, &request(JOIN_GROUP, 9, "c", Topics::None)).is_ok());
    assert!(ask(&f, &request(HEARTBEAT, 4, "c", Topics::None)).is_ok());
    for key in [DESCRIBE_GROUPS, DELETE_GROUPS] {
        let reason = ask(&f, &request(key, 2, "c", Topics::All)).unwrap_err();
        assert!(reason.contains("every topic"), "API key {key}: {reason}");
    }
    let open = configure(json!([{ "rules": [{ "apiKey": "deletegroups" }] }])).unwrap();
    assert!(ask(&open, &request(DELETE_GROUPS, 2, "c", Topics::All)).is_ok());
}
