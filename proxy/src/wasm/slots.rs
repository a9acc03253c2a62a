//! Who may hold the pooling allocator's instance slots.
//!
//! The pool is shared by every filter. Instances come in three kinds:
//!
//! - **shared**: one per (worker thread, configured filter), reused by every
//!   request (HTTP, DNS, Kafka, memcached, Cassandra filters);
//! - **dedicated**: one per connection through a stream filter, alive as long
//!   as the connection (so a client that opens many idle connections holds
//!   many slots);
//! - **validation**: a throw-away instance that checks a configuration when a
//!   policy loads or a verdict is computed.
//!
//! So that no flood of long-lived instances can starve the others (and keep
//! DNS or reloads failing until it ends), dedicated instances together get at
//! most [`DEDICATED_SHARE`] of the pool, one filter's at most
//! [`FILTER_SHARE`] of that, and one client address at most its
//! `per_client`; the last [`VALIDATION_RESERVE`] slots are for validation
//! alone. A slot that cannot be had fails that one request or connection
//! (with a flow), never more, and is counted so verdicts that depended on it
//! are not cached.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Dedicated instances may take this share of the pool (numerator / 4).
pub const DEDICATED_SHARE: (usize, usize) = (3, 4);
/// One filter's dedicated instances may take this share of the dedicated part.
pub const FILTER_SHARE: (usize, usize) = (2, 3);
/// Slots only configuration checks may take.
pub const VALIDATION_RESERVE: usize = 16;

/// What an instance is for.
pub enum Use {
    Shared,
    Dedicated { filter: Arc<str>, client: IpAddr, per_client: usize },
    Validate,
}

#[derive(Debug, Default)]
struct Counts {
    live: usize,
    dedicated: usize,
    by_filter: HashMap<Arc<str>, usize>,
    by_client: HashMap<(Arc<str>, IpAddr), usize>,
}

#[derive(Debug)]
pub struct Slots {
    capacity: usize,
    counts: Mutex<Counts>,
    exhaustions: AtomicU64,
}

/// A slot held while its instance lives.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
    dedicated: Option<(Arc<str>, IpAddr)>,
}

fn share(n: usize, (num, den): (usize, usize)) -> usize {
    (n * num / den).max(1)
}

impl Slots {
    pub fn new(capacity: usize) -> Self {
        Slots { capacity, counts: Mutex::new(Counts::default()), exhaustions: AtomicU64::new(0) }
    }

    pub fn exhaustions(&self) -> u64 {
        self.exhaustions.load(Ordering::Relaxed)
    }

    pub fn count_exhaustion(&self) {
        self.exhaustions.fetch_add(1, Ordering::Relaxed);
    }

    pub fn in_use(&self) -> (usize, usize) {
        let counts = self.counts.lock().unwrap();
        (counts.live, counts.dedicated)
    }

    /// A slot for `purpose`, or why there is none.
    pub fn take(self: &Arc<Self>, purpose: Use) -> Result<Slot, String> {
        let refused = |why: String| {
            self.count_exhaustion();
            Err(why)
        };
        let mut counts = self.counts.lock().unwrap();
        let for_others = self.capacity.saturating_sub(VALIDATION_RESERVE);
        let dedicated = match purpose {
            Use::Validate if counts.live >= self.capacity => {
                return refused(format!("all {} filter instance slots are in use", self.capacity));
            }
            Use::Validate => None,
            Use::Shared if counts.live >= for_others => {
                return refused(format!("all {for_others} filter instance slots are in use"));
            }
            Use::Shared => None,
            Use::Dedicated { filter, client, per_client } => {
                let all = share(for_others, DEDICATED_SHARE);
                let one_filter = share(all, FILTER_SHARE);
                let of_filter = counts.by_filter.get(&filter).copied().unwrap_or(0);
                let key = (filter, client);
                let of_client = counts.by_client.get(&key).copied().unwrap_or(0);
                if counts.live >= for_others || counts.dedicated >= all {
                    return refused(format!("the {all} filter instances for connections are in use"));
                }
                if of_filter >= one_filter {
                    return refused(format!("{} holds its share of filter instances ({one_filter})", key.0));
                }
                if of_client >= per_client {
                    return refused(format!(
                        "{} holds {of_client} instances of {} (limits.filter_instances_per_client)",
                        key.1, key.0
                    ));
                }
                counts.dedicated += 1;
                *counts.by_filter.entry(key.0.clone()).or_default() += 1;
                *counts.by_client.entry(key.clone()).or_default() += 1;
                Some(key)
            }
        };
        counts.live += 1;
        Ok(Slot { slots: self.clone(), dedicated })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.slots.counts.lock().unwrap();
        counts.live -= 1;
        if let Some(key) = self.dedicated.take() {
            counts.dedicated -= 1;
            let gone = counts.by_filter.get_mut(&key.0).map(|n| {
                *n -= 1;
                *n == 0
            });
            if gone == Some(true) {
                counts.by_filter.remove(&key.0);
            }
            let gone = counts.by_client.get_mut(&key).map(|n| {
                *n -= 1;
                *n == 0
            });
            if gone == Some(true) {
                counts.by_client.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dedicated(filter: &str, client: [u8; 4], per_client: usize) -> Use {
        Use::Dedicated { filter: Arc::from(filter), client: IpAddr::from(client), per_client }
    }

    #[test]
    fn long_lived_instances_leave_room_for_shared_ones_and_validation() {
        let slots = Arc::new(Slots::new(116));
        // 100 usable by others; 75 dedicated at most; 50 per filter
        let mut held = Vec::new();
        for i in 0..50u8 {
            held.push(slots.take(dedicated("r2d2", [127, 0, 0, i], 10)).unwrap());
        }
        assert!(slots.take(dedicated("r2d2", [127, 0, 1, 1], 10)).unwrap_err().contains("share"));
        for i in 0..25u8 {
            held.push(slots.take(dedicated("other", [127, 0, 2, i], 10)).unwrap());
        }
        assert!(slots.take(dedicated("third", [127, 0, 3, 1], 10)).is_err(), "dedicated part full");
        for _ in 0..25 {
            held.push(slots.take(Use::Shared).unwrap());
        }
        assert!(slots.take(Use::Shared).is_err());
        let validation: Vec<_> = (0..16).map(|_| slots.take(Use::Validate).unwrap()).collect();
        assert!(slots.take(Use::Validate).is_err());
        assert_eq!(slots.exhaustions(), 4);
        drop(validation);
        drop(held);
        assert_eq!(slots.in_use(), (0, 0));
        assert!(slots.counts.lock().unwrap().by_client.is_empty());
    }

    #[test]
    fn one_client_gets_its_share_and_others_still_get_theirs() {
        let slots = Arc::new(Slots::new(1000));
        let mine: Vec<_> = (0..3).map(|_| slots.take(dedicated("r2d2", [127, 0, 0, 2], 3)).unwrap()).collect();
        assert!(slots.take(dedicated("r2d2", [127, 0, 0, 2], 3)).unwrap_err().contains("filter_instances_per_client"));
        let _theirs = slots.take(dedicated("r2d2", [127, 0, 0, 3], 3)).unwrap();
        drop(mine);
        let _again = slots.take(dedicated("r2d2", [127, 0, 0, 2], 3)).unwrap();
    }
}
