//! Filter chains are built once per model, with the rules traffic uses, and
//! their errors point at the policy field.

use std::net::SocketAddr;
use std::sync::Arc;

use super::*;
use crate::context::Target;
use crate::observe::metrics::{FilterLabels, Metrics};
use crate::wasm::builtin;

const NODE: &str = "endpoints:\n  \
    - {name: frontend, address: 127.0.0.5, labels: {app: frontend, tier: edge}}\n  \
    - {name: frontend-2, address: 127.0.0.6, labels: {app: frontend}}\n  \
    - {name: admin, address: 127.0.0.7, labels: {app: admin}}\n\
    listeners:\n  \
    - {name: web, bind: '127.0.0.1:1', upstream: '127.0.0.1:2', destination: {labels: {app: web}, port: 80}}\n  \
    - {name: cache, bind: '127.0.0.1:3', upstream: '127.0.0.1:4', protocol: memcached, \
       destination: {labels: {app: web}, port: 11211}}\n";

fn policy(ingress: &str) -> String {
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: web, namespace: default}}\nspec:\n  \
         endpointSelector: {{matchLabels: {{app: web}}}}\n  ingress: {ingress}\n"
    )
}

struct Built {
    metrics: Arc<Metrics>,
    model: Result<PolicyModel, Vec<PolicyError>>,
}

fn build(policy: &str) -> Built {
    let metrics = Arc::new(Metrics::default());
    Built { metrics: metrics.clone(), model: PolicyModel::from_texts(NODE, policy, metrics) }
}

impl Built {
    fn instantiations(&self, filter: &str) -> u64 {
        self.metrics.filter_instantiations.get_or_create(&FilterLabels { filter: filter.into() }).get()
    }
}

fn chain(model: &PolicyModel, listener: &str, peer: &str) -> Arc<ConnectionVerdict> {
    let peer: SocketAddr = format!("{peer}:40000").parse().unwrap();
    let resolved = model.resolve(&Target::Listener(listener.into()), peer, Protocol::Http).unwrap();
    model.connection_verdict_from(&resolved.listener, resolved.source, peer, L4Protocol::Tcp)
}

fn links(verdict: &ConnectionVerdict) -> &[ChainLink] {
    match verdict {
        ConnectionVerdict::Forward(chain) => &chain.links,
        ConnectionVerdict::Drop { reason } => panic!("dropped: {reason}"),
    }
}

#[test]
fn a_rule_alone_uses_the_filter_validation_configured() {
    let built = build(&policy(
        "[{fromEndpoints: [{matchLabels: {app: frontend}}], toPorts: [{ports: [{port: '80'}], \
         rules: {http: [{method: GET}]}}]}]",
    ));
    let model = built.model.as_ref().unwrap();
    // validation made one instance to check the rules, and kept its configuration
    assert_eq!(built.instantiations(builtin::HTTP_POLICY), 1);
    assert_eq!(model.configured_filters(), 1);

    let first = chain(model, "web", "127.0.0.5");
    let second = chain(model, "web", "127.0.0.6");
    let (a, b) = (links(&first), links(&second));
    assert_eq!((a.len(), b.len()), (1, 1));
    assert!(Arc::ptr_eq(&a[0].filter, &b[0].filter), "both senders share the one configuration");
    assert_eq!(model.configured_filters(), 1, "no configuration was made for traffic");
    assert_eq!(built.instantiations(builtin::HTTP_POLICY), 1, "nor validated again");
}

#[test]
fn two_rules_allowing_one_sender_are_configured_together_once() {
    let built = build(&policy(
        "[{fromEndpoints: [{matchLabels: {app: frontend}}], toPorts: [{ports: [{port: '80'}], \
         rules: {http: [{method: GET}]}}]}, \
         {fromEndpoints: [{matchLabels: {tier: edge}}], toPorts: [{ports: [{port: '80'}], \
         rules: {http: [{method: POST}]}}]}]",
    ));
    let model = built.model.as_ref().unwrap();
    assert_eq!(model.configured_filters(), 2, "each rule's own, from validation");
    // 127.0.0.5 is chosen by both rules: their groups in one configuration
    let both = chain(model, "web", "127.0.0.5");
    assert_eq!(model.configured_filters(), 3);
    let again = chain(model, "web", "127.0.0.5");
    assert!(Arc::ptr_eq(&links(&both)[0].filter, &links(&again)[0].filter));
    // 127.0.0.6 only by the first: validation's configuration, none new
    let one = chain(model, "web", "127.0.0.6");
    assert_eq!(model.configured_filters(), 3);
    assert!(!Arc::ptr_eq(&links(&both)[0].filter, &links(&one)[0].filter));
    assert_eq!(built.instantiations(builtin::HTTP_POLICY), 3);
}

#[test]
fn a_rule_the_filter_refuses_is_reported_at_its_field() {
    let http = build(&policy(
        "[{toPorts: [{ports: [{port: '80'}], rules: {http: [{}, {headerMatches: [{name: ':path'}]}]}}]}]",
    ));
    let errors = http.model.err().expect("refused");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].field.as_deref(), Some("spec.ingress[0].toPorts[0].rules.http[1].headerMatches[0].name"));
    assert_eq!(errors[0].message, "pseudo-header \":path\" cannot be matched or edited here");

    let memcached = build(&policy(
        "[{toPorts: [{ports: [{port: '11211'}], rules: {l7proto: memcache, l7: [{command: get}, {command: launch}]}}]}]",
    ));
    let errors = memcached.model.err().expect("refused");
    assert_eq!(errors[0].field.as_deref(), Some("spec.ingress[0].toPorts[0].rules.l7[1].command"), "{errors:?}");
    assert!(errors[0].message.starts_with("unknown command \"launch\""), "{errors:?}");
}

const AUDITED_WEB: &str = "apiVersion: policy.weir.dev/v1alpha1\nkind: WeirNetworkPolicy\n\
    metadata: {name: web-audit, namespace: default}\nspec:\n  endpointSelector: {matchLabels: {app: web}}\n  \
    enforcementMode: audit\n  ingress: [{fromEndpoints: [{matchLabels: {app: frontend}}], \
    toPorts: [{ports: [{port: '80'}], rules: {http: [{method: GET, path: '/public/.*'}]}}]}]\n";

fn audit(verdict: &ConnectionVerdict) -> Option<&Audit> {
    match verdict {
        ConnectionVerdict::Forward(chain) => chain.audit.as_ref(),
        ConnectionVerdict::Drop { reason } => panic!("dropped: {reason}"),
    }
}

#[test]
fn an_audited_policy_changes_no_verdict_and_says_what_it_would_do() {
    let built = build(AUDITED_WEB);
    let model = built.model.as_ref().unwrap();
    assert!(model.enforced().rules.is_empty() && model.policies.rules.len() == 1);

    // the frontend: let through unjudged, and the audited rules' filter beside
    let frontend = chain(model, "web", "127.0.0.5");
    assert!(links(&frontend).is_empty(), "nothing is enforced");
    let would = audit(&frontend).expect("the audited rules judge the frontend's requests");
    assert_eq!(would.policies, ["default/web-audit"]);
    match &would.would {
        WouldBe::Judge(links) => {
            assert_eq!(links.len(), 1);
            assert_eq!(&*links[0].judges, ["default/web-audit spec.ingress[0].toPorts[0]".to_string()]);
        }
        WouldBe::Drop(reason) => panic!("{reason}"),
    }

    // the admin: no audited rule allows it, so its default deny would drop it
    let admin = chain(model, "web", "127.0.0.7");
    assert!(links(&admin).is_empty());
    match &audit(&admin).expect("audited").would {
        WouldBe::Drop(reason) => {
            assert!(
                reason.contains("no ingress rule allows") && reason.contains("default deny of default/web-audit"),
                "{reason}"
            )
        }
        WouldBe::Judge(_) => panic!("the admin's connection would be dropped"),
    }
}

#[test]
fn an_enforced_filter_is_not_asked_again_for_the_audit() {
    // enforced: the web's ingress HTTP rules; audited: the frontend's egress
    // to the web, which adds no filter. The combined chain is the enforced
    // one: nothing more to ask (a rate limiter asked twice counts twice)
    let enforced = AUDITED_WEB
        .replace("name: web-audit", "name: web")
        .replace("  enforcementMode: audit\n", "")
        .replace("policy.weir.dev/v1alpha1\nkind: WeirNetworkPolicy", "cilium.io/v2\nkind: CiliumNetworkPolicy");
    let egress = "apiVersion: policy.weir.dev/v1alpha1\nkind: WeirNetworkPolicy\n\
        metadata: {name: frontend-audit, namespace: default}\nspec:\n  endpointSelector: {matchLabels: {app: frontend}}\n  \
        enforcementMode: audit\n  egress: [{toEndpoints: [{matchLabels: {app: web}}]}]\n";
    let built = build(&format!("{enforced}---\n{egress}"));
    let model = built.model.as_ref().unwrap();
    let frontend = chain(model, "web", "127.0.0.5");
    assert_eq!(links(&frontend).len(), 1);
    assert!(audit(&frontend).is_none(), "{:?}", audit(&frontend));
}

#[test]
fn wasm_rules_alone_speak_their_filters_protocol() {
    // a DNS filter in `wasm` rules alone, on a DNS listener: a DNS port (it
    // used to be taken for HTTP and refused)
    let node = "endpoints:\n  - {name: frontend, address: 127.0.0.5, labels: {app: frontend}}\n\
        listeners:\n  - {name: dns, protocol: dns, bind: '127.0.0.1:5', upstream: '127.0.0.1:6', \
        destination: {labels: {k8s-app: kube-dns}, port: 53}}\n\
        filters:\n  - {name: blocklist, builtin: dns-policy}\n";
    let policy = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: dns}\nspec:\n  \
        endpointSelector: {matchLabels: {app: frontend}}\n  egress:\n    - toEndpoints: [{matchLabels: {k8s-app: kube-dns}}]\n      \
        toPorts: [{ports: [{port: '53', protocol: ANY}], rules: {wasm: [{name: blocklist, \
        config: {groups: [{name: only, rules: [{matchName: allowed.example}]}]}}]}}]\n";
    let model = PolicyModel::from_texts(node, policy, Arc::new(Metrics::default()))
        .unwrap_or_else(|e| panic!("refused: {e:?}"));
    // the DNS port's own policy filter is loaded when the model is built,
    // not when the first query comes (and HTTP's is not loaded at all)
    let loaded: Vec<&str> = model.builtins.lock().unwrap().keys().copied().collect();
    assert_eq!(loaded, [builtin::DNS_POLICY]);
    let peer: SocketAddr = "127.0.0.5:40000".parse().unwrap();
    let resolved = model.resolve(&Target::Listener("dns".into()), peer, Protocol::Dns).unwrap();
    let verdict = model.connection_verdict_from(&resolved.listener, resolved.source, peer, L4Protocol::Udp);
    let names: Vec<&str> = links(&verdict).iter().map(|l| &*l.filter.name).collect();
    assert!(names.contains(&"blocklist"), "{names:?}");
}

#[test]
fn only_the_built_in_filters_the_rules_use_are_loaded() {
    let loaded = |ingress: &str| -> Vec<&'static str> {
        let built = build(&policy(ingress));
        let model = built.model.unwrap();
        let builtins = model.builtins.lock().unwrap();
        assert!(builtins.values().all(Result::is_ok));
        let mut names: Vec<_> = builtins.keys().copied().collect();
        names.sort();
        names
    };
    assert_eq!(loaded("[{toPorts: [{ports: [{port: '80'}]}]}]"), Vec::<&str>::new());
    assert_eq!(
        loaded("[{toPorts: [{ports: [{port: '80'}], rules: {http: [{method: GET}]}}]}]"),
        [builtin::HTTP_POLICY]
    );
    assert_eq!(
        loaded(
            "[{toPorts: [{ports: [{port: '11211'}], rules: {l7proto: memcache, l7: [{command: get}]}}]}, \
              {toPorts: [{ports: [{port: '9000'}], rules: {l7proto: r2d2, l7: [{cmd: READ}]}}]}]"
        ),
        [builtin::MEMCACHED_POLICY, builtin::R2D2]
    );
    // a rule that names no filter of its own still gets its protocol's
    assert_eq!(
        loaded("[{toPorts: [{ports: [{port: '9092'}], rules: {kafka: [{topic: orders}]}}]}]"),
        [builtin::KAFKA_POLICY]
    );
}
