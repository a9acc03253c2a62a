//! The control plane inside the proxy: sources say what the proxy should
//! run (`source`: the seam; `file`: the embedded default, a watched
//! directory), the controller reads them all, builds one model from what
//! they say together, validates it whole and installs it. If anything is
//! wrong the last good model stays in force.

pub mod build;
mod file;
pub mod kubernetes;
pub mod source;

pub use build::{Built, LastGood, SetAside};
pub use file::{LocalSource, policy_files};
pub use kubernetes::KubernetesSource;
pub use source::{Contribution, MemorySource, NodeConfig, Read, Source, Sources};

use std::sync::Arc;
use std::time::SystemTime;

use crate::config::WeirConfig;
use crate::engines::listeners::ListenerSet;
use crate::engines::state::ProxyState;
use crate::observe::flow::rfc3339;
use crate::observe::metrics::ReloadLabels;
use crate::policy::PolicyError;

pub fn fqdn_limits(config: &WeirConfig) -> crate::model::fqdn::FqdnLimits {
    crate::model::fqdn::FqdnLimits { min_ttl: config.dns.min_ttl, max_ips_per_name: config.dns.max_ips_per_name }
}

/// Keeps the proxy's model in step with its sources.
pub struct Controller {
    pub sources: Sources,
    pub state: Arc<ProxyState>,
    pub listeners: ListenerSet,
    /// The eBPF datapath, when weir runs with one: every model goes into its
    /// maps before the proxy uses it.
    pub datapath: Option<crate::datapath::Datapath>,
    fingerprint: u64,
    /// The API server's objects in the model in force, kept for when a
    /// newer version of one is bad.
    last_good: Arc<LastGood>,
    /// The node configuration this process started with: what of it only a
    /// restart applies is compared with every later one.
    started_with: Option<crate::config::WeirConfig>,
}

impl Controller {
    pub fn new(sources: Sources, state: Arc<ProxyState>) -> Self {
        Controller {
            sources,
            state,
            listeners: ListenerSet::default(),
            datapath: None,
            fingerprint: 0,
            last_good: Default::default(),
            started_with: None,
        }
    }

    /// Build a model from what the sources say (and its fingerprint), or
    /// every reason it cannot be built.
    pub async fn build(
        sources: &Sources,
        runtime: &Arc<crate::wasm::FilterRuntime>,
        fqdn: &Arc<crate::model::fqdn::FqdnCache>,
        generation: u64,
        last_good: &Arc<LastGood>,
    ) -> Result<(Built, u64), Vec<String>> {
        let sources = sources.clone();
        let (runtime, fqdn, last_good) = (runtime.clone(), fqdn.clone(), last_good.clone());
        // compiling filters and regexes is CPU work: keep it off the workers
        on_builder_thread(move || {
            let started = std::time::Instant::now();
            let fingerprint = sources.fingerprint();
            let text = |errors: Vec<PolicyError>| errors.iter().map(ToString::to_string).collect::<Vec<_>>();
            let read = sources.read().map_err(text)?;
            let read_took = started.elapsed();
            let built = build::build(read, &runtime, &fqdn, generation, &last_good).map_err(text)?;
            tracing::debug!(generation, read = ?read_took, build = ?(started.elapsed() - read_took), "model built");
            Ok((built, fingerprint))
        })
        .await
        .ok_or_else(|| vec!["model build panicked".to_string()])?
    }

    /// Install a model: bind its new listeners, swap it in, then start and
    /// stop listeners. Fails without changing anything if a bind fails.
    pub fn install(&mut self, built: Built, fingerprint: u64) -> Result<(), Vec<String>> {
        let Built { model, set_aside, good } = built;
        let bound = self.listeners.prepare(&model)?;
        // handed over: the maps are the successor's (`handover`)
        if let Some(datapath) = self.datapath.as_mut().filter(|_| !self.state.handover.handed_over()) {
            let started = std::time::Instant::now();
            let fqdn_generation = self.state.fqdn.generation();
            datapath.apply(&model)?;
            // the compiled maps (tens of MiB at cluster scale) were freed on
            // this worker: give them back instead of keeping the high-water mark
            crate::reservations::release_free_memory();
            self.state.fqdn_applied.send_replace(fqdn_generation);
            tracing::debug!(generation = model.generation, took = ?started.elapsed(), "datapath maps written");
        }
        let in_use: Vec<_> = model
            .listeners
            .values()
            .map(|l| crate::engines::http::upstream::UpstreamKey {
                address: l.config.upstream,
                connect_timeout: l.config.connect_timeout,
                bind: None,
                tls: l.upstream_tls.clone(),
            })
            .collect();
        let generation = model.generation;
        self.state.flows.set_logging(model.config.log_flows);
        self.state.fqdn.set_limits(fqdn_limits(&model.config));
        self.state.model.store(model.clone());
        self.state.model_changed.send_replace(generation);
        self.listeners.commit(&self.state, &model, bound);
        self.state.upstreams.retain(&in_use);
        let resolvers: Vec<_> = model
            .listeners
            .values()
            .filter(|l| l.config.protocol == crate::protocol::Protocol::Dns)
            .map(|l| l.config.upstream)
            .collect();
        self.state.dns_upstreams.retain(&resolvers);
        self.fingerprint = fingerprint;
        self.last_good = Arc::new(good);
        self.state.metrics.policy_generation.set(generation as i64);
        self.state.metrics.policy_objects_set_aside.set(set_aside.len() as i64);
        for object in &set_aside {
            tracing::warn!("set aside: {object}");
        }
        // settings weir reads once, at start: a change is applied by a
        // restart (or a hand-over), never silently dropped
        let started_with = self.started_with.get_or_insert_with(|| model.config.clone());
        let needs_restart = model.config.start_only_changes(started_with);
        if !needs_restart.is_empty() {
            tracing::warn!(settings = ?needs_restart, "weir.yaml changed settings read at start only; they apply at the next restart");
        }
        let mut status = self.state.reload.lock().unwrap();
        status.generation = generation;
        status.last_applied = Some(rfc3339(SystemTime::now()));
        status.rejected.clear();
        status.set_aside = set_aside.iter().map(ToString::to_string).collect();
        status.needs_restart = needs_restart.into_iter().map(str::to_string).collect();
        Ok(())
    }

    /// The FQDN cache changed (generation `generation`): bring the datapath's
    /// toFQDNs entries in step, then let held DNS answers go.
    pub fn apply_fqdn(&mut self, generation: u64) {
        let Some(datapath) = &mut self.datapath else { return };
        if self.state.handover.handed_over() {
            return; // the successor's maps now
        }
        let model = self.state.model.load_full();
        if let Err(errors) = datapath.apply(&model) {
            for e in errors {
                tracing::error!("datapath update for learned addresses failed: {e}");
            }
        }
        self.state.fqdn_applied.send_replace(generation);
    }

    /// Check the sources and apply what they say if it changed and is valid.
    pub async fn reload(&mut self, forced: bool) {
        let fingerprint = self.sources.fingerprint();
        if fingerprint == self.fingerprint && !forced {
            return;
        }
        // whatever the outcome, do not retry the same files every tick
        self.fingerprint = fingerprint;
        let generation = self.state.model.load().generation + 1;
        let built =
            Controller::build(&self.sources, &self.state.runtime, &self.state.fqdn, generation, &self.last_good).await;
        let result = match built {
            Ok((built, fingerprint)) => self.install(built, fingerprint),
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

/// Run `job` on the one thread that builds models. One long-lived thread,
/// not the blocking pool's: every model is allocated by one mimalloc heap,
/// so the memory of the models it replaced can be given back
/// ([`crate::reservations::release_free_memory`]) instead of staying
/// spread over the free lists of threads that come and go. `None`: the job
/// panicked.
async fn on_builder_thread<T: Send + 'static>(job: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    type Job = Box<dyn FnOnce() + Send>;
    static BUILDER: std::sync::OnceLock<std::sync::Mutex<std::sync::mpsc::Sender<Job>>> = std::sync::OnceLock::new();
    let builder = BUILDER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("weir-builder".into())
            .spawn(move || {
                for job in rx {
                    // the models this thread allocated and others have let go
                    // of since: freed into this heap, given back here
                    crate::reservations::release_free_memory();
                    job();
                    // and what the build itself used and dropped, here and
                    // where filters were compiled
                    crate::reservations::release_free_memory();
                    crate::reservations::release_free_memory_of_compiler_threads();
                }
            })
            .expect("starting the model builder thread");
        std::sync::Mutex::new(tx)
    });
    let (done, result) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
        if let Err(panic) = &outcome {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!("model build panicked: {message}");
        }
        let _ = done.send(outcome.ok());
    });
    builder.lock().unwrap().send(job).ok()?;
    result.await.ok().flatten()
}

#[cfg(test)]
mod tests;
