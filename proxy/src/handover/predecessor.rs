//! The new weir's side: take the running weir's sockets before binding
//! anything, learn what its DNS proxy still learns, and tell it when to stop.

use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, BufReader};
use tokio::sync::{mpsc, watch};

use super::sockets;
use super::wire::{self, Message};
use crate::model::fqdn::FqdnCache;

/// How long the running weir may take to send its sockets.
const SOCKETS_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a forwarded answer waits for this process's maps (as the DNS
/// proxy's own answers do).
const APPLY_TIMEOUT: Duration = Duration::from_millis(500);

/// A running weir that handed its sockets over and waits for [`Taking::ready`].
pub struct Predecessor {
    stream: std::os::unix::net::UnixStream,
    /// Bytes read past the sockets message (forwarded addresses).
    leftover: Vec<u8>,
    pub pid: u32,
    pub version: String,
}

impl Predecessor {
    /// Ask the weir listening at `path` for the node. `Ok(None)`: none is
    /// running (a first start, or the last one crashed): start cold.
    pub fn connect(path: &Path, config: &Path) -> anyhow::Result<Option<Predecessor>> {
        let stream = match std::os::unix::net::UnixStream::connect(path) {
            Ok(stream) => stream,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
                return Ok(None);
            }
            Err(e) => {
                tracing::warn!(socket = %path.display(), "no hand-over ({e}); starting cold");
                return Ok(None);
            }
        };
        // whatever answers here hands this process its sockets: root's or ours only
        let owner = peer_uid(&stream)?;
        // SAFETY: getuid has no preconditions.
        if owner != 0 && owner != unsafe { libc::getuid() } {
            anyhow::bail!(
                "{} is served by uid {owner}, not by weir's user; not taking sockets from it",
                path.display()
            );
        }
        let config = std::fs::canonicalize(config).unwrap_or_else(|_| config.to_path_buf());
        let hello =
            Message::Hello { pid: std::process::id(), version: crate::observe::metrics::VERSION.into(), config };
        (&stream).write_all(&hello.line())?;
        stream.set_read_timeout(Some(SOCKETS_TIMEOUT))?;
        let mut received = Vec::new();
        let mut fds = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        let end = loop {
            if let Some(end) = received.iter().position(|b| *b == b'\n') {
                break end;
            }
            let n = sockets::recv_with_fds(stream.as_raw_fd(), &mut buf, &mut fds)
                .map_err(|e| anyhow::anyhow!("the running weir did not send its sockets: {e}"))?;
            if n == 0 {
                anyhow::bail!("the running weir hung up during the hand-over");
            }
            received.extend_from_slice(&buf[..n]);
        };
        let leftover = received.split_off(end + 1);
        match Message::parse(&received).map_err(|e| anyhow::anyhow!(e))? {
            Message::Sockets { pid, version, sockets: keys } => {
                if keys.len() != fds.len() {
                    anyhow::bail!("the running weir named {} sockets and sent {}", keys.len(), fds.len());
                }
                sockets::inherit(keys.iter().copied().zip(fds).collect());
                stream.set_read_timeout(None)?;
                tracing::info!(pid, %version, sockets = keys.len(), "taking the node over from the running weir");
                Ok(Some(Predecessor { stream, leftover, pid, version }))
            }
            Message::Refused { reason } => {
                anyhow::bail!("the running weir (socket {}) refused: {reason}", path.display())
            }
            other => anyhow::bail!("the running weir answered {other:?}"),
        }
    }

    /// From here on, learn what the running weir's DNS proxy learns.
    /// `applied`: the FQDN generation this process's maps hold.
    pub fn follow(self, fqdn: Arc<FqdnCache>, applied: watch::Receiver<u64>) -> std::io::Result<Taking> {
        self.stream.set_nonblocking(true)?;
        let stream = tokio::net::UnixStream::from_std(self.stream)?;
        let (reader, mut writer) = stream.into_split();
        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Message>();
        tokio::spawn(async move {
            while let Some(message) = out_rx.recv().await {
                if wire::write(&mut writer, &message).await.is_err() {
                    break;
                }
            }
        });
        let ready = Arc::new(AtomicBool::new(false));
        let (finished_tx, finished) = watch::channel(None);
        let (released_tx, released) = watch::channel(false);
        let reader = BufReader::new(std::io::Cursor::new(self.leftover).chain(reader));
        let peer = Peer {
            ready: ready.clone(),
            out: out_tx.clone(),
            pid: self.pid,
            finished: finished_tx,
            released: released_tx,
        };
        tokio::spawn(follow(reader, fqdn, applied, peer));
        Ok(Taking { out: out_tx, ready, finished, released })
    }
}

/// The uid of the process at the other end of a unix socket (`SO_PEERCRED`).
fn peer_uid(stream: &std::os::unix::net::UnixStream) -> std::io::Result<u32> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: a valid socket and an out-parameter of the size given.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut libc::ucred as *mut libc::c_void,
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// A hand-over under way, seen from the new weir.
pub struct Taking {
    out: mpsc::UnboundedSender<Message>,
    ready: Arc<AtomicBool>,
    /// `Some((finished, cut))` once the old weir reported its drain.
    pub finished: watch::Receiver<Option<(bool, usize)>>,
    /// True once the old weir writes no map any more.
    pub released: watch::Receiver<bool>,
}

impl Taking {
    /// This process serves the node now: the running weir stops.
    pub fn ready(&self) {
        self.ready.store(true, Ordering::Release);
        let _ = self.out.send(Message::Ready);
    }
}

/// What `follow` answers and reports to.
struct Peer {
    ready: Arc<AtomicBool>,
    out: mpsc::UnboundedSender<Message>,
    pid: u32,
    finished: watch::Sender<Option<(bool, usize)>>,
    released: watch::Sender<bool>,
}

async fn follow<R: tokio::io::AsyncRead + Unpin>(
    mut reader: BufReader<R>,
    fqdn: Arc<FqdnCache>,
    mut applied: watch::Receiver<u64>,
    peer: Peer,
) {
    let Peer { ready, out, pid, finished, released } = peer;
    loop {
        match wire::read(&mut reader).await {
            Ok(Some(Message::Learned { seq, endpoint, name, addresses })) => {
                fqdn.learn(&endpoint, &name, &addresses);
                // before Ready the old weir writes the maps itself
                if ready.load(Ordering::Acquire) {
                    let wanted = fqdn.generation();
                    if tokio::time::timeout(APPLY_TIMEOUT, applied.wait_for(|g| *g >= wanted)).await.is_err() {
                        tracing::warn!(%name, "a forwarded address was not in the maps within {APPLY_TIMEOUT:?}");
                    }
                }
                let _ = out.send(Message::Applied { seq });
            }
            Ok(Some(Message::Released)) => {
                tracing::debug!(pid, "the previous weir writes no map any more");
                released.send_replace(true);
            }
            Ok(Some(Message::Done { finished: drained, cut })) => {
                if drained {
                    tracing::info!(pid, "the previous weir drained and stopped");
                } else {
                    tracing::warn!(
                        pid,
                        cut,
                        "the previous weir's drain deadline passed; it closed the connections still open"
                    );
                }
                let _ = finished.send(Some((drained, cut)));
                released.send_replace(true);
                return;
            }
            Ok(Some(other)) => tracing::warn!(pid, "hand-over: unexpected message {other:?}"),
            Ok(None) => {
                tracing::info!(pid, "the previous weir closed the hand-over connection");
                released.send_replace(true);
                return;
            }
            Err(e) => {
                tracing::warn!(pid, "hand-over connection: {e}");
                released.send_replace(true);
                return;
            }
        }
    }
}
