//! The source seam is real: a second source, filled in memory, adds
//! endpoints and policies to what the file source says, and the model the
//! controller builds enforces them.

use std::net::SocketAddr;
use std::sync::Arc;

use super::*;
use crate::config::EndpointConfig;
use crate::context::Target;
use crate::model::{ConnectionVerdict, PolicyModel};
use crate::observe::metrics::Metrics;
use crate::policy::L4Protocol;
use crate::policy::document::parse_file;
use crate::wasm::{FilterRuntime, RuntimeOptions};

const NODE: &str = "listeners:\n  \
    - {name: web, bind: '127.0.0.1:1', upstream: '127.0.0.1:2', destination: {labels: {app: web}, port: 80}}\n";

fn web_from(app: &str) -> Contribution {
    let policy = format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: web}}\nspec:\n  \
         endpointSelector: {{matchLabels: {{app: web}}}}\n  \
         ingress: [{{fromEndpoints: [{{matchLabels: {{app: {app}}}}}]}}]\n"
    );
    let (documents, errors) = parse_file("memory/web", &policy);
    assert!(errors.is_empty(), "{errors:?}");
    let frontend: EndpointConfig =
        serde_yaml::from_str("{name: frontend, address: 127.0.0.5, labels: {app: frontend}}").unwrap();
    Contribution { documents, endpoints: vec![frontend], ..Default::default() }
}

struct Setup {
    _dir: tempfile::TempDir,
    memory: Arc<MemorySource>,
    sources: Sources,
    runtime: Arc<FilterRuntime>,
    fqdn: Arc<crate::model::fqdn::FqdnCache>,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(crate::config::CONFIG_FILE), NODE).unwrap();
    let memory = MemorySource::new("memory");
    let sources = Sources::new(vec![Arc::new(LocalSource::new(dir.path())), memory.clone()]);
    let options = RuntimeOptions { cache_dir: None, max_instances: None };
    let runtime = Arc::new(FilterRuntime::new(Arc::new(Metrics::default()), options).unwrap());
    let fqdn = Arc::new(crate::model::fqdn::FqdnCache::new(Default::default(), None));
    Setup { _dir: dir, memory, sources, runtime, fqdn }
}

impl Setup {
    async fn build(&self) -> Result<Arc<PolicyModel>, Vec<String>> {
        self.build_after(&Default::default()).await.map(|built| built.model)
    }

    async fn build_after(&self, last_good: &Arc<LastGood>) -> Result<Built, Vec<String>> {
        Controller::build(&self.sources, &self.runtime, &self.fqdn, 1, last_good).await.map(|(built, _)| built)
    }
}

fn forwarded(model: &PolicyModel, peer: &str) -> bool {
    let peer: SocketAddr = format!("{peer}:40000").parse().unwrap();
    let resolved = model.resolve(&Target::Listener("web".into()), peer, crate::protocol::Protocol::Http).unwrap();
    let verdict = model.connection_verdict_from(&resolved.listener, resolved.source, peer, L4Protocol::Tcp);
    matches!(*verdict, ConnectionVerdict::Forward(_))
}

#[tokio::test]
async fn a_memory_source_adds_endpoints_and_policies_to_the_files() {
    let s = setup();
    s.memory.set(web_from("frontend"));
    let model = s.build().await.unwrap();
    assert!(model.identities.endpoint("127.0.0.5".parse().unwrap()).is_some(), "the memory source's endpoint");
    assert!(forwarded(&model, "127.0.0.5"), "the memory source's policy allows the frontend");
    assert!(!forwarded(&model, "127.0.0.6"), "and no one else");

    // a change in the store is a change of the sources, and the next model follows it
    let before = s.sources.fingerprint();
    s.memory.set(web_from("someone-else"));
    assert_ne!(s.sources.fingerprint(), before);
    assert!(!forwarded(&s.build().await.unwrap(), "127.0.0.5"));
}

#[tokio::test]
async fn what_a_source_cannot_read_keeps_every_model_out() {
    let s = setup();
    let mut bad = web_from("frontend");
    bad.errors.push(crate::policy::PolicyError {
        file: "memory/broken".into(),
        object: None,
        field: None,
        message: "not a policy".into(),
    });
    s.memory.set(bad);
    let errors = s.build().await.err().expect("no model");
    assert!(errors.iter().any(|e| e.contains("memory/broken") && e.contains("not a policy")), "{errors:?}");
}

#[tokio::test]
async fn exactly_one_source_provides_the_node_configuration() {
    let s = setup();
    let text = std::fs::read_to_string(s._dir.path().join(crate::config::CONFIG_FILE)).unwrap();
    let second = NodeConfig { config: WeirConfig::parse(&text).unwrap(), dir: ".".into(), file: "memory.yaml".into() };
    s.memory.set(Contribution { node: Some(second), ..Default::default() });
    let errors = s.build().await.err().expect("no model");
    assert!(errors.iter().any(|e| e.contains("exactly one source")), "{errors:?}");

    let alone = Sources::new(vec![s.memory.clone() as Arc<dyn Source>]);
    s.memory.set(Contribution::default());
    let errors = Controller::build(&alone, &s.runtime, &s.fqdn, 1, &Default::default()).await.err().unwrap();
    assert!(errors.iter().any(|e| e.contains("no source provides the node configuration")), "{errors:?}");
}

/// An object of the API server, as the Kubernetes source reads it.
fn object(name: &str, from: &str, path: &str) -> crate::policy::document::SourcedDocument {
    let policy = format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  \
         endpointSelector: {{matchLabels: {{app: web}}}}\n  \
         ingress: [{{fromEndpoints: [{{matchLabels: {{app: {from}}}}}], \
         toPorts: [{{ports: [{{port: '80', protocol: TCP}}], rules: {{http: [{{path: '{path}'}}]}}}}]}}]\n"
    );
    crate::policy::document::parse_object("kubernetes ciliumnetworkpolicies", serde_yaml::from_str(&policy).unwrap())
        .unwrap()
}

#[tokio::test]
async fn a_bad_object_is_set_aside_alone_and_its_last_good_version_stays() {
    let s = setup();
    let frontend: EndpointConfig =
        serde_yaml::from_str("{name: frontend, address: 127.0.0.5, labels: {app: frontend}}").unwrap();
    let crawler: EndpointConfig =
        serde_yaml::from_str("{name: crawler, address: 127.0.0.6, labels: {app: crawler}}").unwrap();
    let endpoints = vec![frontend, crawler];
    let set = |documents| Contribution { documents, endpoints: endpoints.clone(), ..Default::default() };
    s.memory.set(set(vec![object("frontend", "frontend", "/.*")]));
    let first = s.build_after(&Default::default()).await.unwrap();
    assert!(first.set_aside.is_empty());
    assert!(forwarded(&first.model, "127.0.0.5"));
    let last_good = Arc::new(first.good);

    // a new version of `frontend` that does not compile, and a new object
    // `crawler` that never did: the model still goes in, with the
    // frontend's last good version and without the crawler's
    s.memory.set(set(vec![object("frontend", "frontend", "/(unclosed"), object("crawler", "crawler", "/(also")]));
    let second = s.build_after(&last_good).await.unwrap();
    assert!(forwarded(&second.model, "127.0.0.5"), "the last good version of frontend is in force");
    assert!(!forwarded(&second.model, "127.0.0.6"), "the crawler's object never was good: not enforced");
    let aside: Vec<String> = second.set_aside.iter().map(ToString::to_string).collect();
    assert_eq!(aside.len(), 2, "{aside:?}");
    assert!(aside[0].contains("policy default/crawler") && aside[0].ends_with("(not enforced)"), "{aside:?}");
    assert!(aside[1].contains("spec.ingress[0].toPorts[0].rules.http[0].path"), "{aside:?}");
    assert!(aside[1].ends_with("(its last good version stays in force)"), "{aside:?}");
    assert!(second.good.contains_key("kubernetes ciliumnetworkpolicies: policy default/frontend"));

    // without a last good version the bad frontend is left out too: no
    // policy selects the web listener's workload, so nothing is refused
    let third = s.build_after(&Default::default()).await.unwrap();
    assert!(third.set_aside.iter().all(|a| !a.previous_kept), "{:?}", third.set_aside);
    assert!(forwarded(&third.model, "127.0.0.6"));
}

#[tokio::test]
async fn a_bad_policy_file_still_refuses_the_whole_update() {
    let s = setup();
    let mut contribution = web_from("frontend");
    let (documents, _) = parse_file(
        "memory/broken.yaml",
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: broken}\nspec:\n  \
         endpointSelector: {}\n  ingress: [{toPorts: [{ports: [{port: '80'}], rules: {http: [{path: '(x'}]}}]}]\n",
    );
    contribution.documents.extend(documents);
    s.memory.set(contribution);
    let errors = s.build().await.err().expect("a file is all or nothing");
    assert!(errors.iter().any(|e| e.contains("policy default/broken")), "{errors:?}");
}
