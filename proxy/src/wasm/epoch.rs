//! The clock that interrupts guest calls: wasmtime checks the engine's
//! epoch in guest code, and a thread advances it every tick. The thread
//! sleeps while no call runs (after a quiet spell), so an idle node agent
//! is not woken a thousand times a second for nothing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::Engine;

/// One epoch: the precision of a call's time budget.
pub(super) const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Ticks without a call before the ticker sleeps: under load calls start
/// every tick, so it never sleeps then, and waking it costs a call nothing.
const QUIET_TICKS: u32 = 200;

/// What calls and the ticker share.
#[derive(Default)]
pub struct EpochClock {
    started: AtomicU64,
    finished: AtomicU64,
    parked: AtomicBool,
    stop: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

impl EpochClock {
    /// A guest call begins; wakes the ticker if it sleeps. Every `begin`
    /// must be followed by an [`end`](Self::end): a call that never ends
    /// (a panic in between) only keeps the ticker awake.
    pub fn begin(&self) {
        self.started.fetch_add(1, Ordering::SeqCst);
        // SeqCst on both sides: either the ticker sees this start before it
        // sleeps, or this sees it asleep and wakes it
        if self.parked.load(Ordering::SeqCst) {
            let _held = self.lock.lock().unwrap();
            self.wake.notify_one();
        }
    }

    pub fn end(&self) {
        self.finished.fetch_add(1, Ordering::SeqCst);
    }

    /// [`begin`](Self::begin) now, [`end`](Self::end) when the guard drops.
    pub fn running(&self) -> Running<'_> {
        self.begin();
        Running(self)
    }

    /// Whether no call is running and none began since `seen` was read.
    fn quiet_since(&self, seen: u64) -> bool {
        let started = self.started.load(Ordering::SeqCst);
        started == seen && self.finished.load(Ordering::SeqCst) == started
    }

    /// Whether the ticker sleeps now (for tests).
    #[cfg(test)]
    fn is_parked(&self) -> bool {
        self.parked.load(Ordering::SeqCst)
    }
}

/// A guest call in progress (see [`EpochClock::running`]).
pub struct Running<'a>(&'a EpochClock);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// Advances the engine's epoch every tick, on its own thread, while calls run.
pub(super) struct EpochTicker {
    clock: Arc<EpochClock>,
    thread: JoinHandle<()>,
}

impl EpochTicker {
    pub(super) fn start(engine: Engine) -> Self {
        let clock = Arc::new(EpochClock::default());
        let shared = clock.clone();
        let thread = std::thread::Builder::new()
            .name("weir-epoch".into())
            .spawn(move || tick(&engine, &shared))
            .expect("spawning the epoch thread");
        EpochTicker { clock, thread }
    }

    pub(super) fn clock(&self) -> &Arc<EpochClock> {
        &self.clock
    }

    pub(super) fn stop(self) {
        self.clock.stop.store(true, Ordering::SeqCst);
        {
            let _held = self.clock.lock.lock().unwrap();
            self.clock.wake.notify_one();
        }
        let _ = self.thread.join();
    }
}

fn tick(engine: &Engine, clock: &EpochClock) {
    let mut seen = clock.started.load(Ordering::SeqCst);
    let mut quiet = 0;
    while !clock.stop.load(Ordering::SeqCst) {
        std::thread::sleep(EPOCH_TICK);
        engine.increment_epoch();
        if !clock.quiet_since(seen) {
            seen = clock.started.load(Ordering::SeqCst);
            quiet = 0;
            continue;
        }
        quiet += 1;
        if quiet < QUIET_TICKS {
            continue;
        }
        let held = clock.lock.lock().unwrap();
        clock.parked.store(true, Ordering::SeqCst);
        // a call that began before `parked` was set is seen here
        let held =
            clock.wake.wait_while(held, |_| !clock.stop.load(Ordering::SeqCst) && clock.quiet_since(seen)).unwrap();
        clock.parked.store(false, Ordering::SeqCst);
        drop(held);
        seen = clock.started.load(Ordering::SeqCst);
        quiet = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> Engine {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        Engine::new(&config).unwrap()
    }

    /// Wait (2 s at most) for `what`.
    fn eventually(what: impl Fn() -> bool) -> bool {
        for _ in 0..2000 {
            if what() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }

    #[test]
    fn the_ticker_sleeps_when_idle_and_never_while_a_call_runs() {
        let ticker = EpochTicker::start(engine());
        let clock = ticker.clock().clone();
        assert!(eventually(|| clock.is_parked()), "an idle ticker sleeps");

        // a call wakes it, and a call longer than the quiet spell keeps it awake
        let call = clock.running();
        assert!(!clock.is_parked() || eventually(|| !clock.is_parked()), "a call wakes the ticker");
        std::thread::sleep(EPOCH_TICK * QUIET_TICKS * 2);
        assert!(!clock.is_parked(), "the ticker slept while a call ran");
        drop(call);
        assert!(eventually(|| clock.is_parked()), "the ticker sleeps again after the call");
        ticker.stop();
    }

    #[test]
    fn a_sleeping_ticker_stops() {
        let ticker = EpochTicker::start(engine());
        let clock = ticker.clock().clone();
        assert!(eventually(|| clock.is_parked()));
        ticker.stop();
    }
}
