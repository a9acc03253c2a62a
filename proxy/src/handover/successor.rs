//! The running weir's side: wait for a successor, hand it the sockets,
//! forward what the DNS proxy learns, and report when the drain is done.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::BufReader;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use super::sockets::{self, MAX_FDS};
use super::wire::{self, Message};
use super::{Forward, Handover};
use crate::model::fqdn::FqdnCache;

/// How long a successor may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// What the running weir says to its successor after the hand-over
/// (`Released`, `Done`), once there is one.
type Control = Arc<Mutex<Option<mpsc::UnboundedSender<Message>>>>;

pub enum Event {
    /// The new weir serves the node now: stop and drain.
    HandedOver { pid: u32, version: String },
    /// It went away before it was ready: this process is in charge again.
    Aborted { pid: u32, reason: String },
}

/// What the running weir keeps of its listening hand-over socket.
pub struct Successors {
    pub events: mpsc::Receiver<Event>,
    control: Control,
    path: PathBuf,
    /// The socket file's inode: after a hand-over the path is the successor's.
    inode: u64,
}

impl Successors {
    /// A stop without a successor: the next weir starts cold.
    pub fn remove(&self) {
        use std::os::unix::fs::MetadataExt as _;
        if std::fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.inode) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    /// Tell the successor this process writes no map any more: it rewrites
    /// them all from its own model.
    pub fn released(&self) {
        if let Some(control) = &*self.control.lock().unwrap() {
            let _ = control.send(Message::Released);
        }
    }

    /// Tell the successor the drain is over (`cut`: connections closed at the deadline).
    pub async fn finish(&self, finished: bool, cut: usize) {
        let Some(control) = self.control.lock().unwrap().take() else { return };
        let _ = control.send(Message::Done { finished, cut });
        // let the writer put it on the wire before the process goes
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Listen for a successor at `path` (replacing whatever was there: a
/// predecessor's socket, or a crashed weir's).
pub fn listen(path: &Path, handover: Arc<HandoverContext>) -> std::io::Result<Successors> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // bound beside and renamed over: the path always names a live socket
    let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = std::os::unix::net::UnixListener::bind(&tmp)?;
    use std::os::unix::fs::PermissionsExt as _;
    // whoever connects gets the node's sockets: the owner only
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&tmp, path)?;
    use std::os::unix::fs::MetadataExt as _;
    let inode = std::fs::metadata(path)?.ino();
    listener.set_nonblocking(true)?;
    let listener = UnixListener::from_std(listener)?;
    let (events_tx, events) = mpsc::channel(4);
    let control = Control::default();
    tokio::spawn(accept_loop(listener, handover, events_tx, control.clone()));
    Ok(Successors { events, control, path: path.to_path_buf(), inode })
}

/// What a hand-over needs of the running process.
pub struct HandoverContext {
    pub handover: Arc<Handover>,
    pub fqdn: Arc<FqdnCache>,
    /// This process's configuration directory: only a weir of the same
    /// configuration takes over.
    pub config: PathBuf,
}

async fn accept_loop(
    listener: UnixListener,
    context: Arc<HandoverContext>,
    events: mpsc::Sender<Event>,
    control: Control,
) {
    let busy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    loop {
        if context.handover.handed_over() {
            // the node is the successor's: a newcomer that still finds this
            // socket (the successor died before it listened) starts cold
            return;
        }
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = tokio::time::sleep(Duration::from_millis(200)) => continue,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if !same_user(&stream) {
            tracing::warn!("hand-over: a connection from another user refused");
            continue;
        }
        if busy.swap(true, std::sync::atomic::Ordering::AcqRel) {
            refuse(stream, "another weir is taking over or has taken over").await;
            continue;
        }
        let (context, events, control, busy) = (context.clone(), events.clone(), control.clone(), busy.clone());
        tokio::spawn(async move {
            if !serve_successor(stream, &context, &events, &control).await {
                busy.store(false, std::sync::atomic::Ordering::Release);
            }
        });
    }
}

fn same_user(stream: &UnixStream) -> bool {
    // SAFETY: getuid has no preconditions.
    stream.peer_cred().is_ok_and(|cred| cred.uid() == unsafe { libc::getuid() })
}

async fn refuse(mut stream: UnixStream, reason: &str) {
    tracing::info!("hand-over refused: {reason}");
    let _ = wire::write(&mut stream, &Message::Refused { reason: reason.into() }).await;
}

/// One successor, from hello to done. `false`: it never took over.
async fn serve_successor(
    stream: UnixStream,
    context: &HandoverContext,
    events: &mpsc::Sender<Event>,
    control: &Control,
) -> bool {
    let config = context.config.clone();
    let fqdn = context.fqdn.clone();
    // the hello and the descriptors: short, blocking, on a thread of their own
    let std_stream = match stream.into_std() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("hand-over: {e}");
            return false;
        }
    };
    let greeted = tokio::task::spawn_blocking(move || read_hello(std_stream, &config)).await;
    let (std_stream, pid, version) = match greeted.map_err(|e| e.to_string()).and_then(|r| r) {
        Ok(greeted) => greeted,
        Err(e) => {
            tracing::warn!("hand-over not started: {e}");
            return false;
        }
    };
    // forwarding starts before the cache is saved: every address is in the
    // file, in the stream, or in both (learning one twice is harmless)
    let (forward_tx, forward_rx) = mpsc::unbounded_channel();
    context.handover.set_successor(Some(forward_tx));
    let sent = tokio::task::spawn_blocking(move || send_sockets(std_stream, &fqdn)).await;
    let stream = match sent.map_err(|e| e.to_string()).and_then(|r| r) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("hand-over not started: {e}");
            context.handover.set_successor(None);
            return false;
        }
    };
    let (reader, writer) = stream.into_split();
    let pending: Arc<Mutex<HashMap<u64, oneshot::Sender<()>>>> = Default::default();
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    tokio::spawn(write_forwards(writer, forward_rx, control_rx, pending.clone()));

    let mut reader = BufReader::new(reader);
    let mut handed_over = false;
    let mut control_tx = Some(control_tx);
    loop {
        match wire::read(&mut reader).await {
            Ok(Some(Message::Ready)) if !handed_over => {
                handed_over = true;
                context.handover.set_handed_over();
                *control.lock().unwrap() = control_tx.take();
                tracing::info!(pid, %version, "the new weir serves the node now; this one stops accepting and drains");
                let _ = events.send(Event::HandedOver { pid, version: version.clone() }).await;
            }
            Ok(Some(Message::Applied { seq })) => {
                if let Some(waiter) = pending.lock().unwrap().remove(&seq) {
                    let _ = waiter.send(());
                }
            }
            Ok(Some(other)) => {
                tracing::warn!(pid, "hand-over: unexpected message {other:?}");
            }
            Ok(None) | Err(_) => break,
        }
    }
    if handed_over {
        tracing::warn!(pid, "the new weir closed the hand-over connection (it stopped or crashed); still draining");
        return true;
    }
    context.handover.set_successor(None);
    let reason = "it went away before it was ready".to_string();
    tracing::warn!(pid, "hand-over aborted: {reason}; this weir stays in charge");
    let _ = events.send(Event::Aborted { pid, reason }).await;
    false
}

/// Read the hello: who asks, and for which configuration.
fn read_hello(
    mut stream: std::os::unix::net::UnixStream,
    config: &Path,
) -> Result<(std::os::unix::net::UnixStream, u32, String), String> {
    stream.set_nonblocking(false).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(HELLO_TIMEOUT)).map_err(|e| e.to_string())?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.last() != Some(&b'\n') {
        match stream.read(&mut byte) {
            Ok(0) => return Err("the new weir hung up before its hello".into()),
            Ok(_) => line.push(byte[0]),
            Err(e) => return Err(format!("reading the hello: {e}")),
        }
        if line.len() > 64 << 10 {
            return Err("hello too long".into());
        }
    }
    let Message::Hello { pid, version, config: theirs } = Message::parse(&line)? else {
        return Err("the first message was not a hello".into());
    };
    let ours = std::fs::canonicalize(config).unwrap_or_else(|_| config.to_path_buf());
    let theirs_canonical = std::fs::canonicalize(&theirs).unwrap_or_else(|_| theirs.clone());
    if ours != theirs_canonical {
        let reason = format!(
            "this weir runs {} and the new one {}: a hand-over is between two runs of one configuration",
            ours.display(),
            theirs.display()
        );
        let _ = stream.write_all(&Message::Refused { reason: reason.clone() }.line());
        return Err(reason);
    }
    tracing::info!(pid, %version, "a new weir asks for the node; handing over the sockets");
    Ok((stream, pid, version))
}

/// Save the FQDN cache for the successor to restore, and send it every
/// socket this process serves.
fn send_sockets(stream: std::os::unix::net::UnixStream, fqdn: &FqdnCache) -> Result<UnixStream, String> {
    if let Err(e) = fqdn.save() {
        tracing::warn!(file = ?fqdn.file(), "FQDN cache not saved for the new weir: {e}");
    }
    let live = sockets::live();
    if live.len() > MAX_FDS {
        return Err(format!("{} sockets are more than one message carries ({MAX_FDS})", live.len()));
    }
    let message = Message::Sockets {
        pid: std::process::id(),
        version: crate::observe::metrics::VERSION.into(),
        sockets: live.iter().map(|(key, _)| *key).collect(),
    };
    sockets::send_with_fds(stream.as_raw_fd(), &message.line(), &sockets::raw(&live))
        .map_err(|e| format!("sending the sockets: {e}"))?;
    stream.set_read_timeout(None).map_err(|e| e.to_string())?;
    stream.set_nonblocking(true).map_err(|e| e.to_string())?;
    UnixStream::from_std(stream).map_err(|e| e.to_string())
}

/// Forward learned addresses (numbered; the answer waits for its number to
/// come back applied), that this process writes no map any more, and at
/// the end the drain's outcome.
async fn write_forwards(
    mut writer: tokio::net::unix::OwnedWriteHalf,
    mut forwards: mpsc::UnboundedReceiver<Forward>,
    mut control: mpsc::UnboundedReceiver<Message>,
    pending: Arc<Mutex<HashMap<u64, oneshot::Sender<()>>>>,
) {
    let mut seq = 0u64;
    loop {
        tokio::select! {
            forward = forwards.recv() => {
                let Some(forward) = forward else { break };
                seq += 1;
                if let Some(applied) = forward.applied {
                    pending.lock().unwrap().insert(seq, applied);
                }
                let message = Message::Learned {
                    seq,
                    endpoint: forward.endpoint,
                    name: forward.name,
                    addresses: forward.addresses,
                };
                if wire::write(&mut writer, &message).await.is_err() {
                    break;
                }
            }
            message = control.recv() => {
                let Some(message) = message else { break };
                let last = matches!(message, Message::Done { .. });
                if wire::write(&mut writer, &message).await.is_err() || last {
                    break;
                }
            }
        }
    }
}
