//! State a filter shares across its instances (every worker's, and the one
//! that replaces an instance after a trap): a small key-value store with
//! compare-and-swap and expiry, and token buckets. One partition per
//! configured filter — component and configuration — so two rules with
//! different configurations never share state, and a configuration change
//! starts empty. Bounded: a partition holds at most [`MAX_ENTRIES`] keys and
//! [`MAX_BYTES`] of keys and values, and all partitions of a runtime
//! together [`MAX_TOTAL_BYTES`] (policies may configure many filters); a
//! write past that is refused (the filter sees `false`), never an eviction
//! of live data.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const MAX_ENTRIES: usize = 10_000;
pub const MAX_BYTES: usize = 1 << 20;
/// Every partition of a runtime together.
pub const MAX_TOTAL_BYTES: usize = 64 << 20;
/// Keys longer than this are refused.
pub const MAX_KEY: usize = 256;

/// The bytes every partition of a runtime holds together.
#[derive(Debug)]
pub struct Budget {
    used: AtomicUsize,
    max: usize,
}

impl Budget {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Budget { used: AtomicUsize::new(0), max })
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Take `n` bytes if they fit.
    fn reserve(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| (used + n <= self.max).then_some(used + n))
            .is_ok()
    }

    fn release(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::Relaxed);
    }
}

/// One configured filter's state.
pub struct Partition {
    inner: Mutex<Entries>,
}

impl Partition {
    pub fn new(budget: Arc<Budget>) -> Self {
        Partition {
            inner: Mutex::new(Entries {
                values: HashMap::new(),
                buckets: HashMap::new(),
                bytes: 0,
                budget,
                swept: None,
            }),
        }
    }
}

impl Default for Partition {
    /// A partition with a budget of its own.
    fn default() -> Self {
        Partition::new(Budget::new(MAX_TOTAL_BYTES))
    }
}

struct Entries {
    values: HashMap<String, Entry>,
    buckets: HashMap<String, Bucket>,
    /// This partition's bytes; also counted in `budget`.
    bytes: usize,
    budget: Arc<Budget>,
    /// Sweeps run at most every [`SWEEP_EVERY`]: a full store does not
    /// scan itself on every write.
    swept: Option<Instant>,
}

const SWEEP_EVERY: Duration = Duration::from_millis(10);

struct Entry {
    value: Vec<u8>,
    expires: Option<Instant>,
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
    rate: u32,
    burst: u32,
}

impl Bucket {
    /// Full again: it answers as a missing bucket would, so it can go.
    fn full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens + elapsed * f64::from(self.rate) >= f64::from(self.burst)
    }
}

/// What a bucket costs against the bounds: its key and two numbers.
const BUCKET_BYTES: usize = 32;

impl Drop for Entries {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

impl Entries {
    fn grow(&mut self, n: usize) {
        self.bytes += n;
    }

    fn shrink(&mut self, n: usize) {
        self.bytes -= n;
        self.budget.release(n);
    }

    fn live(&mut self, key: &str, now: Instant) -> Option<&Entry> {
        if self.values.get(key).is_some_and(|e| e.expires.is_some_and(|t| t <= now)) {
            self.remove(key);
        }
        self.values.get(key)
    }

    fn remove(&mut self, key: &str) {
        if let Some(old) = self.values.remove(key) {
            self.shrink(key.len() + old.value.len());
        }
    }

    /// Drop what expired and the buckets that are full again, when space
    /// runs out (at most every [`SWEEP_EVERY`]).
    fn sweep(&mut self, now: Instant) {
        if self.swept.is_some_and(|at| now.saturating_duration_since(at) < SWEEP_EVERY) {
            return;
        }
        self.swept = Some(now);
        let expired: Vec<String> =
            self.values.iter().filter(|(_, e)| e.expires.is_some_and(|t| t <= now)).map(|(k, _)| k.clone()).collect();
        for key in expired {
            self.remove(&key);
        }
        let full: Vec<String> = self.buckets.iter().filter(|(_, b)| b.full(now)).map(|(k, _)| k.clone()).collect();
        for key in full {
            self.buckets.remove(&key);
            self.shrink(key.len() + BUCKET_BYTES);
        }
    }

    fn count(&self) -> usize {
        self.values.len() + self.buckets.len()
    }

    /// Room for `more` bytes and, if `new_key`, one more key: when there
    /// is, the bytes are taken from the runtime's budget (the caller then
    /// adds them with [`Entries::grow`]).
    fn room(&mut self, more: usize, new_key: bool, now: Instant) -> bool {
        let fits = |e: &Entries| e.bytes + more <= MAX_BYTES && (!new_key || e.count() < MAX_ENTRIES);
        if !fits(self) {
            self.sweep(now);
            if !fits(self) {
                return false;
            }
        }
        if self.budget.reserve(more) {
            return true;
        }
        // what this partition can free makes room in the budget too
        self.sweep(now);
        self.budget.reserve(more)
    }

    fn put(&mut self, key: &str, value: Option<Vec<u8>>, ttl: Duration, now: Instant) -> bool {
        let Some(value) = value else {
            self.remove(key);
            return true;
        };
        let old = self.live(key, now).map_or(0, |e| key.len() + e.value.len());
        let new_key = old == 0 && !self.values.contains_key(key);
        let new_total = key.len() + value.len();
        let more = new_total.saturating_sub(old);
        if !self.room(more, new_key, now) {
            return false;
        }
        // `room` took the growth from the budget; a smaller value gives the
        // difference back
        self.values.remove(key);
        self.bytes = self.bytes - old + new_total;
        self.budget.release(old.saturating_sub(new_total));
        let expires = (!ttl.is_zero()).then(|| now + ttl);
        self.values.insert(key.to_string(), Entry { value, expires });
        true
    }
}

impl Partition {
    /// Empty it, giving its bytes back to the runtime's budget: its filter
    /// is gone (idle instances of it may hold the partition a while yet).
    pub fn clear(&self) {
        let mut entries = self.inner.lock().unwrap();
        entries.values.clear();
        entries.buckets.clear();
        let bytes = std::mem::take(&mut entries.bytes);
        entries.budget.release(bytes);
    }

    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.inner.lock().unwrap().live(key, Instant::now()).map(|e| e.value.clone())
    }

    /// Set `key` (or delete it, with `None`); a zero `ttl` keeps it until
    /// deleted. `false`: over the bounds, nothing changed.
    pub fn set(&self, key: &str, value: Option<Vec<u8>>, ttl: Duration) -> bool {
        key.len() <= MAX_KEY && self.inner.lock().unwrap().put(key, value, ttl, Instant::now())
    }

    /// Set `key` to `new` only if it holds `expected` now (`None`: absent).
    pub fn compare_and_swap(&self, key: &str, expected: Option<&[u8]>, new: Option<Vec<u8>>, ttl: Duration) -> bool {
        if key.len() > MAX_KEY {
            return false;
        }
        let now = Instant::now();
        let mut entries = self.inner.lock().unwrap();
        let current = entries.live(key, now).map(|e| e.value.as_slice());
        if current != expected {
            return false;
        }
        entries.put(key, new, ttl, now)
    }

    /// Take `cost` tokens from bucket `key`, which refills `rate` per second
    /// up to `burst` and starts full. `false`: not enough (nothing taken), or
    /// no room for a new bucket.
    pub fn take_tokens(&self, key: &str, rate: u32, burst: u32, cost: u32) -> bool {
        // more than a full bucket holds is never there: no bucket needed
        if key.len() > MAX_KEY || cost > burst {
            return false;
        }
        let mut entries = self.inner.lock().unwrap();
        // read under the lock: a refill is never counted twice
        let now = Instant::now();
        if !entries.buckets.contains_key(key) {
            if !entries.room(key.len() + BUCKET_BYTES, true, now) {
                tracing::debug!(key, "a new token bucket refused: the filter's state is full");
                return false;
            }
            entries.grow(key.len() + BUCKET_BYTES);
            entries.buckets.insert(key.to_string(), Bucket { tokens: f64::from(burst), refilled: now, rate, burst });
        }
        let bucket = entries.buckets.get_mut(key).expect("inserted above");
        let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * f64::from(rate)).min(f64::from(burst));
        bucket.refilled = now;
        (bucket.rate, bucket.burst) = (rate, burst);
        if bucket.tokens >= f64::from(cost) {
            bucket.tokens -= f64::from(cost);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_expire_swap_and_stay_bounded() {
        let state = Partition::default();
        assert!(state.set("a", Some(b"1".to_vec()), Duration::ZERO));
        assert_eq!(state.get("a").as_deref(), Some(&b"1"[..]));
        assert!(!state.compare_and_swap("a", Some(b"2"), Some(b"3".to_vec()), Duration::ZERO), "not what it holds");
        assert!(state.compare_and_swap("a", Some(b"1"), Some(b"2".to_vec()), Duration::ZERO));
        assert!(state.compare_and_swap("b", None, Some(b"x".to_vec()), Duration::from_millis(20)), "absent");
        assert!(!state.compare_and_swap("b", None, Some(b"y".to_vec()), Duration::ZERO), "present now");
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(state.get("b"), None, "expired");
        assert!(state.set("a", None, Duration::ZERO));
        assert_eq!(state.get("a"), None, "deleted");
        // bounded: a value past the bytes is refused, live data stays
        assert!(state.set("keep", Some(vec![1; 1000]), Duration::ZERO));
        assert!(!state.set("huge", Some(vec![0; MAX_BYTES]), Duration::ZERO));
        assert_eq!(state.get("keep").map(|v| v.len()), Some(1000));
        assert!(!state.set(&"k".repeat(MAX_KEY + 1), Some(vec![]), Duration::ZERO));
        for i in 0..MAX_ENTRIES {
            if !state.set(&format!("n{i}"), Some(vec![]), Duration::ZERO) {
                assert_eq!(i, MAX_ENTRIES - 1, "the keep key counts too");
                break;
            }
        }
        assert!(!state.set("one-more", Some(vec![]), Duration::ZERO));
    }

    #[test]
    fn partitions_share_the_runtimes_budget() {
        let budget = Budget::new(1000);
        let first = Partition::new(budget.clone());
        let second = Partition::new(budget.clone());
        assert!(first.set("a", Some(vec![0; 600]), Duration::ZERO));
        assert!(!second.set("b", Some(vec![0; 600]), Duration::ZERO), "the runtime's budget is spent");
        assert!(second.set("b", Some(vec![0; 300]), Duration::ZERO), "what is left of it is not");
        assert_eq!(budget.used(), 601 + 301);
        assert!(first.set("a", Some(vec![0; 10]), Duration::ZERO), "a smaller value gives bytes back");
        assert_eq!(budget.used(), 312);
        assert!(first.set("a", None, Duration::ZERO));
        assert!(first.take_tokens("bucket", 1, 1, 1));
        assert_eq!(budget.used(), 301 + "bucket".len() + BUCKET_BYTES);
        drop(first);
        assert_eq!(budget.used(), 301, "a dropped partition gives its bytes back");
        second.clear();
        assert_eq!(budget.used(), 0, "a cleared partition gives its bytes back");
        assert_eq!(second.get("b"), None);
        drop(second);
        assert_eq!(budget.used(), 0, "and not twice");
    }

    #[test]
    fn full_buckets_make_room_for_new_callers() {
        let state = Partition::default();
        // a full store of buckets that refill at once
        for i in 0..MAX_ENTRIES {
            assert!(state.take_tokens(&format!("caller-{i}"), 1_000_000, 1, 1), "{i}");
        }
        std::thread::sleep(SWEEP_EVERY * 2);
        assert!(state.take_tokens("one-more", 1_000_000, 1, 1), "refilled buckets are swept for it");
        assert!(!state.take_tokens("k", 1, 2, 3), "more than a burst holds");
    }

    #[test]
    fn a_bucket_gives_its_burst_then_its_rate() {
        let state = Partition::default();
        let taken = (0..10).filter(|_| state.take_tokens("caller", 0, 5, 1)).count();
        assert_eq!(taken, 5, "no refill: exactly the burst");
        assert!(state.take_tokens("other", 0, 1, 1), "another key has its own bucket");
        let fast = Partition::default();
        assert!(fast.take_tokens("k", 1000, 1, 1));
        assert!(!fast.take_tokens("k", 1000, 1, 1));
        std::thread::sleep(Duration::from_millis(5));
        assert!(fast.take_tokens("k", 1000, 1, 1), "refilled at 1000/s");
    }
}
