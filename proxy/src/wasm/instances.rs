//! One live instance per (worker thread, configured filter).
//!
//! Filter calls are synchronous and short, so they run on the tokio worker
//! that handles the request; keeping the instance in a thread-local map means
//! no locking on the hot path and no instance is ever shared between threads.

use std::cell::RefCell;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Weak};

use wasmtime::Store;

use super::bindings::{CpuBudget, HostState, MemoryLimit};
use super::slots::{Slot, Use};
use super::{ConfiguredFilter, FailureKind, FilterFailure, FilterRuntime, WorldBindings, deadline_ticks, describe};

/// Longest a `configure` call may run.
const CONFIGURE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

pub(super) struct LiveInstance {
    pub store: Store<HostState>,
    pub bindings: WorldBindings,
    /// Dead once the configured filter is dropped (no model uses it).
    owner: Weak<()>,
    /// The host's connection resource in the store's table, made at the
    /// first call and reused: each call puts its connection there (a push
    /// and a delete per call cost an allocation and a free). It keeps the
    /// last call's connection view until the next call or the instance's
    /// end; nothing hangs on a view's lifetime.
    pub connection: Option<u32>,
    /// The pool slot it holds, given back when it is dropped (after the store:
    /// fields drop in order).
    _slot: Slot,
}

#[derive(Default)]
struct InstancePool {
    live: HashMap<u64, LiveInstance, BuildHasherDefault<FilterIdHasher>>,
    created_since_sweep: usize,
}

/// The pool is looked up once per filter call, and its keys are filter ids
/// weir counts itself (no one can choose them to collide): one multiply
/// instead of SipHash, which was a tenth of the host's cost of a call.
#[derive(Default)]
struct FilterIdHasher(u64);

impl Hasher for FilterIdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, id: u64) {
        // Fibonacci hashing: consecutive ids spread over the high bits too,
        // which hashbrown uses to tell entries apart within a group
        self.0 = id.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

thread_local! {
    static POOL: RefCell<InstancePool> = RefCell::new(InstancePool::default());
}

/// Run `f` on this thread's instance of `filter`, creating it if needed. On
/// any error the instance is dropped, so the next call starts fresh. The
/// runtime is reached (a `Weak` upgraded: two atomic operations) only to make
/// or retire an instance, not on every call.
pub(super) fn with_instance<R>(
    filter: &ConfiguredFilter,
    f: impl FnOnce(&mut LiveInstance) -> wasmtime::Result<R>,
) -> Result<R, FilterFailure> {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let pool = &mut *pool;
        if pool.created_since_sweep >= 32 {
            // forget instances of filters no model uses any more
            pool.live.retain(|_, live| live.owner.strong_count() > 0);
            pool.created_since_sweep = 0;
        }
        // one lookup per call: the instance, or where a new one goes
        let live = match pool.live.entry(filter.id) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => {
                let runtime = filter.runtime()?;
                let live = instantiate(&runtime, filter, Use::Shared).map_err(|e| e.into_failure(filter))?;
                pool.created_since_sweep += 1;
                entry.insert(live)
            }
        };
        match f(live) {
            Ok(value) => {
                if live.store.data().limits.nearly_full() {
                    pool.live.remove(&filter.id);
                    if let Ok(runtime) = filter.runtime() {
                        runtime
                            .metrics
                            .filter_recycled
                            .get_or_create(&crate::observe::metrics::FilterLabels { filter: filter.name.to_string() })
                            .inc();
                    }
                }
                Ok(value)
            }
            Err(error) => {
                let (kind, message) = describe(&error, live.store.data());
                pool.live.remove(&filter.id);
                Err(FilterFailure { filter: filter.name.clone(), kind, message })
            }
        }
    })
}

/// Why no instance was made.
pub(super) enum NotInstantiated {
    /// `configure` returned this error: the filter judged the configuration.
    Refused(String),
    Failed(FilterFailure),
}

impl NotInstantiated {
    /// On the traffic path either is a failure to make the instance.
    pub(super) fn into_failure(self, filter: &ConfiguredFilter) -> FilterFailure {
        match self {
            NotInstantiated::Refused(message) => {
                FilterFailure { filter: filter.name.clone(), kind: FailureKind::Instantiate, message }
            }
            NotInstantiated::Failed(failure) => failure,
        }
    }
}

/// A fresh instance with `configure` already called, in a slot `purpose`
/// may take.
pub(super) fn instantiate(
    runtime: &FilterRuntime,
    filter: &ConfiguredFilter,
    purpose: Use,
) -> Result<LiveInstance, NotInstantiated> {
    let fail =
        |kind, message: String| NotInstantiated::Failed(FilterFailure { filter: filter.name.clone(), kind, message });
    let slot = runtime.slots.take(purpose).map_err(|why| fail(FailureKind::Exhausted, why))?;
    let limits = MemoryLimit::new(filter.limits.memory);
    let mut store = Store::new(
        &runtime.engine,
        HostState::new(
            filter.name.clone(),
            limits,
            runtime.metrics.clone(),
            filter.state.clone(),
            runtime.clock.clone(),
        ),
    );
    store.limiter(|state| state.limiter());
    // each tick past the deadline asks whether the call spent its CPU budget:
    // only then does it trap; otherwise it looks again a tick later
    store.epoch_deadline_callback(|store| {
        if store.data().cpu.spent() {
            Err(wasmtime::Trap::Interrupt.into())
        } else {
            Ok(wasmtime::UpdateDeadline::Continue(1))
        }
    });
    // configure parses and compiles rules once; it gets more time than a
    // request (a busy node must not reject a valid policy), but not forever
    let configure_budget = filter.limits.timeout.max(CONFIGURE_TIMEOUT);
    store.data_mut().cpu = CpuBudget::start(configure_budget);
    store.set_epoch_deadline(deadline_ticks(configure_budget));
    let _running = runtime.clock.running();
    let bindings = filter.component.pre.instantiate(&mut store).map_err(|e| {
        // the allocator's own limits (core instances, memories) are a
        // shortage too, not a fault of the filter
        let message = format!("cannot instantiate: {e:#}");
        if message.contains("maximum concurrent") {
            runtime.slots.count_exhaustion();
            fail(FailureKind::Exhausted, message)
        } else {
            fail(FailureKind::Instantiate, message)
        }
    })?;
    runtime
        .metrics
        .filter_instantiations
        .get_or_create(&crate::observe::metrics::FilterLabels { filter: filter.name.to_string() })
        .inc();
    let configured = bindings.configure(&mut store, &filter.config);
    match configured {
        Ok(Ok(())) => {}
        Ok(Err(message)) => return Err(NotInstantiated::Refused(message)),
        Err(e) => {
            let (kind, message) = describe(&e, store.data());
            return Err(fail(kind, format!("configure failed ({}): {message}", kind.as_str())));
        }
    }
    store.data_mut().limits.configured();
    store.set_epoch_deadline(deadline_ticks(filter.limits.timeout));
    Ok(LiveInstance { store, bindings, owner: Arc::downgrade(&filter.alive), connection: None, _slot: slot })
}
