//! Queries to a resolver over UDP, sharing a few sockets.
//!
//! A socket per query costs a socket, a bind, a connect and two epoll
//! registrations each time, which is most of a forwarded query's CPU. So
//! each resolver gets [`LANES`] connected sockets; every query leaves with a
//! fresh random id (the client's id is put back on the answer), and a reader
//! per socket hands each answer to the query waiting for that id. The
//! resolver sees several source ports and unpredictable ids, as it would
//! from a stub resolver.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::net::UdpSocket;
use tokio::sync::oneshot;

/// Sockets per resolver.
const LANES: usize = 4;
const MAX_MESSAGE: usize = 65535;

#[derive(Default)]
pub struct UdpUpstreams {
    by_resolver: Mutex<HashMap<SocketAddr, Arc<Resolver>>>,
}

struct Resolver {
    lanes: Vec<Arc<Lane>>,
}

struct Lane {
    socket: UdpSocket,
    /// id -> the query waiting for it
    pending: Mutex<HashMap<u16, oneshot::Sender<Vec<u8>>>>,
}

impl UdpUpstreams {
    /// Send `query` (its first two bytes are the id) and wait for the answer
    /// with the same id; the answer comes back carrying the query's own id.
    /// The caller bounds the wait; dropping the future forgets the query.
    pub async fn exchange(&self, resolver: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
        if query.len() < 12 {
            return Err(std::io::Error::other("not a DNS message"));
        }
        let lane = self.lane(resolver).await?;
        let (id, answer) = lane.register();
        let _forget = Forget { lane: &lane, id };
        let mut outgoing = query.to_vec();
        outgoing[..2].copy_from_slice(&id.to_be_bytes());
        lane.socket.send(&outgoing).await?;
        let mut answer = answer.await.map_err(|_| std::io::Error::other("the resolver socket closed"))?;
        answer[..2].copy_from_slice(&query[..2]);
        Ok(answer)
    }

    async fn lane(&self, resolver: SocketAddr) -> std::io::Result<Arc<Lane>> {
        let existing = self.by_resolver.lock().unwrap().get(&resolver).cloned();
        let resolver_lanes = match existing {
            Some(r) => r,
            None => {
                let mut lanes = Vec::with_capacity(LANES);
                for _ in 0..LANES {
                    let local: SocketAddr =
                        if resolver.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
                    let socket = UdpSocket::bind(local).await?;
                    socket.connect(resolver).await?;
                    let lane = Arc::new(Lane { socket, pending: Mutex::new(HashMap::new()) });
                    tokio::spawn(read_answers(Arc::downgrade(&lane)));
                    lanes.push(lane);
                }
                let fresh = Arc::new(Resolver { lanes });
                // two first queries may race; the first one in wins
                self.by_resolver.lock().unwrap().entry(resolver).or_insert(fresh).clone()
            }
        };
        let pick = random() as usize % resolver_lanes.lanes.len();
        Ok(resolver_lanes.lanes[pick].clone())
    }

    /// Stop using resolvers no listener names any more.
    pub fn retain(&self, in_use: &[SocketAddr]) {
        self.by_resolver.lock().unwrap().retain(|addr, _| in_use.contains(addr));
    }
}

impl Lane {
    fn register(&self) -> (u16, oneshot::Receiver<Vec<u8>>) {
        let (tx, rx) = oneshot::channel();
        let mut pending = self.pending.lock().unwrap();
        loop {
            let id = random() as u16;
            if let std::collections::hash_map::Entry::Vacant(slot) = pending.entry(id) {
                slot.insert(tx);
                return (id, rx);
            }
        }
    }
}

/// Removes a query's id when its wait ends, answered or not.
struct Forget<'a> {
    lane: &'a Lane,
    id: u16,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.lane.pending.lock().unwrap().remove(&self.id);
    }
}

/// Hand answers to their queries; ends when the lane is dropped.
async fn read_answers(lane: Weak<Lane>) {
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let Some(strong) = lane.upgrade() else { return };
        // hold the lane only while waiting on its socket
        let received = tokio::select! {
            r = strong.socket.recv(&mut buf) => r,
            _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => continue,
        };
        match received {
            Ok(len) if len >= 12 => {
                let id = u16::from_be_bytes([buf[0], buf[1]]);
                // an id nobody waits for is late or spoofed: dropped
                if let Some(waiting) = strong.pending.lock().unwrap().remove(&id) {
                    let _ = waiting.send(buf[..len].to_vec());
                }
            }
            Ok(_) => {}
            // ICMP port unreachable from an earlier send: the waiting query times out
            Err(_) => {}
        }
    }
}

/// Unpredictable numbers without a dependency: SipHash with per-process
/// random keys over a counter.
fn random() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static KEYS: std::sync::OnceLock<RandomState> = std::sync::OnceLock::new();
    KEYS.get_or_init(RandomState::new).hash_one(COUNTER.fetch_add(1, Ordering::Relaxed))
}
