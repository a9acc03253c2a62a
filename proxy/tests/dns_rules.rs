//! Cilium's DNS rule semantics, checked against the real built-in
//! `dns-policy` component running in the real filter host.

use std::sync::{Arc, OnceLock};

use serde_json::json;
use weir::observe::metrics::Metrics;
use weir::protocol::Protocol;
use weir::wasm::dns::{Query, QueryDecision, Question, Transport};
use weir::wasm::{
    FailurePolicy, FilterComponent, FilterLimits, FilterRuntime, RuntimeOptions, builtin, test_connection,
};

fn runtime() -> &'static (Arc<FilterRuntime>, Arc<FilterComponent>) {
    static RUNTIME: OnceLock<(Arc<FilterRuntime>, Arc<FilterComponent>)> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        let runtime = Arc::new(FilterRuntime::new(Arc::new(Metrics::default()), RuntimeOptions::default()).unwrap());
        let component = runtime.load(builtin::DNS_POLICY, builtin::find(builtin::DNS_POLICY).unwrap()).unwrap();
        (runtime, component)
    })
}

fn configure(groups: serde_json::Value) -> Result<Arc<weir::wasm::ConfiguredFilter>, String> {
    let (runtime, component) = runtime();
    let config = json!({ "groups": groups }).to_string();
    runtime.configure(component, config, FilterLimits::default(), FailurePolicy::Closed).map_err(|e| e.to_string())
}

/// `Ok(matched)` or `Err(reason)`.
fn ask(filter: &weir::wasm::ConfiguredFilter, names: &[&str]) -> Result<Option<String>, String> {
    let query = Query {
        id: 7,
        questions: names.iter().map(|n| Question { name: n.to_string(), qtype: 1, qclass: 1 }).collect(),
        transport: Transport::Udp,
    };
    match filter.on_query(test_connection(), &query).expect("the filter runs") {
        QueryDecision::Allow(a) => Ok(a.matched),
        QueryDecision::Deny(d) => {
            assert!(d.rcode.is_none(), "the built-in filter leaves the refusal code to the listener");
            Err(d.reason)
        }
    }
}

#[test]
fn the_builtin_filter_implements_the_dns_world() {
    assert_eq!(runtime().1.world(), Protocol::Dns);
    let http = runtime().0.load("http-policy", builtin::find("http-policy").unwrap()).unwrap();
    assert_eq!(http.world(), Protocol::Http);
}

#[test]
fn any_group_that_allows_every_question_wins() {
    let f = configure(json!([
        { "name": "a", "rules": [{ "matchPattern": "*.example.com" }] },
        { "name": "b", "rules": [{ "matchName": "api.other.org" }] },
    ]))
    .unwrap();
    assert_eq!(ask(&f, &["www.example.com"]), Ok(Some("a".into())));
    assert_eq!(ask(&f, &["api.other.org"]), Ok(Some("b".into())));
    assert_eq!(ask(&f, &["evil.org"]), Err("no DNS rule allows evil.org".into()));
    assert_eq!(ask(&f, &["a.b.example.com"]), Err("no DNS rule allows a.b.example.com".into()));
    // two questions, each allowed by a different group: no one group allows both
    assert_eq!(ask(&f, &["www.example.com", "api.other.org"]), Err("no single DNS rule allows every question".into()));
    assert!(ask(&f, &["www.example.com", "evil.org"]).is_err());
}

#[test]
fn double_star_and_lone_star() {
    let f = configure(json!([{ "name": "deep", "rules": [{ "matchPattern": "**.corp.example" }] }])).unwrap();
    assert!(ask(&f, &["a.b.c.corp.example"]).is_ok());
    assert!(ask(&f, &["corp.example"]).is_err(), "not the suffix itself");
    let all = configure(json!([{ "name": "all", "rules": [{ "matchPattern": "*" }] }])).unwrap();
    assert!(ask(&all, &["anything.at.all"]).is_ok());
}

#[test]
fn a_group_without_rules_allows_all_and_no_group_allows_nothing() {
    let l4 = configure(json!([{ "name": "l4", "rules": [] }])).unwrap();
    assert_eq!(ask(&l4, &["anything.at.all"]), Ok(Some("l4".into())));
    let none = configure(json!([])).unwrap();
    assert!(ask(&none, &["x.y"]).is_err());
}

#[test]
fn bad_rules_are_refused_with_the_field() {
    let e = configure(json!([{ "name": "p", "rules": [{ "matchPattern": "a b" }] }])).unwrap_err();
    assert!(e.starts_with("p: dns[0].matchPattern:"), "{e}");
    let e = configure(json!([{ "name": "p", "rules": [{}] }])).unwrap_err();
    assert!(e.contains("give matchName or matchPattern"), "{e}");
    assert!(configure(json!([{ "rules": [{ "matchNames": "x" }] }])).is_err());
}
