//! The seam between the proxy and whatever configures it. A [`Source`] holds
//! its part of what the proxy should run (its store) and says what it holds
//! when asked; the controller is the one updater: it reads every source,
//! merges what they say ([`Sources::read`]), builds one model and validates
//! it whole. The file source (`file.rs`) is one implementation, the
//! Kubernetes API server is the next; [`MemorySource`] is a store any code
//! (an embedding program, a test) fills directly.

use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::config::{EndpointConfig, FilterConfig, WeirConfig};
use crate::model::ModelInputs;
use crate::policy::PolicyError;
use crate::policy::document::SourcedDocument;

/// The node's own configuration (`weir.yaml`): listeners, filters, limits,
/// local endpoints. Exactly one source provides it.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub config: WeirConfig,
    /// Relative filter and certificate paths resolve against it.
    pub dir: PathBuf,
    /// Where it came from, for error messages.
    pub file: String,
}

/// What one source says the proxy should run.
#[derive(Clone, Debug, Default)]
pub struct Contribution {
    pub node: Option<NodeConfig>,
    /// Policy documents (every kind `policy::document` reads).
    pub documents: Vec<SourcedDocument>,
    /// Workloads and their labels, beside the node configuration's own.
    pub endpoints: Vec<EndpointConfig>,
    /// Filters `wasm` rules may name, beside `weir.yaml`'s (each with its
    /// component supplied: [`FilterConfig::supplied`]).
    pub filters: Vec<FilterConfig>,
    /// What the source could not read (a file that did not parse): no model
    /// is installed while any source reports one.
    pub errors: Vec<PolicyError>,
    /// Independent objects the source could not read, by key
    /// (`document::object_key`): left out alone; the rest goes in.
    pub set_aside: Vec<(String, PolicyError)>,
}

/// Something that configures the proxy.
pub trait Source: Send + Sync {
    /// Shown in errors.
    fn name(&self) -> String;
    /// Cheap, and different whenever [`Source::read`] would say something
    /// else: the controller reads again only when it changed.
    fn fingerprint(&self) -> u64;
    /// Everything the source holds now. `Err`: nothing of it is usable.
    fn read(&self) -> Result<Contribution, Vec<PolicyError>>;
}

/// Every source the proxy follows, in a fixed order (documents and
/// endpoints are merged in it).
#[derive(Clone)]
pub struct Sources(Arc<[Arc<dyn Source>]>);

impl Sources {
    pub fn new(sources: Vec<Arc<dyn Source>>) -> Self {
        Sources(sources.into())
    }

    pub fn fingerprint(&self) -> u64 {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        for source in self.0.iter() {
            source.fingerprint().hash(&mut hasher);
        }
        hasher.finish()
    }

    /// What the sources say together, as the model's inputs, with what
    /// they could not read. `Err`: no model can be built
    /// (a source failed whole, or not exactly one provides the node
    /// configuration).
    pub fn read(&self) -> Result<Read, Vec<PolicyError>> {
        let mut node: Option<NodeConfig> = None;
        let (mut documents, mut endpoints, mut errors, mut fatal) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut filters = Vec::new();
        let mut set_aside = Vec::new();
        for source in self.0.iter() {
            let problem = |message: String| PolicyError { file: source.name(), object: None, field: None, message };
            match source.read() {
                Err(e) => fatal.extend(e),
                Ok(contribution) => {
                    if let Some(theirs) = contribution.node {
                        match &node {
                            None => node = Some(theirs),
                            Some(ours) => fatal.push(problem(format!(
                                "provides a node configuration, and {} already did: exactly one source may",
                                ours.file
                            ))),
                        }
                    }
                    documents.extend(contribution.documents);
                    endpoints.extend(contribution.endpoints);
                    filters.extend(contribution.filters);
                    errors.extend(contribution.errors);
                    set_aside.extend(contribution.set_aside);
                }
            }
        }
        let Some(NodeConfig { mut config, dir, file }) = node else {
            fatal.push(PolicyError {
                file: "sources".into(),
                object: None,
                field: None,
                message: "no source provides the node configuration (weir.yaml)".into(),
            });
            return Err(fatal);
        };
        if !fatal.is_empty() {
            return Err(fatal);
        }
        config.endpoints.extend(endpoints);
        for shadowed in add_filters(&mut config, filters) {
            tracing::warn!(filter = %shadowed, "a filter of this name is in {file} already; that one is used");
        }
        Ok(Read { inputs: ModelInputs { config, config_dir: dir, config_file: file, documents }, errors, set_aside })
    }
}

/// Add other sources' filters to `config`'s: the node's own `weir.yaml`
/// names its filters first. The names of those left out.
pub fn add_filters(config: &mut WeirConfig, filters: Vec<FilterConfig>) -> Vec<String> {
    let mut shadowed = Vec::new();
    for filter in filters {
        if config.filters.iter().any(|f| f.name == filter.name) {
            shadowed.push(filter.name);
        } else {
            config.filters.push(filter);
        }
    }
    shadowed
}

/// What the sources say together.
pub struct Read {
    pub inputs: ModelInputs,
    /// What they could not read: no model goes in while there is any.
    pub errors: Vec<PolicyError>,
    /// Independent objects they could not read, by key: left out alone.
    pub set_aside: Vec<(String, PolicyError)>,
}

/// A source whose store is filled by whoever holds it: `set` replaces what
/// it says, and the next reload applies it.
pub struct MemorySource {
    name: String,
    held: Mutex<(u64, Contribution)>,
}

impl MemorySource {
    pub fn new(name: impl Into<String>) -> Arc<Self> {
        Arc::new(MemorySource { name: name.into(), held: Mutex::new((0, Contribution::default())) })
    }

    pub fn set(&self, contribution: Contribution) {
        let mut held = self.held.lock().unwrap();
        *held = (held.0 + 1, contribution);
    }
}

impl Source for MemorySource {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn fingerprint(&self) -> u64 {
        self.held.lock().unwrap().0
    }

    fn read(&self) -> Result<Contribution, Vec<PolicyError>> {
        Ok(self.held.lock().unwrap().1.clone())
    }
}
