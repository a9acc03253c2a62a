//! Cilium's HTTP rule semantics, checked against the real built-in
//! `http-policy` component running in the real filter host.

use std::sync::{Arc, OnceLock};

use serde_json::json;
use weir::observe::metrics::Metrics;
use weir::wasm::http::{HeaderOp, RequestDecision};
use weir::wasm::{
    ConfigureError, FailurePolicy, FilterComponent, FilterLimits, FilterRuntime, RuntimeOptions, builtin,
    test_connection,
};

fn runtime() -> &'static (Arc<FilterRuntime>, Arc<FilterComponent>) {
    static RUNTIME: OnceLock<(Arc<FilterRuntime>, Arc<FilterComponent>)> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        let runtime = Arc::new(FilterRuntime::new(Arc::new(Metrics::default()), RuntimeOptions::default()).unwrap());
        let component = runtime.load("http-policy", builtin::find("http-policy").unwrap()).unwrap();
        (runtime, component)
    })
}

struct Policy(Arc<weir::wasm::ConfiguredFilter>);

/// One group of rules (one allowing policy rule).
fn rules(rules: serde_json::Value) -> Policy {
    groups(json!([{ "name": "g", "rules": rules }]))
}

fn groups(groups: serde_json::Value) -> Policy {
    try_config(json!({ "groups": groups })).unwrap_or_else(|e| panic!("configure failed: {e}"))
}

fn try_config(config: serde_json::Value) -> Result<Policy, String> {
    try_config_typed(config).map_err(|e| e.to_string())
}

fn try_config_typed(config: serde_json::Value) -> Result<Policy, ConfigureError> {
    let (runtime, component) = runtime();
    runtime.configure(component, config.to_string(), FilterLimits::default(), FailurePolicy::Closed).map(Policy)
}

struct Req {
    method: &'static str,
    path: &'static str,
    authority: &'static str,
    headers: Vec<(&'static str, &'static str)>,
}

fn get(path: &'static str) -> Req {
    Req { method: "GET", path, authority: "example.com", headers: vec![] }
}

impl Req {
    fn method(mut self, m: &'static str) -> Self {
        self.method = m;
        self
    }
    fn host(mut self, h: &'static str) -> Self {
        self.authority = h;
        self
    }
    fn header(mut self, n: &'static str, v: &'static str) -> Self {
        self.headers.push((n, v));
        self
    }
}

impl Policy {
    fn decide(&self, req: Req) -> RequestDecision {
        let request = weir::wasm::test_request(req.method, req.path, req.authority, &req.headers);
        self.0.on_request(test_connection(), &request).expect("filter call")
    }

    fn allows(&self, req: Req) -> bool {
        matches!(self.decide(req), RequestDecision::Allow(_))
    }

    fn edits(&self, req: Req) -> Vec<HeaderOp> {
        match self.decide(req) {
            RequestDecision::Allow(a) => a.edits,
            RequestDecision::Deny(d) => panic!("denied: {}", d.reason),
        }
    }
}

#[test]
fn method_is_a_whole_value_regex() {
    let p = rules(json!([{ "method": "GET|HEAD" }]));
    assert!(p.allows(get("/")));
    assert!(p.allows(get("/").method("HEAD")));
    assert!(!p.allows(get("/").method("POST")));
    assert!(!p.allows(get("/").method("GETX")), "anchored at the end");
    assert!(!rules(json!([{ "method": "get" }])).allows(get("/")), "case-sensitive");
}

#[test]
fn path_is_a_whole_value_regex() {
    let p = rules(json!([{ "path": "/status" }]));
    assert!(p.allows(get("/status")));
    assert!(!p.allows(get("/status/x")), "/status does not allow /status/x");
    assert!(!p.allows(get("/statusx")));
    assert!(!p.allows(get("/a/status")), "anchored at the start");

    let prefix = rules(json!([{ "path": "/public/.*" }]));
    assert!(prefix.allows(get("/public/")));
    assert!(prefix.allows(get("/public/a/b")));
    assert!(!prefix.allows(get("/public")));
    assert!(!prefix.allows(get("/publicity")));

    let regex = rules(json!([{ "path": "/v[0-9]+/items/[[:digit:]]+" }]));
    assert!(regex.allows(get("/v2/items/42")));
    assert!(!regex.allows(get("/v2/items/x")));
}

/// A CONNECT as weir hands it over: the request-target is its path and its host.
fn connect(target: &'static str) -> Req {
    Req { method: "CONNECT", path: target, authority: target, headers: vec![] }
}

#[test]
fn only_a_rule_whose_method_is_connect_allows_a_connect() {
    let named = rules(json!([{ "method": "CONNECT", "host": "api\\.example\\.com:443" }]));
    assert!(named.allows(connect("api.example.com:443")));
    assert!(!named.allows(connect("api.example.com:22")), "another port");
    assert!(!named.allows(connect("evil.example:443")));
    // rules written for requests never open a tunnel
    let open_method = rules(json!([{ "host": "api\\.example\\.com:443" }, { "path": ".*" }, {}]));
    assert!(open_method.allows(get("/x").host("api.example.com:443")), "plain requests still pass");
    assert!(!open_method.allows(connect("api.example.com:443")), "no method named: no tunnel");
    let any_method = rules(json!([{ "method": ".*" }, { "method": "GET|CONNECT" }]));
    assert!(any_method.allows(get("/x")));
    assert!(!any_method.allows(connect("api.example.com:443")), "a pattern that happens to match is not CONNECT");
    // a peer allowed all HTTP (no rules in its group) gets no tunnel either
    let all_http = groups(json!([{ "name": "all", "rules": [] }, { "name": "g", "rules": [{ "method": "GET" }] }]));
    assert!(all_http.allows(get("/anything")));
    assert!(!all_http.allows(connect("api.example.com:443")));
}

#[test]
fn path_includes_the_query_string_as_in_cilium() {
    assert!(!rules(json!([{ "path": "/search" }])).allows(get("/search?q=1")));
    let with_query = rules(json!([{ "path": "/search(\\?.*)?" }]));
    assert!(with_query.allows(get("/search?q=1")));
    assert!(with_query.allows(get("/search")));
}

#[test]
fn host_is_a_whole_value_regex_over_the_authority() {
    let p = rules(json!([{ "host": "example\\.com" }]));
    assert!(p.allows(get("/")));
    assert!(!p.allows(get("/").host("example.com:8080")), "the port is part of the authority");
    assert!(!p.allows(get("/").host("api.example.com")));
    assert!(rules(json!([{ "host": ".*\\.example\\.com(:[0-9]+)?" }])).allows(get("/").host("api.example.com:8443")));
}

/// Host names are case-insensitive (RFC 9110 §4.2.3); the proxy hands the
/// filter the authority lower-cased, without a trailing dot or default port.
#[test]
fn host_rules_ignore_case() {
    for host in
        ["api.example.com", "Api\\.Example\\.COM", "API.EXAMPLE.COM", "[a-z]+\\.EXAMPLE\\.com", "API.example.com.*"]
    {
        let p = rules(json!([{ "host": host }]));
        assert!(p.allows(get("/").host("api.example.com")), "{host}");
        assert!(p.allows(get("/").host("API.Example.Com")), "{host}");
        assert!(!p.allows(get("/").host("api.example.org")), "{host}");
    }
    assert!(!rules(json!([{ "path": "/A" }])).allows(get("/a")), "paths still compare exactly");
}

#[test]
fn headers_presence_and_exact_value() {
    let present = rules(json!([{ "headers": ["X-Token"] }]));
    assert!(present.allows(get("/").header("x-token", "anything")));
    assert!(present.allows(get("/").header("X-TOKEN", "")), "names compare case-insensitively");
    assert!(!present.allows(get("/")));

    let exact = rules(json!([{ "headers": ["X-Token: abc"] }]));
    assert!(exact.allows(get("/").header("x-token", "abc")));
    assert!(!exact.allows(get("/").header("x-token", "abcd")));
    assert!(!exact.allows(get("/").header("x-token", "ABC")), "values compare exactly");
    assert!(!exact.allows(get("/")));
    // repeated headers are matched joined with ',' as Envoy does
    let joined = rules(json!([{ "headers": ["X-Multi: a,b"] }]));
    assert!(joined.allows(get("/").header("x-multi", "a").header("x-multi", "b")));

    // Cilium splits at the first space: the value may contain spaces
    let spaced = rules(json!([{ "headers": ["User-Agent: curl/8 (test)"] }]));
    assert!(spaced.allows(get("/").header("user-agent", "curl/8 (test)")));
    // and all listed headers must match
    let both = rules(json!([{ "headers": ["A", "B: 1"] }]));
    assert!(both.allows(get("/").header("a", "x").header("b", "1")));
    assert!(!both.allows(get("/").header("a", "x")));
}

#[test]
fn all_fields_of_a_rule_must_match() {
    let p = rules(json!([{ "method": "POST", "path": "/api/orders", "headers": ["Content-Type: application/json"] }]));
    assert!(p.allows(get("/api/orders").method("POST").header("content-type", "application/json")));
    assert!(!p.allows(get("/api/orders").header("content-type", "application/json")));
    assert!(!p.allows(get("/api/orders").method("POST")));
}

#[test]
fn rules_are_ored_and_empty_lists_allow_all() {
    let p = rules(json!([{ "method": "GET", "path": "/a" }, { "method": "POST", "path": "/b" }]));
    assert!(p.allows(get("/a")));
    assert!(p.allows(get("/b").method("POST")));
    assert!(!p.allows(get("/b")));
    assert!(rules(json!([])).allows(get("/anything").method("DELETE")), "an empty rule list allows all");
    assert!(rules(json!([{}])).allows(get("/anything")), "http: [{{}}] allows all");
    assert!(groups(json!([])).allows(get("/x")), "no groups: nothing restricts");
}

#[test]
fn groups_are_ored_and_report_what_matched() {
    let p = groups(json!([
        { "name": "policy-a", "rules": [{ "path": "/a" }] },
        { "name": "policy-b", "rules": [{ "path": "/b" }] },
    ]));
    match p.decide(get("/b")) {
        RequestDecision::Allow(a) => assert_eq!(a.matched.as_deref(), Some("policy-b")),
        RequestDecision::Deny(d) => panic!("{}", d.reason),
    }
    match p.decide(get("/c")) {
        RequestDecision::Deny(d) => {
            assert_eq!(d.reason, "no HTTP rule matched");
            assert!(d.reply.is_none(), "the host writes the standard 403");
        }
        RequestDecision::Allow(_) => panic!("allowed /c"),
    }
}

#[test]
fn header_matches_without_action_are_plain_matchers() {
    let value = rules(json!([{ "headerMatches": [{ "name": "X-Env", "value": "prod" }] }]));
    assert!(value.allows(get("/").header("x-env", "prod")));
    assert!(!value.allows(get("/").header("x-env", "dev")));
    let presence = rules(json!([{ "headerMatches": [{ "name": "X-Env" }] }]));
    assert!(presence.allows(get("/").header("x-env", "dev")));
    assert!(!presence.allows(get("/")));
}

#[test]
fn header_match_mismatch_actions() {
    let log = rules(json!([{ "headerMatches": [{ "name": "x-env", "value": "prod", "mismatch": "LOG" }] }]));
    assert!(log.edits(get("/").header("x-env", "dev")).is_empty(), "LOG allows and changes nothing");

    let add = rules(json!([{ "headerMatches": [{ "name": "x-env", "value": "prod", "mismatch": "ADD" }] }]));
    let edits = add.edits(get("/").header("x-env", "dev"));
    assert!(matches!(&edits[..], [HeaderOp::Append(h)] if h.name == "x-env" && h.value == "prod"), "{edits:?}");
    assert!(add.edits(get("/").header("x-env", "prod")).is_empty(), "a match needs no edit");

    let delete = rules(json!([{ "headerMatches": [{ "name": "x-env", "value": "prod", "mismatch": "DELETE" }] }]));
    let edits = delete.edits(get("/").header("x-env", "dev"));
    assert!(matches!(&edits[..], [HeaderOp::Remove(n)] if n == "x-env"), "{edits:?}");
    assert!(delete.edits(get("/")).is_empty(), "nothing to delete");

    let replace = rules(json!([{ "headerMatches": [{ "name": "x-env", "value": "prod", "mismatch": "REPLACE" }] }]));
    for req in [get("/").header("x-env", "dev"), get("/")] {
        let edits = replace.edits(req);
        assert!(matches!(&edits[..], [HeaderOp::Set(h)] if h.name == "x-env" && h.value == "prod"), "{edits:?}");
    }
}

#[test]
fn header_actions_run_for_every_matching_rule() {
    // With header actions, evaluation does not stop at the first match:
    // both rules match GET /x, and both add their header.
    let p = rules(json!([
        { "path": "/x", "headerMatches": [{ "name": "x-one", "value": "1", "mismatch": "ADD" }] },
        { "method": "GET", "headerMatches": [{ "name": "x-two", "value": "2", "mismatch": "ADD" }] },
    ]));
    let edits = p.edits(get("/x"));
    assert_eq!(edits.len(), 2, "{edits:?}");
    // a later rule sees an earlier rule's edit: x-one is now present
    let chained = rules(json!([
        { "headerMatches": [{ "name": "x-one", "value": "1", "mismatch": "ADD" }] },
        { "headers": ["x-one: 1"], "headerMatches": [{ "name": "x-seen", "value": "yes", "mismatch": "ADD" }] },
    ]));
    assert_eq!(chained.edits(get("/")).len(), 2);
}

#[test]
fn invalid_rules_are_rejected_with_the_field() {
    let bad_regex =
        try_config(json!({ "groups": [{ "name": "p spec.ingress[0].toPorts[0]", "rules": [{ "path": "/a(" }] }] }));
    let message = bad_regex.err().expect("rejected");
    assert!(message.contains("http[0].path"), "{message}");
    assert!(message.contains("invalid regular expression"), "{message}");

    let bad_header = try_config(json!({ "groups": [{ "rules": [{}, { "headers": ["X(bad): 1"] }] }] }));
    assert!(bad_header.err().unwrap().contains("http[1].headers[0]"));

    let unknown = try_config(json!({ "groups": [{ "rules": [{ "methd": "GET" }] }] }));
    assert!(unknown.err().unwrap().contains("unknown field"));

    let add_without_value =
        try_config(json!({ "groups": [{ "rules": [{ "headerMatches": [{ "name": "x", "mismatch": "ADD" }] }] }] }));
    assert!(add_without_value.is_err());
}

/// The error comes back typed: the group, the field inside its rules and the
/// message, so weir points at the policy field without reading the text.
#[test]
fn rule_errors_are_typed() {
    let rejected = try_config_typed(json!({ "groups": [
        { "name": "ok", "rules": [{ "path": "/a" }] },
        { "name": "p spec.ingress[0].toPorts[0]", "rules": [{}, { "headerMatches": [{ "name": ":path" }] }] },
    ] }));
    let Err(ConfigureError::Refused(refusal)) = rejected else { panic!("refused by the filter: {:?}", rejected.err()) };
    assert_eq!(refusal.group.as_deref(), Some("p spec.ingress[0].toPorts[0]"));
    assert_eq!(refusal.field.as_deref(), Some("http[1].headerMatches[0].name"));
    assert_eq!(refusal.message, "pseudo-header \":path\" cannot be matched or edited here");

    let Err(ConfigureError::Refused(unparsed)) = try_config_typed(json!({ "groups": 3 })) else { panic!() };
    assert_eq!((unparsed.group, unparsed.field), (None, None), "the whole configuration is wrong");
    assert!(unparsed.message.starts_with("http-policy config: invalid type"), "{}", unparsed.message);
}
