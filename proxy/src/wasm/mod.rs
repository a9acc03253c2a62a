//! The filter host: compiles filter components once, keeps one configured
//! instance per worker thread and filter, and runs every call under a CPU
//! deadline and a memory limit.
//!
//! A call that traps, times out or runs out of memory never reaches the wire:
//! the caller gets a [`FilterFailure`], applies the filter's failure policy,
//! and the instance is thrown away (a guest that panicked is never reused).

mod bindings;
pub mod builtin;
mod cache;
mod epoch;
pub use cache::{compile_in_child_processes, compile_into_cache};
mod instances;
mod slots;
pub mod state;
pub mod toolchain;

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, InstancePre, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

pub use bindings::{ConnectionView, capture_logs, cassandra, dns, http, kafka, memcached, stream};

use crate::observe::metrics::{FilterFailureLabels, FilterLabels, Metrics};
use crate::protocol::Protocol;
use bindings::{
    CassandraFilter, CassandraFilterPre, DnsFilter, DnsFilterPre, HostState, HttpFilter, HttpFilterPre, KafkaFilter,
    KafkaFilterPre, MemcachedFilter, MemcachedFilterPre, StreamFilter, StreamFilterPre,
};
use epoch::{EPOCH_TICK, EpochClock, EpochTicker};

/// The largest memory any filter may be given; per-filter limits are below it.
pub const MAX_FILTER_MEMORY: usize = 1 << 30;

/// CPU and memory budget of one filter, per call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FilterLimits {
    /// Longest a single call may run before it is interrupted.
    #[serde(with = "crate::units::duration")]
    pub timeout: Duration,
    /// Most linear memory an instance may grow to, in bytes.
    pub memory: usize,
}

impl Default for FilterLimits {
    /// 50 ms of CPU per call: a guard against a filter that runs away, not a
    /// latency target (a Rust filter's call takes microseconds). The thread's
    /// CPU clock also charges what is not the filter's: interrupts on kernels
    /// without IRQ time accounting, page faults while a fresh VM backs its
    /// memory, a JavaScript engine's collector. With 10 ms a healthy 2 µs
    /// memcached call was failed on a fresh CI machine, and one JavaScript
    /// call in ~10,000 timed out.
    fn default() -> Self {
        FilterLimits { timeout: Duration::from_millis(50), memory: 32 << 20 }
    }
}

/// What happens to a request when its filter fails.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FailurePolicy {
    /// Refuse the request (HTTP 500). The default: a broken filter must not
    /// turn into an open door.
    #[default]
    Closed,
    /// Continue as if the filter had allowed the request.
    Open,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureKind {
    /// The guest trapped (a panic, unreachable, an out-of-bounds access).
    Trap,
    /// The call ran past its CPU deadline.
    Timeout,
    /// The guest tried to grow past its memory limit.
    Memory,
    /// No instance could be made (instantiation or `configure` failed).
    Instantiate,
    /// No instance slot was free for it (the pool, the filter's or the
    /// client's share of it): a resource shortage, never the filter's fault.
    Exhausted,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Trap => "trap",
            FailureKind::Timeout => "timeout",
            FailureKind::Memory => "memory",
            FailureKind::Instantiate => "instantiate",
            FailureKind::Exhausted => "exhausted",
        }
    }
}

#[derive(Clone, Debug)]
pub struct FilterFailure {
    pub filter: Arc<str>,
    pub kind: FailureKind,
    pub message: String,
}

impl fmt::Display for FilterFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "filter {} failed ({}): {}", self.filter, self.kind.as_str(), self.message)
    }
}

/// Why a configuration was not taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigureError {
    /// The filter's `configure` judged it and said no.
    Refused(Refusal),
    /// The filter never judged it: it trapped, ran out of time or memory,
    /// or no instance could be made.
    Failed(String),
}

/// A filter's `configure` refusing a configuration: which field, when the
/// filter says (the SDK's `ConfigError`, sent as
/// `{"configError": {"group", "field", "message"}}`), or only a message.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Refusal {
    /// The group (allowing rule) the field is in, as the configuration named it.
    #[serde(default)]
    pub group: Option<String>,
    /// The field inside the group's rules, `http[1].path`.
    #[serde(default)]
    pub field: Option<String>,
    pub message: String,
}

impl Refusal {
    /// What `configure` returned: the SDK's typed form, or any other text as
    /// the message.
    fn from_guest(text: String) -> Refusal {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields, rename_all = "camelCase")]
        struct Wire {
            config_error: Refusal,
        }
        match serde_json::from_str::<Wire>(&text) {
            Ok(wire) => wire.config_error,
            Err(_) => Refusal { group: None, field: None, message: text },
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for part in [&self.group, &self.field].into_iter().flatten() {
            write!(f, "{part}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl fmt::Display for ConfigureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigureError::Refused(refusal) => refusal.fmt(f),
            ConfigureError::Failed(message) => f.write_str(message),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("filter {name}: not a valid WebAssembly component: {message}")]
    Compile { name: String, message: String },
    #[error(
        "filter {name}: implements no world of weir:filter@0.1.0 (http-filter, dns-filter, kafka-filter, \
         memcached-filter, cassandra-filter, stream-filter): {message}"
    )]
    World { name: String, message: String },
}

/// Compiles components and owns the engine, the linker and the epoch clock.
/// A component by name and the SHA-256 of its bytes.
type ComponentKey = (String, [u8; 32]);

pub struct FilterRuntime {
    engine: Engine,
    linker: Linker<HostState>,
    metrics: Arc<Metrics>,
    cache: Option<cache::PrecompileCache>,
    configured: Mutex<HashMap<ConfiguredKey, Weak<ConfiguredFilter>>>,
    /// Components a model holds, by (name, digest): a reload (a pod that
    /// came or went) reuses them instead of loading them again.
    loaded: Mutex<HashMap<ComponentKey, Weak<FilterComponent>>>,
    ticker: Option<EpochTicker>,
    /// What guest calls tell the ticker (it sleeps while none runs).
    clock: Arc<EpochClock>,
    /// Who holds the pool's instance slots (`slots.rs`).
    slots: Arc<slots::Slots>,
    /// What the shared state of every configured filter holds together.
    state_budget: Arc<state::Budget>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ConfiguredKey {
    digest: [u8; 32],
    name: Arc<str>,
    config: String,
    limits: FilterLimits,
    failure: FailurePolicy,
}

#[derive(Clone, Debug, Default)]
pub struct RuntimeOptions {
    /// Where compiled filters are kept between runs; `None` compiles every start.
    pub cache_dir: Option<PathBuf>,
    /// Pool capacity: filter instances alive at once across all workers.
    pub max_instances: Option<u32>,
}

impl FilterRuntime {
    pub fn new(metrics: Arc<Metrics>, options: RuntimeOptions) -> anyhow::Result<Self> {
        let max_instances = options.max_instances.unwrap_or(1000);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(max_instances)
            .total_core_instances(max_instances)
            .total_memories(max_instances)
            .total_tables(max_instances)
            .max_memory_size(MAX_FILTER_MEMORY)
            // keep a few warm slots so replacing a trapped instance is cheap
            .max_unused_warm_slots(16);

        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .concurrency_support(false)
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            // filters are small: a 1 MiB native stack is plenty and bounds recursion
            .max_wasm_stack(1 << 20)
            // 4 GiB reservations x 1000 slots is too much address space for a
            // sidecar-free node agent; memories are small, bounds checks are cheap.
            .memory_reservation(MAX_FILTER_MEMORY as u64)
            .memory_guard_size(64 << 10)
            .memory_reservation_for_growth(0);
        // `WEIR_WASM_PROFILER=perfmap` names filter functions for `perf`
        // (a /tmp/perf-PID.map), for filter authors chasing their hot spots.
        if std::env::var("WEIR_WASM_PROFILER").is_ok_and(|v| v == "perfmap") {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config).map_err(anyhow_error)?;
        let mut linker = Linker::new(&engine);
        HttpFilter::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |state| state)
            .map_err(anyhow_error)?;
        // the other worlds share `types` and `host`; only their own type
        // interfaces are new
        bindings::dns::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |state| state)
            .map_err(anyhow_error)?;
        bindings::kafka::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |state| state)
            .map_err(anyhow_error)?;
        bindings::memcached::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |state| state)
            .map_err(anyhow_error)?;
        bindings::cassandra::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |state| state)
            .map_err(anyhow_error)?;
        bindings::stream::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |state| state)
            .map_err(anyhow_error)?;

        let cache = options.cache_dir.and_then(|dir| cache::PrecompileCache::open(dir, &engine));
        let ticker = EpochTicker::start(engine.clone());
        let clock = ticker.clock().clone();
        let ticker = Some(ticker);
        let slots = Arc::new(slots::Slots::new(max_instances as usize));
        Ok(FilterRuntime {
            engine,
            linker,
            metrics,
            cache,
            configured: Mutex::new(HashMap::new()),
            loaded: Mutex::new(HashMap::new()),
            ticker,
            clock,
            slots,
            state_budget: state::Budget::new(state::MAX_TOTAL_BYTES),
        })
    }

    /// How many times an instance could not be made for lack of a slot. A
    /// verdict computed while this moved may rest on such a failure, and
    /// must not be kept (the shortage passes; the verdict would not).
    pub fn exhaustions(&self) -> u64 {
        self.slots.exhaustions()
    }

    /// Instances alive now, and the stream-filter instances among them.
    pub fn instances_in_use(&self) -> (usize, usize) {
        self.slots.in_use()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Compile a component and find which world it implements.
    pub fn load(&self, name: &str, bytes: &[u8]) -> Result<Arc<FilterComponent>, LoadError> {
        let started = Instant::now();
        if let Some(message) = not_webassembly(bytes) {
            return Err(LoadError::Compile { name: name.into(), message });
        }
        // known by the bytes given (a WasmFilter's sha256 is of those)
        let digest: [u8; 32] =
            builtin::embedded(bytes).map_or_else(|| Sha256::digest(bytes).into(), |(_, digest)| digest);
        let key = (name.to_string(), digest);
        if let Some(held) = self.loaded.lock().unwrap().get(&key).and_then(Weak::upgrade) {
            return Ok(held);
        }
        // a core module as wit-bindgen leaves it (`cargo build --target
        // wasm32-unknown-unknown`) carries its world: wrapped here
        let was_core = toolchain::is_core_module(bytes);
        let wrapped;
        let bytes = if was_core {
            wrapped = toolchain::componentize(bytes).map_err(|e| LoadError::Compile {
                name: name.into(),
                message: format!(
                    "a core WebAssembly module that cannot be made a component ({e}): build it with the \
                     weir-filter-sdk (`weir filter new`, `weir filter build`; docs/filters.md)"
                ),
            })?;
            &wrapped[..]
        } else {
            bytes
        };
        let component = match &self.cache {
            Some(cache) => cache.load_or_compile(&self.engine, bytes, &digest),
            None => Component::new(&self.engine, bytes),
        }
        .map_err(|e| LoadError::Compile { name: name.into(), message: format!("{e:#}") })?;
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::World { name: name.into(), message: format!("{e:#}") })?;
        let pre = WorldPre::of(&instance_pre).map_err(|message| {
            let message = match was_core {
                true => format!(
                    "{message} (a core module, wrapped as a component: does it call one of the \
                     weir-filter-sdk's export macros? `weir filter new` writes one that does)"
                ),
                false => message,
            };
            LoadError::World { name: name.into(), message }
        })?;
        tracing::debug!(filter = name, elapsed = ?started.elapsed(), "filter compiled");
        let component = Arc::new(FilterComponent { name: name.into(), digest, pre });
        let mut loaded = self.loaded.lock().unwrap();
        loaded.retain(|_, held| held.strong_count() > 0);
        loaded.insert(key, Arc::downgrade(&component));
        Ok(component)
    }

    /// A filter instance configuration, validated: `configure` ran once on a
    /// fresh instance and accepted it. Identical requests share one value, so
    /// reloads that keep a rule keep its warm instances.
    pub fn configure(
        self: &Arc<Self>,
        component: &Arc<FilterComponent>,
        config: String,
        limits: FilterLimits,
        failure: FailurePolicy,
    ) -> Result<Arc<ConfiguredFilter>, ConfigureError> {
        let key = ConfiguredKey { digest: component.digest, name: component.name.clone(), config, limits, failure };
        {
            let configured = self.configured.lock().unwrap();
            if let Some(existing) = configured.get(&key).and_then(Weak::upgrade) {
                return Ok(existing);
            }
        }
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let filter = Arc::new(ConfiguredFilter {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            name: component.name.clone(),
            component: component.clone(),
            config: key.config.clone(),
            limits,
            failure,
            runtime: Arc::downgrade(self),
            alive: Arc::new(()),
            wants_responses: std::sync::atomic::AtomicBool::new(true),
            state: Arc::new(state::Partition::new(self.state_budget.clone())),
            duration: self
                .metrics
                .filter_duration
                .get_or_create(&FilterLabels { filter: component.name.to_string() })
                .clone(),
        });
        // Validate on a throw-away instance so a bad configuration rejects the
        // policy update instead of failing requests later. It may take the
        // slots kept in reserve: floods of connections must not fail reloads.
        instances::instantiate(self, &filter, slots::Use::Validate).map_err(|e| match e {
            instances::NotInstantiated::Refused(text) => ConfigureError::Refused(Refusal::from_guest(text)),
            instances::NotInstantiated::Failed(failure) => ConfigureError::Failed(failure.message),
        })?;
        let mut configured = self.configured.lock().unwrap();
        configured.retain(|_, weak| weak.strong_count() > 0);
        configured.insert(key, Arc::downgrade(&filter));
        Ok(filter)
    }
}

impl Drop for FilterRuntime {
    fn drop(&mut self) {
        if let Some(ticker) = self.ticker.take() {
            ticker.stop();
        }
    }
}

/// The `weir:filter` worlds, one line each: the protocol whose world it is,
/// the accessor engines call (`bindings.kafka()?`), the pre-linked and the
/// instantiated bindings `bindings.rs` generates. Everything that dispatches
/// on a component's world is generated from this list.
macro_rules! worlds {
    ($($variant:ident: $accessor:ident => $pre:ident, $exports:ident;)*) => {
        enum WorldPre {
            $($variant($pre<HostState>),)*
        }

        /// A live instance's exports, by world.
        pub(crate) enum WorldBindings {
            $($variant($exports),)*
        }

        impl WorldPre {
            /// The component as the first world it implements; the errors
            /// say why it fits none.
            fn of(instance_pre: &InstancePre<HostState>) -> Result<WorldPre, String> {
                let mut why = Vec::new();
                $(match $pre::new(instance_pre.clone()) {
                    Ok(pre) => return Ok(WorldPre::$variant(pre)),
                    Err(e) => why.push(format!("as {}: {e:#}", Protocol::$variant.world())),
                })*
                Err(why.join("; "))
            }

            fn protocol(&self) -> Protocol {
                match self {
                    $(WorldPre::$variant(_) => Protocol::$variant,)*
                }
            }

            fn instantiate(&self, store: &mut wasmtime::Store<HostState>) -> wasmtime::Result<WorldBindings> {
                match self {
                    $(WorldPre::$variant(pre) => pre.instantiate(&mut *store).map(WorldBindings::$variant),)*
                }
            }
        }

        impl WorldBindings {
            fn configure(
                &self,
                store: &mut wasmtime::Store<HostState>,
                config: &str,
            ) -> wasmtime::Result<Result<(), String>> {
                match self {
                    $(WorldBindings::$variant(b) => b.call_configure(store, config),)*
                }
            }

            // `bindings.kafka()`: the exports of that world, or an error when
            // the instance implements another (a filter configured for the
            // wrong port kind)
            $(fn $accessor(&self) -> wasmtime::Result<&$exports> {
                match self {
                    WorldBindings::$variant(b) => Ok(b),
                    #[allow(unreachable_patterns)]
                    _ => Err(wasmtime::Error::msg(format!("not a {}", Protocol::$variant.world()))),
                }
            })*
        }
    };
}

worlds! {
    Http: http => HttpFilterPre, HttpFilter;
    Dns: dns => DnsFilterPre, DnsFilter;
    Kafka: kafka => KafkaFilterPre, KafkaFilter;
    Memcached: memcached => MemcachedFilterPre, MemcachedFilter;
    Cassandra: cassandra => CassandraFilterPre, CassandraFilter;
    Stream: stream => StreamFilterPre, StreamFilter;
}

/// A compiled, pre-linked filter component.
pub struct FilterComponent {
    pub name: Arc<str>,
    pub digest: [u8; 32],
    pre: WorldPre,
}

impl FilterComponent {
    /// The protocol whose `weir:filter` world it implements
    /// ([`Protocol::world`] names the world).
    pub fn world(&self) -> Protocol {
        self.pre.protocol()
    }
}

impl fmt::Debug for FilterComponent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FilterComponent").field("name", &self.name).finish()
    }
}

/// A component plus the configuration its instances are created with.
pub struct ConfiguredFilter {
    id: u64,
    pub name: Arc<str>,
    component: Arc<FilterComponent>,
    pub config: String,
    pub limits: FilterLimits,
    pub failure: FailurePolicy,
    runtime: Weak<FilterRuntime>,
    /// Instances hold a weak reference: they are swept once this is gone.
    alive: Arc<()>,
    /// Resolved once: a label lookup per call would cost more than the call.
    duration: prometheus_client::metrics::histogram::Histogram,
    /// Cleared when the filter answers `ignore-responses`.
    wants_responses: std::sync::atomic::AtomicBool,
    /// What its instances share (`state-*`, `take-tokens`): kept while this
    /// configuration is, so an instance replaced after a trap keeps it.
    state: Arc<state::Partition>,
}

impl fmt::Debug for ConfiguredFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfiguredFilter").field("name", &self.name).field("config", &self.config).finish()
    }
}

impl ConfiguredFilter {
    /// The same component with the same configuration: it shares instances
    /// (and so a filter's own state) with `other`.
    pub fn same_as(&self, other: &ConfiguredFilter) -> bool {
        Arc::ptr_eq(&self.component, &other.component) && self.config == other.config
    }

    pub fn on_request(
        &self,
        connection: ConnectionView,
        request: &http::Request,
    ) -> Result<http::RequestDecision, FilterFailure> {
        self.call(connection, |bindings, store, conn| {
            bindings.http()?.weir_filter_http_handler().call_on_request(store, conn, request)
        })
    }

    pub fn on_response(
        &self,
        connection: ConnectionView,
        response: &http::Response,
    ) -> Result<http::ResponseDecision, FilterFailure> {
        self.call(connection, |bindings, store, conn| {
            bindings.http()?.weir_filter_http_handler().call_on_response(store, conn, response)
        })
    }

    pub fn on_query(
        &self,
        connection: ConnectionView,
        query: &dns::Query,
    ) -> Result<dns::QueryDecision, FilterFailure> {
        self.call(connection, |bindings, store, conn| {
            bindings.dns()?.weir_filter_dns_handler().call_on_query(store, conn, query)
        })
    }

    pub fn on_kafka_request(
        &self,
        connection: ConnectionView,
        request: &kafka::Request,
    ) -> Result<kafka::RequestDecision, FilterFailure> {
        self.call(connection, |bindings, store, conn| {
            bindings.kafka()?.weir_filter_kafka_handler().call_on_request(store, conn, request)
        })
    }

    pub fn on_memcached_request(
        &self,
        connection: ConnectionView,
        request: &memcached::Request,
    ) -> Result<memcached::RequestDecision, FilterFailure> {
        self.call(connection, |bindings, store, conn| {
            bindings.memcached()?.weir_filter_memcached_handler().call_on_request(store, conn, request)
        })
    }

    pub fn on_cassandra_request(
        &self,
        connection: ConnectionView,
        request: &cassandra::Request,
    ) -> Result<cassandra::RequestDecision, FilterFailure> {
        self.call(connection, |bindings, store, conn| {
            bindings.cassandra()?.weir_filter_cassandra_handler().call_on_request(store, conn, request)
        })
    }

    pub fn world(&self) -> Protocol {
        self.component.world()
    }

    fn call<R>(
        &self,
        connection: ConnectionView,
        f: impl FnOnce(
            &WorldBindings,
            &mut wasmtime::Store<HostState>,
            wasmtime::component::Resource<ConnectionView>,
        ) -> wasmtime::Result<R>,
    ) -> Result<R, FilterFailure> {
        let result = instances::with_instance(self, |live| run(live, self.limits, connection, f));
        result.inspect_err(|failure| {
            if let Ok(runtime) = self.runtime() {
                self.count_failure(&runtime, failure)
            }
        })
    }

    /// The runtime this filter was configured in, unless it is shutting down.
    fn runtime(&self) -> Result<Arc<FilterRuntime>, FilterFailure> {
        self.runtime
            .upgrade()
            .ok_or_else(|| self.failure(FailureKind::Instantiate, "the filter runtime is shutting down".into()))
    }

    /// An instance for one connection alone (stream filters keep parser
    /// state in it), configured and ready. Such instances live as long as
    /// their connection, so they get only part of the pool, each filter a
    /// part of that, and each `client` address at most `per_client` of them.
    pub fn dedicated(self: &Arc<Self>, client: IpAddr, per_client: usize) -> Result<DedicatedInstance, FilterFailure> {
        let runtime = self.runtime()?;
        let purpose = slots::Use::Dedicated { filter: self.name.clone(), client, per_client };
        let live = instances::instantiate(&runtime, self, purpose)
            .map_err(|e| e.into_failure(self))
            .inspect_err(|f| self.count_failure(&runtime, f))?;
        Ok(DedicatedInstance { filter: self.clone(), live: Some(live) })
    }

    /// The linear memory of a fresh instance after `configure`: what an
    /// instance costs each worker before its first request.
    pub fn instance_memory(&self) -> Result<usize, FilterFailure> {
        let runtime = self.runtime()?;
        let live = instances::instantiate(&runtime, self, slots::Use::Shared).map_err(|e| e.into_failure(self))?;
        Ok(live.store.data().limits.size())
    }

    fn count_failure(&self, runtime: &FilterRuntime, failure: &FilterFailure) {
        runtime
            .metrics
            .filter_failures
            .get_or_create(&FilterFailureLabels { filter: self.name.to_string(), kind: failure.kind.as_str() })
            .inc();
        tracing::warn!(filter = &*self.name, kind = failure.kind.as_str(), "{}", failure.message);
    }

    /// Whether `on_response` is worth calling: false once the filter said
    /// it ignores responses.
    pub fn wants_responses(&self) -> bool {
        self.wants_responses.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn ignore_responses(&self) {
        self.wants_responses.store(false, std::sync::atomic::Ordering::Relaxed);
    }

    /// Record how long a call took. Callers time their calls anyway (for
    /// flow records), so the clock is read once per call, by them.
    pub fn observe_duration(&self, elapsed: Duration) {
        self.duration.observe(elapsed.as_secs_f64());
    }

    fn failure(&self, kind: FailureKind, message: String) -> FilterFailure {
        FilterFailure { filter: self.name.clone(), kind, message }
    }
}

impl Drop for ConfiguredFilter {
    /// No model uses this filter any more: its shared state goes, and its
    /// bytes go back to the runtime's budget at once (idle instances of it
    /// in the workers' pools hold the partition until they are swept).
    fn drop(&mut self) {
        self.state.clear();
    }
}

/// One guest call on a live instance, under the filter's CPU budget, with
/// `connection` lent for the call.
fn run<R>(
    live: &mut instances::LiveInstance,
    limits: FilterLimits,
    connection: ConnectionView,
    f: impl FnOnce(
        &WorldBindings,
        &mut wasmtime::Store<HostState>,
        wasmtime::component::Resource<ConnectionView>,
    ) -> wasmtime::Result<R>,
) -> wasmtime::Result<R> {
    live.store.data_mut().cpu = bindings::CpuBudget::start(limits.timeout);
    live.store.data_mut().limits.refused = false;
    live.store.set_epoch_deadline(deadline_ticks(limits.timeout));
    let table = &mut live.store.data_mut().table;
    let rep = match live.connection {
        Some(rep) => {
            let slot = wasmtime::component::Resource::<ConnectionView>::new_own(rep);
            *table.get_mut(&slot).map_err(wasmtime::Error::from)? = connection;
            rep
        }
        None => {
            let rep = table.push(connection).map_err(wasmtime::Error::from)?.rep();
            live.connection = Some(rep);
            rep
        }
    };
    // Lend the guest a transient borrow: an owned handle passed as a
    // borrow would be tracked in the store forever.
    let lent = wasmtime::component::Resource::<ConnectionView>::new_borrow(rep);
    // the epoch ticks while the guest runs (a guard would hold the store)
    live.store.data().clock.begin();
    let result = f(&live.bindings, &mut live.store, lent);
    live.store.data().clock.end();
    result
}

/// A filter instance owned by one connection. After a failed call it is
/// gone: every later call fails too (a guest that trapped is never reused,
/// and its parser state is lost with it).
pub struct DedicatedInstance {
    filter: Arc<ConfiguredFilter>,
    live: Option<instances::LiveInstance>,
}

impl DedicatedInstance {
    pub fn filter(&self) -> &Arc<ConfiguredFilter> {
        &self.filter
    }

    pub fn on_stream_data(
        &mut self,
        connection: ConnectionView,
        side: stream::Side,
        end_stream: bool,
        data: &[u8],
    ) -> Result<Vec<stream::Op>, FilterFailure> {
        let filter = &self.filter;
        let Some(live) = self.live.as_mut() else {
            return Err(filter.failure(FailureKind::Trap, "the connection's instance failed earlier".into()));
        };
        let result = run(live, filter.limits, connection, |bindings, store, conn| {
            bindings.stream()?.weir_filter_stream_handler().call_on_data(store, conn, side, end_stream, data)
        });
        let described = result.as_ref().err().map(|error| describe(error, live.store.data()));
        result.map_err(|_| {
            let (kind, message) = described.expect("an error was described");
            self.live = None;
            let failure = filter.failure(kind, message);
            if let Some(runtime) = filter.runtime.upgrade() {
                filter.count_failure(&runtime, &failure);
            }
            failure
        })
    }
}

/// Start a request head in the WIT encoding: the line
/// `METHOD path authority scheme\n`; `name: value\n` header lines follow it.
pub fn request_head_line(method: &str, path: &str, authority: &str, scheme: &str, header_bytes: usize) -> Vec<u8> {
    let mut head = Vec::with_capacity(method.len() + path.len() + authority.len() + scheme.len() + 4 + header_bytes);
    for (i, part) in [method, path, authority, scheme].into_iter().enumerate() {
        if i > 0 {
            head.push(b' ');
        }
        head.extend_from_slice(part.as_bytes());
    }
    head.push(b'\n');
    head
}

/// A connection for tests and benchmarks: world to world, port 80, ingress.
pub fn test_connection() -> ConnectionView {
    use crate::context::{ConnectionContext, Direction};
    use crate::identity::{Identity, reserved};
    let context = Arc::new(ConnectionContext {
        id: 1,
        source: Arc::new(Identity::reserved(reserved::WORLD)),
        destination: Arc::new(Identity::reserved(reserved::WORLD)),
        source_endpoint: None,
        destination_endpoint: None,
        source_addr: std::net::SocketAddr::from(([127, 0, 0, 2], 40000)),
        destination_addr: std::net::SocketAddr::from(([127, 0, 0, 1], 80)),
        port: 80,
        listener: "test".into(),
    });
    ConnectionView { context, direction: Direction::Ingress }
}

/// A request for tests and benchmarks: headers given as pairs.
pub fn test_request(method: &str, path: &str, authority: &str, headers: &[(&str, &str)]) -> http::Request {
    let mut head = request_head_line(method, path, authority, "http", 0);
    for (name, value) in headers {
        head.extend_from_slice(name.to_ascii_lowercase().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.push(b'\n');
    }
    http::Request { id: 1, head }
}

/// wasmtime 48 has its own error type; the binary edge speaks anyhow.
fn anyhow_error(e: wasmtime::Error) -> anyhow::Error {
    anyhow::anyhow!("{e:#}")
}

fn deadline_ticks(timeout: Duration) -> u64 {
    // +1: the current tick may be about to end
    (timeout.as_nanos() / EPOCH_TICK.as_nanos()).max(1) as u64 + 1
}

/// A failed guest call as the operator reads it: its kind, and for a
/// timeout the CPU time the call was charged against its budget.
fn describe(error: &wasmtime::Error, state: &HostState) -> (FailureKind, String) {
    let kind = classify(error, state);
    let message = match kind {
        FailureKind::Timeout => format!(
            "used {:.1} ms of CPU, budget {} ms: {error:#}",
            state.cpu.used().as_secs_f64() * 1e3,
            state.cpu.budget.as_millis()
        ),
        _ => format!("{error:#}"),
    };
    (kind, message)
}

/// Sort a wasmtime error from a guest call into what the operator must know.
fn classify(error: &wasmtime::Error, state: &HostState) -> FailureKind {
    if let Some(trap) = error.downcast_ref::<wasmtime::Trap>()
        && *trap == wasmtime::Trap::Interrupt
    {
        return FailureKind::Timeout;
    }
    // a guest that stops after its memory could not grow (Rust's allocator
    // aborts with `unreachable`) ran out of memory, whatever its last words
    if state.limits.refused {
        return FailureKind::Memory;
    }
    FailureKind::Trap
}

/// Bytes that are no WebAssembly at all, said plainly (the component
/// parser's own words would not say it).
fn not_webassembly(bytes: &[u8]) -> Option<String> {
    (!bytes.starts_with(b"\0asm")).then(|| "not a WebAssembly file (no \\0asm header)".into())
}
