//! Cilium's Cassandra rule semantics (`query_action`, `query_table`),
//! checked against the real built-in `cassandra-policy` component running in
//! the real filter host.

use std::sync::{Arc, OnceLock};

use serde_json::json;
use weir::observe::metrics::Metrics;
use weir::protocol::Protocol;
use weir::wasm::cassandra::{Request, RequestDecision, Statement};
use weir::wasm::{
    ConfigureError, ConfiguredFilter, FailurePolicy, FilterComponent, FilterLimits, FilterRuntime, RuntimeOptions,
    builtin, test_connection,
};

fn runtime() -> &'static (Arc<FilterRuntime>, Arc<FilterComponent>) {
    static RUNTIME: OnceLock<(Arc<FilterRuntime>, Arc<FilterComponent>)> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        let runtime = Arc::new(FilterRuntime::new(Arc::new(Metrics::default()), RuntimeOptions::default()).unwrap());
        let component =
            runtime.load(builtin::CASSANDRA_POLICY, builtin::find(builtin::CASSANDRA_POLICY).unwrap()).unwrap();
        (runtime, component)
    })
}

fn configure(groups: serde_json::Value) -> Result<Arc<ConfiguredFilter>, ConfigureError> {
    let (runtime, component) = runtime();
    let config = json!({ "groups": groups }).to_string();
    runtime.configure(component, config, FilterLimits::default(), FailurePolicy::Closed)
}

fn request(opcode: &str, statements: &[(&str, Option<&str>)]) -> Request {
    Request {
        version: 4,
        opcode: opcode.into(),
        stream_id: 1,
        statements: statements
            .iter()
            .map(|(action, table)| Statement {
                action: action.to_string(),
                table: table.map(str::to_string),
                query: String::new(),
            })
            .collect(),
        keyspace: None,
    }
}

fn query(action: &str, table: Option<&str>) -> Request {
    request("query", &[(action, table)])
}

/// `Ok(matched)` or `Err(reason)`.
fn ask(filter: &ConfiguredFilter, request: &Request) -> Result<Option<String>, String> {
    match filter.on_cassandra_request(test_connection(), request).expect("the filter runs") {
        RequestDecision::Allow(a) => Ok(a.matched),
        RequestDecision::Deny(d) => Err(d.reason),
    }
}

fn rules(rules: serde_json::Value) -> Arc<ConfiguredFilter> {
    configure(json!([{ "name": "p", "rules": rules }])).unwrap()
}

#[test]
fn the_builtin_filter_implements_the_cassandra_world() {
    assert_eq!(runtime().1.world(), Protocol::Cassandra);
}

#[test]
fn action_is_exact_and_table_is_a_regex_found_anywhere_as_in_cilium() {
    let f = rules(json!([
        { "query_action": "select", "query_table": "^app\\.orders$" },
        { "query_action": "insert", "query_table": "audit" },
    ]));
    assert_eq!(ask(&f, &query("select", Some("app.orders"))), Ok(Some("p".into())));
    assert_eq!(
        ask(&f, &query("select", Some("app.orders_old"))),
        Err("select on app.orders_old is not allowed".into())
    );
    assert_eq!(ask(&f, &query("delete", Some("app.orders"))), Err("delete on app.orders is not allowed".into()));
    // unanchored: Go's MatchString finds it anywhere
    assert!(ask(&f, &query("insert", Some("ops.audit_2026"))).is_ok());
    // only an action rule
    let any_table = rules(json!([{ "query_action": "select" }]));
    assert!(ask(&any_table, &query("select", Some("x.y"))).is_ok());
    assert!(ask(&any_table, &query("update", Some("x.y"))).is_err());
}

#[test]
fn a_table_rule_never_matches_a_statement_without_a_table() {
    // Cilium lets it pass; weir does not: this rule is about tables in ks
    let f = rules(json!([{ "query_table": "^ks\\." }]));
    assert!(ask(&f, &query("select", Some("ks.t"))).is_ok());
    assert_eq!(ask(&f, &query("create-role", None)), Err("create-role is not allowed".into()));
}

#[test]
fn a_batch_is_allowed_whole_or_refused_whole() {
    let f = rules(json!([{ "query_action": "insert", "query_table": "^app\\." }]));
    assert!(ask(&f, &request("batch", &[("insert", Some("app.a")), ("insert", Some("app.b"))])).is_ok());
    assert_eq!(
        ask(&f, &request("batch", &[("insert", Some("app.a")), ("delete", Some("app.b"))])),
        Err("delete on app.b is not allowed".into())
    );
}

#[test]
fn handshake_and_use_pass_as_in_cilium_and_rule_free_ports_allow_everything() {
    let f = rules(json!([{ "query_action": "select", "query_table": "^app\\." }]));
    for opcode in ["startup", "options", "register", "auth-response"] {
        assert!(ask(&f, &request(opcode, &[])).is_ok(), "{opcode}");
    }
    assert!(ask(&f, &query("use", Some("anything"))).is_ok());
    // an unclassified or unparsable statement needs a rule-free port
    assert!(ask(&f, &query("invalid (an unterminated ' quote)", None)).is_err());
    let open = configure(json!([{ "name": "l4", "rules": [] }, { "rules": [{ "query_action": "select" }] }])).unwrap();
    assert_eq!(ask(&open, &query("drop-keyspace", Some("app"))), Ok(Some("l4".into())));
    let empty_rule = rules(json!([{}]));
    assert!(ask(&empty_rule, &query("describe", None)).is_ok());
}

#[test]
fn bad_rules_are_refused_with_the_field_named() {
    let cases = [
        (json!({ "query_action": "explode" }), "l7[0].query_action: unknown action \"explode\""),
        (
            json!({ "query_action": "create-role", "query_table": "x" }),
            "l7[0].query_table: query_action create-role names no table",
        ),
        (json!({ "query_table": "(" }), "l7[0].query_table: invalid regular expression"),
        (json!({ "table": "x" }), "l7[0].table: unknown field; cassandra rules have query_action and query_table"),
    ];
    for (rule, expected) in cases {
        let error = configure(json!([{ "name": "g", "rules": [rule] }])).unwrap_err().to_string();
        assert!(error.contains(expected), "{error:?} should contain {expected:?}");
    }
}
