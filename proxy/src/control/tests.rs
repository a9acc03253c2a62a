//! The source seam is real: a second source, filled in memory, adds
//! endpoints and policies to what the file source says, and the model the
//! controller builds enforces them.

use std::net::SocketAddr;
use std::sync::Arc;

use super::*;
use crate::config::EndpointConfig;
use crate::context::Target;
use crate::model::ConnectionVerdict;
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
    async fn build(&self) -> Result<PolicyModel, Vec<String>> {
        Controller::build(&self.sources, &self.runtime, &self.fqdn, 1).await.map(|(model, _)| model)
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
    let errors = Controller::build(&alone, &s.runtime, &s.fqdn, 1).await.err().unwrap();
    assert!(errors.iter().any(|e| e.contains("no source provides the node configuration")), "{errors:?}");
}
