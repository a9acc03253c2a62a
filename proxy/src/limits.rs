//! What keeps slow, idle or greedy clients from starving the proxy
//! ([docs/limits.md](../../docs/limits.md)):
//!
//! - **descriptors**: the soft `RLIMIT_NOFILE` is raised to the hard limit at
//!   start, and a process-wide connection budget is derived from it that
//!   leaves descriptors for upstream dials and the admin API;
//! - **admission**: every accepted connection is counted against that
//!   budget, its listener's `max_connections` and its source's
//!   `max_connections_per_identity`; past any of them it is refused (reset)
//!   with a flow record and `weir_connections_refused_total`;
//! - **idle timeouts** for the relaying engines ([`Idle`]);
//! - **buffered request bytes**, per connection and in total ([`Held`]).

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::identity::{Identity, reserved};

/// Defaults, chosen against what the servers behind weir do (docs/limits.md).
pub const DEFAULT_MAX_CONNECTIONS_PER_LISTENER: usize = 10_000;
pub const DEFAULT_MAX_CONNECTIONS_PER_IDENTITY: usize = 1_000;
/// nginx's `client_header_timeout` is 60 s, Apache's `RequestReadTimeout` 20 s.
pub const DEFAULT_REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Kafka closes connections idle for 10 minutes (`connections.max.idle.ms`);
/// drivers of Cassandra send a heartbeat every 30 s.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Cassandra 4's `native_transport_max_frame_size`; Kafka's producers send
/// 1 MiB (`max.request.size`), memcached stores 1 MiB items by default.
pub const DEFAULT_MAX_REQUEST: usize = 16 << 20;
pub const DEFAULT_MAX_BUFFERED: usize = 256 << 20;
pub const DEFAULT_FILTER_INSTANCES_PER_CLIENT: usize = 200;

/// Every connection may buffer this much without reserving from the
/// process budget: one read's worth, which the connection limits bound.
const FREE_BYTES: usize = 128 << 10;

/// `limits:` in weir.yaml: the process-wide limits, and the defaults of
/// every listener's (which `listeners[].limits` overrides).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Client connections open at once in the whole process. Default (and
    /// upper bound): what the descriptor limit leaves room for.
    pub max_connections: Option<usize>,
    /// Request bytes all connections may hold buffered together.
    #[serde(with = "opt_bytes")]
    pub max_buffered: Option<usize>,
    /// Stream-filter instances one client address may hold (one per open
    /// connection through a stream filter).
    pub filter_instances_per_client: Option<usize>,
    /// Filter instances alive at once, all filters together (the instance
    /// pool; read at start). Default 1000.
    pub filter_instances: Option<u32>,
    /// Defaults for each listener.
    pub max_connections_per_listener: Option<usize>,
    pub max_connections_per_identity: Option<usize>,
    #[serde(with = "opt_duration")]
    pub request_head_timeout: Option<Duration>,
    #[serde(with = "opt_duration")]
    pub idle_timeout: Option<Duration>,
    #[serde(with = "opt_bytes")]
    pub max_request: Option<usize>,
}

/// `listeners[].limits`: this listener's own, over the `limits:` defaults.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerLimitsConfig {
    pub max_connections: Option<usize>,
    pub max_connections_per_identity: Option<usize>,
    #[serde(with = "opt_duration")]
    pub request_head_timeout: Option<Duration>,
    #[serde(with = "opt_duration")]
    pub idle_timeout: Option<Duration>,
    #[serde(with = "opt_bytes")]
    pub max_request: Option<usize>,
}

/// One listener's limits after defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerLimits {
    pub max_connections: usize,
    pub max_connections_per_identity: usize,
    /// `None`: no timeout (configured as 0).
    pub request_head_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    /// Most bytes one connection may hold buffered (one request, or the
    /// frames read ahead of it).
    pub max_request: usize,
}

impl ListenerLimits {
    pub fn of(global: &LimitsConfig, listener: &ListenerLimitsConfig) -> Self {
        let nonzero = |d: Duration| (!d.is_zero()).then_some(d);
        ListenerLimits {
            max_connections: listener
                .max_connections
                .or(global.max_connections_per_listener)
                .unwrap_or(DEFAULT_MAX_CONNECTIONS_PER_LISTENER),
            max_connections_per_identity: listener
                .max_connections_per_identity
                .or(global.max_connections_per_identity)
                .unwrap_or(DEFAULT_MAX_CONNECTIONS_PER_IDENTITY),
            request_head_timeout: nonzero(
                listener.request_head_timeout.or(global.request_head_timeout).unwrap_or(DEFAULT_REQUEST_HEAD_TIMEOUT),
            ),
            idle_timeout: nonzero(listener.idle_timeout.or(global.idle_timeout).unwrap_or(DEFAULT_IDLE_TIMEOUT)),
            max_request: listener.max_request.or(global.max_request).unwrap_or(DEFAULT_MAX_REQUEST),
        }
    }
}

impl LimitsConfig {
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("max_connections", self.max_connections),
            ("max_buffered", self.max_buffered),
            ("filter_instances_per_client", self.filter_instances_per_client),
            ("filter_instances", self.filter_instances.map(|n| n as usize)),
            ("max_connections_per_listener", self.max_connections_per_listener),
            ("max_connections_per_identity", self.max_connections_per_identity),
            ("max_request", self.max_request),
        ];
        for (field, value) in positive {
            if value == Some(0) {
                return Err(format!("limits.{field}: must be at least 1"));
            }
        }
        if let Some(n) = self.filter_instances
            && n < 32
        {
            return Err(format!(
                "limits.filter_instances: at least 32 (16 are kept for configuration checks), not {n}"
            ));
        }
        Ok(())
    }
}

impl ListenerLimitsConfig {
    pub fn validate(&self) -> Result<(), String> {
        for (field, value) in [
            ("max_connections", self.max_connections),
            ("max_connections_per_identity", self.max_connections_per_identity),
            ("max_request", self.max_request),
        ] {
            if value == Some(0) {
                return Err(format!("limits.{field}: must be at least 1"));
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- descriptors

/// What the descriptor limit allows, found at start.
#[derive(Clone, Copy, Debug)]
pub struct Descriptors {
    /// The soft limit in force (after raising it).
    pub limit: u64,
    /// Client connections the process takes at most.
    pub connection_budget: usize,
}

impl Descriptors {
    /// Raise the soft `RLIMIT_NOFILE` to the hard limit, log both, and derive
    /// the connection budget: a relayed client connection costs two
    /// descriptors (its own and its upstream's), and a reserve is kept for
    /// the admin API, listener sockets, DNS upstream sockets and files.
    pub fn raise() -> Self {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes into the struct we own.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
            tracing::warn!("cannot read RLIMIT_NOFILE: {}", std::io::Error::last_os_error());
            return Descriptors::for_limit(1024);
        }
        let (soft, hard) = (limit.rlim_cur, limit.rlim_max);
        // an unlimited hard limit still stops at the kernel's fs.nr_open
        let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open").ok().and_then(|t| t.trim().parse().ok());
        let target = nr_open.map_or(hard, |n: u64| hard.min(n));
        let mut raised = soft;
        if soft < target {
            let wanted = libc::rlimit { rlim_cur: target, rlim_max: hard };
            // SAFETY: setrlimit reads the struct we own.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) } == 0 {
                raised = target;
            } else {
                tracing::warn!(soft, hard, "cannot raise RLIMIT_NOFILE: {}", std::io::Error::last_os_error());
            }
        }
        let descriptors = Descriptors::for_limit(raised);
        tracing::info!(
            soft_before = soft,
            hard,
            soft = raised,
            connection_budget = descriptors.connection_budget,
            "file descriptor limit"
        );
        descriptors
    }

    pub fn for_limit(limit: u64) -> Self {
        // RLIM_INFINITY and absurd hard limits: budget as if a million
        let usable = limit.min(1 << 20) as usize;
        let reserve = (usable / 16).max(64);
        Descriptors { limit, connection_budget: (usable.saturating_sub(reserve) / 2).max(1) }
    }
}

// ------------------------------------------------------------------ admission

/// Why a connection was refused at accept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The process-wide budget (descriptors, or `limits.max_connections`).
    Process { max: usize },
    /// The listener's `max_connections`.
    Listener { max: usize },
    /// The source's `max_connections_per_identity` on this listener.
    Identity { max: usize, source: String },
    /// Client and busy upstream sockets hold every descriptor weir may use.
    Descriptors { in_use: usize },
}

impl Refused {
    /// The `reason` label of `weir_connections_refused_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Refused::Process { .. } | Refused::Descriptors { .. } => "process_limit",
            Refused::Listener { .. } => "listener_limit",
            Refused::Identity { .. } => "identity_limit",
        }
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Process { max } => {
                write!(f, "refused: weir has {max} connections open, its limit (descriptors or limits.max_connections)")
            }
            Refused::Descriptors { in_use } => {
                write!(f, "refused: weir's client and upstream connections hold {in_use} descriptors, all it may use")
            }
            Refused::Listener { max } => {
                write!(f, "refused: the listener has {max} connections open (its max_connections)")
            }
            Refused::Identity { max, source } => {
                write!(
                    f,
                    "refused: {source} has {max} connections open to this listener (max_connections_per_identity)"
                )
            }
        }
    }
}

/// Who counts as one source for `max_connections_per_identity`: an identity,
/// or for `reserved:world` (everyone outside the cluster) each address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum SourceKey {
    Identity(u32),
    World(IpAddr),
}

#[derive(Debug, Default)]
struct ListenerCount {
    open: usize,
    by_source: HashMap<SourceKey, usize>,
}

/// Open connections by listener and source, and in total.
#[derive(Debug, Default)]
pub struct Admission {
    open: AtomicUsize,
    /// Upstream sockets: relayed connections' and every HTTP/1.1 pool
    /// connection, in use or idle. An HTTP/2 client's streams may each need
    /// one, and a pooled one outlives its client, so they are counted, not
    /// assumed one per client.
    upstream: AtomicUsize,
    listeners: Mutex<HashMap<Arc<str>, ListenerCount>>,
    /// Pools whose idle connections give way to new sockets.
    idle: Mutex<Vec<std::sync::Weak<dyn IdleUpstreams>>>,
    /// Their idle connections, all pools together: with none, nothing is
    /// scanned (a flood of busy sockets makes every dial look).
    idle_connections: AtomicUsize,
}

/// Idle upstream connections weir may close when descriptors run short
/// (the HTTP/1.1 pools).
pub trait IdleUpstreams: Send + Sync {
    /// Close up to `n` idle connections, the longest idle first; how many.
    fn close_idle(&self, n: usize) -> usize;
    /// Since when its longest-idle connection has idled, if it has one.
    fn idle_since(&self) -> Option<Instant>;
}

/// An upstream socket counted while it lives.
#[derive(Debug)]
pub struct UpstreamSlot {
    state: Arc<Limits>,
}

impl Drop for UpstreamSlot {
    fn drop(&mut self) {
        self.state.admission.upstream.fetch_sub(1, Ordering::Relaxed);
    }
}

/// No descriptor is left for another upstream socket.
#[derive(Debug, thiserror::Error)]
#[error("weir has {open} client and upstream connections open, what its descriptors allow")]
pub struct NoUpstreamSlot {
    pub open: usize,
}

/// A connection counted while it lives.
#[derive(Debug)]
pub struct Admitted {
    state: Arc<Limits>,
    listener: Arc<str>,
    source: SourceKey,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let admission = &self.state.admission;
        admission.open.fetch_sub(1, Ordering::Relaxed);
        let mut listeners = admission.listeners.lock().unwrap();
        if let Some(count) = listeners.get_mut(&self.listener) {
            count.open -= 1;
            if let Some(n) = count.by_source.get_mut(&self.source) {
                *n -= 1;
                if *n == 0 {
                    count.by_source.remove(&self.source);
                }
            }
            if count.open == 0 {
                listeners.remove(&self.listener);
            }
        }
    }
}

// ---------------------------------------------------------------- the budgets

/// The process's limits state, shared by every listener.
#[derive(Debug)]
pub struct Limits {
    pub descriptors: Descriptors,
    pub admission: Admission,
    pub buffered: ByteBudget,
}

impl Limits {
    pub fn new(descriptors: Descriptors) -> Arc<Self> {
        Arc::new(Limits {
            descriptors,
            admission: Admission::default(),
            buffered: ByteBudget::new(DEFAULT_MAX_BUFFERED),
        })
    }

    /// Count a new connection on `listener` from `source`, or say why not.
    pub fn admit(
        self: &Arc<Self>,
        config: &LimitsConfig,
        limits: &ListenerLimits,
        listener: &Arc<str>,
        source: &Identity,
        peer: SocketAddr,
    ) -> Result<Admitted, Refused> {
        // the process-wide settings follow the model in force
        self.buffered.set_max(config.max_buffered.unwrap_or(DEFAULT_MAX_BUFFERED));
        let process_max = config.max_connections.unwrap_or(usize::MAX).min(self.descriptors.connection_budget);
        let key =
            if source.id == reserved::WORLD { SourceKey::World(peer.ip()) } else { SourceKey::Identity(source.id) };
        let admission = &self.admission;
        let mut listeners = admission.listeners.lock().unwrap();
        if admission.open.load(Ordering::Relaxed) >= process_max {
            return Err(Refused::Process { max: process_max });
        }
        let count = listeners.entry(listener.clone()).or_default();
        if count.open >= limits.max_connections {
            return Err(Refused::Listener { max: limits.max_connections });
        }
        let from_source = count.by_source.get(&key).copied().unwrap_or(0);
        if from_source >= limits.max_connections_per_identity {
            let source = match key {
                SourceKey::World(ip) => format!("reserved:world {ip}"),
                SourceKey::Identity(id) => format!("identity {id}"),
            };
            return Err(Refused::Identity { max: limits.max_connections_per_identity, source });
        }
        // last, so a client refused for another reason closes nothing: a
        // client needs a descriptor for itself and one for its upstream;
        // idle pooled connections give way (they close within moments: the
        // reserve covers the overlap), busy upstream sockets do not
        let (max, in_use) = (self.descriptors_for_connections(), self.descriptors_in_use());
        if in_use + 2 > max && in_use + 2 - self.close_idle_upstreams(in_use + 2 - max) > max {
            return Err(Refused::Descriptors { in_use });
        }
        count.open += 1;
        *count.by_source.entry(key.clone()).or_default() += 1;
        admission.open.fetch_add(1, Ordering::Relaxed);
        Ok(Admitted { state: self.clone(), listener: listener.clone(), source: key })
    }

    pub fn open_connections(&self) -> usize {
        self.admission.open.load(Ordering::Relaxed)
    }

    /// The descriptors client and upstream sockets may take together: all
    /// but the reserve.
    fn descriptors_for_connections(&self) -> usize {
        self.descriptors.connection_budget * 2
    }

    /// Client and upstream sockets open.
    fn descriptors_in_use(&self) -> usize {
        self.admission.open.load(Ordering::Relaxed) + self.admission.upstream.load(Ordering::Relaxed)
    }

    /// A pool whose idle connections may be closed for new sockets.
    pub fn register_idle(&self, pool: std::sync::Weak<dyn IdleUpstreams>) {
        let mut pools = self.admission.idle.lock().unwrap();
        pools.retain(|p| p.strong_count() > 0);
        pools.push(pool);
    }

    /// A pool's idle connections grew or shrank by `n`.
    pub fn idle_added(&self, n: usize) {
        self.admission.idle_connections.fetch_add(n, Ordering::Relaxed);
    }

    pub fn idle_removed(&self, n: usize) {
        self.admission.idle_connections.fetch_sub(n, Ordering::Relaxed);
    }

    /// Close up to `n` idle pooled upstream connections, the longest idle
    /// of all pools first; how many. Their descriptors come free when
    /// their tasks end (at once: they are aborted).
    fn close_idle_upstreams(&self, n: usize) -> usize {
        if self.admission.idle_connections.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        let pools: Vec<_> = self.admission.idle.lock().unwrap().iter().filter_map(|p| p.upgrade()).collect();
        let mut closed = 0;
        while closed < n {
            let oldest = pools.iter().filter_map(|p| Some((p.idle_since()?, p))).min_by_key(|(since, _)| *since);
            let Some((_, pool)) = oldest else { break };
            closed += pool.close_idle(1);
        }
        closed
    }

    /// [`Limits::upstream_slot`], closing idle pooled connections for it
    /// when there is none, and waiting (briefly) for one to come free.
    pub async fn upstream_slot_or_make_room(self: &Arc<Self>) -> Result<UpstreamSlot, NoUpstreamSlot> {
        let mut full = match self.upstream_slot() {
            Ok(slot) => return Ok(slot),
            Err(full) => full,
        };
        if self.close_idle_upstreams(1) == 0 {
            return Err(full);
        }
        // a descriptor freed may go to another dial that came meanwhile:
        // close one more for each look that found none, while any idles
        let mut closable = true;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(2)).await;
            match self.upstream_slot() {
                Ok(slot) => return Ok(slot),
                Err(still) => full = still,
            }
            if closable {
                closable = self.close_idle_upstreams(1) > 0;
            }
        }
        Err(full)
    }

    /// Count an upstream socket about to be opened, if the descriptors
    /// allow: client and upstream sockets together stay within twice the
    /// connection budget, so the reserve (admin API, listeners, DNS, files)
    /// is never spent on upstreams, whoever asks for them.
    pub fn upstream_slot(self: &Arc<Self>) -> Result<UpstreamSlot, NoUpstreamSlot> {
        let max = self.descriptors_for_connections();
        let taken = self.admission.upstream.fetch_add(1, Ordering::Relaxed);
        let open = self.admission.open.load(Ordering::Relaxed) + taken;
        if open >= max {
            self.admission.upstream.fetch_sub(1, Ordering::Relaxed);
            return Err(NoUpstreamSlot { open });
        }
        Ok(UpstreamSlot { state: self.clone() })
    }
}

// --------------------------------------------------------------- idle clients

/// When a connection last moved bytes; [`Idle::guard`] ends a read that
/// waits longer than the timeout since then. Both directions count, so a
/// request still waiting for its answer is not idle until the answer is as
/// late as the timeout.
pub struct Idle {
    /// Milliseconds; 0: no timeout.
    timeout_ms: AtomicU64,
    origin: Instant,
    /// Milliseconds since `origin` at the last activity.
    last: AtomicU64,
}

/// A connection closed for idling, with the timeout for its flow record.
#[derive(Debug)]
pub struct IdleTimeout(pub Duration);

impl std::fmt::Display for IdleTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the client sent nothing for {} (idle_timeout)", crate::units::duration::format(self.0))
    }
}

impl Default for Idle {
    fn default() -> Self {
        Idle { timeout_ms: AtomicU64::new(0), origin: Instant::now(), last: AtomicU64::new(0) }
    }
}

impl Idle {
    pub fn set_timeout(&self, timeout: Option<Duration>) {
        let ms = timeout.map_or(0, |t| (t.as_millis() as u64).max(1));
        self.timeout_ms.store(ms, Ordering::Relaxed);
        self.touch();
    }

    /// Bytes moved: the connection is not idle.
    pub fn touch(&self) {
        self.last.store(self.origin.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// `read`, unless the connection stays idle for the timeout first. `read`
    /// must be cancel-safe (a partial read stays in its buffer).
    pub async fn guard<F: Future>(&self, read: F) -> Result<F::Output, IdleTimeout> {
        let timeout = match self.timeout_ms.load(Ordering::Relaxed) {
            0 => return Ok(read.await),
            ms => Duration::from_millis(ms),
        };
        tokio::select! {
            out = read => {
                self.touch();
                Ok(out)
            }
            () = self.expired(timeout) => Err(IdleTimeout(timeout)),
        }
    }

    async fn expired(&self, timeout: Duration) {
        loop {
            let last = self.origin + Duration::from_millis(self.last.load(Ordering::Relaxed));
            let deadline = last + timeout;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    }
}

// ------------------------------------------------------------ buffered bytes

/// Request bytes held in connection buffers, process-wide.
#[derive(Debug)]
pub struct ByteBudget {
    used: AtomicUsize,
    max: AtomicUsize,
}

impl ByteBudget {
    pub fn new(max: usize) -> Self {
        ByteBudget { used: AtomicUsize::new(0), max: AtomicUsize::new(max) }
    }

    fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn try_take(&self, n: usize) -> bool {
        let max = self.max.load(Ordering::Relaxed);
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |used| (used + n <= max).then_some(used + n))
            .is_ok()
    }

    fn give_back(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// One connection's share of the [`ByteBudget`]: what its request buffer
/// may hold. Frame readers call [`Held::cover`] with what the buffer will
/// hold before they read more into it, so a frame that declares a large
/// body can only be buffered as far as the budgets allow.
pub struct Held {
    limits: Arc<Limits>,
    max: usize,
    held: usize,
}

/// Why a connection may not buffer more.
#[derive(Debug)]
pub enum OverBudget {
    /// Over the listener's `max_request`.
    Connection { max: usize },
    /// Every connection together holds `limits.max_buffered`.
    Process { max: usize },
}

impl std::fmt::Display for OverBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let size = format_size;
        match self {
            OverBudget::Connection { max } => {
                write!(f, "a request over {} (limits.max_request)", size(*max))
            }
            OverBudget::Process { max } => {
                write!(f, "weir's buffers are full ({} held by all connections, limits.max_buffered)", size(*max))
            }
        }
    }
}

impl Held {
    pub fn new(limits: &Arc<Limits>, max_request: usize) -> Self {
        Held { limits: limits.clone(), max: max_request, held: 0 }
    }

    /// The most one request may take on this connection.
    pub fn max_request(&self) -> usize {
        self.max
    }

    /// Make the reservation fit a buffer of `bytes` (growing or shrinking it).
    pub fn cover(&mut self, bytes: usize) -> Result<(), OverBudget> {
        if bytes > self.max.saturating_add(FREE_BYTES) {
            return Err(OverBudget::Connection { max: self.max });
        }
        let wanted = bytes.saturating_sub(FREE_BYTES);
        let budget = &self.limits.buffered;
        if wanted > self.held {
            if !budget.try_take(wanted - self.held) {
                return Err(OverBudget::Process { max: budget.max.load(Ordering::Relaxed) });
            }
        } else {
            budget.give_back(self.held - wanted);
        }
        self.held = wanted;
        Ok(())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.limits.buffered.give_back(self.held);
    }
}

fn format_size(n: usize) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{}MiB", n >> 20)
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        format!("{}KiB", n >> 10)
    } else {
        format!("{n}B")
    }
}

// ------------------------------------------------------------- serde helpers

mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => crate::units::duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        #[derive(Deserialize)]
        struct Wrapped(#[serde(with = "crate::units::duration")] Duration);
        Ok(Option::<Wrapped>::deserialize(d)?.map(|w| w.0))
    }
}

mod opt_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(n: &Option<usize>, s: S) -> Result<S::Ok, S::Error> {
        match n {
            Some(n) => crate::units::bytes::serialize(n, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
        #[derive(Deserialize)]
        struct Wrapped(#[serde(with = "crate::units::bytes")] usize);
        Ok(Option::<Wrapped>::deserialize(d)?.map(|w| w.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Arc<Limits> {
        Limits::new(Descriptors::for_limit(256))
    }

    #[test]
    fn the_budget_leaves_descriptors_for_upstreams_and_the_admin_api() {
        let d = Descriptors::for_limit(256);
        assert_eq!(d.connection_budget, (256 - 64) / 2);
        assert!(Descriptors::for_limit(u64::MAX).connection_budget < 1 << 20);
    }

    #[test]
    fn admission_counts_per_listener_and_identity_and_forgets_closed_connections() {
        let state = limits();
        let config = LimitsConfig::default();
        let per = ListenerLimits {
            max_connections: 3,
            max_connections_per_identity: 2,
            ..ListenerLimits::of(&config, &Default::default())
        };
        let listener: Arc<str> = Arc::from("l");
        let a = Identity::reserved(reserved::HOST);
        let peer: SocketAddr = "127.0.0.2:1".parse().unwrap();
        let first = state.admit(&config, &per, &listener, &a, peer).unwrap();
        let _second = state.admit(&config, &per, &listener, &a, peer).unwrap();
        assert!(matches!(state.admit(&config, &per, &listener, &a, peer), Err(Refused::Identity { max: 2, .. })));
        let world = Identity::reserved(reserved::WORLD);
        let _third = state.admit(&config, &per, &listener, &world, peer).unwrap();
        assert_eq!(state.admit(&config, &per, &listener, &world, peer).unwrap_err(), Refused::Listener { max: 3 });
        drop(first);
        let _again = state.admit(&config, &per, &listener, &a, peer).unwrap();
        assert_eq!(state.open_connections(), 3);
    }

    #[test]
    fn upstream_sockets_share_the_descriptors_with_clients_and_spare_the_reserve() {
        let state = limits();
        let config = LimitsConfig::default();
        let per = ListenerLimits::of(&config, &Default::default());
        let listener: Arc<str> = Arc::from("l");
        let peer: SocketAddr = "127.0.0.2:1".parse().unwrap();
        let client = state.admit(&config, &per, &listener, &Identity::reserved(reserved::HOST), peer).unwrap();
        // one client's HTTP/2 streams may take what is left, and no more
        let max = state.descriptors_for_connections();
        let mut slots: Vec<_> = (1..max).map(|_| state.upstream_slot().unwrap()).collect();
        let full = state.upstream_slot().unwrap_err();
        assert_eq!(full.open, max);
        let world = Identity::reserved(reserved::WORLD);
        assert!(
            matches!(state.admit(&config, &per, &listener, &world, peer), Err(Refused::Descriptors { .. })),
            "a client would have no descriptor for its upstream"
        );
        slots.truncate(slots.len() - 2);
        let _client = state.admit(&config, &per, &listener, &world, peer).unwrap();
        let _slot = state.upstream_slot().unwrap();
        assert!(state.upstream_slot().is_err());
        drop(slots);
        drop(client);
        assert_eq!(state.admission.upstream.load(Ordering::Relaxed), 1, "slots count while they live");
    }

    /// Idle connections that only count.
    struct FakePool {
        idle: Mutex<usize>,
        since: Instant,
    }

    impl IdleUpstreams for FakePool {
        fn close_idle(&self, n: usize) -> usize {
            let mut idle = self.idle.lock().unwrap();
            let closed = n.min(*idle);
            *idle -= closed;
            closed
        }
        fn idle_since(&self) -> Option<Instant> {
            (*self.idle.lock().unwrap() > 0).then_some(self.since)
        }
    }

    #[test]
    fn idle_upstreams_give_way_the_longest_idle_first_and_only_to_admitted_clients() {
        let state = limits();
        let config = LimitsConfig::default();
        let per =
            ListenerLimits { max_connections_per_identity: 1, ..ListenerLimits::of(&config, &Default::default()) };
        let listener: Arc<str> = Arc::from("l");
        let peer: SocketAddr = "127.0.0.2:1".parse().unwrap();
        let pool = |idle, age| {
            let since = Instant::now() - Duration::from_secs(age);
            Arc::new(FakePool { idle: Mutex::new(idle), since })
        };
        let (young, old) = (pool(3, 1), pool(3, 10));
        for p in [&young, &old] {
            let p: Arc<dyn IdleUpstreams> = p.clone();
            state.register_idle(Arc::downgrade(&p));
        }
        state.idle_added(6);
        let host = Identity::reserved(reserved::HOST);
        let _client = state.admit(&config, &per, &listener, &host, peer).unwrap();
        let max = state.descriptors_for_connections();
        let _slots: Vec<_> = (1..max - 1).map(|_| state.upstream_slot().unwrap()).collect();
        // one descriptor left: a client needs two
        assert!(matches!(state.admit(&config, &per, &listener, &host, peer), Err(Refused::Identity { .. })));
        assert_eq!((*young.idle.lock().unwrap(), *old.idle.lock().unwrap()), (3, 3), "a refused client closes nothing");
        let world = Identity::reserved(reserved::WORLD);
        let _admitted = state.admit(&config, &per, &listener, &world, peer).unwrap();
        assert_eq!((*young.idle.lock().unwrap(), *old.idle.lock().unwrap()), (3, 2), "the longest idle gave way");
    }

    #[test]
    fn the_process_budget_bounds_every_listener_together() {
        let state = limits();
        let config = LimitsConfig { max_connections: Some(2), ..Default::default() };
        let per = ListenerLimits::of(&config, &Default::default());
        let world = Identity::reserved(reserved::WORLD);
        let held: Vec<_> = (0..2)
            .map(|i| {
                let peer = SocketAddr::from(([127, 0, 0, 2 + i], 1));
                state.admit(&config, &per, &Arc::from(format!("l{i}")), &world, peer).unwrap()
            })
            .collect();
        let peer = SocketAddr::from(([127, 0, 0, 9], 1));
        assert_eq!(
            state.admit(&config, &per, &Arc::from("l9"), &world, peer).unwrap_err(),
            Refused::Process { max: 2 }
        );
        drop(held);
        assert_eq!(state.open_connections(), 0);
    }

    #[test]
    fn buffers_reserve_from_the_process_budget_and_give_it_back() {
        let state = limits();
        state.buffered.set_max(1 << 20);
        let mut a = Held::new(&state, 1 << 20);
        let mut b = Held::new(&state, 1 << 20);
        a.cover(FREE_BYTES).unwrap();
        assert_eq!(state.buffered.used(), 0, "one read's worth is free");
        a.cover(FREE_BYTES + (768 << 10)).unwrap();
        assert!(matches!(b.cover(FREE_BYTES + (512 << 10)), Err(OverBudget::Process { .. })));
        a.cover(0).unwrap();
        b.cover(FREE_BYTES + (512 << 10)).unwrap();
        assert!(matches!(b.cover(FREE_BYTES + (2 << 20)), Err(OverBudget::Connection { .. })));
        drop(b);
        assert_eq!(state.buffered.used(), 0);
    }

    #[test]
    fn limits_parse_with_units_and_listener_overrides() {
        let global: LimitsConfig =
            serde_yaml::from_str("idle_timeout: 2s\nmax_request: 1MiB\nmax_connections_per_identity: 5").unwrap();
        let listener: ListenerLimitsConfig = serde_yaml::from_str("idle_timeout: 0\nmax_connections: 7").unwrap();
        let l = ListenerLimits::of(&global, &listener);
        assert_eq!(l.idle_timeout, None, "0 turns it off");
        assert_eq!((l.max_request, l.max_connections, l.max_connections_per_identity), (1 << 20, 7, 5));
        assert_eq!(l.request_head_timeout, Some(DEFAULT_REQUEST_HEAD_TIMEOUT));
        assert!(serde_yaml::from_str::<LimitsConfig>("idle_timeot: 2s").is_err());
    }
}
