//! Host side of the `weir:filter` WIT: generated bindings and the imports
//! every filter may call.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use wasmtime::ResourceLimiter;
use wasmtime::component::{Resource, ResourceTable};

use crate::context::{ConnectionContext, Direction};
use crate::identity::Identity;
use crate::observe::metrics::{FilterCounterLabels, Metrics};

wasmtime::component::bindgen!({
    world: "http-filter",
    path: "../wit",
    imports: { default: trappable },
    with: {
        "weir:filter/types.connection": ConnectionView,
    },
});

pub use self::weir::filter::http_types as http;
use self::weir::filter::{host, types};

/// The `dns-filter` world. Its imports (`types`, `host`) are the ones above:
/// one host implementation and one connection resource for every world.
pub mod dns_world {
    wasmtime::component::bindgen!({
        world: "dns-filter",
        path: "../wit",
        imports: { default: trappable },
        with: {
            "weir:filter/types": super::weir::filter::types,
            "weir:filter/host": super::weir::filter::host,
        },
    });
}

pub use dns_world::weir::filter::dns_types as dns;
pub use dns_world::{DnsFilter, DnsFilterPre};

/// The `kafka-filter` world, on the same shared imports.
pub mod kafka_world {
    wasmtime::component::bindgen!({
        world: "kafka-filter",
        path: "../wit",
        imports: { default: trappable },
        with: {
            "weir:filter/types": super::weir::filter::types,
            "weir:filter/host": super::weir::filter::host,
        },
    });
}

pub use kafka_world::weir::filter::kafka_types as kafka;
pub use kafka_world::{KafkaFilter, KafkaFilterPre};

/// The `memcached-filter` world, on the same shared imports.
pub mod memcached_world {
    wasmtime::component::bindgen!({
        world: "memcached-filter",
        path: "../wit",
        imports: { default: trappable },
        with: {
            "weir:filter/types": super::weir::filter::types,
            "weir:filter/host": super::weir::filter::host,
        },
    });
}

pub use memcached_world::weir::filter::memcached_types as memcached;
pub use memcached_world::{MemcachedFilter, MemcachedFilterPre};

/// The `cassandra-filter` world, on the same shared imports.
pub mod cassandra_world {
    wasmtime::component::bindgen!({
        world: "cassandra-filter",
        path: "../wit",
        imports: { default: trappable },
        with: {
            "weir:filter/types": super::weir::filter::types,
            "weir:filter/host": super::weir::filter::host,
        },
    });
}

pub use cassandra_world::weir::filter::cassandra_types as cassandra;
pub use cassandra_world::{CassandraFilter, CassandraFilterPre};

/// The `stream-filter` world, on the same shared imports.
pub mod stream_world {
    wasmtime::component::bindgen!({
        world: "stream-filter",
        path: "../wit",
        imports: { default: trappable },
        with: {
            "weir:filter/types": super::weir::filter::types,
            "weir:filter/host": super::weir::filter::host,
        },
    });
}

pub use stream_world::weir::filter::stream_types as stream;
pub use stream_world::{StreamFilter, StreamFilterPre};

/// What a filter sees of a connection: the shared context plus the direction
/// of the policy this filter enforces.
pub struct ConnectionView {
    pub context: Arc<ConnectionContext>,
    pub direction: Direction,
}

/// Most counter names one filter instance may create; beyond it increments
/// are dropped (a filter must not blow up metrics cardinality).
const MAX_COUNTER_NAMES: usize = 64;
const MAX_LOG_MESSAGE: usize = 4096;

/// Per-store state: one per filter instance.
pub struct HostState {
    pub table: ResourceTable,
    pub limits: MemoryLimit,
    pub filter_name: Arc<str>,
    pub metrics: Arc<Metrics>,
    counter_names: HashSet<String>,
    /// The configured filter's shared state (`state-*`, `take-tokens`).
    pub state: Arc<super::state::Partition>,
    /// The running call's CPU budget and the thread's CPU clock when it began.
    pub cpu: CpuBudget,
    /// Told of every call, so the epoch ticks while one runs.
    pub clock: Arc<super::epoch::EpochClock>,
}

thread_local! {
    /// Filter logs of the calls on this thread while [`capture_logs`] runs.
    static CAPTURED_LOGS: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

/// Run `f`, returning beside its result the log lines filters wrote during
/// it on this thread (they go to weir's log as always): `weir filter test`
/// shows them under the case that failed.
pub fn capture_logs<R>(f: impl FnOnce() -> R) -> (R, Vec<String>) {
    let outer = CAPTURED_LOGS.replace(Some(Vec::new()));
    let result = f();
    let logs = CAPTURED_LOGS.replace(outer).unwrap_or_default();
    (result, logs)
}

/// A filter's memory budget. Growth past it fails (`memory.grow` returns
/// -1) rather than trapping at once: a garbage-collected guest (a
/// JavaScript filter's engine) collects and carries on, as it would on any
/// machine short of memory. A guest that gives up traps, and that trap is
/// an out-of-memory failure because growth was refused during the call.
pub struct MemoryLimit {
    max: usize,
    /// The linear memory's size now, and before the growth in progress.
    size: usize,
    before: usize,
    /// Its size once `configure` returned: what the instance needs.
    baseline: usize,
    /// Growth was refused (or failed) since the running call began.
    pub refused: bool,
}

impl MemoryLimit {
    pub fn new(max: usize) -> Self {
        MemoryLimit { max, size: 0, before: 0, baseline: 0, refused: false }
    }

    /// `configure` returned: what the instance holds now is its own, not
    /// growth from calls.
    pub fn configured(&mut self) {
        self.baseline = self.size;
    }

    /// The linear memory's size now, in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Whether the instance has used most of its budget. Such an instance
    /// is retired after its call and the next call gets a fresh one: a
    /// guest whose memory only grows (a JavaScript engine whose collector
    /// never runs between calls, a leak in a Rust filter) keeps serving
    /// instead of failing a request when it reaches the limit.
    ///
    /// "Most" is 3/4 of what the budget leaves above the instance's size
    /// after `configure`, so an instance that starts big (a JavaScript
    /// engine holds 9 MiB) is not retired after every call.
    pub fn nearly_full(&self) -> bool {
        let headroom = self.max.saturating_sub(self.baseline);
        self.size > self.baseline + headroom / 4 * 3
    }
}

impl ResourceLimiter for MemoryLimit {
    fn memory_growing(&mut self, _current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        // past the budget, or past the module's own maximum
        let fits = desired <= self.max && maximum.is_none_or(|m| desired <= m);
        self.refused |= !fits;
        if fits {
            (self.before, self.size) = (self.size, desired);
        }
        Ok(fits)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        // allowed here, but the host could not map it: the guest sees -1
        tracing::debug!("a filter's memory could not grow: {error:#}");
        (self.size, self.refused) = (self.before, true);
        Ok(())
    }

    fn table_growing(&mut self, _current: usize, _desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        // tables are bounded by the pooling allocator's slots
        Ok(true)
    }
}

/// A call's deadline counts the CPU time of the thread running it, not wall
/// time: a worker preempted on a busy node must not time out a healthy
/// filter. The epoch tick only wakes the store's deadline callback, which
/// asks [`CpuBudget::spent`] — so the CPU clock (a syscall, ~0.7 µs here) is
/// read only for calls that overrun, and at call start at most once per
/// millisecond per thread.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBudget {
    pub budget: Duration,
    /// The thread's CPU clock when the call began, or a little later: never
    /// earlier, so a healthy call is never charged for time it did not use.
    pub started: Duration,
}

/// How stale the per-thread CPU clock sample may be at a call's start; the
/// budget's precision (a spinning call stops at most this much late).
const CPU_SAMPLE_AGE: Duration = Duration::from_millis(1);

thread_local! {
    /// `(when, thread CPU clock then)`.
    static CPU_SAMPLE: Cell<Option<(Instant, Duration)>> = const { Cell::new(None) };
}

impl CpuBudget {
    pub fn start(budget: Duration) -> Self {
        let now = Instant::now();
        let (at, cpu) = match CPU_SAMPLE.get() {
            Some((at, cpu)) if now.duration_since(at) < CPU_SAMPLE_AGE => (at, cpu),
            _ => {
                let sample = (now, thread_cpu_time());
                CPU_SAMPLE.set(Some(sample));
                sample
            }
        };
        // the thread used at most the wall time since the sample
        CpuBudget { budget, started: cpu + now.duration_since(at) }
    }

    /// Whether the call has used up its budget.
    pub fn spent(&self) -> bool {
        self.used() >= self.budget
    }

    /// CPU time the call has used so far (at most: see `started`).
    pub fn used(&self) -> Duration {
        thread_cpu_time().saturating_sub(self.started)
    }
}

/// CPU time consumed by the calling thread.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec through a valid pointer
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

impl HostState {
    pub fn new(
        filter_name: Arc<str>,
        limits: MemoryLimit,
        metrics: Arc<Metrics>,
        state: Arc<super::state::Partition>,
        clock: Arc<super::epoch::EpochClock>,
    ) -> Self {
        HostState {
            table: ResourceTable::new(),
            limits,
            filter_name,
            metrics,
            counter_names: HashSet::new(),
            state,
            cpu: CpuBudget::default(),
            clock,
        }
    }

    pub fn limiter(&mut self) -> &mut dyn ResourceLimiter {
        &mut self.limits
    }
}

impl types::Host for HostState {}

impl http::Host for HostState {}

impl dns::Host for HostState {}

impl kafka::Host for HostState {}

impl memcached::Host for HostState {}

impl cassandra::Host for HostState {}

impl stream::Host for HostState {}

fn identity(id: &Identity) -> types::Identity {
    types::Identity { id: id.id, labels: id.label_strings().to_vec() }
}

fn socket_address(addr: std::net::SocketAddr) -> types::SocketAddress {
    let ip = match crate::identity::canonical(addr.ip()) {
        std::net::IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            types::IpAddress::Ipv4((a, b, c, d))
        }
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            types::IpAddress::Ipv6((s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]))
        }
    };
    types::SocketAddress { ip, port: addr.port() }
}

impl types::HostConnection for HostState {
    fn id(&mut self, this: Resource<ConnectionView>) -> wasmtime::Result<u64> {
        Ok(self.table.get(&this)?.context.id)
    }

    fn direction(&mut self, this: Resource<ConnectionView>) -> wasmtime::Result<types::Direction> {
        Ok(match self.table.get(&this)?.direction {
            Direction::Ingress => types::Direction::Ingress,
            Direction::Egress => types::Direction::Egress,
        })
    }

    fn source(&mut self, this: Resource<ConnectionView>) -> wasmtime::Result<types::Identity> {
        Ok(identity(&self.table.get(&this)?.context.source))
    }

    fn destination(&mut self, this: Resource<ConnectionView>) -> wasmtime::Result<types::Identity> {
        Ok(identity(&self.table.get(&this)?.context.destination))
    }

    fn source_address(&mut self, this: Resource<ConnectionView>) -> wasmtime::Result<types::SocketAddress> {
        Ok(socket_address(self.table.get(&this)?.context.source_addr))
    }

    fn destination_address(&mut self, this: Resource<ConnectionView>) -> wasmtime::Result<types::SocketAddress> {
        Ok(socket_address(self.table.get(&this)?.context.destination_addr))
    }

    fn port(&mut self, this: Resource<ConnectionView>) -> wasmtime::Result<u16> {
        Ok(self.table.get(&this)?.context.port)
    }

    /// Filters only ever borrow connections; the host removes the entry after
    /// each call, so there is nothing to drop here.
    fn drop(&mut self, _this: Resource<ConnectionView>) -> wasmtime::Result<()> {
        Ok(())
    }
}

impl host::Host for HostState {
    fn log(&mut self, level: host::LogLevel, message: String) -> wasmtime::Result<()> {
        let mut message = message;
        if message.len() > MAX_LOG_MESSAGE {
            let mut cut = MAX_LOG_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        let filter = &*self.filter_name;
        CAPTURED_LOGS.with_borrow_mut(|captured| {
            if let Some(lines) = captured {
                let name = match level {
                    host::LogLevel::Trace => "trace",
                    host::LogLevel::Debug => "debug",
                    host::LogLevel::Info => "info",
                    host::LogLevel::Warn => "warn",
                    host::LogLevel::Error => "error",
                };
                lines.push(format!("{name}: {message}"));
            }
        });
        match level {
            host::LogLevel::Trace => tracing::trace!(filter, "{message}"),
            host::LogLevel::Debug => tracing::debug!(filter, "{message}"),
            host::LogLevel::Info => tracing::info!(filter, "{message}"),
            host::LogLevel::Warn => tracing::warn!(filter, "{message}"),
            host::LogLevel::Error => tracing::error!(filter, "{message}"),
        }
        Ok(())
    }

    fn counter_add(&mut self, name: String, delta: u64) -> wasmtime::Result<()> {
        if !self.counter_names.contains(&name) {
            if self.counter_names.len() >= MAX_COUNTER_NAMES || name.len() > 64 {
                tracing::debug!(filter = &*self.filter_name, name, "counter dropped: too many names or name too long");
                return Ok(());
            }
            self.counter_names.insert(name.clone());
        }
        self.metrics
            .filter_counters
            .get_or_create(&FilterCounterLabels { filter: self.filter_name.to_string(), name })
            .inc_by(delta);
        Ok(())
    }

    fn monotonic_now(&mut self) -> wasmtime::Result<u64> {
        static START: OnceLock<Instant> = OnceLock::new();
        Ok(START.get_or_init(Instant::now).elapsed().as_nanos() as u64)
    }

    fn state_get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        Ok(self.state.get(&key))
    }

    fn state_set(&mut self, key: String, value: Option<Vec<u8>>, ttl_ms: u64) -> wasmtime::Result<bool> {
        Ok(self.state.set(&key, value, Duration::from_millis(ttl_ms)))
    }

    fn state_compare_and_swap(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        new: Option<Vec<u8>>,
        ttl_ms: u64,
    ) -> wasmtime::Result<bool> {
        Ok(self.state.compare_and_swap(&key, expected.as_deref(), new, Duration::from_millis(ttl_ms)))
    }

    fn take_tokens(&mut self, key: String, rate: u32, burst: u32, cost: u32) -> wasmtime::Result<bool> {
        Ok(self.state.take_tokens(&key, rate, burst, cost))
    }
}
