//! Hitless restarts: a new weir takes the node over from the running one.
//!
//! ```text
//!   new weir                                  running weir (listens on <state dir>/handover-*.sock)
//!   connect, Hello{pid, version, config} ──▶  saves the FQDN cache; from now on forwards
//!                                             every address its DNS proxy learns
//!            ◀── Sockets{keys} + SCM_RIGHTS   (dups of every socket it serves)
//!   restores the FQDN cache, learns what is
//!   forwarded, builds its model, loads the
//!   datapath (pinned maps: conntrack, ipcache
//!   carry over), swaps its programs into the
//!   pinned links, serves the same sockets
//!   Ready ──────────────────────────────────▶ stops accepting and reading; the datapath is
//!                                             no longer its to write; HTTP connections close
//!                                             after their current response (HTTP/2: GOAWAY)
//!            ◀── Learned{...}                 an answer in flight taught an address: held
//!   Applied ────────────────────────────────▶ until the new weir's maps allow it
//!            ◀── Done{finished, cut}          drained, or the deadline passed
//! ```
//!
//! The sockets are the same kernel objects in both processes, so nothing
//! is refused: SYNs and datagrams wait in the sockets' queues for whichever
//! process reads next. A new weir that fails before Ready leaves the old one
//! in charge (it reclaims the datapath). Without a running weir (first start,
//! or after a crash) a weir starts cold: pinned maps and programs, and the
//! FQDN cache file, are what carries over.

pub mod predecessor;
pub mod sockets;
pub mod successor;
mod wire;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot, watch};

pub use predecessor::Predecessor;

/// Where a running weir of the configuration in `config_dir` waits for its
/// successor. Named after the configuration (FNV-1a of its canonical path,
/// stable across versions), so two weirs of different configurations that
/// share a state directory never meet.
pub fn socket_path(state_dir: &Path, config_dir: &Path) -> PathBuf {
    let config = std::fs::canonicalize(config_dir).unwrap_or_else(|_| config_dir.to_path_buf());
    let hash = config
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3));
    state_dir.join(format!("handover-{hash:016x}.sock"))
}

/// Resolves once `stop` says true (never, if its sender is gone first).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await
    }
}

/// How this process came to serve, for `/healthz`, the log and metrics.
#[derive(Clone, Debug, Default)]
pub enum Start {
    /// Nothing was running: a first start, or a restart after a crash.
    #[default]
    Cold,
    /// Took the node over from a running weir.
    TookOver { pid: u32, version: String },
}

/// One address a successor must learn, and who waits for it to be applied.
pub(crate) struct Forward {
    pub endpoint: String,
    pub name: String,
    pub addresses: Vec<(IpAddr, u32)>,
    pub applied: Option<oneshot::Sender<()>>,
}

/// What the engines see of a hand-over (in [`crate::engines::state::ProxyState`]).
#[derive(Default)]
pub struct Handover {
    /// Set when this process stops taking new work: HTTP/1 connections say
    /// `Connection: close` on their next response, HTTP/2 ones get GOAWAY.
    pub draining: watch::Sender<bool>,
    /// UDP DNS queries being answered (TCP connections are counted in
    /// `active_connections`): a draining weir answers them before it goes.
    queries: AtomicUsize,
    successor: Mutex<Option<mpsc::UnboundedSender<Forward>>>,
    /// The successor owns the datapath now.
    handed_over: AtomicBool,
    start: Start,
}

/// Held while a UDP query is answered: taken when the datagram is read
/// (before its task is spawned), so a drain never counts zero too early.
pub struct QueryInFlight(Arc<Handover>);

impl Drop for QueryInFlight {
    fn drop(&mut self) {
        self.0.queries.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Handover {
    pub fn new(start: Start) -> Self {
        Handover { start, ..Default::default() }
    }

    pub fn query(self: &Arc<Self>) -> QueryInFlight {
        self.queries.fetch_add(1, Ordering::Relaxed);
        QueryInFlight(self.clone())
    }

    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::Relaxed)
    }

    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// The datapath's maps belong to a successor: this process writes none.
    pub fn handed_over(&self) -> bool {
        self.handed_over.load(Ordering::Acquire)
    }

    /// Tell the successor (if there is one) what the DNS proxy learned.
    /// After the hand-over the answer must wait for the returned receiver:
    /// only the successor's maps can let the client connect.
    pub fn forward_learned(
        &self,
        endpoint: &str,
        name: &str,
        addresses: &[(IpAddr, u32)],
    ) -> Option<oneshot::Receiver<()>> {
        let successor = self.successor.lock().unwrap();
        let sender = successor.as_ref()?;
        let (applied, wait) = if self.handed_over() {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let forward = Forward { endpoint: endpoint.into(), name: name.into(), addresses: addresses.to_vec(), applied };
        sender.send(forward).ok()?;
        wait
    }

    fn set_successor(&self, sender: Option<mpsc::UnboundedSender<Forward>>) {
        *self.successor.lock().unwrap() = sender;
    }

    fn set_handed_over(&self) {
        self.handed_over.store(true, Ordering::Release);
    }

    /// What `/healthz` says about how this process started.
    pub fn describe_start(&self) -> String {
        match &self.start {
            Start::Cold => "start=cold".into(),
            Start::TookOver { pid, version } => format!("start=handover from_pid={pid} from_version={version}"),
        }
    }
}

/// The state file a pod's probes read (`weir probe`): `serving` once this
/// process serves the node, `draining` after it handed over.
#[derive(Clone)]
pub struct StatusFile(Option<Arc<PathBuf>>);

impl StatusFile {
    pub fn new(path: Option<PathBuf>) -> Self {
        StatusFile(path.map(Arc::new))
    }

    pub fn write(&self, status: &str) {
        let Some(path) = &self.0 else { return };
        let tmp = path.with_extension("tmp");
        let written = std::fs::write(&tmp, format!("{status}\n")).and_then(|()| std::fs::rename(&tmp, &**path));
        if let Err(e) = written {
            tracing::warn!(file = %path.display(), "status file not written: {e}");
        }
    }
}
