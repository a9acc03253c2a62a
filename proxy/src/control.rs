//! The local control plane: a directory holding `weir.yaml` and
//! `policies/*.yaml`, watched and hot-reloaded. A new model is validated
//! whole; if anything is wrong the last good model stays in force.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use crate::config::{CONFIG_FILE, POLICY_DIR, WeirConfig};
use crate::flow::rfc3339;
use crate::listeners::ListenerSet;
use crate::metrics::ReloadLabels;
use crate::model::{ModelInputs, PolicyModel};
use crate::policy::{PolicyError, document};
use crate::state::ProxyState;

/// A config directory on disk.
#[derive(Clone, Debug)]
pub struct LocalSource {
    pub dir: PathBuf,
}

impl LocalSource {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        LocalSource { dir: dir.into() }
    }

    /// Read and parse everything. `Err` when weir.yaml itself is unusable;
    /// otherwise the inputs built from every document that parsed, and the
    /// errors of those that did not (so validation can report its own too).
    pub fn read(&self) -> Result<(ModelInputs, Vec<PolicyError>), Vec<PolicyError>> {
        let config_path = self.dir.join(CONFIG_FILE);
        let config_file = config_path.display().to_string();
        let text = std::fs::read_to_string(&config_path).map_err(|e| {
            vec![PolicyError { file: config_file.clone(), object: None, field: None, message: e.to_string() }]
        })?;
        let config = WeirConfig::parse(&text).map_err(|message| {
            let (field, message) = split_field(&message);
            vec![PolicyError { file: config_file.clone(), object: None, field, message }]
        })?;
        let files = policy_files(&self.dir.join(POLICY_DIR)).into_iter().map(|path| {
            let text = std::fs::read_to_string(&path).map_err(|e| e.to_string());
            (path.display().to_string(), text)
        });
        let document::LoadedDocuments { documents, errors } = document::load_files(files);
        Ok((ModelInputs { config, config_dir: self.dir.clone(), config_file, documents }, errors))
    }

    /// A cheap hash of what `read` would see: the config and policy files,
    /// and the size and mtime of files the config points at (certificates,
    /// filters), so that replacing one is a change too.
    pub fn fingerprint(&self) -> u64 {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        let config = std::fs::read_to_string(self.dir.join(CONFIG_FILE)).ok();
        config.hash(&mut hasher);
        if let Some(config) = config.as_deref().and_then(|text| WeirConfig::parse(text).ok()) {
            let referenced = config.filters.iter().filter_map(|f| f.path.clone()).chain(
                config.listeners.iter().filter_map(|l| l.tls.as_ref()).flat_map(|t| [t.cert.clone(), t.key.clone()]),
            );
            for path in referenced {
                let full = if path.is_absolute() { path } else { self.dir.join(path) };
                std::fs::metadata(&full).ok().map(|m| (m.len(), m.modified().ok())).hash(&mut hasher);
            }
        }
        for path in policy_files(&self.dir.join(POLICY_DIR)) {
            (path.display().to_string(), std::fs::read(&path).ok()).hash(&mut hasher);
        }
        hasher.finish()
    }
}

/// `listeners[0].bind: invalid socket address` → (field, message)
fn split_field(message: &str) -> (Option<String>, String) {
    match message.split_once(": ") {
        Some((field, rest)) if !field.contains(' ') => (Some(field.to_string()), rest.to_string()),
        _ => (None, message.to_string()),
    }
}

/// Policy files in a directory, sorted: `*.yaml`, `*.yml`, `*.json`; editor
/// droppings and hidden files are skipped.
pub fn policy_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            !name.starts_with('.')
                && p.is_file()
                && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"))
        })
        .collect();
    files.sort();
    files
}

pub fn fqdn_limits(config: &WeirConfig) -> crate::dns::cache::FqdnLimits {
    crate::dns::cache::FqdnLimits { min_ttl: config.dns.min_ttl, max_ips_per_name: config.dns.max_ips_per_name }
}

/// Keeps the proxy's model in step with a source.
pub struct Controller {
    pub source: LocalSource,
    pub state: Arc<ProxyState>,
    pub listeners: ListenerSet,
    /// The eBPF datapath, when weir runs with one: every model goes into its
    /// maps before the proxy uses it.
    pub datapath: Option<crate::datapath::Datapath>,
    fingerprint: u64,
}

impl Controller {
    pub fn new(source: LocalSource, state: Arc<ProxyState>, fingerprint: u64) -> Self {
        Controller { source, state, listeners: ListenerSet::default(), datapath: None, fingerprint }
    }

    /// Build a model from the source, or every reason it cannot be built.
    pub async fn build(
        source: &LocalSource,
        runtime: &Arc<crate::wasm::FilterRuntime>,
        fqdn: &Arc<crate::dns::cache::FqdnCache>,
        generation: u64,
    ) -> Result<(PolicyModel, u64), Vec<String>> {
        let source = source.clone();
        let (runtime, fqdn) = (runtime.clone(), fqdn.clone());
        // compiling filters and regexes is CPU work: keep it off the workers
        tokio::task::spawn_blocking(move || {
            let fingerprint = source.fingerprint();
            let text = |errors: Vec<PolicyError>| errors.iter().map(ToString::to_string).collect::<Vec<_>>();
            let (inputs, mut errors) = source.read().map_err(text)?;
            match PolicyModel::build(inputs, &runtime, &fqdn, generation) {
                Ok(model) if errors.is_empty() => Ok((model, fingerprint)),
                Ok(_) => Err(text(errors)),
                Err(more) => {
                    errors.extend(more);
                    Err(text(errors))
                }
            }
        })
        .await
        .map_err(|e| vec![format!("model build panicked: {e}")])?
    }

    /// Install a model: bind its new listeners, swap it in, then start and
    /// stop listeners. Fails without changing anything if a bind fails.
    pub fn install(&mut self, model: impl Into<Arc<PolicyModel>>, fingerprint: u64) -> Result<(), Vec<String>> {
        let model = model.into();
        let bound = self.listeners.prepare(&model)?;
        if let Some(datapath) = &mut self.datapath {
            let fqdn_generation = self.state.fqdn.generation();
            datapath.apply(&model)?;
            self.state.fqdn_applied.send_replace(fqdn_generation);
        }
        let in_use: Vec<_> = model.listeners.values().map(|l| (l.config.upstream, l.config.connect_timeout)).collect();
        let generation = model.generation;
        self.state.flows.set_logging(model.config.log_flows);
        self.state.fqdn.set_limits(fqdn_limits(&model.config));
        self.state.model.store(model.clone());
        self.listeners.commit(&self.state, &model, bound);
        self.state.upstreams.retain(&in_use);
        let resolvers: Vec<_> = model
            .listeners
            .values()
            .filter(|l| l.config.protocol == crate::config::ListenerProtocol::Dns)
            .map(|l| l.config.upstream)
            .collect();
        self.state.dns_upstreams.retain(&resolvers);
        self.fingerprint = fingerprint;
        self.state.metrics.policy_generation.set(generation as i64);
        let mut status = self.state.reload.lock().unwrap();
        status.generation = generation;
        status.last_applied = Some(rfc3339(SystemTime::now()));
        status.rejected.clear();
        Ok(())
    }

    /// The FQDN cache changed (generation `generation`): bring the datapath's
    /// toFQDNs entries in step, then let held DNS answers go.
    pub fn apply_fqdn(&mut self, generation: u64) {
        let Some(datapath) = &mut self.datapath else { return };
        let model = self.state.model.load_full();
        if let Err(errors) = datapath.apply(&model) {
            for e in errors {
                tracing::error!("datapath update for learned addresses failed: {e}");
            }
        }
        self.state.fqdn_applied.send_replace(generation);
    }

    /// Check the source and apply it if it changed and is valid.
    pub async fn reload(&mut self, forced: bool) {
        let fingerprint = self.source.fingerprint();
        if fingerprint == self.fingerprint && !forced {
            return;
        }
        // whatever the outcome, do not retry the same files every tick
        self.fingerprint = fingerprint;
        let generation = self.state.model.load().generation + 1;
        let result = match Controller::build(&self.source, &self.state.runtime, &self.state.fqdn, generation).await {
            Ok((model, fingerprint)) => self.install(model, fingerprint),
            Err(errors) => Err(errors),
        };
        let metrics = &self.state.metrics;
        match result {
            Ok(()) => {
                tracing::info!(generation, "configuration reloaded");
                metrics.policy_reloads.get_or_create(&ReloadLabels { result: "applied" }).inc();
            }
            Err(errors) => {
                for e in &errors {
                    tracing::error!("rejected: {e}");
                }
                tracing::warn!("configuration update rejected; generation {} stays in force", generation - 1);
                metrics.policy_reloads.get_or_create(&ReloadLabels { result: "rejected" }).inc();
                let mut status = self.state.reload.lock().unwrap();
                status.rejected = errors;
                status.last_rejected = Some(rfc3339(SystemTime::now()));
            }
        }
    }
}
